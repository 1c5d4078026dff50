"""What one worker holds and does per chunk: results -> its own row parts + a compact index.

A `Worker` is created in the process that runs it (see `pool.py`) and owns everything
that process learns: a `Processor` (validator shapes, extraction plans) and its Parquet
part writers. Rows never travel between processes: a chunk returns only its index batch,
its quarantine entries and two small side tables.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clinsynth.ingest.index import INDEX, KIND, PART_SCHEMAS, SIDE, ymd
from clinsynth.ingest.options import Options
from clinsynth.ingest.process import UNFORESEEN, Processor, Result
from clinsynth.ingest.sources import Item

#: what a chunk hands back: index batch, quarantine entries, side tables
ChunkResult = tuple[pa.RecordBatch, list[dict[str, Any]], dict[str, pa.Table]]


@functools.cache
def _getter(schema: pa.Schema) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return operator.itemgetter(*schema.names)


def _transpose(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(typ):
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, typ)


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    # tuples via itemgetter, transposed, then Arrow: ~4x faster than Table.from_pylist on dict rows
    get = _getter(schema)  # once: hashing a pa.Schema per row cost more than the rest
    cols = _transpose([get(r) for r in rows], len(schema))
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
    )


def _entry(seq: int, r: Any, reason: str, detail: str | None, exception: str | None) -> dict[str, Any]:
    """A quarantine entry (`seq` ties it to the source order; the pipeline drops it when writing)."""
    return {
        "seq": seq,
        "source": r.source,
        "line": r.line,
        "location": r.location,
        "resource_type": r.resource_type,
        "id": r.resource_id,
        "reason": reason,
        "detail": detail,
        "exception": exception,
    }


def _key(rt: str | None, rid: str | None) -> int | None:
    return None if rid is None else hash((rt, rid))


class Worker:
    """Writes the rows of the resources it accepts to its own Parquet parts (no pickling of rows)."""

    def __init__(self, parts: Path, name: str, options: Options) -> None:
        self.processor = Processor(options)
        self.parts, self.name = parts, name
        self.writers: dict[str, pq.ParquetWriter] = {}

    def _write(self, table: str, rows: list[dict[str, Any]], schema: pa.Schema) -> dict[int, BaseException]:
        """Append rows to this worker's part of `table`; the rows Arrow refuses are left out and
        returned (seq -> exception), so one odd value never costs the chunk."""
        if not rows:
            return {}
        failed: dict[int, BaseException] = {}
        try:
            t = _table(rows, schema)
        except Exception:  # find the culprits row by row (rare: slow is fine)
            keep = []
            for r in rows:
                try:
                    _table([r], schema)
                    keep.append(r)
                except Exception as exc:
                    failed[r["seq"]] = exc
            keep = [r for r in keep if r["seq"] not in failed]  # a resource's rows go together
            if not keep:
                return failed
            t = _table(keep, schema)
        w = self.writers.get(table)
        if w is None:
            w = pq.ParquetWriter(self.parts / f"{self.name}-{table}.parquet", schema, compression="zstd")
            self.writers[table] = w
        w.write_table(t)
        return failed

    def chunk(self, seq0: int, items: list[Item]) -> ChunkResult:
        """Process `items` (source positions seq0, seq0+1, ...); write their rows, return the rest."""
        rows: dict[str, list[dict[str, Any]]] = {k: [] for k in (*PART_SCHEMAS, *SIDE)}
        idx: list[tuple[Any, ...]] = []
        bad: list[dict[str, Any]] = []
        for k, r in enumerate(self.processor.process(items)):
            seq = seq0 + k
            if r.reason:
                bad.append(_entry(seq, r, r.reason, r.detail, r.exception))
                continue
            try:
                self._rows(seq, r, rows, idx)
            except Exception as exc:  # one odd record never costs its chunk
                detail = f"write: {type(exc).__name__}: {str(exc)[:300]} ({UNFORESEEN})"
                bad.append(_entry(seq, r, "internal_error", detail, type(exc).__name__))
        failed: dict[int, BaseException] = {}
        for table, schema in PART_SCHEMAS.items():
            failed |= self._write(table, rows[table], schema)
        if failed:  # rows Arrow refused: out of the index, into the quarantine
            for t in idx:
                if t[0] in failed:
                    err = failed[t[0]]
                    r = Result(t[13], t[14], t[15], t[1], t[2])
                    detail = f"write: {type(err).__name__}: {str(err)[:300]} (a value a record cannot hold)"
                    bad.append(_entry(t[0], r, "internal_error", detail, type(err).__name__))
            idx = [t for t in idx if t[0] not in failed]
        side = {k: pa.Table.from_pylist(rows[k], schema=SIDE[k]) for k in SIDE}
        batch = pa.RecordBatch.from_arrays(
            [_column(list(col), f.type) for col, f in zip(_transpose(idx, len(INDEX)), INDEX, strict=True)],
            schema=INDEX,
        )
        return batch, bad, side

    def _rows(
        self, seq: int, r: Result, rows: dict[str, list[dict[str, Any]]], idx: list[tuple[Any, ...]]
    ) -> None:
        """One accepted resource: its rows into `rows`, its index tuple into `idx` — all computed
        first, then appended, so that an exception leaves nothing half added."""
        ex = r.extracted
        assert ex is not None
        first = last = birth = death = None
        for _, d in ex.dates:
            if len(d) >= 10:  # a full date pads to itself: parse once
                hi = lo = int(d[:4]) * 10000 + int(d[5:7]) * 100 + int(d[8:10])
            else:
                hi, lo = ymd(d, True), ymd(d, False)
            if first is None or hi < first:
                first = hi
            if last is None or lo > last:
                last = lo
        src = f"{r.source}:{r.line}" if r.line else f"{r.source} {r.location or ''}".strip()
        kind = ex.kind
        if kind == "facts":
            for row in ex.rows:
                if row["extra"] is not None and not isinstance(row["extra"], str):
                    row["extra"] = orjson.dumps(row["extra"]).decode()
                row["patient_id"], row["encounter_id"], row["source"] = (
                    ex.patient_ref,
                    ex.encounter_ref,
                    src,
                )
                row["seq"], row["med_ref"] = seq, ex.medication_ref
            add: list[tuple[str, list[dict[str, Any]]]] = [("facts", ex.rows)]
        elif kind == "patient":
            row = ex.rows[0]
            born, died = row["birth_date"], row["deceased_date"]
            birth, death = ymd(born, False) if born else None, ymd(died, True) if died else None
            first = last = None  # a patient's own dates bound the others
            add = [("patients", [{**row, "source": src, "seq": seq}])]
        elif kind == "encounter":
            add = [
                ("encounters", [{**ex.rows[0], "patient_id": ex.patient_ref, "source": src, "seq": seq}]),
                ("roles", [{"cond_id": c, "role": role} for c, role in ex.diagnosis_roles]),
            ]
        elif kind == "medication":
            m = ex.medication or (None, None, None)
            add = [("meds", [{"med_id": r.resource_id, "m_system": m[0], "m_code": m[1], "m_display": m[2]}])]
        else:
            add = []
        entry = (
            seq,
            r.resource_type,
            r.resource_id,
            _key(r.resource_type, r.resource_id),
            r.digest - (1 << 63),
            KIND[kind],
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
        for table, new in add:
            rows[table] += new
        idx.append(entry)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
