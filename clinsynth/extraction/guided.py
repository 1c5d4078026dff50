"""The JSON Schema that guided decoding holds an extractor's output to: schema v2, bounded.

Guided decoding keeps the output well formed but does not stop a model that loops (a base model
repeats list items, a greedy one repeats a word inside a string, until its token limit), so the
decoding schema bounds what the contract leaves open: every list gets `maxItems`, every free-text
string `maxLength`, every number a magnitude. Codes stay constrained by their pattern, never by an
enumeration of the catalogue (ICD-10-GM alone has ~14k codes); the pattern bounds them already.
Optional keys are simply left out, so the `null` branch of optional fields is dropped: one way to
say "no value", a smaller grammar, shorter outputs.

Which structured-outputs backend (vLLM 0.32), measured here: xgrammar 0.2.8 lets raw control
characters into a string bounded by `maxLength` alone (invalid JSON), refuses an escaped quote in
one, and crashes on bounded-repetition patterns (`[^"]{1,160}`) with its grammar cache on; guidance
(llguidance) keeps such strings valid JSON and honours `maxLength` and `pattern` together. So free
text carries both `maxLength` and a pattern that excludes control characters: an engine on `auto`
(a `vllm serve` someone else started) then picks guidance for these requests too, and an engine
pinned to xgrammar refuses them instead of writing broken JSON. conf/extract/backend/vllm.yaml pins
guidance and turns free whitespace off (a greedy model under a grammar can loop on blanks).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import orjson

from clinsynth.schema import json_schema

#: bounds of the decoding schema: generous for real letters, finite for a looping model
MAX_ITEMS = 40
MAX_STRING = 160
#: |value| of any number: lab values in /µl reach 10^6
MAX_NUMBER = 10_000_000
#: lists that hold a handful of items in any real letter
SMALL_LISTS = {"stages": 6, "markers": 16, "schedule": 4}
#: a free-text value has no control character (JSON escapes them; no letter needs one)
TEXT_PATTERN = "^[^\\x00-\\x1f]*$"
#: keys dropped from every node: they steer nothing and cost grammar states or prompt tokens
_DROP = ("title", "default", "description")


def _strip(node: Any, key: str | None, max_items: int, max_string: int) -> Any:
    if isinstance(node, list):
        return [_strip(v, key, max_items, max_string) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _DROP:
            continue
        if k == "properties":
            out[k] = {name: _strip(sub, name, max_items, max_string) for name, sub in v.items()}
        elif k == "$defs":
            out[k] = {name: _strip(sub, None, max_items, max_string) for name, sub in v.items()}
        else:
            out[k] = _strip(v, key, max_items, max_string)
    if "anyOf" in out:
        # optional fields: [X, null] -> X (a key without a value is left out, never written as null)
        kept = [b for b in out["anyOf"] if b != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in out.items() if k != "anyOf"}
            out = {**kept[0], **rest}
        else:
            out["anyOf"] = kept
    kind = out.get("type")
    if kind == "string" and "enum" not in out:
        if out.get("pattern", TEXT_PATTERN) != TEXT_PATTERN:  # a code, a date, a TNM value
            out.pop("maxLength", None)  # the pattern bounds it (and xgrammar refuses both together)
            out.pop("minLength", None)
        else:  # free text: bounded, and no control characters
            out["maxLength"] = min(int(out.get("maxLength", max_string)), max_string)
            out["pattern"] = TEXT_PATTERN
    if kind in ("number", "integer"):
        # magnitude bounds end a model that writes digits forever (fraction digits stay open:
        # max_tokens ends those)
        out.setdefault("maximum", MAX_NUMBER)
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -MAX_NUMBER
    if kind == "array":
        bound = min(SMALL_LISTS.get(key or "", max_items), max_items)
        bound = max(min(int(out.get("maxItems", bound)), bound), int(out.get("minItems", 0)))
        out["maxItems"] = bound
    return out


@functools.cache
def _cached(max_items: int, max_string: int) -> bytes:
    return orjson.dumps(_strip(json_schema(), None, max_items, max_string))


def decoding_schema(max_items: int = MAX_ITEMS, max_string: int = MAX_STRING) -> dict[str, Any]:
    """Schema v2 for guided decoding: bounded lists and strings, patterned codes, no null branches."""
    if max_items < 1 or max_string < 1:
        raise ValueError("max_items and max_string must be at least 1")
    return dict(orjson.loads(_cached(max_items, max_string)))


def _nodes(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _nodes(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nodes(v, f"{path}/{i}")


def check_decoding_schema(schema: dict[str, Any]) -> list[str]:
    """What would let a looping model run on, or break the grammar: unbounded lists, free strings or
    numbers, a code pattern with maxLength, a list bound below its minimum, an enumeration of codes."""
    problems = []
    for path, node in _nodes(schema):
        kind = node.get("type")
        if kind == "array":
            if "maxItems" not in node:
                problems.append(f"{path}: list without maxItems")
            elif node["maxItems"] < node.get("minItems", 0):
                problems.append(f"{path}: maxItems below minItems")
        if kind == "string" and "enum" not in node:
            pattern = node.get("pattern")
            if pattern is None:
                problems.append(f"{path}: string without a pattern")
            elif pattern == TEXT_PATTERN and "maxLength" not in node:
                problems.append(f"{path}: free text without maxLength")
            elif pattern != TEXT_PATTERN and "maxLength" in node:
                problems.append(f"{path}: a code pattern with maxLength")
        if kind in ("number", "integer") and "maximum" not in node:
            problems.append(f"{path}: number without maximum")
        if len(node.get("enum", ())) > 50:
            problems.append(f"{path}: an enumeration of {len(node['enum'])} values (codes go by pattern)")
    return problems


def strict_variant(schema: dict[str, Any], require: dict[str, int]) -> dict[str, Any]:
    """The schema with some top-level lists required and non-empty (`{"diagnoses": 1}`): a grammar
    test for random models, which under an all-optional schema rightly emit `{}`."""
    out = copy.deepcopy(schema)
    out["required"] = sorted(set(out.get("required", [])) | set(require))
    for name, n in require.items():
        out["properties"][name]["minItems"] = n
    return out


__all__ = ["MAX_ITEMS", "MAX_STRING", "check_decoding_schema", "decoding_schema", "strict_variant"]
