"""The random sample generator: one letter recipe per inpatient stay.

Every draw comes from a `random.Random` seeded by (seed, patient, stay), so a recipe does not
depend on sharding, order or cohort size. Only facts known at discharge enter a recipe: this
stay's facts, earlier stays' facts (as history) and tumour staging dated up to discharge.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any, TypeVar

from faker import Faker
from pydantic import model_validator

from clinsynth.core.config import StageConfig, identity
from clinsynth.records import PatientRecord
from clinsynth.sampling import phrases as P
from clinsynth.sampling.recipe import Recipe, RecipeFact
from clinsynth.schema import Assertion, LetterSection, LetterType, MedicationContext, Split
from clinsynth.terminology import load_catalog

SPLITS: tuple[Split, ...] = ("train", "val", "test")
HOSPITAL_KINDS = ("Klinikum", "Universitätsklinikum", "Krankenhaus")
#: ICD title endings that are qualifiers, not names ("Ohne Angabe ...", "Nicht als entgleist ...")
_SITE_HINT = re.compile(r"\s+C\d{2}(?:\.[\d-])?\s*$")
_QUALIFIERS = ("Ohne", "Mit ", "Nicht", "Sonstige", "Bei ", "Als ", "Akut", "Chronisch")


class SamplerConfig(StageConfig):
    """sample.sampler (conf/sample/sampler/): what a letter recipe may hold. Every field changes specs."""

    #: split by patient: fractions of patients in train/val/test
    splits: dict[str, float] = identity()
    #: at most this many stays per patient become letters (None: all)
    stays_per_patient: int | None = identity(ge=1)
    letter_types: dict[LetterType, float] = identity()
    #: probability that each optional section is written (Diagnosen always is)
    sections: dict[str, float] = identity()
    #: probability that a fact of the stay is written at all, and the most per letter
    keep: dict[str, float] = identity()
    max_facts: dict[str, int] = identity()
    #: probability that a written fact also shows its code (OPS codes are rarely written)
    code_written: dict[str, float] = identity()
    #: probabilities of 0, 1, 2 ... ruled-out findings ("kein Hinweis auf ...")
    negated_counts: tuple[float, ...] = identity()
    #: probability of one suspected finding ("V.a. ...")
    suspected: float = identity(ge=0, le=1)
    #: probability that each procedure of an earlier stay is mentioned as history ("Z.n. ..."), at most 3
    historical: float = identity(ge=0, le=1)
    date_shown: float = identity(ge=0, le=1)
    table_layout: float = identity(ge=0, le=1)
    abbreviations: float = identity(ge=0, le=1)
    target_words: tuple[int, int] = identity()

    @model_validator(mode="after")
    def _splits_sum_to_one(self) -> SamplerConfig:
        total = sum(self.splits.values())
        if set(self.splits) - set(SPLITS) or abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"sampler.splits must give fractions of {SPLITS} summing to 1, got {dict(self.splits)}"
            )
        return self


def _u64(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def split_of(patient_id: str, seed: int, splits: Mapping[str, float]) -> Split:
    """Patient-level split: every letter of a patient lands in the same split."""
    u = _u64("split", seed, patient_id) / 2**64
    acc = 0.0
    for name in SPLITS:
        acc += splits.get(name, 0.0)
        if u < acc:
            return name
    return SPLITS[-1] if splits.get(SPLITS[-1]) else next(n for n in reversed(SPLITS) if splits.get(n))


_K = TypeVar("_K", bound=str)


def _weighted(rng: random.Random, weights: Mapping[_K, float]) -> _K:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def _d(s: str | None) -> date | None:
    return _day(s) if s else None


def _day(s: str) -> date:
    """The date of a non-empty ISO date or timestamp."""
    return date.fromisoformat(s[:10])


class Sampler:
    """Draws recipes; holds the catalogue and a Faker for letter heads."""

    def __init__(self, cfg: SamplerConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.cat = load_catalog()
        self.faker = Faker("de_DE")
        self.stats: dict[str, int] = {"future_facts_dropped": 0}

    # ------------------------------------------------------------------ public
    def recipes(self, rec: PatientRecord) -> Iterator[Recipe]:
        stays = sorted(
            (e for e in rec.encounters.values() if e.row.get("start") and e.row.get("end")),
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
        assert start is not None and end is not None
        rng = random.Random(_u64("recipe", self.seed, rec.patient_id, encounter_id))
        style = {
            "date_style": _weighted(rng, {"dmy": 4, "dmy_short": 2, "dmy2": 1, "long": 1, "my": 1}),
            "abbreviations": rng.random() < cfg.abbreviations,
            "table": rng.random() < cfg.table_layout,
            "target_words": rng.randint(*cfg.target_words),
            "code_style": _weighted(rng, {"paren": 3, "prefix": 1, "bracket": 1}),
        }
        sections: list[LetterSection] = ["diagnosen"]
        sections += [s for s in P.SECTION_ORDER[1:] if rng.random() < cfg.sections.get(s, 1.0)]
        facts: list[RecipeFact] = []
        own = rec.encounters[encounter_id].facts
        known = [f for f in own if not f.get("date") or _day(f["date"]) <= end]
        self.stats["future_facts_dropped"] += len(own) - len(known)
        earlier = [
            f
            for e in rec.encounters.values()
            if e.row["encounter_id"] != encounter_id and e.row.get("end") and _day(e.row["end"]) < start
            for f in e.facts
        ]
        facts += self._diagnoses(rng, known, sections, style)
        facts += self._tumor(rng, known + earlier, rec, sections, style)
        facts += self._procedures(rng, known, earlier, sections, style)
        facts += self._medications(rng, known, sections, style)
        facts += self._labs(rng, known, sections, style, rec.patient.get("sex") or "")
        facts += self._ruled_out(rng, facts, sections, style)
        for i, f in enumerate(facts):
            f.id = f"f{i:02d}-{f.kind}"
        # sections left without facts stay only if they are narrative or hold the medication table
        used = {f.section for f in facts}
        sections = [s for s in sections if s in used or s in ("anamnese", "epikrise", "verlauf")]
        return Recipe(
            spec_id=encounter_id,
            patient_id=rec.patient_id,
            encounter_id=encounter_id,
            split=split_of(rec.patient_id, self.seed, cfg.splits),
            letter_type=_weighted(rng, cfg.letter_types),
            header=self._header(rng, rec, enc, style),
            sections=[
                {
                    "key": s,
                    "heading": P.pick(rng, P.SECTION_HEADINGS[s]),
                    "layout": "table" if style["table"] and s in ("befunde", "medikation") else "prose",
                    "variant": rng.randrange(3),
                }
                for s in sections
            ],
            facts=facts,
            style=style,
        )

    # ------------------------------------------------------------------ pieces
    def _date(self, rng: random.Random, d: date | None, style: dict[str, Any]) -> tuple[str, str | None]:
        """(what the letter writes, gold ISO date) or ("", None) when no date is shown."""
        if d is None or rng.random() >= self.cfg.date_shown:
            return "", None
        ds = style["date_style"]
        return P.format_date(d, ds), P.gold_date(d, ds)

    def _code(self, rng: random.Random, kind: str, code: str | None) -> str:
        return code if code and rng.random() < self.cfg.code_written.get(kind, 0.0) else ""

    def _phrase(self, rng: random.Random, assertion: Assertion, text: str) -> str:
        return text if assertion == "present" else P.pick(rng, P.CUES[assertion]).format(x=text)

    def _dx_text(
        self, rng: random.Random, code: str, display: str, primary: bool, lat: str | None
    ) -> list[str]:
        c = self.cat.icd10gm.lookup(code)
        extra = dict(c.extra) if c else {}
        names = list(extra.get("synonyms") or ())
        if primary:
            ent = next((e for e in self.cat.entities if any(code == i for i, _ in e.icd)), None)
            if ent:
                side = f" {P.LATERALITY[lat]}" if lat in P.LATERALITY else ""
                names.insert(0, f"{ent.label_de}{side}")
        parts = [x.strip() for x in display.split(": ") if x.strip()]
        last = parts[-1] if parts else display
        # the last component names the disease unless it is a qualifier or a short fragment
        if last[:1].isupper() and not last.startswith(_QUALIFIERS) and (len(parts) == 1 or len(last) >= 25):
            names.append(last)
        if parts:
            names.append(parts[0])
        names.append(display)
        seen: list[str] = []
        for n in names:
            if n and n not in seen:
                seen.append(n)
        first = seen[0] if rng.random() < 0.7 else P.pick(rng, seen)
        return [first] + [n for n in seen if n != first]

    def _diagnoses(
        self,
        rng: random.Random,
        facts: list[dict[str, Any]],
        sections: list[LetterSection],
        style: dict[str, Any],
    ) -> list[RecipeFact]:
        out = []
        dx = [f for f in facts if f["category"] == "diagnosis" and f.get("code")]
        dx.sort(key=lambda f: (f.get("role") != "main", f["resource_id"]))
        kept = [f for i, f in enumerate(dx) if i == 0 or rng.random() < self.cfg.keep["diagnosis"]]
        for i, f in enumerate(kept[: self.cfg.max_facts["diagnosis"]]):
            extra = PatientRecord.extra(f)
            names = self._dx_text(
                rng,
                f["code"],
                f.get("display") or f["code"],
                bool(extra.get("primary_tumor")),
                extra.get("laterality"),
            )
            section: LetterSection = "diagnosen"
            if (
                i > 0
                and f.get("role") == "secondary"
                and not f["code"].startswith("Z")
                and "anamnese" in sections
                and rng.random() < 0.25
            ):
                section = "anamnese"
            date_s, date_g = self._date(rng, _d(f.get("date")), style)
            gold = {"text": names[0], "icd10gm": f["code"], "role": f.get("role") or None, "date": date_g}
            out.append(
                RecipeFact(
                    "",
                    "diagnosis",
                    section,
                    "present",
                    gold,
                    {
                        "phrase": names[0],
                        "code": self._code(rng, "diagnosis", f["code"]),
                        "date": date_s,
                        "role": f.get("role") or "secondary",
                    },
                    names[1:],
                )
            )
        return out

    def _tumor(
        self,
        rng: random.Random,
        facts: list[dict[str, Any]],
        rec: PatientRecord,
        sections: list[LetterSection],
        style: dict[str, Any],
    ) -> list[RecipeFact]:
        latest: dict[str, dict[str, Any]] = {}
        for f in sorted(facts, key=lambda f: f.get("date") or ""):
            if f["category"] in ("histology", "grading", "tnm_t", "tnm_n", "tnm_m", "uicc_stage"):
                latest[f["category"]] = f
        if "histology" not in latest:
            return []
        histo = latest["histology"]
        hx = PatientRecord.extra(histo)
        gold: dict[str, Any] = {"morphology": histo["code"], "topography": hx.get("topography")}
        say = dict.fromkeys(("morphology_code", "grading", "tnm", "uicc", "laterality", "markers"), "")
        histology = histo.get("display") or hx.get("histology_text") or histo["code"]
        # ICD-O terms may end in a site hint ("... o.n.A. C50.-"): not a code this letter holds
        say["histology"] = _SITE_HINT.sub("", histology)
        if rng.random() < self.cfg.code_written.get("morphology", 0.5):
            say["morphology_code"] = histo["code"]
        if "grading" in latest and latest["grading"]["code"] in P.GRADING_TEXT:
            g = latest["grading"]["code"]
            gold["grading"] = f"G{g}" if g in "1234X" else g
            say["grading"] = P.GRADING_TEXT[g]
        if "tnm_t" in latest:
            prefix = (PatientRecord.extra(latest["tnm_t"]).get("prefix") or "c").lower()
            tnm = {"prefix": prefix, "t": latest["tnm_t"]["code"]}
            parts = [f"{prefix}{latest['tnm_t']['code']}"]
            for axis in ("n", "m"):
                axis_fact = latest.get(f"tnm_{axis}")
                if axis_fact:
                    tnm[axis] = axis_fact["code"]
                    p = (PatientRecord.extra(axis_fact).get("prefix") or prefix).lower()
                    parts.append(f"{p}{axis_fact['code']}")
            gold["tnm"] = tnm
            # "cT1c cN3 cM1c" or "cT1c N3 M1c" (the prefix written once)
            say["tnm"] = " ".join(
                parts
                if rng.random() < 0.5
                else [parts[0]] + [p[len(prefix) :] if p.startswith(prefix) else p for p in parts[1:]]
            )
        if "uicc_stage" in latest:
            gold["uicc_stage"] = latest["uicc_stage"]["code"]
            say["uicc"] = P.pick(rng, ("UICC {s}", "UICC-Stadium {s}", "Stadium {s}")).format(
                s=gold["uicc_stage"]
            )
        primary = next(
            (
                f
                for f in facts
                if f["category"] == "diagnosis" and PatientRecord.extra(f).get("primary_tumor")
            ),
            None,
        )
        lat = PatientRecord.extra(primary).get("laterality") if primary else None
        if lat in P.LATERALITY:
            gold["laterality"] = lat
            say["laterality"] = P.LATERALITY[lat]
        markers = []
        for f in facts:
            if f["category"] == "lab" and f.get("value_num") is not None and self._is_marker(f["code"]):
                markers.append(f)
        # the latest value of each marker known at discharge
        by_code: dict[str, dict[str, Any]] = {}
        for f in sorted(markers, key=lambda f: f.get("date") or ""):
            by_code[f["code"]] = f
        gold["markers"] = []
        marker_say = []
        for f in list(by_code.values())[:2]:
            unit = P.pick(rng, P.unit_variants(f.get("unit")))
            lab = self.cat.labs.get(f["code"])
            value = P.format_number(f["value_num"], lab.decimals if lab else None)
            gold["markers"].append(
                {
                    "name": f.get("display") or f["code"],
                    "loinc": f["code"],
                    "value": f["value_num"],
                    "unit": f.get("unit"),
                }
            )
            marker_say.append(f"{f.get('display') or f['code']} {value} {unit}".strip())
        if marker_say:
            say["markers"] = "; ".join(marker_say)
        section: LetterSection = "tumor" if "tumor" in sections else "diagnosen"
        return [RecipeFact("", "tumor", section, "present", gold, say, [])]

    def _is_marker(self, loinc: str) -> bool:
        lab = self.cat.labs.get(loinc)
        return bool(lab and lab.marker)

    def _procedures(
        self,
        rng: random.Random,
        own: list[dict[str, Any]],
        earlier: list[dict[str, Any]],
        sections: list[LetterSection],
        style: dict[str, Any],
    ) -> list[RecipeFact]:
        out: list[RecipeFact] = []
        target: LetterSection = (
            "verlauf" if "verlauf" in sections else "epikrise" if "epikrise" in sections else "diagnosen"
        )
        procs = [f for f in own if f["category"] == "procedure" and f.get("code")]
        seen_codes: set[str] = set()
        for f in procs:
            if len(out) >= self.cfg.max_facts["procedure"] or f["code"] in seen_codes:
                continue
            if rng.random() >= self.cfg.keep["procedure"]:
                continue
            seen_codes.add(f["code"])
            out.append(self._procedure_fact(rng, f, "present", target, style))
        hist_section: LetterSection = "anamnese" if "anamnese" in sections else "diagnosen"
        n_hist = 0
        for f in sorted(
            (f for f in earlier if f["category"] == "procedure" and f.get("code")),
            key=lambda f: (f.get("date") or "", f["resource_id"]),
        ):
            if n_hist >= 3 or f["code"] in seen_codes or rng.random() >= self.cfg.historical:
                continue
            seen_codes.add(f["code"])
            out.append(self._procedure_fact(rng, f, "historical", hist_section, style))
            n_hist += 1
        return out

    def _procedure_fact(
        self,
        rng: random.Random,
        f: dict[str, Any],
        assertion: Assertion,
        section: LetterSection,
        style: dict[str, Any],
    ) -> RecipeFact:
        display = f.get("display") or f["code"]
        parts = [x.strip() for x in display.split(": ") if x.strip()]
        last = parts[-1] if parts else display
        short = (
            last
            if last[:1].isupper() and not last.startswith(_QUALIFIERS)
            else parts[0]
            if parts
            else display
        )
        names = [display, short] if short != display else [display]
        text = names[0] if rng.random() < 0.5 else names[-1]
        date_s, date_g = self._date(rng, _d(f.get("date")), style)
        gold = {"text": text, "ops": f["code"], "date": date_g}
        say = {
            "phrase": self._phrase(rng, assertion, text),
            "code": self._code(rng, "procedure", f["code"]),
            "date": date_s,
        }
        return RecipeFact("", "procedure", section, assertion, gold, say, [n for n in names if n != text])

    def _medications(
        self,
        rng: random.Random,
        facts: list[dict[str, Any]],
        sections: list[LetterSection],
        style: dict[str, Any],
    ) -> list[RecipeFact]:
        out: list[RecipeFact] = []
        seen: set[tuple[str, str]] = set()
        for f in facts:
            if (
                f["category"] != "medication"
                or not f.get("code")
                or len(out) >= self.cfg.max_facts["medication"]
            ):
                continue
            extra = PatientRecord.extra(f)
            context: MedicationContext = (
                "discharge"
                if f.get("role") == "community"
                else "therapy"
                if extra.get("therapy")
                else "inpatient"
            )
            section: LetterSection = "medikation" if context == "discharge" else "verlauf"
            if section not in sections:
                continue  # not written: not in the letter, not in the gold
            if (f["code"], context) in seen or rng.random() >= self.cfg.keep["medication"]:
                continue
            seen.add((f["code"], context))
            name = f.get("display") or f["code"]
            dose = extra.get("dose", f.get("value_num"))
            unit = extra.get("dose_unit", f.get("unit"))
            route = P.ROUTE_DISPLAY.get(extra.get("route") or "", extra.get("route") or "")
            schedule = extra.get("schedule")
            gold: dict[str, Any] = {
                "name": name,
                "atc": f["code"],
                "dose": dose,
                "unit": unit,
                "route": route or None,
                "context": context,
            }
            say = {
                "phrase": name,
                "code": self._code(rng, "medication", f["code"]),
                "dose": P.format_number(dose) if dose is not None else "",
                "unit": P.pick(rng, P.unit_variants(unit)) if unit else "",
                "route": route,
                "schedule": "",
            }
            if schedule and len(schedule) == 4:
                gold["schedule"] = [float(x) for x in schedule]
                four = schedule[3] != 0 or rng.random() < 0.3
                say["schedule"] = "-".join(
                    P.format_number(float(x)) for x in (schedule if four else schedule[:3])
                )
            out.append(RecipeFact("", "medication", section, "present", gold, say, []))
        return out

    def _labs(
        self,
        rng: random.Random,
        facts: list[dict[str, Any]],
        sections: list[LetterSection],
        style: dict[str, Any],
        sex: str,
    ) -> list[RecipeFact]:
        if "befunde" not in sections:
            return []
        out: list[RecipeFact] = []
        seen: set[str] = set()
        labs = [f for f in facts if f["category"] == "lab" and f.get("value_num") is not None]
        for f in sorted(labs, key=lambda f: (f.get("date") or "", f["resource_id"])):
            code = f["code"]
            if code in seen or self._is_marker(code) or len(out) >= self.cfg.max_facts["lab"]:
                continue
            if rng.random() >= self.cfg.keep["lab"]:
                continue
            seen.add(code)
            lab = self.cat.labs.get(code)
            name = (lab.name_de if lab else None) or f.get("display") or f.get("text") or code
            shorts = P.LAB_SHORT.get(name, ())
            written = P.pick(rng, shorts) if shorts and style["abbreviations"] else name
            extra = PatientRecord.extra(f)
            low, high = extra.get("ref_low"), extra.get("ref_high")
            value = f["value_num"]
            flag = (
                "↓" if low is not None and value < low else "↑" if high is not None and value > high else ""
            )
            date_s, date_g = self._date(rng, _d(f.get("date")), style)
            gold = {"name": written, "loinc": code, "value": value, "unit": f.get("unit"), "date": date_g}
            say = {
                "phrase": written,
                "code": self._code(rng, "lab", code),
                "value": P.format_number(value, lab.decimals if lab else None),
                "unit": P.pick(rng, P.unit_variants(f.get("unit"))),
                "flag": flag,
                "ref": (
                    f"{P.format_number(low)}–{P.format_number(high)}"
                    if low is not None and high is not None
                    else ""
                ),
                "date": date_s,
            }
            out.append(
                RecipeFact(
                    "", "lab", "befunde", "present", gold, say, [n for n in (name, *shorts) if n != written]
                )
            )
        return out

    def _ruled_out(
        self,
        rng: random.Random,
        facts: list[RecipeFact],
        sections: list[LetterSection],
        style: dict[str, Any],
    ) -> list[RecipeFact]:
        """Negated and suspected findings: codes the patient does not have in this recipe."""
        held = {f.gold.get("icd10gm") for f in facts if f.kind == "diagnosis"}
        pool = [c for c in P.RULE_OUT if c not in held]
        rng.shuffle(pool)
        n_neg = rng.choices(range(len(self.cfg.negated_counts)), weights=self.cfg.negated_counts)[0]
        n_susp = 1 if rng.random() < self.cfg.suspected else 0
        out: list[RecipeFact] = []
        narrative: tuple[LetterSection, ...] = ("befunde", "verlauf", "epikrise")
        where_neg: list[LetterSection] = [s for s in narrative if s in sections] or ["diagnosen"]
        for k, code in enumerate(pool[: n_neg + n_susp]):
            assertion: Assertion = "negated" if k < n_neg else "suspected"
            noun = P.RULE_OUT[code]
            section: LetterSection = P.pick(rng, where_neg) if assertion == "negated" else "diagnosen"
            c = self.cat.icd10gm.lookup(code)
            gold = {"text": noun, "icd10gm": code, "role": "secondary" if assertion == "suspected" else None}
            say = {
                "phrase": self._phrase(rng, assertion, noun),
                "code": self._code(rng, "diagnosis", code) if assertion == "suspected" else "",
                "date": "",
                "role": "secondary",
            }
            synonyms = list(dict(c.extra).get("synonyms") or ()) if c else []
            out.append(
                RecipeFact("", "diagnosis", section, assertion, gold, say, [s for s in synonyms if s != noun])
            )
        return out

    def _header(
        self, rng: random.Random, rec: PatientRecord, enc: dict[str, Any], style: dict[str, Any]
    ) -> dict[str, Any]:
        self.faker.seed_instance(rng.getrandbits(32))
        ds = style["date_style"] if style["date_style"] != "my" else "dmy"
        p = rec.patient
        birth = _d(p.get("birth_date"))
        return {
            "clinic": f"Klinik für {enc.get('department') or 'Innere Medizin'}",
            "hospital": f"{P.pick(rng, HOSPITAL_KINDS)} {self.faker.city()}",
            "date": P.format_date(_day(enc["end"]), ds),
            "patient": f"{p.get('given') or ''} {p.get('family') or ''}".strip() or "Patient/in",
            "sex": p.get("sex") or "",
            "birth": P.format_date(birth, ds) if birth else "",
            "start": P.format_date(_day(enc["start"]), ds),
            "end": P.format_date(_day(enc["end"]), ds),
            "doctors": [
                f"Dr. med. {self.faker.last_name()}",
                f"{self.faker.first_name()} {self.faker.last_name()}",
            ],
            "salutation": P.pick(
                rng,
                (
                    "Sehr geehrte Kolleginnen und Kollegen,",
                    "Liebe Kolleginnen und Kollegen,",
                    "Sehr geehrte Frau Kollegin, sehr geehrter Herr Kollege,",
                ),
            ),
        }
