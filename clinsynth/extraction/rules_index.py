"""The name index of the rules extractor: every clinical name of the terminology as a token n-gram.

A letter is cut into word and sign tokens once; names are looked up left to right, each start token
extended while the joined tokens are still a prefix of some name (a dictionary walk in the spirit of
Aho-Corasick, linear in the letter's tokens), longest match first. The index is built once per
catalogue and process (~2,000 names), so 10k letters cost seconds, not a regex alternation per letter.

Names come from the clinical-name lexicon (`clinsynth.terminology.names`: clinical names, brand and
INN drug names, lab names and ward abbreviations, vital signs, ICD category titles), each with the
code it pins at the level the catalogue holds.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from clinsynth.letters.scan import norm
from clinsynth.terminology import Catalog
from clinsynth.terminology.names import Lexicon, lexicon, name_dative

#: systems a name can stand for; "bp" is blood pressure written as one value pair ("RR 130/80")
SYSTEMS = ("icd10gm", "ops", "morphology", "atc", "loinc", "bp")
_TOKEN = re.compile(r"\w+|[^\w\s]")
#: names of this length or shorter match only as written or in capitals ("Hb", "HB"; not "hb" in a word
#: list, not "ca." for circa, not "k" as a bullet)
SHORT = 4
_BP_NAMES = ("RR", "Blutdruck", "Blutdruck (RR)", "RR-Messung")


@dataclass(frozen=True)
class Entry:
    """One name as the lexicon writes it and the (system, code) pairs it pins (code "" for bp)."""

    name: str
    codes: tuple[tuple[str, str], ...]

    def code(self, system: str) -> str | None:
        return next((c for s, c in self.codes if s == system), None)

    def has(self, system: str) -> bool:
        return any(s == system for s, _ in self.codes)


@dataclass(frozen=True)
class Hit:
    """A name found in the letter: [start, end) in the NFC text, the text as written, its entry."""

    start: int
    end: int
    text: str
    entry: Entry


def tokens(s: str) -> list[str]:
    return _TOKEN.findall(s)


class NameIndex:
    """Token n-gram dictionary of the lexicon's names."""

    def __init__(self, names: Iterable[tuple[str, str, str]]) -> None:
        codes: dict[str, dict[tuple[str, str], None]] = {}
        shown: dict[str, str] = {}
        for system, code, name in names:
            for variant in _variants(name, system):
                key = " ".join(tokens(norm(variant)))
                if not key:
                    continue
                codes.setdefault(key, {})[(system, code)] = None
                shown.setdefault(key, variant)
        self.entries = {k: Entry(shown[k], tuple(v)) for k, v in codes.items()}
        self.prefixes: set[str] = set()
        for k in self.entries:
            parts = k.split(" ")
            for i in range(1, len(parts)):
                self.prefixes.add(" ".join(parts[:i]))

    def find(self, raw: str, low: str) -> list[Hit]:
        """Longest non-overlapping name matches, left to right (`low` is `norm(raw)`, same offsets)."""
        toks = [(m.start(), m.end(), m.group(0)) for m in _TOKEN.finditer(low)]
        out: list[Hit] = []
        i, n = 0, len(toks)
        entries, prefixes = self.entries, self.prefixes
        while i < n:
            key = toks[i][2]
            if key not in entries and key not in prefixes:
                i += 1
                continue
            best: tuple[int, Entry] | None = None
            j = i
            while True:
                e = entries.get(key)
                if e is not None and self._fits(raw, low, toks[i][0], toks[j][1], e):
                    best = (j, e)
                if key not in prefixes or j + 1 >= n:
                    break
                j += 1
                key = f"{key} {toks[j][2]}"
            if best is None:
                i += 1
                continue
            j, e = best
            s, t = toks[i][0], toks[j][1]
            out.append(Hit(s, t, raw[s:t], e))
            i = j + 1
        return out

    @staticmethod
    def _fits(raw: str, low: str, s: int, t: int, e: Entry) -> bool:
        if s >= 2 and low[s - 1] == "-" and low[s - 2].isalnum():
            return False  # the tail of a compound: "Metamizol-Natrium" does not name Natrium
        name = e.name
        if len(name) <= SHORT:
            written = raw[s:t]
            return written == name or (name[:1].isupper() and written == name.upper())
        return True


_ADJ_END = re.compile(r"^([a-zäöüß][a-zäöüß-]*?)(e|es|er|en|em)$", re.IGNORECASE)
#: spellings letters use beside the catalogue's: Latin c for German k/z ("Leukocyten", "Creatinin")
_SPELLINGS = ((r"zyt", "cyt"), (r"^Krea", "Crea"), (r"^Kalzium", "Calcium"), (r"^Calcium", "Kalzium"))


def _variants(name: str, system: str) -> list[str]:
    """The name and the forms letters also write: inflected leading adjectives ("malignen Melanom"),
    a lab name with "-wert" ("Kreatininwert"), Latin spellings, "Temp" for "Temp."."""
    out = [name]
    if name.endswith(".") and len(name) > 2:
        out.append(name[:-1])  # "Temp." is also written "Temp:"
    words = name.split(" ")
    if system in ("icd10gm", "morphology") and len(words) > 1 and (m := _ADJ_END.match(words[0])):
        out += [" ".join([m.group(1) + end, *words[1:]]) for end in ("e", "es", "er", "en", "em")]
    if system == "loinc":
        out += [re.sub(pat, repl, name) for pat, repl in _SPELLINGS if re.search(pat, name)]
        if len(name) > SHORT and " " not in name and name[-1].isalpha():
            out += [v + "wert" for v in out if v[-1].isalpha()]
    return list(dict.fromkeys(out))


@functools.lru_cache(maxsize=4)
def name_index(cat: Catalog | None = None) -> NameIndex:
    """The index for a catalogue (the packaged one by default): names whose pinned code the catalogue
    does not hold (nor any ancestor of it) are left out."""
    lex = lexicon()
    return NameIndex(_names(lex, cat or lex.cat))


def _names(lex: Lexicon, cat: Catalog) -> list[tuple[str, str, str]]:
    tables = {
        "icd10gm": cat.icd10gm,
        "ops": cat.ops,
        "morphology": cat.icdo3_morphology,
        "atc": cat.atc,
        "loinc": cat.loinc,
    }
    out: list[tuple[str, str, str]] = []
    # the lexicon keeps its surface names per pinned code privately (`_names`, `_fallback`); the rules
    # extractor needs them as written ("Kolon-CA"), which no public accessor returns
    for (system, code), written in lex._names.items():
        if system not in tables:
            continue
        held = lex.in_catalogue(system, code)
        if held is None or tables[system].lookup(held) is None:
            continue
        for name in written:
            out.append((system, held, name))
            if system == "icd10gm" and (dative := name_dative(name)):
                out.append((system, held, dative))  # "bei benigner essentieller Hypertonie"
    for code, title in lex._fallback.items():
        if cat.icd10gm.lookup(code) is not None:
            out.append(("icd10gm", code, title))
    out += [("bp", "", n) for n in _BP_NAMES]
    return out
