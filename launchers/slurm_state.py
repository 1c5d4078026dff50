"""What Slurm says about the jobs a stage folder lists (asked by the launcher, waiting and status)."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be asked (no controller, no commands); the message says what failed."""


LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def live_slurm_tasks() -> dict[str, tuple[str, str]]:
    """job id (`123` or `123_4`) -> (state, reason) for the user's live jobs, arrays expanded."""
    if shutil.which("squeue") is None:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise SlurmUnavailable(
            f"squeue failed ({out.returncode}): {out.stderr.strip()}; "
            "is the controller up? (sinfo; slurm/README.md)"
        )
    live = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1] in LIVE_STATES:
            live[parts[0]] = (parts[1], parts[2])
    return live


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60, check=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def process_identity(pid: int) -> str | None:
    """`<boot id>:<start tick>` of a live process; None when it is gone or /proc is missing.

    A PID alone is no identity: PIDs wrap within minutes under load, and a dead task's PID may
    belong to an unrelated process by the time a launcher asks.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return f"{boot}:{fields[19]}"  # field 22 of proc(5): start time in clock ticks after boot


#: recorded when a local task had ended before its identity could be read
EXITED = "exited"


def local_task_alive(pid: int, identity: str | None) -> bool:
    """Whether the local task recorded as (pid, identity) still runs: the same process, not its PID."""
    if identity is None and not Path("/proc").is_dir():  # no /proc here: the PID is all there is
        return pid_alive(pid)
    return identity not in (None, EXITED) and process_identity(pid) == identity
