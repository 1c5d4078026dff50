"""The extract stage's files besides predictions/ (clinsynth.artifacts.predictions), and its chunks.

    predictions/shard-0000i.jsonl   what the stage delivers (grounded codes when extract.ground)
    ungrounded/shard-0000i.jsonl    extract.ground only: the same records with the codes as extracted
    grounding/shard-0000i.jsonl     extract.ground only: {"doc", "corrections": [...]} per document
    stats/shard-0000i.json          documents, statuses, tokens, seconds, tokens/s of the task

While a task runs, its documents are written in atomic chunks under `parts/shard-0000i/`
(`chunk-000012.size8.jsonl`, the chunk size in the name: it is operational, so a relaunch with
another size ignores chunks cut another way). A relaunch redoes only missing chunks; `finish` joins
them into the shard files and removes the parts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from clinsynth.artifacts.predictions import read_predictions_file, shard_path, write_predictions
from clinsynth.core.atomic import atomic_open, read_json, write_json, write_jsonl

UNGROUNDED = "ungrounded"
GROUNDING = "grounding"
STATS = "stats"


def ungrounded_path(stage_dir: Path, shard: int) -> Path:
    return Path(stage_dir) / UNGROUNDED / f"shard-{shard:05d}.jsonl"


def grounding_path(stage_dir: Path, shard: int) -> Path:
    return Path(stage_dir) / GROUNDING / f"shard-{shard:05d}.jsonl"


def stats_path(stage_dir: Path, shard: int) -> Path:
    return Path(stage_dir) / STATS / f"shard-{shard:05d}.json"


def read_ungrounded(stage_dir: Path) -> Iterator[dict[str, Any]]:
    """The predictions as extracted, before grounding (extract.ground=true only; else none)."""
    for path in sorted((Path(stage_dir) / UNGROUNDED).glob("shard-*.jsonl")):
        yield from read_predictions_file(path)


def read_corrections(stage_dir: Path) -> Iterator[dict[str, Any]]:
    """{"doc", "corrections": [{path, text, before, after, score, reason}]} per grounded document."""
    for path in sorted((Path(stage_dir) / GROUNDING).glob("shard-*.jsonl")):
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def read_stats(stage_dir: Path) -> list[dict[str, Any]]:
    return [read_json(p) for p in sorted((Path(stage_dir) / STATS).glob("shard-*.json"))]


class ChunkStore:
    """The writer side of one extract task: atomic chunks, then the shard files."""

    def __init__(self, stage_dir: Path, shard: int, chunk_size: int) -> None:
        self.stage_dir = Path(stage_dir)
        self.shard = shard
        self.chunk_size = chunk_size
        self.parts = self.stage_dir / "parts" / f"shard-{shard:05d}"

    def chunk_path(self, chunk: int) -> Path:
        return self.parts / f"chunk-{chunk:06d}.size{self.chunk_size}.jsonl"

    def missing(self, n_chunks: int) -> list[int]:
        self.parts.mkdir(parents=True, exist_ok=True)
        return [c for c in range(n_chunks) if not self.chunk_path(c).exists()]

    def write(self, chunk: int, outcomes: list[dict[str, Any]]) -> None:
        """One line per document: {"prediction", "ungrounded", "corrections"}; all or nothing."""
        with atomic_open(self.chunk_path(chunk), "wb") as fh:
            for out in outcomes:
                fh.write(orjson.dumps(out) + b"\n")

    def _outcomes(self, n_chunks: int) -> Iterator[dict[str, Any]]:
        for c in range(n_chunks):
            with open(self.chunk_path(c), "rb") as fh:
                for line in fh:
                    yield orjson.loads(line)

    def finish(self, n_chunks: int, expected: int, stats: dict[str, Any], *, ground: bool) -> None:
        """Join the chunks in document order into the shard files; the parts go last."""
        outcomes = list(self._outcomes(n_chunks))
        if len(outcomes) != expected:
            raise RuntimeError(
                f"extract shard {self.shard}: {len(outcomes)} predictions for {expected} letters; "
                f"delete {self.parts} and relaunch"
            )
        if ground:
            write_predictions(
                ungrounded_path(self.stage_dir, self.shard), [o["ungrounded"] for o in outcomes]
            )
            write_jsonl(
                grounding_path(self.stage_dir, self.shard),
                [{"doc": o["prediction"]["doc"], "corrections": o["corrections"]} for o in outcomes],
            )
        write_predictions(shard_path(self.stage_dir, self.shard), [o["prediction"] for o in outcomes])
        write_json(stats_path(self.stage_dir, self.shard), stats)
        shutil.rmtree(self.parts, ignore_errors=True)


__all__ = [
    "ChunkStore",
    "grounding_path",
    "read_corrections",
    "read_stats",
    "read_ungrounded",
    "stats_path",
    "ungrounded_path",
]
