"""The random sample generator: one letter recipe (v2) per inpatient stay.

Every draw comes from a `random.Random` seeded by (seed, patient, stay), so a recipe does not
depend on sharding, order or cohort size. Only facts known at discharge enter a recipe: this
stay's facts, earlier stays' facts (as history) and tumour facts dated up to discharge.

Gold follows the text: for every fact the sampler first chooses the words the letter writes
(`RecipeFact.say`) and then derives the gold from them — a code only at the level the written
code or the written name pins down (clinsynth.terminology.names), a date only at the precision
written, a unit or flag only when written. A code enters a schema slot only when the record's
`system` is that slot's system; a fact coded in another system (SNOMED CT procedure, PZN drug)
is written as text without a code or left out and counted in `Sampler.stats`.

Assertions are decoupled from sections: negated, suspected and historical facts of every kind
are drawn from clinically plausible pools (the entity's metastasis sites, therapy
complications, earlier stays) and placed with the same section weights as present facts
(`phrases.SECTION_WEIGHTS`), so the section alone does not predict the assertion.

`Sampler.stats` counts for the sample report: `codes/<slot>/written|pinned` (how each gold
code is supported), `foreign_system/<kind>` (codes of another system kept out of a slot),
`no_name/<system>`, `dropped/<why>`, `future_facts_dropped`, `main_pending_as_suspected`,
`postponed_cycle_negated`, `vital_loinc_not_in_catalogue` (a vital whose code has no German name in
the lexicon: not written).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from typing import Any

from clinsynth.records import PatientRecord
from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    _TUMOR_CATEGORIES,
    HOSPITAL_KINDS,
    LOINC_SYSTEMS,
    SamplerConfig,
    _Ctx,
    _d,
    _no_regnal,
    _u64,
    _weighted,
    split_of,
)
from clinsynth.sampling.facts_diagnoses import DiagnosisFacts
from clinsynth.sampling.facts_measurements import MeasurementFacts
from clinsynth.sampling.facts_tumours import TumourFacts
from clinsynth.sampling.pools import AssertionPools
from clinsynth.sampling.recipe import Recipe
from clinsynth.schema import LetterType

__all__ = ["Sampler", "SamplerConfig", "split_of"]


class Sampler(DiagnosisFacts, TumourFacts, MeasurementFacts, AssertionPools):
    """Draws recipes; holds the catalogue, the name lexicon and a Faker for letter heads."""

    def recipes(self, rec: PatientRecord) -> Iterator[Recipe]:
        stays = sorted(
            (e for e in rec.encounters.values() if _d(e.row.get("start")) and _d(e.row.get("end"))),
            key=lambda e: (e.row["start"], e.row["encounter_id"]),
        )
        if self.cfg.stays_per_patient is not None and len(stays) > self.cfg.stays_per_patient:
            rng = random.Random(_u64("stays", self.seed, rec.patient_id))
            keep = set(rng.sample(range(len(stays)), self.cfg.stays_per_patient))
            chosen = [s for i, s in enumerate(stays) if i in keep]
        else:
            chosen = stays
        for enc in chosen:
            yield self.recipe(rec, enc.row["encounter_id"])

    def recipe(self, rec: PatientRecord, encounter_id: str) -> Recipe:
        cfg = self.cfg
        enc = rec.encounters[encounter_id].row
        start, end = _d(enc["start"]), _d(enc["end"])
        if start is None or end is None:
            raise ValueError(f"encounter {encounter_id}: start/end {enc.get('start')}/{enc.get('end')}")
        rng = random.Random(_u64("recipe", self.seed, rec.patient_id, encounter_id))
        index = self._index(rec)
        letter_type = _weighted(rng, cfg.letter_types)
        style = self._style(rng, letter_type)
        sections = self._sections(rng, letter_type)
        if (
            letter_type in ("Entlassungsbrief", "Arztbrief")
            and "medikation" not in sections
            and any(
                f.get("role") in ("community", "discharge") for f in index[encounter_id].get("medication", ())
            )
            and rng.random() < 0.95
        ):  # a discharge letter nearly always lists the discharge medication when there is one
            order = P.SECTION_ORDER
            at = next(
                (i for i, s_ in enumerate(sections) if order.index(s_) > order.index("medikation")),
                len(sections),
            )
            sections.insert(at, "medikation")
        ctx = _Ctx(rng, sections, style)
        known: dict[str, list[dict[str, Any]]] = {}
        dropped = 0
        for cat, facts_ in index[encounter_id].items():
            ok = [f for f in facts_ if (self._day(f) or end) <= end]
            dropped += len(facts_) - len(ok)
            known[cat] = ok
        self.stats["future_facts_dropped"] += dropped
        # the main diagnosis is always written: one confirmed only after discharge (histology
        # pending on a diagnostic stay) is a suspicion at discharge ("V.a."), without its later date
        own_dx = index[encounter_id].get("diagnosis", [])
        if own_dx and not any(f.get("role") == "main" for f in known.get("diagnosis", [])):
            late = next((f for f in own_dx if f.get("role") == "main"), None)
            if late is not None:
                pending = dict(late, date=None)
                was = late.get("assertion")
                pending["assertion"] = "suspected" if was == "present" else was
                self._extras[id(pending)] = self._x(late)
                self._alive.append(pending)  # keeps its id unique while the cache holds it
                known["diagnosis"] = [pending, *known.get("diagnosis", [])]
                self.stats["main_pending_as_suspected"] += 1
        before = [
            eid
            for eid, enc_ in rec.encounters.items()
            if eid != encounter_id and (_d(enc_.row.get("end")) or end) < start
        ]
        earlier: dict[str, list[dict[str, Any]]] = {}

        def k(cat: str) -> list[dict[str, Any]]:
            return known.get(cat, [])

        def e(cat: str) -> list[dict[str, Any]]:
            if cat not in earlier:
                got = [f for eid in before for f in index[eid].get(cat, ())]
                got += [f for f in index[""].get(cat, ()) if (self._day(f) or end) < start]
                earlier[cat] = got
            return earlier[cat]

        tumor_known = [f for c in _TUMOR_CATEGORIES for f in k(c)]
        tumor_earlier = [f for c in _TUMOR_CATEGORIES for f in e(c)]
        ctx.marker_labs = [
            f
            for f in k("lab")
            if f.get("value_num") is not None
            and (f.get("system") or "") in LOINC_SYSTEMS
            and (lab := self.cat.labs.get(str(f.get("code")))) is not None
            and lab.marker
        ]
        ctx.lab_flags = {(str(f.get("code")), self._flag(f)) for f in k("lab")}
        ctx.ruled_out = self._ruled_out(k("lab"), rec.patient.get("sex") or "")
        ctx.stay_start, ctx.stay_end = start, end
        for m in k("medication"):
            x = self._x(m)
            if x.get("therapy"):
                if x.get("regimen"):
                    ctx.running_regimens.add(str(x["regimen"]))
                if m.get("code"):
                    ctx.running_atc.add(str(m["code"]))
                if isinstance(x.get("cycle"), int) and x["cycle"] > 1:
                    ctx.prior_therapy = True
        if any(self._x(f).get("therapy") for f in e("medication")) or e("radiotherapy"):
            ctx.prior_therapy = True
        main = self._diagnoses(ctx, k("diagnosis"))
        ctx.main_c3 = str((main or {}).get("code") or "")[:3]
        self._tumors(ctx, tumor_known, tumor_earlier, main)
        self._procedures(ctx, k("procedure"), e("procedure"), start)
        self._radiotherapy(ctx, k("radiotherapy"), e("radiotherapy"), start, end)
        self._medications(ctx, k("medication"), e("medication"))
        self._labs(ctx, k("lab"), e("lab"), rec.patient.get("sex") or "")
        self._vitals(ctx, k("vital"))
        smoking = [f for c in index.values() for f in c.get("smoking", ())]
        self._risk_factors(ctx, smoking[:1])
        sex = rec.patient.get("sex") or ""
        self._pool(ctx, k("diagnosis") + k("metastasis") + e("diagnosis"), main, e("diagnosis"), sex)
        if enc.get("postponed_reason"):
            # admitted for a cycle that could not be given (leukocytes too low): the letter says so
            section = self._place(ctx, "procedure")
            name = P.pick(rng, ("Chemotherapie", "Chemotherapie-Gabe"))
            if section is not None:
                gold = {"text": name, "ops": self.lex.pinned_code("ops", name)}
                self._add(ctx, "procedure", section, "negated", gold, {"name": name, "code": "", "date": ""})
                self.stats["postponed_cycle_negated"] += 1
        self._response_needs_written_therapy(ctx)
        facts = ctx.facts
        for i, f in enumerate(facts):
            f.id = f"f{i:02d}-{f.kind}"
        used = {f.section for f in facts}
        keep_empty = {"anamnese", "verlauf", "epikrise", "procedere"}
        kept = [s for s in sections if s in used or s in keep_empty]
        has_rt = any(f.kind == "radiotherapy" and f.assertion == "present" for f in facts)
        header, encounter, patient, untagged = self._header(rng, rec, enc, style, letter_type, has_rt)
        return Recipe(
            spec_id=encounter_id,
            patient_id=rec.patient_id,
            encounter_id=encounter_id,
            split=split_of(rec.patient_id, self.seed, cfg.splits),
            letter_type=letter_type,
            header=header,
            sections=[self._section(rng, s, style) for s in kept],
            facts=facts,
            style=style,
            encounter=encounter,
            patient=patient,
            untagged=untagged,
        )

    # ------------------------------------------------------------------ head
    def _header(
        self,
        rng: random.Random,
        rec: PatientRecord,
        enc: dict[str, Any],
        style: dict[str, Any],
        letter_type: LetterType,
        rec_has_rt: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
        ds = style["date_style"]
        p = rec.patient
        start, end = _d(enc["start"]), _d(enc["end"])
        assert start is not None and end is not None
        birth = _d(p.get("birth_date"))
        department = enc.get("department") or "Innere Medizin"
        name = _no_regnal(f"{p.get('given') or ''} {p.get('family') or ''}".strip())
        sex = p.get("sex") or ""
        kontakt = (enc.get("kontaktart") or "").lower()
        stay_type = "day_case" if "teil" in kontakt or "vor" in kontakt else "inpatient"
        if letter_type == "Verlegungsbrief":
            stay_type = "transfer"
        letter_date = end if rng.random() < 0.7 else date.fromordinal(end.toordinal() + rng.randint(1, 5))
        header: dict[str, Any] = {
            "title": letter_type,
            "clinic": f"Klinik für {department}",
            "hospital": f"{P.pick(rng, HOSPITAL_KINDS)} {P.pick(rng, self._cities)}",
            "date": P.format_date(letter_date, ds),
            "patient": name or "Patient/in",
            "sex": sex,
            "birth": P.format_date(birth, ds) if birth else "",
            "start": P.format_date(start, ds),
            "end": P.format_date(end, ds),
            "stay_type": stay_type,
            #: why the patient came (diagnostic | surgery | therapy | complication | palliative), "" unknown
            "stay_kind": enc.get("stay_kind") or "",
            "doctors": [
                f"Dr. med. {P.pick(rng, self._last)}",
                f"{P.pick(rng, self._first)} {P.pick(rng, self._last)}",
            ],
            "salutation": P.pick(
                rng,
                (
                    "Sehr geehrte Kolleginnen und Kollegen,",
                    "Liebe Kolleginnen und Kollegen,",
                    "Sehr geehrte Frau Kollegin, sehr geehrter Herr Kollege,",
                    "Sehr geehrte Damen und Herren,",
                ),
            ),
            "phone": f"0{rng.randint(200, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 99999)}",
        }
        untagged = [header["date"], header["phone"]]
        if letter_type == "Verlegungsbrief":
            kind = "radiotherapy" if rec_has_rt else enc.get("stay_kind") or ""
            header["reason"], header["destination"] = P.pick(
                rng, P.TRANSFER_PAIRS.get(kind, P.TRANSFER_PAIRS[""])
            )
        if rng.random() < 0.6:
            follow = date.fromordinal(end.toordinal() + rng.randint(7, 28))
            header["follow_up"] = P.format_date(follow, ds)
            untagged.append(header["follow_up"])
        encounter = {
            "admission": P.gold_date(start, ds),
            "discharge": P.gold_date(end, ds),
            "type": stay_type,
            "department": department,
            "letter_type": letter_type,
        }
        patient: dict[str, Any] = {
            "name": name or None,
            "birth_date": P.gold_date(birth, ds) if birth else None,
        }
        if sex in ("female", "male"):
            patient["sex"] = sex
        return header, encounter, {k: v for k, v in patient.items() if v}, untagged
