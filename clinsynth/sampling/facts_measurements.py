"""Labs (values, units, flags, ruled-out findings), vital signs and risk factors."""

from __future__ import annotations

from typing import Any

from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    LOINC_SYSTEMS,
    SamplerBase,
    _Ctx,
    _d,
)
from clinsynth.schema import Assertion, LetterSection


class MeasurementFacts(SamplerBase):
    """Labs (values, units, flags, ruled-out findings), vital signs and risk factors."""

    # ------------------------------------------------------------------ labs, vitals, risk factors
    def _labs(self, ctx: _Ctx, own: list[dict[str, Any]], earlier: list[dict[str, Any]], sex: str) -> None:
        rng = ctx.rng
        labs = [f for f in own if f["category"] == "lab" and f.get("value_num") is not None]
        if not labs:
            return
        by_date: dict[str, list[dict[str, Any]]] = {}
        for f in labs:
            by_date.setdefault((f.get("date") or "")[:10], []).append(f)
        block_day = sorted(by_date)[0] if rng.random() < 0.6 else sorted(by_date)[-1]
        block = by_date[block_day]
        section = self._place(ctx, "lab")
        if section is None:
            return
        date_s, date_g = self._date(ctx, _d(block_day), 0.8)
        n = 0
        seen: set[str] = set()
        abnormal_first = sorted(block, key=lambda f: (not self._flag(f), f["resource_id"]))
        for f in abnormal_first:
            code = self._slot_code(f, LOINC_SYSTEMS, "lab")
            if n >= self.cfg.max_facts["lab"] or (code or "") in seen or rng.random() >= self.cfg.keep["lab"]:
                continue
            if id(f) in ctx.in_tumor:
                continue  # this tumour-marker value stands in the tumour block
            made = self._lab_fact(ctx, f, code, section, "present", date_s, date_g)
            if made:
                seen.add(code or "")
                n += 1
        # an earlier value for comparison ("Vorwert"), as history
        if earlier and rng.random() < self.cfg.historical * 0.5:
            prev = [
                f
                for f in earlier
                if f["category"] == "lab" and f.get("value_num") is not None and f.get("code") in seen
            ]
            if prev:
                f = max(prev, key=lambda f: (f.get("date") or "", f["resource_id"]))
                d_s, d_g = self._date(ctx, _d(f.get("date")), 1.0)
                self._lab_fact(
                    ctx, f, self._slot_code(f, LOINC_SYSTEMS, "lab"), section, "historical", d_s, d_g
                )

    def _ruled_out(self, labs: list[dict[str, Any]], sex: str) -> tuple[str, ...]:
        """ICD prefixes the stay's labs rule out: a lab measured this stay whose values never reach the
        finding's side (no low neutrophils: no neutropenia; Hb >= 12.5 g/dl, women 12: no anaemia)."""
        values: dict[str, list[float]] = {}
        flags: dict[str, set[str | None]] = {}
        for f in labs:
            if f.get("value_num") is None:
                continue
            code = str(f.get("code"))
            values.setdefault(code, []).append(float(f["value_num"]))
            flags.setdefault(code, set()).add(self._flag(f))
        out: list[str] = []
        for (code, side), icds in P.RULED_OUT_BY_LAB.items():
            if code not in values:
                continue
            if code == "6690-2" and "26499-4" in values:
                continue  # the neutrophil count decides
            if code == "718-7":
                hit = min(values[code]) < (12.0 if sex == "female" else 12.5)
            elif code == "62238-1":
                hit = min(values[code]) < 60
            else:
                hit = side in flags[code]
            if not hit:
                out.extend(icds)
        return tuple(dict.fromkeys(out))

    def _flag(self, f: dict[str, Any]) -> str | None:
        ex = self._x(f)
        low, high, value = ex.get("ref_low"), ex.get("ref_high"), f.get("value_num")
        if value is None:
            return None
        if low is not None and value < low:
            return "low"
        if high is not None and value > high:
            return "high"
        return None

    def _lab_fact(
        self,
        ctx: _Ctx,
        f: dict[str, Any],
        code: str | None,
        section: LetterSection,
        assertion: Assertion,
        date_s: str,
        date_g: str | None,
    ) -> bool:
        rng = ctx.rng
        lab = self.cat.labs.get(code) if code else None
        full = (lab.name_de if lab else None) or self._own_words(f.get("display") or f.get("text"))
        if not full:
            return False
        shorts = P.LAB_SHORT.get(full, ())
        name = P.pick(rng, shorts) if shorts and ctx.style["abbreviations"] else full
        loinc = self.lex.pinned_code("loinc", name) if code else None
        if loinc is not None and code is not None and loinc != code:
            loinc = code if self.lex.pinned_code("loinc", full) == code else None
        value = float(f["value_num"])
        decimals = lab.decimals if lab else None
        value_s = P.format_number(value, decimals)
        gold: dict[str, Any] = {
            "name": name,
            "loinc": loinc,
            "value": float(value_s.replace(",", ".")),
            "date": date_g,
        }
        say: dict[str, Any] = {"name": name, "value": value_s, "date": date_s, "unit": "", "flag": ""}
        unit = f.get("unit")
        if ctx.style["lab_units"] and unit:
            shown = P.pick(rng, P.unit_variants(unit))
            say["unit"] = shown
            if shown:
                gold["unit"] = unit
        flag = self._flag(f)
        if flag and ctx.style["lab_flags"] and assertion == "present":
            gold["flag"] = flag
            say["flag"] = P.pick(rng, {"high": ("↑", "H", "+"), "low": ("↓", "L", "-")}[flag])
        self._add(ctx, "lab", section, assertion, gold, say)
        return True

    def _vitals(self, ctx: _Ctx, own: list[dict[str, Any]]) -> None:
        rng = ctx.rng
        vitals = [f for f in own if f["category"] == "vital" and f.get("value_num") is not None]
        if not vitals or rng.random() < 0.35:
            return
        section = self._place(ctx, "vital")
        if section is None:
            return
        first = min((f.get("date") or "")[:10] for f in vitals)
        date_s, date_g = self._date(ctx, _d(first), 0.3)
        seen: set[str] = set()
        for f in sorted(vitals, key=lambda f: (f.get("date") or "", f["resource_id"])):
            code = self._slot_code(f, LOINC_SYSTEMS, "vital")
            if (code or "") in seen or (f.get("date") or "")[:10] != first or rng.random() < 0.25:
                continue
            seen.add(code or "")
            # a German name that pins the vital's LOINC code (catalogue table `vitals` + clinical
            # names); a vital without one is not written (an English FHIR display is no letter text)
            names = [n for n, c in self.lex.names_for("loinc", code) if c == code] if code else []
            if not names:
                self.stats["vital_loinc_not_in_catalogue" if code else "dropped/vital_without_code"] += 1
                continue
            name = P.pick(rng, names)
            loinc = code
            value = float(f["value_num"])
            value_s = P.format_number(value, 1)
            unit = f.get("unit") or ""
            shown = P.pick(rng, P.unit_variants(unit)) if unit else ""
            gold = {
                "name": name,
                "loinc": loinc,
                "value": float(value_s.replace(",", ".")),
                "unit": unit if shown else None,
                "date": date_g,
            }
            self._add(
                ctx,
                "vital",
                section,
                "present",
                gold,
                {"name": name, "value": value_s, "unit": shown, "date": date_s},
            )

    def _risk_factors(self, ctx: _Ctx, smoking: list[dict[str, Any]]) -> None:
        rng = ctx.rng
        for f in smoking:
            status = f.get("value_str")
            if status not in ("never", "former", "current") or rng.random() < 0.3:
                continue
            section = self._place(ctx, "risk_factor")
            if section is None:
                return
            py = self._x(f).get("pack_years")
            say: dict[str, Any] = {}
            if status == "never":
                assertion: Assertion = "negated"
                name = P.pick(rng, ("Nichtraucher", "Nikotinabusus", "Nikotinkonsum"))
                say["cued"] = name == "Nichtraucher"  # the name carries its own negation
            elif status == "former":
                assertion = "historical"
                name = P.pick(rng, ("Ex-Raucher", "Nikotinabusus", "Nikotinkonsum"))
                say["cued"] = name == "Ex-Raucher"
            else:
                assertion = "present"
                name = P.pick(rng, ("Nikotinabusus", "aktiver Raucher", "Nikotinkonsum"))
            gold: dict[str, Any] = {"kind": "smoking", "text": name}
            say["name"] = name
            if py and status != "never" and rng.random() < 0.7:
                gold["pack_years"] = float(py)
                say["pack_years"] = P.format_number(float(py))
            self._add(ctx, "risk_factor", section, assertion, gold, say)
