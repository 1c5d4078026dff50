"""Procedures, radiotherapy and medications (therapy regimens, supportive drugs, discharge medication)."""

from __future__ import annotations

from datetime import date
from typing import Any

from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    _CONTEXT_OF_ROLE,
    _ENDOSCOPIC_ENTITIES,
    _FINDING_OPS,
    ATC_SYSTEMS,
    OPS_SYSTEMS,
    SamplerBase,
    _Ctx,
    _d,
    _is_antiemesis,
)
from clinsynth.schema import Assertion


class TherapyFacts(SamplerBase):
    """Procedures, radiotherapy and medications (therapy regimens, supportive drugs, discharge medication)."""

    # ------------------------------------------------------------------ procedures, radiotherapy
    def _procedures(
        self, ctx: _Ctx, own: list[dict[str, Any]], earlier: list[dict[str, Any]], start: date
    ) -> None:
        n = 0
        seen: set[str] = set()
        for f in own:
            if f["category"] != "procedure" or n >= self.cfg.max_facts["procedure"]:
                continue
            if ctx.rng.random() >= self.cfg.keep["procedure"]:
                continue
            made = self._procedure_fact(ctx, f, "present", seen)
            n += made
        n_hist = 0
        for f in sorted(
            (f for f in earlier if f["category"] == "procedure"),
            key=lambda f: (f.get("date") or "", f["resource_id"]),
            reverse=True,
        ):
            if n_hist >= 3 or ctx.rng.random() >= self.cfg.historical:
                continue
            if str(f.get("code") or "").startswith(_FINDING_OPS):
                continue  # imaging and endoscopy are dated findings, never "Z.n. CT-Abdomen"
            n_hist += self._procedure_fact(ctx, f, "historical", seen)

    def _procedure_fact(self, ctx: _Ctx, f: dict[str, Any], assertion: Assertion, seen: set[str]) -> int:
        code = self._slot_code(f, OPS_SYSTEMS, "procedure")
        name: str | None = None
        pinned: str | None = None
        if code:
            got = self._name(ctx, "ops", code, prefer_specific=0.3)
            if got and got[0].startswith("unauffällig") and ctx.main_c3 in _ENDOSCOPIC_ENTITIES:
                # the endoscopy that found this cancer was not "unauffällig": another of its names
                others = [
                    n for n in self.lex.names_with_codes("ops", code) if not n[0].startswith("unauffällig")
                ]
                got = P.pick(ctx.rng, others) if others else None
                if got is None:
                    return 0
            if got:
                name, pinned = got
        if name is None:
            text = self._own_words(f.get("text") or (f.get("display") if not code else None))
            if not text or ": " in text or len(text) > 60:
                self.stats["dropped/procedure_without_name"] += 1
                return 0
            name, pinned = text, self.lex.pinned_code("ops", text)
            self.stats["procedure_as_text"] += 1
        if name in seen:
            return 0
        section = self._place(ctx, "procedure")
        if section is None:
            return 0
        seen.add(name)
        written = ""
        if code and pinned and ctx.rng.random() < self.cfg.code_written.get("procedure", 0.0):
            written = code if code.startswith(pinned) and self.lex.in_catalogue("ops", code) == code else ""
        p = 0.8 if assertion == "historical" else 0.5
        date_s, date_g = self._date(
            ctx, _d(f.get("date")), p, ctx.style["history_date_style"] if assertion == "historical" else None
        )
        gold = {"text": name, "ops": written or pinned, "date": date_g}
        self._add(ctx, "procedure", section, assertion, gold, {"name": name, "code": written, "date": date_s})
        return 1

    def _radiotherapy(
        self, ctx: _Ctx, own: list[dict[str, Any]], earlier: list[dict[str, Any]], start: date, end: date
    ) -> None:
        """Radiotherapy running during the stay (or with a "+ RT" regimen now) is present; a course that
        ended before admission is historical (neoadjuvant RT before this stay's surgery too)."""
        plus_rt = any(
            "RT" in (self.cat.regimens[k].name if k in self.cat.regimens else k) for k in ctx.running_regimens
        )
        for f, assertion in [(f, "present") for f in own] + [(f, "historical") for f in earlier]:
            if f["category"] != "radiotherapy":
                continue
            ex = self._x(f)
            target = ex.get("target") or self._own_words(f.get("text"))
            if not target or len(target) > 60:
                self.stats["dropped/radiotherapy_without_target"] += 1
                continue
            begin = _d(f.get("date"))
            finish = _d(ex.get("end_date") or f.get("end_date"))
            if begin is not None and begin > end:
                continue  # not started at discharge
            if finish is not None and finish < start:
                asrt: Assertion = "historical"
            elif finish is not None or plus_rt or assertion == "present":
                asrt = "present"  # runs during the stay (or beyond it)
            else:
                asrt = "historical" if begin is None or begin < start else "present"
            if asrt == "historical" and ctx.rng.random() >= max(self.cfg.historical, 0.7):
                continue
            section = self._place(ctx, "radiotherapy")
            if section is None:
                continue
            rng = ctx.rng
            gold: dict[str, Any] = {"target": target}
            say: dict[str, Any] = {"name": target}
            total = ex.get("total_gy")  # absent for an activity in MBq (radioiodine)
            if total:
                gold["total_gy"] = float(total)
                say["total"] = f"{P.format_number(float(total))} Gy"
            if ex.get("fraction_gy") and rng.random() < 0.7:
                gold["fraction_gy"] = float(ex["fraction_gy"])
                say["fraction"] = f"{P.format_number(float(ex['fraction_gy']))} Gy"
            if ex.get("fractions") and rng.random() < 0.6:
                gold["fractions"] = int(ex["fractions"])
                say["fractions"] = str(int(ex["fractions"]))
            ds = ctx.style["history_date_style"] if asrt == "historical" else None
            s_s, s_g = self._date(ctx, begin, 0.7, ds)
            e_s, e_g = self._date(ctx, finish, 0.6 if s_g and (finish is None or finish <= end) else 0.0, ds)
            gold["start"], gold["end"] = s_g, e_g
            say["start"], say["end"] = s_s, e_s
            intent = ex.get("intent")
            if intent in P.INTENT_TEXT and rng.random() < 0.6:
                gold["intent"] = intent
                say["intent"] = P.INTENT_TEXT[intent]
            self._add(ctx, "radiotherapy", section, asrt, gold, say)

    # ------------------------------------------------------------------ medications
    def _drug_name(
        self, ctx: _Ctx, code: str | None, f: dict[str, Any], brand_p: float
    ) -> tuple[str, str | None] | None:
        if code:
            got = self._drugs.get(code)
            if got is None:
                names = self.lex.names_with_codes("atc", code)
                concept = self.cat.atc.lookup(code)
                inn = [n for n in names if concept is not None and n[0] == concept.display]
                got = self._drugs[code] = (inn[:1] or names[:1], [n for n in names if n not in inn])
            first, others = got
            if others and ctx.rng.random() < brand_p:
                return P.pick(ctx.rng, others)
            if first:
                return first[0]
        text = self._own_words(f.get("display") or f.get("text"))
        if text and len(text) <= 60 and ": " not in text:
            self.stats["medication_as_text"] += 1
            return text, self.lex.pinned_code("atc", text)
        return None

    def _medications(self, ctx: _Ctx, own: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> None:
        rng = ctx.rng
        n = 0
        seen: set[tuple[Any, ...]] = set()
        # the antiemetic combination of a chemotherapy stay (5-HT3 + dexamethasone [+ NK1]) is one
        # decision: a letter lists all of it or none, never a partial triad
        group = [
            f
            for f in own
            if f["category"] == "medication"
            and _is_antiemesis(f.get("code"))
            and _CONTEXT_OF_ROLE.get(f.get("role") or "", "inpatient") == "inpatient"
            and not self._x(f).get("therapy")
        ]
        group_ids = {f["resource_id"] for f in group} if len(group) >= 2 else set()
        keep_group = bool(group_ids) and rng.random() < self.cfg.keep["medication"]
        for f in own:
            if f["category"] != "medication":
                continue
            if f["resource_id"] in group_ids:
                if keep_group:
                    n += self._medication_fact(ctx, f, "inpatient", "present")
                continue
            if n >= self.cfg.max_facts["medication"]:
                continue
            ex = self._x(f)
            context = (
                "therapy" if ex.get("therapy") else _CONTEXT_OF_ROLE.get(f.get("role") or "", "inpatient")
            )
            if (
                context == "discharge"
                and "medikation" not in ctx.sections
                and "anamnese" in ctx.sections
                and rng.random() < 0.5
            ):
                context = "admission"
            dose = ex.get("dose", f.get("value_num"))
            key = (f.get("code") or f.get("display"), context, dose, ex.get("frequency"), ex.get("day"))
            # the first discharge drug is always kept: a discharge letter lists its discharge medication
            first_discharge = context == "discharge" and not any(
                m.kind == "medication" and m.gold.get("context") == "discharge" for m in ctx.facts
            )
            if key in seen or (
                context != "therapy" and not first_discharge and rng.random() >= self.cfg.keep["medication"]
            ):
                continue
            seen.add(key)
            n += self._medication_fact(ctx, f, context, "present")
        # history: earlier therapy drugs ("Z.n. 6 Zyklen mFOLFOX6"), one fact per substance. A drug of
        # the regimen running this stay is never a finished therapy: its earlier cycles are left out or
        # written once, bound to the regimen and its last cycle (say["continuing"]: "Z.n. 3 Zyklen FOLFOX")
        done: set[str] = set()
        continuing = False
        for f in sorted(earlier, key=lambda f: (f.get("date") or "", f["resource_id"]), reverse=True):
            x = self._x(f)
            if f["category"] != "medication" or not x.get("therapy"):
                continue
            code = f.get("code") or ""
            running = str(x.get("regimen") or "") in ctx.running_regimens or code in ctx.running_atc
            if running:
                if continuing or not x.get("regimen") or not isinstance(x.get("cycle"), int):
                    continue
                continuing = True
                if rng.random() < self.cfg.historical:
                    self._medication_fact(ctx, f, "therapy", "historical", continuing=True)
                continue
            if code in done or len(done) >= 3:
                continue
            done.add(code)
            if rng.random() < self.cfg.historical:
                self._medication_fact(ctx, f, "therapy", "historical")

    def _medication_fact(
        self, ctx: _Ctx, f: dict[str, Any], context: str, assertion: Assertion, *, continuing: bool = False
    ) -> int:
        rng = ctx.rng
        ex = self._x(f)
        code = self._slot_code(f, ATC_SYSTEMS, "medication")
        got = self._drug_name(ctx, code, f, 0.15 if context == "therapy" else 0.35)
        if got is None:
            self.stats["dropped/medication_without_name"] += 1
            return 0
        name, atc = got
        section = self._place(ctx, f"medication:{context}")
        if section is None:
            return 0
        gold: dict[str, Any] = {"name": name, "atc": atc, "context": context}
        say: dict[str, Any] = {"name": name, "context": context}
        dose = ex.get("dose", f.get("value_num"))
        unit = ex.get("dose_unit", f.get("unit"))
        if assertion == "present" and dose is not None:
            per, per_unit = ex.get("per_dose"), ex.get("per_unit")
            if per is not None and per_unit and rng.random() < 0.6:
                dose, unit = per, per_unit  # as prescribed: 85 mg/m², AUC 5
            x = float(dose)
            say["dose"] = P.format_number(x, 2 if x < 10 else 1 if x < 100 else 0)
            gold["dose"] = float(say["dose"].replace(",", "."))  # the dose as written
            if unit:
                gold["unit"] = unit
                say["unit"] = P.pick(rng, P.unit_variants(unit))
        sched = ex.get("schedule")
        if assertion == "present" and sched and len(sched) == 4 and not ex.get("as_needed"):
            gold["schedule"] = [float(x) for x in sched]
            four = sched[3] != 0 or rng.random() < 0.3
            say["schedule"] = "-".join(P.format_number(float(x)) for x in (sched if four else sched[:3]))
        freq = P.frequency_text(rng, str(ex.get("frequency") or ""), has_schedule="schedule" in gold)
        if assertion == "present" and freq and rng.random() < 0.8:
            gold["frequency"] = freq  # as written ("2x tgl."), never the FHIR timing ("2/1d")
            say["frequency"] = freq
        if ex.get("as_needed"):
            gold["as_needed"] = True
            say["as_needed"] = P.pick(rng, P.AS_NEEDED)
        route = P.ROUTE_DISPLAY.get(ex.get("route") or "", "")
        if route and assertion == "present" and rng.random() < (0.8 if context == "therapy" else 0.35):
            gold["route"] = route
            say["route"] = route
        reg_key = ex.get("regimen")
        if reg_key and context == "therapy":
            reg = self.cat.regimens.get(reg_key)
            reg_name = reg.name if reg else str(reg_key)
            if continuing or rng.random() < 0.8:
                gold["regimen"] = reg_name
                say["regimen"] = reg_name
            if isinstance(ex.get("cycle"), int) and ex["cycle"] >= 1 and (continuing or rng.random() < 0.75):
                gold["cycle"] = ex["cycle"]
                say["cycle"] = str(ex["cycle"])
            if (
                assertion == "present"
                and isinstance(ex.get("day"), int)
                and ex["day"] >= 1
                and rng.random() < 0.5
            ):
                gold["day"] = ex["day"]
                say["day"] = str(ex["day"])
            if ex.get("intent") in P.INTENT_TEXT and rng.random() < 0.5:
                gold["intent"] = ex["intent"]
                say["intent"] = P.INTENT_TEXT[ex["intent"]]
        if continuing:
            say["continuing"] = True
        self._add(ctx, "medication", section, assertion, gold, say)
        return 1
