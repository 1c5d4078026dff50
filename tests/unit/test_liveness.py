"""A local task is alive only if the very process runs: its PID plus its start time (issue 9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from launchers import slurm_state
from launchers.decide import live_jobs
from launchers.folders import stage_folder

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="process identity reads /proc")


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_process_is_its_pid_and_start_time():
    proc = _sleeper()
    try:
        ident = slurm_state.process_identity(proc.pid)
        assert ident and slurm_state.local_task_alive(proc.pid, ident)
        # another live process under a recorded identity that is not its own: not our task
        assert not slurm_state.local_task_alive(os.getpid(), ident)
        assert not slurm_state.local_task_alive(proc.pid, slurm_state.EXITED)
        assert not slurm_state.local_task_alive(proc.pid, None)  # a PID alone proves nothing
    finally:
        proc.kill()
        proc.wait()
    assert slurm_state.process_identity(proc.pid) is None
    assert not slurm_state.local_task_alive(proc.pid, ident)


def test_the_launcher_does_not_take_a_reused_pid_for_a_running_task(tmp_path):
    folder = stage_folder(tmp_path, "toy_rows", "abc").create()
    proc = _sleeper()
    try:
        record = {"executor": "local", "host": socket.gethostname(), "units": [0], "job_id": str(proc.pid)}
        # the task that ran as unit 0 died; its PID now belongs to an unrelated process (proc)
        folder.append_job({**record, "task_ids": [str(proc.pid)], "process": "other-boot:123"})
        stage = SimpleNamespace(name="toy_rows", folder=folder)
        assert live_jobs([stage], "local") == {}
        # the same PID recorded with the process's own identity is the running task
        folder.append_job({**record, "units": [1], "task_ids": [str(proc.pid)],
                           "process": slurm_state.process_identity(proc.pid)})  # fmt: skip
        assert live_jobs([stage], "local") == {"toy_rows": {1: str(proc.pid)}}
    finally:
        proc.kill()
        proc.wait()
    assert live_jobs([stage], "local") == {}


def test_an_ended_process_not_yet_reaped_is_not_alive():
    # a task whose parent has not reaped it yet (an orphan under a slow reaper) is a zombie:
    # its /proc entry is still there, but it runs no more
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = None
    for _ in range(600):
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        ident = slurm_state.process_identity(proc.pid) or ident
        time.sleep(0.05)
    try:
        assert slurm_state.process_identity(proc.pid) is None
        assert not slurm_state.local_task_alive(proc.pid, ident)
    finally:
        proc.wait()
