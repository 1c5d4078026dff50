"""verification.jsonl, verification_report.json, stats.json: the verify stage's output (-> dataset).

One verdict per letter (verification.jsonl): spec_id, split, mode, ok, reasons, `facts` (fact id ->
"ok" or its first reason), `use_for_training`, and (added with issue 10) `spans`: fact id ->
[start, end, sentence start, sentence end, section found, cue side] — where the verifier bound the
fact in the letter text (offsets into the NFC-normalised text, start -1 when the fact's name is not
there; section found: the recipe section key whose heading precedes it, or null; cue side: "before",
"after" or null). Reasons start with their kind ("value mismatch", "written as negated",
"untagged", "foreign code", "over-specific code" ...; see clinsynth.letters.verify).
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
    """Letters that passed verification (use_for_training == ok; dataset.include_failed may add the rest)."""
    return {v["spec_id"] for v in read_verdicts(stage_dir) if v["use_for_training"]}
