"""A letter's text indexed once for the verifier: normalised text, lines, clauses, sections, and every
code, date, number, unit, schedule and TNM string it writes.

Everything here is computed once per letter with precompiled patterns, so that checking a fact is
a lookup in sorted token lists, not another scan of the whole text (the verifier must check 75k
letters in minutes). Offsets refer to the NFC-normalised text (`LetterText.raw`); `n` is its
lower-case copy with the same offsets.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MONTHS_DE = (
    "januar", "februar", "märz", "april", "mai", "juni",
    "juli", "august", "september", "oktober", "november", "dezember",
)  # fmt: skip


def norm(s: str) -> str:
    """NFC + lower() with unchanged length (a character whose lower case is longer stays as it is)."""
    s = unicodedata.normalize("NFC", s)
    low = s.lower()
    if len(low) == len(s):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in s)


@functools.lru_cache(maxsize=65536)
def norm_name(s: str) -> str:
    """`norm` for the short strings the verifier looks up again and again (names, codes)."""
    return norm(s)


# ---------------------------------------------------------------------------------------------- patterns

# Every pattern starts with a consuming character (a look-behind comes after it): the regex engine
# then skips to candidate characters instead of trying each position (3x faster).

#: codes as letters write them; LOINC needs 2+ digits before the dash (OPS has one) and is never
#: "CA 19-9"; ICD is never "Vitamin B12"
CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    "icd10gm": re.compile(
        r"[A-Z](?<![\w/.-][A-Z])(?<!Vitamin [A-Z])[0-9]{2}(?:\.[0-9]{1,2})?(?![\w/-]|\.\d)"
    ),
    "ops": re.compile(
        r"[1-9](?<![\w/.,-][1-9])(?<!Tag [1-9])(?<!Tage [1-9])(?<!Tagen [1-9])"
        r"-[0-9]{2}[0-9a-z]?(?:\.[0-9a-z]{1,2})?(?![\w-]|\.\w)"
    ),
    "atc": re.compile(r"[A-Z](?<![\w-][A-Z])[0-9]{2}[A-Z]{2}[0-9]{2}(?![\w-])"),
    "loinc": re.compile(r"[0-9](?<![\w.,/-][0-9])(?<!CA [0-9])(?<!CA-[0-9])[0-9]{1,6}-[0-9](?![\w.,/-])"),
    "morphology": re.compile(r"[89](?<![\w/.,][89])[0-9]{3}/[0-9](?![\w/])"),
}

_MONTH_ALT = "|".join(MONTHS_DE)
#: 07.06.2023 · 7.6.23 · 06/2023 (the day or month group holds its first digit, checked behind it)
DATE_PATTERN = re.compile(
    r"(?P<d>\d(?<![\w.,/]\d)\d?)\.(?P<m>[01]?\d)\.(?P<y>\d{4}|\d{2})(?!\d)"
    r"|(?P<mm>\d(?<![\w.,/]\d)\d?)/(?P<my>\d{4}|\d{2})(?![\d/])"
)
#: 7. Juni 2023 · Juni 2023 (the day is looked up before the month)
LONG_DATE_PATTERN = re.compile(rf"(?P<lm>{_MONTH_ALT})\s+(?P<ly>\d{{4}})(?!\d)")
_DAY_BEFORE = re.compile(r"(?<![\w.,/])(\d{1,2})\.\s*$")
YEAR_PATTERN = re.compile(r"(?:19|20)(?<![\w.,/-]19)(?<![\w.,/-]20)\d{2}(?![\w.,/-])")

#: a number as German letters write it: 10,2 · 2.400 · 2400 · 0,5
NUMBER_PATTERN = re.compile(r"\d(?<![\w.,]\d)(?:\d{0,2}(?:\.\d{3})+(?:,\d+)?|\d*(?:[.,]\d+)?)(?!\d)")

#: a dosing scheme: 1-0-1 · 1-0-1-0 · ½-0-½ · 0,5-0-0
_SLOT = r"(?:\d+(?:,\d+)?|½|¼|¾|1/2|1/4)"
SCHEDULE_PATTERN = re.compile(
    rf"[\d½¼¾](?<![\w,/.-][\d½¼¾])(?:(?<=\d)\d*(?:,\d+)?|(?<=1)/[24])?(?:\s?-\s?{_SLOT}){{2,3}}(?![\w-]|,\d)"
)

_PREFIX = r"(?:yp|yc|rp|rc|c|p|r|a|u|y)"
_AXIS = (
    rf"(?P<pre>{_PREFIX})?(?:T(?P<t>is|X|[0-4][a-d]?[0-9]?)(?:\((?:m|\d+)\))?"
    r"|N(?P<n>[0-3][a-c]?|X)(?P<mi>mi)?(?:\s?\((?P<nodes>\d{1,3}/\d{1,3})\))?"
    r"|M(?P<m>[01][a-d]?|X))"
    r"|(?P<l>L[01X])|(?P<v>V[0-2X])|(?P<pn>Pn[01X])|(?P<r>R[0-2X])|(?P<g>G[1-4X])"
)
TNM_ELEMENT = re.compile(_AXIS)
#: the same, reading "cT2acN2cM0" as cT2a cN2 cM0: a sub-category letter never starts the next axis's prefix
TNM_ELEMENT_PREFIXED = re.compile(
    _AXIS.replace("[0-4][a-d]?[0-9]?", "[0-4](?:[a-d](?![TNM]))?[0-9]?").replace(
        "[0-3][a-c]?|X", "[0-3](?:[a-c](?![TNM]))?|X"
    )
)
#: a TNM string: axes and suffixes, adjacent or separated by blanks/commas ("ypT3cN0(0/14)M0G2R0")
_AXIS_ANON = re.sub(r"\?P<\w+>", "?:", _AXIS)
TNM_RUN = re.compile(rf"(?<![\w/-])(?:{_AXIS_ANON})(?:[ ,]{{0,2}}(?:{_AXIS_ANON}))*(?![\w])")
#: where a TNM string may be: an axis letter with its value (the run is matched from there or its prefix)
_TNM_HINT = re.compile(r"[TNMLVRG](?:[0-4]|X|is)|Pn[01X]")
_TNM_PREFIXES = ("yp", "yc", "rp", "rc", "c", "p", "r", "a", "u", "y")

#: units as letters print them (longest first); compared after `unit_key`
UNIT_WORDS = (
    "ml/min/1,73m²", "ml/min/1,73 m²", "ml/min", "mg/m²", "mg/m2", "mg/kg", "µg/kg", "g/dl", "mg/dl",
    "µg/dl", "ng/dl", "mmol/l", "µmol/l", "nmol/l", "pmol/l", "tsd/µl", "mio/µl", "g/l", "mg/l", "µg/l",
    "ng/ml", "µg/ml", "pg/ml", "u/ml", "ku/l", "u/l", "mu/l", "µiu/ml", "ie/ml", "/nl", "/pl", "/µl",
    "t/l", "mmhg", "/min", "°c", "auc", "mg", "µg", "mcg", "ie", "i.e.", "g", "ml", "gy", "%",
    "fl", "kg", "cm", "pg", "mosm/kg", "bpm",
)  # fmt: skip
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(UNIT_WORDS, key=len, reverse=True))
UNIT_AFTER = re.compile(rf"\s?(?:{_UNIT_ALT})(?![\w/])")

#: sentence/clause ends: ". ", ";", "!", "?" and line breaks (not after abbreviations); a colon is no
#: end ("Hb: 10,2 g/dl", "Aszites: nicht nachweisbar")
_STOP = re.compile(r"[.!?](?=\s)|;|\n")
ABBREVIATIONS = re.compile(
    r"(?:^|[\s(])(?:z\.n|v\.a|z\.b|i\.v|p\.o|s\.c|o\.n\.a|dr|med|ca|ggf|bzw|vs|u\.a|d\.h|geb|tel|nr|pat|"
    r"li|re|bds|st\.n|st\.p|s\.p|neg|pos|temp|kum|bek|art|mio|mrd|a\.e|o\.b|b\.b|z\.t|mind|max|std|tägl|ca|evtl|i\.s|insb|inkl|zzgl|ggü|"
    r"[a-zäöü])\.$"
)
_FIRST_WORD = re.compile(r"\w+")
#: "der 3. Zyklus", "am 7. Juni": a period after a one- or two-digit number is no sentence end when an
#: article or preposition stands before it or an ordinal's noun after it ("ALAT 31. Vorbefund" ends one)
_ORDINAL = re.compile(r"(?:^|(?<=[\s(]))\d{1,2}\.$")
_ORDINAL_BEFORE = re.compile(
    r"(?:^|\s)(?:am|an|den|der|dem|des|die|das|im|zum|zur|vom|ab|bis|seit|nach|vor|ein|einem|einer|eines|"
    r"bzw|und|oder|zu|mit|für)\s+$"
)
_ORDINAL_AFTER = re.compile(
    rf"\s*(?:{_MONTH_ALT}|zyklus|gabe|tag|kurs|linie|woche|monat|jahr|lebensjahr|fraktion|"
    r"postoperativ|rezidiv|dosis|applikation|ssw|quartal|halbjahr)",
)


def _is_ordinal(n: str, stop: int) -> bool:
    if not _ORDINAL.search(n, max(0, stop - 3), stop + 1):
        return False
    i = stop - 1
    while i >= 0 and n[i].isdigit():
        i -= 1
    return bool(_ORDINAL_BEFORE.search(n, max(0, i - 12), i + 1) or _ORDINAL_AFTER.match(n, stop + 1))


_WORD = re.compile(r"[\wäöüß][\wäöüß.-]*")


@functools.lru_cache(maxsize=65536)
def _first_word(name: str) -> str:
    m = _FIRST_WORD.match(norm(name).lstrip())
    return m.group(0) if m else ""


@functools.lru_cache(maxsize=65536)
def name_pattern(name: str) -> re.Pattern[str] | None:
    """Whole words of a (normalised) name, any whitespace between them."""
    words = [re.escape(w) for w in norm(name).split()]
    if not words:
        return None
    # not the tail of a compound ("Metamizol-Natrium" does not name Natrium)
    return re.compile(r"(?<![\w])(?<![\w]-)" + r"\s+".join(words) + r"(?![\w])")


def unit_key(u: str) -> str:
    """One spelling per unit: lower case, µ/μ/u alike, ² as 2, no blanks or dots."""
    u = norm(u).replace("μ", "µ").replace("²", "2").replace(" ", "").replace(".", "")
    return u.replace("µ", "u").replace("mcg", "ug").replace("sek", "s")


def parse_number(s: str) -> tuple[float, ...]:
    """Every value a written number can mean (2.400 is 2400 in German, 2.4 in English)."""
    out = []
    if "," in s and "." in s:
        out.append(float(s.replace(".", "").replace(",", ".")))
    elif "," in s:
        out.append(float(s.replace(",", ".")))
    elif "." in s:
        out.append(float(s))
        if re.fullmatch(r"\d{1,3}(?:\.\d{3})+", s):
            out.append(float(s.replace(".", "")))
    else:
        out.append(float(s))
    return tuple(out)


def same_number(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


@dataclass(frozen=True)
class Token:
    start: int
    end: int
    text: str
    #: parsed value: a date tuple (year, month, day, two-digit year), numbers, a code system ...
    value: Any = None


@dataclass(frozen=True)
class DateValue:
    year: int | None
    month: int | None
    day: int | None
    #: the year was written with two digits ("07.06.23"): only year % 100 is known
    short_year: bool = False

    def matches(self, iso: str) -> bool:
        """Does a gold date (YYYY, YYYY-MM or YYYY-MM-DD) say exactly this date, at this precision?"""
        parts = [int(p) for p in iso.split("-")]
        y, m, d = (parts + [None, None])[:3]
        if self.short_year:
            if y is None or y % 100 != self.year:
                return False
        elif y != self.year:
            return False
        return m == self.month and d == self.day


def _date_value(m: re.Match[str]) -> DateValue | None:
    g = m.groupdict()
    day: int | None
    if g["y"]:
        day, month, year = int(g["d"]), int(g["m"]), g["y"]
    else:
        day, month, year = None, int(g["mm"]), g["my"]
    if not 1 <= month <= 12 or (day is not None and not 1 <= day <= 31):
        return None
    return DateValue(int(year), month, day, len(year) == 2)


def _long_date(day: int | None, month_name: str, year: str) -> DateValue | None:
    if day is not None and not 1 <= day <= 31:
        return None
    return DateValue(int(year), MONTHS_DE.index(month_name) + 1, day, False)


def _tnm_runs(raw: str) -> list[re.Match[str]]:
    """TNM strings, found from their axis letters (a cheap scan) and matched from their prefix."""
    out: list[re.Match[str]] = []
    last = -1
    for h in _TNM_HINT.finditer(raw):
        st = h.start()
        if st < last:
            continue
        for k in (2, 1, 0):
            pre = raw[st - k : st] if k else ""
            if k and (st - k < 0 or pre not in _TNM_PREFIXES):
                continue
            m = TNM_RUN.match(raw, st - k)
            if m is not None:
                out.append(m)
                last = m.end()
                break
    return out


@dataclass(frozen=True)
class Axis:
    """One element of a written TNM string."""

    axis: str  # t n m l v pn r g
    prefix: str | None
    value: str
    nodes: str | None
    #: the prefix was not written on this axis but on an earlier one of the same string ("pT2N1")
    carried: bool
    start: int
    end: int


def parse_tnm(run: str, offset: int = 0) -> list[Axis]:
    """The axes of a TNM string. A compact string whose axes each carry a prefix ("cT2acN2cM0") is read
    that way; otherwise a letter after a value is its sub-category ("ypT3cN0M0")."""
    greedy = _parse_tnm(run, offset, TNM_ELEMENT)
    if any(a.carried or a.prefix is None for a in greedy if a.axis in ("t", "n", "m")):
        prefixed = _parse_tnm(run, offset, TNM_ELEMENT_PREFIXED)
        if all(a.prefix is not None and not a.carried for a in prefixed if a.axis in ("t", "n", "m")):
            return prefixed
    return greedy


def _parse_tnm(run: str, offset: int, element: re.Pattern[str]) -> list[Axis]:
    out: list[Axis] = []
    last_prefix: str | None = None
    prev_end = -1
    for m in element.finditer(run):
        g = m.groupdict()
        adjacent = m.start() == prev_end  # "pT2N1": written without a blank, the prefix carries
        prev_end = m.end()
        for axis in ("t", "n", "m"):
            if g[axis] is not None:
                pre = g["pre"]
                carried = pre is None and adjacent and last_prefix is not None
                if pre is not None:
                    last_prefix = pre
                value = axis.upper() + g[axis] + (g["mi"] or "" if axis == "n" else "")
                out.append(
                    Axis(
                        axis,
                        pre or (last_prefix if carried else None),
                        value,
                        g["nodes"] if axis == "n" else None,
                        carried,
                        offset + m.start(),
                        offset + m.end(),
                    )
                )
                break
        else:
            for axis in ("l", "v", "pn", "r", "g"):
                if g[axis] is not None:
                    out.append(Axis(axis, None, g[axis], None, False, offset + m.start(), offset + m.end()))
                    break
    return out


def split_stagings(axes: list[Axis]) -> list[list[Axis]]:
    """One TNM string per staging: an axis written a second time starts the next ("cT3 cN1 ypT2 ypN0")."""
    out: list[list[Axis]] = []
    seen: set[str] = set()
    for a in axes:
        if not out or a.axis in seen:
            out.append([])
            seen = set()
        out[-1].append(a)
        seen.add(a.axis)
    return out


# ---------------------------------------------------------------------------------------------- the index


class LetterText:
    """The letter, indexed once."""

    def __init__(self, text: str, headings: Iterable[tuple[str, Sequence[str]]] = ()) -> None:
        self.raw = unicodedata.normalize("NFC", text)
        self.n = norm(self.raw)
        n = self.n
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", n)]
        self.paragraph_stops = [m.start() for m in re.finditer(r"\n[ \t]*\n", n)]
        self.stops = [
            m.start()
            for m in _STOP.finditer(n)
            if n[m.start()] in ";\n"
            or not (
                ABBREVIATIONS.search(n[max(0, m.start() - 8) : m.start() + 1]) or _is_ordinal(n, m.start())
            )
        ]
        raw = self.raw
        self.codes: list[Token] = sorted(
            (
                Token(m.start(), m.end(), m.group(0), system)
                for system, p in CODE_PATTERNS.items()
                for m in p.finditer(raw)
            ),
            key=lambda t: t.start,
        )
        self.dates: list[Token] = []
        for m in DATE_PATTERN.finditer(n):
            dv = _date_value(m)
            if dv is not None:
                self.dates.append(Token(m.start(), m.end(), m.group(0), dv))
        for m in LONG_DATE_PATTERN.finditer(n):
            if m.start() > 0 and n[m.start() - 1].isalnum():
                continue
            day = _DAY_BEFORE.search(n, max(0, m.start() - 6), m.start())
            start = day.start(1) if day else m.start()
            dv = _long_date(int(day.group(1)) if day else None, m.group("lm"), m.group("ly"))
            if dv is not None:
                self.dates.append(Token(start, m.end(), n[start : m.end()], dv))
        self.dates.sort(key=lambda t: t.start)
        self.years = [
            Token(m.start(), m.end(), m.group(0), int(m.group(0))) for m in YEAR_PATTERN.finditer(n)
        ]
        self.schedules = [Token(m.start(), m.end(), m.group(0)) for m in SCHEDULE_PATTERN.finditer(n)]
        self.tnm: list[Token] = []
        for m in _tnm_runs(raw):
            for axes in split_stagings(parse_tnm(m.group(0), m.start())):
                s, e = axes[0].start, axes[-1].end
                self.tnm.append(Token(s, e, raw[s:e], axes))
        if self.tnm:  # "(2/18)" in a TNM string is a node count, not a date
            spans = [(t.start, t.end) for t in self.tnm]
            self.dates = [d for d in self.dates if not any(s <= d.start < e for s, e in spans)]
        # numbers inside dates, codes, schemes and TNM strings are not values
        masked = sorted((t.start, t.end) for t in (*self.codes, *self.dates, *self.schedules, *self.tnm))
        mask_starts = [s for s, _ in masked]
        self.numbers: list[Token] = []
        for m in NUMBER_PATTERN.finditer(n):
            i = bisect.bisect_right(mask_starts, m.start()) - 1
            if i >= 0 and masked[i][0] <= m.start() < masked[i][1]:
                continue
            u = UNIT_AFTER.match(n, m.end())
            self.numbers.append(
                Token(
                    m.start(),
                    m.end(),
                    m.group(0),
                    (parse_number(m.group(0)), unit_key(u.group(0)) if u else None),
                )
            )
        self._starts = {
            "codes": [t.start for t in self.codes],
            "dates": [t.start for t in self.dates],
            "years": [t.start for t in self.years],
            "numbers": [t.start for t in self.numbers],
            "schedules": [t.start for t in self.schedules],
            "tnm": [t.start for t in self.tnm],
        }
        self.sections = self._sections(headings)

    # -- lookups

    def find(self, name: str) -> list[tuple[int, int]]:
        """(start, end) of every whole-word occurrence of a name (looked up by its first word)."""
        p = name_pattern(name) if name and name.strip() else None
        if p is None:
            return []
        first = _first_word(name)
        if not first:  # a name that starts with a sign: scan
            return [(m.start(), m.end()) for m in p.finditer(self.n)]
        out = []
        n = self.n
        pos = n.find(first)
        while pos != -1:  # str.find runs in C: candidates first, the pattern only there
            m = p.match(n, pos)
            if m is not None:
                out.append((m.start(), m.end()))
            pos = n.find(first, pos + 1)
        return out

    def tokens(self, kind: str, start: int, end: int) -> list[Token]:
        """Tokens of a kind (codes, dates, numbers, schedules, tnm, years) starting in [start, end)."""
        toks: list[Token] = getattr(self, kind)
        starts = self._starts[kind]
        return toks[bisect.bisect_left(starts, start) : bisect.bisect_left(starts, end)]

    def line(self, pos: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.line_starts, pos) - 1
        start = self.line_starts[i]
        end = self.line_starts[i + 1] - 1 if i + 1 < len(self.line_starts) else len(self.n)
        return start, end

    def sentence(self, start: int, end: int | None = None) -> tuple[int, int]:
        """The clause (sentence, list item or table line) around [start, end)."""
        end = start if end is None else end
        i = bisect.bisect_left(self.stops, start)
        s = self.stops[i - 1] + 1 if i > 0 else 0
        j = bisect.bisect_left(
            self.stops, max(start, end)
        )  # a name's own final period ("Temp.") ends nothing
        e = self.stops[j] if j < len(self.stops) else len(self.n)
        return s, e

    def paragraph(self, pos: int) -> tuple[int, int]:
        i = bisect.bisect_left(self.paragraph_stops, pos)
        s = self.paragraph_stops[i - 1] + 1 if i > 0 else 0
        e = self.paragraph_stops[i] if i < len(self.paragraph_stops) else len(self.n)
        return s, e

    def section_at(self, pos: int) -> tuple[str | None, int, int]:
        """(section key, start, end) of the located section holding pos (None: before any heading)."""
        key, start, end = None, 0, len(self.n)
        for k, s, e in self.sections:
            if s <= pos < e:
                return k, s, e
            if s > pos:
                end = s
                break
        return key, start, end

    # -- sections

    def _sections(self, headings: Iterable[tuple[str, Sequence[str]]]) -> list[tuple[str, int, int]]:
        """Locate section headings: a line that is the heading, or the heading and a colon, any case."""
        keys: dict[str, str] = {}
        for key, names in headings:
            for h in names:
                keys.setdefault(" ".join(norm(h).split()).rstrip(":"), key)
        if not keys:
            return []
        found: list[tuple[int, str]] = []
        seen: set[str] = set()
        for i, ls in enumerate(self.line_starts):
            le = self.line_starts[i + 1] - 1 if i + 1 < len(self.line_starts) else len(self.n)
            head = self.n[ls:le].split(":", 1)[0].strip(" \t#*-_=")
            hit = keys.get(" ".join(head.split())) if 0 < len(head) < 80 else None
            if hit is not None and hit not in seen:
                seen.add(hit)
                found.append((ls, hit))
        out = []
        for i, (s, key) in enumerate(found):
            e = found[i + 1][0] if i + 1 < len(found) else len(self.n)
            out.append((key, s, e))
        return out
