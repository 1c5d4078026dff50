"""The record set: the workers' row parts, filtered to the survivors, split into patient buckets.

Output must not depend on which worker took which chunk, so parts are read back in
source order (`seq`), and every patient's rows land in one bucket file per table
(`records.bucket_of`), which is what lets `sample` read one bucket at a time.
Compression and I/O release the GIL, so each lane of buckets gets its own writer thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clinsynth.records import TABLES, bucket_of


def _side_lookups(side: dict[str, pa.Table]) -> tuple[pa.Table, pa.Table]:
    """One diagnosis role per Condition id, one code per Medication id."""
    roles = side["roles"].group_by("cond_id").aggregate([("role", "min")])
    roles = roles.rename_columns(["resource_id", "x_role"])
    meds = (
        side["meds"]
        .group_by("med_id")
        .aggregate([("m_system", "min"), ("m_code", "min"), ("m_display", "min")])
    )
    return roles, meds.rename_columns(["med_ref", "m_system", "m_code", "m_display"])


class _Buckets:
    """Patient id -> bucket, computed once per patient (hashing millions of fact rows one by one
    is slow)."""

    def __init__(self, buckets: int) -> None:
        self.n = buckets
        self.ids = pa.array([], pa.string())
        self.of = np.zeros(0, dtype=np.int32)

    def __call__(self, patient_ids: pa.Array) -> np.ndarray:
        at = pc.index_in(patient_ids, value_set=self.ids)
        if at.null_count:  # a patient first seen here
            found = pc.unique(patient_ids.filter(pc.is_null(at))).to_pylist()
            if None in found:  # the global checks drop rows without a patient
                raise AssertionError("a row without a patient id survived the global checks")
            missing = cast("list[str]", found)
            self.ids = pa.concat_arrays([self.ids, pa.array(missing, pa.string())])
            self.of = np.concatenate([self.of, np.array([bucket_of(p, self.n) for p in missing], np.int32)])
            at = pc.index_in(patient_ids, value_set=self.ids)
        return self.of[at.to_numpy(zero_copy_only=False)]


def write_records(
    parts: Path,
    out: Path,
    keep: pa.Array,
    side: dict[str, pa.Table],
    buckets: int,
    n_seq: int,
    threads: int = 2,
    tag: str = "",
) -> dict[str, int]:
    """Filter each part to the surviving seqs (`keep`), resolve roles and medications, write
    `out/{table}-NNNN.parquet` for every table and bucket (empty ones too); rows per table.
    Each file is written as `.{table}-NNNN.parquet.{tag}.tmp` and renamed: `tag` names the attempt,
    so two attempts writing the same folder never write into one temp file."""
    out.mkdir(parents=True, exist_ok=True)
    roles, meds = _side_lookups(side)
    alive = np.zeros(n_seq, dtype=bool)
    alive[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=np.int64)] = True
    bucket = _Buckets(buckets)
    writers: dict[tuple[str, int], pq.ParquetWriter] = {}
    lanes = [ThreadPoolExecutor(1) for _ in range(max(1, min(threads, buckets)))]
    pending: list[Future[None]] = []
    counts = dict.fromkeys(TABLES, 0)
    try:
        for table, schema in TABLES.items():
            for t in _in_seq_order(sorted(parts.glob(f"*-{table}.parquet"))):
                t = t.filter(pa.array(alive[t["seq"].to_numpy()]))
                if t.num_rows == 0:
                    continue
                if table == "facts":
                    t = _resolve_facts(t, roles, meds)
                b = bucket(t["patient_id"].combine_chunks())
                order = np.argsort(b, kind="stable")
                t = t.take(order).select(schema.names).cast(schema)
                bounds = np.searchsorted(b[order], np.arange(buckets + 1))
                for f in pending:  # at most one batch in flight: bounded memory
                    f.result()
                pending = []
                for bk in range(buckets):
                    lo, hi = int(bounds[bk]), int(bounds[bk + 1])
                    if hi == lo:
                        continue
                    w = writers.get((table, bk))
                    if w is None:
                        tmp = out / f".{table}-{bk:04d}.parquet.{tag or os.getpid()}.tmp"
                        w = writers[(table, bk)] = pq.ParquetWriter(tmp, schema, compression="zstd")
                    # one ordered writer thread per lane: a bucket's batches stay in order
                    pending.append(lanes[bk % len(lanes)].submit(w.write_table, t.slice(lo, hi - lo)))
                    counts[table] += hi - lo
        for f in pending:
            f.result()
    finally:
        for lane in lanes:
            lane.shutdown()
    for table, schema in TABLES.items():
        for bk in range(buckets):
            tmp = out / f".{table}-{bk:04d}.parquet.{tag or os.getpid()}.tmp"
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
            stats = pf.metadata.row_group(i).column(col).statistics  # our writers always write them
            assert stats is not None and stats.has_min_max, f"{f}: row group {i} has no seq statistics"
            groups.append((stats.min, f, i))
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
        pc.and_(pc.equal(t["category"], pa.scalar("diagnosis")), pc.is_null(t["role"])), from_enc, t["role"]
    )
    t = t.set_column(t.schema.get_field_index("role"), "role", role)
    at = pc.index_in(t["med_ref"], value_set=meds["med_ref"].combine_chunks())
    no_code = pc.and_(pc.is_valid(t["med_ref"]), pc.is_null(t["code"]))
    for col, mcol in (("system", "m_system"), ("code", "m_code"), ("display", "m_display")):
        looked_up = meds[mcol].combine_chunks().take(at)
        fill = pc.coalesce(t[col], looked_up) if col == "display" else pc.if_else(no_code, looked_up, t[col])
        t = t.set_column(t.schema.get_field_index(col), col, cast(pa.ChunkedArray, fill))
    return t
