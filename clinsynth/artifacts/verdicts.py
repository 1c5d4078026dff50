"""verification.jsonl, verification_report.json, stats.json: the verify stage's output (-> dataset).

One verdict per letter: ok, reasons, per-fact results and `use_for_training`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinsynth.core.atomic import read_json, read_jsonl

VERDICTS = "verification.jsonl"
REPORT = "verification_report.json"
STATS = "stats.json"


def verdicts_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / VERDICTS


def report_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / REPORT


def read_verdicts(stage_dir: Path) -> Iterator[dict[str, Any]]:
    return read_jsonl(verdicts_path(stage_dir))


def read_report(stage_dir: Path) -> dict[str, Any]:
    return dict(read_json(report_path(stage_dir)))


def training_spec_ids(stage_dir: Path) -> set[str]:
    """Letters the verifier lets into training (failing ones only with verify.include_failed)."""
    return {v["spec_id"] for v in read_verdicts(stage_dir) if v["use_for_training"]}
