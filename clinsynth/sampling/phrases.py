"""How German oncology letters write things: dates, numbers, units, cues, abbreviations.

Our own phrasing (notes/letters.md lists the conventions; no corpus sentences are copied).
The sampler picks one variant per fact and stores the resulting string in the recipe, so the
templates, the prompts and the verifier all see the same words.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date
from typing import TypeVar

from clinsynth.schema import Assertion, LetterSection, LetterType

_T = TypeVar("_T")

MONTHS = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)  # fmt: skip

#: date styles: name -> (formatter, precision of what the letter shows: day | month)
DATE_STYLES: dict[str, str] = {
    "dmy": "day",  # 07.06.2023
    "dmy_short": "day",  # 7.6.2023
    "dmy2": "day",  # 07.06.23
    "long": "day",  # 7. Juni 2023
    "my": "month",  # 06/2023
}


def format_date(d: date, style: str) -> str:
    if style == "dmy":
        return f"{d.day:02d}.{d.month:02d}.{d.year}"
    if style == "dmy_short":
        return f"{d.day}.{d.month}.{d.year}"
    if style == "dmy2":
        return f"{d.day:02d}.{d.month:02d}.{d.year % 100:02d}"
    if style == "long":
        return f"{d.day}. {MONTHS[d.month - 1]} {d.year}"
    if style == "my":
        return f"{d.month:02d}/{d.year}"
    raise ValueError(f"unknown date style {style!r}; known: {sorted(DATE_STYLES)}")


def gold_date(d: date, style: str) -> str:
    """ISO date at the precision the letter shows (06/2023 -> 2023-06)."""
    return d.isoformat() if DATE_STYLES[style] == "day" else f"{d.year:04d}-{d.month:02d}"


def format_number(x: float, decimals: int | None = None) -> str:
    """German decimal comma; integers without decimals (10,2 · 557,4 · 200)."""
    if decimals is not None:
        x = round(x, decimals)
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.{decimals}f}".replace(".", ",") if decimals else repr(float(x)).replace(".", ",")


#: UCUM (gold) -> how letters print it
UNIT_DISPLAY: dict[str, tuple[str, ...]] = {
    "g/dL": ("g/dl",),
    "10*3/uL": ("/nl", "Tsd/µl", "G/l"),
    "10*6/uL": ("/pl", "Mio/µl", "T/l"),
    "mg/dL": ("mg/dl",),
    "mmol/L": ("mmol/l",),
    "U/L": ("U/l",),
    "mg/L": ("mg/l",),
    "ng/mL": ("ng/ml",),
    "ug/L": ("µg/l",),
    "ug/mL": ("µg/ml",),
    "pg/mL": ("pg/ml",),
    "ng/dL": ("ng/dl",),
    "[arb'U]/mL": ("U/ml",),
    "mL/min/{1.73_m2}": ("ml/min/1,73m²",),
    "m[IU]/L": ("mU/l", "µIU/ml"),
    "{INR}": ("",),
    "%": ("%",),
    "fL": ("fl",),
    "s": ("s", "sek"),
    "mg": ("mg",),
    "µg": ("µg",),
    "ug": ("µg",),
    "IE": ("IE",),
    "[IU]": ("IE",),
    "mg/m2": ("mg/m²", "mg/m2"),
    "mg/kg": ("mg/kg",),
    "AUC": ("AUC",),
}


def unit_variants(ucum: str | None) -> tuple[str, ...]:
    if not ucum:
        return ("",)
    return UNIT_DISPLAY.get(ucum, (ucum,))


#: lab abbreviations used on wards (name_de -> short forms)
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
    "Bilirubin gesamt": ("Bili",),
    "Procalcitonin": ("PCT",),
    "Glucose": ("BZ", "Glukose"),
    "Gesamteiweiß": ("GE",),
}

#: assertion -> phrase patterns around the fact's text; `{x}` is the text
CUES: dict[Assertion, tuple[str, ...]] = {
    "negated": (
        "kein Hinweis auf {x}",
        "{x} ausgeschlossen",
        "{x} nicht nachweisbar",
        "ohne Nachweis von {x}",
        "kein Anhalt für {x}",
    ),
    "historical": ("Z.n. {x}", "Zustand nach {x}", "{x} (anamnestisch)"),
    "suspected": ("V.a. {x}", "Verdacht auf {x}", "{x} (Verdachtsdiagnose)"),
}

#: words that signal each assertion to the verifier (lower case)
CUE_WORDS: dict[Assertion, tuple[str, ...]] = {
    "negated": (
        "kein", "keine", "keiner", "keinen", "ausgeschlossen", "nicht nachweisbar", "ohne nachweis",
        "kein anhalt", "nicht", "ohne", "negativ", "unauffällig",
    ),
    "historical": ("z.n.", "zustand nach", "anamnestisch", "früher", "bekannt", "vorbekannt", "damals"),
    "suspected": ("v.a.", "verdacht", "verdachtsdiagnose", "vermutlich", "fraglich", "dringend"),
}  # fmt: skip

#: findings a letter may rule out ("kein Hinweis auf ...") or suspect ("V.a. ..."):
#: ICD-10-GM code -> the noun a clinician writes. Every code is a terminal code of the catalogue (tested).
RULE_OUT: dict[str, str] = {
    "C78.7": "Lebermetastasen",
    "C78.0": "Lungenmetastasen",
    "C79.5": "Knochenmetastasen",
    "C79.3": "Hirnmetastasen",
    "C78.2": "Pleurakarzinose",
    "C78.6": "Peritonealkarzinose",
    "C79.7": "Nebennierenmetastasen",
    "J18.9": "Pneumonie",
    "I26.9": "Lungenembolie",
    "A41.9": "Sepsis",
    "I80.28": "tiefe Beinvenenthrombose",
    "R18": "Aszites",
}

#: letter types and the department phrases of the head
LETTER_TYPES: tuple[LetterType, ...] = ("Entlassungsbrief", "Arztbrief", "Kurzarztbrief", "Verlegungsbrief")

SECTION_HEADINGS: dict[LetterSection, tuple[str, ...]] = {
    "diagnosen": ("Diagnosen", "Diagnose(n)", "Haupt- und Nebendiagnosen"),
    "anamnese": ("Anamnese", "Aufnahmegrund und Anamnese", "Aktuelle Anamnese"),
    "befunde": ("Befunde", "Befunde/Labor", "Labor und Befunde"),
    "tumor": ("Histologie/Tumor", "Onkologische Diagnose", "Tumorklassifikation"),
    "verlauf": ("Therapie und Verlauf", "Verlauf", "Stationärer Verlauf"),
    "medikation": ("Medikation bei Entlassung", "Entlassmedikation", "Empfohlene Medikation"),
    "epikrise": ("Procedere/Epikrise", "Epikrise", "Beurteilung und Procedere"),
}

#: the order sections appear in (a letter may skip some)
SECTION_ORDER: tuple[LetterSection, ...] = (
    "diagnosen",
    "tumor",
    "anamnese",
    "befunde",
    "verlauf",
    "medikation",
    "epikrise",
)

#: narrative sections the hybrid mode gives to the LLM (the study's Anamnese and Epikrise)
NARRATIVE_SECTIONS: tuple[LetterSection, ...] = ("anamnese", "epikrise")

ROUTE_DISPLAY = {"Oral use": "p.o.", "Intravenous use": "i.v.", "Subcutaneous use": "s.c.", "": ""}

LATERALITY = {"L": "links", "R": "rechts", "B": "beidseits"}

GRADING_TEXT = {"1": "G1", "2": "G2", "3": "G3", "4": "G4", "X": "GX", "L": "low grade", "H": "high grade"}


def pick(rng: random.Random, options: Sequence[_T]) -> _T:
    return options[rng.randrange(len(options))]
