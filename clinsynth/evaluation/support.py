"""Predicted codes that are not in the catalogue, or not supported by the letter.

Every predicted code is checked (ICD-10-GM of diagnoses and tumours, ICD-O-3 topography and
morphology, OPS, ATC, LOINC of labs, vitals and markers):

- **not in the catalogue**: the code table of `clinsynth.terminology` does not hold it at any level.
  That catalogue is clinsynth's curated subset (e.g. ICD-10-GM C00-D48 plus ~60 comorbidity subtrees),
  so on real letters a correct code outside the subset also counts here; the report says so.
- **not supported by the letter**: none of these occurs in the letter text — the code string
  (case-insensitive), the fact's own text (diagnosis text, tumour entity or histology, procedure text,
  medication name, lab/vital/marker name) or the catalogue title of the code (both compared after
  `normalize.text`: lower-case, white space collapsed). Without the letter text the rate is null, and
  the reason is reported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from clinsynth.evaluation import normalize as nz

#: (list field, code field, catalogue table attribute, text fields of the fact)
_CODED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("diagnoses", "icd10gm", "icd10gm", ("text",)),
    ("tumors", "icd10gm", "icd10gm", ("entity",)),
    ("tumors", "topography", "icdo3_topography", ("entity",)),
    ("tumors", "morphology", "icdo3_morphology", ("histology",)),
    ("procedures", "ops", "ops", ("text",)),
    ("medications", "atc", "atc", ("name",)),
    ("labs", "loinc", "loinc", ("name",)),
    ("vitals", "loinc", "loinc", ("name",)),
)


def predicted_codes(extraction: dict[str, Any]) -> Iterator[tuple[str, str, list[str]]]:
    """(table, code, texts of the fact) of every code in an extraction."""
    for field, key, table, text_keys in _CODED:
        for fact in extraction.get(field) or ():
            code = fact.get(key)
            if code:
                yield table, code, [fact[k] for k in text_keys if fact.get(k)]
    for tumour in extraction.get("tumors") or ():
        for marker in tumour.get("markers") or ():
            if marker.get("loinc"):
                yield "loinc", marker["loinc"], [marker["name"]]


def _title(concept: Any) -> str:
    return str(concept.extra.get("title") or concept.display)


def code_checks(
    preds: Sequence[dict[str, Any] | None], letters: Sequence[str | None], catalog: Any
) -> dict[str, Any]:
    """Counts and rates of codes not in the catalogue and not supported by the letter."""
    #: (table, code) -> the normalised catalogue title; None: not in the catalogue
    in_cat: dict[tuple[str, str], str | None] = {}
    #: fact text -> normalised (facts repeat across documents)
    norm: dict[str, str] = {}
    n_codes = not_in_cat = 0
    n_with_letter = unsupported = 0
    docs_without_letter = 0
    for pred, letter in zip(preds, letters, strict=True):
        if pred is None:
            continue
        text = nz.text(letter) if letter is not None else None
        if text is None:
            docs_without_letter += 1
        for table, code, texts in predicted_codes(pred):
            n_codes += 1
            k = (table, code)
            if k not in in_cat:
                concept = getattr(catalog, table).lookup(code)
                in_cat[k] = nz.text(_title(concept)) if concept is not None else None
            title = in_cat[k]
            if title is None:
                not_in_cat += 1
            if text is None:
                continue
            n_with_letter += 1
            found = code.lower() in text
            for t in texts:
                if found:
                    break
                nt = norm.get(t)
                if nt is None:
                    nt = norm[t] = nz.text(t)
                found = bool(nt) and nt in text
            if not found and not (title and title in text):
                unsupported += 1
    out: dict[str, Any] = {
        "codes": n_codes,
        "not_in_catalogue": not_in_cat,
        "not_in_catalogue_rate": not_in_cat / n_codes if n_codes else None,
        "codes_with_letter": n_with_letter,
        "not_supported": unsupported if n_with_letter else None,
        "not_supported_rate": unsupported / n_with_letter if n_with_letter else None,
        "docs_without_letter": docs_without_letter,
    }
    if not n_codes:
        out["reason"] = "no predicted codes"
    elif not n_with_letter:
        out["reason"] = "letter texts unavailable for every document with predicted codes"
    elif docs_without_letter:
        out["reason"] = (
            f"{docs_without_letter} document(s) without letter text are left out of not_supported_rate"
        )
    return out
