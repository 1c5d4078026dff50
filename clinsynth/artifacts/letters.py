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

from clinsynth.artifacts.checks import count_lines, shard_size, upstream_error
from clinsynth.core.atomic import atomic_open, read_json, read_jsonl, write_json


class LetterShard:
    """The writer side of one generate task's shard.

    Chunk files carry the chunk size in their name (`chunk-000012.size8.jsonl`): the chunk
    size is operational (not in the stage id), so a relaunch with another one must not take
    chunks cut another way for its own; it ignores them and they go with the parts folder.
    """

    def __init__(self, stage_dir: Path, shard: int, num_shards: int, chunk_size: int = 0) -> None:
        self.stage_dir = Path(stage_dir)
        self.shard = shard
        self.num_shards = num_shards
        self.chunk_size = chunk_size
        self.parts = self.stage_dir / "letters" / f"shard-{shard:05d}.parts"
        self.path = self.stage_dir / "letters" / f"shard-{shard:05d}.jsonl"

    def chunk_path(self, chunk: int) -> Path:
        size = f".size{self.chunk_size}" if self.chunk_size else ""
        return self.parts / f"chunk-{chunk:06d}{size}.jsonl"

    def missing_chunks(self, n_chunks: int) -> list[int]:
        self.parts.mkdir(parents=True, exist_ok=True)
        return [c for c in range(n_chunks) if not self.chunk_path(c).exists()]

    def write_chunk(self, chunk: int, records: Iterable[dict[str, Any]]) -> None:
        """Atomically: a unique temp file per call (mkstemp) renamed onto the chunk's name, so two
        attempts of one shard (a zombie and a relaunch) never write into the same file."""
        with atomic_open(self.chunk_path(chunk), "wb") as fh:
            for rec in records:
                fh.write(orjson.dumps(rec) + b"\n")

    def _finished_elsewhere(self, expected: int) -> bool:
        """Another attempt of this shard joined it (and removed the parts) while this one ran."""
        stats = stats_path(self.stage_dir, self.shard)
        return self.path.is_file() and stats.is_file() and count_lines(self.path) == expected

    def finish(self, n_chunks: int, expected: int, stats: dict[str, Any]) -> int:
        """Join the chunks in spec order; the parts go only after the shard file is in place."""
        n = 0
        try:
            with atomic_open(self.path, "wb") as fh:
                for c in range(n_chunks):
                    data = self.chunk_path(c).read_bytes()
                    n += data.count(b"\n")
                    fh.write(data)
                if n != expected:  # inside the block: no shard file appears
                    raise RuntimeError(
                        f"shard {self.shard}: {n} letters for {expected} specs; "
                        f"delete {self.parts} and relaunch"
                    )
        except FileNotFoundError:
            if self._finished_elsewhere(expected):
                return expected
            raise
        write_json(stats_path(self.stage_dir, self.shard), {**stats, "num_shards": self.num_shards})
        shutil.rmtree(self.parts, ignore_errors=True)
        return n


def stats_path(stage_dir: Path, shard: int) -> Path:
    return Path(stage_dir) / "stats" / f"shard-{shard:05d}.json"


def shard_stats(stage_dir: Path, *, stage: str = "verify") -> list[dict[str, Any]]:
    """Every shard's stats, checked to be one complete sharding: each names the same shard
    count, and shards 0..N-1 are each there exactly once (none missing, none duplicated)."""
    folder = Path(stage_dir) / "stats"
    paths = sorted(folder.glob("shard-*.json"))
    if not paths:
        raise upstream_error(
            stage, "generate", stage_dir, "letter shard stats", f"{folder}/shard-*.json", "none"
        )
    stats: list[dict[str, Any]] = []
    for p in paths:
        try:
            s = read_json(p)
        except Exception as exc:  # truncated, not JSON
            raise upstream_error(
                stage, "generate", stage_dir, "letter shard stats", f"JSON in {p}", f"unreadable ({exc})"
            ) from exc
        if (
            not isinstance(s, dict)
            or not isinstance(s.get("num_shards"), int)
            or not isinstance(s.get("shard"), int)
        ):
            raise upstream_error(
                stage,
                "generate",
                stage_dir,
                f"{p}",
                "'shard' and 'num_shards'",
                "none (an old or damaged file)",
            )
        if p.name != f"shard-{s['shard']:05d}.json":
            raise upstream_error(
                stage, "generate", stage_dir, f"{p}", f"shard {p.stem[6:]}", f"shard {s['shard']}"
            )
        stats.append(s)
    counts = sorted({s["num_shards"] for s in stats})
    if len(counts) != 1:
        raise upstream_error(
            stage,
            "generate",
            stage_dir,
            f"the shard count in {folder}/shard-*.json",
            "one shard count",
            counts,
        )
    n = counts[0]
    got = [s["shard"] for s in stats]
    missing = sorted(set(range(n)) - set(got))
    extra = sorted({g for g in got if g >= n or got.count(g) > 1})
    if missing or extra:
        raise upstream_error(
            stage,
            "generate",
            stage_dir,
            f"letter shards in {folder}",
            f"shards 0..{n - 1} of {n}, each once",
            (f"missing {missing}" if missing else "") + (f" unexpected/duplicated {extra}" if extra else ""),
        )
    return stats


def letter_shards(stage_dir: Path, *, stage: str = "verify") -> list[tuple[int, int, Path]]:
    """(shard, num_shards, path) of every letters shard file, in shard order."""
    stats = shard_stats(stage_dir, stage=stage)
    n = stats[0]["num_shards"]
    return [(s, n, Path(stage_dir) / "letters" / f"shard-{s:05d}.jsonl") for s in range(n)]


def check_letters(stage_dir: Path, total_specs: int, *, stage: str = "verify") -> list[tuple[int, int, Path]]:
    """Hold the letters against the specs before reading them: every shard's stats are there
    (`shard_stats`), shard i's stats count its share of the `total_specs` specs, and its
    letters file has exactly that many lines. Returns `letter_shards`."""
    stats = {s["shard"]: s for s in shard_stats(stage_dir, stage=stage)}
    shards = letter_shards(stage_dir, stage=stage)
    for shard, n, path in shards:
        want = shard_size(total_specs, shard, n)
        said = stats[shard].get("specs")
        if said != want:
            raise upstream_error(
                stage,
                "generate",
                stage_dir,
                f"specs of shard {shard} of {n} in {stats_path(stage_dir, shard)} ({total_specs} in all)",
                want,
                said,
            )
        if not path.is_file():
            raise upstream_error(
                stage, "generate", stage_dir, f"letters of shard {shard}", f"the file {path}", "no such file"
            )
        lines = count_lines(path)
        if lines != want:
            raise upstream_error(
                stage, "generate", stage_dir, f"letters in {path}", f"{want} (one per spec)", lines
            )
    return shards


def read_letters(path: Path) -> Iterator[dict[str, Any]]:
    return read_jsonl(path)
