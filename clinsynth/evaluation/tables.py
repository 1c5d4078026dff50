"""The evaluate stage's tracker tables: per-category metrics always (numbers, under fixed source, mode and
category labels); the errors only with tracking.log_samples, as they hold extracted values (gold and
predicted codes, names, descriptions), which are patient-like data. Letter text never goes out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.tracking import Tracker
from clinsynth.evaluation.items import CATEGORIES
from clinsynth.evaluation.pigeon import PIGEON_REPORT

METRICS_TABLE = "evaluate/metrics"
ERRORS_TABLE = "evaluate/errors"
METRIC_COLUMNS = (
    "source", "mode", "category", "precision", "recall", "f1", "f1_low", "f1_high", "macro_f1",
    "gold", "pred",
)  # fmt: skip
ERROR_COLUMNS = ("doc", "source", "status", "category", "kind", "key", "assertion")
#: a W&B table this long is already hard to browse; errors.jsonl in the stage folder has every line
MAX_ERROR_ROWS = 20_000


def metrics_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """One row per source, mode and category: numbers only (None where undefined)."""
    rows: list[list[Any]] = []
    for source, m in metrics["sources"].items():
        for c in CATEGORIES:
            r = m["strict"].get(c.name)
            if r:
                lo, hi = r["f1_ci"]
                rows.append([source, "strict", c.name, r["precision"], r["recall"], r["f1"], lo, hi,
                             r["macro_f1"], r["gold"], r["pred"]])  # fmt: skip
        for name in PIGEON_REPORT:
            r = m["pigeon_compat"].get(name)
            if not r:
                continue
            if "accuracy" in r:  # the introduction fields: a share of equal fields (in the f1 column)
                p, rc, f1, (lo, hi) = None, None, r["accuracy"], r["accuracy_ci"]
            else:
                p, rc, f1, (lo, hi) = r["precision"], r["recall"], r["f1"], r["f1_ci"]
            rows.append([source, "pigeon_compat", name, p, rc, f1, lo, hi, None, None, None])
    return rows


def error_rows(errors_path: Path) -> Iterator[list[Any]]:
    """errors.jsonl flattened: one row per missed, spurious or assertion-confused item."""
    with open(errors_path, "rb") as fh:
        for line in fh:
            e = orjson.loads(line)
            head = [e["doc"], e["source"], e["status"], e["category"]]
            for kind in ("missed", "spurious"):
                for item in e.get(kind, ()):
                    yield [*head, kind, item["key"], item["assertion"]]
            for item in e.get("assertion", ()):
                yield [*head, "assertion", item["key"], f"{item['gold']} -> {item['pred']}"]


def log_tables(
    tracker: Tracker, metrics: Mapping[str, Any], errors_path: Path, logger: logging.Logger
) -> None:
    """The metrics table; the errors table only when the tracker may receive samples."""
    tracker.table(METRICS_TABLE, METRIC_COLUMNS, metrics_rows(metrics))
    if not tracker.log_samples:
        return
    rows: list[list[Any]] = []
    total = 0
    for row in error_rows(errors_path):
        total += 1
        if len(rows) < MAX_ERROR_ROWS:
            rows.append(row)
    tracker.table(ERRORS_TABLE, ERROR_COLUMNS, rows)
    if total > len(rows):
        logger.info("errors table: the first %d of %d rows (all in %s)", len(rows), total, errors_path)
