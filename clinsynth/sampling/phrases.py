"""How German oncology letters write things: dates, numbers, units, stages, markers, headings.

Our own phrasing (notes/letters.md lists the conventions; no corpus sentences are copied).
The sampler picks one variant per fact and stores the resulting strings in the recipe, so the
templates, the prompts and the verifier all see the same words. Names of diagnoses, procedures,
histologies and drugs come from the clinical-name lexicon (clinsynth.terminology.names), never
from catalogue titles.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from datetime import date
from typing import TypeVar

from clinsynth.schema import Assertion, FactKind, LetterSection, LetterType
from clinsynth.terminology.names import LAB_SHORT as LAB_SHORT  # re-exported: pinned to LOINC there

_T = TypeVar("_T")

MONTHS = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)  # fmt: skip

#: date styles: name -> precision of what the letter shows (day | month)
DATE_STYLES: dict[str, str] = {
    "dmy": "day",  # 07.06.2023
    "dmy_short": "day",  # 7.6.2023
    "dmy2": "day",  # 07.06.23
    "long": "day",  # 7. Juni 2023
    "my": "month",  # 06/2023
    "my2": "month",  # 06/23
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
    if style == "my2":
        return f"{d.month:02d}/{d.year % 100:02d}"
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
    "g": ("g",),
    "IE": ("IE",),
    "[IU]": ("IE",),
    "[iU]": ("IE", "I.E."),
    "Mio. IE": ("Mio. IE",),
    "mg/m2": ("mg/m²", "mg/m2"),
    "mg/kg": ("mg/kg",),
    "AUC": ("AUC",),
    "mm[Hg]": ("mmHg",),
    "/min": ("/min", "bpm"),
    "Cel": ("°C",),
    "kg": ("kg",),
    "cm": ("cm",),
    "Gy": ("Gy",),
}


#: histology wording that belongs to one organ's pathology (name fragment -> ICD categories)
SITE_BOUND_NAMES: dict[str, tuple[str, ...]] = {
    "NST": ("C50",),  # "no special type": WHO breast terminology
    "lobulär": ("C50",),
}


def name_fits_site(name: str, site: str) -> bool:
    """May a histology name be written for a tumour of ICD category `site`?"""
    return all(site[:3] in sites for frag, sites in SITE_BOUND_NAMES.items() if frag in name)


#: marks of an English terminology display (LOINC long names, SNOMED CT fully specified names):
#: a source system's display is no letter wording, whatever code it carries
_FOREIGN = re.compile(
    r"\[[A-Za-z#./ ]+\]"  # LOINC property: [Moles/volume], [Mass/volume], [#/volume]
    r"|\((?:procedure|finding|disorder|observable entity|qualifier value|substance|regime/therapy"
    r"|body structure|situation|event|morphologic abnormality|product|medicinal product)\)\s*$"
    r"|\b(?:in (?:Serum|Plasma|Blood|Urine)|by (?:Automated|Manual|Immunoassay)|Serum or Plasma"
    r"|[Mm]easurement|[Pp]rocedure|[Aa]ssessment|of the|[Tt]umou?r of"
    r"|[Mm]alignant|[Nn]eoplasm|[Cc]arcinoma|[Dd]isease|[Tt]herapy|[Tt]ablet|[Ii]njection)\b"
)


def foreign_wording(text: str | None) -> bool:
    """Is `text` an English code display (not something a German letter would write)?"""
    return text is not None and _FOREIGN.search(text) is not None


_TIMING = re.compile(r"(\d+)/(\d+)?(h|d|wk|mo)")
#: FHIR period unit -> (adverb for "n per 1", plural for "every k", noun for "n/…")
_PERIOD = {
    "h": ("pro Stunde", "h", "h"),
    "d": ("tgl.", "Tage", "Tag"),
    "wk": ("wöchentlich", "Wochen", "Woche"),
    "mo": ("monatlich", "Monate", "Monat"),
}


def frequency_text(rng: random.Random, freq: str, *, has_schedule: bool = False) -> str | None:
    """A FHIR timing as ingest stores it ("2/1d", "1/3wk") as a letter writes it ("2x tgl.",
    "alle 3 Wochen"); free text ("Tag 1-5") as it is. None: a daily count the 1-0-1-0 scheme
    already says."""
    m = _TIMING.fullmatch(freq.strip())
    if m is None:
        return freq
    n, period, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    every, plural, noun = _PERIOD[unit]
    if period == 1:
        if unit == "d" and has_schedule:
            return None
        return pick(rng, (f"{n}x {every}", f"{n}x/{noun}"))
    if n == 1:
        return f"alle {period} {plural}"
    return f"{n}x alle {period} {plural}"


def unit_variants(ucum: str | None) -> tuple[str, ...]:
    if not ucum:
        return ("",)
    return UNIT_DISPLAY.get(ucum, (ucum,))


#: assertion -> cue patterns (`{x}` is the name); the renderer owns its own frames, these
#: serve the v1 verifier and prompts that still import them
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

#: words that signal each assertion (lower case)
CUE_WORDS: dict[Assertion, tuple[str, ...]] = {
    "negated": (
        "kein", "keine", "keiner", "keinen", "ausgeschlossen", "nicht nachweisbar", "ohne nachweis",
        "kein anhalt", "nicht", "ohne", "negativ", "unauffällig",
    ),
    "historical": ("z.n.", "zustand nach", "anamnestisch", "früher", "bekannt", "vorbekannt", "damals"),
    "suspected": ("v.a.", "verdacht", "verdachtsdiagnose", "vermutlich", "fraglich", "dringend"),
}  # fmt: skip

#: ICD-10-GM codes a letter may rule out or suspect beyond an entity's metastasis sites:
#: complications of tumour therapy and common differential diagnoses (names from the lexicon)
COMPLICATIONS: tuple[str, ...] = (
    "D70.1", "D70", "D69.5", "D64", "D63.0", "K12.3", "G62.0", "R11", "T80.8", "I26", "I80.2",
    "J18", "A41", "E87.1", "E87.6", "E86", "N17", "R50", "R53", "R63.4", "K59.0", "A09", "E83.5",
)  # fmt: skip
#: metastasis and lymph-node codes any entity may rule out or suspect
METASTASES: tuple[str, ...] = (
    "C78.7", "C78.0", "C79.5", "C79.3", "C78.2", "C78.6", "C79.7", "C77", "C77.2", "C77.1", "C79.2",
)  # fmt: skip
#: (LOINC, flag) -> ICD codes a letter must not rule out when the stay's lab shows it
SHOWN_BY_LAB: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("718-7", "low"): ("D64", "D63.0", "D61.10", "D61.1"),
    ("6690-2", "low"): ("D70", "D70.1", "D61.10"),
    ("26464-8", "low"): ("D70", "D70.1"),
    ("26499-4", "low"): ("D70", "D70.1"),
    ("777-3", "low"): ("D69.5", "D61.10"),
    ("2951-2", "low"): ("E87.1",),
    ("2823-3", "low"): ("E87.6",),
    ("2160-0", "high"): ("N17",),
    ("62238-1", "low"): ("N17",),
    ("1988-5", "high"): ("A41", "J18", "R50"),
    ("33959-8", "high"): ("A41", "J18"),
    ("2000-8", "high"): ("E83.5",),
}
#: (LOINC, direction) -> ICD prefixes a letter must neither assert nor suspect when every value of that
#: lab this stay is on the other side ("V.a. Neutropenie" beside normal neutrophils): the reverse
#: of SHOWN_BY_LAB. "low" rules out when no value is low, "high" when no value is high; Hb uses the
#: clinical anaemia threshold (12.5 g/dl, women 12) instead of the range, eGFR 60 for CKD.
RULED_OUT_BY_LAB: dict[tuple[str, str], tuple[str, ...]] = {
    ("26499-4", "low"): ("D70", "D61.1", "D61.10"),  # neutrophils (preferred over leukocytes)
    ("6690-2", "low"): ("D70", "D61.1", "D61.10"),  # leukocytes, when no neutrophil count
    ("718-7", "low"): ("D64", "D63", "D62", "D61", "D50", "D51", "D52", "D53"),
    ("777-3", "low"): ("D69.5", "D69.6", "D61"),
    ("2951-2", "low"): ("E87.1",),
    ("2951-2", "high"): ("E87.0",),
    ("2823-3", "low"): ("E87.6",),
    ("2823-3", "high"): ("E87.5",),
    ("62238-1", "low"): ("N18.3", "N18.4", "N18.5", "N18.8", "N18.9", "N18"),
    ("2160-0", "high"): ("N17",),
}
#: chemotherapy complications: drawn only after a therapy (never at a new, untreated tumour)
THERAPY_COMPLICATIONS: tuple[str, ...] = ("D70.1", "D70", "D61.1", "D61.10", "K12.3", "G62.0", "T80.8")
#: earlier illnesses a history may mention ("Z.n. Pneumonie")
HISTORY: tuple[str, ...] = ("J18", "I26", "I80.2", "A41", "N17", "D70.1", "K59.0", "E86")
#: procedures that natural letters state as not done ("eine Transfusion war nicht erforderlich")
NEGATABLE_PROCEDURES: tuple[str, ...] = ("8-800", "1-853.2", "8-831", "1-650", "1-632")
#: supportive drugs a letter may state as not given or paused
NEGATABLE_DRUGS: tuple[str, ...] = ("L03AA13", "H02AB02", "B01AB05", "A04AD12", "N02AA05", "M05BA08")
#: drugs patients report intolerances to ("Unverträglichkeit gegen Metamizol")
ALLERGENS: tuple[str, ...] = ("N02BB02", "J01EE01", "B01AC06", "J05AB01", "A03FA01")

LETTER_TYPES: tuple[LetterType, ...] = ("Entlassungsbrief", "Arztbrief", "Kurzarztbrief", "Verlegungsbrief")

SECTION_HEADINGS: dict[LetterSection, tuple[str, ...]] = {
    "diagnosen": ("Diagnosen", "Diagnose(n)", "Haupt- und Nebendiagnosen", "Diagnose"),
    "tumor": (
        "Onkologische Diagnose",
        "Tumorklassifikation",
        "Histologie/Tumor",
        "Verlauf der Tumorerkrankung",
        "Onkologische Anamnese",
    ),
    "anamnese": ("Anamnese", "Aufnahmegrund und Anamnese", "Aktuelle Anamnese", "Aufnahmegrund"),
    "aufnahmebefund": ("Aufnahmebefund", "Status bei Aufnahme", "Körperlicher Untersuchungsbefund"),
    "befunde": ("Befunde", "Labor und Befunde", "Diagnostik", "Befunde/Labor", "Labor"),
    "verlauf": ("Therapie und Verlauf", "Verlauf", "Stationärer Verlauf", "Klinischer Verlauf"),
    "medikation": ("Medikation bei Entlassung", "Entlassmedikation", "Empfohlene Medikation", "Medikation"),
    "epikrise": ("Epikrise", "Beurteilung", "Zusammenfassung", "Epikrise und Beurteilung"),
    "procedere": ("Procedere", "Empfehlungen", "Therapieempfehlung", "Weiteres Vorgehen"),
}

#: the usual order of sections (a letter may skip, swap or merge some)
SECTION_ORDER: tuple[LetterSection, ...] = (
    "diagnosen",
    "tumor",
    "anamnese",
    "aufnahmebefund",
    "befunde",
    "verlauf",
    "medikation",
    "epikrise",
    "procedere",
)

#: narrative sections the hybrid mode gives to the LLM
NARRATIVE_SECTIONS: tuple[LetterSection, ...] = ("anamnese", "verlauf", "epikrise")

#: where facts of each kind may stand, with weights; drawn independently of the assertion so
#: that the section alone does not tell whether a fact is present, negated, suspected or past
SECTION_WEIGHTS: dict[str, dict[LetterSection, float]] = {
    "diagnosis": {"diagnosen": 5.0, "anamnese": 1.5, "befunde": 1.0, "verlauf": 1.5, "epikrise": 1.0},
    "tumor": {"tumor": 4.0, "diagnosen": 3.0, "anamnese": 0.5},
    "procedure": {"verlauf": 3.0, "diagnosen": 1.5, "anamnese": 1.5, "befunde": 1.0, "epikrise": 1.0},
    "radiotherapy": {"tumor": 2.0, "diagnosen": 2.0, "verlauf": 2.0, "anamnese": 1.0},
    "medication:discharge": {"medikation": 1.0},
    "medication:admission": {"anamnese": 1.0},
    "medication:allergy": {"diagnosen": 1.0, "anamnese": 1.5, "medikation": 0.5},
    # therapy drugs never stand in the diagnosis list nor under an admission heading
    "medication:therapy": {"verlauf": 3.0, "tumor": 1.5, "epikrise": 1.0},
    "medication:inpatient": {"verlauf": 3.0, "epikrise": 1.0},
    "lab": {"befunde": 4.0, "verlauf": 1.0, "aufnahmebefund": 1.0, "epikrise": 0.5},
    "vital": {"aufnahmebefund": 4.0, "befunde": 1.0, "verlauf": 1.0},
    "risk_factor": {"anamnese": 3.0, "diagnosen": 1.0, "aufnahmebefund": 0.5},
}

#: assertions that apply to each fact kind (the sampler draws every one of them)
ASSERTIONS: dict[FactKind, tuple[Assertion, ...]] = {
    "diagnosis": ("present", "negated", "suspected", "historical"),
    "tumor": ("present", "negated", "suspected", "historical"),
    "procedure": ("present", "negated", "historical"),
    "radiotherapy": ("present", "historical"),
    "medication": ("present", "negated", "suspected", "historical"),
    "lab": ("present", "historical"),
    "vital": ("present",),
    "risk_factor": ("present", "negated", "historical"),
}

ROUTE_DISPLAY = {
    "Oral use": "p.o.",
    "Intravenous use": "i.v.",
    "Subcutaneous use": "s.c.",
    "Intramuscular use": "i.m.",
    "p.o.": "p.o.",
    "i.v.": "i.v.",
    "s.c.": "s.c.",
    "": "",
}

LATERALITY = {"L": ("links", "li."), "R": ("rechts", "re."), "B": ("beidseits", "bds.")}

GRADING_TEXT = {"1": "G1", "2": "G2", "3": "G3", "4": "G4", "X": "GX", "L": "low grade", "H": "high grade"}

TUMOR_STATUS = {
    "new": ("Erstdiagnose", "neu diagnostiziert"),
    "complete_remission": ("komplette Remission", "CR", "Vollremission"),
    "partial_remission": ("partielle Remission", "PR", "partielles Ansprechen"),
    "stable": ("stabile Erkrankung", "SD", "stable disease"),
    "progression": ("Progress", "progrediente Erkrankung", "PD"),
    "recurrence": ("Rezidiv", "Tumorrezidiv"),
    "mixed": ("gemischtes Ansprechen", "mixed response"),
}

MARKER_RESULT = {
    "positive": ("positiv", "pos."),
    "negative": ("negativ", "neg."),
    "equivocal": ("grenzwertig", "fraglich positiv"),
    "mutated": ("mutiert", "Mutation nachgewiesen"),
    "wildtype": ("Wildtyp", "nicht mutiert"),
    "amplified": ("amplifiziert",),
}

STAGE_WRITTEN = {
    "UICC": ("UICC {v}", "UICC-Stadium {v}", "Stadium {v}"),
    "Ann Arbor": ("Ann Arbor {v}", "Stadium {v} nach Ann Arbor"),
    "ISS": ("ISS {v}", "ISS-Stadium {v}"),
    "R-ISS": ("R-ISS {v}",),
    "Binet": ("Binet {v}", "Binet-Stadium {v}"),
    "Rai": ("Rai {v}",),
    "FIGO": ("FIGO {v}",),
    "Gleason": ("Gleason-Score {v}", "Gleason {v}"),
    "ISUP": ("ISUP-Graduierungsgruppe {v}", "ISUP {v}"),
    "ELN": ("ELN-Risiko {v}",),
    "Durie-Salmon": ("Durie-Salmon {v}",),
    "other": ("{v}",),
}

INTENT_TEXT = {
    "curative": "kurativ",
    "palliative": "palliativ",
    "neoadjuvant": "neoadjuvant",
    "adjuvant": "adjuvant",
    "consolidation": "Konsolidierung",
    "maintenance": "Erhaltung",
}

#: noise level names -> the renderer's level (typos and OCR confusions per 100 words, roughly)
NOISE_LEVEL = {"none": 0.0, "light": 0.3, "heavy": 1.0}

AS_NEEDED = ("bei Bedarf", "b.B.", "bei Bedarf bis 3x täglich")

#: letter types: the reason and destination a Verlegungsbrief names in its head
#: (reason, destination) pairs of a Verlegungsbrief, by what the stay was (header stay_kind, or
#: "radiotherapy" for a stay with radiotherapy): reason and destination are drawn as one pair
TRANSFER_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "radiotherapy": (("zur strahlentherapeutischen Mitbehandlung", "Klinik für Strahlentherapie"),),
    "palliative": (("zur weiteren palliativmedizinischen Versorgung", "Palliativstation"),),
    "surgery": (
        ("zur Anschlussheilbehandlung", "Rehabilitationsklinik"),
        ("zur weiteren operativen Versorgung", "Klinik für Allgemein- und Viszeralchirurgie"),
    ),
    "diagnostic": (
        ("zur operativen Versorgung", "Klinik für Allgemein- und Viszeralchirurgie"),
        ("zur Einleitung der Systemtherapie", "Klinik für Hämatologie und Onkologie"),
    ),
    "therapy": (("zur Fortführung der Therapie", "Klinik für Hämatologie und Onkologie"),),
    "complication": (
        ("zur intensivmedizinischen Überwachung", "Klinik für Intensivmedizin"),
        ("zur weiteren internistischen Behandlung", "Klinik für Innere Medizin"),
    ),
    "": (("zur weiteren internistischen Behandlung", "Klinik für Innere Medizin"),),
}
TRANSFER_REASONS = tuple(dict.fromkeys(r for pairs in TRANSFER_PAIRS.values() for r, _ in pairs))
TRANSFER_DESTINATIONS = tuple(dict.fromkeys(d for pairs in TRANSFER_PAIRS.values() for _, d in pairs))


def pick(rng: random.Random, options: Sequence[_T]) -> _T:
    return options[rng.randrange(len(options))]
