"""The evaluate stage's tracker tables: the per-category metrics table always (numbers under fixed
labels), the errors table (extracted values) only with tracking.log_samples; letter text never. Checked
on a real offline W&B run: every byte it wrote is searched."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from clinsynth.core.tracking import WandbTracker
from clinsynth.evaluation.docs import DocSet, validated
from clinsynth.evaluation.items import CATEGORIES
from clinsynth.evaluation.pigeon import PIGEON_REPORT
from clinsynth.evaluation.report import ERRORS, evaluate
from clinsynth.evaluation.scorer import ScoreSettings
from clinsynth.evaluation.tables import ERRORS_TABLE, METRIC_COLUMNS, METRICS_TABLE, log_tables
from clinsynth.terminology import load_catalog

LETTER = "Frau Sonnenschein kam bei Nieselregen mit dem Fahrrad in die Ambulanz"
#: a predicted procedure description that matches no gold: it lands in errors.jsonl as a spurious key
SPURIOUS = "Quarzglasbeschichtung des Ohrlaeppchens"


class Recorder:
    def __init__(self, log_samples: bool) -> None:
        self.log_samples = log_samples
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}

    def table(self, name: str, columns: Any, rows: Any) -> None:
        self.tables[name] = (list(columns), [list(r) for r in rows])


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    gold = validated({"diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20"}],
                      "procedures": [{"text": "Rektumresektion", "ops": "5-484.55"}]})  # fmt: skip
    pred = validated({"diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20"}],
                      "procedures": [{"text": SPURIOUS, "ops": "5-484.55"}]})  # fmt: skip
    docs = DocSet()
    docs.add("spec-1", "synthetic", gold, pred, "ok", f"{LETTER}. Rektumkarzinom C20.")
    docs.add("spec-2", "synthetic", gold, gold, "ok", LETTER)
    out = tmp_path_factory.mktemp("scored")
    metrics = evaluate(docs, out, ScoreSettings(resamples=20), load_catalog(), plots=False)
    assert SPURIOUS.lower() in (out / ERRORS).read_text(encoding="utf-8")  # the value the check looks for
    return metrics, out


def test_metrics_table_always_errors_table_only_with_log_samples(scored: tuple[dict[str, Any], Path]) -> None:
    metrics, out = scored
    labels = {"synthetic", "strict", "pigeon_compat", *(c.name for c in CATEGORIES), *PIGEON_REPORT}
    quiet = Recorder(log_samples=False)
    log_tables(quiet, metrics, out / ERRORS, logging.getLogger("test"))
    assert set(quiet.tables) == {METRICS_TABLE}
    columns, rows = quiet.tables[METRICS_TABLE]
    assert columns == list(METRIC_COLUMNS) and rows
    for row in rows:
        assert all(v in labels for v in row[:3])
        assert all(v is None or isinstance(v, (int, float)) for v in row[3:])
    f1 = {(r[1], r[2]): r[5] for r in rows}
    assert f1[("strict", "icd10gm")] == metrics["sources"]["synthetic"]["strict"]["icd10gm"]["f1"] == 1.0
    loud = Recorder(log_samples=True)
    log_tables(loud, metrics, out / ERRORS, logging.getLogger("test"))
    columns, rows = loud.tables[ERRORS_TABLE]
    errors = [dict(zip(columns, r, strict=True)) for r in rows]
    assert {"doc": "spec-1", "kind": "spurious", "category": "procedure_text"}.items() <= next(
        e for e in errors if e["key"] == SPURIOUS.lower()
    ).items()
    assert not any(LETTER in json.dumps(r) for r in rows)  # extracted values, never the letter


def test_offline_wandb_run_holds_no_extracted_value_or_letter_text_without_log_samples(
    scored: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    metrics, out = scored
    tracker = WandbTracker(run_id="evaluate-tables", name="evaluate", group="test", project="clinsynth-test",
                           mode="offline", directory=tmp_path, config={}, log_samples=False)  # fmt: skip
    log_tables(tracker, metrics, out / ERRORS, logging.getLogger("test"))
    tracker.finish()
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    tables = list(tmp_path.rglob("*.table.json"))
    assert len(tables) == 1 and b"procedure_text" in tables[0].read_bytes()  # the metrics table went out
    for text in (SPURIOUS, SPURIOUS.lower(), "rektumresektion", LETTER, "Sonnenschein"):
        assert text.encode() not in written, f"{text!r} reached the W&B run"
