"""Letter-level readers of the rules extractor: encounter, patient, letter type, risk factors and
radiotherapy courses (facts that are found by their own patterns, not by a name of the terminology)."""

from __future__ import annotations

import itertools
import re
from typing import Any

from clinsynth.extraction.rules_values import INTENTS, iso
from clinsynth.letters.scan import LetterText, parse_number

_HEAD_LINES = 25
_LETTER_TYPE = re.compile(
    r"(?<!\w)(kurzarztbrief|entlassungsbrief|entlassbrief|verlegungsbrief|arztbrief)(?!\w)"
)
_LETTER_TYPES = {
    "kurzarztbrief": "Kurzarztbrief",
    "entlassungsbrief": "Entlassungsbrief",
    "entlassbrief": "Entlassungsbrief",
    "verlegungsbrief": "Verlegungsbrief",
    "arztbrief": "Arztbrief",
}
_DEPARTMENT = re.compile(
    r"(?:klinik|abteilung|abt\.|zentrum|fachbereich|ambulanz)[ \t]+für[ \t]+((?:[^\n,;]|(?<=-),)+)"
    r"|(?<!\w)([a-zäöü]+ische[ \t]+(?:abteilung|klinik))(?!\w)"
)
_RANGE_JOIN = re.compile(r"\s*(?:-|–|bis(?:\s+zum|\s+einschließlich)?)\s*$")
_RANGE_LEAD = re.compile(r"(?:vom|von|zeit\s+vom|zwischen|zeitraum)\s*$")
_STAY = (
    ("day_case", re.compile(r"teil\s*-?\s*stationär|tagesklinisch|tagesstationär")),
    ("transfer", re.compile(r"verlegt|verlegung|übernahme\s+aus")),
    ("outpatient", re.compile(r"ambulan|sprechstunde")),
    ("inpatient", re.compile(r"stationär")),
)
_SINGLE_DAY = re.compile(r"(?:am|vom)\s*$")
_SINGLE_DAY_WHAT = re.compile(r"behandlung|aufenthalt|befand|vorgestellt|vorstellte|aufgenommen")
#: "vom 8.3. - 22.3.2025": the first date without its year takes the second's
_SHORT_RANGE = re.compile(r"(?:vom|von)\s+(\d{1,2})\.(\d{1,2})\.?\s*(?:-|–|bis(?:\s+zum)?)\s*$")


def letter_type(lt: LetterText) -> str | None:
    head_end = lt.line_starts[min(_HEAD_LINES, len(lt.line_starts) - 1)] if lt.line_starts else len(lt.n)
    m = _LETTER_TYPE.search(lt.n, 0, max(head_end, 1))
    return _LETTER_TYPES[m.group(1)] if m else None


def department(lt: LetterText) -> str | None:
    head_end = lt.line_starts[min(10, len(lt.line_starts) - 1)] if len(lt.line_starts) > 1 else len(lt.n)
    m = _DEPARTMENT.search(lt.n, 0, head_end)
    if m is None:
        return None
    g = 1 if m.group(1) else 2
    return lt.raw[m.start(g) : m.end(g)].strip() or None


def encounter(lt: LetterText) -> dict[str, Any]:
    """Stay dates ("vom 03.04.2023 bis 17.04.2023", "am 21.01.2023 in unserer teilstationären
    Behandlung"), the stay type written beside them, the letter type and the department."""
    out: dict[str, Any] = {}
    n = lt.n
    dates = lt.dates
    where = -1
    for a, b in itertools.pairwise(dates):
        if _RANGE_JOIN.search(n, a.end, b.start) and _RANGE_LEAD.search(n, max(0, a.start - 14), a.start):
            adm, dis = iso(a.value), iso(b.value)
            if adm and dis and adm <= dis:
                out["admission"], out["discharge"] = adm, dis
                where = a.start
                break
    if where < 0:
        for d in dates:
            sm = _SHORT_RANGE.search(n, max(0, d.start - 24), d.start)
            dis = iso(d.value)
            if sm is not None and dis is not None and len(dis) == 10:
                day, month = int(sm.group(1)), int(sm.group(2))
                if 1 <= day <= 31 and 1 <= month <= 12:
                    adm = f"{dis[:4]}-{month:02d}-{day:02d}"
                    if adm <= dis:
                        out["admission"], out["discharge"] = adm, dis
                        where = sm.start()
                        break
    if where < 0:
        for d in dates:
            s, e = lt.sentence(d.start)
            if _SINGLE_DAY.search(n, max(0, d.start - 6), d.start) and _SINGLE_DAY_WHAT.search(n, s, e):
                when = iso(d.value)
                if when:
                    out["admission"] = out["discharge"] = when
                    where = d.start
                    break
    if where >= 0:
        s, e = lt.sentence(where)
        for kind, pat in _STAY:
            if pat.search(n, s, e):
                out["type"] = kind
                break
        else:  # a stay over several days without a word for it
            if out["admission"] < out["discharge"]:
                out["type"] = "inpatient"
    dept = department(lt)
    if dept:
        out["department"] = dept
    lt_type = letter_type(lt)
    if lt_type:
        out["letter_type"] = lt_type
    return out


_BORN = re.compile(r"(?<!\w)geb(?:\.|oren)(?:\s+am)?\s*:?\s*|(?<=[\w,])[ \t]*\*[ \t]*(?=\d)")
#: the patient's name: up to four capitalised words right before "geb."
_NAME_BEFORE = re.compile(r"((?:[A-ZÄÖÜ][\w'.-]*,?[ \t]+){0,3}[A-ZÄÖÜ][\w'-]+)[ \t]*,?[ \t]*\(?$")
_NOT_NAMES = frozenset(
    [
        "Patient",
        "Patientin",
        "Betr",
        "Betreff",
        "Name",
        "Herr",
        "Herrn",
        "Frau",
        "Pat",
        "Patienten",
        "Ihrer",
        "Ihres",
        "Ihren",
        "Ihre",
        "Unsere",
        "Unserer",
        "Unseres",
        "Unseren",
    ]
)
_SEX_WORDS = (
    (re.compile(r"(?<!\w)(?:herrn?|patienten?)(?!\w)"), "male"),
    (re.compile(r"(?<!\w)(?:frau|patientin)(?!\w)"), "female"),
)
_COLLEAGUE = re.compile(r"(?:herr|frau)\s+(?:kollegin?|kollege|dr\.|prof\.|doktor|professor)")


def patient(lt: LetterText) -> dict[str, Any]:
    """Birth date after "geb.", the name written before it, sex from how the letter refers to the patient."""
    out: dict[str, Any] = {}
    m = _BORN.search(lt.n)
    if m is not None:
        toks = lt.tokens("dates", m.end(), m.end() + 3)
        d = iso(toks[0].value, past=True) if toks else None
        if d and len(d) == 10:
            out["birth_date"] = d
        ls, _ = lt.line(m.start())
        before = lt.raw[ls : m.start()].rstrip(" ,\t")
        nm = _NAME_BEFORE.search(before)
        if nm is not None:
            words = [w for w in nm.group(1).split() if w.rstrip(".:") not in _NOT_NAMES]
            if words:
                out["name"] = " ".join(words)
    votes = {"male": 0, "female": 0}
    low = _COLLEAGUE.sub(" ", lt.n)
    for pat, sex in _SEX_WORDS:
        votes[sex] += len(pat.findall(low))
    if votes["male"] != votes["female"]:
        out["sex"] = "male" if votes["male"] > votes["female"] else "female"
    return out


# ---------------------------------------------------------------------------------------------- risk factors

_SMOKING = re.compile(
    r"(?<![\w-])(nichtraucher(?:in)?|nie[- ]?raucher(?:in)?|ex-?raucher(?:in)?|raucher(?:in)?|nikotinabusus|"
    r"nikotinkonsum|tabakkonsum|tabakabusus|nikotin|zigaretten(?:konsum)?|schädlicher\s+tabakgebrauch)(?!\w)"
)
_ALCOHOL = re.compile(
    r"(?<![\w-])(alkoholabusus|alkoholkonsum|c2-?abusus|äthylabusus|alkoholkrankheit|potus)(?!\w)"
)
_PACK_YEARS = re.compile(r"(\d+(?:[.,]\d+)?)\s*(?:py|pack\s*-?\s*years?|packyears|pj|packungsjahre)(?!\w)")


def risk_factors(lt: LetterText) -> list[tuple[int, int, dict[str, Any]]]:
    """(start, end, fact) of each smoking/alcohol statement; the caller judges cues."""
    out = []
    for pat, kind in ((_SMOKING, "smoking"), (_ALCOHOL, "alcohol")):
        for m in pat.finditer(lt.n):
            word = m.group(1)
            fact: dict[str, Any] = {"kind": kind, "text": lt.raw[m.start() : m.end()]}
            if word.startswith(("nichtraucher", "nie")):
                fact["assertion"] = "negated"
            elif word.startswith("ex"):
                fact["assertion"] = "historical"
            e = lt.sentence(m.start(), m.end())[1]
            py = _PACK_YEARS.search(lt.n, m.end(), e)
            if kind == "smoking" and py is not None:
                fact["pack_years"] = parse_number(py.group(1))[0]
            out.append((m.start(), m.end(), fact))
    return out


# ---------------------------------------------------------------------------------------------- radiotherapy

_RT_WORD = re.compile(
    r"(?<![\w-])(?:perkutane\s+|kombinierte[rn]?\s+|adjuvante\s+|neoadjuvante\s+|palliative\s+|definitive\s+)?"
    r"(radiatio|strahlentherapie|radiotherapie|radio-?chemotherapie|bestrahlung|rtx|rct|rt)(?!\w)"
)
_TARGET = re.compile(
    r"\s*(?:der|des|von|auf|im\s+bereich\s+(?:der|des)|im|am)?\s*([^\d,;:.()\n][^,;:()\n]*?)"
    r"(?=\s+mit\s|\s*,|\s+gd\s|\s+\d|\s*\(|\s+ab\s|\s+vom\s|\s+von\s+\d|\s+bis\s|\s*;|\s*\.|\s*$|\n)"
)
_GY = re.compile(r"(\d+(?:,\d+)?)\s*gy(?!\w)")
_FRACTIONS_X = re.compile(r"(\d{1,2})\s*x\s*(\d+(?:,\d+)?)\s*gy(?!\w)")
_FRACTIONS = re.compile(r"(\d{1,2})\s*(?:fraktionen|fx)(?!\w)")
_FRACTION_DOSE = re.compile(r"(?:ed|einzeldosis|à|a)\s*:?\s*(\d+(?:,\d+)?)\s*gy(?!\w)")
_START = re.compile(r"(?<!\w)(?:ab|seit|beginn(?:\s+am)?)\s*$")
_NOT_TARGET = re.compile(r"^(?:mit|und|bei|zur|zum|wurde|erfolgte|ist|war|bei)\b")


def _f(s: str) -> float:
    return float(s.replace(",", "."))


def radiotherapy(lt: LetterText) -> list[tuple[int, int, dict[str, Any]]]:
    """(start, end of the therapy word, fact) of each radiotherapy course: target, doses, fractions, start."""
    out = []
    n = lt.n
    seen_sentences: set[int] = set()
    for m in _RT_WORD.finditer(n):
        s, e = lt.sentence(m.start(), m.end())
        if s in seen_sentences:
            continue
        gys = [(_f(g.group(1)), g.start()) for g in _GY.finditer(n, s, e)]
        tm = _TARGET.match(n, m.end(), e)
        target = lt.raw[tm.start(1) : tm.end(1)].strip() if tm else ""
        if target and (_NOT_TARGET.match(target.lower()) or len(target) > 80):
            target = ""
        if not gys and not target:
            continue
        if m.group(1) == "rt" and not gys:
            continue
        fact: dict[str, Any] = {"target": target or lt.raw[m.start(1) : m.end(1)]}
        fx = _FRACTIONS_X.search(n, s, e)
        fd = _FRACTION_DOSE.search(n, s, e)
        if fx is not None:
            fact["fractions"] = int(fx.group(1))
            fact["fraction_gy"] = _f(fx.group(2))
        elif fd is not None:
            fact["fraction_gy"] = _f(fd.group(1))
        fr = _FRACTIONS.search(n, s, e)
        if fr is not None:
            fact["fractions"] = int(fr.group(1))
        fraction_at = {fd.start(1) if fd else -1, fx.start(2) if fx else -1}
        totals = [g for g, at in gys if not any(abs(at - f) <= 1 for f in fraction_at if f >= 0)]
        if totals:
            fact["total_gy"] = max(totals)
        for t in lt.tokens("dates", m.end(), e):
            if _START.search(n, max(0, t.start - 12), t.start):
                fact["start"] = iso(t.value)
                break
        im = re.search(r"(?<!\w)(neoadjuvant|adjuvant|palliativ|kurativ|konsolidier)", n[s:e])
        if im is not None:
            fact["intent"] = INTENTS[im.group(1)]
        seen_sentences.add(s)
        out.append((m.start(1), m.end(1), {k: v for k, v in fact.items() if v is not None}))
    return out
