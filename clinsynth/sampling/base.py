"""The sampler's shared parts: its config, the patient split, the per-recipe context, the letter
shape and the helpers every fact family uses (names, dates, code slots, adding a fact).

The fact families live in their own modules (facts_diagnoses, facts_tumours, facts_therapy,
facts_measurements, pools); `clinsynth.sampling.sampler.Sampler` joins them.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal, TypeVar

from faker import Faker
from pydantic import model_validator

from clinsynth.core.config import StageConfig, identity
from clinsynth.records import PatientRecord
from clinsynth.sampling import phrases as P
from clinsynth.sampling.recipe import RecipeFact
from clinsynth.schema import M_VALUE, N_VALUE, T_VALUE, Assertion, FactKind, LetterSection, LetterType, Split
from clinsynth.terminology import load_catalog
from clinsynth.terminology.names import lexicon

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


class SamplerBase:
    """What every fact family shares: the catalogue, the name lexicon, stats, letter shape and the
    helpers that write a fact (its name, date, code slot) into the recipe."""

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
