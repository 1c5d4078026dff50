"""Clinical names and the code each one pins down: gold follows the text.

A letter names a fact the way clinicians write it ("Rektumkarzinom", "Hemikolektomie rechts",
"Pantozol"); gold may carry a code only at the specificity that name (or a written code)
supports. This module is the one place that decides it, for the sampler (which writes a name
and derives the gold code from it) and the verifier (which checks that no gold code is more
specific than its text).

The rules, per slot of the schema:

* **icd10gm, ops, morphology**: the code the name pins down, at the level the name fully
  expresses — "Harnblasenkarzinom" → C67 (not C67.2), "Bronchialkarzinom links" → C34
  (laterality is not an ICD axis), "Karzinom des Colon ascendens" → C18.2, "Hemikolektomie
  rechts" → OPS 5-455.4, "Adenokarzinom" → 8140/3. A ".9 nicht näher bezeichnet" subcode is
  never implied by a name saying nothing more ("Sepsis" → A41). When the catalogue lacks the
  pinned level (its OPS table holds 5-455 and 5-455.41 but not 5-455.4), the nearest ancestor
  the catalogue holds is used, or no code at all — never a more specific one.
* **topography**: never pinned by a name; only a written code enters gold.
* **atc, loinc**: letters never write these codes, but the name determines them: an INN or a
  brand name determines the substance (ATC level 5: "Pantozol" and "Pantoprazol" → A02BC02),
  an analyte name determines the test the schema's slot asks for ("Hb" → 718-7). Gold keeps
  them because the name does; they are the schema's slots for drugs and labs.
* A text that is itself a well-formed code of the catalogue ("C18.2") pins that code.

Names come from `data/clinical_names.csv` (project text, listed in manifest.json) plus, built
at load time, every ATC substance name of the catalogue and every lab name and ward
abbreviation of its LOINC table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from clinsynth.terminology._io import data_text, read_csv
from clinsynth.terminology.catalog import Catalog, load_catalog

#: the code slots of the schema this module answers for
SYSTEMS = ("icd10gm", "ops", "morphology", "topography", "atc", "loinc")

#: ward abbreviations of lab names (catalogue German label -> short forms letters write)
LAB_SHORT: dict[str, tuple[str, ...]] = {
    "Hämoglobin": ("Hb",),
    "Leukozyten": ("Leukos", "Leuko"),
    "Thrombozyten": ("Thrombos", "Thrombo"),
    "Erythrozyten": ("Erys",),
    "Hämatokrit": ("Hkt",),
    "Kreatinin": ("Krea",),
    "Harnstoff": ("Hst",),
    "Natrium": ("Na",),
    "Kalium": ("K",),
    "Calcium": ("Ca",),
    "Magnesium": ("Mg",),
    "ALAT (GPT)": ("GPT", "ALT"),
    "ASAT (GOT)": ("GOT", "AST"),
    "Gamma-GT": ("GGT", "γ-GT"),
    "Alkalische Phosphatase": ("AP",),
    "Bilirubin gesamt": ("Bili", "Bilirubin"),
    "Procalcitonin": ("PCT",),
    "Glucose": ("BZ", "Glukose"),
    "Gesamteiweiß": ("GE",),
    "eGFR (CKD-EPI)": ("eGFR", "GFR"),
    "Neutrophile Granulozyten abs.": ("Neutrophile",),
}

#: catalogue title openings that qualify rather than name ("Sonstige ...", "Ohne Angabe ...")
_QUALIFIERS = ("Sonstige", "Ohne", "Nicht", "Mit ", "Andere", "Bösartige Neubildung ungenau", "Sekundäre und")
_LATERALITY_WORDS = ("links", "rechts", "beidseits", "bds", "li", "re", "bds.", "li.", "re.")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case- and spacing-insensitive key; "Rektum-CA" and "Rektumkarzinom" meet."""
    t = _SPACES.sub(" ", text.strip().casefold()).strip(" .,;:")
    return _CA.sub("karzinom", t)


_CA = re.compile(r"[- ]ca$")


def _strip_side(key: str) -> str:
    """Laterality at the end is no ICD axis: "mammakarzinom links" -> "mammakarzinom"."""
    for w in _LATERALITY_WORDS:
        if key.endswith(" " + w):
            return key[: -len(w) - 1].rstrip(" ,")
    return key


def _parent(system: str, code: str) -> str | None:
    """The next coarser level of a code, or None at the top."""
    if system in ("icd10gm", "topography"):
        if "." in code:
            head, tail = code.split(".", 1)
            return f"{head}.{tail[:-1]}" if len(tail) > 1 else head
        return None
    if system == "ops":
        if "." in code:
            head, tail = code.split(".", 1)
            return f"{head}.{tail[:-1]}" if len(tail) > 1 else head
        return code[:-1] if len(code) > 4 else None  # 5-455 -> 5-45 (level 3), then none
    if system == "morphology":
        return code[:4] if "/" in code else None
    if system == "atc":
        return {7: code[:5], 5: code[:4], 4: code[:3], 3: code[:1]}.get(len(code))
    return None  # LOINC has no hierarchy


def covers(system: str, general: str, specific: str) -> bool:
    """Is `general` the code `specific` or one of its ancestors?"""
    code: str | None = specific
    while code is not None:
        if code == general:
            return True
        code = _parent(system, code)
    return False


class Lexicon:
    """Names -> pinned codes and back, for one catalogue."""

    def __init__(self, cat: Catalog, rows: Iterable[tuple[str, str, str]]) -> None:
        self.cat = cat
        self._tables = {
            "icd10gm": cat.icd10gm,
            "ops": cat.ops,
            "morphology": cat.icdo3_morphology,
            "topography": cat.icdo3_topography,
            "atc": cat.atc,
            "loinc": cat.loinc,
        }
        self._by_name: dict[tuple[str, str], str] = {}
        self._cache: dict[tuple[str, str, str], Any] = {}
        self._names: dict[tuple[str, str], list[str]] = {}
        #: ICD-10-GM category titles (3-character level, no qualifier): they name their category
        #: exactly, so they pin it; the sampler uses them only for codes without a clinical name
        self._fallback: dict[str, str] = {}
        for system, code, name in rows:
            self._add(system, code, name)

    def _add(self, system: str, code: str, name: str) -> None:
        if system not in SYSTEMS:
            raise ValueError(f"clinical_names: unknown system {system!r} for {name!r}; known: {SYSTEMS}")
        key = (system, normalize(name))
        if self._by_name.setdefault(key, code) != code:
            raise ValueError(
                f"clinical_names: {name!r} pins both {self._by_name[key]} and {code} in {system}"
            )
        self._names.setdefault((system, code), []).append(name)

    def add_fallback(self, code: str, title: str) -> None:
        key = ("icd10gm", normalize(title))
        if key not in self._by_name and code not in self._fallback:
            self._by_name[key] = code
            self._fallback[code] = title

    def fallback_name(self, system: str, code: str) -> tuple[str, str] | None:
        """The category title of an ICD code (C71 "Bösartige Neubildung des Gehirns") and the
        category it pins, for codes the clinical names do not cover."""
        if system != "icd10gm" or len(code) < 3 or code[:3] not in self._fallback:
            return None
        return self._fallback[code[:3]], code[:3]

    def in_catalogue(self, system: str, code: str | None) -> str | None:
        """The code itself if the catalogue holds it, else its nearest held ancestor, else None."""
        if code is None:
            return None
        key = ("held", system, code)
        if key not in self._cache:
            self._cache[key] = self._in_catalogue(system, code)
        return self._cache[key]

    def _in_catalogue(self, system: str, code: str | None) -> str | None:
        table = self._tables[system]
        while code is not None:
            if table.lookup(code) is not None:
                return table.lookup(code).code  # type: ignore[union-attr]
            code = _parent(system, code)
        return None

    def pinned_code(self, system: str, text: str) -> str | None:
        key = ("pin", system, text)
        if key not in self._cache:
            self._cache[key] = self._pinned_code(system, text)
        return self._cache[key]

    def _pinned_code(self, system: str, text: str) -> str | None:
        if system not in self._tables:
            raise ValueError(f"unknown code system {system!r}; known: {SYSTEMS}")
        raw = text.strip()
        table = self._tables[system]
        if table.pattern.fullmatch(raw) and table.lookup(raw) is not None:
            return table.lookup(raw).code  # type: ignore[union-attr]
        if system == "topography":
            return None
        key = normalize(raw)
        code = self._by_name.get((system, key))
        if code is None:
            code = self._by_name.get((system, _CA.sub("karzinom", _strip_side(key))))
        return self.in_catalogue(system, code) if code else None

    def names_for(self, system: str, code: str) -> list[tuple[str, str]]:
        """(name, pinned code) for every name whose pinned code is `code` or an ancestor of it,
        most specific first; names whose pinned level the catalogue lacks carry its nearest
        held ancestor (the code they put into gold)."""
        return [(n, c) for n, c in self.names_with_codes(system, code) if c is not None]

    def names_with_codes(self, system: str, code: str) -> list[tuple[str, str | None]]:
        """Like `names_for`, plus the names whose pinned level (and every ancestor) the catalogue
        lacks, with None: such a name is written and its gold carries no code."""
        key = ("names", system, code)
        if key in self._cache:
            return self._cache[key]
        out: list[tuple[str, str | None]] = []
        level: str | None = code
        while level is not None:
            held = self.in_catalogue(system, level)
            out += [(n, held) for n in self._names.get((system, level), ())]
            level = _parent(system, level)
        self._cache[key] = out
        return out


def _csv_rows() -> list[dict[str, str]]:
    return read_csv(data_text("clinical_names.csv"))


#: drug names of the lexicon file (brands and INN aliases) -> ATC, for scanners that look for drug names
BRANDS: dict[str, str] = {r["name"]: r["code"] for r in _csv_rows() if r["system"] == "atc"}


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The packaged lexicon, loaded once per process."""
    cat = load_catalog()
    rows = [(r["system"], r["code"], r["name"]) for r in _csv_rows()]
    lex = Lexicon(cat, rows)
    for concept in cat.atc:  # INN names determine the substance
        if len(concept.code) == 7 and (("atc", normalize(concept.display)) not in lex._by_name):
            lex._add("atc", concept.code, concept.display)
    for concept in cat.icd10gm:
        title = str(concept.extra.get("title") or "")
        if len(concept.code) == 3 and title and not title.startswith(_QUALIFIERS):
            lex.add_fallback(concept.code, title)
    for loinc, lab in cat.labs.items():
        for name in (lab.name_de, *LAB_SHORT.get(lab.name_de, ())):
            if ("loinc", normalize(name)) not in lex._by_name:
                lex._add("loinc", loinc, name)
    for concept in cat.loinc:  # vital signs: their German label; short forms are in clinical_names.csv
        if concept.extra.get("vital") and ("loinc", normalize(concept.display)) not in lex._by_name:
            lex._add("loinc", concept.code, concept.display)
    return lex


def pinned_code(system: str, text: str) -> str | None:
    """The code `text` pins down in `system` (icd10gm, ops, morphology, topography, atc, loinc), at
    the level the catalogue holds; None when the text pins no code there."""
    return lexicon().pinned_code(system, text)


def names_for(system: str, code: str) -> list[tuple[str, str]]:
    """Clinical names fit for a fact coded `code`: (name, the code the name pins), most specific first."""
    return lexicon().names_for(system, code)


#: head-noun endings whose gender is plain: feminine singular, plural (dative -en), neuter/masculine
_FEM_ENDINGS = (
    "ie", "ung", "ion", "heit", "keit", "ose", "itis", "ität", "ik", "ur", "ämie", "schaft", "pathie",
    "episode", "krankheit", "störung", "insuffizienz", "biopsie", "stenose", "embolie", "thrombose",
    "infektion", "entzündung", "läsion", "erkrankung", "fraktur", "anämie", "hypertonie", "zirrhose",
)  # fmt: skip
_PLURAL_HEADS = ("metastasen", "filiae", "läsionen", "herde", "varizen", "lymphome", "polypen")
_NEUTER_HEADS = ("karzinom", "om", "flimmern", "flattern", "syndrom", "ulkus", "ödem", "aneurysma", "ekzem")
_ADJ_RE = re.compile(r"[a-zäöüß][a-zäöüß-]*e")


def name_dative(name: str) -> str | None:
    """The dative of an adjective-initial name for "von/bei/mit/nach/Z.n. {x}" frames ("benigne
    essentielle Hypertonie" -> "benigner essentieller Hypertonie", "zerebrale Metastasen" ->
    "zerebralen Metastasen"); None when the name does not start with an adjective or the head
    noun's gender is not plain from its ending (the renderer then avoids those frames)."""
    words = name.split(" ")
    adj = 0
    while adj < len(words) and _ADJ_RE.fullmatch(words[adj]):
        adj += 1
    if adj == 0 or adj >= len(words) or not words[adj][:1].isupper():
        return None
    head = words[adj].lower().rstrip(",")
    if head.endswith(_PLURAL_HEADS):
        suffix = "n"
    elif head.endswith(_FEM_ENDINGS):
        suffix = "r"
    elif head.endswith(_NEUTER_HEADS):
        suffix = "m"
    else:
        return None
    return " ".join([w + suffix for w in words[:adj]] + words[adj:])
