"""Code grounding (`extract.ground=true`): codes that are missing, malformed or outside every
catalogue category are mapped from the fact's own text to the best catalogue code.

Models invent codes (`X50.49`), write them in a near form, or leave them out; the text beside
them ("Mammakarzinom links", "Pantoprazol") usually names the concept. The catalogue is a curated
subset (~1.2k ICD-10-GM codes), so a well-formed code it lacks is often simply right (J44.19, a
C50.41 the letter wrote): such a code is kept whenever its category (ICD 3 characters, OPS 4,
ATC level 1, ICD-O-3 histology) is one the catalogue knows, and a LOINC code whenever its check
digit holds. Only the rest is searched over titles and synonyms (below): the best hit is
taken when it scores at least `threshold` and is not ambiguous; several codes at the top score
give their common parent only where there was no code at all (a parent never replaces a code: it
is less specific than what the model wrote). Every decision on a non-catalogue or missing code is
recorded: what the code was, what it became (None: left as it was), the text, score and reason.

Two ways to score a text against a table's names (`extract.ground_method`), each on 0-100:
- `rapidfuzz` (default): the catalogue's own score (`CodeTable.search`: mean of WRatio and
  token_set_ratio). Token sets tie a shuffled or shortened title with its parent ("...: Duodenum"
  against "Bösartige Neubildung des Dünndarmes"), and an abbreviation ("Rektum-Ca") shares no token.
- `tfidf`: 100 x the cosine of character 2-4-gram TF-IDF vectors (within word boundaries, sublinear
  tf, smoothed idf; sklearn's `char_wb` analyzer, written here in numpy: scikit-learn is not a
  dependency), threshold 60 by default (`DEFAULT_THRESHOLD`).
Measured by `benchmarks/grounding.py` (2,861 queries from the terminology: clinical names as written
and perturbed, and catalogue titles abbreviated, reordered, shortened or misspelt; never letter
text), top-1 accuracy: rapidfuzz 0.761, tfidf 0.832 (+0.071, 95% CI +0.059..+0.082; on the clinical
names alone +0.061, +0.039..+0.084), mean-pooled SmolLM2-135M hidden states 0.454 (last layer) and
0.527 (layer 15): the only local language model is no embedding model, and no embedding model can be
downloaded here, so no dense index is offered. As grounding answers (`best_code`): rapidfuzz at 90
answers 62% of the queries with precision 0.887; tfidf at 60 answers 80% with 0.929 (at 80: 62%
with 0.969), hence its default. rapidfuzz stays the default method (the measured set is synthetic,
and existing settings keep their meaning); tfidf is the better choice by this measure.

Search cost: letters repeat the same names (Pantoprazol in every other letter), so each table's
names are normalised once and a search is cached by (table, method, normalised text); rapidfuzz
scores in its C loops, the expensive WRatio only for names whose cheap token_set bound can still
reach the top; tfidf sums the query's n-gram weights over an inverted index (n-gram -> names).
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process, utils

from clinsynth.extraction.config import GroundMethod
from clinsynth.schema import ClinicalExtraction

#: (list, code field, text fields in order of preference, catalogue table attribute)
TARGETS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("diagnoses", "icd10gm", ("text",), "icd10gm"),
    ("tumors", "icd10gm", ("entity",), "icd10gm"),
    ("tumors", "morphology", ("histology",), "icdo3_morphology"),
    ("procedures", "ops", ("text",), "ops"),
    ("medications", "atc", ("name",), "atc"),
    ("labs", "loinc", ("name",), "loinc"),
    ("vitals", "loinc", ("name",), "loinc"),
)
#: the level (table.level) of the category a kept code must share with the catalogue; LOINC has none
CATEGORY_LEVEL: dict[str, int] = {"icd10gm": 3, "icdo3_morphology": 4, "ops": 4, "atc": 1}
#: scores within this distance of the best count as a tie
TIE = 0.5
#: the score (0-100) a text must reach when extract.ground_threshold is null, per method
DEFAULT_THRESHOLD: dict[str, float] = {"rapidfuzz": 90.0, "tfidf": 60.0}
#: searches kept per table before the cache starts afresh (a bound on memory, not on speed)
CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Correction:
    path: str  # "diagnoses[2].icd10gm"
    text: str  # what was searched
    before: str | None  # the predicted code (None: missing)
    after: str | None  # the catalogue code now there (None: left as it was)
    score: float | None
    reason: str  # "mapped", "parent of tied: A, B", "no match above 90 ...", "ambiguous: A, B", "kept: ..."

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "text": self.text,
            "before": self.before,
            "after": self.after,
            "score": None if self.score is None else round(self.score, 1),
            "reason": self.reason,
        }


class _CachedSearch(ABC):
    """Searches cached by normalised text: letters repeat the same names many times."""

    cache: dict[str, list[tuple[Any, float]]]
    computed: int  # searches not answered from the cache

    @abstractmethod
    def _normalise(self, text: str) -> str: ...

    @abstractmethod
    def _rank(self, query: str) -> list[tuple[Any, float]]: ...

    def search(self, text: str) -> list[tuple[Any, float]]:
        """Concepts by score (0-100): the best, every concept within TIE of it, and the next few
        scored on the way (not all of the rest)."""
        query = self._normalise(text)
        hits = self.cache.get(query)
        if hits is None:
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            hits = self.cache[query] = self._rank(query)
            self.computed += 1
        return hits


class SearchIndex(_CachedSearch):
    """One table's titles and synonyms, normalised once, and its searches cached by normalised text."""

    def __init__(self, table: Any) -> None:
        self.concepts = list(table)
        names: list[str] = []
        owner: list[int] = []
        for i, concept in enumerate(self.concepts):
            for name in (concept.display, *concept.extra.get("synonyms", ())):
                names.append(utils.default_process(name))
                owner.append(i)
        self.names = names
        self.owner = owner
        self.cache: dict[str, list[tuple[Any, float]]] = {}
        self.computed = 0  # searches not answered from the cache

    def _normalise(self, text: str) -> str:
        return utils.default_process(text)  # as `CodeTable.search` ranks them

    def _rank(self, query: str) -> list[tuple[Any, float]]:
        if not self.names:
            return []
        token_set = process.cdist(
            [query], self.names, scorer=fuzz.token_set_ratio, processor=None, dtype=np.float64, workers=1
        )[0]
        bound = 50.0 + 0.5 * token_set  # the score with WRatio at its maximum, 100
        order = np.argsort(-bound, kind="stable")
        best: dict[int, float] = {}
        done, step = 0, 32
        while done < len(order):
            batch = order[done : done + step]
            wratio = process.cdist(
                [query], [self.names[i] for i in batch], scorer=fuzz.WRatio, processor=None,
                dtype=np.float64, workers=1,
            )[0]  # fmt: skip
            for i, score in zip(
                batch.tolist(), (0.5 * wratio + 0.5 * token_set[batch]).tolist(), strict=True
            ):
                owner = self.owner[i]
                if score > best.get(owner, -1.0):
                    best[owner] = score
            done, step = done + len(batch), step * 4
            # stop when no name left can come within TIE of the best: the top and its ties are final
            if done < len(order) and bound[order[done]] < max(best.values()) - TIE:
                break
        ranked = sorted(
            ((self.concepts[o], s) for o, s in best.items()),
            key=lambda cs: (-cs[1], len(cs[0].display), cs[0].code),
        )
        return ranked


_SPACE = re.compile(r"\s+")


def char_ngrams(text: str, lo: int = 2, hi: int = 4) -> Counter[str]:
    """Character lo..hi-grams of each casefolded word padded with a space on either side (sklearn's
    `char_wb`): "Ca" and "Karzinom" share nothing, but "Rektum-Ca" and "Rektumkarzinom" share "rekt"."""
    out: Counter[str] = Counter()
    for word in _SPACE.split(text.casefold().strip()):
        w = f" {word} "
        for n in range(lo, hi + 1):
            out.update(w[i : i + n] for i in range(max(1, len(w) - n + 1)))
    return out


class TfidfIndex(_CachedSearch):
    """One table's titles and synonyms as TF-IDF vectors of character 2-4-grams (sublinear tf, smoothed
    idf, unit length); a text scores 100 x its cosine with the nearest name of each concept. Searched
    through an inverted index (n-gram -> names and weights) in numpy; searches cached like SearchIndex's."""

    def __init__(self, table: Any) -> None:
        self.concepts = list(table)
        counts: list[Counter[str]] = []
        owner: list[int] = []
        for i, concept in enumerate(self.concepts):
            for name in (concept.display, *concept.extra.get("synonyms", ())):
                counts.append(char_ngrams(name))
                owner.append(i)
        self.owner = np.asarray(owner, dtype=np.int64)
        df = Counter(g for c in counts for g in c)
        self.idf = {g: math.log((1 + len(counts)) / (1 + n)) + 1 for g, n in df.items()}
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for j, c in enumerate(counts):
            w = {g: (1 + math.log(n)) * self.idf[g] for g, n in c.items()}
            norm = math.sqrt(sum(v * v for v in w.values())) or 1.0
            for g, v in w.items():
                ids, ws = postings.setdefault(g, ([], []))
                ids.append(j)
                ws.append(v / norm)
        self.postings = {g: (np.asarray(i), np.asarray(w)) for g, (i, w) in postings.items()}
        self.n_names = len(counts)
        self.cache: dict[str, list[tuple[Any, float]]] = {}
        self.computed = 0

    def _normalise(self, text: str) -> str:
        return _SPACE.sub(" ", text.casefold().strip())

    def _rank(self, query: str) -> list[tuple[Any, float]]:
        # n-grams no name has carry no evidence either way (sklearn's transform drops them too)
        q = {g: (1 + math.log(n)) * self.idf[g] for g, n in char_ngrams(query).items() if g in self.idf}
        if not q:
            return []
        norm = math.sqrt(sum(v * v for v in q.values()))
        scores = np.zeros(self.n_names)
        for g, v in q.items():
            ids, ws = self.postings[g]
            scores[ids] += ws * (v / norm)
        best = np.zeros(len(self.concepts))
        np.maximum.at(best, self.owner, np.minimum(100.0 * scores, 100.0))  # no 100.00000000000003
        top = float(best.max())
        keep = np.flatnonzero(best >= top - TIE)
        if len(keep) < 8:
            keep = np.argsort(-best, kind="stable")[: max(8, len(keep))]
        return sorted(
            ((self.concepts[o], float(best[o])) for o in keep.tolist() if best[o] > 0),
            key=lambda cs: (-cs[1], len(cs[0].display), cs[0].code),
        )


def search_index(table: Any, method: GroundMethod = "rapidfuzz") -> SearchIndex | TfidfIndex:
    """The table's index for `method`, built once per process (the catalogue itself is loaded once)."""
    if method not in DEFAULT_THRESHOLD:
        raise ValueError(f"unknown grounding method {method!r}; known: {', '.join(DEFAULT_THRESHOLD)}")
    return _index(table, method)


@functools.cache
def _index(table: Any, method: GroundMethod) -> SearchIndex | TfidfIndex:
    return TfidfIndex(table) if method == "tfidf" else SearchIndex(table)


def best_code(
    table: Any, text: str, threshold: float, method: GroundMethod = "rapidfuzz"
) -> tuple[str | None, float | None, str]:
    """(code, score, reason) of the catalogue concept the text names, or (None, score, why not)."""
    hits = search_index(table, method).search(text)
    if not hits:
        return None, None, "no match"
    top = hits[0][1]
    if top < threshold:
        return None, top, f"no match above {threshold:g} (best {hits[0][0].code} at {top:.0f})"
    tied = sorted({c.code for c, s in hits if s >= top - TIE}, key=lambda c: (len(c), c))
    parent = tied[0]
    if len(tied) == 1:
        return parent, top, "mapped"
    if all(code.startswith(parent) for code in tied):
        return parent, top, "parent of tied: " + ", ".join(tied[:5])
    return None, top, "ambiguous: " + ", ".join(tied[:5])


@functools.cache
def _categories(table: Any, level: int) -> frozenset[str]:
    """The table's categories at `level`, and every prefix of them (an OPS code may be shorter)."""
    out: set[str] = set()
    for code in table.codes():
        try:
            cat = table.level(code, level)
        except ValueError:  # a catalogue code above the level (OPS 8-54): it is its own category
            cat = code
        out.update(cat[:i] for i in range(1, len(cat) + 1))
    return frozenset(out)


def _loinc_check_digit_holds(code: str) -> bool:
    """LOINC's mod-10 check digit (Luhn over the digits before the hyphen)."""
    body, _, check = code.partition("-")
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10 == int(check)


def why_ground(table: Any, table_name: str, code: str | None) -> str | None:
    """Why a code must be mapped from its text (None: keep it; a catalogue code or a plausible one)."""
    if not code:
        return "missing"
    if table.lookup(code) is not None:
        return None
    norm = code.strip() if table_name == "ops" else code.strip().upper()
    if not table.pattern.fullmatch(norm):
        return "malformed"
    level = CATEGORY_LEVEL.get(table_name)
    if level is None:
        return None if _loinc_check_digit_holds(norm) else "LOINC check digit does not hold"
    try:
        category = table.level(norm, level)
    except ValueError:  # shorter than the category: judged as it stands
        category = norm
    return None if category in _categories(table, level) else f"category {category} unknown to the catalogue"


def _facts(data: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any], str | None]]:
    for field, code_key, text_keys, table in TARGETS:
        for i, fact in enumerate(data.get(field) or ()):
            texts = [fact[k] for k in text_keys if isinstance(fact.get(k), str) and fact[k].strip()]
            yield f"{field}[{i}].{code_key}", code_key, table, fact, texts[0] if texts else None


def ground(
    extraction: ClinicalExtraction,
    catalog: Any,
    *,
    threshold: float | None = None,
    method: GroundMethod = "rapidfuzz",
) -> tuple[ClinicalExtraction, list[Correction]]:
    """The extraction with missing / implausible codes mapped from their text, and the record of it
    (`threshold` None: the method's DEFAULT_THRESHOLD)."""
    if threshold is None:
        threshold = DEFAULT_THRESHOLD[method]
    data = extraction.model_dump(mode="json")
    corrections: list[Correction] = []
    for path, code_key, table_name, fact, text in _facts(data):
        before = fact.get(code_key)
        table = getattr(catalog, table_name)
        if before and table.lookup(before) is not None:
            continue  # a catalogue code: nothing to say
        why = why_ground(table, table_name, before)
        if why is None:
            corrections.append(
                Correction(
                    path, text or "", before, None, None, "kept: not in the catalogue, but its category is"
                )
            )
            continue
        if text is None:
            if before:
                corrections.append(Correction(path, "", before, None, None, f"{why}; no text to search"))
            continue
        code, score, reason = best_code(table, text, threshold, method)
        if code is not None and before and reason.startswith("parent of tied"):
            # the parent is less specific than the code the model wrote: keep what it wrote
            code, reason = None, f"{why}; {reason}: the parent {code} would be less specific, kept"
        elif why != "missing":
            reason = f"{why}; {reason}"
        if code is not None:
            fact[code_key] = code
        corrections.append(Correction(path, text, before, code, score, reason))
    if not any(c.after is not None for c in corrections):
        return extraction, corrections
    return ClinicalExtraction.model_validate(data), corrections


__all__ = [
    "CATEGORY_LEVEL",
    "DEFAULT_THRESHOLD",
    "TARGETS",
    "Correction",
    "GroundMethod",
    "SearchIndex",
    "TfidfIndex",
    "best_code",
    "ground",
    "search_index",
    "why_ground",
]
