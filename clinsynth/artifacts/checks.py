"""Input checks: a stage holds what it reads against what its upstream stage reported.

Every stage checks its inputs before it writes anything. A missing upstream report, a file
that is gone or truncated, or a count that differs from the report stops the stage with an
`UpstreamError` that names the upstream folder, what was expected, what was found and what
to do, instead of quietly producing fewer (or more) outputs than its inputs hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq


class UpstreamError(RuntimeError):
    """A stage's input does not match its upstream stage's report (or the report is missing)."""


def upstream_error(
    stage: str,
    upstream: str,
    folder: Path | str,
    what: str,
    expected: Any,
    found: Any,
) -> UpstreamError:
    """`sample: the ingest stage's output in /runs/stages/ingest/ab12 does not match its report: ...`"""
    return UpstreamError(
        f"{stage}: the {upstream} stage's output in {folder} is incomplete or inconsistent: "
        f"{what}: expected {expected}, found {found}. Nothing was written. Relaunch the same command: "
        f"the launcher reruns what is missing. If the {upstream} stage is already marked done, its "
        f"files changed after it finished: delete {folder} and relaunch to redo it."
    )


def parquet_rows(path: Path, *, stage: str, upstream: str, folder: Path, what: str) -> int:
    """Rows of a Parquet file from its footer (cheap); a missing or truncated file is an UpstreamError."""
    if not path.is_file():
        raise upstream_error(stage, upstream, folder, what, f"the file {path}", "no such file")
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception as exc:  # truncated, not Parquet at all, ...
        raise upstream_error(
            stage, upstream, folder, what, f"a readable Parquet file {path}", f"{type(exc).__name__}: {exc}"
        ) from exc


def count_lines(path: Path) -> int:
    """Non-blank lines of a JSON-lines file (what `read_jsonl` yields)."""
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                n += 1
    return n


def shard_size(total: int, shard: int, num_shards: int) -> int:
    """How many of `total` items shard `shard` of `num_shards` takes (items shard, shard+N, ...)."""
    return len(range(shard, total, num_shards))


def read_report(path: Path, *, stage: str, upstream: str, folder: Path | str, what: str) -> Any:
    """An upstream stage's JSON report; missing or unreadable is an UpstreamError naming it."""
    if not path.is_file():
        raise upstream_error(stage, upstream, folder, what, f"the file {path}", "no such file")
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise upstream_error(stage, upstream, folder, what, f"JSON in {path}", f"unreadable ({exc})") from exc
