"""predictions/shard-*.jsonl: the extract stage's output (-> evaluate, export).

One JSON line per document, in the shard's document order:

    {"doc": "spec-000123" | "grascco:Meyr" | "file:<name>",  # what the gold is looked up by
     "source": "synthetic" | "dev" | "external",  # test letters, the six dev letters, extract.letters
     "extractor": "finetuned" | "oneshot" | "rules",
     "status": "ok" | "repaired" | "invalid" | "truncated",    # how the raw output parsed
     "extraction": {... schema v2 ClinicalExtraction ...} | null,   # null exactly when status is invalid
     "raw": "<the model's text>",                              # rules: the extraction as JSON
     "error": null | "<why it did not parse / what was repaired>",
     "tokens": {"prompt": int, "completion": int} | null,
     "seconds": float}

`status`: ok = parsed and schema-valid as generated; repaired = valid after a documented repair (cut
JSON closed, code marks stripped, invalid facts dropped — `error` says which); truncated = the model hit
its token limit (the repaired part, if any, is in `extraction`); invalid = nothing usable
(`extraction` is null). Strict scoring counts an invalid document as an empty prediction; the
study-compatible mode skips it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import orjson

from clinsynth.core.atomic import atomic_open

Status = Literal["ok", "repaired", "invalid", "truncated"]
Source = Literal["synthetic", "dev", "external"]
STATUSES: tuple[str, ...] = ("ok", "repaired", "invalid", "truncated")
SOURCES: tuple[str, ...] = ("synthetic", "dev", "external")
KEYS = ("doc", "source", "extractor", "status", "extraction", "raw", "error", "tokens", "seconds")
#: doc ids of the development letters: "grascco:<Name>"; external letters: "file:<file name>"
DEV_PREFIX = "grascco:"
FILE_PREFIX = "file:"


class PredictionError(ValueError):
    """A predictions line that does not follow the format above (names the file and line)."""


def predictions_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / "predictions"


def shard_path(stage_dir: Path, shard: int) -> Path:
    return predictions_dir(stage_dir) / f"shard-{shard:05d}.jsonl"


def prediction(
    doc: str,
    source: str,
    extractor: str,
    status: str,
    extraction: dict[str, Any] | None,
    raw: str,
    *,
    error: str | None = None,
    tokens: dict[str, int] | None = None,
    seconds: float = 0.0,
) -> dict[str, Any]:
    """One record, checked: the writer never produces a line the readers refuse."""
    rec = {
        "doc": doc,
        "source": source,
        "extractor": extractor,
        "status": status,
        "extraction": extraction,
        "raw": raw,
        "error": error,
        "tokens": tokens,
        "seconds": round(float(seconds), 4),
    }
    check_record(rec, "prediction")
    return rec


def check_record(rec: Any, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise PredictionError(f"{where}: not a JSON object")
    missing = [k for k in KEYS if k not in rec]
    if missing:
        raise PredictionError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(rec["doc"], str) or not rec["doc"]:
        raise PredictionError(f"{where}: doc must be a non-empty string")
    if rec["status"] not in STATUSES:
        raise PredictionError(f"{where}: status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    if rec["source"] not in SOURCES:
        raise PredictionError(f"{where}: source {rec['source']!r} is not one of {', '.join(SOURCES)}")
    if (rec["extraction"] is None) != (rec["status"] == "invalid"):
        raise PredictionError(f"{where}: extraction must be null exactly when status is invalid")
    if rec["extraction"] is not None and not isinstance(rec["extraction"], dict):
        raise PredictionError(f"{where}: extraction must be an object")
    return rec


def write_predictions(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Atomically (temp file + rename): a shard or chunk is there whole or not at all."""
    n = 0
    with atomic_open(Path(path), "wb") as fh:
        for rec in records:
            fh.write(orjson.dumps(rec) + b"\n")
            n += 1
    return n


def read_predictions_file(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one JSONL file (a shard, or any user file of this format); a bad line raises
    PredictionError naming file and line."""
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise PredictionError(f"{where}: not JSON ({exc})") from exc
            yield check_record(rec, where)


def read_predictions(stage_dir: Path) -> Iterator[dict[str, Any]]:
    """Every record of the extract stage folder, shard by shard."""
    folder = predictions_dir(stage_dir)
    shards = sorted(folder.glob("shard-*.jsonl"))
    if not shards:
        raise PredictionError(f"{folder}: no predictions/shard-*.jsonl; run the extract stage first")
    for path in shards:
        yield from read_predictions_file(path)
