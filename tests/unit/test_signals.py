"""Signals to the launcher and to its tasks, with real processes (issue 9: faults).

- SIGTERM/SIGINT to a launcher that runs local tasks stops them (and their children), their
  records say so, it exits 128+signal with one line that says what was stopped, and a
  relaunch resumes. A task that does not end in its grace period gets SIGKILL.
- A Slurm launcher that waits leaves its jobs running when stopped, and says how to watch
  and cancel them.
- A task killed by SIGKILL is reported as "killed by signal 9 (SIGKILL)", by the launcher
  that waits for it and by `launch status` (a dead task is "died", never "running").

Every wait polls the run folder with a generous limit; no test depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clinsynth.core.atomic import read_json
from launchers import slurm_state
from launchers.folders import StageFolder
from tests.helpers import toy_overrides

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="process checks read /proc")


# ---- helpers


def _start(
    runs: Path, overrides: list[str], name: str = "launch", env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """The launcher as a real process; its stdout/stderr go to files next to `runs`.

    SIGINT gets its default disposition in the child: a test run started in the background by a
    shell (`nohup ... &`) inherits SIGINT ignored, and the launcher keeps an ignored SIGINT ignored."""
    log = runs.parent / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch", *overrides],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    return proc, log


def _wait_until(predicate: Callable[[], Any], what: str, proc: subprocess.Popen[bytes] | None = None,
                limit_s: float = 240.0) -> Any:  # fmt: skip
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def _stage(runs: Path, stage: str) -> StageFolder | None:
    found = sorted((runs / "stages" / stage).glob("*/tasks"))
    return StageFolder(found[0].parent) if found else None


def _records(runs: Path, stage: str) -> dict[int, dict[str, Any]]:
    folder = _stage(runs, stage)
    return folder.task_records() if folder else {}


def _running(runs: Path, stage: str, n: int) -> Callable[[], dict[int, dict[str, Any]] | None]:
    """Until `n` units of `stage` run (their records say running)."""

    def check() -> dict[int, dict[str, Any]] | None:
        recs = {u: r for u, r in _records(runs, stage).items() if r.get("status") == "running"}
        return recs if len(recs) >= n else None

    return check


def _ours(runs: Path) -> list[str]:
    """Live processes that belong to this run (the runs folder is in every job's command line)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(runs) in cmd and state not in ("Z", "X"):
            out.append(f"{entry.name}: {cmd}")
    return out


def _no_process_left(runs: Path) -> None:
    _wait_until(lambda: not _ours(runs), f"every process of {runs} to end", limit_s=60)


def _last_line(log: Path) -> str:
    return [ln for ln in log.read_text().splitlines() if ln.strip()][-1]


def _status(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launch", "status", str(run_dir)], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def _rows(stdout: str, stage: str) -> list[list[str]]:
    """The cells of `status`'s table rows for `stage` (stage table first, then its units)."""
    return [
        [c.strip() for c in ln.split("│")[1:-1]] for ln in stdout.splitlines() if ln.startswith(f"│ {stage} ")
    ]


def _unit_rows(stdout: str, stage: str) -> dict[str, list[str]]:
    return {r[1]: r for r in _rows(stdout, stage) if r[1].isdigit()}


def _run_dir(log: Path) -> Path:
    line = next(ln for ln in log.read_text().splitlines() if ln.startswith("run folder: "))
    return Path(line.removeprefix("run folder: ").strip())


def _ckpt(runs: Path, cluster: str, *, steps: int, step_s: float, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "name=ckpt",
        "pipeline=[ckpt_array]",
        "stage_modules=[tests.checkpoint_stages]",
        f"cluster={cluster}",
        "tracking=disabled",
        f"paths.runs={runs}",
        f"+ckpt.steps={steps}",
        f"+ckpt.step_s={step_s}",
        "+resources.ckpt_array.shards=2",
        "+resources.ckpt_array.mem_gb=1",
        *extra,
    ]


# ---- words for exit statuses (pure)


def test_exit_statuses_in_words():
    assert slurm_state.describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert slurm_state.describe_exit(-15) == "killed by signal 15 (SIGTERM)"
    assert slurm_state.describe_exit(143) == "exited with code 143 (128 + signal 15 (SIGTERM))"
    assert slurm_state.describe_exit(1) == "exited with code 1"
    assert slurm_state.describe_exit(None) is None
    end = slurm_state.describe_slurm_end
    assert end([("5", "FAILED", "0:9"), ("5.batch", "FAILED", "0:9")]).startswith(
        "killed by signal 9 (SIGKILL)"
    )
    assert end([("5", "OUT_OF_MEMORY", "0:125"), ("5.0", "OUT_OF_MEMORY", "0:125")]).startswith(
        "out of memory"
    )
    assert end([("5", "FAILED", "1:0")]) == "exited with code 1 (Slurm: FAILED)"
    assert end([("5", "CANCELLED by 0", "0:0")]).startswith("cancelled")
    assert end([("5", "TIMEOUT", "0:0")]).startswith("hit its time limit")
    assert end([]) is None


# ---- the launcher stops its local tasks


def test_sigterm_stops_local_tasks_records_them_and_a_relaunch_resumes(tmp_path):
    runs = tmp_path / "runs"
    ov = toy_overrides(runs, "local", n_items=40, shards=2, nodes=1, sleep_s=0.5)
    proc, log = _start(runs, ov)
    tasks = _wait_until(_running(runs, "toy_rows", 2), "both toy_rows tasks run", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    line = _last_line(log)
    assert line.startswith("stopped by SIGTERM: stage toy_rows: stopped unit(s) 0-1"), log.read_text()
    assert "relaunch the same command to resume" in line and "Traceback" not in log.read_text()
    _no_process_left(runs)
    for pid in (r["pid"] for r in tasks.values()):
        assert (
            slurm_state.process_identity(pid) is None
            or "submitit" not in Path(f"/proc/{pid}/cmdline").read_text()
        )
    for rec in _records(runs, "toy_rows").values():
        assert rec["status"] == "stopped", rec
        assert rec["signal"] == "SIGTERM" and "from the launcher" in rec["error"], rec
        assert [a["status"] for a in rec["attempts"]] == ["stopped"]
    folder = _stage(runs, "toy_rows")
    assert folder is not None and not folder.completed_units() and not folder.is_done()
    assert not list(folder.path.glob("rows/shard-*")), "a stopped unit left an output"
    status = _status(_run_dir(log))
    assert _rows(status.stdout, "toy_rows")[0][2] == "stopped", status.stdout
    assert [r[2] for r in _unit_rows(status.stdout, "toy_rows").values()] == ["stopped", "stopped"]

    # the same command again: runs the stopped units and the rest of the pipeline
    again = subprocess.run([sys.executable, "-m", "launch", *ov], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    recs = _records(runs, "toy_rows")
    assert all([a["status"] for a in r["attempts"]] == ["stopped", "done"] for r in recs.values()), recs


def test_sigint_stops_a_stage_at_its_step_boundary_with_a_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    ov = _ckpt(runs, "local", steps=400, step_s=0.2)
    proc, log = _start(runs, ov)
    _wait_until(lambda: all((_stage(runs, "ckpt_array").path / "progress" / f"unit-{u:05d}.json").exists()
                            for u in (0, 1)) if _stage(runs, "ckpt_array") else False,
                "both shards made progress", proc)  # fmt: skip
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()
    assert _last_line(log).startswith("stopped by SIGINT: stage ckpt_array: stopped unit(s) 0-1")
    _no_process_left(runs)
    folder = _stage(runs, "ckpt_array")
    assert folder is not None
    for unit, rec in folder.task_records().items():
        assert rec["status"] == "stopped" and rec["reason"] == "stopped by SIGTERM at a step boundary", rec
        assert rec["error"].endswith(f"from the launcher (pid {proc.pid}), which got SIGINT"), rec
        assert rec["checkpoint"]["path"].endswith(f"shard-{unit:05d}/checkpoint.json")
    # a relaunch resumes each shard from its checkpoint, not from step 0
    again = subprocess.run([sys.executable, "-m", "launch", *_ckpt(runs, "local", steps=400, step_s=0.0)],
                           cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    for unit in (0, 1):
        starts = (folder.path / "history" / f"unit-{unit:05d}.jsonl").read_text().splitlines()
        assert len(starts) == 2 and '"from_step":0' not in starts[1] and '"resuming":true' in starts[1]


def test_a_stopped_launcher_leaves_no_child_of_its_tasks(tmp_path):
    runs = tmp_path / "runs"
    ov = ["name=child", "pipeline=[with_child]", "stage_modules=[tests.unit.signal_stages]", "cluster=local",
          "tracking=disabled", f"paths.runs={runs}"]  # fmt: skip
    proc, log = _start(runs, ov)
    folder = _wait_until(lambda: _stage(runs, "with_child"), "the stage folder", proc)
    note = folder.path / "child.json"
    child = _wait_until(lambda: note.exists() and read_json(note), "the task started its child", proc)["pid"]
    assert slurm_state.process_identity(child) is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    assert _last_line(log).startswith("stopped by SIGTERM: stage with_child: stopped unit(s) 0"), (
        log.read_text()
    )
    _no_process_left(runs)
    assert slurm_state.process_identity(child) is None, "the task's child outlived the stop"
    assert folder.task_records()[0]["status"] == "stopped"


def test_a_task_that_outlasts_its_grace_period_is_killed(tmp_path):
    # the stage ignores SIGTERM (as one stuck in C code would): the launcher kills it after 1 s
    runs = tmp_path / "runs"
    ov = ["name=deaf", "pipeline=[deaf]", "stage_modules=[tests.unit.signal_stages]", "cluster=local",
          "tracking=disabled", f"paths.runs={runs}", "+resources.deaf.shards=2",
          "cluster.stop_grace_s=1"]  # fmt: skip
    proc, log = _start(runs, ov)
    deaf = "stages/deaf/*/deaf/shard-*.json"
    _wait_until(lambda: len(list(runs.glob(deaf))) == 2, "both shards ignore SIGTERM", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    line = _last_line(log)
    assert "stopped unit(s) 0-1" in line and "2 killed with SIGKILL" in line, line
    _no_process_left(runs)
    for rec in _records(runs, "deaf").values():
        assert rec["status"] == "stopped" and rec["signal"] == "SIGKILL", rec
        assert "killed with SIGKILL by the launcher" in rec["error"] and "1s after SIGTERM" in rec["error"]


def test_sigint_stops_a_debug_task_running_in_the_launcher(tmp_path):
    runs = tmp_path / "runs"
    proc, log = _start(runs, toy_overrides(runs, "debug", n_items=400, shards=2, nodes=1, sleep_s=0.5))
    _wait_until(_running(runs, "toy_rows", 1), "the first toy_rows task runs", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()
    line = _last_line(log)
    assert line.startswith("stopped by SIGINT: stage toy_rows: stopped unit(s) 0"), line
    assert "unit(s) 1 not started" in line and "Traceback" not in log.read_text()
    rec = _records(runs, "toy_rows")[0]
    assert rec["status"] == "stopped" and rec["signal"] == "SIGINT", rec


# ---- a task killed by a signal


def test_a_local_task_killed_by_sigkill_is_reported_with_its_signal(tmp_path):
    runs = tmp_path / "runs"
    proc, log = _start(runs, toy_overrides(runs, "local", n_items=40, shards=2, nodes=1, sleep_s=0.5))
    tasks = _wait_until(_running(runs, "toy_rows", 2), "both toy_rows tasks run", proc)
    os.kill(tasks[1]["pid"], signal.SIGKILL)  # as the OOM killer would
    assert proc.wait(timeout=180) == 1, log.read_text()
    text = log.read_text()
    assert "unit 1: killed by signal 9 (SIGKILL)" in text, text
    rec = _records(runs, "toy_rows")[1]
    assert rec["status"] == "failed" and rec["error"] == "killed by signal 9 (SIGKILL)", rec
    assert rec["signal"] == "SIGKILL" and rec["exit_code"] == -9
    status = _status(_run_dir(log))
    assert "killed by signal 9 (SIGKILL)" in status.stdout, status.stdout


def test_status_tells_a_dead_local_task_from_a_running_one(tmp_path):
    runs = tmp_path / "runs"
    proc, _ = _start(runs, toy_overrides(runs, "local", n_items=400, shards=2, nodes=1, sleep_s=0.5))
    tasks = _wait_until(_running(runs, "toy_rows", 2), "both toy_rows tasks run", proc)
    run_dir = next(p.parent for p in runs.glob("toy/*/stages"))  # the launcher prints it only at the end
    proc.kill()  # the launcher dies without a word; its tasks (own process groups) run on
    proc.wait()
    try:
        os.kill(tasks[0]["pid"], signal.SIGKILL)
        _wait_until(lambda: slurm_state.process_identity(tasks[0]["pid"]) is None, "unit 0's task is gone")
        # the controller of unit 0 writes its exit codes once its task ended
        _wait_until(lambda: list(_stage(runs, "toy_rows").logs.glob("*_exit.json")), "the exit codes")
        status = _status(run_dir)
        rows = _unit_rows(status.stdout, "toy_rows")
        assert rows["0"][2] == "died" and rows["0"][-1] == "killed by signal 9 (SIGKILL)", status.stdout
        assert rows["1"][2] == "running", status.stdout
        rec = _records(runs, "toy_rows")[0]
        assert rec["status"] == "died" and rec["error"] == "killed by signal 9 (SIGKILL)", rec
    finally:
        for job in StageFolder(_stage(runs, "toy_rows").path).jobs():
            slurm_state.signal_group(int(job["job_id"]), signal.SIGKILL)
    _no_process_left(runs)


def test_a_relaunch_beside_a_killed_launchers_live_task_says_so_and_exits_non_zero(tmp_path):
    """kill -9 of the launcher leaves its local tasks running: a relaunch does not run them twice,
    does not start the stages after them either, and never exits 0 as if the pipeline were done."""
    runs = tmp_path / "runs"
    # ~10 s per task: the relaunch (Python start + compose, slow on a loaded machine) must find them running
    overrides = toy_overrides(runs, "local", n_items=200, shards=2, nodes=1, sleep_s=0.1)
    proc, _ = _start(runs, overrides)
    tasks = _wait_until(_running(runs, "toy_rows", 2), "both toy_rows tasks run", proc)
    proc.kill()
    proc.wait()
    try:
        again, log = _start(runs, overrides, name="again")
        assert again.wait(timeout=240) != 0, log.read_text()
        text = log.read_text()
        assert "stage toy_rows is still being run by an earlier launch" in text, text
        assert "not started: toy_sum" in text and "launch the same command again" in text, text
        _wait_until(lambda: all(slurm_state.process_identity(r["pid"]) is None for r in tasks.values()),
                    "the orphaned tasks end")  # fmt: skip
        last, log = _start(runs, overrides, name="last")
        assert last.wait(timeout=240) == 0, log.read_text()
        assert all(len(r["attempts"]) == 1 for r in _records(runs, "toy_rows").values())  # each unit ran once
    finally:
        for job in StageFolder(_stage(runs, "toy_rows").path).jobs():
            slurm_state.signal_group(int(job["job_id"]), signal.SIGKILL)
    _no_process_left(runs)


# ---- Slurm: a stopped launcher leaves its jobs running


def _squeue(job_id: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True
    ).stdout


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_sigint_to_a_waiting_slurm_launcher_leaves_its_jobs_running(tmp_path):
    runs = tmp_path / "runs"
    ov = toy_overrides(runs, "slurm", n_items=40, shards=2, nodes=1, sleep_s=1.0, extra=["wait=true"])
    proc, log = _start(runs, ov)
    _wait_until(_running(runs, "toy_rows", 1), "a toy_rows task runs on Slurm", proc)
    jobs = [j["job_id"] for j in _stage(runs, "toy_rows").jobs()]
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()
        line = _last_line(log)
        assert line.startswith("stopped waiting (SIGINT): the Slurm job(s)"), line
        assert "keep running (not cancelled)" in line and "python -m launch status" in line
        assert f"scancel {jobs[0]}" in line and "squeue -j" in line
        assert _squeue(jobs[0]).strip(), "the stopped launcher cancelled its Slurm job"
    finally:
        subprocess.run(["scancel", *jobs], check=False)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_slurm_task_killed_by_sigkill_is_died_with_its_signal(tmp_path):
    runs = tmp_path / "runs"
    proc, log = _start(runs, toy_overrides(runs, "slurm", n_items=400, shards=1, nodes=1, sleep_s=0.5))
    assert proc.wait(timeout=120) == 0, log.read_text()
    tasks = _wait_until(_running(runs, "toy_rows", 1), "the toy_rows task runs on Slurm")
    jobs = [j["job_id"] for j in _stage(runs, "toy_rows").jobs()]
    try:
        os.kill(tasks[0]["pid"], signal.SIGKILL)  # the test nodes run on this machine
        _wait_until(lambda: not _squeue(jobs[0]).strip(), "Slurm ends the job")
        status = _status(_run_dir(log))
        assert _rows(status.stdout, "toy_rows")[0][2] == "died", status.stdout
        unit = _unit_rows(status.stdout, "toy_rows")["0"]
        assert unit[2] == "died" and unit[-1].startswith("killed by signal 9 (SIGKILL)"), status.stdout
        rec = _records(runs, "toy_rows")[0]
        assert rec["status"] == "died" and rec["error"].startswith("killed by signal 9 (SIGKILL)"), rec
    finally:
        subprocess.run(["scancel", *jobs], check=False)


def test_records_are_json(tmp_path):
    """(guard) task records written by the launcher stay readable JSON."""
    folder = StageFolder(tmp_path / "s" / "abc").create()
    from clinsynth.core.atomic import write_json

    write_json(folder.task_record_path(0), {"unit": 0, "job_id": "7", "status": "running",
                                            "attempts": [{"status": "running", "job_id": "7"}]})  # fmt: skip
    from launchers.status import amend_record

    assert not amend_record(folder, 0, "8", "running", status="died")  # another job's record: untouched
    assert amend_record(folder, 0, "7", "running", status="died", error="killed by signal 9 (SIGKILL)")
    rec = read_json(folder.task_record_path(0))
    assert rec["status"] == "died" and rec["attempts"][-1]["error"] == "killed by signal 9 (SIGKILL)"
    assert not amend_record(folder, 0, "7", "running", status="failed")  # only while it says running
