"""FHIR resources -> the record set; every bad one goes to the quarantine with a reason.

Phase 1 (parallel): workers parse, validate (fhir.resources verdicts, fast path), check
what needs no other resource, extract rows and write them to their own Parquet parts;
the main process only gathers a compact index (ids, references, dates).
Phase 2 (vectorised, pyarrow): duplicates, dangling references and dates outside the
patient's life are found on the index; surviving rows are resolved (diagnosis roles,
medication codes) and split into per-patient buckets. One bad record never stops the
run (unless `strict`), and none is dropped silently.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing as mp
import operator
import queue
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.fhir.conventions import is_known_system
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.extract import Extracted, extract
from clinsynth.ingest.plans import _UNSET, Planner
from clinsynth.ingest.sources import Item, NdjsonSource, batched, read_range
from clinsynth.records import ENCOUNTERS, FACTS, PATIENTS, TABLES, bucket_of

REASONS = (
    "extraction_failed",
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
    plans: bool = True  # extraction plans for repeating shapes (see ingest/plans.py)


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
_planner: Planner | None = None


def _init_worker(options: Options) -> None:
    global _validator, _options, _planner
    _validator, _options = FastValidator(), options
    _planner = Planner(_validator) if options.plans else None
    # millions of short-lived dicts and no reference cycles: the cyclic GC would only
    # rescan the same objects over and over (measured: ~30% of the time)
    gc.freeze()
    gc.set_threshold(200_000, 50, 1000)


def _day(value: str) -> str:
    return value[:10]


def _check_dates(ex: Extracted, opts: Options) -> str | None:
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
        starts = {p[:-6]: v for p, v in dates if p.endswith(".start")}
        for p, v in dates:
            if p.endswith(".end"):
                s = starts.get(p[:-4])
                if s and v < s:
                    return f"{p}={v} lies before its start {s}"
    return None


def process(items: list[Item]) -> list[Result]:
    """Worker: parse, validate, extract, and check what needs no other resource."""
    assert _validator is not None and _options is not None
    out = []
    for it in items:
        if it.error:
            out.append(Result(it.source, it.line, it.location, None, None, "malformed_json", it.error))
            continue
        ex = _planner.match(it.raw) if (_planner is not None and it.raw is not None) else None
        if ex is not None:  # a known shape: valid and extracted in one regex match
            canonical = it.raw
            rt, rid = ex.resource_type, ex.resource_id
        else:
            res = it.resource
            canonical = None
            if res is None:
                try:
                    res = orjson.loads(it.raw or b"")
                except orjson.JSONDecodeError as exc:
                    out.append(
                        Result(it.source, it.line, it.location, None, None, "malformed_json", str(exc))
                    )
                    continue
                canonical = it.raw
            rt = res.get("resourceType") if isinstance(res, dict) else None
            rid = res.get("id") if isinstance(res, dict) else None
            canonical = _canonical(res, canonical)
            error = _validator.validate(res, canonical)
            if error:
                out.append(Result(it.source, it.line, it.location, rt, rid, "invalid_resource", error))
                continue
            try:
                ex = extract(res)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc} (valid FHIR that clinsynth cannot flatten)"
                out.append(Result(it.source, it.line, it.location, rt, rid, "extraction_failed", detail))
                continue
            if _planner is not None and it.raw is not None:
                _planner.learn(res, it.raw, ex)
        plan = ex.plan
        if plan is not None and plan.systems_verdict is not _UNSET:
            bad = plan.systems_verdict
        else:
            bad = next(
                (f"{p}: {s!r}" for p, s in ex.systems if not is_known_system(s, _options.extra_code_systems)),
                None,
            )
            if plan is not None:
                plan.systems_verdict = bad
        if bad:
            out.append(Result(it.source, it.line, it.location, rt, rid, "unknown_code_system", bad))
            continue
        bad = _check_dates(ex, _options)
        if bad:
            out.append(Result(it.source, it.line, it.location, rt, rid, "impossible_date", bad))
            continue
        # Python's hash: the same secret in the main process and every forked worker, and digests
        # are only compared within one run
        digest = hash(canonical) & 0xFFFFFFFFFFFFFFFF
        out.append(Result(it.source, it.line, it.location, rt, rid, extracted=ex, digest=digest))
    return out


def _canonical(res: Any, raw: bytes | None) -> bytes:
    """The bytes the validator's shape cache keys on: the line as read, or a compact dump."""
    return raw if raw is not None else orjson.dumps(res)


# ---- phase 1: workers validate and extract, write row parts, return a compact index

INDEX = pa.schema(
    [
        ("seq", pa.int64()),
        ("rt", pa.dictionary(pa.int32(), pa.string())),
        ("rid", pa.string()),
        ("key", pa.int64()),  # hash of type/id: duplicates are found on integers, not strings
        ("digest", pa.int64()),
        ("kind", pa.int8()),  # index into KINDS
        ("patient_ref", pa.string()),
        ("encounter_ref", pa.string()),
        ("med_ref", pa.string()),
        ("first_day", pa.int32()),  # yyyymmdd, partial dates padded to their latest day
        ("last_day", pa.int32()),  # ... to their earliest day
        ("birth", pa.int32()),  # patients: earliest possible birth day
        ("death", pa.int32()),  # patients: latest possible death day
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("line", pa.int64()),
        ("location", pa.string()),
    ]
)
SIDE = {
    "roles": pa.schema([("cond_id", pa.string()), ("role", pa.string())]),
    "meds": pa.schema(
        [
            ("med_id", pa.string()),
            ("m_system", pa.string()),
            ("m_code", pa.string()),
            ("m_display", pa.string()),
        ]
    ),
}


KINDS = ("patient", "encounter", "medication", "facts", "ignored")
_KIND = {k: i for i, k in enumerate(KINDS)}


def _ymd(day: str | None, high: bool) -> int | None:
    """'2024-03-05...' -> 20240305; partial dates padded to their latest (high) or earliest day."""
    if not day:
        return None
    if len(day) >= 10:
        return int(day[:4]) * 10000 + int(day[5:7]) * 100 + int(day[8:10])
    return int(_pad(day, high).replace("-", ""))


@functools.cache
def _getter(schema: pa.Schema) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return operator.itemgetter(*schema.names)


def _iso(ymd: int | None) -> str:
    return f"{ymd // 10000:04d}-{ymd // 100 % 100:02d}-{ymd % 100:02d}" if ymd else "?"


def _key(rt: str | None, rid: str | None) -> int | None:
    if rid is None:
        return None
    return hash((rt, rid))


def _pad(day: str, high: bool) -> str:
    """A partial date as its latest (high) or earliest possible day, for before/after checks."""
    if len(day) >= 10:
        return day[:10]
    if len(day) == 7:
        return day + ("-31" if high else "-01")
    return day[:4] + ("-12-31" if high else "-01-01")


class _Worker:
    """Writes the rows of the resources it accepts to its own Parquet parts (no pickling of rows)."""

    def __init__(self, parts: Path, name: str, opts: Options) -> None:
        _init_worker(opts)
        self.parts, self.name = parts, name
        self.writers: dict[str, pq.ParquetWriter] = {}

    def _write(self, table: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
        if not rows:
            return
        # tuples via itemgetter, transposed, then Arrow: ~4x faster than Table.from_pylist on dict rows
        get = _getter(schema)  # once: hashing a pa.Schema per row cost more than the rest
        cols = _transpose([get(r) for r in rows], len(schema))
        t = pa.Table.from_arrays(
            [pa.array(c, f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
        )
        w = self.writers.get(table)
        if w is None:
            w = pq.ParquetWriter(self.parts / f"{self.name}-{table}.parquet", schema, compression="zstd")
            self.writers[table] = w
        w.write_table(t)

    def chunk(
        self, seq0: int, items: list[Item]
    ) -> tuple[pa.RecordBatch, list[dict[str, Any]], dict[str, Any]]:
        rows: dict[str, list[dict[str, Any]]] = {
            "patients": [],
            "encounters": [],
            "facts": [],
            "roles": [],
            "meds": [],
        }
        idx: list[tuple[Any, ...]] = []
        bad: list[dict[str, Any]] = []
        facts = rows["facts"]
        for k, r in enumerate(process(items)):
            seq = seq0 + k
            if r.reason:
                bad.append(
                    {
                        "seq": seq,
                        "source": r.source,
                        "line": r.line,
                        "location": r.location,
                        "resource_type": r.resource_type,
                        "id": r.resource_id,
                        "reason": r.reason,
                        "detail": r.detail,
                    }
                )
                continue
            ex = r.extracted
            assert ex is not None
            first = last = birth = death = None
            for _, d in ex.dates:
                if len(d) >= 10:  # a full date pads to itself: parse once
                    hi = lo = int(d[:4]) * 10000 + int(d[5:7]) * 100 + int(d[8:10])
                else:
                    hi, lo = _ymd(d, True), _ymd(d, False)
                if first is None or hi < first:
                    first = hi
                if last is None or lo > last:
                    last = lo
            src = f"{r.source}:{r.line}" if r.line else f"{r.source} {r.location or ''}".strip()
            kind = ex.kind
            if kind == "facts":
                for row in ex.rows:
                    if row["extra"] is not None:
                        row["extra"] = orjson.dumps(row["extra"]).decode()
                    row["patient_id"], row["encounter_id"], row["source"] = (
                        ex.patient_ref,
                        ex.encounter_ref,
                        src,
                    )
                    row["seq"], row["med_ref"] = seq, ex.medication_ref
                    facts.append(row)
            elif kind == "patient":
                row = ex.rows[0]
                birth, death = _ymd(row["birth_date"], False), _ymd(row["deceased_date"], True)
                first = last = None  # a patient's own dates bound the others
                rows["patients"].append({**row, "source": src, "seq": seq})
            elif kind == "encounter":
                rows["encounters"].append(
                    {**ex.rows[0], "patient_id": ex.patient_ref, "source": src, "seq": seq}
                )
                rows["roles"] += [{"cond_id": c, "role": role} for c, role in ex.diagnosis_roles]
            elif kind == "medication":
                m = ex.medication or (None, None, None)
                rows["meds"].append(
                    {"med_id": r.resource_id, "m_system": m[0], "m_code": m[1], "m_display": m[2]}
                )
            idx.append(
                (
                    seq,
                    r.resource_type,
                    r.resource_id,
                    _key(r.resource_type, r.resource_id),
                    r.digest - (1 << 63),
                    _KIND[kind],
                    ex.patient_ref,
                    ex.encounter_ref,
                    ex.medication_ref,
                    first,
                    last,
                    birth,
                    death,
                    r.source,
                    r.line,
                    r.location,
                )
            )
        for table, schema in _PART_SCHEMAS.items():
            self._write(table, rows[table], schema)
        side = {k: pa.Table.from_pylist(rows[k], schema=SIDE[k]) for k in SIDE}
        return (
            pa.RecordBatch.from_arrays(
                [
                    _column(list(col), f.type)
                    for col, f in zip(_transpose(idx, len(INDEX)), INDEX, strict=True)
                ],
                schema=INDEX,
            ),
            bad,
            side,
        )

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


_PART_SCHEMAS = {
    "patients": PATIENTS.append(pa.field("seq", pa.int64())),
    "encounters": ENCOUNTERS.append(pa.field("seq", pa.int64())),
    "facts": FACTS.append(pa.field("seq", pa.int64())).append(pa.field("med_ref", pa.string())),
}


def _pack(items: list[Item]) -> Any:
    """Raw NDJSON lines travel to workers as bytes, not as pickled objects (a third of the cost)."""
    if all(it.raw is not None and it.error is None for it in items):
        return ("raw", [it.source for it in items], [it.line for it in items], [it.raw for it in items])
    return ("items", items)


def _unpack(packed: Any) -> list[Item]:
    if packed[0] == "range":
        return read_range(*packed[1:])
    if packed[0] == "raw":
        return [Item(s, n, r) for s, n, r in zip(packed[1], packed[2], packed[3], strict=True)]
    return packed[1]


def _transpose(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(typ):
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, typ)


def _worker_main(parts: Path, name: str, opts: Options, tasks: Any, results: Any) -> None:
    w = _Worker(parts, name, opts)
    try:
        while (task := tasks.get()) is not None:
            seq0, packed = task
            results.put(("chunk", w.chunk(seq0, _unpack(packed))))
    except BaseException as exc:
        import traceback

        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise
    finally:
        w.close()
        results.put(("closed", name))


def _phase1(
    items: Iterable[Item],
    parts: Path,
    opts: Options,
    workers: int,
    chunk: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[pa.RecordBatch], list[dict[str, Any]], dict[str, list[pa.Table]]]:
    batches: list[pa.RecordBatch] = []
    bad: list[dict[str, Any]] = []
    side: dict[str, list[pa.Table]] = {k: [] for k in SIDE}

    def take(result: tuple[pa.RecordBatch, list[dict[str, Any]], dict[str, Any]]) -> None:
        b, q, sd = result
        batches.append(b)
        bad.extend(q)
        for k, t in sd.items():
            side[k].append(t)
        if opts.strict and q:
            first = min(q, key=lambda e: e["seq"])
            raise IngestError(_strict_message(first))
        if progress:
            progress(sum(len(x) for x in batches) + len(bad))

    if workers <= 1:
        w = _Worker(parts, "w0", opts)
        try:
            seq = 0
            for c in batched(items, chunk):
                take(w.chunk(seq, c))
                seq += len(c)
        finally:
            w.close()
        return batches, bad, side
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(maxsize=2 * workers), ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(parts, f"w{i}", opts, tasks, results), daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    closed = 0

    def drain(block: bool) -> None:
        nonlocal closed
        while True:
            try:
                kind, payload = results.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            if kind == "chunk":
                take(payload)
            elif kind == "error":
                raise RuntimeError(f"an ingest worker failed: {payload}")
            else:
                closed += 1
            if not block:
                continue
            return

    finished = False
    try:
        seq = 0
        if isinstance(items, NdjsonSource):
            # workers read their own byte ranges: the main process only finds line boundaries
            # (~900 bytes per resource, so `chunk` resources are about chunk * 900 bytes)
            tasks_iter: Iterable[tuple[Any, int]] = (
                (("range", *r[0]), r[1]) if isinstance(r, tuple) else (_pack(r), len(r))
                for r in items.ranges(max(1 << 16, chunk * 900))
            )
        else:
            tasks_iter = ((_pack(c), len(c)) for c in batched(items, chunk))
        for packed, n_items in tasks_iter:
            while True:
                try:
                    tasks.put((seq, packed), timeout=0.2)
                    break
                except queue.Full:
                    drain(block=False)
            seq += n_items  # an upper bound for ranges (blank lines): seqs stay unique and ordered
            drain(block=False)
        for _ in procs:
            tasks.put(None)
        while closed < len(procs):
            drain(block=True)
            if closed < len(procs) and not any(p.is_alive() for p in procs):
                drain(block=False)
                break
        finished = True
    finally:
        for p in procs:
            if not finished:  # the source or a worker failed: do not wait for idle workers
                p.kill()
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return batches, bad, side


def _strict_message(e: dict[str, Any]) -> str:
    where = (
        f"{e['source']}:{e['line']}" if e.get("line") else f"{e['source']} {e.get('location') or ''}".strip()
    )
    return (
        f"{where}: {e['reason']}: {e['detail']} (strict=true stops at the first bad record; "
        "set ingest.strict=false to quarantine it and go on)"
    )


# ---- phase 2: global checks on the index, vectorised, then bucketed output


def _flag(
    idx: pa.Table, mask: pa.ChunkedArray | pa.Array, reason: str, details: list[str]
) -> list[dict[str, Any]]:
    rows = idx.filter(mask).to_pylist()
    return [
        {
            "seq": r["seq"],
            "source": r["source"],
            "line": r["line"],
            "location": r["location"],
            "resource_type": r["rt"],
            "id": r["rid"],
            "reason": reason,
            "detail": d,
        }
        for r, d in zip(rows, details, strict=True)
    ]


def _checks(
    idx: pa.Table, side: dict[str, pa.Table]
) -> tuple[list[dict[str, Any]], pa.Array, dict[str, int]]:
    """Quarantine entries for duplicates, dangling references and dates outside a life; the seqs that
    survive; and identical repeats by type. Numpy/pyarrow on the index: no per-resource Python, and
    no joins that would copy millions of strings."""
    import numpy as np

    def np_bool(a: Any) -> np.ndarray:
        return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)

    bad: list[dict[str, Any]] = []
    seq_np = idx["seq"].to_numpy()
    alive_np = np.ones(idx.num_rows, dtype=bool)

    # 1. duplicates: the first occurrence in source order wins
    has_key = np_bool(pc.is_valid(idx["key"]))
    key = np.asarray(pc.fill_null(idx["key"], 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(seq_np, kind="stable")
    order = order[has_key[order]]
    _, first_pos, inverse = np.unique(key[order], return_index=True, return_inverse=True)
    first_row = order[first_pos[inverse]]  # for each keyed row (in seq order): its first occurrence
    later = first_row != order
    digest = idx["digest"].to_numpy()
    dup_rows, dup_first = order[later], first_row[later]
    same = digest[dup_rows] == digest[dup_first]
    rts = idx["rt"]
    repeats = Counter(rts.take(pa.array(dup_rows[same])).to_pylist())
    alive_np[dup_rows] = False
    conflict = dup_rows[~same]
    if len(conflict):
        m = np.zeros(idx.num_rows, dtype=bool)
        m[conflict] = True
        sub = idx.filter(pa.array(m))
        bad += _flag(
            idx,
            pa.array(m),
            "duplicate_id",
            [
                f"{r}/{i} appears again with different content"
                for r, i in zip(sub["rt"].to_pylist(), sub["rid"].to_pylist(), strict=True)
            ],
        )

    kinds_np = idx["kind"].to_numpy()

    def ids_of(k: str) -> pa.Table:
        return idx.filter(pa.array(alive_np & (kinds_np == _KIND[k])))

    def dangling(mask: np.ndarray, what: str, refs: pa.ChunkedArray) -> None:
        m = alive_np & mask
        if m.any():
            marr = pa.array(m)
            bad.extend(
                _flag(
                    idx,
                    marr,
                    "dangling_reference",
                    [
                        f"{what}{x}" if x else "no subject reference to a Patient"
                        for x in refs.filter(marr).to_pylist()
                    ],
                )
            )
            alive_np[m] = False

    patients = ids_of("patient").select(["rid", "birth", "death"])
    needs_patient = ~np.isin(kinds_np, [_KIND["patient"], _KIND["medication"], _KIND["ignored"]])
    pref = idx["patient_ref"]
    p_at = pc.index_in(pref, value_set=patients["rid"].combine_chunks())
    dangling(needs_patient & ~np_bool(pc.is_valid(p_at)), "subject -> Patient/", pref)

    encounters = ids_of("encounter").select(["rid", "patient_ref"])
    eref = idx["encounter_ref"]
    has_enc = np_bool(pc.is_valid(eref))
    e_at = pc.index_in(eref, value_set=encounters["rid"].combine_chunks())
    dangling(has_enc & ~np_bool(pc.is_valid(e_at)), "encounter -> Encounter/", eref)
    owner = (
        encounters["patient_ref"]
        .combine_chunks()
        .take(e_at.combine_chunks() if hasattr(e_at, "combine_chunks") else e_at)
    )
    dangling(
        has_enc & ~np_bool(pc.equal(owner, pref.combine_chunks())),
        "encounter belongs to another patient: Encounter/",
        eref,
    )

    meds = ids_of("medication")["rid"].combine_chunks()
    mref = idx["med_ref"]
    dangling(
        np_bool(pc.is_valid(mref)) & ~np_bool(pc.is_in(mref, value_set=meds)),
        "medicationReference -> Medication/",
        mref,
    )

    # 2. dates outside the patient's life
    p_idx = p_at.combine_chunks() if hasattr(p_at, "combine_chunks") else p_at
    birth = patients["birth"].combine_chunks().take(p_idx)
    death = patients["death"].combine_chunks().take(p_idx)
    for mask, word, bound in (
        (np_bool(pc.less(idx["first_day"].combine_chunks(), birth)), "before the birth date", birth),
        (np_bool(pc.greater(idx["last_day"].combine_chunks(), death)), "after the death date", death),
    ):
        m = alive_np & mask
        if m.any():
            marr = pa.array(m)
            bad += _flag(
                idx,
                marr,
                "impossible_date",
                [f"a date of this resource lies {word} {_iso(b)}" for b in bound.filter(marr).to_pylist()],
            )
            alive_np[m] = False
    return bad, pa.array(seq_np[alive_np]), dict(repeats)


def _write_records(
    parts: Path,
    out: Path,
    keep: pa.Array,
    side: dict[str, pa.Table],
    buckets: int,
    n_seq: int,
    threads: int = 2,
) -> dict[str, int]:
    """Filter each part to the surviving resources, resolve roles and medications, split by patient bucket."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    roles = side["roles"].group_by("cond_id").aggregate([("role", "min")])
    roles = roles.rename_columns(["resource_id", "x_role"])
    meds = (
        side["meds"]
        .group_by("med_id")
        .aggregate([("m_system", "min"), ("m_code", "min"), ("m_display", "min")])
    )
    meds = meds.rename_columns(["med_ref", "m_system", "m_code", "m_display"])
    alive = np.zeros(n_seq, dtype=bool)
    alive[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=np.int64)] = True
    # bucket per patient, computed once per patient (hashing 3M fact rows one by one is slow)
    patient_ids = pa.array([], pa.string())
    patient_bucket = np.zeros(0, dtype=np.int32)
    writers: dict[tuple[str, int], pq.ParquetWriter] = {}
    lanes = [ThreadPoolExecutor(1) for _ in range(max(1, min(threads, buckets)))]
    pending: list[Future[None]] = []
    counts = dict.fromkeys(TABLES, 0)
    for table, schema in TABLES.items():
        for t in _in_seq_order(sorted(parts.glob(f"*-{table}.parquet"))):
            t = t.filter(pa.array(alive[t["seq"].to_numpy()]))
            if t.num_rows == 0:
                continue
            if table == "facts":
                t = _resolve_facts(t, roles, meds)
            pid_col = t["patient_id"].combine_chunks()
            at = pc.index_in(pid_col, value_set=patient_ids)
            if at.null_count:  # a patient first seen here (cannot happen after the checks; be safe)
                missing = pc.unique(pid_col.filter(pc.is_null(at))).to_pylist()
                patient_ids = pa.concat_arrays([patient_ids, pa.array(missing, pa.string())])
                patient_bucket = np.concatenate(
                    [patient_bucket, np.array([bucket_of(p, buckets) for p in missing], dtype=np.int32)]
                )
                at = pc.index_in(pid_col, value_set=patient_ids)
            b = patient_bucket[at.to_numpy(zero_copy_only=False)]
            order = np.argsort(b, kind="stable")
            t = t.take(pa.array(order)).select(schema.names).cast(schema)
            b = b[order]
            bounds = np.searchsorted(b, np.arange(buckets + 1))
            for f in pending:  # at most one batch in flight: bounded memory
                f.result()
            pending = []
            for bk in range(buckets):
                lo, hi = int(bounds[bk]), int(bounds[bk + 1])
                if hi == lo:
                    continue
                key = (table, bk)
                w = writers.get(key)
                if w is None:
                    w = pq.ParquetWriter(out / f".{table}-{bk:04d}.parquet.tmp", schema, compression="zstd")
                    writers[key] = w
                # compression and I/O release the GIL: one ordered writer thread per lane of buckets
                pending.append(lanes[bk % len(lanes)].submit(w.write_table, t.slice(lo, hi - lo)))
                counts[table] += hi - lo
    for f in pending:
        f.result()
    for lane in lanes:
        lane.shutdown()
    for table, schema in TABLES.items():
        for bk in range(buckets):
            tmp = out / f".{table}-{bk:04d}.parquet.tmp"
            w = writers.pop((table, bk), None)
            if w is None:
                pq.write_table(pa.Table.from_pylist([], schema=schema), tmp)
            else:
                w.close()
            tmp.replace(out / f"{table}-{bk:04d}.parquet")
    return counts


def _in_seq_order(files: list[Path], rows: int = 100_000) -> Iterator[pa.Table]:
    """Row groups of all workers' parts in source order (each chunk is one row group of one worker),
    so the records do not depend on which worker took which chunk."""
    groups = []
    for f in files:
        pf = pq.ParquetFile(f)
        col = pf.schema_arrow.get_field_index("seq")
        for i in range(pf.num_row_groups):
            groups.append((pf.metadata.row_group(i).column(col).statistics.min, f, i))
    groups.sort()
    files_open: dict[Path, pq.ParquetFile] = {}
    buf: list[pa.Table] = []
    n = 0
    for _, f, i in groups:
        pf = files_open.setdefault(f, pq.ParquetFile(f))
        t = pf.read_row_group(i)
        buf.append(t)
        n += t.num_rows
        if n >= rows:
            yield pa.concat_tables(buf)
            buf, n = [], 0
    if buf:
        yield pa.concat_tables(buf)


def _resolve_facts(t: pa.Table, roles: pa.Table, meds: pa.Table) -> pa.Table:
    """Diagnosis roles from the encounters, codes of referenced Medications: lookups, not joins
    (a join would copy the whole batch and lose its order)."""
    at = pc.index_in(t["resource_id"], value_set=roles["resource_id"].combine_chunks())
    from_enc = roles["x_role"].combine_chunks().take(at)
    role = pc.if_else(
        pc.and_(pc.equal(t["category"], "diagnosis"), pc.is_null(t["role"])), from_enc, t["role"]
    )
    t = t.set_column(t.schema.get_field_index("role"), "role", role)
    at = pc.index_in(t["med_ref"], value_set=meds["med_ref"].combine_chunks())
    no_code = pc.and_(pc.is_valid(t["med_ref"]), pc.is_null(t["code"]))
    for col, mcol in (("system", "m_system"), ("code", "m_code"), ("display", "m_display")):
        looked_up = meds[mcol].combine_chunks().take(at)
        fill = pc.coalesce(t[col], looked_up) if col == "display" else pc.if_else(no_code, looked_up, t[col])
        t = t.set_column(t.schema.get_field_index(col), col, fill)
    return t


def _counts(idx: pa.Table, ignored: bool | None) -> dict[str, int]:
    """Resources per type (of ignored types, of the others, or of all), without a Python loop."""
    t = idx.select(["rt", "kind"])
    if ignored is not None:
        is_ignored = pc.equal(t["kind"], _KIND["ignored"])
        t = t.filter(is_ignored if ignored else pc.invert(is_ignored))
    t = t.set_column(0, "rt", pc.cast(t["rt"], pa.string()))
    g = t.group_by("rt").aggregate([("kind", "count")])
    return dict(zip(g["rt"].to_pylist(), g["kind_count"].to_pylist(), strict=True))


@dataclass
class _Report:
    read: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    repeats: dict[str, int] = field(default_factory=dict)

    def as_dict(self, rows: dict[str, int], seconds: float) -> dict[str, Any]:
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
            "identical_repeats_by_type": self.repeats,
            "rows": rows,
            "seconds": round(seconds, 3),
            "resources_per_s": round(total / seconds, 1) if seconds else None,
        }


def ingest(
    items: Iterable[Item],
    out_dir: Path,
    opts: Options,
    *,
    workers: int = 1,
    chunk: int = 10000,
    buckets: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write records/, quarantine.ndjson and ingest_report.json under out_dir; return the report."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = out_dir / "_parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    try:
        t1 = time.perf_counter()
        batches, bad, side_parts = _phase1(items, parts, opts, workers, chunk, progress)
        phases = {"read_validate_extract": time.perf_counter() - t1}
        t1 = time.perf_counter()
        idx = pa.Table.from_batches(batches, schema=INDEX)
        side = {
            k: pa.concat_tables(v) if v else pa.Table.from_pylist([], schema=SIDE[k])
            for k, v in side_parts.items()
        }
        checked, keep, repeats = _checks(idx, side)
        unreadable = Counter(e["resource_type"] or "?" for e in bad)  # never made it into the index
        unreadable_seq = [e["seq"] for e in bad]
        bad = sorted(bad + checked, key=lambda e: e["seq"])
        if opts.strict and bad:
            raise IngestError(_strict_message(bad[0]))
        phases["global_checks"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        # seqs are unique and ordered but may have gaps (blank lines, byte-range reads)
        seqs = [pc.max(idx["seq"]).as_py() if idx.num_rows else -1, *unreadable_seq]
        rows = _write_records(parts, out_dir / "records", keep, side, buckets, max(seqs) + 1, max(1, workers))
        phases["write_records"] = time.perf_counter() - t1
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    report = _Report(repeats=repeats)
    report.read.update(_counts(idx, None))
    report.read.update(unreadable)
    for e in bad:
        report.quarantined[e["reason"]] += 1
    kept = idx.filter(pc.is_in(idx["seq"], keep))
    report.ignored.update(_counts(kept, True))
    report.ok.update(_counts(kept, False))
    with atomic_open(out_dir / "quarantine.ndjson", "wb") as fh:
        for e in bad:
            e.pop("seq", None)
            fh.write(orjson.dumps(e) + b"\n")
    out = report.as_dict(rows, time.perf_counter() - t0)
    out["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}
    write_json(out_dir / "ingest_report.json", out)
    return out


def default_as_of() -> str:
    return date.today().isoformat()
