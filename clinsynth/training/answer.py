"""The assistant turn of a training example: a gold extraction as canonical compact JSON, and back.

One rule makes the answer short and deterministic, and `expand_answer` reverses it exactly:

    **Drop rule** — walking the schema-v2 dump (`ClinicalExtraction.model_dump(mode="json")`), a
    key whose value is ``None``, an empty list ``[]`` or an empty object ``{}`` is left out, at
    every depth (an object that becomes empty once its own keys are dropped is dropped too; a list
    item is never dropped, so list positions keep their meaning). Everything else stays, in
    particular ``0``, ``0.0``, ``False``, ``""`` and the default ``"assertion": "present"``.

Keys keep the schema's field order (pydantic dumps in declaration order), and the text is orjson's
compact form (no spaces), so equal extractions give byte-equal answers. Every dropped value is
what the schema fills in when the key is missing (None, or an empty list by default_factory), so
`expand_answer(canonical_answer(x)) == x`. The one exception is an object with no values at all
(e.g. ``"tnm": {}``): it comes back as None, which the gold never holds (recipes leave such keys
out); the round-trip test runs over real gold to keep it so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from clinsynth.schema import ClinicalExtraction


def _prune(value: Any) -> Any:
    """The drop rule; returns None for a value that is itself to be dropped."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _prune(v)
            if v is not None:
                out[k] = v
        return out or None
    if isinstance(value, list):
        # items stay (positions matter); an object item with nothing left is written as {}
        return [(_prune(v) or {}) if isinstance(v, dict) else v for v in value] or None
    return value


def canonical_answer(extraction: ClinicalExtraction | Mapping[str, Any]) -> str:
    """Compact JSON of a schema-v2 extraction: schema key order, the drop rule, deterministic."""
    if not isinstance(extraction, ClinicalExtraction):
        extraction = ClinicalExtraction.model_validate(dict(extraction))
    pruned = _prune(extraction.model_dump(mode="json")) or {}
    return orjson.dumps(pruned).decode()


def expand_answer(text: str | bytes) -> ClinicalExtraction:
    """Parse and validate an answer (the schema restores every dropped key's default)."""
    data = orjson.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"an extraction answer is a JSON object, got {type(data).__name__}")
    return ClinicalExtraction.model_validate(data)


__all__ = ["canonical_answer", "expand_answer"]
