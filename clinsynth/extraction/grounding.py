"""Code grounding (`extract.ground=true`): codes that are missing, malformed or outside every
catalogue category are mapped from the fact's own text to the best catalogue code.

Models invent codes (`X50.49`), write them in a near form, or leave them out; the text beside
them ("Mammakarzinom links", "Pantoprazol") usually names the concept. The catalogue is a curated
subset (~1.2k ICD-10-GM codes), so a well-formed code it lacks is often simply right (J44.19, a
C50.41 the letter wrote): such a code is kept whenever its category (ICD 3 characters, OPS 4,
ATC level 1, ICD-O-3 histology) is one the catalogue knows, and a LOINC code whenever its check
digit holds. Only the rest is searched with rapidfuzz over titles and synonyms: the best hit is
taken when it scores at least `threshold` and is not ambiguous; several codes at the top score
give their common parent only where there was no code at all (a parent never replaces a code: it
is less specific than what the model wrote). Every decision on a non-catalogue or missing code is
recorded: what the code was, what it became (None: left as it was), the text, score and reason.

Search cost: letters repeat the same names (Pantoprazol in every other letter), so each table's
names are normalised once and a search is cached by (table, normalised text); the score is the
catalogue's own (`CodeTable.search`: mean of WRatio and token_set_ratio), computed in rapidfuzz's C
loops, the expensive WRatio only for names whose cheap token_set bound can still reach the top.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process, utils

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


class SearchIndex:
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

    def search(self, text: str) -> list[tuple[Any, float]]:
        """Concepts by score (0-100) as `CodeTable.search` ranks them: the best, every concept within
        TIE of it, and whatever else was scored on the way (not all of the rest)."""
        query = utils.default_process(text)
        hits = self.cache.get(query)
        if hits is None:
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            hits = self.cache[query] = self._rank(query)
            self.computed += 1
        return hits

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


@functools.cache
def search_index(table: Any) -> SearchIndex:
    """The table's index, built once per process (the catalogue itself is loaded once)."""
    return SearchIndex(table)


def best_code(table: Any, text: str, threshold: float) -> tuple[str | None, float | None, str]:
    """(code, score, reason) of the catalogue concept the text names, or (None, score, why not)."""
    hits = search_index(table).search(text)
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
    extraction: ClinicalExtraction, catalog: Any, *, threshold: float = 90.0
) -> tuple[ClinicalExtraction, list[Correction]]:
    """The extraction with missing / implausible codes mapped from their text, and the record of it."""
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
        code, score, reason = best_code(table, text, threshold)
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
    "TARGETS",
    "Correction",
    "SearchIndex",
    "best_code",
    "ground",
    "search_index",
    "why_ground",
]
