"""Reading FHIR JSON exactly: orjson's speed, stdlib `json` where orjson refuses, no silent duplicates.

Three things plain `orjson.loads` gets wrong for ingest:

- a duplicate key (`{"gender":"male","gender":"female"}`) silently keeps one value. Exact and
  cheap check: a re-serialisation of a dict cannot equal a text that holds a duplicate key, so
  a line whose compact dump equals its bytes has none; only other lines (pretty-printed, escaped,
  or duplicated) are parsed again by `json` with a hook that sees every key;
- deep nesting (extensions nest; 126 levels of them are valid FHIR) is beyond orjson's writer
  (~255 levels) and, at 1024, its reader: such resources take `json` and a raised recursion
  limit, up to `MAX_DEPTH` levels; deeper ones are refused with reason `too_deep`;
- `json` itself must read numbers as orjson does (integers outside [-2**63, 2**64) become
  floats; NaN/Infinity and overflowing floats are errors), so both paths give the same values.

Errors are `JsonProblem(reason, detail)`, reason one of `malformed_json`, `duplicate_key`,
`too_deep` (see `clinsynth.ingest.options.REASONS`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

#: objects and arrays nested deeper than this are refused (a resource with 240 nested extensions
#: is ~490 levels deep)
MAX_DEPTH = 500
#: recursion limit while `json` or fhir.resources walk a deep resource (measured: 500 nested
#: extensions validate with ~12,000 frames and well inside an 8 MiB C stack)
DEEP_RECURSION_LIMIT = 20_000
#: key that `loads_document` puts into an object that had a duplicate key (its value: the key)
DUPLICATE = "\x00duplicate_key"

_I64_MIN, _U64_MAX = -(1 << 63), (1 << 64) - 1


class JsonProblem(ValueError):
    """A text that is not one JSON value ingest can take; `reason` goes to the quarantine."""

    def __init__(self, reason: str, detail: str, value: Any = None, exception: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail
        self.value = value  # what orjson read, when it read something (names type and id)
        self.exception = exception  # the class of the parser's exception behind it, if any


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@contextmanager
def deep_stack(limit: int = DEEP_RECURSION_LIMIT) -> Iterator[None]:
    """Raise the recursion limit for a walk over a deep (but bounded: `MAX_DEPTH`) value."""
    old = sys.getrecursionlimit()
    if old < limit:
        sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def depth(obj: Any, stop: int | None = None) -> int:
    """Nesting depth of objects and arrays (a scalar: 0), without recursion; stops counting past `stop`."""
    best = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            values: Any = o.values()
        elif isinstance(o, list):
            values = o
        else:
            continue
        if d > best:
            best = d
            if stop is not None and best > stop:
                return best
        stack.extend((v, d + 1) for v in values if isinstance(v, (dict, list)))
    return best


def too_deep_detail(what: str = "nested") -> str:
    return f"{what} deeper than {MAX_DEPTH} levels of objects and arrays (ingest's limit; FHIR sets none)"


def _parse_int(s: str) -> int | float:
    v = int(s)
    return v if _I64_MIN <= v <= _U64_MAX else float(v)  # as orjson reads it


def _parse_float(s: str) -> float:
    v = float(s)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number is infinity when parsed as double: {s[:40]}")
    return v


def _parse_constant(s: str) -> Any:
    raise ValueError(f"{s} is not a JSON value")


def _first_duplicate(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            return k
        seen.add(k)
    return "?"  # not reached: called only when there is one


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Duplicate(_first_duplicate(pairs))
    return d


#: recursion limit while `json` parses (a frame or two per level; files may hold deep entries that are
#: then refused one by one)
PARSE_RECURSION_LIMIT = 5_000


def _stdlib(text: str, hook: Any) -> Any:
    with deep_stack(PARSE_RECURSION_LIMIT):
        return json.loads(
            text,
            object_pairs_hook=hook,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )


def _duplicate_detail(key: str) -> str:
    return f"duplicate key {key!r} in one JSON object (JSON parsers would silently keep one of its values)"


def _orjson_problem(exc: orjson.JSONDecodeError) -> JsonProblem:
    if str(exc).startswith("depth limit exceeded"):
        return JsonProblem("too_deep", too_deep_detail(), exception=type(exc).__name__)
    return JsonProblem("malformed_json", str(exc), exception=type(exc).__name__)


def loads_line(raw: bytes) -> tuple[Any, bytes | None]:
    """One NDJSON line -> (value, its compact orjson dump or None when nested beyond orjson's
    writer); raises `JsonProblem` for malformed JSON, a duplicate key (anywhere) or `too_deep`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _orjson_problem(exc) from None
    try:
        dumped: bytes | None = orjson.dumps(obj)
    except TypeError:  # nested beyond orjson's writer
        dumped = None
        if depth(obj, MAX_DEPTH) > MAX_DEPTH:
            raise JsonProblem("too_deep", too_deep_detail(), obj, "TypeError") from None
    if dumped != raw:  # not canonical: formatting, escapes, deep, or a duplicate key
        try:
            check_duplicates(raw)
        except JsonProblem as exc:
            exc.value = obj
            raise
    return obj, dumped


def check_duplicates(raw: bytes) -> None:
    """Raise `JsonProblem("duplicate_key", ...)` when an object in `raw` repeats a key (slow path)."""
    try:
        _stdlib(raw.decode("utf-8"), _refuse_duplicates)
    except _Duplicate as exc:
        raise JsonProblem("duplicate_key", _duplicate_detail(exc.key)) from None
    except RecursionError:
        raise JsonProblem("too_deep", too_deep_detail(), exception="RecursionError") from None
    except (ValueError, OverflowError) as exc:  # orjson read it; say why json does not
        raise JsonProblem(
            "malformed_json", f"{type(exc).__name__}: {exc}", exception=type(exc).__name__
        ) from None


def dumps(obj: Any) -> bytes:
    """Compact JSON: orjson, or `json` where orjson refuses (deep nesting)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        with deep_stack():
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads_document(data: bytes) -> tuple[Any, bool]:
    """A whole JSON file (a Bundle) -> (value, whether some object in it had a duplicate key).
    Such objects keep their last value and carry the key under `DUPLICATE` (see `find_duplicate`),
    so one bad entry does not cost its file. Raises `JsonProblem` for malformed or too deep JSON."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        problem = _orjson_problem(exc)
        if problem.reason != "too_deep":
            raise problem from None
        obj = None  # deeper than orjson reads: `json` below decides (entries are checked one by one)
    if obj is not None:
        body = data.strip()
        try:
            if orjson.dumps(obj) == body or orjson.dumps(obj, option=orjson.OPT_INDENT_2) == body:
                return obj, False
        except TypeError:  # deep
            pass
    found: list[str] = []

    def mark(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            d[DUPLICATE] = _first_duplicate(pairs)
            found.append(d[DUPLICATE])
        return d

    try:
        marked = _stdlib(data.decode("utf-8"), mark)
    except RecursionError:
        raise JsonProblem("too_deep", too_deep_detail("file nested"), exception="RecursionError") from None
    except (ValueError, OverflowError) as exc:
        raise JsonProblem(
            "malformed_json", f"{type(exc).__name__}: {exc}", exception=type(exc).__name__
        ) from None
    if found or obj is None:
        return marked, bool(found)
    return obj, False


def find_duplicate(obj: Any, shallow: bool = False) -> str | None:
    """The detail for the first object in `obj` marked by `loads_document` (or None)."""
    if shallow:
        return _duplicate_detail(obj[DUPLICATE]) if isinstance(obj, dict) and DUPLICATE in obj else None
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if DUPLICATE in o:
                return _duplicate_detail(o[DUPLICATE])
            stack.extend(v for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, (dict, list)))
    return None
