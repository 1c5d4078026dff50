"""letters/shard-*.jsonl and stats/shard-*.json: the generate stage's output (-> verify, dataset).

Shard i holds the letters of specs i::N in spec order. While a task runs, its letters are
written in atomic chunks under `letters/shard-0000i.parts/` so a relaunch redoes at most one
chunk; `finish_shard` joins them. Every shard's stats file records the shard count, so readers
never guess the sharding from file counts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import atomic_open, read_json, read_jsonl, write_json


class LetterShard:
    """The writer side of one generate task's shard."""

    def __init__(self, stage_dir: Path, shard: int, num_shards: int) -> None:
        self.stage_dir = Path(stage_dir)
        self.shard = shard
        self.num_shards = num_shards
        self.parts = self.stage_dir / "letters" / f"shard-{shard:05d}.parts"
        self.path = self.stage_dir / "letters" / f"shard-{shard:05d}.jsonl"

    def chunk_path(self, chunk: int) -> Path:
        return self.parts / f"chunk-{chunk:06d}.jsonl"

    def missing_chunks(self, n_chunks: int) -> list[int]:
        self.parts.mkdir(parents=True, exist_ok=True)
        return [c for c in range(n_chunks) if not self.chunk_path(c).exists()]

    def write_chunk(self, chunk: int, records: Iterable[dict[str, Any]]) -> None:
        with atomic_open(self.chunk_path(chunk), "wb") as fh:
            for rec in records:
                fh.write(orjson.dumps(rec) + b"\n")

    def finish(self, n_chunks: int, expected: int, stats: dict[str, Any]) -> int:
        """Join the chunks in spec order; the parts go only after the shard file is in place."""
        n = 0
        with atomic_open(self.path, "wb") as fh:
            for c in range(n_chunks):
                data = self.chunk_path(c).read_bytes()
                n += data.count(b"\n")
                fh.write(data)
        if n != expected:
            raise RuntimeError(
                f"shard {self.shard}: {n} letters for {expected} specs; delete {self.parts} and relaunch"
            )
        write_json(stats_path(self.stage_dir, self.shard), {**stats, "num_shards": self.num_shards})
        shutil.rmtree(self.parts, ignore_errors=True)
        return n


def stats_path(stage_dir: Path, shard: int) -> Path:
    return Path(stage_dir) / "stats" / f"shard-{shard:05d}.json"


def shard_stats(stage_dir: Path) -> list[dict[str, Any]]:
    """Every shard's stats, checked to be one complete sharding."""
    stats = [read_json(p) for p in sorted((Path(stage_dir) / "stats").glob("shard-*.json"))]
    counts = {s.get("num_shards") for s in stats}
    if len(counts) != 1 or None in counts:
        raise RuntimeError(f"{stage_dir}/stats: shards disagree on the shard count {counts}; rerun generate")
    n = counts.pop()
    if sorted(s["shard"] for s in stats) != list(range(n)):
        raise RuntimeError(f"{stage_dir}/stats: {len(stats)} of {n} shards are done; rerun generate")
    return stats


def letter_shards(stage_dir: Path) -> list[tuple[int, int, Path]]:
    """(shard, num_shards, path) of every letters shard file, in shard order."""
    stats = shard_stats(stage_dir)
    n = stats[0]["num_shards"]
    return [(s, n, Path(stage_dir) / "letters" / f"shard-{s:05d}.jsonl") for s in range(n)]


def read_letters(path: Path) -> Iterator[dict[str, Any]]:
    return read_jsonl(path)
