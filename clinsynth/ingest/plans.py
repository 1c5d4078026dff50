"""Extraction plans: for a repeating resource shape, extraction becomes one regex match.

Within one shape, `extract()` is a fixed function of the value leaves. A plan records
that function from an exemplar: leaves that steer extraction — the fields each extractor
declares in `extract.STEERING` — are pinned verbatim; every other leaf is checked, by
replacing it with two sentinels and re-running `extract()`, to flow through unchanged (or,
for references, as the id after `Type/`). The plan's regex is the validated shape with
those leaves as capturing slots, each slot stricter than its FHIR type, so a line that
matches is both valid (same argument as `FastValidator`) and extracted by copying the
exemplar's result and filling in the captured values. Anything unexpected pins the leaf;
lines that match no plan take the generic path.

Why keep them: on the validate+extract phase they save ~1.2x CPU per resource, which is
the margin by which ingest stays >= 10x the naive fhir.resources loop (see
`benchmarks/cohort_ingest.py`). Sentinel probes alone cannot find a steering field (a
lookup may map exemplar and sentinel to the same default), hence the declaration; a
property test feeds random and declared values into every leaf and compares the plans
with `extract()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from clinsynth.fhir.validation import _SLOT_PATTERNS, FastValidator, _leaves, skeleton_regex
from clinsynth.ingest.extract import Extracted, extract, steering

_REF_ID = rb'"[A-Za-z0-9\-.]{1,64}"'
_RT_RE = re.compile(rb'"resourceType":"(\w+)"')
MAX_PLANS_PER_TYPE = 96


def _leaf_paths(obj: Any, path: tuple = (), out: list | None = None) -> list[tuple[tuple, str]]:
    """(path, dotted key path) of every string/number leaf, in document order (as the regex sees them)."""
    if out is None:
        out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            _leaf_paths(v, (*path, k), out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _leaf_paths(v, (*path, i), out)
    elif isinstance(obj, (str, int, float)) and not isinstance(obj, bool):
        out.append((path, ".".join(str(p) for p in path if isinstance(p, str))))
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def json_form(ex: Extracted) -> dict[str, Any]:
    return {
        "resource_type": ex.resource_type,
        "resource_id": ex.resource_id,
        "kind": ex.kind,
        "rows": ex.rows,
        "patient_ref": ex.patient_ref,
        "encounter_ref": ex.encounter_ref,
        "medication_ref": ex.medication_ref,
        "systems": [list(x) for x in ex.systems],
        "dates": [list(x) for x in ex.dates],
        "diagnosis_roles": [list(x) for x in ex.diagnosis_roles],
        "medication": list(ex.medication) if ex.medication is not None else None,
    }


def from_json_form(d: dict[str, Any]) -> Extracted:
    med = d["medication"]
    return Extracted(
        d["kind"],
        d["resource_type"],
        d["resource_id"],
        d["rows"],
        d["patient_ref"],
        d["encounter_ref"],
        d["medication_ref"],
        d["systems"],
        d["dates"],
        d["diagnosis_roles"],
        tuple(med) if med is not None else None,
    )


def _flat(obj: Any, path: tuple = (), out: dict | None = None) -> dict[tuple, Any]:
    if out is None:
        out = {}
    if isinstance(obj, dict):
        if not obj and path:
            out[path] = {}
        for k, v in obj.items():
            _flat(v, (*path, k), out)
    elif isinstance(obj, list):
        if not obj and path:
            out[path] = []
        for i, v in enumerate(obj):
            _flat(v, (*path, i), out)
    else:
        out[path] = obj
    return out


_NUMERIC = {"decimal", "integer", "unsignedInt", "positiveInt"}
#: a plan's code-system verdict before the first resource that used it
UNSET: Any = object()


def _num(raw: bytes) -> int | float:
    """Decode a JSON number the way orjson does (int unless it has a fraction or exponent)."""
    return float(raw) if (b"." in raw or b"e" in raw or b"E" in raw) else int(raw)


@dataclass
class Plan:
    regex: re.Pattern[bytes]
    template: bytes  # json_form of the exemplar's extraction
    #: per capturing group: (decoder: ref | str | num, [(position in the json form, keep | float)])
    fills: list[tuple[str, list[tuple[tuple, str]]]]
    hits: int = 0
    #: the code-system verdict for this plan's pinned systems (None: all known), once computed
    systems_verdict: Any = UNSET

    def __post_init__(self) -> None:
        # one straight-line function per plan that builds the result as literals: no template
        # parsing, loops or path walks per resource
        tree = orjson.loads(self.template)
        lines = ["def fill(m):"]
        for g, (decoder, positions) in enumerate(self.fills, 1):
            if not positions:
                continue
            expr = {
                "ref": f"m.group({g}).decode()",
                "str": f"m.group({g})[1:-1].decode()",
                "num": f"num(m.group({g}))",
            }[decoder]
            lines.append(f"    v{g} = {expr}")
            for pos, conv in positions:
                _set(tree, pos, _Var(g, conv))
        t = tree
        args = ", ".join(
            _src(t[k])
            for k in (
                "kind",
                "resource_type",
                "resource_id",
                "rows",
                "patient_ref",
                "encounter_ref",
                "medication_ref",
                "systems",
                "dates",
                "diagnosis_roles",
            )
        )
        med = "None" if t["medication"] is None else f"tuple({_src(t['medication'])})"
        lines.append(f"    return Extracted({args}, {med})")
        scope: dict[str, Any] = {"Extracted": Extracted, "num": _num}
        exec("\n".join(lines), scope)
        self._fill = scope["fill"]

    def apply(self, m: re.Match[bytes]) -> Extracted:
        ex = self._fill(m)
        ex.plan = self
        return ex


@dataclass(frozen=True)
class _Var:
    group: int
    conv: str = "keep"


def _src(obj: Any) -> str:
    """Python source that rebuilds `obj`, with captured values where the plan fills them in."""
    if isinstance(obj, _Var):
        return f"float(v{obj.group})" if obj.conv == "float" else f"v{obj.group}"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_src(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_src(v) for v in obj) + "]"
    return repr(obj)


class Planner:
    """Plans per resource type, tried most-used first; built from lines the generic path accepted."""

    def __init__(self, validator: FastValidator) -> None:
        self.validator = validator
        self.plans: dict[bytes, list[Plan]] = {}
        self.full: set[bytes] = set()

    def match(self, raw: bytes) -> Extracted | None:
        m = _RT_RE.search(raw, 0, 64)
        if m is None:
            return None
        if not raw.isascii():  # slots take any non-ASCII byte: the line must be valid UTF-8
            try:
                raw.decode()
            except UnicodeDecodeError:
                return None
        plans = self.plans.get(m.group(1))
        if not plans:
            return None
        for i, plan in enumerate(plans):
            mm = plan.regex.fullmatch(raw)
            if mm is not None:
                plan.hits += 1
                if i and plan.hits > plans[i - 1].hits:
                    plans[i - 1], plans[i] = plan, plans[i - 1]
                try:
                    return plan.apply(mm)
                except Exception:
                    return None
        return None

    def learn(self, res: dict[str, Any], raw: bytes, ex: Extracted) -> None:
        """After the generic path accepted `res` (read from `raw`): add a plan for its shape."""
        rt = res.get("resourceType", "").encode()
        if rt in self.full or not isinstance(res.get("resourceType"), str):
            return
        plans = self.plans.setdefault(rt, [])
        if len(plans) >= MAX_PLANS_PER_TYPE:
            self.full.add(rt)
            return
        if orjson.dumps(res) != raw:  # duplicate keys or other formatting: tokens would not line up
            return
        plan = build_plan(res, raw, ex, self.validator)
        if plan is not None:
            plans.append(plan)


def _sentinel(value: Any, n: int, path: tuple) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return 987_650 + n
    if isinstance(value, float):
        return 98_765.25 + n
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return f"1999-01-{n + 1:02d}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", value):
        return f"1999-01-{n + 1:02d}T01:02:03Z"
    return f"Zq{n}x"


_SLOT_RES: dict[str, re.Pattern[bytes]] = {}


def _fits(kind: str, tok: bytes) -> bool:
    rx = _SLOT_RES.get(kind)
    if rx is None:
        rx = _SLOT_RES[kind] = re.compile(b"(?>" + _SLOT_PATTERNS[kind] + b")")
    return rx.fullmatch(tok) is not None


def build_plan(res: dict[str, Any], raw: bytes, ex: Extracted, validator: FastValidator) -> Plan | None:
    rt = res["resourceType"]
    kinds = validator.slot_kinds(rt, raw)
    tokens = _leaves(raw)
    paths = _leaf_paths(res)
    if kinds is None or len(kinds) != len(tokens) or len(paths) != len(tokens):
        return None
    base = _flat(json_form(ex))
    steers = steering(rt)
    slots: list[tuple[bytes, str, list[tuple]] | None] = []  # (pattern, decoder, positions) or None: pinned
    for (path, dotted), kind, tok in zip(paths, kinds, tokens, strict=True):
        value = orjson.loads(tok)
        if kind is None or dotted in steers or not _fits(kind, tok):
            # a value its own slot pattern rejects (a non-ASCII code: valid FHIR, but the
            # ASCII-only slot could never match it) is pinned, or the plan would not match
            # its own exemplar and every such line would learn another useless plan
            slots.append(None)
            continue
        is_ref = dotted.endswith("reference") and isinstance(value, str) and "/" in value
        if is_ref:
            prefix, _, rid = value.rpartition("/")
            if not re.fullmatch(rb"[A-Za-z0-9\-.]{1,64}", rid.encode()) or not re.fullmatch(
                r"[A-Z][A-Za-z]+", prefix
            ):
                slots.append(None)
                continue
        numeric = kind in _NUMERIC
        # numbers are probed as an int and as a float: per position, is the value kept as decoded,
        # or turned into a float (value_num = float(dose))?
        sentinels = [987_653, 98_765.25] if numeric else [None, None]
        positions: list[tuple] | None = None
        outs: list[dict[tuple, Any]] = []
        for n in (0, 1):
            if is_ref:
                sent: Any = f"{value.rpartition('/')[0]}/Zq{n}x"
            elif numeric:
                sent = sentinels[n]
            else:
                sent = _sentinel(value, n, path)
                if type(sent) is not type(value):
                    positions = None
                    break
            probe = orjson.loads(orjson.dumps(res))
            _set(probe, path, sent)
            try:
                out = _flat(json_form(extract(probe)))
            except Exception:
                positions = None
                break
            expect_new = sent.rpartition("/")[2] if is_ref else sent
            expect_old = value.rpartition("/")[2] if is_ref else value
            if out.keys() != base.keys():
                positions = None
                break
            diffs = [p for p in base if base[p] != out[p] or type(base[p]) is not type(out[p])]
            if any(out[p] != expect_new or base[p] != expect_old for p in diffs) or (
                not numeric and any(type(out[p]) is not type(expect_new) for p in diffs)
            ):
                positions = None
                break
            if positions is not None and sorted(diffs) != sorted(positions):
                positions = None
                break
            positions = diffs
            outs.append(out)
        if positions is not None and any(p[0] == "systems" for p in positions):
            positions = None  # the caller checks a plan's code systems once: they must be pinned
        if positions is not None and numeric:
            convs = []
            for p in positions:
                as_int, as_float = type(outs[0][p]), type(outs[1][p])
                if as_int is int and as_float is float:
                    convs.append((p, "keep"))
                elif as_int is float and as_float is float:
                    convs.append((p, "float"))
                else:
                    positions = None
                    break
            if positions is not None:
                positions = convs
        elif positions is not None:
            positions = [(p, "keep") for p in positions]
        if positions is None:
            slots.append(None)
            continue
        pattern = (
            b'"' + re.escape(value.rpartition("/")[0].encode() + b"/") + b"(" + _REF_ID[1:-1] + b')"'
            if is_ref
            else b"((?>" + _SLOT_PATTERNS[kind] + b"))"
        )
        decoder = "ref" if is_ref else ("num" if kind in _NUMERIC else "str")
        slots.append((pattern, decoder, positions))
    # the regex: skeleton verbatim, pinned leaves verbatim, slots as groups
    fills = [(slot[1], slot[2]) for slot in slots if slot is not None]
    pattern = skeleton_regex(raw, [None if slot is None else slot[0] for slot in slots])
    return Plan(re.compile(pattern, re.DOTALL), orjson.dumps(json_form(ex)), fills)
