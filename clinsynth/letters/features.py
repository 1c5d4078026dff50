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
from collections.abc import Iterator, Mapping

#: one word: a whitespace-separated token holding a letter or a digit ("-" or "•" alone is no word)
_WORD = re.compile(r"\S*[^\W_]\S*")

_I = re.IGNORECASE


class Pattern:
    """A regex with a word boundary on its left, checked per match instead of by a leading
    look-behind: `re` scans ~5x faster when a pattern starts with a literal or a character class,
    and the report runs every pattern over every letter of a paper-scale run."""

    def __init__(self, pattern: str, flags: int = 0, left: str = r"\w", prefix: str = "") -> None:
        self.re = re.compile(pattern, flags)
        #: characters that must not stand right before a match ("" = no boundary)
        self.left = re.compile(left) if left else None
        #: up to two letters that may stand between the boundary and the match (pT2, ypN1)
        self.prefix = prefix

    def finditer(self, text: str, pos: int = 0, endpos: int | None = None) -> Iterator[re.Match[str]]:
        for m in self.re.finditer(text, pos, len(text) if endpos is None else endpos):
            i = m.start()
            if self.prefix:
                for _ in range(2):
                    if i > 0 and text[i - 1] in self.prefix:
                        i -= 1
            if self.left is None or i == 0 or not self.left.match(text[i - 1]):
                yield m

    def search(self, text: str, pos: int = 0, endpos: int | None = None) -> re.Match[str] | None:
        return next(self.finditer(text, pos, endpos), None)


class AnyOf:
    """A feature found by any of several patterns (word-initial terms and infixes such as
    "metastasensuspekt" need different left boundaries)."""

    def __init__(self, *patterns: Pattern) -> None:
        self.patterns = patterns

    def search(self, text: str, pos: int = 0, endpos: int | None = None) -> re.Match[str] | None:
        for p in self.patterns:
            m = p.search(text, pos, endpos)
            if m:
                return m
        return None


#: written codes by system. ICD-O topography (C50.4) looks exactly like ICD-10-GM and counts there.
CODE_PATTERNS: dict[str, Pattern] = {
    # C50.4, I10, C61 -- not Vitamin B12, not inside a word or a longer code
    "icd10gm": Pattern(
        r"[A-Z][0-9]{2}(?:\.[0-9]{1,2})?(?![\w/-]|[.,][0-9])(?<!Vitamin B12)", left=r"[\w/.,-]"
    ),
    # 5-870.a2, 8-542.11 -- four characters at least (1-10 is a range, not a code)
    "ops": Pattern(r"[1-9]-[0-9]{2}[0-9a-z](?:\.[0-9a-z]{1,2})?(?![\w-]|[.,][0-9a-z])", left=r"[\w/.,-]"),
    "atc": Pattern(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}(?![\w-])", left=r"[\w-]"),
    # 2160-0 -- not CA 19-9 / CA 15-3, not a phone number or a date range
    "loinc": Pattern(
        r"[0-9]{2,7}-[0-9](?![\w/-]|[.,][0-9])"
        r"(?<!CA 19-9)(?<!CA 15-3)(?<!CA 72-4)(?<!CA-19-9)(?<!CA-15-3)(?<!Ca 19-9)(?<!Ca 15-3)",
        left=r"[\w.,/-]",
    ),
    "icdo3_morphology": Pattern(r"[89][0-9]{3}/[0-9](?![\w/])", left=r"[\w/.-]"),
}

#: a TNM string: T followed by N ("pT2 pN1a", "ypT3cN0"), a prefixed T alone ("pT1a"), or N then M
_TNM = AnyOf(
    Pattern(
        r"T(?:[0-4][a-d]?[0-9]?|is|X)(?:\s?\((?:m|[0-9]+)\))?"
        r"[\s,;]{0,3}(?:y?[cpra]|u)?N(?:[0-3][a-c]?|X|\+)(?![a-z])"
        r"|N(?:[0-3][a-c]?|X|\+)[\s,;]{0,3}(?:y?[cpra])?M(?:[01][a-c]?|X)(?![A-Za-z])",
        prefix="ycprau",
    ),
    Pattern(r"[cpr]T(?:[0-4][a-d]?|is|X)(?![A-Za-z])", prefix="y"),
)
_SCHEDULE_SLOT = r"(?:[0-3](?:[,.]5)?|½|1/2)"
_SCHEDULE = Pattern(
    rf"{_SCHEDULE_SLOT}(?:\s?-\s?{_SCHEDULE_SLOT}){{2,3}}(?![\w/]|[.,][0-9]|-[0-9])", left=r"[\w.,/-]"
)
#: lab names as letters write them (also abbreviated), followed by a value
_LAB_NAME = (
    r"(?:Hb|HB|Hämoglobin|Hk|Hkt|Hämatokrit|Leukozyten|Leukos|Leuko|Thrombozyten|Thrombos|Thrombo|"
    r"Erythrozyten|Ery|Neutrophile|Kreatinin|Krea|Harnstoff|eGFR|GFR|CRP|PCT|Natrium|Na|Kalium|K|"
    r"Calcium|Ca|GOT|GPT|AST|ALT|GGT|γ-GT|AP|LDH|Bilirubin|Albumin|Gesamteiweiß|Glukose|Glucose|"
    r"HbA1c|TSH|INR|Quick|PTT|CEA|CA ?19-9|CA ?15-3|CA ?125|PSA|AFP|NSE|Ferritin|Harnsäure|Lipase)"
)
_LAB_VALUE = Pattern(rf"{_LAB_NAME}(?!\w)\s*[:=]?\s*[<>]?\s*[0-9]+(?:[,.][0-9]+)?", left=r"[\w-]")

#: features a letter has or has not; share of letters with each goes into the data report
FEATURES: dict[str, Pattern | AnyOf] = {
    "negation": Pattern(
        r"(?:kein(?:e[mnrs]?)?|ausgeschlossen|nicht nachweisbar|nicht nachgewiesen|"
        r"ohne (?:Hinweis|Nachweis|Anhalt)|verneint)(?!\w)",
        _I,
    ),
    "suspicion": AnyOf(
        Pattern(r"(?:V\.\s?a\.|Verdacht|verdächtig|fraglich|vermutlich|DD|a\.\s?e\.|am ehesten)(?!\w)"),
        Pattern(r"suspekt", left=""),  # metastasensuspekt
    ),
    "history": Pattern(
        r"Z\.\s?n\.|[Zz]ustand nach|St\.\s?p\.|[Aa]namnestisch|[Vv]orbekannt|[Bb]ekannt|[Ff]rüher"
    ),
    "imaging": AnyOf(
        Pattern(
            r"(?:CT|MRT|MRI|PET|Rö)(?![A-Za-zäöü])|Sono|Röntgen|Szintigra|Mammogra|Echokardiogra|"
            r"Computertomogra|Magnetresonanz|Kernspin"
        ),
        Pattern(r"sonograph|tomograph|szintigra|-CT(?![A-Za-z])", left=""),  # Abdomensonographie, Thorax-CT
    ),
    "endoscopy": Pattern(r"ÖGD|Gastroskopie|Koloskopie|Bronchoskopie|skopie|EBUS|ERCP", left=""),
    "staging_scores": Pattern(r"(?:ECOG|Karnofsky|KPS|UICC|Ann[- ]Arbor|Gleason|ISUP|FIGO|Binet)(?!\w)"),
    "radiotherapy_dose": Pattern(r"[0-9](?:[,.][0-9]+)?\s?Gy(?!\w)", left=""),
    "drug_dose": Pattern(
        r"[0-9](?:[,.][0-9]+)?\s?(?:mg|µg|mcg|g|IE|I\.E\.|ml)(?:/m²|/m2|/kg)?(?![\w/])", left=""
    ),
    "tnm": _TNM,
    "medication_schedule": _SCHEDULE,
    "lab_values": _LAB_VALUE,
    "tumour_board": Pattern(r"(?:Tumorkonferenz|Tumorboard|Tumor-Board)(?!\w)", _I),
    "first_diagnosis_ED": Pattern(r"ED(?=[\s:]+(?:[0-9]|[A-ZÄÖÜ][a-zäöü]+ [0-9]))"),
    # abbreviations, one feature each (case as letters write them: v.a. lower-case is "vor allem")
    "abbr_AZ_EZ": Pattern(r"(?:AZ|EZ)(?!\w)"),
    "abbr_Pat": Pattern(r"Pat\."),
    "abbr_LK": Pattern(r"LK(?:s|-\w+)?(?!\w)"),
    "abbr_Zn": Pattern(r"Z\.\s?n\."),
    "abbr_Va": Pattern(r"V\.\s?a\."),
    "abbr_oB": Pattern(r"[ob]\.\s?B\."),
    "abbr_side": Pattern(r"(?:re|li|bds)\.(?=[\s,;)])"),
    "abbr_CTX_RTX": Pattern(r"(?:CTX|RTX|RCT|PCT|R-?CHT|Chemo)(?!\w)"),
    "abbr_CA": Pattern(r"(?:CA|Ca)(?:\.|(?=[\s,;)]))(?!\s?[0-9])"),
    "uppercase_heading": Pattern(r"^[ \t]*[A-ZÄÖÜ][A-ZÄÖÜ /-]{4,}:?[ \t]*$", re.MULTILINE, left=""),
}


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


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


def features(text: str, codes: Mapping[str, int] | None = None) -> dict[str, bool]:
    """Which features the text has; `code_<system>` for each written code system (`codes`: the
    text's `written_codes` where the caller has them already)."""
    out = {name: pat.search(text) is not None for name, pat in FEATURES.items()}
    out["lab_table"] = out["lab_values"] and _lab_table(text)
    out["abbreviation_any"] = any(v for k, v in out.items() if k.startswith("abbr_"))
    for system, n in (written_codes(text) if codes is None else codes).items():
        out[f"code_{system}"] = n > 0
    return out


def feature_names() -> list[str]:
    """Every key `features` returns, in report order."""
    return list(features(""))


def shares(counts: Mapping[str, int], letters: int) -> dict[str, float | None]:
    return {k: (round(v / letters, 4) if letters else None) for k, v in counts.items()}
