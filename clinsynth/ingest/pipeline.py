"""Stream FHIR resources into the record set; put every bad one into the quarantine with a reason.

Workers parse, validate (fhir.resources verdicts, fast path) and extract; the main
process checks references, dates against birth/death, and writes Parquet buckets. One
bad record never stops the run (unless `strict`), and none is dropped silently.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import write_json
from clinsynth.fhir.conventions import is_known_system
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.extract import Extracted, extract
from clinsynth.ingest.sources import Item
from clinsynth.records import BucketWriter

REASONS = (
    "malformed_json",
    "invalid_resource",
    "dangling_reference",
    "unknown_code_system",
    "impossible_date",
    "duplicate_id",
)


class IngestError(RuntimeError):
    """strict=true: the first bad record stops the run; the message says where and why."""


@dataclass
class Options:
    as_of: str  # no fact may lie after this day (ISO date)
    min_year: int = 1890
    extra_code_systems: frozenset[str] = frozenset()
    strict: bool = False


@dataclass
class Result:
    source: str
    line: int | None
    location: str | None
    resource_type: str | None
    resource_id: str | None
    reason: str | None = None  # one of REASONS when bad
    detail: str | None = None
    extracted: Extracted | None = None
    digest: int = 0  # of the resource's bytes: tells an identical repeat from a conflicting one


_validator: FastValidator | None = None
_options: Options | None = None


def _init_worker(options: Options) -> None:
    global _validator, _options
    _validator, _options = FastValidator(), options


def _day(value: str) -> str:
    return value[:10]


def _check_dates(ex: Extracted, opts: Options) -> str | None:
    for path, value in ex.dates:
        year = int(value[:4]) if value[:4].isdigit() else 0
        if year < opts.min_year:
            return f"{path}={value} lies before {opts.min_year}"
        if _day(value) > opts.as_of:
            return f"{path}={value} lies after the reference date {opts.as_of}"
    starts = {p.split(".")[0]: v for p, v in ex.dates if p.endswith(".start")}
    for p, v in ex.dates:
        if p.endswith(".end"):
            s = starts.get(p.split(".")[0])
            if s and v < s:
                return f"{p}={v} lies before its start {s}"
    return None


def process(items: list[Item]) -> list[Result]:
    """Worker: parse, validate, extract, and check what needs no other resource."""
    assert _validator is not None and _options is not None
    out = []
    for it in items:
        res = it.resource
        canonical = None
        if it.error:
            out.append(Result(it.source, it.line, it.location, None, None, "malformed_json", it.error))
            continue
        if res is None:
            try:
                res = orjson.loads(it.raw or b"")
            except orjson.JSONDecodeError as exc:
                out.append(Result(it.source, it.line, it.location, None, None, "malformed_json", str(exc)))
                continue
            canonical = it.raw
        rt = res.get("resourceType") if isinstance(res, dict) else None
        rid = res.get("id") if isinstance(res, dict) else None
        canonical = _canonical(res, canonical)
        error = _validator.validate(res, canonical)
        if error:
            out.append(Result(it.source, it.line, it.location, rt, rid, "invalid_resource", error))
            continue
        ex = extract(res)
        bad = next(
            (f"{p}: {s!r}" for p, s in ex.systems if not is_known_system(s, _options.extra_code_systems)),
            None,
        )
        if bad:
            out.append(Result(it.source, it.line, it.location, rt, rid, "unknown_code_system", bad))
            continue
        bad = _check_dates(ex, _options)
        if bad:
            out.append(Result(it.source, it.line, it.location, rt, rid, "impossible_date", bad))
            continue
        digest = int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")
        out.append(Result(it.source, it.line, it.location, rt, rid, extracted=ex, digest=digest))
    return out


def _canonical(res: Any, raw: bytes | None) -> bytes:
    """The bytes the validator's shape cache keys on: the line as read, or a compact dump."""
    return raw if raw is not None else orjson.dumps(res)


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    buf: list[Item] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _results(items: Iterable[Item], opts: Options, workers: int, chunk: int) -> Iterator[Result]:
    """In source order; at most 2 chunks per worker in flight, so memory stays bounded."""
    if workers <= 1:
        _init_worker(opts)
        for c in _chunks(items, chunk):
            yield from process(c)
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(opts,)) as pool:
        window: deque[Any] = deque()
        for c in _chunks(items, chunk):
            window.append(pool.apply_async(process, (c,)))
            while len(window) >= 2 * workers:
                yield from window.popleft().get()
        while window:
            yield from window.popleft().get()


@dataclass
class IngestReport:
    read: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    repeated: Counter[str] = field(default_factory=Counter)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.read.values())
        return {
            "resources_read": total,
            "resources_ok": sum(self.ok.values()),
            "resources_quarantined": sum(self.quarantined.values()),
            "resources_ignored": sum(self.ignored.values()),
            "read_by_type": dict(self.read),
            "ok_by_type": dict(self.ok),
            "quarantined_by_reason": dict(self.quarantined),
            "ignored_by_type": dict(self.ignored),
            "identical_repeats_by_type": dict(self.repeated),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "resources_per_s": round(total / self.seconds, 1) if self.seconds else None,
        }


class _State:
    """What the main process must remember to check references: ids and key dates only."""

    def __init__(self) -> None:
        self.patients: dict[str, tuple[str | None, str | None]] = {}  # id -> (birth, death)
        self.encounters: dict[str, str] = {}  # id -> patient id
        self.medications: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.roles: dict[str, str] = {}  # condition id -> main/secondary
        self.seen: dict[int, int] = {}  # hash of type/id -> digest of its content (8+8 bytes each)

    @staticmethod
    def key(resource_type: str, resource_id: str) -> int:
        return int.from_bytes(
            hashlib.blake2b(f"{resource_type}/{resource_id}".encode(), digest_size=8).digest(), "big"
        )


def _resolve(r: Result, st: _State) -> tuple[str | None, str | None]:
    """Reason and detail if the resource cannot be linked, else (None, None)."""
    ex = r.extracted
    assert ex is not None
    if r.resource_id and ex.kind != "ignored":
        first = st.seen.get(_State.key(r.resource_type or "", r.resource_id))
        if first is not None and first != r.digest:
            return "duplicate_id", f"{r.resource_type}/{r.resource_id} appears again with different content"
    if ex.kind in ("patient", "medication", "ignored"):
        return None, None
    pid = ex.patient_ref
    if not pid or pid not in st.patients:
        return (
            "dangling_reference",
            f"subject -> Patient/{pid}" if pid else "no subject reference to a Patient",
        )
    if ex.encounter_ref is not None:
        owner = st.encounters.get(ex.encounter_ref)
        if owner is None:
            return "dangling_reference", f"encounter -> Encounter/{ex.encounter_ref}"
        if owner != pid:
            return "dangling_reference", f"Encounter/{ex.encounter_ref} belongs to Patient/{owner}, not {pid}"
    if ex.medication_ref is not None and ex.medication_ref not in st.medications:
        return "dangling_reference", f"medicationReference -> Medication/{ex.medication_ref}"
    birth, death = st.patients[pid]
    for path, value in ex.dates:
        if birth and _day(value) < birth[: len(_day(value))]:
            return "impossible_date", f"{path}={value} lies before the birth date {birth}"
        if death and _day(value) > _day(death):
            return "impossible_date", f"{path}={value} lies after the death date {death}"
    return None, None


def ingest(
    items: Iterable[Item],
    out_dir: Path,
    opts: Options,
    *,
    workers: int = 1,
    chunk: int = 2000,
    buckets: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write records/ and quarantine.ndjson under out_dir; return the report (also written)."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BucketWriter(out_dir / "records", buckets)
    report, st = IngestReport(), _State()
    qpath = out_dir / "quarantine.ndjson.tmp"
    with open(qpath, "wb") as quarantine:
        for n, r in enumerate(_results(items, opts, workers, chunk), 1):
            rt = r.resource_type or "?"
            report.read[rt] += 1
            reason, detail = (r.reason, r.detail) if r.reason else _resolve(r, st)
            if reason:
                report.quarantined[reason] += 1
                where = f"{r.source}:{r.line}" if r.line else f"{r.source} {r.location or ''}".strip()
                entry = {
                    "source": r.source,
                    "line": r.line,
                    "location": r.location,
                    "resource_type": r.resource_type,
                    "id": r.resource_id,
                    "reason": reason,
                    "detail": detail,
                }
                quarantine.write(orjson.dumps(entry) + b"\n")
                if opts.strict:
                    raise IngestError(
                        f"{where}: {reason}: {detail} (strict=true stops at the first bad record; "
                        "set ingest.strict=false to quarantine it and go on)"
                    )
                continue
            ex = r.extracted
            assert ex is not None
            if ex.kind == "ignored":
                report.ignored[rt] += 1
                continue
            if r.resource_id:
                k = _State.key(rt, r.resource_id)
                if k in st.seen:  # the same resource again (e.g. PUT in two transaction Bundles)
                    report.repeated[rt] += 1
                    continue
                st.seen[k] = r.digest
            report.ok[rt] += 1
            src = f"{r.source}:{r.line}" if r.line else f"{r.source} {r.location or ''}".strip()
            if ex.kind == "patient":
                row = ex.rows[0]
                st.patients[row["patient_id"]] = (row["birth_date"], row["deceased_date"])
                writer.add("patients", {**row, "source": src})
            elif ex.kind == "medication":
                st.medications[r.resource_id or ""] = ex.medication or (None, None, None)
            elif ex.kind == "encounter":
                row = ex.rows[0]
                st.encounters[row["encounter_id"]] = ex.patient_ref or ""
                st.roles.update(ex.diagnosis_roles)
                writer.add("encounters", {**row, "patient_id": ex.patient_ref, "source": src})
            else:
                for row in ex.rows:
                    row.update(patient_id=ex.patient_ref, encounter_id=ex.encounter_ref, source=src)
                    if row["category"] == "diagnosis" and row["role"] is None:
                        row["role"] = st.roles.get(r.resource_id or "")
                    if ex.medication_ref is not None and row["code"] is None:
                        system, code, display = st.medications[ex.medication_ref]
                        row.update(system=system, code=code, display=row["display"] or display)
                    writer.add("facts", row)
            if progress and n % 5000 == 0:
                progress(n)
    writer.close()
    qpath.replace(out_dir / "quarantine.ndjson")
    report.rows = dict(writer.counts)
    report.seconds = time.perf_counter() - t0
    out = report.as_dict()
    write_json(out_dir / "ingest_report.json", out)
    return out


def default_as_of() -> str:
    return date.today().isoformat()
