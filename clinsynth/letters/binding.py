"""Bind every fact of a recipe to its own span of the letter text.

A fact is found by its name as written (the `say` name, the gold name, the recipe's synonyms; in
LLM-written text also fuzzily, rapidfuzz), and each occurrence governs a region: the text after the
name up to the next fact's name or the clause end (a table row, a list item, a lab entry); a
tumour governs its block (up to the next tumour, paragraph or section). Of several occurrences the
fact is bound to the one whose region states its gold best (fewest problems), preferring its own
section. The verifier checks gold against that region; the data report counts sentence frames
from the spans.

Public: `bind_facts(text, recipe) -> list[FactBinding]`; offsets are into the NFC-normalised text
(template letters are NFC already).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rapidfuzz import fuzz

from clinsynth.letters.attributes import CHECKS, Place, check_codes
from clinsynth.letters.cues import Cue, CueIndex, judge
from clinsynth.letters.scan import LetterText, norm, norm_name
from clinsynth.sampling.recipe import Recipe, RecipeFact

_BULLET = re.compile(r"[ \t\-•*·]*(?:\d{1,2}[.)][ \t]*)?")
FUZZY_MIN = 88  # partial_ratio for LLM text: tolerates inflection, not another word
TUMOUR_BLOCK_MAX = 1200  # characters a tumour block may span

try:  # the sampler's heading variants, to locate sections whose recipe entry names none
    from clinsynth.sampling.phrases import SECTION_HEADINGS as _HEADINGS
except ImportError:  # pragma: no cover
    _HEADINGS = {}


@dataclass
class FactBinding:
    """Where a fact sits in the letter (start == -1: not found) and what the text says about it."""

    fact_id: str
    kind: str
    assertion: str
    #: the recipe's section for the fact, and the section the span was found in (None: not located)
    section: str
    found_section: str | None = None
    #: the name as matched, and its span
    name: str | None = None
    start: int = -1
    end: int = -1
    #: end of the text the name governs (values, units, dates beside it)
    region_end: int = -1
    #: the clause (sentence, list item, table row) holding the name
    sentence_start: int = -1
    sentence_end: int = -1
    #: the assertion cue that governs the span, where it stands, and its text ("nicht nachweisbar")
    cue: str | None = None
    cue_assertion: str | None = None
    cue_side: str | None = None
    fuzzy: bool = False
    #: gold attributes the region does not state (reason strings); gold code fields not written
    problems: list[str] = field(default_factory=list)
    unwritten_codes: list[str] = field(default_factory=list)
    #: every occurrence of the fact's names (start, end)
    occurrences: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("occurrences")
        return d


def fact_names(f: RecipeFact) -> list[str]:
    """Names the letter may write for a fact: as said, as in gold, synonyms (longest first, unique)."""
    g = f.gold
    cands = [
        f.say.get("name"),
        f.say.get("name_dat"),  # the inflected name after bei/mit/nach/Z.n.
        f.say.get("entity"),
        f.say.get("phrase"),  # recipes written before v2
        g.get("text"),
        g.get("name"),
        g.get("entity"),
        g.get("target"),
        *f.synonyms,
    ]
    seen: dict[str, str] = {}
    for c in cands:
        if isinstance(c, str) and c.strip() and norm_name(c.strip()) not in seen:
            seen[norm_name(c.strip())] = c.strip()
    return sorted(seen.values(), key=len, reverse=True)


class Analysis:
    """One letter indexed against one recipe: occurrences, regions, cues. Built once per letter."""

    def __init__(
        self,
        text: str,
        recipe: Recipe,
        *,
        llm_sections: Sequence[str] = (),
        whole_letter_llm: bool = False,
    ) -> None:
        self.recipe = recipe
        headings = []
        for s in recipe.sections:
            names = [s.get("heading")] if s.get("heading") else []
            names += list(_HEADINGS.get(s["key"], ()))
            headings.append((s["key"], [h for h in names if h]))
        self.lt = lt = LetterText(text, headings)
        self.names = {f.id: fact_names(f) for f in recipe.facts}
        self.occ: dict[str, list[tuple[int, int]]] = {}
        self.fuzzy: dict[str, bool] = {}
        for f in recipe.facts:
            hits = sorted({h for n in self.names[f.id] for h in lt.find(n)})
            # a shorter name inside a longer one found at the same place is the same occurrence
            hits = [h for h in hits if not any(o != h and o[0] <= h[0] and h[1] <= o[1] for o in hits)]
            fuzzy = whole_letter_llm or f.section in llm_sections
            self.fuzzy[f.id] = False
            if not hits and fuzzy:
                hits = self._fuzzy(self.names[f.id])
                self.fuzzy[f.id] = bool(hits)
            self.occ[f.id] = hits
        # an occurrence inside a longer name of another fact of its kind is that fact's ("nicht komplexe
        # Chemotherapie"); a tumour inside its diagnosis's name ("Mammakarzinom links") stays
        kind_of = {f.id: f.kind for f in recipe.facts}
        by_kind: dict[str, set[tuple[int, int]]] = {}
        for fid, hs in self.occ.items():
            by_kind.setdefault(kind_of[fid], set()).update(hs)
        for fid, hs in self.occ.items():
            own = set(hs)
            others = [o for o in by_kind[kind_of[fid]] if o not in own]
            self.occ[fid] = [h for h in hs if not any(o[0] <= h[0] and h[1] <= o[1] for o in others)]
        self.all_occ = sorted({h for hs in self.occ.values() for h in hs})
        self.occ_starts = [s for s, _ in self.all_occ]
        tumour_names = [h for f in recipe.facts if f.kind == "tumor" for h in self.occ[f.id]]
        self.tumour_starts = sorted({s for s, _ in tumour_names})
        self.cues = CueIndex(lt, self.all_occ)

    def _fuzzy(self, names: Sequence[str]) -> list[tuple[int, int]]:
        for name in names:
            n = norm(name)
            if len(n) < 5:
                continue  # fuzzy matching short names (Hb, K) finds them everywhere
            al = fuzz.partial_ratio_alignment(n, self.lt.n, score_cutoff=FUZZY_MIN)
            if al is not None:
                return [(al.dest_start, al.dest_end)]
        return []

    # -- regions

    def _next_other(self, start: int, end: int) -> int:
        i = bisect.bisect_left(self.occ_starts, end)
        while i < len(self.all_occ) and self.all_occ[i][0] < end:
            i += 1
        return self.all_occ[i][0] if i < len(self.all_occ) else len(self.lt.n)

    def place(self, f: RecipeFact, occ: tuple[int, int]) -> Place:
        lt = self.lt
        start, end = occ
        _, sec_s, sec_e = lt.section_at(start)
        if f.kind == "tumor":
            i = bisect.bisect_right(self.tumour_starts, end)
            other = [
                s
                for s in self.tumour_starts[i:]
                if s >= end and not self._same_name(f, s) and not self._inside_own_words(f, s)
            ]
            stop = min(
                other[0] if other else len(lt.n),
                lt.paragraph(start)[1],
                sec_e,
                start + TUMOUR_BLOCK_MAX,
                self._next_line_of_other_fact(f, end),
            )
            # codes belong to the entity up to the next other name ("Mamma-CA (C50.9), Adipositas (E66.0)")
            ls, _ = lt.line(start)
            i = bisect.bisect_left(self.occ_starts, start) - 1
            prev_end = max((e for s, e in self.all_occ[max(0, i - 3) : i + 1] if e <= start), default=0)
            code_end = self._next_other_fact(f, end)
            if code_end < len(lt.n) and lt.line(code_end)[0] > end:  # a later line belongs to that fact
                code_end = lt.line(code_end)[0]
            if code_end < len(lt.n) and (other_s := lt.sentence(code_end, code_end)[0]) > end:
                code_end = other_s  # so does a later sentence ("... ECOG 1. E11.9 Typ-2-Diabetes")
            return Place(start, end, max(end, stop), sec_s, sec_e, lead=max(ls, prev_end), code_end=code_end)
        s_start, s_end = lt.sentence(start, end)
        region_end = min(self._next_other(start, end), s_end)
        # the text before the name on its line belongs to it if no other name stands there
        ls, _ = lt.line(start)
        i = bisect.bisect_left(self.occ_starts, start) - 1
        prev_end = max((e for s, e in self.all_occ[max(0, i - 3) : i + 1] if e <= start), default=0)
        return Place(start, end, max(end, region_end), sec_s, sec_e, lead=max(ls, prev_end, s_start))

    def _next_other_fact(self, f: RecipeFact, end: int) -> int:
        """Start of the next name that is not this fact's own (nor a lab/marker inside its block)."""
        own = set(self.occ[f.id])
        i = bisect.bisect_left(self.occ_starts, end)
        while i < len(self.all_occ):
            o = self.all_occ[i]
            if o not in own and o[0] >= end and not self._is_marker_like(*o):
                return o[0]
            i += 1
        return len(self.lt.n)

    def inside_other(self, f: RecipeFact, occ: tuple[int, int]) -> bool:
        """Is the occurrence part of another fact's longer name?"""
        i = bisect.bisect_right(self.occ_starts, occ[0])
        own = set(self.occ[f.id])
        for o in self.all_occ[max(0, i - 8) : i]:
            if o not in own and o[0] <= occ[0] and occ[1] <= o[1] and o != occ:
                return True
        return False

    def _inside_own_words(self, f: RecipeFact, pos: int) -> bool:
        """Is a name at `pos` part of this fact's own words ("Histologie: malignes Melanom" in the block
        of "Malignes Melanom der unteren Extremität" is its histology, not the earlier "Melanom")?"""
        n = self.lt.n
        for v in (*f.gold.values(), *f.say.values()):
            if not isinstance(v, str) or len(v) < 4:
                continue
            w = norm(v)
            at = n.find(w, max(0, pos - len(w)), pos + len(w))
            if 0 <= at <= pos < at + len(w):
                return True
        return False

    def _same_name(self, f: RecipeFact, pos: int) -> bool:
        return any(s == pos for s, _ in self.occ[f.id])

    def _next_line_of_other_fact(self, f: RecipeFact, end: int) -> int:
        """A tumour block ends at a line that starts with another fact's name (the next diagnosis)."""
        lt = self.lt
        _, le = lt.line(end)
        pos = le + 1
        own = {norm(n) for n in self.names[f.id]}  # its names and its own strings (histology)
        own |= {norm(v) for v in (*f.gold.values(), *f.say.values()) if isinstance(v, str)}
        while pos < len(lt.n) and pos - end < TUMOUR_BLOCK_MAX:
            ls, le = lt.line(pos)
            lead = _BULLET.match(lt.n, ls, le)
            first = lead.end() if lead else ls
            i = bisect.bisect_left(self.occ_starts, ls)
            if i < len(self.all_occ):
                s, e = self.all_occ[i]
                if s == first and lt.n[s:e] not in own and not self._is_marker_like(s, e):
                    return ls
            pos = le + 1
        return len(lt.n)

    def _is_marker_like(self, s: int, e: int) -> bool:
        """Labs and vitals named inside a tumour block (CEA, PSA) do not end it."""
        return any(f.kind in ("lab", "vital") and (s, e) in self.occ[f.id] for f in self.recipe.facts)

    # -- binding

    def bind(self, f: RecipeFact) -> tuple[FactBinding, list[tuple[Place, list[str], list[str]]]]:
        """The fact's binding and, per occurrence, its place and problems (best first)."""
        lt = self.lt
        b = FactBinding(
            f.id, f.kind, f.assertion, f.section, fuzzy=self.fuzzy[f.id], occurrences=self.occ[f.id]
        )
        scored: list[tuple[tuple[int, int, int], Place, list[str], list[str]]] = []
        check = CHECKS.get(f.kind)
        for occ in self.occ[f.id]:
            p = self.place(f, occ)
            problems = check(lt, p, f.gold) if check else []
            code_problems, unwritten = check_codes(lt, p, f.kind, f.gold)
            problems = problems + code_problems
            in_own = lt.section_at(occ[0])[0] == f.section
            scored.append(((len(problems), 0 if in_own else 1, occ[0]), p, problems, unwritten))
        scored.sort(key=lambda x: x[0])
        if not scored:
            return b, []
        _, p, problems, unwritten = scored[0]
        b.start, b.end, b.region_end = p.start, p.end, p.region_end
        b.name = lt.raw[p.start : p.end]
        b.sentence_start, b.sentence_end = lt.sentence(p.start, p.end)
        b.found_section = lt.section_at(p.start)[0]
        b.problems, b.unwritten_codes = problems, unwritten
        return b, [(pl, pr, un) for _, pl, pr, un in scored]

    def cues_at(self, start: int, end: int) -> list[Cue]:
        return self.cues.in_scope(start, end)

    def set_cue(self, b: FactBinding, start: int, end: int) -> None:
        _ok, cue = judge(self.cues_at(start, end), b.assertion)  # type: ignore[arg-type]
        if cue is not None:
            b.cue, b.cue_assertion = self.lt.raw[cue.start : cue.end], cue.assertion
            b.cue_side = "before" if cue.end <= start else "after"


def bind_facts(
    text: str, recipe: Recipe, *, llm_sections: Sequence[str] = (), whole_letter_llm: bool = False
) -> list[FactBinding]:
    """Each fact bound to its own span (start == -1 when its name is not in the text), with its clause,
    section and the cue that governs it. For the data report's sentence frames and for error analysis."""
    a = Analysis(text, recipe, llm_sections=llm_sections, whole_letter_llm=whole_letter_llm)
    out = []
    for f in recipe.facts:
        b, _ = a.bind(f)
        if b.start >= 0:
            a.set_cue(b, b.start, b.end)
        out.append(b)
    return out
