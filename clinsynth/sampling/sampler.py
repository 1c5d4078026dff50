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

import bisect
import hashlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any, Literal, TypeVar

from faker import Faker
from pydantic import model_validator

from clinsynth.core.config import StageConfig, identity
from clinsynth.records import PatientRecord
from clinsynth.sampling import phrases as P
from clinsynth.sampling.recipe import Recipe, RecipeFact
from clinsynth.schema import M_VALUE, N_VALUE, T_VALUE, Assertion, FactKind, LetterSection, LetterType, Split
from clinsynth.terminology import load_catalog
from clinsynth.terminology.names import lexicon, name_dative

SPLITS: tuple[Split, ...] = ("train", "val", "test")
HOSPITAL_KINDS = ("Klinikum", "Universitätsklinikum", "Krankenhaus", "Städtisches Klinikum")

#: FHIR code systems of the schema's slots (a code from any other system never enters a slot)
ICD10GM_SYSTEMS = ("http://fhir.de/CodeSystem/bfarm/icd-10-gm", "http://fhir.de/CodeSystem/dimdi/icd-10-gm")
OPS_SYSTEMS = ("http://fhir.de/CodeSystem/bfarm/ops", "http://fhir.de/CodeSystem/dimdi/ops")
ATC_SYSTEMS = (
    "http://fhir.de/CodeSystem/bfarm/atc",
    "http://fhir.de/CodeSystem/dimdi/atc",
    "http://www.whocc.no/atc",
)
LOINC_SYSTEMS = ("http://loinc.org",)
ICDO3_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/icd-o-3", "urn:oid:2.16.840.1.113883.6.43.1")

_TUMOR_CATEGORIES = (
    "diagnosis", "histology", "grading", "tnm_t", "tnm_n", "tnm_m", "tnm_l", "tnm_v", "tnm_pn", "tnm_r",
    "lymph_nodes", "uicc_stage", "stage_other", "marker_status", "ecog", "tumor_status", "metastasis",
)  # fmt: skip
#: gold code slots and the say key of a written code (None: never written)
_CODE_SLOTS = (
    ("icd10gm", "code"),
    ("ops", "code"),
    ("morphology", "morphology"),
    ("topography", "topography"),
    ("atc", None),
    ("loinc", None),
)
_ASSERTION_OF: dict[str, Assertion] = {
    "present": "present",
    "negated": "negated",
    "suspected": "suspected",
    "historical": "historical",
}
#: OPS chapters of examinations (imaging 3-, endoscopy 1-4/1-6, biopsies by endoscopy): a letter
#: writes them as dated findings, never as history ("Z.n." is for treatments and events)
_FINDING_OPS = ("3-", "1-6", "1-44", "1-63", "1-64", "1-65", "1-61", "1-62")
#: cancers an endoscopy diagnoses (oesophagus to anus, bladder, larynx)
_ENDOSCOPIC_ENTITIES = ("C15", "C16", "C17", "C18", "C19", "C20", "C21", "C32", "C67")
_RESPONSES = ("complete_remission", "partial_remission", "stable", "progression", "mixed")
def _is_antiemesis(atc: Any) -> bool:
    """5-HT3 and NK1 antagonists (A04AA, A04AD) and dexamethasone, the antiemetic prophylaxis drugs."""
    return isinstance(atc, str) and (atc.startswith(("A04AA", "A04AD")) or atc == "H02AB02")


_CONTEXT_OF_ROLE = {"community": "discharge", "discharge": "discharge", "inpatient": "inpatient"}
_MEDICATION_CONTEXTS = ("discharge", "inpatient", "therapy", "admission", "allergy")


class SamplerConfig(StageConfig):
    """sample.sampler (conf/sample/sampler/): what a letter recipe may hold. Every field changes specs."""

    #: split by patient: fractions of patients in train/val/test
    splits: dict[str, float] = identity()
    #: at most this many stays per patient become letters (None: all)
    stays_per_patient: int | None = identity(ge=1)
    letter_types: dict[LetterType, float] = identity()
    #: probability that each optional section is written, per letter type (Diagnosen always is)
    sections: dict[LetterType, dict[str, float]] = identity()
    #: probability that a fact of the stay is written at all, and the most per letter
    keep: dict[str, float] = identity()
    max_facts: dict[str, int] = identity()
    #: probability that a written fact also shows its code (ICD often, OPS almost never; ATC and
    #: LOINC never: real letters do not write them)
    code_written: dict[str, float] = identity()
    #: probabilities of 0, 1, 2 ... ruled-out findings ("kein Hinweis auf ...")
    negated_counts: tuple[float, ...] = identity()
    #: probabilities of 0, 1, 2 ... suspected findings ("V.a. ...")
    suspected_counts: tuple[float, ...] = identity()
    #: probability that each earlier fact (procedure, therapy, illness, tumour) is mentioned as history
    historical: float = identity(ge=0, le=1)
    #: probability of a negated procedure, a negated drug, a drug intolerance, a ruled-out tumour relapse
    #: and an earlier (second) tumour in the history
    negated_other: dict[str, float] = identity()
    date_shown: float = identity(ge=0, le=1)
    table_layout: float = identity(ge=0, le=1)
    abbreviations: float = identity(ge=0, le=1)
    #: words per letter type: (low, high) of a uniform draw
    target_words: dict[LetterType, tuple[int, int]] = identity()
    #: weights of the letter's noise level (typos, OCR confusions, shifted rows): none | light | heavy
    noise: dict[Literal["none", "light", "heavy"], float] = identity()

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
    cum = list(itertools.accumulate(weights[k] for k in keys))
    return keys[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(keys) - 1)]


def _d(s: str | None) -> date | None:
    try:
        return date.fromisoformat(s[:10]) if s else None
    except ValueError:
        return None


def _count(rng: random.Random, weights: tuple[float, ...]) -> int:
    return rng.choices(range(len(weights)), weights=weights)[0] if weights else 0


class _Ctx:
    """What one recipe draw works with: the stay, its sections and style, the facts so far."""

    def __init__(self, rng: random.Random, sections: list[LetterSection], style: dict[str, Any]) -> None:
        self.rng = rng
        self.sections = sections
        self.style = style
        self.facts: list[RecipeFact] = []
        self.held_icd: set[str] = set()  # ICD codes stated present (never negated as well)
        self.places: dict[str, tuple[list[LetterSection], list[float]]] = {}
        self.marker_labs: list[dict[str, Any]] = []  # this stay's tumour-marker values (CEA, PSA ...)
        self.in_tumor: set[int] = set()  # those written in the tumour block instead of the lab block
        self.lab_flags: set[tuple[str, str | None]] = set()
        #: the main diagnosis as written: (name without side, gold code, written code)
        self.main_named: tuple[str, str | None, str] | None = None  # (LOINC, high | low | None) of the stay
        #: ICD prefixes the stay's labs rule out (phrases.RULED_OUT_BY_LAB): never asserted nor suspected
        self.ruled_out: tuple[str, ...] = ()
        #: the stay has a therapy before it (earlier therapy drugs or radiotherapy, or a cycle > 1 now)
        self.prior_therapy = False
        #: regimens (catalogue keys) and ATC codes of the therapy running this stay
        self.running_regimens: set[str] = set()
        self.running_atc: set[str] = set()
        #: every tumour diagnosis as written, by ICD category: its tumour block repeats that name
        self.tumor_named: dict[str, tuple[str, str | None, str]] = {}
        self.main_c3 = ""  # the main diagnosis' ICD category ("C16")
        self.tumor_new = False  # the current tumour's status is a first diagnosis
        self.stay_start: date | None = None
        self.stay_end: date | None = None


class Sampler:
    """Draws recipes; holds the catalogue, the name lexicon and a Faker for letter heads."""

    def __init__(self, cfg: SamplerConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.cat = load_catalog()
        self.lex = lexicon()
        faker = Faker("de_DE")
        faker.seed_instance(20240601)  # a fixed pool: drawing from it is ~10x cheaper than Faker per letter
        self._cities = [faker.city() for _ in range(400)]
        self._last = [_no_regnal(faker.last_name()) for _ in range(400)]
        self._first = [_no_regnal(faker.first_name()) for _ in range(400)]
        self.stats: Counter[str] = Counter()
        self.entities = {e.label_de: e for e in self.cat.entities}
        self._entity_of_icd = {icd: e for e in self.cat.entities for icd, _ in e.icd}
        self._extras: dict[int, dict[str, Any]] = {}
        self._days: dict[int, date | None] = {}
        self._by_enc: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._code_of: dict[str, str] | None = None
        self._alive: list[dict[str, Any]] = []
        self._group_keys: dict[int, str | None] = {}  # a fact's tumour group (None: not a tumour fact)
        self._drugs: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]] = {}
        self._indexed: PatientRecord | None = None  # holding it keeps the ids of its facts unique
        self._chronic_codes: set[str] | None = None

    # ------------------------------------------------------------------ public
    def _x(self, f: dict[str, Any] | None) -> dict[str, Any]:
        """A fact's `extra`, parsed once per patient."""
        if f is None:
            return {}
        key = id(f)
        got = self._extras.get(key)
        if got is None:
            got = self._extras[key] = PatientRecord.extra(f)
        return got

    def _index(self, rec: PatientRecord) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The record's facts by encounter ("" for unlinked) and category, built once per patient;
        parsed `extra`s and dates are cached alongside (keyed by the fact dicts of this record)."""
        if self._indexed is not rec:
            self._indexed = rec
            self._extras = {}
            self._days = {}
            self._by_enc = {}
            self._code_of = None
            self._alive = []
            self._group_keys = {}
            for eid, enc in rec.encounters.items():
                groups: dict[str, list[dict[str, Any]]] = {}
                for f in enc.facts:
                    groups.setdefault(f["category"], []).append(f)
                self._by_enc[eid] = groups
            loose: dict[str, list[dict[str, Any]]] = {}
            for f in rec.unlinked:
                loose.setdefault(f["category"], []).append(f)
            self._by_enc[""] = loose
        return self._by_enc

    def _day(self, f: dict[str, Any]) -> date | None:
        key = id(f)
        if key not in self._days:
            self._days[key] = _d(f.get("date"))
        return self._days[key]

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

    # ------------------------------------------------------------------ letter shape
    def _style(self, rng: random.Random, letter_type: LetterType) -> dict[str, Any]:
        lo, hi = self.cfg.target_words.get(letter_type, (200, 320))
        return {
            "date_style": _weighted(rng, {"dmy": 5, "dmy_short": 3, "dmy2": 1, "long": 1}),
            "history_date_style": _weighted(rng, {"my": 4, "my2": 1, "dmy": 2}),
            "abbreviations": rng.random() < self.cfg.abbreviations,
            "table": rng.random() < self.cfg.table_layout,
            "target_words": rng.randint(lo, hi),
            "code_style": _weighted(rng, {"paren": 4, "line_end": 3, "bracket": 1, "prefix": 1}),
            "codes": rng.random() < 0.45,  # does this letter write ICD codes (real ones: often)
            "lab_units": rng.random() < 0.75,
            "lab_flags": rng.random() < 0.5,
            "lab_layout": _weighted(rng, {"inline": 3, "table": 2, "list": 1}),
            "heading_case": _weighted(rng, {"title": 5, "upper": 2}),
            "numbered_diagnoses": rng.random() < 0.6,
            "noise": P.NOISE_LEVEL[_weighted(rng, self.cfg.noise)] if self.cfg.noise else 0.0,
            "tnm_layout": _weighted(rng, {"spaced": 3, "compact": 2, "prefix_once": 1}),
        }

    def _sections(self, rng: random.Random, letter_type: LetterType) -> list[LetterSection]:
        probs = self.cfg.sections.get(letter_type, {})
        out: list[LetterSection] = ["diagnosen"]
        out += [s for s in P.SECTION_ORDER[1:] if rng.random() < probs.get(s, 0.0)]
        if rng.random() < 0.2 and "anamnese" in out:  # some letters open with the history
            out.remove("anamnese")
            out.insert(0, "anamnese")
        if rng.random() < 0.15 and "befunde" in out and "verlauf" in out:
            i, j = out.index("befunde"), out.index("verlauf")
            out[i], out[j] = out[j], out[i]
        return out

    def _section(self, rng: random.Random, key: LetterSection, style: dict[str, Any]) -> dict[str, Any]:
        heading = P.pick(rng, P.SECTION_HEADINGS[key])
        if style["heading_case"] == "upper":
            heading = heading.upper()
        table_ok = key in ("befunde", "medikation")
        return {
            "key": key,
            "heading": heading,
            "layout": "table" if style["table"] and table_ok else "prose",
            "variant": rng.randrange(4),
        }

    def _place(
        self, ctx: _Ctx, weights_key: str, prefer: LetterSection | None = None
    ) -> LetterSection | None:
        """A section for a fact, drawn from the kind's weights among the letter's sections."""
        if prefer is not None and prefer in ctx.sections:
            return prefer
        got = ctx.places.get(weights_key)
        if got is None:
            weights = {s: w for s, w in P.SECTION_WEIGHTS[weights_key].items() if s in ctx.sections}
            got = ctx.places[weights_key] = (list(weights), list(itertools.accumulate(weights.values())))
        keys, cum = got
        if not keys:
            return None
        i = bisect.bisect_right(cum, ctx.rng.random() * cum[-1])  # what rng.choices does, 3x cheaper
        return keys[min(i, len(keys) - 1)]

    # ------------------------------------------------------------------ writing helpers
    def _date(
        self, ctx: _Ctx, d: date | None, p: float | None = None, style: str | None = None
    ) -> tuple[str, str | None]:
        """(what the letter writes, gold ISO date at that precision) or ("", None)."""
        if d is None or ctx.rng.random() >= (self.cfg.date_shown if p is None else p):
            return "", None
        ds = style or ctx.style["date_style"]
        return P.format_date(d, ds), P.gold_date(d, ds)

    def _own_words(self, text: str | None) -> str:
        """A source text fit to be written in the letter: an English code display ("Cholesterol
        [Moles/volume] in Serum or Plasma", "... (procedure)") is not (counted, never written)."""
        if text and P.foreign_wording(text):
            self.stats["dropped/english_display"] += 1
            return ""
        return text or ""

    def _slot_code(self, fact: dict[str, Any], systems: tuple[str, ...], what: str) -> str | None:
        """The record's code if it is in the slot's system, else None (counted)."""
        code = fact.get("code")
        if not code:
            return None
        if (fact.get("system") or "") in systems:
            return str(code)
        self.stats[f"foreign_system/{what}"] += 1
        return None

    def _written_icd(self, ctx: _Ctx, code: str, pinned: str | None, section: LetterSection) -> str:
        """An ICD code as letters show it: 3- or 4-character (5 only on a diagnosis-list line), never
        coarser than the name (a name that pins C34.1 is not written beside C34)."""
        options = [code[:3]] + ([code[:5]] if len(code) >= 5 else [])  # "C50" / "C50.4", never "I10.00"
        options = [
            c
            for c in options
            if self.lex.in_catalogue("icd10gm", c) == c and (pinned is None or c.startswith(pinned))
        ]
        if not options:
            return ""
        return options[-1] if ctx.rng.random() < 0.7 else P.pick(ctx.rng, options)

    def _name(
        self, ctx: _Ctx, system: str, code: str, prefer_specific: float = 0.5, site: str | None = None
    ) -> tuple[str, str | None] | None:
        """A clinical name for a coded fact and the code it pins (None: written without a code).
        `site` (the tumour's ICD category) keeps organ-bound wording to its organ: "Karzinom NST"
        is breast pathology, a pancreatic 8500/3 is a "duktales Adenokarzinom"."""
        names = self.lex.names_with_codes(system, code)
        if site is not None:
            names = [n for n in names if P.name_fits_site(n[0], site)] or names
        if not names:
            self.stats[f"no_name/{system}"] += 1
            return None
        top = [n for n in names if n[1] is not None and n[1] == names[0][1]]
        if top and ctx.rng.random() < prefer_specific:
            return P.pick(ctx.rng, top)
        return P.pick(ctx.rng, names)

    def _add(
        self,
        ctx: _Ctx,
        kind: FactKind,
        section: LetterSection,
        assertion: Assertion,
        gold: dict[str, Any],
        say: dict[str, Any],
        synonyms: list[str] | None = None,
    ) -> RecipeFact:
        clean = {k: v for k, v in gold.items() if v is not None and v != []}
        f = RecipeFact("", kind, section, assertion, clean, say, synonyms or [])
        ctx.facts.append(f)
        for slot, say_key in _CODE_SLOTS:
            if slot in clean:  # how each gold code is supported: written, or pinned by the name
                self.stats[f"codes/{slot}/{'written' if say_key and say.get(say_key) else 'pinned'}"] += 1
        return f

    # ------------------------------------------------------------------ diagnoses
    def _diagnoses(self, ctx: _Ctx, facts: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The stay's diagnoses; the main tumour is always written. Returns the main diagnosis row."""
        dx = [f for f in facts if f["category"] == "diagnosis" and f.get("assertion") != "entered-in-error"]
        dx.sort(
            key=lambda f: (
                f.get("role") != "main",
                not self._x(f).get("primary_tumor"),
                f["resource_id"],
            )
        )
        main = next((f for f in dx if f.get("role") == "main"), None) or next(
            (f for f in dx if self._x(f).get("primary_tumor")), None
        )
        n = 0
        seen: set[str] = set()
        seen_tumour: set[str] = set()
        for f in dx:
            is_main = f is main
            code = self._slot_code(f, ICD10GM_SYSTEMS, "diagnosis")
            if code is None and not (f.get("text") or f.get("display")):
                self.stats["dropped/diagnosis_without_code_or_text"] += 1
                continue
            if code in seen:
                continue
            if code and self._x(f).get("primary_tumor") and code[:3] in seen_tumour:
                continue  # one name per tumour per letter ("Hypernephrom" and "Nierenkarzinom" are one)
            # the stay's tumour is always written, also when a complication is the main diagnosis
            tumour = bool(self._x(f).get("primary_tumor")) and f.get("assertion") != "historical"
            if not (is_main or tumour) and (
                n >= self.cfg.max_facts["diagnosis"] or ctx.rng.random() >= self.cfg.keep["diagnosis"]
            ):
                continue
            # Z codes: only the ones a letter lists, never dated, only in the diagnosis list
            if (
                code
                and code.startswith("Z")
                and (not code.startswith(("Z51", "Z93", "Z90", "Z85", "Z92")) or ctx.rng.random() > 0.35)
            ):
                continue
            assertion: Assertion = _ASSERTION_OF.get(f.get("assertion") or "", "present")
            if (
                code
                and not (is_main or tumour)
                and assertion in ("present", "suspected")
                and code.startswith(ctx.ruled_out)
            ):
                self.stats["dropped/diagnosis_ruled_out_by_labs"] += 1
                continue
            if is_main or tumour:
                section: LetterSection | None = "diagnosen"
            elif code and code.startswith("Z"):
                section = "diagnosen"
            else:
                section = self._place(ctx, "diagnosis")
            if section is None:
                continue
            made = self._diagnosis_fact(
                ctx,
                f,
                code,
                section,
                assertion,
                role=f.get("role") or ("main" if is_main else "secondary"),
                ed=bool(self._x(f).get("primary_tumor")),
            )
            if made is None:
                if is_main:
                    self.stats["main_without_name"] += 1
                continue
            if code:
                seen.add(code)
                if self._x(f).get("primary_tumor"):
                    seen_tumour.add(code[:3])
            n += 1
        return main

    def _diagnosis_fact(
        self,
        ctx: _Ctx,
        f: dict[str, Any],
        code: str | None,
        section: LetterSection,
        assertion: Assertion,
        *,
        role: str | None,
        ed: bool,
    ) -> RecipeFact | None:
        extra = self._x(f)
        pinned: str | None = None
        name: str | None = None
        if code:
            got = self._name(ctx, "icd10gm", code, prefer_specific=0.35)
            if got:
                name, pinned = got
        if name is None and code:
            fallback = self.lex.fallback_name("icd10gm", code)
            if fallback is not None:
                name, pinned = fallback
                self.stats["diagnosis_named_by_category_title"] += 1
        if name is None:
            text = self._own_words(f.get("text"))
            if text and ": " not in text and self.lex.pinned_code("icd10gm", text) in (None, code):
                name = text  # the source's own wording; its code only when written
                pinned = self.lex.pinned_code("icd10gm", text)
            else:
                return None
        base_name = name
        lat = extra.get("laterality")
        if lat in P.LATERALITY and extra.get("primary_tumor") and ctx.rng.random() < 0.8:
            name = f"{name} {P.pick(ctx.rng, P.LATERALITY[lat])}"
        written = ""
        if code and ctx.style["codes"] and ctx.rng.random() < self.cfg.code_written.get("diagnosis", 0.0):
            written = self._written_icd(ctx, code, pinned, section)
        if code and code.startswith("Z"):
            date_s, date_g = "", None
        elif ed:
            date_s, date_g = self._date(ctx, _d(f.get("date")), 0.7, ctx.style["history_date_style"])
        else:
            date_s, date_g = self._date(ctx, _d(f.get("date")), 0.15, ctx.style["history_date_style"])
        gold_code = written or pinned
        if gold_code and assertion == "present":
            ctx.held_icd.add(gold_code)
        if code and assertion == "present":
            ctx.held_icd.add(code)
        gold = {"text": name, "icd10gm": gold_code, "role": role, "date": date_g}
        say = {"name": name, "code": written, "date": date_s, "role": role or ""}
        say["course"] = (
            "leading"
            if role == "main"
            else "chronic"
            if code and self._chronic(code) and not extra.get("primary_tumor")
            else "acute"
        )
        dat = name_dative(name)
        if dat:
            say["name_dat"] = dat
        if extra.get("primary_tumor") and assertion != "historical" and ctx.main_named is None:
            ctx.main_named = (base_name, gold_code, written)
        if extra.get("primary_tumor") and code:
            ctx.tumor_named.setdefault(code[:3], (base_name, gold_code, written))
        return self._add(ctx, "diagnosis", section, assertion, gold, say)

    def _chronic(self, code: str) -> bool:
        """A comorbidity known before the stay (the cohort's comorbidity ICD codes, at 3 characters)."""
        if self._chronic_codes is None:
            self._chronic_codes = {c.icd[:3] for c in self.cat.comorbidities}
        return code[:3] in self._chronic_codes

    # ------------------------------------------------------------------ tumours
    def _tumor_groups(self, facts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Tumour facts by tumour. Each stay has its own primary-tumour Condition (`extra.tumor`), so
        groups are keyed by that Condition's code: one tumour keeps its code across stays."""
        if self._code_of is None:
            self._code_of = {}
            for groups_ in self._by_enc.values():
                for f in groups_.get("diagnosis", ()):
                    x = self._x(f)
                    if x.get("primary_tumor"):
                        tid = x.get("tumor") or f["resource_id"]
                        self._code_of[tid] = str(f.get("code") or f["resource_id"])
        groups: dict[str, list[dict[str, Any]]] = {}
        keys = self._group_keys
        for f in facts:
            key = keys.get(id(f), "")
            if key == "":
                x = self._x(f)
                tid = x.get("tumor") or ""
                skip = f["category"] == "diagnosis" and not x.get("primary_tumor")
                key = keys[id(f)] = None if skip else self._code_of.get(tid, tid or "_")
            if key is not None:
                groups.setdefault(key, []).append(f)
        return groups

    def _tumors(
        self,
        ctx: _Ctx,
        known: list[dict[str, Any]],
        earlier: list[dict[str, Any]],
        main: dict[str, Any] | None,
    ) -> None:
        """The current tumour (its latest staging known at discharge), then earlier tumours as history."""
        groups = self._tumor_groups(known + earlier)
        current_key = str(main.get("code") or main["resource_id"]) if main else None
        if current_key not in groups:  # a complication is the main diagnosis: the stay's tumour is current
            own_tumour = next(
                (
                    str(f.get("code") or f["resource_id"])
                    for f in known
                    if f["category"] == "diagnosis"
                    and self._x(f).get("primary_tumor")
                    and f.get("assertion") != "historical"
                ),
                None,
            )
            current_key = own_tumour if own_tumour in groups else "_" if "_" in groups else current_key
        own_keys = {str(f.get("code")) for f in known if f["category"] == "diagnosis"} | {"_"}
        for key, facts in sorted(groups.items(), key=lambda kv: (kv[0] != current_key, kv[0])):
            if key != current_key and current_key and key[:3] == current_key[:3] and key[:1] in "CD":
                continue  # the same tumour under another code: one name per tumour per letter
            if key == current_key:
                assertion: Assertion = (
                    "suspected" if main is not None and main.get("assertion") == "suspected" else "present"
                )
            elif key not in own_keys or all(
                f.get("assertion") == "historical" for f in facts if f["category"] == "diagnosis"
            ):
                if ctx.rng.random() >= max(self.cfg.historical, 0.6):
                    continue
                assertion = "historical"
            else:
                assertion = "present"
            self._tumor_fact(ctx, facts, assertion, current=key == current_key)

    def _tumor_fact(
        self, ctx: _Ctx, facts: list[dict[str, Any]], assertion: Assertion, *, current: bool
    ) -> None:
        rng = ctx.rng
        latest: dict[str, dict[str, Any]] = {}
        markers: dict[str, dict[str, Any]] = {}
        stages: dict[str, dict[str, Any]] = {}
        nodes: dict[str, dict[str, Any]] = {}
        for f in sorted(facts, key=lambda f: (f.get("date") or "", f["resource_id"])):
            c = f["category"]
            if c == "marker_status":
                markers[f.get("code") or f.get("text") or f["resource_id"]] = f
            elif c == "stage_other":
                stages[self._x(f).get("system") or "other"] = f
            elif c == "lymph_nodes":
                nodes[self._x(f).get("nodes") or "positive"] = f
            else:
                latest[c] = f
        dx = latest.get("diagnosis")
        histo = latest.get("histology")
        if dx is None and histo is None:
            return
        section = self._place(ctx, "tumor")
        if section is None:
            section = "diagnosen"
        gold: dict[str, Any] = {}
        say: dict[str, Any] = {"staging": "", "date": ""}
        # entity: the name of the tumour as written (pins the ICD code at its level)
        code = self._slot_code(dx, ICD10GM_SYSTEMS, "tumor") if dx else None
        entity_name = None
        if current and ctx.main_named is not None:
            # one tumour, one name: the tumour block repeats the main diagnosis as written there
            entity_name, main_code, main_written = ctx.main_named
            gold["icd10gm"] = main_code
            say["code"] = main_written
        elif code and code[:3] in ctx.tumor_named:  # a second tumour: the name its diagnosis line wrote
            entity_name, dx_code, dx_written = ctx.tumor_named[code[:3]]
            gold["icd10gm"] = dx_code
            say["code"] = dx_written
        elif code:
            got = self._name(ctx, "icd10gm", code, prefer_specific=0.3)
            if got:
                entity_name, pinned = got
                written = ""
                if ctx.style["codes"] and rng.random() < self.cfg.code_written.get("tumor", 0.0):
                    written = self._written_icd(ctx, code, pinned, "diagnosen")
                gold["icd10gm"] = written or pinned
                say["code"] = written
        if entity_name is None and code:
            fallback = self.lex.fallback_name("icd10gm", code)
            if fallback is not None:
                entity_name, gold["icd10gm"] = fallback
        if entity_name is None:
            ent = self._entity_of_icd.get(code or "")
            entity_name = ent.label_de if ent else (dx.get("text") if dx else None) or "Tumorerkrankung"
            self.stats["tumor_entity_without_code"] += 1
        gold["entity"] = entity_name
        say["entity"] = entity_name
        say["name"] = entity_name
        extra_dx = self._x(dx) if dx else {}
        lat = extra_dx.get("laterality")
        if lat in P.LATERALITY:  # always: the diagnosis line may write the side of the same tumour
            gold["laterality"] = lat
            say["laterality"] = P.pick(rng, P.LATERALITY[lat])
        topo = extra_dx.get("topography") or (self._x(histo).get("topography") if histo else None)
        if topo and rng.random() < self.cfg.code_written.get("topography", 0.0):
            held = self.lex.in_catalogue("topography", topo)
            if held == topo:
                gold["topography"] = topo
                say["topography"] = topo
        # a suspected tumour has no tissue yet: at most a clinical TNM, no histology, grading, markers, stage
        tissue = assertion != "suspected"
        if tissue and histo is not None and self._slot_code(histo, ICDO3_SYSTEMS, "histology"):
            site = str(gold.get("icd10gm") or code or "")[:3] or None
            got = self._name(ctx, "morphology", histo["code"], prefer_specific=0.7, site=site)
            if got:
                hname, hpinned = got
                gold["histology"] = hname
                say["histology"] = hname
                written = histo["code"] if rng.random() < self.cfg.code_written.get("morphology", 0.0) else ""
                say["morphology"] = written
                gold["morphology"] = written or hpinned
        grading = latest.get("grading")
        if tissue and grading and grading.get("code") in P.GRADING_TEXT and rng.random() < 0.85:
            g = str(grading["code"])
            gold["grading"] = f"G{g}" if g in "1234X" else g
            say["grading"] = P.GRADING_TEXT[g]
        if assertion in ("present", "suspected") or rng.random() < 0.5:
            self._tnm(ctx, latest, nodes, gold, say)
            if not tissue and any(
                isinstance(v, dict) and (v.get("prefix") or "c") != "c"
                for v in (gold.get("tnm") or {}).values()
            ):
                for key in ("tnm", "staging", "date"):
                    gold.pop(key, None)
                    say[key] = ""
            elif not tissue and gold.get("tnm"):
                for axis in ("l", "v", "pn", "r"):  # no L/V/Pn/R nor node counts without a specimen
                    gold["tnm"].pop(axis, None)
                if "n" in gold["tnm"]:
                    gold["tnm"]["n"].pop("nodes", None)
                tnm_g = gold["tnm"]
                say["tnm"] = " ".join(
                    f"{tnm_g[a].get('prefix') or ''}{tnm_g[a]['value']}"
                    for a in ("t", "n", "m")
                    if a in tnm_g
                )
            if tissue:
                self._stages(ctx, latest, stages, gold, say)
        if current and tissue:
            self._markers(ctx, markers, gold, say)
            self._marker_values(ctx, gold, say)
            ecog = latest.get("ecog")
            if ecog and str(ecog.get("code")).isdigit() and rng.random() < 0.7:
                gold["ecog"] = int(ecog["code"])
                say["ecog"] = P.pick(rng, ("ECOG {v}", "ECOG-Status {v}", "ECOG PS {v}")).format(
                    v=ecog["code"]
                )
        status = latest.get("tumor_status")
        if current and status and status.get("code") == "new":
            ctx.tumor_new = True
        if status and status.get("code") not in ("new", "recurrence") and not ctx.prior_therapy:
            status = None  # a response only after a therapy
        if assertion == "historical":
            gold["status"] = "complete_remission"
            say["status"] = P.pick(rng, P.TUMOR_STATUS["complete_remission"])
        elif status and status.get("code") in P.TUMOR_STATUS and rng.random() < 0.7:
            gold["status"] = status["code"]
            say["status"] = P.pick(rng, P.TUMOR_STATUS[status["code"]])
        self._add(ctx, "tumor", section, assertion, gold, say)

    def _tnm(
        self,
        ctx: _Ctx,
        latest: dict[str, dict[str, Any]],
        nodes: dict[str, dict[str, Any]],
        gold: dict[str, Any],
        say: dict[str, Any],
    ) -> None:
        rng = ctx.rng
        axes = [(a, latest.get(f"tnm_{a}")) for a in ("t", "n", "m")]
        if not any(f for _, f in axes) or rng.random() < 0.1:
            return
        layout = ctx.style["tnm_layout"]
        parts: list[str] = []
        tnm: dict[str, Any] = {}
        first_prefix = None
        staged: dict[str, Any] | None = None
        for axis, f in axes:
            if f is None or not f.get("code"):
                continue
            staged = staged or f
            value = str(f["code"])
            value = value if value[:1].upper() == axis.upper() else f"{axis.upper()}{value}"
            prefix = (self._x(f).get("prefix") or "").lower() or None
            if prefix not in ("c", "p", "yp", "r", "a", "u"):
                prefix = None
            written_prefix = prefix
            if layout == "prefix_once" and first_prefix is not None:
                written_prefix = None  # "pT3 N1 M0": the prefix is written once, the others carry none
            first_prefix = first_prefix or prefix
            piece = f"{written_prefix or ''}{value}"
            entry: dict[str, Any] = {"prefix": written_prefix, "value": value}
            if axis == "n" and "positive" in nodes and "examined" in nodes and rng.random() < 0.7:
                pos = nodes["positive"].get("value_num")
                exa = nodes["examined"].get("value_num")
                if pos is not None and exa is not None:
                    entry["nodes"] = f"{int(pos)}/{int(exa)}"
                    piece += f" ({entry['nodes']})" if layout != "compact" else f"({entry['nodes']})"
            tnm[axis] = {k: v for k, v in entry.items() if v is not None}
            parts.append(piece)
        for axis, key in (("l", "tnm_l"), ("v", "tnm_v"), ("pn", "tnm_pn"), ("r", "tnm_r")):
            f = latest.get(key)
            if f and f.get("code") and rng.random() < 0.85:
                tnm[axis] = str(f["code"])
                parts.append(str(f["code"]))
        if not parts:
            return
        if not _tnm_ok(tnm):  # a foreign value (T4b(m)) the schema's pattern refuses: leave TNM out
            self.stats["tnm_not_schema"] += 1
            return
        gold["tnm"] = tnm
        say["tnm"] = (
            ("" if layout == "compact" else " ").join(parts) if layout != "spaced" else " ".join(parts)
        )
        if staged is not None:
            ex = self._x(staged)
            if ex.get("staging") in ("initial", "current") and rng.random() < 0.6:
                gold["staging"] = ex["staging"]
                say["staging"] = ex["staging"]
            date_s, date_g = self._date(ctx, _d(staged.get("date")), 0.5, ctx.style["history_date_style"])
            if date_g:
                gold["date"] = date_g
                say["date"] = date_s

    def _stages(
        self,
        ctx: _Ctx,
        latest: dict[str, dict[str, Any]],
        stages: dict[str, dict[str, Any]],
        gold: dict[str, Any],
        say: dict[str, Any],
    ) -> None:
        rng = ctx.rng
        uicc = latest.get("uicc_stage")
        if uicc and uicc.get("code") and rng.random() < 0.8:
            value = str(uicc["code"]).removeprefix("Stadium ").strip()
            if _uicc_ok(value):
                gold["uicc_stage"] = value
                say["stage"] = P.pick(rng, P.STAGE_WRITTEN["UICC"]).format(v=value)
        written = []
        out = []
        for system, f in stages.items():
            value = str(f.get("code") or "").strip()
            if not value or len(value) > 16 or rng.random() >= 0.85:
                continue
            sys_key = system if system in P.STAGE_WRITTEN else "other"
            out.append({"system": sys_key, "value": value})
            written.append(P.pick(rng, P.STAGE_WRITTEN[sys_key]).format(v=value))
        if out:
            gold["stages"] = out
            say["stages"] = written

    def _markers(
        self, ctx: _Ctx, markers: dict[str, dict[str, Any]], gold: dict[str, Any], say: dict[str, Any]
    ) -> None:
        rng = ctx.rng
        out, written = [], []
        for f in list(markers.values())[:4]:
            if rng.random() >= 0.8:
                continue
            ex = self._x(f)
            name = self._own_words(f.get("text") or f.get("display"))
            if not name or len(name) > 40:
                continue
            m: dict[str, Any] = {"name": name}
            code = self._slot_code(f, LOINC_SYSTEMS, "marker") if f.get("system") in LOINC_SYSTEMS else None
            if code and self.cat.loinc.lookup(code):
                m["loinc"] = code
            pieces = [name]
            if f.get("value_num") is not None:
                m["value"] = f["value_num"]
                unit = f.get("unit") or ""
                m["unit"] = unit or None
                pieces.append(
                    f"{P.format_number(f['value_num'])} {P.pick(rng, P.unit_variants(unit))}".strip()
                )
            result = ex.get("result")
            if result in P.MARKER_RESULT:
                m["result"] = result
                pieces.append(P.pick(rng, P.MARKER_RESULT[result]))
            if ex.get("text"):
                m["text"] = ex["text"]
                pieces.append(str(ex["text"]))
            if len(pieces) == 1:
                continue
            out.append({k: v for k, v in m.items() if v is not None})
            written.append(" ".join(pieces))
        if out:
            gold["markers"] = out
            say["markers"] = written

    def _marker_values(self, ctx: _Ctx, gold: dict[str, Any], say: dict[str, Any]) -> None:
        """The stay's latest tumour-marker values (CEA 4,1 ng/ml) in the tumour block, up to two."""
        rng = ctx.rng
        latest: dict[str, dict[str, Any]] = {}
        for f in sorted(ctx.marker_labs, key=lambda f: (f.get("date") or "", f["resource_id"])):
            latest[str(f.get("code"))] = f
        for code, f in list(latest.items())[:2]:
            if rng.random() >= 0.5:
                continue
            lab = self.cat.labs[code]
            name = lab.name_de
            value_s = P.format_number(float(f["value_num"]), lab.decimals)
            unit = f.get("unit") or ""
            shown = P.pick(rng, P.unit_variants(unit)) if unit else ""
            marker: dict[str, Any] = {"name": name, "value": float(value_s.replace(",", "."))}
            if self.lex.pinned_code("loinc", name) == code:
                marker["loinc"] = code
            if shown:
                marker["unit"] = unit
            gold.setdefault("markers", []).append(marker)
            say.setdefault("markers", []).append(f"{name} {value_s} {shown}".strip())
            ctx.in_tumor.add(id(f))

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

    # ------------------------------------------------------------------ assertion pools
    def _pool(
        self,
        ctx: _Ctx,
        facts: list[dict[str, Any]],
        main: dict[str, Any] | None,
        earlier: list[dict[str, Any]],
        sex: str,
    ) -> None:
        """Negated, suspected and historical facts beyond the record's own: ruled-out metastases of the
        entity, suspected and past complications, drugs not given, intolerances, procedures not needed."""
        rng = ctx.rng
        cfg = self.cfg
        ent = self._entity_of_icd.get((main or {}).get("code") or "")
        held = ctx.held_icd | {str(f["code"]) for f in facts if f.get("code")}
        # never rule out nodal metastases of a node-positive tumour, nor distant ones of an M1 tumour
        # without named sites
        for f in ctx.facts:
            tnm = f.gold.get("tnm") if f.kind == "tumor" else None
            if tnm and tnm.get("n", {}).get("value", "N0")[:2] not in ("N0", "NX"):
                held.add("C77")
            if (
                tnm
                and tnm.get("m", {}).get("value", "M0")[:2] == "M1"
                and not any(h.startswith(("C78", "C79")) for h in held)
            ):
                held.update(("C78", "C79"))
        # never rule out what the stay's own labs show (no "kein Anhalt für Anämie" beside Hb 9,1 ↓)
        held |= {code for lab in ctx.lab_flags for code in P.SHOWN_BY_LAB.get(lab, ())}
        main_code = str((main or {}).get("code") or "")
        heme = "C81" <= main_code[:3] <= "C96"
        # no metastasis or carcinosis pool for blood cancers; chemotherapy complications only after a therapy
        mets = [] if heme else [c for c, _ in (ent.metastasis_sites if ent else [])] + list(P.METASTASES)
        mets = list(dict.fromkeys(mets))
        comps = [c for c in P.COMPLICATIONS if ctx.prior_therapy or c not in P.THERAPY_COMPLICATIONS]
        ruled_out = ctx.ruled_out

        def free(code: str) -> bool:
            """Neither the code, an ancestor nor a descendant of it is stated present."""
            return code not in covered and not any(code[:n] in held for n in (3, 5))

        def possible(code: str) -> bool:
            """Not ruled out by the stay's labs (never suspected nor asserted against them)."""
            return not code.startswith(ruled_out)

        covered = {h[:3] for h in held} | {h[:5] for h in held} | held

        n_neg = _count(rng, cfg.negated_counts)
        n_susp = _count(rng, cfg.suspected_counts)
        neg_pool = [c for c in mets[:6] + comps if free(c)]
        rng.shuffle(neg_pool)
        for code in neg_pool[:n_neg]:
            self._pool_diagnosis(ctx, code, "negated")
            held.add(code)
            covered.update(code[:n] for n in (3, 5, 6))
        susp_pool = [c for c in mets[:4] + comps[:12] if free(c) and possible(c)]
        rng.shuffle(susp_pool)
        for code in susp_pool[:n_susp]:
            self._pool_diagnosis(ctx, code, "suspected")
            held.add(code)
            covered.update(code[:n] for n in (3, 5, 6))
        # earlier illnesses: the record's earlier complications first, then typical ones
        hist = [
            str(f["code"])
            for f in earlier
            if f["category"] == "diagnosis" and f.get("code") and not str(f["code"]).startswith(("C", "Z"))
        ]
        hist = [c for c in dict.fromkeys(hist) if free(c)] or [
            c
            for c in P.HISTORY
            if free(c)
            and (ctx.prior_therapy or c not in P.THERAPY_COMPLICATIONS)
            and not (heme and c[0] == "C")
        ]
        if hist and rng.random() < cfg.historical:
            self._pool_diagnosis(ctx, P.pick(rng, hist), "historical")
        other = cfg.negated_other
        if rng.random() < other.get("procedure", 0.0):
            code = P.pick(rng, P.NEGATABLE_PROCEDURES)
            section = self._place(ctx, "procedure")
            got = self._name(ctx, "ops", code, prefer_specific=1.0)
            if section and got:
                self._add(
                    ctx,
                    "procedure",
                    section,
                    "negated",
                    {"text": got[0], "ops": got[1]},
                    {"name": got[0], "code": "", "date": ""},
                )
        if rng.random() < other.get("medication", 0.0):
            given = {f.gold.get("atc") for f in ctx.facts if f.kind == "medication"}
            options = [c for c in P.NEGATABLE_DRUGS if c not in given]
            if options:
                code = P.pick(rng, options)
                section = self._place(ctx, "medication:inpatient")
                got = self._drug_name(ctx, code, {}, 0.2)
                if section and got:
                    self._add(
                        ctx,
                        "medication",
                        section,
                        "negated",
                        {"name": got[0], "atc": got[1], "context": "inpatient"},
                        {"name": got[0], "context": "inpatient"},
                    )
        if rng.random() < other.get("allergy", 0.0):
            code = P.pick(rng, P.ALLERGENS)
            section = self._place(ctx, "medication:allergy")
            got = self._drug_name(ctx, code, {}, 0.3)
            if section and got:
                assertion: Assertion = "suspected" if rng.random() < 0.35 else "present"
                self._add(
                    ctx,
                    "medication",
                    section,
                    assertion,
                    {"name": got[0], "atc": got[1], "context": "allergy"},
                    {"name": got[0], "context": "allergy"},
                )
        has_earlier = any(f.kind == "tumor" and f.assertion == "historical" for f in ctx.facts)
        if main is not None and not has_earlier and rng.random() < other.get("earlier_tumor", 0.0):
            self._earlier_tumor(ctx, ent, sex)
        # a ruled-out relapse only after a treated tumour (never at a first diagnosis)
        if (
            main is not None
            and ctx.prior_therapy
            and not ctx.tumor_new
            and rng.random() < other.get("tumor", 0.0)
        ):
            section = self._place(ctx, "tumor")
            if section:
                name = P.pick(rng, ("Tumorrezidiv", "Lokalrezidiv"))
                self._add(
                    ctx,
                    "tumor",
                    section,
                    "negated",
                    {"entity": name, "status": "recurrence"},
                    {"entity": name, "name": name},
                )

    def _response_needs_written_therapy(self, ctx: _Ctx) -> None:
        """A response (CR/PR/SD/PD) is stated only when the letter itself shows an earlier therapy (a
        historical drug, radiotherapy or procedure, or a cycle > 1): a reader cannot judge it otherwise."""
        shown = any(
            (f.assertion == "historical" and f.kind in ("medication", "radiotherapy", "procedure"))
            or (f.kind == "medication" and str(f.say.get("cycle") or "1") not in ("", "1"))
            for f in ctx.facts
        )
        if shown:
            return
        for f in ctx.facts:
            if f.kind == "tumor" and f.assertion == "present" and f.gold.get("status") in _RESPONSES:
                del f.gold["status"]
                f.say["status"] = ""
                self.stats["response_without_written_therapy"] += 1

    def _earlier_tumor(self, ctx: _Ctx, current: Any, sex: str) -> None:
        """A second primary in the history ("Z.n. Mammakarzinom 2012, in Remission"): an entity other
        than the current one that fits the patient's sex."""
        rng = ctx.rng
        options = [
            e
            for e in self.cat.entities
            if e is not current and e.sex in ("any", sex) and e.has_tnm and e.key not in ("pancreas", "liver")
        ]
        if not options:
            return
        ent = P.pick(rng, options)
        got = self._name(ctx, "icd10gm", ent.icd[0][0][:3], prefer_specific=1.0)
        section = self._place(ctx, "tumor")
        if got is None or section is None:
            return
        name, pinned = got
        gold: dict[str, Any] = {"entity": name, "icd10gm": pinned, "status": "complete_remission"}
        say: dict[str, Any] = {"entity": name, "name": name, "code": ""}
        if rng.random() < 0.6:
            say["status"] = P.pick(rng, P.TUMOR_STATUS["complete_remission"])
        else:
            del gold["status"]
        self._add(ctx, "tumor", section, "historical", gold, say)

    def _pool_diagnosis(self, ctx: _Ctx, code: str, assertion: Assertion) -> None:
        got = self._name(ctx, "icd10gm", code, prefer_specific=1.0)
        section = self._place(ctx, "diagnosis")
        if got is None or section is None:
            return
        name, pinned = got
        written = ""
        if (
            assertion == "suspected"
            and ctx.style["codes"]
            and section == "diagnosen"
            and ctx.rng.random() < 0.4
        ):
            written = self._written_icd(ctx, code, pinned, section)
        date_s, date_g = ("", None)
        if assertion == "historical":
            date_s, date_g = self._date(ctx, None, 0.0)
        gold = {"text": name, "icd10gm": written or pinned, "date": date_g}
        self._add(
            ctx,
            "diagnosis",
            section,
            assertion,
            gold,
            {"name": name, "code": written, "date": date_s, "role": "", "course": "acute"}
            | ({"name_dat": dat} if (dat := name_dative(name)) else {}),
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


_T_RE, _N_RE, _M_RE = re.compile(T_VALUE), re.compile(N_VALUE), re.compile(M_VALUE)
_REGNAL = re.compile(r"(?: (?:I{1,3}|IV|V|VI{1,3}))+$")


def _no_regnal(name: str) -> str:
    """Faker's regnal suffixes ("Jörgen Koch II") are stripped: no real patient name carries one."""
    return _REGNAL.sub("", name)


_SUFFIX = {
    "l": ("L0", "L1", "LX"),
    "v": ("V0", "V1", "V2", "VX"),
    "pn": ("Pn0", "Pn1", "PnX"),
    "r": ("R0", "R1", "R2", "RX"),
}


def _tnm_ok(tnm: dict[str, Any]) -> bool:
    """The schema's TNM patterns, checked without building the model (hot path)."""
    for axis, rx in (("t", _T_RE), ("n", _N_RE), ("m", _M_RE)):
        if axis in tnm and not rx.fullmatch(tnm[axis]["value"]):
            return False
    return all(tnm[k] in allowed for k, allowed in _SUFFIX.items() if k in tnm)


def _uicc_ok(value: str) -> bool:
    return re.fullmatch(r"(0|0a|0is|I{1,3}[ABC]?[1-3]?|IV[ABC]?)", value) is not None
