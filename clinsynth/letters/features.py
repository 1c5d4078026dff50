"""What a letter's text shows, counted the same way for synthetic and real letters: words, style
features (negation, suspicion, history, imaging, abbreviations, TNM strings, schedules, lab
tables) and written codes by system.

Text only, no recipe: the same functions count the development letters (benchmarks/
dev_letter_stats.py), so a synthetic/real difference in the data report is a difference in the
letters, not in the counting. Patterns are our own; they look for the conventions listed in
notes/letters.md, not for any corpus sentence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: one word: a whitespace-separated token holding a letter or a digit ("-" or "•" alone is no word)
_WORD = re.compile(r"\S*[^\W_]\S*")

_I = re.IGNORECASE
#: written codes by system. ICD-O topography (C50.4) looks exactly like ICD-10-GM and counts there.
CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    # C50.4, I10, C61 -- not Vitamin B12, not inside a word or a longer code
    "icd10gm": re.compile(r"(?<![\w/.,-])(?<!Vitamin )[A-Z][0-9]{2}(?:\.[0-9]{1,2})?(?![\w/-]|[.,][0-9])"),
    # 5-870.a2, 8-542.11 -- four characters at least (1-10 is a range, not a code)
    "ops": re.compile(r"(?<![\w/.,-])[1-9]-[0-9]{2}[0-9a-z](?:\.[0-9a-z]{1,2})?(?![\w-]|[.,][0-9a-z])"),
    "atc": re.compile(r"(?<![\w-])[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}(?![\w-])"),
    # 2160-0 -- not CA 19-9 / CA 15-3, not a phone number or a date range
    "loinc": re.compile(r"(?<![\w.,/-])(?<!CA )(?<!CA-)(?<!Ca )[0-9]{2,7}-[0-9](?![\w/-]|[.,][0-9])"),
    "icdo3_morphology": re.compile(r"(?<![\w/.-])[89][0-9]{3}/[0-9](?![\w/])"),
}

#: a TNM string: T followed by N ("pT2 pN1a", "ypT3cN0"), a prefixed T alone ("pT1a"), or N then M
_TNM = re.compile(
    r"(?<!\w)(?:y?[cpra]|u)?T(?:[0-4][a-d]?[0-9]?|is|X)(?:\s?\((?:m|[0-9]+)\))?"
    r"[\s,;]{0,3}(?:y?[cpra]|u)?N(?:[0-3][a-c]?|X|\+)(?![a-z])"
    r"|(?<!\w)y?[cpr]T(?:[0-4][a-d]?|is|X)(?![A-Za-z])"
    r"|(?<!\w)(?:y?[cpra])?N(?:[0-3][a-c]?|X|\+)[\s,;]{0,3}(?:y?[cpra])?M(?:[01][a-c]?|X)(?![A-Za-z])"
)
_SCHEDULE_SLOT = r"(?:[0-3](?:[,.]5)?|½|1/2)"
_SCHEDULE = re.compile(
    rf"(?<![\w.,/-]){_SCHEDULE_SLOT}(?:\s?-\s?{_SCHEDULE_SLOT}){{2,3}}(?![\w/]|[.,][0-9]|-[0-9])"
)
#: lab names as letters write them (also abbreviated), followed by a value
_LAB_NAME = (
    r"(?:Hb|Hämoglobin|Hk|Hkt|Hämatokrit|Leukozyten|Leukos|Leuko|Thrombozyten|Thrombos|Thrombo|"
    r"Erythrozyten|Ery|Neutrophile|Kreatinin|Krea|Harnstoff|eGFR|GFR|CRP|PCT|Natrium|Na|Kalium|K|"
    r"Calcium|Ca|GOT|GPT|AST|ALT|GGT|γ-GT|AP|LDH|Bilirubin|Albumin|Gesamteiweiß|Glukose|Glucose|"
    r"HbA1c|TSH|INR|Quick|PTT|CEA|CA ?19-9|CA ?15-3|CA ?125|PSA|AFP|NSE|Ferritin|Harnsäure|Lipase)"
)
_LAB_VALUE = re.compile(rf"(?<![\w-]){_LAB_NAME}\b\s*[:=]?\s*[<>]?\s*[0-9]+(?:[,.][0-9]+)?", _I)
_LAB_LINE = re.compile(rf"^[^\n]*{_LAB_VALUE.pattern}[^\n]*$", _I | re.MULTILINE)

#: features a letter has or has not; share of letters with each goes into the data report
FEATURES: dict[str, re.Pattern[str]] = {
    "negation": re.compile(
        r"(?<!\w)(?:kein(?:e[mnrs]?)?|ausgeschlossen|nicht nachweisbar|nicht nachgewiesen|"
        r"ohne (?:Hinweis|Nachweis|Anhalt)|verneint)(?!\w)",
        _I,
    ),
    "suspicion": re.compile(
        r"(?<!\w)(?:V\.\s?a\.|Verdacht|verdächtig|\w*suspekt\w*|fraglich\w*|vermutlich|DD|a\.\s?e\.|"
        r"am ehesten)(?!\w)"
    ),
    "history": re.compile(
        r"(?<!\w)(?:Z\.\s?n\.|Zustand nach|St\.\s?p\.|anamnestisch|vorbekannt\w*|bekannt\w*|früher\w*)(?!\w)",
        _I,
    ),
    "imaging": re.compile(
        r"(?<![\w])(?:CT|MRT|MRI|PET(?:-CT)?|Sono\w*|Röntgen\w*|Rö|Szintigra\w*|Mammogra\w*|"
        r"Echokardiogra\w*|Computertomogra\w*|Magnetresonanz\w*|Kernspin\w*|\w*sonograph\w*|\w*-CT)(?![A-Za-zäöü])"
    ),
    "endoscopy": re.compile(
        r"(?<!\w)(?:ÖGD|Gastroskopie|Koloskopie|Bronchoskopie|\w*skopie|EBUS|ERCP)(?!\w)"
    ),
    "staging_scores": re.compile(
        r"(?<!\w)(?:ECOG|Karnofsky|KPS|UICC|Ann[- ]Arbor|Gleason|ISUP|FIGO|Binet)(?!\w)"
    ),
    "radiotherapy_dose": re.compile(r"[0-9](?:[,.][0-9]+)?\s?Gy(?!\w)"),
    "drug_dose": re.compile(r"[0-9](?:[,.][0-9]+)?\s?(?:mg|µg|mcg|g|IE|I\.E\.|ml)(?:/m²|/m2|/kg)?(?![\w/])"),
    "tnm": _TNM,
    "medication_schedule": _SCHEDULE,
    "lab_values": _LAB_VALUE,
    "lab_table": _LAB_LINE,  # refined in `features`: three lab lines in a row
    "tumour_board": re.compile(r"(?<!\w)(?:Tumorkonferenz|Tumorboard|Tumor-Board)(?!\w)", _I),
    "first_diagnosis_ED": re.compile(r"(?<!\w)ED(?=[\s:]+(?:[0-9]|[A-ZÄÖÜ][a-zäöü]+ [0-9]))"),
    # abbreviations, one feature each (case as letters write them: v.a. lower-case is "vor allem")
    "abbr_AZ_EZ": re.compile(r"(?<!\w)(?:AZ|EZ)(?!\w)"),
    "abbr_Pat": re.compile(r"(?<!\w)Pat\."),
    "abbr_LK": re.compile(r"(?<!\w)LK(?:s|-\w+)?(?!\w)"),
    "abbr_Zn": re.compile(r"(?<!\w)Z\.\s?n\."),
    "abbr_Va": re.compile(r"(?<!\w)V\.\s?a\."),
    "abbr_oB": re.compile(r"(?<!\w)o\.\s?B\.|(?<!\w)b\.\s?B\."),
    "abbr_side": re.compile(r"(?<!\w)(?:re|li|bds)\.(?=[\s,;)])"),
    "abbr_CTX_RTX": re.compile(r"(?<!\w)(?:CTX|RTX|RCT|PCT|R-?CHT|Chemo)(?!\w)"),
    "abbr_CA": re.compile(r"(?<!\w)(?:\w+-)?(?:CA|Ca)(?:\.|(?=[\s,;)]))(?!\s?[0-9])"),
    "uppercase_heading": re.compile(r"^[ \t]*[A-ZÄÖÜ][A-ZÄÖÜ /-]{4,}:?[ \t]*$", re.MULTILINE),
}


def word_count(text: str) -> int:
    return sum(1 for _ in _WORD.finditer(text))


def written_codes(text: str) -> dict[str, int]:
    """How many codes of each system the text writes (occurrences)."""
    return {system: sum(1 for _ in pat.finditer(text)) for system, pat in CODE_PATTERNS.items()}


def _lab_table(text: str) -> bool:
    """Three lines in a row that each hold a lab name with a value: a lab block, not prose."""
    run = 0
    for line in text.splitlines():
        if _LAB_VALUE.search(line) and len(line) < 160:
            run += 1
            if run >= 3:
                return True
        elif line.strip():
            run = 0
    return False


def features(text: str) -> dict[str, bool]:
    """Which features the text has; `code_<system>` for each written code system."""
    out = {name: bool(pat.search(text)) for name, pat in FEATURES.items() if name != "lab_table"}
    out["lab_table"] = _lab_table(text)
    out["abbreviation_any"] = any(v for k, v in out.items() if k.startswith("abbr_"))
    for system, n in written_codes(text).items():
        out[f"code_{system}"] = n > 0
    return out


def feature_names() -> list[str]:
    """Every key `features` returns, in report order."""
    return list(features(""))


def shares(counts: Mapping[str, int], letters: int) -> dict[str, float | None]:
    return {k: (round(v / letters, 4) if letters else None) for k, v in counts.items()}
