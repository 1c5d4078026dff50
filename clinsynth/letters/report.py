"""The data report of a letter run: what a model trained on these letters would learn from them.

Counted over (recipe, letter text, verdict) records as they stream past (bounded memory: word
counts as histograms, frames capped per fact kind and assertion) and written by the verify
stage as `letters_report.json` and a readable `letters_report.md`:

* words per letter type (median, IQR) beside the development letters' median;
* distinct sentence frames per fact kind and assertion: the clause (sentence, list item, table
  row) the verifier binds the fact to (`clinsynth.letters.binding`, from the verdict's spans),
  with the fact's own strings, the other facts' strings, dates and digits masked. Few frames =
  a template a model learns instead of the language;
* how well the section alone predicts a fact's assertion (per section the fact was found in,
  the majority assertion, learnt on these letters) against the majority-class rate: a
  shortcut when clearly better;
* whether a fact's position in the diagnosis list predicts its assertion (per bucket first / middle /
  last, the majority assertion, against the majority-class rate), and how many lists that mix
  assertions put every non-present item after every present one (a shortcut of fact order);
* facts per kind × assertion; gold codes more specific than the text supports; written codes
  by system (ATC and LOINC must not appear); the share of letters with each text feature
  (`clinsynth.letters.features`) beside the same shares on the development letters.

The development letters' numbers come from `benchmarks/data/dev_letter_stats.json`
(aggregates only, computed by `benchmarks/dev_letter_stats.py` with the same text counters), so
the report works where the letters themselves are absent.
"""

from __future__ import annotations

import bisect
import functools
import importlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import write_bytes, write_json
from clinsynth.letters import features as feat
from clinsynth.letters.binding import bind_facts
from clinsynth.sampling.recipe import Recipe, RecipeFact
from clinsynth.schema import Assertion, FactKind

REPORT_JSON = "letters_report.json"
REPORT_MD = "letters_report.md"
#: committed aggregates of the six development letters (benchmarks/dev_letter_stats.py)
DEV_STATS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "dev_letter_stats.json"

ASSERTIONS: tuple[Assertion, ...] = ("present", "negated", "historical", "suspected")
#: the assertions that apply to each fact kind: the sampler's table (clinsynth.sampling.phrases
#: .ASSERTIONS, the one it draws from), else this one
_DEFAULT_APPLICABLE: dict[FactKind, tuple[Assertion, ...]] = {
    "diagnosis": ("present", "negated", "suspected", "historical"),
    "tumor": ("present", "negated", "suspected", "historical"),
    "procedure": ("present", "negated", "historical"),
    "radiotherapy": ("present", "historical"),
    "medication": ("present", "negated", "suspected", "historical"),
    "lab": ("present", "historical"),
    "vital": ("present",),
    "risk_factor": ("present", "negated", "historical"),
}
APPLICABLE: dict[FactKind, tuple[Assertion, ...]] = dict(
    getattr(importlib.import_module("clinsynth.sampling.phrases"), "ASSERTIONS", None) or _DEFAULT_APPLICABLE
)
#: the letter types the length target applies to (Kurzarztbrief is short by design)
DISCHARGE_TYPES = ("Entlassungsbrief", "Arztbrief")
WORDS_TOLERANCE = 0.25
SECTION_MARGIN = 0.05
MIN_NEGATED_DIAGNOSIS_FRAMES = 50
#: distinct frames kept per kind × assertion (about 100 bytes each); more is reported as "at least"
FRAME_CAP = 10_000
#: frames and style features (the costly counts) come from every letter up to this many, then
#: from every 8th; words, facts, codes and sections from every letter
FRAMES_ALL = 10_000
FRAMES_STRIDE = 8
TOP_FRAMES = 5
#: code fields checked for specificity, by kind: (field = pinning system, the `say` key holding
#: the code as written, the `say` keys whose text pins the code; topography is never pinned)
CODE_FIELDS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "diagnosis": (("icd10gm", "code", ("name",)),),
    "tumor": (
        ("icd10gm", "code", ("entity", "name")),
        ("topography", "topography", ()),
        ("morphology", "morphology", ("histology",)),
    ),
    "procedure": (("ops", "code", ("name",)),),
}


def _load_pinning() -> Callable[..., str | None] | None:
    """The sampler's name -> code pinning ("Harnblasenkarzinom" -> C67), where it exists; without
    it codes the letter does not write are counted as unchecked, never as fine."""
    try:
        module = importlib.import_module("clinsynth.terminology.names")
    except ImportError:
        return None
    fn = getattr(module, "pinned_code", None)
    return fn if callable(fn) else None


PINNED = _load_pinning()


# ---------------------------------------------------------------- distributions over histograms


def _order_statistic(values: Sequence[int], hist: Mapping[int, int], k: int) -> int:
    """The k-th smallest value (0-based) of the values a histogram counts."""
    seen = 0
    for v in values:
        seen += hist[v]
        if seen > k:
            return v
    return values[-1]


def quantile(hist: Mapping[int, int], p: float) -> float | None:
    """The p-quantile of the values a histogram counts, interpolated linearly between order
    statistics (as `statistics.quantiles(method="inclusive")`)."""
    n = sum(hist.values())
    if not n:
        return None
    values = sorted(hist)
    pos = p * (n - 1)
    lo = int(pos)
    a = _order_statistic(values, hist, lo)
    b = _order_statistic(values, hist, min(lo + 1, n - 1))
    return a + (b - a) * (pos - lo)


def distribution(hist: Mapping[int, int]) -> dict[str, Any]:
    n = sum(hist.values())
    if not n:
        return {"n": 0, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    return {
        "n": n,
        "median": quantile(hist, 0.5),
        "q1": quantile(hist, 0.25),
        "q3": quantile(hist, 0.75),
        "min": min(hist),
        "max": max(hist),
    }


# ---------------------------------------------------------------- text-only counts (also for the dev letters)


class TextStats:
    """Words, features and written codes of letters, as histograms and counters (no text kept).
    Words and codes are counted on every letter; the style features (the costly part) on the
    letters measured `with_features`."""

    def __init__(self) -> None:
        self.letters = 0
        self.featured = 0
        self.words: Counter[int] = Counter()
        self.features: Counter[str] = Counter({k: 0 for k in feat.feature_names()})
        self.codes: Counter[str] = Counter({k: 0 for k in feat.CODE_PATTERNS})

    def add(self, text: str) -> None:
        self.add_measured(*self.measure(text))

    @staticmethod
    def measure(text: str, with_features: bool = True) -> tuple[int, dict[str, bool] | None, dict[str, int]]:
        codes = feat.written_codes(text)
        return feat.word_count(text), feat.features(text, codes) if with_features else None, codes

    def add_measured(self, words: int, features: Mapping[str, bool] | None, codes: Mapping[str, int]) -> None:
        self.letters += 1
        self.words[words] += 1
        if features is not None:
            self.featured += 1
            for name, has in features.items():
                self.features[name] += has
        self.codes.update(codes)

    def summary(self) -> dict[str, Any]:
        return {
            "letters": self.letters,
            "words": distribution(self.words),
            "features_counted_on_letters": self.featured,
            "feature_letters": dict(self.features),
            "feature_shares": feat.shares(self.features, self.featured),
            "written_codes": dict(self.codes),
        }


# ---------------------------------------------------------------- sentences, names, frames

_MONTHS = "januar|februar|märz|april|mai|juni|juli|august|september|oktober|november|dezember"
_DATE = re.compile(
    rf"\b[0-9]{{1,2}}\.\s?(?:[0-9]{{1,2}}\.(?:[0-9]{{2,4}})?|(?:{_MONTHS})\s[0-9]{{2,4}})"
    r"|\b[0-9]{1,2}/[0-9]{2,4}\b|\b[0-9]{4}-[0-9]{2}(?:-[0-9]{2})?\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")
#: a list item's number or bullet: layout, not part of the frame
_LIST_MARK = re.compile(r"^\s*(?:[0-9]{1,2}[.)]|[-•*·])\s+")
_SPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=65536)
def _needle(s: str) -> re.Pattern[str]:
    """`s` as whole words, any whitespace between words, any case."""
    body = r"\s+".join(re.escape(w) for w in s.split())
    head = r"(?<!\w)" if s[:1].isalnum() else ""
    tail = r"(?!\w)" if s[-1:].isalnum() else ""
    return re.compile(head + body + tail, re.IGNORECASE)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def fact_names(f: RecipeFact) -> list[str]:
    """The names a letter writes a fact under: `say` name/entity first, then the gold's, then
    the recipe's synonyms."""
    out = _strings(f.say.get("name")) + _strings(f.say.get("name_dat")) + _strings(f.say.get("entity"))
    for key in ("text", "name", "entity", "target"):
        out += _strings(f.gold.get(key))
    return list(dict.fromkeys(out + _strings(f.synonyms)))


def own_strings(f: RecipeFact) -> dict[str, list[str]]:
    """What `frame` masks of the fact itself: every `say` string by key, its names as `name`."""
    out = {k: _strings(v) for k, v in f.say.items()}
    out["name"] = fact_names(f)  # the say name first
    return {k: v for k, v in out.items() if v}


def _isword(c: str) -> bool:
    return c.isalnum() or c == "_"


class _Letter:
    """A letter's NFC text (the verifier's spans count in it) with a cached whole-word, any-case
    finder (str.find on the lower-cased text: a regex per name is ~20x slower at paper scale)."""

    def __init__(self, text: str) -> None:
        self.text = unicodedata.normalize("NFC", text)
        low = self.text.lower()
        self.low = low if len(low) == len(self.text) else None  # a rare letter whose case mapping shifts
        self._found: dict[str, list[tuple[int, int]]] = {}

    def find(self, s: str) -> list[tuple[int, int]]:
        """(start, end) of every occurrence of `s` as whole words, in any case."""
        hits = self._found.get(s)
        if hits is None:
            hits = self._found[s] = self._find(s)
        return hits

    def _find(self, s: str) -> list[tuple[int, int]]:
        spaced = " ".join(s.split())
        needle = spaced.lower()
        if not needle:
            return []
        if self.low is None or len(needle) != len(spaced):
            return [m.span() for m in _needle(s).finditer(self.text)]
        low, n = self.low, len(needle)
        word_left, word_right = _isword(needle[0]), _isword(needle[-1])
        out = []
        i = low.find(needle)
        while i >= 0:
            j = i + n
            if not (word_left and i > 0 and _isword(low[i - 1])) and not (
                word_right and j < len(low) and _isword(low[j])
            ):
                out.append((i, j))
            i = low.find(needle, i + 1)
        if not out and " " in needle:  # a name broken across lines or spaced twice
            out = [m.span() for m in _needle(s).finditer(self.text)]
        return out

    def item(self, start: int, end: int, name_start: int, name_end: int) -> tuple[int, int]:
        """The list item of the clause [start, end) that holds the name: between the list
        separators (· ; | or a comma) around it."""
        left = start
        for sep in _RAW_SEP.finditer(self.text, start, name_start):
            left = sep.end()
        right = _RAW_SEP.search(self.text, name_end, end)
        return left, right.start() if right else end

    def template(self, start: int, end: int, masks: Iterable[tuple[int, int, str, int]]) -> str:
        """text[start:end] as a frame: mask intervals (start, end, placeholder, rank) chosen by
        rank (the fact's own before others': a tumour named inside a longer diagnosis name stays
        the tumour's), then longest first, never overlapping; then
        dates -> §date§, a leading list number or bullet dropped, numbers -> 0, lower case,
        whitespace collapsed."""
        chosen: list[tuple[int, int, str]] = []
        taken = bytearray(end - start)  # 1 where a chosen mask sits
        for a, b, ph, _ in sorted(masks, key=lambda m: (m[3], m[0] - m[1], m[0])):
            if start <= a and b <= end and taken.find(1, a - start, b - start) < 0:
                chosen.append((a, b, ph))
                taken[a - start : b - start] = b"\x01" * (b - a)
        parts, pos = [], start
        for a, b, ph in sorted(chosen):
            parts += [self.text[pos:a], ph]
            pos = b
        parts.append(self.text[pos:end])
        out = _NUMBER.sub("0", _LIST_MARK.sub("", _DATE.sub("§date§", "".join(parts))))
        return _collapse_others(_SPACE.sub(" ", out).strip(" \t-•*:,;").lower())


#: the placeholders of a fact's names (masked wherever they stand in the clause)
_NAME_MASKS = frozenset({"§name§", "§entity§"})
_ITEM_SEP = re.compile(r"(\s*[·;|,]\s*)")
_RAW_SEP = re.compile(r"[·;|]|,\s")
_OWN_MASK = re.compile(r"§(?!f§|date§)[a-z_]+§")


def _collapse_others(frame: str) -> str:
    """A run of list items that hold only other facts ("Hb 0 g/dl · Leuko 0 /nl") becomes one
    "§f§…": the frame is the wording around the fact, not the length of its list or its place."""
    pieces = _ITEM_SEP.split(frame)
    out: list[str] = []
    for i in range(0, len(pieces), 2):
        item = pieces[i]
        other = "§f§" in item and not _OWN_MASK.search(item)
        if other and out and out[-1].endswith("§f§…"):
            continue
        if i:
            out.append(pieces[i - 1])
        # words before the first other fact stay ("labor: §f§…"): they are the frame's lead
        out.append(item[: item.index("§f§")] + "§f§…" if other else item)
    return "".join(out)


def frame(sentence: str, own: Mapping[str, Sequence[str]], others: Iterable[str] = ()) -> str:
    """The sentence as a template: the fact's own strings -> §key§, other facts' strings -> §f§
    (names always, other strings when they are words), dates -> §date§, numbers -> 0, lower
    case, whitespace collapsed. The fact's own strings are masked first (longest first), then
    the others' where they do not overlap them."""
    letter = _Letter(sentence)
    masks = [
        (a, b, f"§{k}§", 0)
        for k, ss in own.items()
        for s in ss
        if k == "name" or _maskable(s)
        for a, b in letter.find(s)
    ]
    masks += [(a, b, "§f§", 1) for s in others if _maskable(s) for a, b in letter.find(s)]
    return letter.template(0, len(letter.text), masks)


@functools.lru_cache(maxsize=65536)
def _maskable(s: str) -> bool:
    """A string worth masking: a word (numbers become 0 anyway; "H" and "mg" are too short)."""
    return len(s) >= 3 and any(c.isalpha() for c in s)


# ---------------------------------------------------------------- where each fact sits

#: fact id -> [start, end, sentence start, sentence end, section found, cue side]: the verifier's
#: binding of each fact to its span (`clinsynth.letters.verify.spans`); start -1: not found
Spans = Mapping[str, Sequence[Any]]


def bindings(recipe: Recipe, text: str, verdict: Mapping[str, Any] | None = None) -> Spans:
    """Each fact's span: from the verdict where the verifier stored it (the verify stage), else
    bound here by the verifier's own binder, so the report and the verifier never disagree on
    where a fact sits."""
    if verdict is not None and isinstance(verdict.get("spans"), Mapping):
        return verdict["spans"]
    return {
        b.fact_id: [b.start, b.end, b.sentence_start, b.sentence_end, b.found_section, b.cue_side]
        for b in bind_facts(text, recipe)
    }


# ---------------------------------------------------------------- code specificity


def _bare(code: str) -> str:
    """A code without spaces and ICD marks (C50.4† -> C50.4)."""
    return re.sub(r"[\s†*!]", "", code)


def code_support(f: RecipeFact, text: str | _Letter) -> list[dict[str, Any]]:
    """Per gold code of the fact: the code the letter supports (a written code, else the code its
    name pins down) and whether gold is more specific than that. Outcomes: ok, more_specific,
    unpinned (gold has a code, the text none: no code written, the name pins none), differs
    (gold and text name different codes), less_specific (allowed), unchecked (nothing written
    and no name->code pinning available)."""
    letter = text if isinstance(text, _Letter) else _Letter(text)
    out = []
    for field, say_key, pin_keys in CODE_FIELDS.get(f.kind, ()):
        gold = f.gold.get(field)
        if not gold:
            continue
        gold = _bare(str(gold))
        # the code as the recipe says it is written, or gold's own code written anywhere in the letter
        written = next((c for c in [*_strings(f.say.get(say_key)), gold] if letter.find(c)), None)
        source = "written"
        supported: str | None = None
        if written:
            supported = _bare(written)
        elif PINNED is not None:
            source = "pinned"
            texts = [t for k in pin_keys for t in _strings(f.say.get(k))]
            if field in ("icd10gm", "ops"):
                texts += fact_names(f)
            supported = next((c for t in texts if (c := _pinned(field, t))), None)
        else:
            out.append(
                {"field": field, "gold": gold, "supported": None, "source": None, "outcome": "unchecked"}
            )
            continue
        if supported == gold:
            outcome = "ok"
        elif supported is None:
            outcome = "unpinned"  # gold holds a code; the letter writes none and its name pins none
        elif gold.startswith(supported) and len(gold) > len(supported):
            outcome = "more_specific"
        elif supported.startswith(gold):
            outcome = "less_specific"
        else:
            outcome = "differs"
        out.append(
            {"field": field, "gold": gold, "supported": supported, "source": source, "outcome": outcome}
        )
    return out


#: outcomes of `code_support` that make gold more specific than (or other than) its text
_WRONG_CODE = ("more_specific", "unpinned", "differs")


def _pinned(system: str, name: str) -> str | None:
    assert PINNED is not None
    code = PINNED(system, name)
    return _bare(code) if code else None


# ---------------------------------------------------------------- the report


def measure_letter(
    recipe: Recipe, text: str, verdict: Mapping[str, Any] | None = None, *, framed: bool = True
) -> dict[str, Any]:
    """Everything the report counts of one letter, as plain picklable data: a verifier worker may
    measure beside its verdict and the stage count it (`LettersReport.add_measured`). `framed`:
    also the costly counts (sentence frames, style features; see `LettersReport.framed`)."""
    letter = _Letter(text)
    words, features, codes = TextStats.measure(text, with_features=framed)
    spans = bindings(recipe, text, verdict)
    facts = []
    for f in recipe.facts:
        span = spans.get(f.id)
        found = span is not None and span[0] >= 0
        # the section the fact stands in, as the binder found it (else the recipe's)
        section = (span[4] if span is not None and found and span[4] else None) or f.section
        facts.append((f.id, f.kind, f.assertion, section, found, code_support(f, letter), fact_names(f)[:1]))
    return {
        "spec_id": recipe.spec_id,
        "letter_type": recipe.letter_type,
        "diagnosis_list": diagnosis_list(recipe, spans),
        "words": words,
        "features": features,
        "codes": codes,
        "ok": verdict.get("ok") if verdict is not None else None,
        "facts": facts,
        "framed": framed,
        "frames": _frames(recipe, letter, spans) if framed else [],
    }


#: the section whose list order the position metric reads
DIAGNOSIS_SECTION = "diagnosen"


def position_bucket(index: int, n: int) -> str:
    """first / middle / last of a list of n items (one item: first)."""
    if index == 0:
        return "first"
    return "last" if index == n - 1 else "middle"


def diagnosis_list(recipe: Recipe, spans: Spans) -> list[tuple[str, str]]:
    """(position bucket, assertion) of each fact the binder found in the diagnosis section, in text
    order; facts bound to the same place (a tumour and its diagnosis) count once, the first's."""
    placed = sorted(
        (span[0], f.assertion)
        for f in recipe.facts
        for span in [spans.get(f.id)]
        if span is not None and span[0] >= 0 and span[4] == DIAGNOSIS_SECTION
    )
    items = list({start: a for start, a in reversed(placed)}.items())
    items.sort()
    return [(position_bucket(i, len(items)), a) for i, (_, a) in enumerate(items)]


def position_rule(counts: Mapping[tuple[str, str], int], mixed: int, non_present_last: int) -> dict[str, Any]:
    """Accuracy of "per position in the diagnosis list, its majority assertion" vs the overall majority,
    and of the lists that mix assertions, how many put every non-present item after every present one."""
    r = section_rule(counts)
    return {
        "facts": r["facts"],
        "position_rule_accuracy": r["section_rule_accuracy"],
        "majority": r["majority"],
        "majority_rate": r["majority_rate"],
        "rule": r.get("rule", {}),
        "by_position": {
            b: dict(sorted(Counter({a: c for (bb, a), c in counts.items() if bb == b}).items()))
            for b in ("first", "middle", "last")
            if any(bb == b for bb, _ in counts)
        },
        "mixed_lists": mixed,
        "non_present_all_after_present": non_present_last,
        "non_present_last_rate": round(non_present_last / mixed, 4) if mixed else None,
    }


def _frames(recipe: Recipe, letter: _Letter, spans: Spans) -> list[tuple[str, str, str]]:
    """(kind, assertion, frame) of each bound fact: the costly count, bounded at paper scale by
    counting it on a sample of the letters."""
    own = {f.id: own_strings(f) for f in recipe.facts}
    # every string of every fact (and of the head) once, with the facts it belongs to
    owners: dict[str, dict[str, str]] = {}
    # (numbers, units and other short strings are left to the digit rule: "0 mg" in every frame)
    for fid, strings in own.items():
        for k, ss in strings.items():
            for s in ss:
                if k == "name" or _maskable(s):
                    owners.setdefault(s, {}).setdefault(fid, f"§{k}§")
    for s in _strings(list(recipe.header.values())) + _strings(recipe.untagged):
        if _maskable(s):
            owners.setdefault(s, {})
    occurrences = sorted((a, b, s) for s in owners for a, b in letter.find(s))
    starts = [o[0] for o in occurrences]
    names = {s for s, o in owners.items() if _NAME_MASKS & set(o.values())}
    out: list[tuple[str, str, str]] = []
    for f in recipe.facts:
        span = spans.get(f.id)
        if span is None or span[0] < 0:
            continue
        a, b = int(span[2]), int(span[3])
        # the fact's own values count only in its list item ("Hb 0 g/dl" of "Hb 0 g/dl · K 0 mmol/l")
        item_a, item_b = letter.item(a, b, int(span[0]), int(span[1]))
        masks = []
        for i in range(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)):
            s_, e_, s = occurrences[i]
            ph = owners[s].get(f.id)
            if ph is not None and (ph in _NAME_MASKS or (item_a <= s_ and e_ <= item_b)):
                masks.append((s_, e_, ph, 0))
            elif s in names or _maskable(s):
                masks.append((s_, e_, "§f§", 1))
        out.append((f.kind, f.assertion, letter.template(a, b, masks)))
    return out


class FrameCounter:
    """Distinct frames (exact up to FRAME_CAP) and how often each of them occurs."""

    def __init__(self, cap: int = FRAME_CAP) -> None:
        self.cap = cap
        self.counts: Counter[str] = Counter()
        self.facts = 0
        self.capped = False

    def add(self, frame: str) -> None:
        self.facts += 1
        if frame in self.counts or len(self.counts) < self.cap:
            self.counts[frame] += 1
        else:
            self.capped = True

    def summary(self, top: int = TOP_FRAMES) -> dict[str, Any]:
        common = self.counts.most_common(top)
        return {
            "facts": self.facts,
            "distinct": len(self.counts),
            "at_least": self.capped,
            "top_share": round(common[0][1] / self.facts, 4) if common else None,
            "top": [{"frame": f, "facts": n} for f, n in common],
        }


def section_rule(counts: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    """Accuracy of "per section, its majority assertion" vs always the overall majority assertion."""
    n = sum(counts.values())
    if not n:
        return {"facts": 0, "section_rule_accuracy": None, "majority_rate": None, "majority": None}
    by_section: dict[str, Counter[str]] = {}
    by_assertion: Counter[str] = Counter()
    for (section, assertion), c in counts.items():
        by_section.setdefault(section, Counter())[assertion] += c
        by_assertion[assertion] += c
    correct = sum(max(c.values()) for c in by_section.values())
    majority, m = by_assertion.most_common(1)[0]
    return {
        "facts": n,
        "sections": len(by_section),
        "section_rule_accuracy": round(correct / n, 4),
        "majority": majority,
        "majority_rate": round(m / n, 4),
        "rule": {s: c.most_common(1)[0][0] for s, c in sorted(by_section.items())},
    }


class LettersReport:
    """Streaming counts over (recipe, text, verdict): `add` each letter, then `to_dict`."""

    def __init__(
        self, frame_cap: int = FRAME_CAP, frames_all: int = FRAMES_ALL, frames_stride: int = FRAMES_STRIDE
    ) -> None:
        self.frame_cap = frame_cap
        #: frames come from the first `frames_all` letters and every `frames_stride`-th after them
        self.frames_all = frames_all
        self.frames_stride = frames_stride
        self.frame_letters = 0
        self.text = TextStats()
        self.words_by_type: dict[str, Counter[int]] = {}
        self.passed = 0
        self.verdicts = 0
        self.facts: Counter[tuple[str, str]] = Counter()
        self.unlocated: Counter[str] = Counter()
        self.frames: dict[tuple[str, str], FrameCounter] = {}
        self.sections: Counter[tuple[str, str, str]] = Counter()
        #: (position bucket in the diagnosis list, assertion) -> facts
        self.positions: Counter[tuple[str, str]] = Counter()
        self.mixed_lists = 0
        self.non_present_last = 0
        self.codes: Counter[tuple[str, str, str]] = Counter()
        self.code_examples: list[dict[str, Any]] = []
        self.failed = 0
        self.errors: list[str] = []

    def framed(self, index: int) -> bool:
        """Whether letter number `index` (0-based, in run order) gets frames and style features."""
        return index < self.frames_all or (index - self.frames_all) % self.frames_stride == 0

    def add(self, recipe: Recipe, text: str, verdict: Mapping[str, Any] | None = None) -> None:
        """Count one letter. A record the counters cannot read is reported, never fatal: the
        report is a view on the run, and one odd recipe must not stop the verify stage."""
        try:
            measured = measure_letter(recipe, text, verdict, framed=self.framed(self.text.letters))
        except Exception as exc:  # reported under "letters_not_counted"
            self.failed += 1
            if len(self.errors) < 20:
                sid = getattr(recipe, "spec_id", "?")
                self.errors.append(f"{sid}: {type(exc).__name__}: {exc} (the letter is not counted)")
            return
        self.add_measured(measured)

    def add_measured(self, m: Mapping[str, Any]) -> None:
        """Count a letter measured by `measure_letter` (here or in a worker process)."""
        self.text.add_measured(m["words"], m["features"], m["codes"])
        self.words_by_type.setdefault(m["letter_type"], Counter())[m["words"]] += 1
        if m["ok"] is not None:
            self.verdicts += 1
            self.passed += bool(m["ok"])
        for _fid, kind, assertion, section, found, checks, name in m["facts"]:
            self.facts[kind, assertion] += 1
            if not found:
                self.unlocated[kind] += 1
            self.sections[kind, section, assertion] += 1
            for check in checks:
                self.codes[kind, check["field"], check["outcome"]] += 1
                if check["outcome"] in _WRONG_CODE and len(self.code_examples) < 20:
                    example = {"spec_id": m["spec_id"], "fact": _fid, "name": name}
                    self.code_examples.append({**example, **check})
        dx = m.get("diagnosis_list") or []
        for bucket, assertion in dx:
            self.positions[bucket, assertion] += 1
        present = [i for i, (_, a) in enumerate(dx) if a == "present"]
        other = [i for i, (_, a) in enumerate(dx) if a != "present"]
        if present and other:
            self.mixed_lists += 1
            self.non_present_last += min(other) > max(present)
        self.frame_letters += bool(m["framed"])
        for kind, assertion, fr in m["frames"]:
            self.frames.setdefault((kind, assertion), FrameCounter(self.frame_cap)).add(fr)

    def to_dict(self, dev: Mapping[str, Any] | None = None) -> dict[str, Any]:
        kinds = list(APPLICABLE)
        per_kind = {
            k: section_rule({(s, a): c for (kk, s, a), c in self.sections.items() if kk == k}) for k in kinds
        }
        overall: Counter[tuple[str, str]] = Counter()
        for (_, s, a), c in self.sections.items():
            overall[s, a] += c
        codes: dict[str, Counter[str]] = {}
        for (kind, field, outcome), c in self.codes.items():
            codes.setdefault(f"{kind}.{field}", Counter())[outcome] += c
        out: dict[str, Any] = {
            "letters": self.text.letters,
            "verified": {"letters": self.verdicts, "passed": self.passed},
            "text": self.text.summary(),
            "words_by_letter_type": {t: distribution(h) for t, h in sorted(self.words_by_type.items())},
            "facts": {k: {a: self.facts[k, a] for a in ASSERTIONS} for k in kinds},
            "facts_not_located": dict(self.unlocated),
            "frames_counted_on_letters": self.frame_letters,
            "frames": {
                k: {a: self.frames[k, a].summary() for a in ASSERTIONS if (k, a) in self.frames}
                for k in kinds
            },
            "section_predicts_assertion": {"overall": section_rule(overall), "by_kind": per_kind},
            "position_predicts_assertion": position_rule(
                self.positions, self.mixed_lists, self.non_present_last
            ),
            "gold_code_specificity": {
                "pinning": "clinsynth.terminology.names.pinned_code" if PINNED else None,
                "by_field": {k: dict(v) for k, v in sorted(codes.items())},
                "examples": self.code_examples,
            },
            "dev_letters": dict(dev) if dev else None,
            "letters_not_counted": {"letters": self.failed, "errors": self.errors},
        }
        out["acceptance"] = acceptance(out)
        return out


def acceptance(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's acceptance numbers, each with its target and whether it is met (None: not measurable)."""
    rows: list[dict[str, Any]] = []
    dev = report.get("dev_letters") or {}
    dev_median = (dev.get("words") or {}).get("median")
    for t in DISCHARGE_TYPES:
        d = report["words_by_letter_type"].get(t)
        if not d or not d["n"]:
            continue
        ratio = d["median"] / dev_median if dev_median else None
        rows.append({
            "check": f"median words, {t} vs development letters",
            "value": d["median"],
            "target": f"{dev_median} ± {WORDS_TOLERANCE:.0%}" if dev_median else "no development stats",
            "ratio": round(ratio, 3) if ratio else None,
            "met": abs(ratio - 1) <= WORDS_TOLERANCE if ratio else None,
        })  # fmt: skip
    spa = report["section_predicts_assertion"]
    for name, r in [("overall", spa["overall"]), *spa["by_kind"].items()]:
        if not r["facts"]:
            continue
        rows.append({
            "check": f"section alone predicts assertion ({name})",
            "value": r["section_rule_accuracy"],
            "target": f"≤ majority {r['majority_rate']} + {SECTION_MARGIN}",
            "met": r["section_rule_accuracy"] <= r["majority_rate"] + SECTION_MARGIN + 1e-9,
        })  # fmt: skip
    pos = report.get("position_predicts_assertion") or {}
    if pos.get("facts"):
        rows.append({
            "check": "position in the diagnosis list predicts assertion",
            "value": pos["position_rule_accuracy"],
            "target": f"≤ majority {pos['majority_rate']} + {SECTION_MARGIN}",
            "met": pos["position_rule_accuracy"] <= pos["majority_rate"] + SECTION_MARGIN + 1e-9,
        })  # fmt: skip
    missing = [f"{k}/{a}" for k, aa in APPLICABLE.items() for a in aa if not report["facts"][k][a]]
    cells = sum(len(a) for a in APPLICABLE.values())
    rows.append({
        "check": "every fact kind with every assertion that applies",
        "value": f"{cells - len(missing)} of {cells} cells" + (f"; missing {missing}" if missing else ""),
        "target": "all",
        "met": not missing,
    })  # fmt: skip
    neg = report["frames"]["diagnosis"].get("negated") or {"distinct": 0}
    rows.append({
        "check": "distinct frames of negated diagnoses",
        "value": neg["distinct"],
        "target": f"≥ {MIN_NEGATED_DIAGNOSIS_FRAMES}",
        "met": neg["distinct"] >= MIN_NEGATED_DIAGNOSIS_FRAMES,
    })  # fmt: skip
    spec = report["gold_code_specificity"]["by_field"]
    more = sum(v.get("more_specific", 0) for v in spec.values())
    unpinned = sum(v.get("unpinned", 0) for v in spec.values())
    unchecked = sum(v.get("unchecked", 0) for v in spec.values())
    rows.append({
        "check": "gold codes more specific than their text",
        "value": more + unpinned,
        "target": "0",
        "detail": f"{more} more specific than the written or pinned code, {unpinned} where the text has none",
        "unchecked": unchecked,
        "met": (more + unpinned == 0) if not unchecked else None,
    })  # fmt: skip
    codes = report["text"]["written_codes"]
    rows.append({
        "check": "ATC/LOINC codes in letter text",
        "value": codes.get("atc", 0) + codes.get("loinc", 0),
        "target": "0",
        "met": codes.get("atc", 0) + codes.get("loinc", 0) == 0,
    })  # fmt: skip
    return rows


def load_dev_stats(path: Path | None = None) -> dict[str, Any] | None:
    """The development letters' aggregates, or None where the file is absent (an installed wheel)."""
    p = path or DEV_STATS
    if not p.is_file():
        return None
    return dict(orjson.loads(p.read_bytes()))


# ---------------------------------------------------------------- the readable summary


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def render_markdown(report: Mapping[str, Any]) -> str:
    dev = report.get("dev_letters") or {}
    lines = [f"# Letters report ({report['letters']} letters)", ""]
    ver = report["verified"]
    if ver["letters"]:
        lines += [f"Verified: {ver['passed']} of {ver['letters']} pass.", ""]
    lines += ["## Acceptance (issue 10)", "", "| check | value | target | met |", "|---|---|---|---|"]
    for r in report["acceptance"]:
        met = {True: "yes", False: "**no**", None: "not measurable"}[r["met"]]
        extra = f" ({r['detail']})" if r.get("detail") and r["value"] else ""
        extra += f" ({r['unchecked']} unchecked)" if r.get("unchecked") else ""
        lines.append(f"| {r['check']} | {r['value']}{extra} | {r['target']} | {met} |")
    dw = dev.get("words") or {}
    lines += [
        "",
        "## Words per letter",
        "",
        "| letter type | letters | median | IQR | min–max |",
        "|---|---|---|---|---|",
    ]
    rows = list(report["words_by_letter_type"].items())
    if dw:
        rows.append((f"development letters ({dev.get('letters')})", dw))
    for t, d in rows:
        if d["n"]:
            lines.append(
                f"| {t} | {d['n']} | {d['median']:g} | {d['q1']:g}–{d['q3']:g} | {d['min']}–{d['max']} |"
            )
    lines += [
        "",
        "## Facts per kind and assertion",
        "",
        f"facts (distinct frames over {report['frames_counted_on_letters']} letters; share of the most "
        "common frame)",
        "",
    ]
    lines += ["| kind | " + " | ".join(ASSERTIONS) + " |", "|---" * (len(ASSERTIONS) + 1) + "|"]
    for k, by in report["facts"].items():
        cells = []
        for a in ASSERTIONS:
            fr = report["frames"][k].get(a)
            n = by[a]
            if not n:
                cells.append("–" if a in APPLICABLE[k] else "n/a")
                continue
            more = "≥" if fr and fr["at_least"] else ""
            cells.append(f"{n} ({more}{fr['distinct']}; {_pct(fr['top_share'])})" if fr else f"{n}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if report["facts_not_located"]:
        lines += ["", f"Facts whose name was not found in their letter: {report['facts_not_located']}"]
    neg = report["frames"]["diagnosis"].get("negated")
    if neg and neg["top"]:
        lines += ["", "Most common frames of negated diagnoses:", ""]
        lines += [f"- `{t['frame']}` ({t['facts']})" for t in neg["top"]]
    spa = report["section_predicts_assertion"]
    lines += ["", "## Does the section alone predict the assertion?", ""]
    lines += ["| kind | facts | section rule | majority class | gap |", "|---|---|---|---|---|"]
    for name, r in [("all", spa["overall"]), *spa["by_kind"].items()]:
        if r["facts"]:
            gap = r["section_rule_accuracy"] - r["majority_rate"]
            lines.append(
                f"| {name} | {r['facts']} | {_pct(r['section_rule_accuracy'])} | "
                f"{_pct(r['majority_rate'])} ({r['majority']}) | {100 * gap:+.1f} pt |"
            )
    pos = report.get("position_predicts_assertion") or {}
    if pos.get("facts"):
        lines += ["", "## Does the position in the diagnosis list predict the assertion?", ""]
        gap = pos["position_rule_accuracy"] - pos["majority_rate"]
        lines += [
            f"Position rule (first / middle / last -> its majority assertion): "
            f"{_pct(pos['position_rule_accuracy'])} of {pos['facts']} facts, majority class "
            f"{_pct(pos['majority_rate'])} ({pos['majority']}), gap {100 * gap:+.1f} pt.",
            "",
            "| position | majority assertion | facts by assertion |",
            "|---|---|---|",
        ]
        for b, c in pos["by_position"].items():
            shown = ", ".join(f"{a} {n}" for a, n in c.items())
            lines.append(f"| {b} | {pos['rule'].get(b, '')} | {shown} |")
        if pos["mixed_lists"]:
            lines += [
                "",
                f"Lists mixing assertions: {pos['mixed_lists']}; every non-present item after every "
                f"present one in {pos['non_present_all_after_present']} "
                f"({_pct(pos['non_present_last_rate'])}).",
            ]
    spec = report["gold_code_specificity"]
    lines += ["", "## Gold codes against the text", ""]
    if not spec["pinning"]:
        lines.append("No name→code pinning available: codes not written in the letter are unchecked.")
    for k, v in spec["by_field"].items():
        lines.append(f"- {k}: " + ", ".join(f"{o} {c}" for o, c in sorted(v.items())))
    text = report["text"]
    lines += [
        "",
        "## Letters with each feature",
        "",
        f"| feature | these letters ({text['features_counted_on_letters']}) | "
        f"development letters ({dev.get('letters', '–')}) |",
        "|---|---|---|",
    ]
    dev_shares = dev.get("feature_shares") or {}
    for name, share in text["feature_shares"].items():
        lines.append(f"| {name} | {_pct(share)} | {_pct(dev_shares.get(name))} |")
    lines += [
        "",
        "## Written codes (occurrences)",
        "",
        "| system | these letters | development letters |",
        "|---|---|---|",
    ]
    dev_codes = dev.get("written_codes") or {}
    for system, n in text["written_codes"].items():
        lines.append(f"| {system} | {n} | {dev_codes.get(system, '–')} |")
    if not dev:
        lines += ["", "Development letter statistics not found (benchmarks/data/dev_letter_stats.json)."]
    return "\n".join(lines) + "\n"


def write_report(stage_dir: Path, report: LettersReport, dev_stats: Path | None = None) -> dict[str, Any]:
    """Write letters_report.json and letters_report.md into `stage_dir`; return the report."""
    out = report.to_dict(load_dev_stats(dev_stats))
    write_json(Path(stage_dir) / REPORT_JSON, out)
    write_bytes(Path(stage_dir) / REPORT_MD, render_markdown(out).encode())
    return out
