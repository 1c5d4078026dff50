"""Assertion cues (negation, suspicion, history) and their scope around a fact's name, both directions.

A cue governs the names right after it ("kein Hinweis auf X", "V.a. X", "Z.n. X") or right before
it ("X nicht nachweisbar", "X sonographisch ausgeschlossen", "X, metastasensuspekt").
Scope (NegEx-like, tuned for German letters):

* it never crosses a clause end (". ", ";", ":", a line break) or a contrast word ("aber", "jedoch" ...);
* before the name, at most 3 words may sit between cue and name, all lower case (German nouns are
  capitalised: "Keine Beschwerden bei Rektumkarzinom" does not negate the carcinoma);
* after the name, at most 4 words of any case ("Lungenmetastasen CT-morphologisch nicht nachweisbar"),
  or just a comma ("Leberläsion, metastasensuspekt");
* a list of names joined by ",", "und", "oder", "sowie" shares the cue ("Kein Hinweis auf
  Lebermetastasen oder Aszites", "Leber- und Lungenmetastasen ausgeschlossen" if both are written).

Strong cues decide: a present fact must have none in scope. Weak cues ("unauffällig", "(2019)",
"vorbekannt", "am ehesten") only confirm an assertion the gold states; they never contradict "present".
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clinsynth.letters.scan import LetterText
from clinsynth.schema import Assertion

_NOUN_CUE = r"(?:hinweis|anhalt|anhaltspunkt|nachweis|zeichen|verdacht|evidenz|befund)\w*"
_ART = r"(?:auf|für|von|vom|einer?|eines|einen|einem|den|die|das|der)"
_VORLIEGEN = r"(?:\s+(?:das\s+)?vorliegen\s+(?:von|einer?|eines))?"
#: a word between "kein"/"ohne" and its noun stays on their line: "aktuell ohne Bedeutung⏎Verdacht auf X"
#: is no "ohne Verdacht auf" (a bare line wrap between the two words still joins them)
_SP = r"[^\S\n]+"
_INNER = rf"(?:{_SP}[\w-]+)"
_NICHT_AUSZ = r"nicht\s+(?:sicher\s+|ganz\s+|mit\s+sicherheit\s+)?auszuschlie(?:ß|ss)en"

#: (pattern, assertion, strong, where: "pre" | "post" | "both"); the first alternative that matches wins
CUE_TABLE: tuple[tuple[str, Assertion, bool, str], ...] = (
    # suspicion first: "nicht sicher auszuschließen" is no negation
    (_NICHT_AUSZ, "suspected", True, "both"),
    (r"keine?\s+(?:einnahme|gabe|anwendung|durchführung)(?:\s+(?:von|des|der))?", "negated", True, "both"),
    # "Exsikkose: kein Nachweis" (no preposition follows: the cue closes the clause, so it looks back)
    (rf"kein(?:e[nmrs]?)?\s+{_NOUN_CUE}(?!\s+{_ART})", "negated", True, "both"),
    (
        rf"kein(?:e[nmrs]?)?(?:{_INNER}{{1,2}}?{_SP}|\s+){_NOUN_CUE}(?:\s+{_ART})?{_VORLIEGEN}",
        "negated",
        True,
        "pre",
    ),
    (rf"ohne(?:{_INNER}{_SP}|\s+){_NOUN_CUE}(?:\s+{_ART})?", "negated", True, "pre"),
    (r"kein(?:e[nmrs]?)?", "negated", True, "pre"),
    (r"ohne", "negated", True, "pre"),
    (rf"ausschluss\s+{_ART}?", "negated", True, "pre"),
    (r"frei\s+von", "negated", True, "pre"),
    (r"negativ\s+für", "negated", True, "pre"),
    (r"ausgeschlossen|ausgeräumt|widerlegt", "negated", True, "both"),
    (
        r"nicht\s+(?:mehr\s+)?(?:nachweisbar|nachgewiesen|nachzuweisen|darstellbar|abgrenzbar|sichtbar|"
        r"erkennbar|vorhanden|bestätigt|bestätigen|feststellbar|gesehen|detektierbar|zu\s+sehen|eruierbar|"
        r"durchgeführt|erfolgt|gegeben|verabreicht|eingenommen|eingesetzt|indiziert|notwendig|erforderlich|"
        r"aufgetreten|beobachtet)"
        r"|(?:bestehen|besteht|lag|liegt|liegen|fand\s+sich|fanden\s+sich|zeigte\s+sich|ergab\s+sich|"
        r"erfolgte|erfolgt|wurde|wurden|wird|werden)"
        r"(?:[ \t]+[\w-]+){0,3}[ \t]+nicht(?:[ \t]+vor)?",
        "negated",
        True,
        "post",
    ),
    (
        r"verneint|(?:wurde|wird)\s+abgesehen|abgesehen|(?:wurde|wird)\s+verzichtet|verzichtet|abgelehnt|"
        r"bestätigte?n?[ \t]+sich(?:[ \t]+[\w-]+){0,3}[ \t]+nicht|"
        r"(?:ergab|ergibt|fand|findet|zeigte|zeigt)[ \t]+sich(?:[ \t]+[\w-]+){0,3}[ \t]+kein(?:e[nmrs]?)?"
        r"(?:[ \t]+\w+)?(?=[ \t]*(?:$|[\n.,;)]))",
        "negated",
        True,
        "post",
    ),
    (r"verzicht(?:et)?\s+auf", "negated", True, "pre"),
    (r"abgesetzt|pausiert", "historical", True, "post"),
    (r"negativ|unauffällig|o\.\s?b\.|regelrecht|normwertig", "negated", False, "post"),
    (r"\(\s*(?:v\.\s?a\.|verdacht|dd|fraglich)\s*\)", "suspected", True, "post"),
    (r"v\.\s?a\.|verdachts?\s+auf|dringende[rn]?\s+verdacht\s+auf|verdacht", "suspected", True, "pre"),
    (r"nicht[ \t]+sicher(?:[ \t]+\w+)?(?<!auszuschließen)(?<!ausgeschlossen)", "suspected", True, "post"),
    (
        r"(?:fraglich\w*|unklar\w*)[ \t]+(?:einnahme|gabe|anwendung)(?:[ \t]+(?:von|des|der))?",
        "suspected",
        True,
        "pre",
    ),
    (r"verdachtsdiagnose|vermutet", "suspected", True, "post"),
    (r"dd:?|differen[tz]ialdiagnostisch", "suspected", True, "pre"),
    (
        r"fraglich\w*|vermutlich\w*|wahrscheinlich\w*|verdächtig\w*|[\w-]*suspekt\w*",
        "suspected",
        True,
        "both",
    ),
    (
        r"am\s+ehesten|a\.\s?e\.|vereinbar\s+mit|mögliche[rnms]?|passend\s+zu|bild\s+(?:wie\s+bei|einer?|eines)|"
        r"im\s+sinne\s+(?:einer?|eines)|unklare[rnms]?",
        "suspected",
        False,
        "pre",
    ),
    (r"möglich|unklar", "suspected", False, "both"),
    (r"z\.\s?n\.(?=[ \t]*(?:$|[\n;)]))", "historical", True, "post"),  # "Neutropenie, Z.n."
    (
        r"z\.\s?n\.|zustand\s+nach|st\.\s?[np]\.|status\s+(?:nach|post)|s\.\s?p\.|ehemal\w*|damalig\w*|"
        r"stattgehabt\w*|vorausgegangen\w*|zurückliegend\w*",
        "historical",
        True,
        "pre",
    ),
    (r"früher\w*|damals|vormals|bisherige[rnms]?", "historical", True, "both"),
    (r"(?:ist|sind|wurde|wurden)?[ \t]*abgeschlossen|beendet", "historical", True, "post"),
    # a label that makes its whole clause history ("Vortherapie: 2 Zyklen R-CHOP mit ..."); not
    # "Onkologische Anamnese:", which letters also put before the current cycle
    (
        r"vortherapie\w*\s*:|bisherige\s+therapie\w*\s*:|vorbehandlung\w*\s*:",
        "historical",
        True,
        "clause",
    ),
    (r"(?:in\s+der\s+|zur\s+)?vorgeschichte:?", "historical", True, "both"),
    (r"zuvor|vorbefund:?|vorwert\w*|voruntersuchung", "historical", True, "both"),
    (r"ausgeheilt|abgeheilt|abgeklungen|überstanden|sistiert|in\s+vollremission", "historical", True, "post"),
    (r"vor\s+\d+\s+jahren", "historical", True, "post"),
    (r"anamnestisch|vorbekannt\w*|bekannt\w*", "historical", False, "both"),
    (
        r"\(\s*(?:\d{1,2}/)?(?:19|20)\d{2}\s*\)|(?<![./])(?:19|20)\d{2}(?=[ \t]*(?:$|[\n.,;)]))",
        "historical",
        False,
        "post",
    ),
)

#: each cue's pattern, matched at a word start
_PATTERNS = [re.compile(rf"(?:{p})(?:(?<=\w)(?!\w)|(?<!\w))") for p, *_ in CUE_TABLE]
#: the first one or two letters of a word -> the cues that may start there (in table order); a scan
#: of the words with a dict lookup each is ~20x faster than one alternation tried at every position
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "ni": ("nicht sicher auszuschließen", "nicht nachweisbar", "nicht sicher"),
    "ke": (
        "kein nachweis",
        "keine einnahme von",
        "kein hinweis auf",
        "kein anhalt für das vorliegen von",
        "kein",
    ),
    "oh": ("ohne nachweis von", "ohne"),
    "au": ("ausschluss einer", "ausgeschlossen", "ausgeräumt", "ausgeheilt"),
    "fr": ("frei von", "fragliche einnahme von", "fraglich", "früher"),
    "ne": ("negativ für", "negativ"),
    "wi": ("widerlegt",),
    "wu": ("wurde abgesehen", "wurde nicht", "wurde abgeschlossen"),
    "we": ("werden nicht",),
    "ab": ("abgesehen", "abgesetzt", "abgeheilt", "abgeklungen", "abgeschlossen", "abgelehnt"),
    "pa": ("passend zu", "pausiert"),
    "ve": (
        "verzicht auf",
        "verzichtet",
        "verneint",
        "verdacht auf",
        "verdachtsdiagnose",
        "vermutlich",
        "verdächtig",
        "vereinbar mit",
    ),
    "un": ("unauffällig", "unklare einnahme von", "unklare", "unklar"),
    "o": ("o.b.",),
    "re": ("regelrecht",),
    "no": ("normwertig",),
    "v": ("v.a.",),
    "dr": ("dringender verdacht auf",),
    "dd": ("dd",),
    "di": ("differenzialdiagnostisch",),
    "wa": ("wahrscheinlich",),
    "am": ("am ehesten",),
    "a": ("a.e.",),
    "mö": ("möglich",),
    "z": ("z.n.",),
    "zu": ("zustand nach", "zurückliegend", "zur vorgeschichte", "zuvor"),
    "st": ("st.n.", "status nach", "stattgehabt"),
    "s": ("s.p.",),
    "eh": ("ehemalig",),
    "da": ("damalig", "damals"),
    "is": ("ist abgeschlossen",),
    "si": ("sind abgeschlossen", "sistiert"),
    "bi": ("bisherige therapie:", "bild wie bei", "bisherige"),
    "vo": (
        "vormals",
        "vorausgegangen",
        "vor 3 jahren",
        "vorbekannt",
        "vorgeschichte",
        "vorbefund",
        "vorwerte",
        "voruntersuchung",
    ),
    "in": ("in der vorgeschichte", "in vollremission"),
    "im": ("im sinne einer",),
    "(": ("(v.a.)", "(fraglich)"),
    "üb": ("überstanden",),
    "be": ("bekannt", "besteht nicht", "bestätigte sich nicht", "beendet"),
    "la": ("lag nicht vor",),
    "li": ("liegt nicht vor",),
    "fa": ("fand sich nicht",),
    "er": ("ergab sich nicht", "erfolgte nicht", "ergab sich klinisch kein anhalt"),
    "fi": ("findet sich kein",),
    "ze": ("zeigte sich nicht", "zeigte sich kein"),
    "an": ("anamnestisch",),
    "19": ("1998",),
    "20": ("2015",),
}
_SUSPEKT = next(i for i, p in enumerate(_PATTERNS) if p.match("metastasensuspekt"))
_CANDIDATES: dict[str, tuple[int, ...]] = {
    key: tuple(i for i, p in enumerate(_PATTERNS) if any(p.fullmatch(w) for w in words))
    for key, words in _TRIGGERS.items()
}
_WORDS = re.compile(r"[^\W_][\w-]*")
_CONTRAST = re.compile(
    r"(?<!\w)(?:aber|jedoch|allerdings|hingegen|sondern|während|trotz|außer|ausser|bis\s+auf|sonst|"
    r"ausnahme|dagegen|wohingegen|aktuell|derzeit|jetzt|nun)(?!\w)"
)
_LIST_JOIN = re.compile(
    r"\s*(?:,|/|\+)?\s*(?:(?:und|oder|sowie|bzw\.?|u\.|od\.|noch|resp\.)\s+)?"
    r"(?:(?:ein|eine|einer|eines|einen|einem|der|die|das|den|dem|des)\s+)?"
)
_PARENS = re.compile(r"\([^()\n]*\)")
_CODE_IN_GAP = re.compile(r"(?<![\w.])[A-Z][0-9]{2}(?:\.[0-9]{1,2})?(?![\w])|(?<![\w/])[89]\d{3}/\d")
_DATE_IN_GAP = re.compile(r"(?<![\w.])\d{1,2}\.\d{1,2}\.\d{2,4}(?!\d)|(?<![\w/])\d{1,2}/\d{2,4}(?!\d)")
_LAT_IN_GAP = re.compile(r"(?<!\w)(?:li\.|re\.|bds\.|links|rechts|beidseits)(?!\w)", re.IGNORECASE)
#: capitalised words a cue reaches across before a name ("Z.n. Therapie mit X", "St.p. RTX X")
_GAP_NOUNS = frozenset(
    [
        "rtx",
        "ctx",
        "rct",
        "rcht",
        "radiatio",
        "bestrahlung",
        "therapie",
        "gabe",
        "einnahme",
        "behandlung",
        "anlage",
        "implantation",
        "hinweise",
        "hinweis",
        "anhalt",
        "nachweis",
        "zeichen",
        "verdacht",
        "vorliegen",
        "entwicklung",
        "auftreten",
        "resektion",
    ]
)
_COMMA_VALUE = re.compile(r",\s*(?=\d)")
_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d)")
_GAP_WORD = re.compile(r"[^\W\d_][\w.-]*|\d[\w.,/-]*")


@dataclass(frozen=True)
class Cue:
    start: int
    end: int
    assertion: Assertion
    strong: bool
    #: where it may stand relative to the name: "pre", "post" or "both"
    where: str
    text: str


def find_cues(lt: LetterText) -> list[Cue]:
    """Every cue of the letter, in text order (one scan of the words)."""
    n = lt.n
    out = []
    pos = 0
    for w in _WORDS.finditer(n):
        start = w.start()
        if start < pos:
            continue
        word = w.group(0)
        cands = _CANDIDATES.get(word[:2], ())
        if len(word) == 1:  # "v" of "v.a.", "z" of "z.n."
            cands = _CANDIDATES.get(word[:1], ())
        if "suspekt" in word:
            cands = (*cands, _SUSPEKT)
        paren = start > 0 and n[start - 1] == "("
        if paren:  # "(V.a.)", "(1998)": the bracket belongs to the cue
            cands = (*_CANDIDATES["("], *cands)
        for i in cands:
            at = start - 1 if paren and (i in _CANDIDATES["("] or word[:2] in ("19", "20")) else start
            m = _PATTERNS[i].match(n, at)
            if m is not None:
                _, assertion, strong, where = CUE_TABLE[i]
                out.append(Cue(m.start(), m.end(), assertion, strong, where, m.group(0)))
                pos = m.end()
                break
    q = n.find("?")
    while q != -1:  # "Metoclopramid?": a question mark after a name hedges it
        out.append(Cue(q, q + 1, "suspected", False, "post", "?"))
        q = n.find("?", q + 1)
    out.sort(key=lambda c: c.start)
    return out


def _no_stop(lt: LetterText, a: int, b: int) -> bool:
    i = bisect.bisect_left(lt.stops, a)
    return i >= len(lt.stops) or lt.stops[i] >= b


def gap_ok(lt: LetterText, a: int, b: int, *, before: bool) -> bool:
    """Can a cue reach across text [a, b)? (see the module docstring)"""
    if b < a:
        return False
    if b == a:
        return True
    if not _no_stop(lt, a, b):
        return False
    # a bracket ("(C18.0)", "(auswärts, Vorgeschichte") and a code ("V.a. C67.0 X") do not stop a cue
    raw = _CODE_IN_GAP.sub(" ", _PARENS.sub(" ", lt.raw[a:b]))
    raw = _DECIMAL_COMMA.sub(".", _LAT_IN_GAP.sub(" ", _DATE_IN_GAP.sub(" ", raw)))
    if not before:  # "Nikotinabusus, 13 pack years (früher)": a comma before a value keeps the scope
        raw = _COMMA_VALUE.sub(" ", raw)
    if not before and "(" in raw:  # "X, 04/2023 (auswärts, Vorgeschichte)": the cue opens a bracket
        raw = raw[: raw.rindex("(")]
    gap = raw.lower()
    if not before and gap.strip() == ",":
        return True  # "Leberläsion, metastasensuspekt"
    if "," in gap or _CONTRAST.search(gap):
        return False
    words = _GAP_WORD.findall(raw)
    if len(words) > (3 if before else 4):
        return False
    return not (before and any(w[0].isupper() and w.lower() not in _GAP_NOUNS for w in words))


def list_joined(lt: LetterText, a: int, b: int) -> bool:
    """Is [a, b) only a list joint between two names (", ", " und ", " oder eine ")?"""
    if b < a:
        return False
    m = _LIST_JOIN.fullmatch(lt.n, a, b)
    return m is not None and _no_stop(lt, a, b) and "\n" not in lt.n[a:b]


class CueIndex:
    """The letter's cues and name occurrences, to answer "which cues govern this name?"."""

    def __init__(self, lt: LetterText, names: Sequence[tuple[int, int]]) -> None:
        self.lt = lt
        self.cues = find_cues(lt)
        self.cue_starts = [c.start for c in self.cues]
        self.names = sorted(set(names))
        self.name_starts = [s for s, _ in self.names]

    def group(self, start: int, end: int) -> tuple[int, int]:
        """The list of names [start, end) belongs to ("Leber-, Lungenmetastasen oder Aszites")."""
        lt, names = self.lt, self.names
        i = bisect.bisect_left(self.name_starts, start)
        gs, ge = start, end
        j = i - 1
        while j >= 0:
            s, e = names[j]
            if e <= gs and list_joined(lt, e, gs):
                gs = s
            elif (
                e > gs
            ):  # overlapping: a longer name holding this one ("Thrombozytopenie nach Chemotherapie")
                gs = min(gs, s)
            else:
                break
            j -= 1
        j = i + 1
        while j < len(names):
            s, e = names[j]
            if s >= ge and list_joined(lt, ge, s):
                ge = e
            elif s < ge:
                ge = max(ge, e)
            else:
                break
            j += 1
        return gs, ge

    def _governs_next(self, c: Cue) -> bool:
        """A two-way cue right before a name belongs to it ("... i.v. Vormals Paclitaxel")."""
        i = bisect.bisect_left(self.name_starts, c.end)
        return i < len(self.names) and gap_ok(self.lt, c.end, self.names[i][0], before=True)

    def _name_between(self, a: int, b: int) -> bool:
        """Does another name sit wholly inside [a, b)? A post cue then belongs to that nearer name
        ("Neulasta 6 mg s.c. Gemcitabin abgesetzt": the cue is Gemcitabin's)."""
        i = bisect.bisect_left(self.name_starts, a)
        while i < len(self.names) and self.names[i][1] <= b:
            s = self.names[i][0]
            gap = self.lt.n[a:s]
            if gap.count("(") <= gap.count(")"):  # a name in a bracket ("(Nivolumab + Ipilimumab)") is a note
                return True
            i += 1
        return False

    def in_scope(self, start: int, end: int) -> list[Cue]:
        """Cues that govern the name at [start, end), nearest first."""
        lt = self.lt
        gs, ge = self.group(start, end)
        lo = bisect.bisect_left(self.cue_starts, max(0, gs - 240))
        hi = bisect.bisect_right(self.cue_starts, ge + 120)
        out: list[tuple[int, Cue]] = []
        for c in self.cues[lo:hi]:
            if c.start < end and c.end > start:
                continue  # the cue is part of the name itself
            if c.where == "clause":
                if c.end <= start and _no_stop(lt, c.end, start):
                    out.append((start - c.end, c))
            elif c.end <= start and c.where in ("pre", "both"):
                if gap_ok(lt, c.end, start, before=True) or (
                    c.end <= gs and gap_ok(lt, c.end, gs, before=True)
                ):
                    out.append((start - c.end, c))
            elif (
                c.start >= end
                and c.where in ("post", "both")
                and not (c.where == "both" and self._governs_next(c))
                and (
                    gap_ok(lt, end, c.start, before=False)
                    or (c.start >= ge and gap_ok(lt, ge, c.start, before=False))
                )
                and not self._name_between(max(end, ge), c.start)
            ):
                out.append((c.start - end, c))
        return [c for _, c in sorted(out, key=lambda x: x[0])]


def judge(cues: Sequence[Cue], assertion: Assertion) -> tuple[bool, Cue | None]:
    """(the cues fit the assertion, the cue that decided). A negation wins over suspicion ("kein V.a.")."""
    strong = [c for c in cues if c.strong]
    if assertion == "present":
        return (not strong, strong[0] if strong else None)
    if assertion == "negated":
        hit = next((c for c in cues if c.assertion == "negated"), None)
        return hit is not None, hit
    # suspected / historical: its own cue, and no negation in scope
    neg = next((c for c in strong if c.assertion == "negated"), None)
    hit = next((c for c in cues if c.assertion == assertion), None)
    if neg is not None and (hit is None or neg.start < hit.start):
        return False, neg
    return hit is not None, hit
