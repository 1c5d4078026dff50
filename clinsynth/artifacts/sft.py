"""sft/<split>.jsonl, stats.json, lengths.png: the dataset stage's output (-> train, extraction).

One row per example: {"id": spec_id, "patient_id", "split", "messages": [system, user, assistant],
"n_tokens", "n_prompt", "n_answer"} — token counts with the tokenizer and chat template of
`dataset.model` (the train stage re-tokenises the messages with the same tokenizer; the counts are
for stats and length rules). The assistant content is `clinsynth.training.answer.canonical_answer`
of the letter's gold. stats.json: per split examples, excluded_failed, dropped_too_long, token totals
and length percentiles; the prompt version and the tokenizer name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import atomic_open, read_json

SFT_DIR = "sft"
STATS = "stats.json"
LENGTHS_PNG = "lengths.png"
ROW_KEYS = ("id", "patient_id", "split", "messages", "n_tokens", "n_prompt", "n_answer")


def sft_path(stage_dir: Path, split: str) -> Path:
    return Path(stage_dir) / SFT_DIR / f"{split}.jsonl"


def stats_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / STATS


def write_sft(stage_dir: Path, split: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write one split atomically (the file appears complete or not at all); returns the row count."""
    n = 0
    with atomic_open(sft_path(stage_dir, split), "wb") as fh:
        for row in rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ValueError(f"sft row {row.get('id')!r} lacks {missing}")
            fh.write(orjson.dumps(row) + b"\n")
            n += 1
    return n


def read_sft(stage_dir: Path, split: str) -> Iterator[dict[str, Any]]:
    """Rows of one split; a missing file or a damaged line is an error naming file and line."""
    path = sft_path(stage_dir, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such split file (is {split!r} in dataset.splits? did the stage finish?)"
        )
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not JSON ({exc}); rerun the dataset stage") from exc
            if not isinstance(row, dict) or any(k not in row for k in ROW_KEYS):
                raise ValueError(f"{path}:{line_no}: not an SFT row (needs {', '.join(ROW_KEYS)})")
            yield row


def read_stats(stage_dir: Path) -> dict[str, Any]:
    return dict(read_json(stats_path(stage_dir)))


__all__ = ["LENGTHS_PNG", "ROW_KEYS", "read_sft", "read_stats", "sft_path", "stats_path", "write_sft"]
