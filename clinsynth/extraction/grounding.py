"""Code grounding (`extract.ground=true`): codes the catalogue does not hold, or that are missing,
are mapped from the fact's own text to the best catalogue code.

Models invent codes (`C50.49`), write them in a near form, or leave them out; the text beside
them ("Mammakarzinom links", "Pantoprazol") usually names the concept. The text is searched with
rapidfuzz over the catalogue's titles and synonyms (`CodeTable.search`); the best hit is taken
when it scores at least `threshold` and is not ambiguous: several codes at the top score are
accepted only when one of them is the parent of all the others (the parent is taken: grounding
never adds specificity the text does not carry). A code the catalogue holds is never touched.
Every attempt is recorded: what the code was, what it became (or why not), the text and score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
#: scores within this distance of the best count as a tie
TIE = 0.5


@dataclass(frozen=True)
class Correction:
    path: str  # "diagnoses[2].icd10gm"
    text: str  # what was searched
    before: str | None  # the predicted code (None: missing)
    after: str | None  # the catalogue code now there (None: left as it was)
    score: float | None
    reason: str  # "mapped", "no match above threshold", "ambiguous: A, B"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "text": self.text,
            "before": self.before,
            "after": self.after,
            "score": None if self.score is None else round(self.score, 1),
            "reason": self.reason,
        }


def best_code(table: Any, text: str, threshold: float) -> tuple[str | None, float | None, str]:
    """(code, score, reason) of the catalogue concept the text names, or (None, score, why not)."""
    hits = table.search(text, limit=8)
    if not hits:
        return None, None, "no match"
    top = hits[0][1]
    if top < threshold:
        return None, top, f"no match above {threshold:g} (best {hits[0][0].code} at {top:.0f})"
    tied = sorted({c.code for c, s in hits if s >= top - TIE}, key=len)
    parent = tied[0]
    if all(code.startswith(parent) for code in tied):
        return parent, top, "mapped"
    return None, top, "ambiguous: " + ", ".join(tied[:5])


def _facts(data: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any], str]]:
    for field, code_key, text_keys, table in TARGETS:
        for i, fact in enumerate(data.get(field) or ()):
            texts = [fact[k] for k in text_keys if isinstance(fact.get(k), str) and fact[k].strip()]
            text = texts[0] if texts else None
            if text is not None:
                yield f"{field}[{i}].{code_key}", code_key, table, fact, text


def ground(
    extraction: ClinicalExtraction, catalog: Any, *, threshold: float = 90.0
) -> tuple[ClinicalExtraction, list[Correction]]:
    """The extraction with missing / non-catalogue codes mapped from their text, and the record of it."""
    data = extraction.model_dump(mode="json")
    corrections: list[Correction] = []
    for path, code_key, table_name, fact, text in _facts(data):
        before = fact.get(code_key)
        table = getattr(catalog, table_name)
        if before and table.lookup(before) is not None:
            continue
        code, score, reason = best_code(table, text, threshold)
        if code is not None:
            fact[code_key] = code
        corrections.append(Correction(path, text, before, code, score, reason))
    if not corrections:
        return extraction, []
    return ClinicalExtraction.model_validate(data), corrections


__all__ = ["TARGETS", "Correction", "best_code", "ground"]
