"""One resource at a time: parse, validate, extract, and check what needs no other resource.

Everything here is a function of the resource and the options alone, so it runs in any
worker process; what needs other resources (references, duplicates, the patient's life)
is left to the vectorised global checks (`checks.py`). The state that makes this fast —
the validator's learnt shapes and the extraction plans — belongs to one `Processor`,
created inside the process that uses it: no module globals, nothing shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from clinsynth.fhir import jsonio
from clinsynth.fhir.conventions import is_known_system
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.extract import Extracted, extract
from clinsynth.ingest.options import Options
from clinsynth.ingest.plans import UNSET, Planner
from clinsynth.ingest.sources import Item

#: kinds whose id keys the record set (patients own buckets, encounters own facts)
_KEYED = frozenset({"patient", "encounter"})


@dataclass
class Result:
    source: str
    line: int | None
    location: str | None
    resource_type: str | None
    resource_id: str | None
    reason: str | None = None  # one of options.REASONS when bad
    detail: str | None = None
    extracted: Extracted | None = None
    digest: int = 0  # of the resource's bytes: tells an identical repeat from a conflicting one
    exception: str | None = None  # the exception class, when an exception put it in quarantine


#: the end of an `internal_error` detail
UNFORESEEN = "a clinsynth bug or an input it did not foresee"


def _id(rid: Any) -> str | None:
    """An id for the quarantine entry: a string, cut to 64 characters (the detail says why it is bad)."""
    return rid[:64] if isinstance(rid, str) else None


#: what names a line too deep to parse: its type and id, read from its first bytes
_HEAD = {
    "resourceType": re.compile(rb'^\{\s*"resourceType"\s*:\s*"([A-Za-z]{1,64})"'),
    "id": re.compile(rb'"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"'),
}


def _head(raw: bytes) -> dict[str, str]:
    return {k: m.group(1).decode() for k, rx in _HEAD.items() if (m := rx.search(raw, 0, 4096))}


#: FHIR R4 `id`: 1-64 of letters, digits, '-' and '.'
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def check_dates(ex: Extracted, opts: Options) -> str | None:
    """Dates before `min_year`, after the reference day, or ending before they start."""
    dates = ex.dates
    if not dates:
        return None
    min_year, as_of = str(opts.min_year), opts.as_of
    for path, value in dates:
        if value[:4] < min_year or not value[:4].isdigit():
            return f"{path}={value} lies before {opts.min_year}"
        if value[:10] > as_of:
            return f"{path}={value} lies after the reference date {opts.as_of}"
    if len(dates) > 1:
        by_path = dict(dates)
        born, died = by_path.get("birthDate"), by_path.get("deceasedDateTime")
        if born and died and died[:10] < born[:10]:
            return f"deceasedDateTime={died} lies before birthDate={born}"
        starts = {p[:-6]: v for p, v in dates if p.endswith(".start")}
        for p, v in dates:
            if p.endswith(".end"):
                s = starts.get(p[:-4])
                if s and v < s:
                    return f"{p}={v} lies before its start {s}"
    return None


class Processor:
    """Validates and extracts resources with the shapes and plans this process has learnt."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.validator = FastValidator()
        self.planner = Planner(self.validator) if options.plans else None

    def process(self, items: list[Item]) -> list[Result]:
        return [self.one(it) for it in items]

    def one(self, it: Item) -> Result:
        """One item's verdict; any exception quarantines the item (reason `internal_error`, naming
        the step and the exception class) instead of stopping the run."""
        step = ["read"]
        try:
            return self._one(it, step)
        except Exception as exc:
            detail = f"{step[0]}: {type(exc).__name__}: {str(exc)[:500]} ({UNFORESEEN})"
            rt = it.resource.get("resourceType") if isinstance(it.resource, dict) else None
            rt = rt if isinstance(rt, str) else None
            return Result(
                it.source,
                it.line,
                it.location,
                rt,
                None,
                "internal_error",
                detail,
                exception=type(exc).__name__,
            )

    def _one(self, it: Item, step: list[str]) -> Result:
        if it.error:
            return Result(
                it.source, it.line, it.location, None, None, it.reason or "malformed_json", it.error
            )
        planner, raw = self.planner, it.raw
        ex = planner.match(raw) if (planner is not None and raw is not None) else None
        if ex is not None and raw is not None:  # a known shape: valid and extracted in one regex match
            canonical = raw
        else:
            res = it.resource
            dumped: bytes | None
            if res is None:
                step[0] = "parse"
                try:  # duplicate keys and deep nesting are found here (see fhir/jsonio.py)
                    res, dumped = jsonio.loads_line(it.raw or b"")
                except jsonio.JsonProblem as exc:
                    v = exc.value if isinstance(exc.value, dict) else {}
                    if exc.reason == "too_deep" and not v:  # beyond orjson's reader: name it from its head
                        v = _head(it.raw or b"")
                    rt = v.get("resourceType")
                    rt = rt if isinstance(rt, str) else None
                    rid = _id(v.get("id"))
                    where = (it.source, it.line, it.location)
                    return Result(*where, rt, rid, exc.reason, exc.detail, exception=exc.exception)
            else:
                try:
                    dumped = orjson.dumps(res)
                except TypeError:  # nested beyond orjson's writer
                    dumped = None
            rt = res.get("resourceType") if isinstance(res, dict) else None
            rid = res.get("id") if isinstance(res, dict) else None
            rt = rt if isinstance(rt, str) else None
            if dumped is None and jsonio.depth(res, jsonio.MAX_DEPTH) > jsonio.MAX_DEPTH:
                return Result(
                    it.source, it.line, it.location, rt, _id(rid), "too_deep", jsonio.too_deep_detail()
                )
            # the bytes the validator's shape cache keys on: the line as read, or a compact dump
            canonical = raw if raw is not None else (dumped if dumped is not None else jsonio.dumps(res))
            step[0] = "validate"
            error = self.validator.validate(res, canonical, dumped)
            if error:
                return Result(it.source, it.line, it.location, rt, _id(rid), "invalid_resource", error)
            step[0] = "extract"
            try:
                ex = extract(res)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc} (valid FHIR that clinsynth cannot flatten)"
                return Result(
                    it.source, it.line, it.location, rt, _id(rid), "extraction_failed", detail,
                    exception=type(exc).__name__,
                )  # fmt: skip
            if planner is not None and raw is not None and dumped == raw:
                step[0] = "plan"
                planner.learn(res, raw, ex)
        step[0] = "check"
        rt, rid = ex.resource_type, ex.resource_id
        if rid is not None and not _FHIR_ID.fullmatch(rid):
            detail = f"id {rid[:80]!r} breaks FHIR's id rule [A-Za-z0-9-.]{{1,64}}; nothing can reference it"
            return Result(it.source, it.line, it.location, rt, rid[:64], "invalid_resource", detail)
        if rid is None and ex.kind in _KEYED:
            detail = f"a {rt} without an id cannot key records (valid FHIR that clinsynth cannot flatten)"
            return Result(it.source, it.line, it.location, rt, rid, "extraction_failed", detail)
        bad = self._unknown_system(ex)
        if bad:
            return Result(it.source, it.line, it.location, rt, rid, "unknown_code_system", bad)
        bad = check_dates(ex, self.options)
        if bad:
            return Result(it.source, it.line, it.location, rt, rid, "impossible_date", bad)
        # Python's hash: the same secret in the main process and every forked worker, and digests
        # are only compared within one run
        digest = hash(canonical) & 0xFFFFFFFFFFFFFFFF
        return Result(it.source, it.line, it.location, rt, rid, extracted=ex, digest=digest)

    def _unknown_system(self, ex: Extracted) -> str | None:
        """The first coding whose system is unknown; a plan pins its systems, so once per plan."""
        plan: Any = ex.plan
        if plan is not None and plan.systems_verdict is not UNSET:
            verdict: str | None = plan.systems_verdict
            return verdict
        extra = self.options.extra_code_systems
        bad = next((f"{p}: {s!r}" for p, s in ex.systems if not is_known_system(s, extra)), None)
        if plan is not None:
            plan.systems_verdict = bad
        return bad
