"""FHIR resources -> the record set; every bad one goes to the quarantine with a reason.

Phase 1 (parallel, `pool.py`): worker processes parse, validate (fhir.resources verdicts,
fast path), check what needs no other resource (`process.py`), and write their rows to
their own Parquet parts (`worker.py`); this process only gathers a compact index.
Phase 2 (vectorised, `checks.py`): duplicates, dangling references and dates outside the
patient's life are found on the index; surviving rows are resolved and split into
per-patient buckets (`buckets.py`). One bad record never stops the run (unless `strict`),
and none is dropped silently. This module only orchestrates and reports.

Temp files are per attempt (`_parts-<host>-<pid>-<ns>/`, `records/.<table>-NNNN.parquet.<tag>.tmp`):
a zombie attempt and its relaunch writing the same folder never touch each other's; an attempt
removes its own on exit, and those of dead attempts on this host when it starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.ingest import pool
from clinsynth.ingest.buckets import write_records
from clinsynth.ingest.checks import global_checks
from clinsynth.ingest.index import INDEX, KIND, SIDE
from clinsynth.ingest.options import REASONS, IngestError, Options, default_as_of
from clinsynth.ingest.sources import BundleSource, Item, NdjsonSource, SourceError
from clinsynth.ingest.worker import ChunkResult

__all__ = ["REASONS", "IngestError", "Options", "default_as_of", "ingest"]


@dataclass
class _Gathered:
    """What phase 1 hands to phase 2: index batches, quarantine entries, side tables."""

    options: Options
    progress: Callable[[int], None] | None
    batches: list[pa.RecordBatch] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)
    side: dict[str, list[pa.Table]] = field(default_factory=lambda: {k: [] for k in SIDE})
    seen: int = 0

    def __call__(self, result: ChunkResult) -> None:
        batch, bad, side = result
        self.batches.append(batch)
        self.bad.extend(bad)
        for k, t in side.items():
            self.side[k].append(t)
        if self.options.strict and bad:
            raise IngestError.at(min(bad, key=lambda e: e["seq"]))
        self.seen += batch.num_rows + len(bad)
        if self.progress:
            self.progress(self.seen)


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _counts(idx: pa.Table, ignored: bool | None) -> dict[str, int]:
    """Resources per type (of ignored types, of the others, or of all), without a Python loop."""
    t = idx.select(["rt", "kind"])
    if ignored is not None:
        is_ignored = pc.equal(t["kind"], pa.scalar(KIND["ignored"], pa.int8()))
        t = t.filter(is_ignored if ignored else pc.invert(is_ignored))
    t = t.set_column(0, "rt", pc.cast(t["rt"], pa.string()))
    g = t.group_by("rt").aggregate([("kind", "count")])
    types = cast("list[str]", g["rt"].to_pylist())  # every indexed resource has a type
    return dict(zip(types, cast("list[int]", g["kind_count"].to_pylist()), strict=True))


#: keys of the returned report that are timings: not written to ingest_report.json (the stage puts them
#: into its task record)
TIMING_KEYS = ("seconds", "resources_per_s", "phase_seconds", "cpu_seconds")


def _report(
    idx: pa.Table,
    keep: pa.Array,
    bad: list[dict[str, Any]],
    unreadable: Counter[str],
    repeats: dict[str, int],
    rows: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    read = Counter(_counts(idx, None)) + unreadable
    kept = idx.filter(pc.is_in(idx["seq"], keep))
    ok, ignored = _counts(kept, False), _counts(kept, True)
    quarantined = Counter(e["reason"] for e in bad)
    total = sum(read.values())
    return {
        "resources_read": total,
        "resources_ok": sum(ok.values()),
        "resources_quarantined": sum(quarantined.values()),
        "resources_ignored": sum(ignored.values()),
        "read_by_type": dict(read),
        "ok_by_type": ok,
        "quarantined_by_reason": dict(quarantined),
        "ignored_by_type": ignored,
        "identical_repeats_by_type": repeats,
        "rows": rows,
        "seconds": round(seconds, 3),
        "resources_per_s": round(total / seconds, 1) if seconds else None,
    }


#: the folder of one attempt's worker parts: `_parts-<host>-<pid>-<ns>`
PARTS_PREFIX = "_parts-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"


def attempt_tag() -> str:
    """`<host>-<pid>-<ns>`: unique per attempt, and says whose it is (see `remove_stale`)."""
    return f"{_host()}-{os.getpid()}-{time.time_ns()}"


def _dead_here(tag: str) -> bool:
    """The attempt named by `tag` ran on this host and its process is gone. A pid that lives again
    (reused) keeps its files: stale files are only ever left, never taken from a live attempt."""
    host, _, rest = tag.partition("-")
    pid, _, ns = rest.partition("-")
    if host != _host() or not pid.isdigit() or not ns.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def remove_stale(out_dir: Path) -> list[Path]:
    """Remove the parts folders and bucket temp files of dead attempts on this host; what it removed."""
    gone = []
    for p in out_dir.glob(f"{PARTS_PREFIX}*"):
        if _dead_here(p.name[len(PARTS_PREFIX) :]):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    for f in (out_dir / "records").glob(".*.parquet.*.tmp"):
        if _dead_here(f.name.split(".parquet.", 1)[1][: -len(".tmp")]):
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def _empty_message(items: Iterable[Item]) -> str:
    where = str(getattr(items, "path", None) or getattr(items, "base_url", None) or type(items).__name__)
    msg = f"no FHIR resources found in {where}"
    if isinstance(items, (NdjsonSource, BundleSource)):
        skipped = items.files_skipped
        msg += f": {len(items.files_read)} file(s) read (empty or blank), {len(skipped)} skipped"
        if skipped:
            msg += " (" + "; ".join(f"{e['file']}: {e['reason']}" for e in skipped[:5])
            msg += "; ..." if len(skipped) > 5 else ""
            msg += ")"
    return msg + " (set ingest.allow_empty=true if an empty source is expected)"


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
    """Write records/, quarantine.ndjson and ingest_report.json under out_dir; return the report.

    `workers` processes validate and extract (0: all in this process, for debuggers);
    GC tuning happens inside them only, never in the calling process."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    if isinstance(items, (NdjsonSource, BundleSource)) and opts.strict != items.strict:
        items = dataclasses.replace(items, strict=opts.strict)  # stop at the first unreadable file
    out_dir.mkdir(parents=True, exist_ok=True)
    # per attempt: a zombie attempt and its relaunch in the same folder never share temp files
    tag = attempt_tag()
    remove_stale(out_dir)
    parts = out_dir / f"{PARTS_PREFIX}{tag}"
    parts.mkdir()
    phases: dict[str, float] = {}
    try:
        t1 = time.perf_counter()
        got = _Gathered(opts, progress)
        pool.run(items, parts, opts, workers, chunk, got)
        phases["read_validate_extract"] = time.perf_counter() - t1
        if not got.seen and not opts.allow_empty:
            raise SourceError(_empty_message(items))
        t1 = time.perf_counter()
        idx = pa.Table.from_batches(got.batches, schema=INDEX)
        side = {
            k: pa.concat_tables(v) if v else pa.Table.from_pylist([], schema=SIDE[k])
            for k, v in got.side.items()
        }
        checked, keep, repeats = global_checks(idx)
        unreadable = Counter(e["resource_type"] or "?" for e in got.bad)  # never made it into the index
        # seqs are unique and ordered but may have gaps (blank lines, byte-range reads)
        n_seq = max([pc.max(idx["seq"]).as_py() if idx.num_rows else -1, *(e["seq"] for e in got.bad)]) + 1
        bad = sorted(got.bad + checked, key=lambda e: e["seq"])
        if opts.strict and bad:
            raise IngestError.at(bad[0])
        phases["global_checks"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        rows = write_records(parts, out_dir / "records", keep, side, buckets, n_seq, max(1, workers), tag)
        phases["write_records"] = time.perf_counter() - t1
    finally:  # this attempt's own temp files only; a concurrent attempt's are its own business
        shutil.rmtree(parts, ignore_errors=True)
        for f in (out_dir / "records").glob(f".*.parquet.{tag}.tmp"):
            f.unlink(missing_ok=True)
    with atomic_open(out_dir / "quarantine.ndjson", "wb") as fh:
        for e in bad:
            e.pop("seq", None)
            fh.write(orjson.dumps(e) + b"\n")
    report = _report(idx, keep, bad, unreadable, repeats, rows, time.perf_counter() - t0)
    if isinstance(items, (NdjsonSource, BundleSource)):
        report["files_read"] = items.files_read
        report["files_skipped"] = items.files_skipped
    report["phase_seconds"] = {k: round(v, 2) for k, v in phases.items()}
    # this process and its (joined) workers: throughput per core is what survives a busy machine
    report["cpu_seconds"] = round(_cpu_seconds() - cpu0, 3)
    # the file holds what was read and kept; the timings go to the task record (ctx.timing), so that
    # a rerun's report is byte-identical
    write_json(out_dir / "ingest_report.json", {k: v for k, v in report.items() if k not in TIMING_KEYS})
    return report
