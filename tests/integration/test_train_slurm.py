"""The train stage on the real test Slurm cluster (slurm/up.sh: 2 emulated nodes): 2 nodes x 1 rank,
gloo, DeepSpeed ZeRO-2 on CPU (resources/train=cpu_2node, train/deepspeed=zero2).

The upstream stages (cohort .. dataset) run once on the local executor; the runs folder is then copied,
so the Slurm run and the uninterrupted local reference train on the same examples. After
`scancel --signal=USR2` in the middle the job checkpoints at its next step end, requeues itself and
finishes. Checks: both attempts on both ranks, one job; every logged loss equals the reference's within
1e-5 relative (same ranks, same gloo reductions, fp32: bit-identical in practice); the examples of every
step (so each example's count) are the reference's. No wall-clock limits: waits end when the run is done
or nothing of it is left in Slurm's queue. CI sets CLINSYNTH_REQUIRE_SLURM=1 (a missing cluster fails).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clinsynth.core.atomic import read_json
from launchers.folders import StageFolder
from launchers.submit import LaunchResult, launch
from launchers.waiting import wait_for
from tests.helpers import TINY_TRAIN

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

COMMON = [
    *TINY_TRAIN,
    "train/deepspeed=zero2",
    "train.max_steps=8",  # the USR2 comes after step 2: 6 steps of margin before the end
    "train.effective_batch=2",
    "train.per_device_batch=1",
    "train.lr=1.0e-2",
    "train.save_steps=3",
    "resources/train=cpu_2node",
]


def _metrics_steps(folder: StageFolder) -> int:
    path = folder.path / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _statuses(folder: StageFolder, unit: int) -> list[str]:
    path = folder.task_record_path(unit)
    return [a["status"] for a in read_json(path)["attempts"]] if path.exists() else []


def _wait_until(predicate: Callable[[], bool], what: str, poll_s: float = 0.5) -> None:
    while not predicate():
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
        if not out.strip() and not predicate():
            raise AssertionError(f"jobs ended before {what}")
        time.sleep(poll_s)


def _task_id(result: LaunchResult, stage: str, unit: int) -> str:
    for rec in result.plan.stage(stage).folder.jobs():
        if unit in rec["units"]:
            return str(rec["task_ids"][rec["units"].index(unit)])
    raise AssertionError(f"{stage} unit {unit} was never submitted")


def test_train_on_two_nodes_stops_on_usr2_requeues_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip(
        "deepspeed", reason="train/deepspeed=zero2 needs deepspeed (pip install -e '.[train]')"
    )
    from clinsynth.training.trainer import read_metrics, seen_by_step

    slurm_runs, local_runs = tmp_path / "slurm", tmp_path / "local"
    upstream = launch([*COMMON, "pipeline=[dataset]", "cluster=local", f"paths.runs={slurm_runs}"])
    assert wait_for(upstream, poll_s=1.0)
    shutil.copytree(slurm_runs, local_runs, symlinks=True)

    result = launch([*COMMON, "cluster=slurm", f"paths.runs={slurm_runs}"])
    assert result.submitted == {"train": [0, 1]}  # the upstream stages are done: only train runs
    folder = result.plan.stage("train").folder
    _wait_until(lambda: _metrics_steps(folder) >= 2, "the ranks made 2 steps")
    subprocess.run(["scancel", "--signal=USR2", _task_id(result, "train", 0)], check=True)
    _wait_until(lambda: "requeued" in _statuses(folder, 0), "rank 0 requeued the job")
    reference = launch([*COMMON, "cluster=local", f"paths.runs={local_runs}"])
    assert wait_for(result, poll_s=1.0)
    assert wait_for(reference, poll_s=1.0)

    assert _statuses(folder, 0) == _statuses(folder, 1) == ["requeued", "done"]
    records = folder.task_records()
    assert {r["node"] for r in records.values()} == {"node1", "node2"}
    first = [read_json(folder.task_record_path(u))["attempts"][0] for u in (0, 1)]
    assert first[0]["job_id"] == first[1]["job_id"] and first[0]["signal"] == "SIGUSR2"
    state = read_json(folder.path / "checkpoints" / "job" / "checkpoint.json")["state"]
    assert 2 <= state["step"] < 8 and Path(state["hf_checkpoint"]).name == f"checkpoint-{state['step']}"

    ref_dir = reference.plan.stage("train").folder.path
    report, ref_report = (
        read_json(folder.path / "train_report.json"),
        read_json(ref_dir / "train_report.json"),
    )
    assert (
        report["resumed_from"].endswith(f"checkpoint-{state['step']}") and ref_report["resumed_from"] is None
    )
    assert (report["deepspeed"], report["world_size"], report["backend"]) == ("zero2", 2, "gloo")
    got, ref = read_metrics(folder.path), read_metrics(ref_dir)
    assert [m["step"] for m in got] == [m["step"] for m in ref] == list(range(1, 9))
    for a, b in zip(ref, got, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5), a["step"]
    assert report["final_loss"] == pytest.approx(ref_report["final_loss"], rel=1e-5)
    steps = seen_by_step(folder.path)
    assert steps == seen_by_step(ref_dir) and all(len(ids) == 2 for ids in steps.values())
    assert (folder.path / "adapter" / "adapter_model.safetensors").is_file()
