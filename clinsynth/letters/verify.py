"""Check a letter against its recipe's GOLD: what we train on must be what the text says.

The say strings are not trusted (an LLM-written or noised letter may differ); the gold is judged
against the text:

* every fact is bound to its own span (`binding`): its value, unit, date, dose, scheme, cycle sit
  beside its own name, not a neighbour's; a tumour's TNM per axis with prefix, nodes, L/V/Pn/R,
  grading, UICC/entity stage, laterality, markers and ICD-O codes match its block (`attributes`);
* assertion cues are checked in both directions around the span, with scope over lists (`cues`):
  a present fact has no cue in scope, a negated/suspected/historical fact has its own;
* every code written (ICD-10-GM, OPS, ATC, LOINC, ICD-O morphology and topography) is a gold code at
  the same specificity; a gold code not written is no more specific than its name pins down
  (`clinsynth.terminology.names.pinned_code`, when installed);
* the reverse check: every code, drug name, dose, lab value, TNM string and date in the letter is
  covered by a gold fact's span, or written on purpose without gold (`Recipe.untagged`, the head);
* meaning beyond each fact's span: a drug of this stay (gold context therapy/inpatient/discharge) may
  not stand under an admission heading ("Hausmedikation:", "Vormedikation:"); a drug given this stay
  may not also be a historical fact called finished ("abgeschlossen", "beendet", "abgesetzt");
* truncated or failed generation parts fail.

A letter that fails keeps its text and gets reasons ("<kind of problem>: <fact kind> '<name>': ...");
the dataset stage leaves it out of training by default. `Verdict.bindings` holds each fact's span.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinsynth.letters.attributes import Place
from clinsynth.letters.binding import Analysis, FactBinding, bind_facts
from clinsynth.letters.cues import judge
from clinsynth.letters.scan import CODE_PATTERNS, LetterText, norm
from clinsynth.sampling.recipe import Recipe, RecipeFact

__all__ = ["CODE_PATTERNS", "Verdict", "bind_facts", "foreign_codes", "spans", "summarize", "verify"]

try:  # the clinical-name lexicon: the code a name pins ("Sigmakarzinom" -> C18.7, "Kolonkarzinom" -> C18)
    from clinsynth.terminology.names import covers as _covers
    from clinsynth.terminology.names import pinned_code as _pinned_code_uncached

    _pinned_code = functools.lru_cache(maxsize=65536)(_pinned_code_uncached)
except ImportError:  # pragma: no cover - trees without the lexicon skip the specificity check
    _pinned_code = None  # type: ignore[assignment]
    _covers = None  # type: ignore[assignment]


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    #: fact id -> "ok" | its first reason (for error analysis)
    facts: dict[str, str] = field(default_factory=dict)
    #: each fact's span and cue (see `binding.FactBinding`)
    bindings: list[FactBinding] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- lexicons


@functools.lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[tuple[str, str]]]:
    """Words that name a drug, a finding or a lab test: first word -> (kind, full name), normalised."""
    drugs: set[str] = set()
    labs: set[str] = set()
    findings: set[str] = set(FINDINGS)
    try:
        from clinsynth.terminology import load_catalog

        cat = load_catalog()
        drugs |= {c.display for c in cat.atc if len(c.code) == 7 and c.display}
        labs |= {t.name_de for t in cat.labs.values()}
    except Exception:  # pragma: no cover - the catalogue always loads in a working install
        pass
    try:
        from clinsynth.terminology import names as lexicon

        drugs |= set(getattr(lexicon, "BRANDS", {}))
        labs |= {s for v in getattr(lexicon, "LAB_SHORT", {}).values() for s in v if len(s) > 1}
    except ImportError:  # pragma: no cover
        pass
    out: dict[str, list[tuple[str, str]]] = {}
    for kind, names in (("drug", drugs), ("finding", findings), ("lab", labs)):
        for n in names:
            words = norm(n).split()
            if words and len(words[0]) > 1:
                out.setdefault(words[0], []).append((kind, " ".join(words)))
    return out


#: findings a letter states as facts; one written without gold is an untagged fact
FINDINGS = (
    "Lungenembolie", "Lungenarterienembolie", "Sepsis", "Pneumonie", "Hirnmetastasen", "Hirnmetastase",
    "Lebermetastasen", "Lebermetastase", "Lungenmetastasen", "Knochenmetastasen", "Pleurakarzinose",
    "Peritonealkarzinose", "Nebennierenmetastasen", "Aszites", "Beinvenenthrombose", "Thrombose",
    "Hirnmetastasierung", "Lebermetastasierung", "Lungenmetastasierung", "Perikarderguss",
    "Myokardinfarkt", "Lungenödem", "Ileus", "Anastomoseninsuffizienz", "Neutropenie", "Agranulozytose",
)  # fmt: skip

_WORD = re.compile(r"[^\W_][\w-]*")


def _lexicon_hits(lt: LetterText) -> Iterator[tuple[str, int, int, str]]:
    """(kind, start, end, name) of every lexicon word in the text."""
    lex = _lexicon()
    present = set(_WORD.findall(lt.n)) & lex.keys()  # C-speed: most letters name few lexicon words
    if not present:
        return
    n = lt.n
    for w in present:
        pos = n.find(w)
        while pos != -1:
            end = pos + len(w)
            whole = (pos == 0 or not (n[pos - 1].isalnum() or n[pos - 1] in "_-")) and (
                end == len(n) or not (n[end].isalnum() or n[end] in "_-")
            )
            if whole:
                for kind, name in lex[w]:
                    if " " not in name:
                        yield kind, pos, end, name
                    elif n.startswith(name, pos):
                        yield kind, pos, pos + len(name), name
            pos = n.find(w, pos + 1)


def _label(f: RecipeFact, names: Sequence[str]) -> str:
    return f"{f.kind} {(names[0] if names else f.id)!r}"


def _reason(problem: str, label: str) -> str:
    head, _, tail = problem.partition(": ")
    return f"{head}: {label}: {tail}" if tail else f"{head}: {label}"


#: gold code field -> (lexicon system, the gold/say keys whose text may pin it)
_PINNED_BY: dict[str, tuple[str, tuple[str, ...]]] = {
    "icd10gm": ("icd10gm", ("text", "entity", "name")),
    "ops": ("ops", ("text", "name")),
    "morphology": ("morphology", ("histology",)),
    "topography": ("topography", ()),
    "atc": ("atc", ("name",)),
    "loinc": ("loinc", ("name",)),
}


def _specificity(f: RecipeFact, b: FactBinding, label: str, lt: LetterText) -> list[str]:
    """A gold code the letter does not write may be no more specific than its name pins down."""
    if _pinned_code is None or _covers is None:
        return []
    written = {t.text for t in lt.codes}
    out = []
    for fld in b.unwritten_codes:
        code = str(f.gold[fld])
        if code in written:
            continue  # written elsewhere in the letter (a code list, another line)
        system, keys = _PINNED_BY[fld]
        texts = [b.name or ""] + [str(f.gold[k]) for k in keys if f.gold.get(k)]
        texts += [str(f.say[k]) for k in keys if isinstance(f.say.get(k), str)]
        pins = {p for t in dict.fromkeys(texts) if t for p in [_pinned_code(system, t)] if p}
        if not pins:
            out.append(f"over-specific code: {label}: gold {fld} {code}, the text pins no code")
        elif not any(_covers(system, code, p) for p in pins):
            shown = ", ".join(sorted(pins))
            if any(_covers(system, p, code) for p in pins):
                out.append(f"over-specific code: {label}: gold {fld} {code}, the text pins {shown}")
            else:
                out.append(f"code mismatch: {label}: gold {fld} {code}, the text pins {shown}")
    return out


def _gold_codes(recipe: Recipe) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {k: set() for k in CODE_PATTERNS}
    for f in recipe.facts:
        g = f.gold
        for fld, system in (
            ("icd10gm", "icd10gm"),
            ("topography", "icd10gm"),
            ("ops", "ops"),
            ("atc", "atc"),
            ("loinc", "loinc"),
            ("morphology", "morphology"),
        ):
            if g.get(fld):
                out[system].add(str(g[fld]))
        for m in g.get("markers") or ():
            if m.get("loinc"):
                out["loinc"].add(m["loinc"])
    return out


def foreign_codes(text: str, recipe: Recipe) -> list[str]:
    """Written codes that are not gold codes at the same specificity ("icd10gm C18", "morphology 9930/3")."""
    lt = LetterText(text)
    return _foreign(lt, recipe, _free_spans(lt, recipe))


def _foreign(lt: LetterText, recipe: Recipe, free: Sequence[tuple[int, int]]) -> list[str]:
    gold = _gold_codes(recipe)
    found = [
        f"{t.value} {t.text}"
        for t in lt.codes
        if t.text not in gold[t.value] and not _inside(free, t.start, t.end)
    ]
    return sorted(set(found))


def _free_spans(lt: LetterText, recipe: Recipe, untagged: Sequence[str] = ()) -> list[tuple[int, int]]:
    """Spans written on purpose without gold: the untagged strings and the head's strings."""
    out = []

    def strings(x: Any) -> Iterator[str]:
        if isinstance(x, str):
            yield x
        elif isinstance(x, Mapping):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from strings(v)

    # regimen names are gold of their drugs ("Carboplatin/Paclitaxel/Pembrolizumab")
    regimens = [str(f.gold["regimen"]) for f in recipe.facts if f.gold.get("regimen")]
    for s in [*recipe.untagged, *untagged, *strings(recipe.header), *regimens]:
        s = norm(s.strip())
        if len(s) < 2:
            continue
        i = lt.n.find(s)
        while i != -1:
            out.append((i, i + len(s)))
            i = lt.n.find(s, i + 1)
    return sorted(out)


def _regimen_spans(lt: LetterText, recipe: Recipe) -> list[tuple[int, int]]:
    out = []
    for reg in {norm(str(f.gold["regimen"])) for f in recipe.facts if f.gold.get("regimen")}:
        i = lt.n.find(reg)
        while i != -1:
            out.append((i, i + len(reg)))
            i = lt.n.find(reg, i + 1)
    return out


def _inside(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in spans)


class _Cover:
    """Sorted intervals with a fast 'is [start, end) inside one of them' test."""

    def __init__(self, spans: Sequence[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.spans = merged
        self.starts = [s for s, _ in merged]

    def covers(self, start: int, end: int) -> bool:
        import bisect

        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.spans[i][1] >= end


#: units of values a letter may write without a fact ("Fieber über 38 °C", "95 %"): not checked
_FREE_UNITS = frozenset({"°c", "mmhg", "/min", "bpm", "kg", "cm", "%", "s"})


#: names that carry their assertion themselves ("Nichtraucher" is negated, "Ex-Raucher" historical)
_NAME_CUE: dict[str, re.Pattern[str]] = {
    "negated": re.compile(r"(?:nicht|non-?|kein)[\w-]"),
    "historical": re.compile(r"(?:ex-|ehemalig|früher|z\.\s?n\.|zustand nach)"),
    "suspected": re.compile(r"(?:v\.\s?a\.|verdacht)"),
}


def _gold_dates(recipe: Recipe) -> list[str]:
    out = []
    for f in recipe.facts:
        for k in ("date", "start", "end"):
            if f.gold.get(k):
                out.append(str(f.gold[k]))
    for d in (recipe.encounter or {}, recipe.patient or {}):
        for k in ("admission", "discharge", "birth_date"):
            if d.get(k):
                out.append(str(d[k]))
    return out


def _reverse(
    a: Analysis, places: Sequence[Place], free: Sequence[tuple[int, int]], recipe: Recipe
) -> list[str]:
    """Everything fact-like in the letter is gold or on purpose untagged."""
    lt = a.lt
    names = _Cover([*a.all_occ, *free])
    regions = _Cover([*[(p.lead, p.region_end) for p in places], *a.all_occ, *free])
    gold_dates = _gold_dates(recipe)
    out: list[str] = []
    for kind, s, e, name in _lexicon_hits(lt):
        if kind == "lab":
            if len(name) <= 3 and not lt.raw[s].isupper():
                continue  # "mg" is a unit, "Mg" magnesium
            nxt = lt.tokens("numbers", e, e + 16)
            if nxt and not regions.covers(s, nxt[0].end):
                out.append(f"untagged: lab {lt.raw[s:e]!r} {nxt[0].text}")
        elif not names.covers(s, e):
            out.append(f"untagged: {kind} {lt.raw[s:e]!r}")
    for t in lt.dates:
        if not regions.covers(t.start, t.end) and not any(t.value.matches(d) for d in gold_dates):
            out.append(f"untagged: date {t.text!r}")
    for t in lt.numbers:
        if t.value[1] is not None and t.value[1] not in _FREE_UNITS and not regions.covers(t.start, t.end):
            out.append(f"untagged: value {lt.raw[t.start : t.end]} {t.value[1]}")
    for t in lt.tnm:
        if any(x.axis in ("t", "n", "m") for x in t.value) and not regions.covers(t.start, t.end):
            out.append(f"untagged: TNM {t.text!r}")
    return list(dict.fromkeys(out))


#: a heading that lists what the patient took before the stay; the block runs to the next empty line
_ADMISSION_HEADING = re.compile(
    r"^[ \t]*(?:hausmedikation|medikation bei aufnahme|aufnahmemedikation|vormedikation)[ \t]*:?", re.M
)
#: drugs of this stay's care may not stand under an admission heading
_STAY_CONTEXTS = frozenset({"therapy", "inpatient", "discharge"})
#: a history cue that says a treatment is over
_FINISHED = re.compile(r"abgeschlossen|beendet|abgesetzt")


def _meaning(recipe: Recipe, bindings: Mapping[str, FactBinding], lt: LetterText) -> list[str]:
    """Contradictions between gold and what the text means, beyond each fact's own span:
    a drug of this stay listed as admission medication; a drug given this stay called finished."""
    out: list[str] = []
    blocks = []
    for m in _ADMISSION_HEADING.finditer(lt.n):
        end = lt.n.find("\n\n", m.end())
        blocks.append((m.start(), len(lt.n) if end == -1 else end))
    meds = [f for f in recipe.facts if f.kind == "medication" and bindings[f.id].start >= 0]
    if blocks:
        for f in meds:
            b = bindings[f.id]
            ctx = f.gold.get("context")
            if ctx in _STAY_CONTEXTS and any(s <= b.start < e for s, e in blocks):
                out.append(
                    f"context mismatch: {_label(f, [b.name or ''])}: gold context {ctx}, "
                    "written under an admission heading"
                )
    given: dict[str, RecipeFact] = {}
    for f in meds:
        if f.assertion == "present" and f.gold.get("context") == "therapy":
            given.setdefault(str(f.gold.get("atc") or norm(str(f.gold.get("name")))), f)
    for f in meds:
        b = bindings[f.id]
        key = str(f.gold.get("atc") or norm(str(f.gold.get("name"))))
        if f.assertion == "historical" and key in given and b.cue and _FINISHED.search(norm(b.cue)):
            out.append(
                f"contradiction: {_label(f, [b.name or ''])}: given this stay and called finished "
                f"(cue {b.cue!r})"
            )
    return out


def verify(
    recipe: Recipe,
    text: str,
    *,
    finish_reasons: Mapping[str, str] | None = None,
    llm_sections: Sequence[str] = (),
    whole_letter_llm: bool = False,
    untagged: Sequence[str] = (),
    noise: Sequence[Sequence[str]] = (),
) -> Verdict:
    """Check `text` (the whole letter) against `recipe`'s gold.

    `finish_reasons`: generation part -> finish reason ("length" = truncated);
    `llm_sections`: sections written by an LLM (names matched fuzzily there); `whole_letter_llm`: all of it;
    `untagged`: strings the writer added without gold (the letter record's list; the recipe's count too);
    `noise`: (fact string, as written) pairs the noise changed on purpose: exactly these are undone
    before checking (gold holds the clean value), nothing else is tolerated.
    """
    for pair in noise:
        clean, written = str(pair[0]), str(pair[1])
        if written and written in text:
            text = text.replace(written, clean)
    reasons: list[str] = []
    per_fact: dict[str, str] = {}
    for part, reason in (finish_reasons or {}).items():
        if reason == "length":
            reasons.append(f"truncated: {part}")
        elif reason not in ("stop", "template"):
            reasons.append(f"generation failed: {part} ({reason})")
    a = Analysis(text, recipe, llm_sections=llm_sections, whole_letter_llm=whole_letter_llm)
    lt = a.lt
    bindings: list[FactBinding] = []
    places: list[Place] = []
    fact_reasons: dict[str, list[str]] = {}
    claimed: set[tuple[int, int]] = set()  # occurrences a cued (non-present) fact stands on
    bound = []
    for f in recipe.facts:
        b, scored = a.bind(f)
        bound.append((f, b, scored))
        places += [p for p, _, _ in scored]
    regimen_spans = _regimen_spans(lt, recipe)  # "(Nivolumab mono) ist abgeschlossen" is the regimen's
    # non-present facts first: they claim the occurrence their cue governs ("Z.n. Koloskopie" vs "Koloskopie")
    order = sorted(bound, key=lambda x: x[0].assertion == "present")
    for f, b, _scored in order:
        label = _label(f, [b.name] if b.name else a.names[f.id])
        rs: list[str] = []
        if b.start < 0:
            rs.append(f"omitted: {label}")
        else:
            rs += [_reason(p, label) for p in b.problems]
            rs += _specificity(f, b, label, lt)
            occs = [(b.start, b.end)] + [o for o in b.occurrences if o != (b.start, b.end)]
            if f.assertion == "present":
                for o in occs:
                    if o in claimed or a.inside_other(f, o) or _inside(regimen_spans, *o):
                        continue  # another fact's expression ("Neutropenie nach Chemotherapie, ausgeheilt")
                    ok, cue = judge(a.cues_at(*o), "present")
                    if not ok and cue is not None:
                        b.cue, b.cue_assertion = lt.raw[cue.start : cue.end], cue.assertion
                        b.cue_side = "before" if cue.end <= o[0] else "after"
                        rs.append(f"written as {cue.assertion}: {label} (cue {b.cue!r})")
                        break
            elif _NAME_CUE[f.assertion].match(norm(b.name or "")):
                b.cue, b.cue_assertion, b.cue_side = (
                    b.name,
                    f.assertion,
                    "name",
                )  # "Nichtraucher", "Ex-Raucher"
            else:
                # its own mentions first; a name inside a regimen's or another fact's name last
                occs.sort(key=lambda o: _inside(regimen_spans, *o) or a.inside_other(f, o))
                for o in occs:
                    ok, cue = judge(a.cues_at(*o), f.assertion)
                    if ok and cue is not None:
                        claimed.add(o)
                        b.cue, b.cue_assertion = lt.raw[cue.start : cue.end], cue.assertion
                        b.cue_side = "before" if cue.end <= o[0] else "after"
                        break
                else:
                    s, e = lt.sentence(b.start, b.end)
                    rs.append(f"not {f.assertion}: {label} (no cue in {lt.raw[s:e].strip()[:80]!r})")
        fact_reasons[f.id] = rs
        bindings.append(b)
    order_of = {f.id: i for i, f in enumerate(recipe.facts)}
    bindings.sort(key=lambda b: order_of[b.fact_id])
    for f in recipe.facts:
        rs = fact_reasons[f.id]
        per_fact[f.id] = rs[0] if rs else "ok"
        reasons += rs
    free = _free_spans(lt, recipe, untagged)
    reasons += [f"foreign code: {c}" for c in _foreign(lt, recipe, free)]
    reasons += _reverse(a, places, free, recipe)
    reasons += _meaning(recipe, {b.fact_id: b for b in bindings}, lt)
    return Verdict(ok=not reasons, reasons=reasons, facts=per_fact, bindings=bindings)


def spans(v: Verdict) -> dict[str, list[Any]]:
    """A verdict's bindings as the verdict record stores them: fact id -> [start, end, sentence start,
    sentence end, section found, cue side] (offsets into the NFC text; start -1: not found)."""
    return {
        b.fact_id: [b.start, b.end, b.sentence_start, b.sentence_end, b.found_section, b.cue_side]
        for b in v.bindings
    }


def summarize(verdicts: Sequence[Verdict | Mapping[str, Any]]) -> dict[str, Any]:
    """Rates for the report: letters passing, and how often each kind of reason occurs."""
    n = len(verdicts)
    kinds: dict[str, int] = {}
    ok = 0
    for v in verdicts:
        reasons = v.reasons if isinstance(v, Verdict) else v["reasons"]
        passed = v.ok if isinstance(v, Verdict) else v["ok"]
        ok += bool(passed)
        for r in {r.split(":")[0] for r in reasons}:
            kinds[r] = kinds.get(r, 0) + 1
    return {
        "letters": n,
        "passed": ok,
        "pass_rate": round(ok / n, 4) if n else None,
        "failing_by_reason": {k: {"letters": c, "rate": round(c / n, 4)} for k, c in sorted(kinds.items())},
    }
