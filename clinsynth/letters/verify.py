"""Check a letter against its recipe: facts expressed, negations negated, no foreign codes, not truncated.

A letter that fails keeps its text and gets reasons; the dataset stage leaves it out of training
by default. Checks look in the fact's own section first, then in the whole letter (an LLM may
move a sentence), and accept the recipe's phrase or any synonym; LLM-written text is also
matched fuzzily (rapidfuzz) so "Lebermetastase" counts for "Lebermetastasen".
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz

from clinsynth.sampling.phrases import CUE_WORDS
from clinsynth.sampling.recipe import Recipe, RecipeFact
from clinsynth.schema import Assertion

#: codes as letters write them; LOINC needs 2+ digits before the dash (OPS has one) and not "CA 19-9"
CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    "icd10gm": re.compile(r"(?<![\w/.-])[A-Z][0-9]{2}(?:\.[0-9]{1,2})?(?![\w/-]|\.\d)"),
    "ops": re.compile(r"(?<![\w/.,-])[1-9]-[0-9]{2}[0-9a-z]?(?:\.[0-9a-z]{1,2})?(?![\w-]|\.\w)"),
    "atc": re.compile(r"(?<![\w-])[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}(?![\w-])"),
    "loinc": re.compile(r"(?<![\w.,/-])(?<!CA )(?<!CA-)[0-9]{2,7}-[0-9](?![\w.,/-])"),
}

FUZZY_MIN = 88  # partial_ratio for LLM text: tolerates inflection, not another word


def norm(s: str) -> str:
    """NFC + lower(): unlike casefold() it keeps offsets (ß stays one character)."""
    return unicodedata.normalize("NFC", s).lower()


#: abbreviations whose period does not end a sentence
ABBREVIATIONS = re.compile(
    r"(?:^|[\s(])(?:z\.n|v\.a|z\.b|i\.v|p\.o|s\.c|o\.n\.a|dr|med|ca|ggf|bzw|vs|u\.a|d\.h|geb|tel|nr)\.$"
)


@functools.lru_cache(maxsize=65536)
def _pattern(needle: str) -> re.Pattern[str]:
    """Whole words, any whitespace between them."""
    words = [re.escape(w) for w in norm(needle).split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


def numbers(value: float) -> list[str]:
    """Ways a letter writes a value: 10,2 · 10.2 · 10,20 (and 268 for 268.0)."""
    out = []
    if float(value).is_integer():
        out.append(str(int(value)))
    for d in (1, 2):
        s = f"{value:.{d}f}"
        out += [s.replace(".", ","), s]
    return list(dict.fromkeys(out))


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    #: fact id -> "ok" | reason (for error analysis)
    facts: dict[str, str] = field(default_factory=dict)


class _Text:
    """A letter's text, normalised once, with sentence boundaries for cue checks."""

    def __init__(self, text: str) -> None:
        self.n = norm(text)
        # sentence ends: ". ", "; " or a line break, but not after "z.n." or "i.v."
        self.stops = [
            m.start()
            for m in re.finditer(r"[.;!?](?=\s)|\n", self.n)
            if self.n[m.start()] in ";\n"
            or not ABBREVIATIONS.search(self.n[max(0, m.start() - 8) : m.start() + 1])
        ]

    def find(self, needle: str) -> list[tuple[int, int]]:
        """(start, length) of every whole-word occurrence."""
        if not needle.strip():
            return []
        return [(m.start(), m.end() - m.start()) for m in _pattern(needle).finditer(self.n)]

    def sentence(self, pos: int, length: int) -> tuple[str, int, int]:
        """The sentence (or table/list line) around pos, and pos's offset in it."""
        i = bisect.bisect_left(self.stops, pos)
        start = self.stops[i - 1] + 1 if i > 0 else 0
        j = bisect.bisect_left(self.stops, pos + length)
        end = self.stops[j] if j < len(self.stops) else len(self.n)
        return self.n[start:end], pos - start, length


def _has_cue(sentence: str, offset: int, length: int, assertion: Assertion, window: int = 60) -> bool:
    before = sentence[max(0, offset - window) : offset]
    after = sentence[offset + length : offset + length + window]
    for cue in CUE_WORDS[assertion]:
        pat = r"(?<!\w)" + re.escape(cue) + r"(?!\w)" if cue[-1].isalnum() else re.escape(cue)
        if re.search(pat, before) or re.search(pat, after):
            return True
    return False


def _names(f: RecipeFact) -> list[str]:
    base = f.gold.get("text") or f.gold.get("name") or f.say.get("phrase") or ""
    return [n for n in [base, *f.synonyms] if n]


def _locate(text: _Text, names: Sequence[str], fuzzy: bool) -> list[tuple[int, int]]:
    """Every (position, length) of the names; fuzzy matching (one best hit) only for LLM text."""
    hits = [h for name in names for h in text.find(name)]
    if hits or not fuzzy:
        return hits
    for name in names:
        n = norm(name)
        if len(n) < 5:
            continue  # fuzzy matching short names (Hb, K) finds them everywhere
        al = fuzz.partial_ratio_alignment(n, text.n, score_cutoff=FUZZY_MIN)
        if al is not None:
            return [(al.dest_start, al.dest_end - al.dest_start)]
    return []


def _check_fact(f: RecipeFact, text: _Text, fuzzy: bool) -> str | None:
    if f.kind == "tumor":
        missing = [
            k
            for k in ("histology", "tnm", "uicc", "grading")
            if f.say.get(k)
            and not text.find(f.say[k])
            and not (fuzzy and k == "histology" and _locate(text, [f.say[k]], True))
        ]
        if f.say.get("morphology_code") and not text.find(f.say["morphology_code"]):
            missing.append("morphology code")
        for m in f.gold.get("markers") or ():
            if not text.find(m["name"]):
                missing.append(f"marker {m['name']}")
        return f"omitted: tumour {', '.join(missing)}" if missing else None
    names = _names(f)
    hits = _locate(text, names, fuzzy)
    if not hits:
        return f"omitted: {f.kind} {names[0]!r}"
    code = f.say.get("code")
    if code and not text.find(code):
        return f"code not written: {f.kind} {names[0]!r} {code}"
    value = f.gold.get("value") if f.kind == "lab" else f.gold.get("dose") if f.kind == "medication" else None
    if value is not None:
        written = numbers(float(value))
        near = [h for h in hits if any(_pattern(v).search(text.n[h[0] : h[0] + h[1] + 80]) for v in written)]
        if not near:
            what = "value" if f.kind == "lab" else "dose"
            return f"{what} missing: {f.kind} {names[0]!r} {value}"
        hits = near
    if f.assertion in ("negated", "historical", "suspected"):
        if not any(_has_cue(*text.sentence(*h), f.assertion) for h in hits):
            sentence = text.sentence(*hits[0])[0]
            return f"not {f.assertion}: {f.kind} {names[0]!r} (no cue in {sentence.strip()[:80]!r})"
    elif f.kind in ("diagnosis", "procedure"):
        # "kein Hinweis auf X" right before a present fact: the letter negates what the recipe affirms
        def negated_at(h: tuple[int, int]) -> bool:
            sentence, offset, _ = text.sentence(*h)
            return bool(_NEG_BEFORE.search(sentence[max(0, offset - 25) : offset]))

        if all(negated_at(h) for h in hits):
            return f"written as negated: {f.kind} {names[0]!r}"
    return None


_NEG_BEFORE = re.compile(r"(?<!\w)(?:kein|keine|keinen|keiner|ohne)(?!\w)[^.;]*$")


def foreign_codes(text: str, recipe: Recipe) -> list[str]:
    held = recipe.codes()
    found: list[str] = []
    for kind, pat in CODE_PATTERNS.items():
        for m in pat.finditer(text):
            code = m.group(0)
            if code not in held and not any(
                h.startswith(code) or code.startswith(h) for h in held if kind != "loinc"
            ):
                found.append(f"{kind} {code}")
    return sorted(set(found))


def verify(
    recipe: Recipe,
    text: str,
    *,
    finish_reasons: Mapping[str, str] | None = None,
    llm_sections: Sequence[str] = (),
    whole_letter_llm: bool = False,
) -> Verdict:
    """Check `text` (the whole letter) against `recipe`.

    `finish_reasons`: generation part -> finish reason ("length" = truncated);
    `llm_sections`: sections written by an LLM (fuzzy matching there); `whole_letter_llm`: all of it.
    """
    t = _Text(text)
    reasons: list[str] = []
    per_fact: dict[str, str] = {}
    for part, reason in (finish_reasons or {}).items():
        if reason == "length":
            reasons.append(f"truncated: {part}")
        elif reason not in ("stop", "template"):
            reasons.append(f"generation failed: {part} ({reason})")
    for f in recipe.facts:
        fuzzy = whole_letter_llm or f.section in llm_sections
        problem = _check_fact(f, t, fuzzy)
        per_fact[f.id] = problem or "ok"
        if problem:
            reasons.append(problem)
    reasons += [f"foreign code: {c}" for c in foreign_codes(text, recipe)]
    return Verdict(ok=not reasons, reasons=reasons, facts=per_fact)


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
