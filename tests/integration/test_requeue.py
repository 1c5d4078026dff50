"""Checkpoint and requeue on the real test Slurm cluster (slurm/up.sh: 2 emulated nodes).

A stage asked to stop (scancel --signal=USR2, the warning before a time limit) saves its
state to ctx.checkpoint_dir, its job requeues itself under the same stage id and folder,
resumes from the checkpoint and writes exactly what an uninterrupted run writes. The test
cluster sets AuthInfo=cred_expire=10, so a requeued job may start again after ~11 s (Slurm's
default is 121 s). No wall-clock limits: waits end when the run is done or nothing of it is
left in Slurm's queue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import submitit

from clinsynth.core.atomic import read_json, read_jsonl
from launchers.folders import StageFolder
from launchers.job import StageTask, TaskSpec
from launchers.status import run_status
from launchers.submit import LaunchResult, launch
from launchers.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def _overrides(
    runs: Path, cluster: str, target: str, *, steps: int, step_s: float, extra: list[str]
) -> list[str]:
    return [
        "name=ckpt",
        f"pipeline=[{target}]",
        "stage_modules=[tests.checkpoint_stages]",
        f"cluster={cluster}",
        "tracking=disabled",
        f"paths.runs={runs}",
        f"+ckpt.steps={steps}",
        f"+ckpt.step_s={step_s}",
        *extra,
    ]


def _wait_until(predicate: Callable[[], bool], what: str, poll_s: float = 0.2) -> None:
    """Wait for a state a live job will reach; fail when nothing is queued or running any more."""
    while not predicate():
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
        if not out.strip() and not predicate():
            raise AssertionError(f"jobs ended before {what}")
        time.sleep(poll_s)


def _progress(folder: StageFolder, unit: int) -> dict[str, Any]:
    path = folder.path / "progress" / f"unit-{unit:05d}.json"
    return read_json(path) if path.exists() else {"attempt": 0, "step": 0}


def _statuses(folder: StageFolder, unit: int) -> list[str]:
    path = folder.task_record_path(unit)
    return [a["status"] for a in read_json(path)["attempts"]] if path.exists() else []


def _history(folder: StageFolder, unit: int) -> list[dict[str, Any]]:
    return list(read_jsonl(folder.path / "history" / f"unit-{unit:05d}.jsonl"))


def _outputs(result: LaunchResult, stage: str) -> dict[str, bytes]:
    out = result.plan.stage(stage).folder.path / "out"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def _task_id(result: LaunchResult, stage: str, unit: int) -> str:
    for rec in result.plan.stage(stage).folder.jobs():
        if unit in rec["units"]:
            return rec["task_ids"][rec["units"].index(unit)]
    raise AssertionError(f"{stage} unit {unit} was never submitted")


def _status_cli(run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "launch", "status", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_usr2_to_an_array_task_saves_requeues_and_resumes(tmp_path):
    ov = [
        "+resources.ckpt_array.shards=2",
        "+resources.ckpt_array.mem_gb=1",
        "+resources.ckpt_after.mem_gb=1",
    ]
    result = launch(_overrides(tmp_path / "slurm", "slurm", "ckpt_after", steps=10, step_s=1.0, extra=ov))
    folder = result.plan.stage("ckpt_array").folder
    states = {s.stage: s for s in run_status(result.run_dir)}
    assert states["ckpt_after"].state == "queued"  # pending on afterok, not "not started"
    assert states["ckpt_after"].units[0].slurm[2] == "Dependency"

    _wait_until(lambda: _progress(folder, 1)["step"] >= 2, "shard 1 made 2 steps")
    subprocess.run(["scancel", "--signal=USR2", _task_id(result, "ckpt_array", 1)], check=True)
    # status shows the requeued job while it waits for its begin time (cred_expire + 1 s)
    _wait_until(lambda: run_status(result.run_dir)[0].units[1].state == "requeued", "shard 1 was requeued")
    # meanwhile, the same stage uninterrupted on the local executor
    reference = launch(_overrides(tmp_path / "local", "local", "ckpt_after", steps=10, step_s=0.0, extra=ov))
    assert wait_for(result, poll_s=1.0)

    assert _statuses(folder, 0) == ["done"]
    assert _statuses(folder, 1) == ["requeued", "done"]
    first = read_json(folder.task_record_path(1))["attempts"][0]
    assert first["signal"] == "SIGUSR2" and Path(first["checkpoint"]["path"]).is_file()
    resumed = _history(folder, 1)
    assert [h["attempt"] for h in resumed] == [1, 2]
    assert resumed[0]["from_step"] == 0 and not resumed[0]["resuming"]
    assert resumed[1]["from_step"] >= 2 and resumed[1]["resuming"]
    assert [h["from_step"] for h in _history(folder, 0)] == [0]  # the other shard ran straight through
    assert _outputs(result, "ckpt_array") == _outputs(reference, "ckpt_array")
    assert read_json(result.plan.stage("ckpt_after").folder.path / "count.json") == {"rows": 20}

    status = _status_cli(result.run_dir)
    assert status.returncode == 0, status.stderr
    assert "2 attempts (requeued, done)" in status.stdout
    assert "checkpoints/shard-00001/checkpoint.json" in status.stdout


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_time_limit_warning_requeues_and_resumes(tmp_path):
    # A 1-minute limit with the warning 15 s before it. slurmctld checks time limits every
    # 30 s and sends the warning at the first check within 30 s of limit - 15 s, i.e. 15-45 s
    # into the job (with a larger delay it could come while Python is still starting, before
    # any handler is installed). The first attempt holds at step 2 until asked to stop, so the
    # limit, not the work, ends it. With a limit <= 10 min submitit counts every signal as a
    # time-out (max_num_timeout=3 requeues).
    hold = tmp_path / "hold"
    hold.touch()
    ov = [
        "+resources.ckpt_array.time_min=1",
        "+resources.ckpt_array.mem_gb=1",
        "cluster.signal_delay_s=15",
        "+ckpt.hold_at=2",
        f"+ckpt.hold_file={hold}",
    ]
    result = launch(_overrides(tmp_path / "slurm", "slurm", "ckpt_array", steps=6, step_s=0.5, extra=ov))
    folder = result.plan.stage("ckpt_array").folder
    _wait_until(lambda: "requeued" in _statuses(folder, 0), "the job was requeued at its time limit")
    hold.unlink()  # later attempts run through
    reference = launch(
        _overrides(tmp_path / "local", "local", "ckpt_array", steps=6, step_s=0.0, extra=ov[:2])
    )
    assert wait_for(result, poll_s=1.0)

    statuses = _statuses(folder, 0)
    assert len(statuses) >= 2 and statuses[-1] == "done" and set(statuses[:-1]) == {"requeued"}
    first = read_json(folder.task_record_path(0))["attempts"][0]
    assert first["signal"] == "SIGUSR2"  # nobody but Slurm's --signal=USR2@15 sent it
    # submitit took the time-out path: each requeue spent one of its max_num_timeout=3
    delayed = submitit.helpers.DelayedSubmission.load(folder.logs / f"{first['job_id']}_submitted.pkl")
    assert delayed._timeout_countdown <= 3 - (len(statuses) - 1)
    assert _outputs(result, "ckpt_array") == _outputs(reference, "ckpt_array")


def test_two_node_stage_stops_on_every_rank_saves_once_and_requeues_whole(tmp_path):
    pytest.importorskip("torch", reason="the 2-rank stage uses torch.distributed (pip install -e .[train])")
    ov = [
        "+resources.ckpt_ranks.nodes=2",
        "+resources.ckpt_ranks.tasks_per_node=1",
        "+resources.ckpt_ranks.mem_gb=1",
    ]
    result = launch(_overrides(tmp_path / "slurm", "slurm", "ckpt_ranks", steps=10, step_s=1.0, extra=ov))
    assert result.submitted == {"ckpt_ranks": [0, 1]}
    folder = result.plan.stage("ckpt_ranks").folder
    _wait_until(lambda: _progress(folder, 0)["step"] >= 2, "the ranks made 2 steps")
    subprocess.run(["scancel", "--signal=USR2", _task_id(result, "ckpt_ranks", 0)], check=True)
    _wait_until(lambda: "requeued" in _statuses(folder, 0), "rank 0 requeued the job")
    reference = launch(_overrides(tmp_path / "local", "local", "ckpt_ranks", steps=10, step_s=0.0, extra=ov))
    assert wait_for(result, poll_s=1.0)

    assert _statuses(folder, 0) == _statuses(folder, 1) == ["requeued", "done"]
    records = folder.task_records()
    assert {r["node"] for r in records.values()} == {"node1", "node2"}
    first = [read_json(folder.task_record_path(u))["attempts"][0] for u in (0, 1)]
    assert first[0]["job_id"] == first[1]["job_id"]  # one job, requeued whole
    histories = [_history(folder, u) for u in (0, 1)]
    # both ranks stopped at the same step and both resumed from the one checkpoint rank 0 saved
    assert [h["from_step"] for h in histories[0]] == [h["from_step"] for h in histories[1]]
    assert histories[0][0]["from_step"] == 0 and histories[0][1]["from_step"] >= 2
    assert all(h[1]["resuming"] and h[1]["world_size"] == 2 for h in histories)
    assert sorted(p.name for p in (folder.path / "checkpoints").iterdir()) == ["job"]

    assert _outputs(result, "ckpt_ranks") == _outputs(reference, "ckpt_ranks")
    status = _status_cli(result.run_dir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("2 attempts (requeued, done)") == 2


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_stage_that_never_asks_is_requeued_at_once_and_redoes_its_shard(tmp_path):
    """toy_rows never calls ctx.should_stop(): the signal goes to submitit's handler at once
    (requeue mid-step), and the requeued task redoes the shard from what it wrote atomically."""
    ov = [
        "name=toy",
        "pipeline=[toy_rows]",
        "stage_modules=[tests.toy_stages]",
        "cluster=slurm",
        "tracking=disabled",
        f"paths.runs={tmp_path}",
        "+toy.n_items=12",
        "+toy.sleep_s=1.0",
        "+resources.toy_rows.shards=2",
        "+resources.toy_rows.mem_gb=1",
    ]
    result = launch(ov)
    folder = result.plan.stage("toy_rows").folder
    _wait_until(lambda: _statuses(folder, 1) == ["running"], "shard 1 started")
    time.sleep(1.0)
    subprocess.run(["scancel", "--signal=USR2", _task_id(result, "toy_rows", 1)], check=True)
    assert wait_for(result, poll_s=1.0)
    assert _statuses(folder, 1) == ["requeued", "done"]
    first = read_json(folder.task_record_path(1))["attempts"][0]
    assert first["reason"] == "requeued by submitit on the signal" and first["signal"] == "SIGUSR2"
    rows = [r["item"] for p in sorted((folder.path / "rows").glob("shard-*.jsonl")) for r in read_jsonl(p)]
    assert sorted(rows) == list(range(12))


def test_multi_rank_rerun_runs_every_rank_when_some_are_complete(tmp_path):
    """A rank whose unit is complete still starts and joins the collectives of a rerun."""
    pytest.importorskip("torch", reason="the 2-rank stage uses torch.distributed (pip install -e .[train])")

    ov = ["+resources.ckpt_ranks.nodes=2", "+resources.ckpt_ranks.mem_gb=1"]
    first = launch(_overrides(tmp_path, "local", "ckpt_ranks", steps=4, step_s=0.0, extra=ov))
    st = first.plan.stage("ckpt_ranks")
    folder = st.folder
    before = _outputs(first, "ckpt_ranks")
    (folder.completions / "00001").unlink()  # rank 1 lost its completion; rank 0 keeps its own
    folder.done_marker.unlink()
    spec = TaskSpec(
        stage="ckpt_ranks",
        stage_id=st.stage_id,
        stage_dir=str(folder.path),
        config=st.config,
        inputs={},
        num_shards=1,
        n_units=2,
        run_id=first.plan.run_id,
        experiment="ckpt",
        tracking={},
        stage_modules=["tests.checkpoint_stages"],
    )
    ex = submitit.LocalExecutor(folder=folder.logs)
    ex.update_parameters(tasks_per_node=2, timeout_min=5)
    results = ex.submit(StageTask(spec)).results()
    assert [r["skipped"] for r in results] == [False, False]
    assert folder.is_done() and _outputs(first, "ckpt_ranks") == before
    second = [_history(folder, u)[-1] for u in (0, 1)]
    assert [h["attempt"] for h in second] == [2, 2]
    assert second[0]["unit_was_complete"] and not second[1]["unit_was_complete"]


def test_status_of_a_wrong_folder_is_a_one_line_error(tmp_path):
    stage_dir = tmp_path / "runs" / "stages" / "x" / "abc"
    (stage_dir / "completions").mkdir(parents=True)
    for args, expect in [
        ([], "status takes one RUN_FOLDER"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path)], "is not a run folder"),
        ([str(stage_dir)], "is a stage folder, not a run folder"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "launch", "status", *args], capture_output=True, text=True, cwd=REPO
        )
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and expect in lines[0], out.stderr
        assert lines[1] == "usage: python -m launch status RUN_FOLDER"
