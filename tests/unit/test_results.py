"""`python -m launch summary` (launchers/results.py) over run folders laid out as launches leave them,
with metrics.json written by the real evaluation; and the W&B sweep run's report (launchers/wandb_sweep.py)
into an offline W&B run, read back from its .wandb file."""

from __future__ import annotations

import csv
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinsynth.core.atomic import write_json
from clinsynth.evaluation.docs import DocSet, validated
from clinsynth.evaluation.report import evaluate
from clinsynth.evaluation.scorer import ScoreSettings
from clinsynth.terminology import load_catalog
from launchers.cli import main as cli
from launchers.folders import link_stage, stage_folder
from launchers.results import MISSING, STUDY_CATEGORIES, find_runs, summarize, x_axis
from launchers.wandb_sweep import SWEEP_VARS, SweepRun

GOLD = {
    "diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20"}, {"text": "Hypertonie", "icd10gm": "I10"}],
    "medications": [{"name": "Pantoprazol", "atc": "A02BC02"}],
}
PRED = {"diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20"}], "medications": [{"name": "Ibuprofen"}]}


def _stage(runs: Path, name: str, sid: str, files: dict[str, Any], done: bool = True) -> Path:
    folder = stage_folder(runs, name, sid).create()
    for rel, content in files.items():
        path = folder.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            write_json(path, content)
    if done:
        folder.done_marker.touch()
    return folder.path


def _run(runs: Path, run_id: str, r: int, stages: dict[str, Path], cluster: str = "local") -> Path:
    run_dir = runs / "smoke" / run_id
    run_dir.mkdir(parents=True)
    plain = {
        "name": "smoke",
        "seed": 0,
        "train": {"lora": {"r": r, "alpha": 16}},
        "cluster": {"executor": cluster},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(plain))
    (run_dir / "delta.yaml").write_text(yaml.safe_dump({"train.lora.r": r}))
    for name, path in stages.items():
        from launchers.folders import StageFolder

        link_stage(run_dir, name, StageFolder(path))
    return run_dir


@pytest.fixture(scope="module")
def metrics_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """metrics.json as the evaluate stage writes it (real scorer): 2 synthetic letters, 1 dev letter."""
    docs = DocSet()
    docs.add("spec-1", "synthetic", validated(GOLD), validated(PRED), "ok")
    docs.add("spec-2", "synthetic", validated(GOLD), validated(GOLD), "repaired")
    docs.add("grascco:A", "dev", validated(GOLD), None, "invalid")
    out = tmp_path_factory.mktemp("evaluate")
    evaluate(docs, out, ScoreSettings(resamples=50), load_catalog(), plots=False)
    return out / "metrics.json"


@pytest.fixture
def runs(tmp_path: Path, metrics_json: Path) -> tuple[Path, Path, Path]:
    """Two points of a LoRA-rank sweep sharing verify; r=8's evaluate folder is not done."""
    root = tmp_path / "runs"
    verify = _stage(
        root, "verify", "v1", {"verification_report.json": {"letters": 4, "passed": 3, "pass_rate": 0.75}}
    )
    trains = {}
    for r, sid, losses in ((4, "t4", [2.0, 1.5, 1.7]), (8, "t8", [2.2, 1.2, 1.3])):
        report = {"steps": 3, "final_loss": losses[-1], "tokens_per_s_useful": 100.0 + r}
        lines = "".join(f'{{"step": {i + 1}, "train/loss": {v}}}\n' for i, v in enumerate(losses))
        trains[r] = _stage(root, "train", sid, {"train_report.json": report, "metrics.jsonl": lines})
    extract = _stage(
        root, "extract", "e4",
        {"stats/shard-00000.json": {"statuses": {"ok": 2, "invalid": 1}},
         "stats/shard-00001.json": {"statuses": {"ok": 1, "repaired": 1}},
         "predictions/shard-00000.jsonl": ""},
    )  # fmt: skip
    ev4 = _stage(root, "evaluate", "m4", {"metrics.json": metrics_json.read_text()})
    ev8 = _stage(root, "evaluate", "m8", {}, done=False)
    a = _run(root, "zzzz", 4, {"verify": verify, "train": trains[4], "extract": extract, "evaluate": ev4})
    b = _run(root, "bbbb", 8, {"verify": verify, "train": trains[8], "evaluate": ev8}, cluster="slurm")
    return root, a, b


def test_summary_tables_the_swept_key_and_headline_metrics(
    runs: tuple[Path, Path, Path], metrics_json: Path
) -> None:
    root, a, b = runs
    assert find_runs([root]) == [b.resolve(), a.resolve()]  # stages/ is not searched for runs
    assert find_runs([a]) == [a.resolve()]
    s = summarize(find_runs([root]))
    assert s.keys == ["train.lora.r"]  # cluster differs too, but it is operational
    ra, rb = s.rows  # sorted by the swept key, not by run id
    assert (ra.metrics["train/final_loss"], ra.metrics["train/min_loss"], ra.metrics["train/steps"]) == (
        1.7,
        1.5,
        3,
    )
    assert (
        rb.metrics["train/min_loss"] == 1.2
        and ra.metrics["verify/pass_rate"] == rb.metrics["verify/pass_rate"]
    )
    assert {k: ra.metrics[f"extract/{k}"] for k in ("ok", "repaired", "truncated", "invalid")} == {
        "ok": 3, "repaired": 1, "truncated": 0, "invalid": 1,
    }  # fmt: skip
    m = yaml.safe_load(metrics_json.read_text())  # JSON is YAML
    strict = m["sources"]["synthetic"]["strict"]
    tp, fp, fn = (sum(strict[c][k] for c in STUDY_CATEGORIES) for k in ("tp", "fp", "fn"))
    assert tp and ra.metrics["evaluate/synthetic/strict_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    pg = m["sources"]["synthetic"]["pigeon_compat"]
    mean = sum(pg[c]["f1"] for c in STUDY_CATEGORIES) / len(STUDY_CATEGORIES)
    assert ra.metrics["evaluate/synthetic/pigeon_f1"] == pytest.approx(mean)
    assert ra.metrics["evaluate/dev/strict_f1"] == 0.0  # the dev letter's prediction was invalid
    assert not any(k.startswith(("evaluate/", "extract/")) for k in rb.metrics)  # not done / not there
    assert (ra.stages_done, ra.stages, rb.stages_done, rb.stages) == (4, 4, 2, 3)
    assert x_axis(s) == ("train.lora.r", [4, 8], True)


def test_summary_command_prints_and_writes_csv_and_png(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, a, _ = runs
    assert cli(["summary", str(root / "smoke")]) == 0
    out = capsys.readouterr().out
    assert "smoke/zzzz" in out and "smoke/bbbb" in out and "train.lora.r" in out and MISSING in out
    assert f"wrote {root / 'smoke' / 'summary.csv'}" in out  # default: the runs' common parent
    with open(root / "smoke" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["train.lora.r"] for r in rows] == ["4", "8"]
    assert rows[0]["evaluate/synthetic/strict_f1"] and rows[1]["evaluate/synthetic/strict_f1"] == ""
    assert rows[1]["stages_done"] == "2/3"
    png = (root / "smoke" / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert oct(os.stat(root / "smoke" / "summary.csv").st_mode & 0o777) == "0o600"
    assert cli(["summary", str(a), f"out={root / 'elsewhere'}"]) == 0
    assert (root / "elsewhere" / "summary.png").is_file()


def test_summary_errors_say_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["summary"]) == 2
    assert "no SWEEP_OR_RUN_FOLDER" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["summary", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "neither a run folder" in err and "usage: python -m launch summary" in err
    assert cli(["summary", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


# ---- the W&B sweep run
def _records(path: Path) -> list[Any]:
    """The protobuf records of an offline .wandb file (a LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and n == 0:
            pos += left - 7
            continue
        buf, pos = buf + data[pos : pos + n], pos + n
        if kind in (1, 4):  # full or last fragment
            rec = pb.Record()  # type: ignore[attr-defined]  # generated protobuf module, no stubs
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def offline_sweep_run(wandb_dir: Path, run_id: str) -> tuple[Any, dict[str, Any]]:
    """The run record and the last summary values of the offline run `run_id` under `wandb_dir`."""
    import json

    files = list(wandb_dir.rglob(f"run-{run_id}.wandb"))
    assert len(files) == 1, files
    recs = _records(files[0])
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    summary: dict[str, Any] = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                key = u.key or "/".join(u.nested_key)
                summary[key] = json.loads(u.value_json)
    return run, summary


def sweep_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_id: str, params: dict[str, Any]) -> Path:
    """What `wandb agent` sets for its program, offline."""
    param_path = tmp_path / "sweep-params.yaml"
    param_path.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
    wandb_dir = tmp_path / "wandb-sweep"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep01")
    monkeypatch.setenv("WANDB_RUN_ID", run_id)
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_path))
    return wandb_dir


def test_sweep_run_gets_the_points_metrics_and_tasks_never_see_the_sweep(
    runs: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from launchers.summary import console_for

    _, a, b = runs
    wandb_dir = sweep_env(monkeypatch, tmp_path, "pointa", {"train.lora.r": 4})
    sweep = SweepRun.take_from_env()
    assert sweep is not None and sweep.run_id == "pointa"
    assert not any(v in os.environ for v in SWEEP_VARS)  # a task started now inherits none of them
    assert sweep.report([a], console_for()) is True
    run, summary = offline_sweep_run(wandb_dir, "pointa")
    assert (run.run_id, run.sweep_id) == ("pointa", "sweep01")
    config = {u.key: u.value_json for u in run.config.update}
    assert config["train.lora.r"] == "4" and config["clinsynth/run_id"] == '"zzzz"'
    expected = summarize([a]).rows[0].metrics
    assert summary["evaluate/synthetic/strict_f1"] == pytest.approx(expected["evaluate/synthetic/strict_f1"])
    assert summary["train/final_loss"] == 1.7 and summary["clinsynth/stages_done"] == 4
    assert "reported evaluate/synthetic/strict_f1" in capsys.readouterr().out

    # a point that is not complete reports what there is and fails, so the agent marks the run failed
    (tmp_path / "b").mkdir()
    sweep_env(monkeypatch, tmp_path / "b", "pointb", {"train.lora.r": 8})
    sweep_b = SweepRun.take_from_env()
    assert sweep_b is not None and sweep_b.report([b], console_for()) is False
    _, summary_b = offline_sweep_run(tmp_path / "b" / "wandb-sweep", "pointb")
    assert summary_b["train/final_loss"] == 1.3 and "evaluate/synthetic/strict_f1" not in summary_b
    assert "2 of 3 stages" in capsys.readouterr().out
    assert SweepRun.take_from_env() is None  # outside a sweep: nothing to do
