"""specs/specs.parquet: one row per letter recipe (sample -> generate, verify, dataset).

Rows are in spec order (patients sorted, stays by date); array tasks take rows i::N.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from clinsynth.artifacts.checks import parquet_rows, read_report, shard_size, upstream_error
from clinsynth.core.atomic import atomic_path, write_json

_SPECS_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("spec_id", pa.string()),
    ("patient_id", pa.string()),
    ("encounter_id", pa.string()),
    ("split", pa.string()),
    ("letter_type", pa.string()),
    ("n_facts", pa.int32()),
    ("recipe", pa.string()),  # JSON: clinsynth.sampling.recipe.Recipe
    ("gold", pa.string()),  # JSON: clinsynth.schema.ClinicalExtraction
]
SPECS = pa.schema(_SPECS_COLUMNS)


#: the sample stage's report: `specs` (rows of specs.parquet), `patients`, counts, errors
SAMPLE_REPORT = "sample_report.json"


def specs_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / "specs" / "specs.parquet"


def sample_report_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / SAMPLE_REPORT


def write_sample_report(stage_dir: Path, report: dict[str, Any]) -> None:
    write_json(sample_report_path(stage_dir), report)


def read_sample_report(stage_dir: Path, *, stage: str) -> dict[str, Any]:
    """The sample stage's report; missing, unreadable or without a spec count is an UpstreamError."""
    path = sample_report_path(stage_dir)
    report = read_report(path, stage=stage, upstream="sample", folder=stage_dir, what="the sample report")
    if not isinstance(report, dict) or not isinstance(report.get("specs"), int):
        raise upstream_error(stage, "sample", stage_dir, str(path), "a spec count ('specs')", "none")
    return dict(report)


def check_specs(stage_dir: Path, *, stage: str) -> int:
    """Hold specs.parquet against the sample report before reading it; return the spec count."""
    expected = int(read_sample_report(stage_dir, stage=stage)["specs"])
    path = specs_path(stage_dir)
    found = parquet_rows(path, stage=stage, upstream="sample", folder=stage_dir, what="the specs")
    if found != expected:
        raise upstream_error(
            stage,
            "sample",
            stage_dir,
            f"specs in {path} vs {sample_report_path(stage_dir)}",
            f"{expected} spec(s)",
            f"{found}",
        )
    return expected


def check_shard_recipes(
    stage_dir: Path, recipes: list[str], total: int, shard: int, num_shards: int, *, stage: str
) -> None:
    """A shard's recipes (`shard_recipes`) are exactly its share of the `total` specs."""
    expected = shard_size(total, shard, num_shards)
    if len(recipes) != expected:
        raise upstream_error(
            stage,
            "sample",
            stage_dir,
            f"recipes of shard {shard} of {num_shards} in {specs_path(stage_dir)} ({total} specs in all)",
            f"{expected}",
            f"{len(recipes)}",
        )


class SpecsWriter:
    """Buffers rows and writes them in row groups; the file appears only when closed cleanly."""

    def __init__(self, writer: pq.ParquetWriter, flush_rows: int = 2000) -> None:
        self._writer = writer
        self._rows: list[dict[str, Any]] = []
        self._flush_rows = flush_rows
        self.written = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SPECS))
            self.written += len(self._rows)
            self._rows = []


@contextmanager
def write_specs(stage_dir: Path) -> Iterator[SpecsWriter]:
    with atomic_path(specs_path(stage_dir)) as tmp:
        pw = pq.ParquetWriter(tmp, SPECS, compression="zstd")
        writer = SpecsWriter(pw)
        try:
            yield writer
            writer.flush()
        finally:
            pw.close()


def read_specs(stage_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """All specs of a sample stage folder, in spec order."""
    path = specs_path(stage_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no specs; is the sample stage done?")
    return pq.read_table(path, columns=columns)


def spec_ids(stage_dir: Path) -> list[str]:
    # to_pylist() allows nulls; the sample stage writes every spec_id
    return cast(list[str], read_specs(stage_dir, columns=["spec_id"]).column("spec_id").to_pylist())


def iter_specs(stage_dir: Path, columns: list[str], batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Spec rows (only `columns`) in spec order, streamed by batches: at paper scale the gold and recipe
    columns do not fit in memory at once."""
    pf = pq.ParquetFile(specs_path(stage_dir))
    for batch in pf.iter_batches(columns=columns, batch_size=batch_size):
        yield from batch.to_pylist()


def shard_recipes(stage_dir: Path, shard: int, num_shards: int, batch_size: int = 4096) -> list[str]:
    """Recipe JSON of specs shard, shard+N, ... (the order of ctx.items), streamed by batches.

    Only this shard's recipes are held: at paper scale all of them are ~700 MB of JSON.
    """
    out: list[str] = []
    start = 0
    pf = pq.ParquetFile(specs_path(stage_dir))
    for batch in pf.iter_batches(columns=["recipe"], batch_size=batch_size):
        col = batch.column(0)
        first = (shard - start) % num_shards
        if first < len(col):
            # to_pylist() allows nulls; the sample stage writes every recipe
            out += cast(list[str], col.slice(first).to_pylist()[::num_shards])
        start += len(col)
    return out
