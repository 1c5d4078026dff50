"""Value readers of the rules extractor: what stands beside a name (dose, unit, scheme, lab value and
flag, dates, TNM axes) read from the tokens `clinsynth.letters.scan.LetterText` has already found.

Units are returned in the spelling gold uses: UCUM for labs and vitals ("g/dL", "10*3/uL",
"mm[Hg]"), the schema's dose units for drugs ("mg", "ug", "mg/m2", "[IU]", "AUC").
"""

from __future__ import annotations

import re
from typing import Any

from clinsynth.letters.scan import UNIT_AFTER, DateValue, LetterText, Token, parse_number, unit_key

# ---------------------------------------------------------------------------------------------- dates

#: the century of a two-digit year: up to this value it is 20xx, above it 19xx ("12.9.40" -> 1940)
_CENTURY_PIVOT = 40
_PAST_PIVOT = 15


def iso(dv: DateValue, *, past: bool = False) -> str | None:
    """A written date at its own precision: 2023-03-01, 2023-03 or 2023. `past`: a birth date, whose
    two-digit year is 19xx unless 20xx is already over ("2.6.27" -> 1927)."""
    if dv.year is None:
        return None
    year = dv.year
    if dv.short_year:
        pivot = _PAST_PIVOT if past else _CENTURY_PIVOT
        year += 2000 if year <= pivot else 1900
    if not 1900 <= year <= 2099:
        return None
    if dv.month is None:
        return f"{year:04d}"
    if dv.day is None:
        return f"{year:04d}-{dv.month:02d}"
    return f"{year:04d}-{dv.month:02d}-{dv.day:02d}"


def first_date(lt: LetterText, a: int, b: int) -> str | None:
    for t in lt.tokens("dates", a, b):
        d = iso(t.value)
        if d:
            return d
    return None


def last_date(lt: LetterText, a: int, b: int) -> str | None:
    for t in reversed(lt.tokens("dates", a, b)):
        d = iso(t.value)
        if d:
            return d
    return None


_ED = re.compile(
    r"(?<!\w)(?:ed|erstdiagnose|erstdiagnostiziert|diagnostiziert|seit|bekannt\s+seit|erstmals)\s*:?\s*(?:am\s+|im\s+)?"
)
_YEAR_AFTER = re.compile(r"[ \t]*\(?((?:19|20)\d{2})\)?(?![\d./])")


def diagnosis_date(lt: LetterText, end: int, region_end: int) -> str | None:
    """A first-diagnosis date beside a name: "ED 02/2021", "Erstdiagnose 09/2024", "seit 2019", or a
    bare year right after the name ("Blasenkarzinom 2007")."""
    n = lt.n
    for m in _ED.finditer(n, end, region_end):
        for t in lt.tokens("dates", m.end(), m.end() + 3):
            return iso(t.value)
        for yt in lt.tokens("years", m.end(), m.end() + 3):
            return f"{yt.value:04d}"
    y = _YEAR_AFTER.match(lt.raw, end, region_end)
    return y.group(1) if y else None


# ---------------------------------------------------------------------------------------------- doses

_DOSE_UNITS = {
    "mg": "mg",
    "ug": "ug",
    "g": "g",
    "ml": "mL",
    "ie": "[IU]",
    "mg/m2": "mg/m2",
    "mg/kg": "mg/kg",
    "ug/kg": "ug/kg",
    "auc": "AUC",
}
_AUC = re.compile(r"auc\s*:?\s*(\d+(?:,\d+)?)(?!\d)")
_MIO_IE = re.compile(r"(\d+(?:,\d+)?)\s*mio\.?\s*(?:ie|i\.e\.)(?!\w)")
_IE_M2 = re.compile(r"(\d+(?:[.,]\d+)?)\s*(?:ie|i\.e\.)\s*/\s*m[2²](?!\w)")


def dose(lt: LetterText, a: int, b: int) -> tuple[float, str] | None:
    """The first dose with a drug unit in [a, b): "40 mg", "500 mg/m2", "AUC 5", "30 Mio. IE"."""
    n = lt.n
    cands: list[tuple[int, float, str]] = []
    for m in _AUC.finditer(n, a, b):
        cands.append((m.start(), float(m.group(1).replace(",", ".")), "AUC"))
    for m in _MIO_IE.finditer(n, a, b):
        cands.append((m.start(), float(m.group(1).replace(",", ".")), "Mio. IE"))
    for m in _IE_M2.finditer(n, a, b):
        cands.append((m.start(), parse_number(m.group(1))[0], "IE/m2"))
    for t in lt.tokens("numbers", a, b):
        values, unit = t.value
        if unit in _DOSE_UNITS:
            cands.append((t.start, values[0], _DOSE_UNITS[unit]))
            break
    if not cands:
        return None
    _, value, unit = min(cands)
    return value, unit


_SLOT_VALUE = {"½": 0.5, "¼": 0.25, "¾": 0.75, "1/2": 0.5, "1/4": 0.25}


def schedule(tok: Token) -> list[float] | None:
    """1-0-1 -> [1, 0, 1, 0]; 1-0-1-0 as written; halves as 0.5."""
    slots = [s.strip() for s in re.split(r"\s?-\s?", tok.text)]
    out: list[float] = []
    for s in slots:
        if s in _SLOT_VALUE:
            out.append(_SLOT_VALUE[s])
        else:
            try:
                out.append(float(s.replace(",", ".")))
            except ValueError:
                return None
    if len(out) == 3:
        out.append(0.0)
    return out if len(out) == 4 else None


_ROUTE = re.compile(
    r"(?<![\w.])(i\.\s?v\.|p\.\s?o\.|s\.\s?c\.|i\.\s?m\.|i\.\s?th\.|transdermal|rektal|inhalativ)"
)
_ROUTES = {"iv": "i.v.", "po": "p.o.", "sc": "s.c.", "im": "i.m.", "ith": "i.th."}


def route(low: str, a: int, b: int) -> str | None:
    m = _ROUTE.search(low, a, b)
    if m is None:
        return None
    key = m.group(1).replace(".", "").replace(" ", "")
    return _ROUTES.get(key, m.group(1))


_AS_NEEDED = re.compile(r"(?<!\w)(?:bei\s+bedarf|b\.\s?b\.|bedarfsweise|nach\s+bedarf|prn)(?!\w)")
_FREQUENCY = re.compile(
    r"(?<!\w)(alle\s+\d+\s+(?:tage|wochen|monate)|\d\s?x\s+(?:täglich|wöchentlich|tgl\.)|einmalig(?:\s+d\d+)?|"
    r"täglich|wöchentlich|über\s+\d+\s?h|bolus)(?!\w)"
)


def as_needed(low: str, a: int, b: int) -> bool:
    return _AS_NEEDED.search(low, a, b) is not None


def frequency(raw: str, low: str, a: int, b: int) -> str | None:
    m = _FREQUENCY.search(low, a, b)
    return raw[m.start() : m.end()] if m else None


_CYCLE = re.compile(
    r"(?<!\w)(?:(\d{1,2})\.\s*zyklus|zyklus\s*(?:nr\.\s*)?(\d{1,2})|c(\d{1,2})(?:d\d{1,2})?)(?!\w)"
)
_DAY = re.compile(r"(?<!\w)(?:d(\d{1,2})|tag\s+(\d{1,2}))(?![\w-])")
_INTENT = re.compile(r"(?<!\w)(neoadjuvant|adjuvant|palliativ|kurativ|konsolidier|erhaltung)")
INTENTS = {
    "neoadjuvant": "neoadjuvant",
    "adjuvant": "adjuvant",
    "palliativ": "palliative",
    "kurativ": "curative",
    "konsolidier": "consolidation",
    "erhaltung": "maintenance",
}


def cycle(low: str, a: int, b: int) -> int | None:
    m = _CYCLE.search(low, a, b)
    if m is None:
        return None
    v = int(next(g for g in m.groups() if g))
    return v if v >= 1 else None


def day(low: str, a: int, b: int) -> int | None:
    m = _DAY.search(low, a, b)
    if m is None:
        return None
    v = int(next(g for g in m.groups() if g))
    return v if v >= 1 else None


def intent(low: str, a: int, b: int) -> str | None:
    m = _INTENT.search(low, a, b)
    return INTENTS[m.group(1)] if m else None


# ---------------------------------------------------------------------------------------------- labs

#: written unit (after `unit_key`) -> UCUM, for the units a lab table uses
_UCUM = {
    "g/dl": "g/dL",
    "mg/dl": "mg/dL",
    "ug/dl": "ug/dL",
    "ng/dl": "ng/dL",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "g/l": "g/L",
    "mg/l": "mg/L",
    "ug/l": "ug/L",
    "ng/ml": "ng/mL",
    "ug/ml": "ug/mL",
    "pg/ml": "pg/mL",
    "u/l": "U/L",
    "ku/l": "k[IU]/L",
    "mu/l": "m[IU]/L",
    "uiu/ml": "u[IU]/mL",
    "ie/ml": "[IU]/mL",
    "/nl": "10*3/uL",
    "tsd/ul": "10*3/uL",
    "/pl": "10*6/uL",
    "mio/ul": "10*6/uL",
    "t/l": "10*6/uL",
    "/ul": "/uL",
    "ml/min/1,73m2": "mL/min/{1.73_m2}",
    "ml/min": "mL/min",
    "fl": "fL",
    "pg": "pg",
    "%": "%",
    "mosm/kg": "mosm/kg",
    "mmhg": "mm[Hg]",
    "/min": "/min",
    "bpm": "/min",
    "°c": "Cel",
    "kg": "kg",
    "cm": "cm",
    "mg": "mg",
    "g": "g",
    "ml": "mL",
}
#: what the catalogue's UCUM unit is also written as ("U/ml" for CA 19-9 is [arb'U]/mL)
_CATALOGUE_ALIASES = {"[arb'U]/mL": ("u/ml", "ku/l"), "m[IU]/L": ("mu/l", "uiu/ml"), "{INR}": ()}
_FLAG = re.compile(
    r"[ \t]*(?:\(\s*)?(↑↑|↓↓|↑|↓|\+\+|--|\+|-|H|L|h|l|hoch|niedrig|erhöht|erniedrigt)(?:\s*\))?"
    r"(?=[\s;,.·)]|$)"
)
_FLAGS = {
    "↑↑": "critical_high",
    "↓↓": "critical_low",
    "++": "critical_high",
    "--": "critical_low",
    "↑": "high",
    "+": "high",
    "h": "high",
    "hoch": "high",
    "erhöht": "high",
    "↓": "low",
    "-": "low",
    "l": "low",
    "niedrig": "low",
    "erniedrigt": "low",
}
_QUALITATIVE = re.compile(
    r"(?<!\w)(negativ|positiv|unauffällig|normwertig|im\s+normbereich|erhöht|erniedrigt|grenzwertig|"
    r"nicht\s+nachweisbar|nachweisbar)(?!\w)"
)


def ucum(written: str | None, raw_unit: str, catalogue_unit: str | None) -> str | None:
    """The UCUM spelling of a written unit; the catalogue's own unit where the written one means it."""
    if written is None:
        return None
    if raw_unit.strip().startswith("G/"):  # "G/l" is giga per litre: 10*3/uL, not gram per litre
        return "10*3/uL"
    if catalogue_unit is not None:
        if written in _CATALOGUE_ALIASES.get(catalogue_unit, ()):
            return catalogue_unit
        if unit_key(catalogue_unit) == written:
            return catalogue_unit
    return _UCUM.get(written)


def measurement(
    lt: LetterText, a: int, b: int, catalogue_unit: str | None
) -> tuple[float | None, str | None, str | None, str | None, int]:
    """(value, UCUM unit, flag, qualitative text, end of what was read) of the first value in [a, b)."""
    toks = lt.tokens("numbers", a, b)
    if not toks:
        m = _QUALITATIVE.search(lt.n, a, b)
        if m is not None and m.start() - a <= 24:
            return None, None, None, lt.raw[m.start() : m.end()], m.end()
        return None, None, None, None, a
    t = toks[0]
    if t.start - a > 24:  # a value belongs to the name right before it
        return None, None, None, None, a
    values, unit = t.value
    end = t.end
    raw_unit = ""
    if unit is not None:
        um = UNIT_AFTER.match(lt.n, end)
        if um is not None:
            raw_unit = lt.raw[um.start() : um.end()]
            end = um.end()
    value = values[0]
    flag = None
    fm = _FLAG.match(lt.raw, end)
    if fm is not None and fm.end() <= b + 3:
        flag = _FLAGS.get(fm.group(1).lower())
        end = fm.end()
    return value, ucum(unit, raw_unit, catalogue_unit), flag, None, end


_FLAG_BEFORE = re.compile(r"(erhöht|erniedrigt|vermindert)\w*(?:\s+\w+)?\s*$")
_FLAG_AFTER = re.compile(
    r"(?<!\w)(erhöht|erniedrigt|vermindert|oberhalb\s+der\s+norm|über\s+der\s+norm|unterhalb\s+der\s+norm)"
)


def flag_words(low: str, a: int, name_start: int, value_end: int, b: int) -> str | None:
    """A flag said in words: "leicht erniedrigter Leukozytenwert von 3,8", "Krea 1,5 oberhalb der Norm"."""
    m = _FLAG_BEFORE.search(low, a, name_start) or _FLAG_AFTER.search(low, value_end, b)
    if m is None:
        return None
    w = m.group(1)
    return "high" if w.startswith(("erhöht", "oberhalb", "über")) else "low"


_BP = re.compile(r"(?:\s*:?\s*(?:von\s+|bei\s+)?)(\d{2,3})\s*/\s*(\d{2,3})(?:\s*mm\s?hg)?")


def blood_pressure(low: str, end: int, b: int) -> tuple[float, float] | None:
    m = _BP.match(low, end)
    if m is None or m.start(1) > b:
        return None
    sys_, dia = float(m.group(1)), float(m.group(2))
    return (sys_, dia) if 50 <= sys_ <= 300 and 20 <= dia <= 200 and dia < sys_ else None


# ---------------------------------------------------------------------------------------------- TNM

#: the scanner's prefixes that the schema has no value for, mapped to the nearest it has
_PREFIX = {
    "c": "c",
    "p": "p",
    "yp": "yp",
    "r": "r",
    "a": "a",
    "u": "u",
    "y": "yp",
    "yc": "c",
    "rp": "r",
    "rc": "r",
}


def tnm(axes: list[Any]) -> tuple[dict[str, Any], str | None]:
    """The schema's TNM dict and the grading of one written TNM string (scanner `Axis` list)."""
    out: dict[str, Any] = {}
    grading = None
    for ax in axes:
        if ax.axis in ("t", "n", "m"):
            d: dict[str, Any] = {"value": ax.value}
            if ax.prefix:
                d["prefix"] = _PREFIX.get(ax.prefix)
            if ax.axis == "n" and ax.nodes:
                d["nodes"] = ax.nodes
            out.setdefault(ax.axis, d)
        elif ax.axis == "g":
            grading = grading or ax.value
        else:
            out.setdefault(ax.axis, ax.value)
    return out, grading
