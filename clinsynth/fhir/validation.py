"""Validate FHIR resources with fhir.resources (R4B) at ingest speed, with the same verdicts.

Naive validation (json -> `Model.model_validate`) runs at a few thousand resources/s:
every nested element runs Python validators. But a resource's validity splits into
(a) its structure — keys, nesting, list lengths, nulls, booleans — which decides
`extra=forbid`, required elements, choice types and null-in-list rules, and (b) each
primitive leaf checked by its own FHIR type (dateTime, code, id, decimal, ...). So:

- the structure ("shape": the compact JSON with every string/number value cut out) is
  validated once by the full fhir.resources model, on the first resource that has it;
- every later resource of a known-valid shape only checks its leaves, each with the
  same pydantic type adapter the model uses, memoised per (type, raw token);
- anything else — a new shape, a leaf that fails, a contained resource — goes to the
  full model, so every rejection (and its message) is fhir.resources' own.

Fastest of all, each valid shape is also compiled into one regular expression over the
raw line: its skeleton verbatim, each value slot a pattern that is *stricter* than its
FHIR type (ASCII codes, calendar-valid dates without Feb 29, 9-digit integers, ...).
A line that fully matches is valid by the argument above in one C-level pass; a line
that does not simply takes the token path.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from clinsynth.fhir.jsonio import deep_stack

# keys are kept (group 1); string and number values are cut out
_STR = rb'"[^"\\]*(?:\\.[^"\\]*)*"'  # a JSON string, unrolled (no per-character alternation)
_NUM = rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
# FHIR JSON keys are element names (\w+); in compact JSON a key is `"name":`. Splitting on
# keys (captured) and values (dropped) leaves the skeleton: punctuation, literals, key names.
_SPLIT_RE = re.compile(rb'"(\w+)":|' + _STR + rb"|" + _NUM)
# group 1 captures values only: keys give b""
_LEAF_RE = re.compile(rb'"\w+":|(' + _STR + rb"|" + _NUM + rb")")


_ASCII = rb"[!#-\[\]-~]"  # printable ASCII without space, quote and backslash
_DAY = (
    rb"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    rb"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)  # no Feb 29: leap days take the token path
_DATE = rb"(?:19|20)[0-9]{2}-" + _DAY
_TIME = rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9])"
#: value-slot patterns, each implying fhir.resources' acceptance of that primitive type
_SLOT_PATTERNS = {
    # any bytes but quote, backslash and controls, with at least one printable ASCII character or
    # space; whoever matches raw bytes must know they are UTF-8 (orjson checked them here, the
    # extraction plans check them before matching)
    "string": rb'"[^"\\\x00-\x1f]*[ !#-\[\]-~][^"\\\x00-\x1f]*"',
    "code": rb'"' + _ASCII + rb"+(?: " + _ASCII + rb'+)*"',
    "id": rb'"[A-Za-z0-9\-.]{1,64}"',
    "uri": rb'"' + _ASCII + rb'+"',
    "decimal": rb"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?",
    "integer": rb"-?(?:0|[1-9][0-9]{0,8})",
    "unsignedInt": rb"(?:0|[1-9][0-9]{0,8})",
    "positiveInt": rb"[1-9][0-9]{0,8}",
    "date": rb'"' + _DATE + rb'"',
    "dateTime": rb'"' + _DATE + rb"(?:" + _TIME + rb')?"',
    "instant": rb'"' + _DATE + _TIME + rb'"',
}
_MAX_REGEX_SHAPES = 64  # per resource type; rarer shapes use the token path


def _slot_kinds() -> list[tuple[Any, str]]:
    from fhir.resources.R4B import fhirtypes as ft

    names = {
        "StringType": "string",
        "MarkdownType": "string",
        "CodeType": "code",
        "IdType": "id",
        "UriType": "uri",
        "CanonicalType": "uri",
        "DecimalType": "decimal",
        "IntegerType": "integer",
        "UnsignedIntType": "unsignedInt",
        "PositiveIntType": "positiveInt",
        "DateType": "date",
        "DateTimeType": "dateTime",
        "InstantType": "instant",
    }
    return [(getattr(ft, n), kind) for n, kind in names.items() if hasattr(ft, n)]


def skeleton_regex(canonical: bytes, slots: list[bytes | None]) -> bytes:
    """A pattern for lines shaped like `canonical`: keys and punctuation verbatim, value token i
    replaced by slots[i] (None: exactly that token)."""
    out: list[bytes] = []
    values = iter(zip(slots, _leaves(canonical), strict=True))
    # split with 1 group: [text, key-or-None, text, ..., text]; values are the dropped matches
    for i, part in enumerate(_SPLIT_RE.split(canonical)):
        if i % 2 == 0:
            out.append(re.escape(part))
        elif part is not None:
            out.append(b'"' + re.escape(part) + b'":')
        else:
            slot, tok = next(values)
            out.append(re.escape(tok) if slot is None else slot)
    return b"".join(out)


def _shape(canonical: bytes) -> bytes:
    return b"\x00".join(filter(None, _SPLIT_RE.split(canonical)))


def _leaves(canonical: bytes) -> list[bytes]:
    return list(filter(None, _LEAF_RE.findall(canonical)))


_LEAF_CACHE_MAX = 200_000


class _Unset:
    """`validate(dumped=...)` not given: the validator dumps the resource itself."""


_UNSET = _Unset()


class _Uncacheable(Exception):
    """The shape holds something the leaf walk cannot type (a contained resource)."""


def _model_class(resource_type: str) -> type[BaseModel]:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


@dataclass
class ValidationStats:
    fast: int = 0
    full: int = 0
    invalid: int = 0
    shapes: int = 0


@dataclass
class FastValidator:
    """Same verdicts as `get_fhir_model_class(rt).model_validate(d)`, much faster on repetitive data."""

    stats: ValidationStats = field(default_factory=ValidationStats)
    _shapes: dict[tuple[str, bytes], list[set[bytes]]] = field(default_factory=dict)
    _leaf_sets: dict[int, set[bytes]] = field(default_factory=dict)
    _leaf_check: dict[int, Callable[[Any], Any]] = field(default_factory=dict)
    _set_owner: dict[int, int] = field(default_factory=dict)
    _fields: dict[type[BaseModel], dict[str, Any]] = field(default_factory=dict)
    _regex_shapes: dict[str, list[re.Pattern[bytes]]] = field(default_factory=dict)
    _set_kind: dict[int, str | None] = field(default_factory=dict)
    _kinds: list[tuple[Any, str]] = field(default_factory=list)

    # ---- public
    def validate(
        self, resource: Any, canonical: bytes | None = None, dumped: bytes | _Unset | None = _UNSET
    ) -> str | None:
        """None when valid, else fhir.resources' error text (for the quarantine). `dumped`: the
        caller's `orjson.dumps(resource)` if it has one, None if orjson cannot write it (nested
        too deeply: only the full model, under a raised recursion limit, judges it)."""
        if not isinstance(resource, dict):
            return f"not a JSON object but {type(resource).__name__}"
        rt = resource.get("resourceType")
        if not isinstance(rt, str):
            return "no resourceType"
        shapes = self._regex_shapes.get(rt)
        if shapes and canonical is not None:
            # learnt skeletons never repeat a key, so a raw line with a duplicate key cannot match
            for i, rx in enumerate(shapes):
                if rx.fullmatch(canonical):
                    if i:  # keep frequent shapes in front
                        shapes[i - 1], shapes[i] = rx, shapes[i - 1]
                    self.stats.fast += 1
                    return None
        # from here on, tokens must line up with the parsed dict (a duplicate key in the raw text
        # would shift them): work on the dict's own compact dump
        if isinstance(dumped, _Unset):
            try:
                dumped = orjson.dumps(resource)
            except TypeError:  # nested beyond orjson's writer
                dumped = None
        if dumped is None:
            return self._full(rt, resource, None)
        if canonical != dumped:
            canonical = dumped
            if shapes:
                for rx in shapes:
                    if rx.fullmatch(canonical):
                        self.stats.fast += 1
                        return None
        plan = self._shapes.get((rt, _shape(canonical)))
        if plan is not None and self._leaves_ok(plan, canonical):
            self.stats.fast += 1
            return None
        return self._full(rt, resource, canonical)

    # ---- internals
    def _leaves_ok(self, plan: list[set[bytes]], canonical: bytes) -> bool:
        tokens = _leaves(canonical)
        if len(tokens) != len(plan):
            return False
        for ok, tok in zip(plan, tokens, strict=True):
            if tok in ok:
                continue
            check = self._leaf_check[id(ok)]
            try:
                check(orjson.loads(tok))
            except (ValidationError, ValueError, TypeError):
                return False
            if len(ok) > _LEAF_CACHE_MAX:
                ok.clear()
            ok.add(tok)
        return True

    def _full(self, rt: str, resource: dict[str, Any], canonical: bytes | None) -> str | None:
        """The full model's verdict; learns the shape unless `canonical` is None (a deep resource:
        validated under a raised recursion limit, never cached)."""
        self.stats.full += 1
        try:
            model = _model_class(rt)
        except (KeyError, ValueError, AttributeError, ImportError):
            self.stats.invalid += 1
            return f"unknown resourceType {rt!r}"
        try:
            # fhir.resources recurses ~8 frames per nested extension: ~120 levels exhaust Python's
            # default limit; callers bound the depth (jsonio.MAX_DEPTH)
            with deep_stack():
                model.model_validate(resource)
        except ValidationError as exc:
            self.stats.invalid += 1
            return _short_errors(exc)
        except RecursionError:
            self.stats.invalid += 1
            return "nested too deeply for fhir.resources to validate"
        except (ValueError, TypeError) as exc:  # validators that raise plain errors
            self.stats.invalid += 1
            return str(exc)
        if canonical is None:
            return None
        try:
            with deep_stack():
                plan = self._plan(model, resource, rt)
        except _Uncacheable:
            return None
        tokens = _leaves(canonical)
        if len(tokens) == len(plan):  # walk and regex agree: the shape can be trusted
            for ok, tok in zip(plan, tokens, strict=True):
                ok.add(tok)
            self._shapes[(rt, _shape(canonical))] = plan
            self.stats.shapes += 1
            self._add_regex_shape(rt, canonical, plan)
        return None

    def slot_kinds(self, rt: str, canonical: bytes) -> list[str | None] | None:
        """Per value token of a line of a known-valid shape: its slot kind (None: exact token only)."""
        plan = self._shapes.get((rt, _shape(canonical)))
        if plan is None:
            return None
        return [self._set_kind.get(id(ok)) for ok in plan]

    def _add_regex_shape(self, rt: str, canonical: bytes, plan: list[set[bytes]]) -> None:
        """Skeleton verbatim, each value slot its type's strict pattern (or the exact token)."""
        shapes = self._regex_shapes.setdefault(rt, [])
        if len(shapes) >= _MAX_REGEX_SHAPES:
            return
        kinds = [self._set_kind.get(id(ok)) for ok in plan]
        # atomic groups: a failed match never backtracks into earlier slots
        slots = [b"(?>" + _SLOT_PATTERNS[k] + b")" if k else None for k in kinds]
        shapes.append(re.compile(skeleton_regex(canonical, slots), re.DOTALL))

    def _plan(self, model: type[BaseModel], data: dict[str, Any], rt: str) -> list[set[bytes]]:
        plan: list[set[bytes]] = []
        self._walk_model(model, data, plan, top_rt=rt)
        return plan

    def _walk_model(
        self, model: type[BaseModel], data: dict[str, Any], plan: list[set[bytes]], top_rt: str | None
    ) -> None:
        fields = self._field_map(model)
        for key, value in data.items():
            if key == "resourceType":
                if top_rt is None:
                    raise _Uncacheable  # a nested resource: its type picks the model
                plan.append(self._literal_set(orjson.dumps(value)))
                continue
            self._walk_value(fields[key], value, plan)

    def _walk_value(self, annotation: Any, value: Any, plan: list[set[bytes]]) -> None:
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, list):
            inner = _list_item(annotation)
            for item in value:
                self._walk_value(inner, item, plan)
            return
        base = _unwrap(annotation)
        if isinstance(value, dict):
            model = _complex_model(base)
            if model is None or getattr(model, "__resource_type__", "") in ("Resource", "DomainResource"):
                raise _Uncacheable
            self._walk_model(model, value, plan, top_rt=None)
            return
        plan.append(self._leaf_set(base))

    def _field_map(self, model: type[BaseModel]) -> dict[str, Any]:
        fm = self._fields.get(model)
        if fm is None:
            fm = {}
            for name, info in model.model_fields.items():
                fm[info.alias or name] = info.annotation
                fm.setdefault(name, info.annotation)
            self._fields[model] = fm
        return fm

    def _leaf_set(self, annotation: Any) -> set[bytes]:
        key = id(annotation)
        s = self._leaf_sets.get(key)
        if s is None:
            adapter = TypeAdapter(annotation)
            s = set()
            self._leaf_sets[key] = s
            self._leaf_check[id(s)] = adapter.validate_python
            self._set_owner[id(s)] = key
            if not self._kinds:
                self._kinds = _slot_kinds()
            self._set_kind[id(s)] = next((k for a, k in self._kinds if a == annotation), None)
        return s

    def _literal_set(self, token: bytes) -> set[bytes]:
        key = hash(("literal", token))
        s = self._leaf_sets.get(key)
        if s is None:
            s = {token}

            def same(value: Any, _t: bytes = token) -> None:
                if orjson.dumps(value) != _t:
                    raise ValueError("resourceType differs")

            self._leaf_sets[key] = s
            self._leaf_check[id(s)] = same
        return s


def _unwrap(annotation: Any) -> Any:
    """X | None -> X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _list_item(annotation: Any) -> Any:
    base = _unwrap(annotation)
    if typing.get_origin(base) in (list, typing.List):  # noqa: UP006
        return typing.get_args(base)[0]
    return base


def _complex_model(annotation: Any) -> type[BaseModel] | None:
    get = getattr(annotation, "get_model_klass", None)
    if get is None:
        return None
    try:
        return get()
    except Exception:
        return None


def _short_errors(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
