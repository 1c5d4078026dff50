"""What Slurm says about the jobs a stage folder lists (asked by the launcher, waiting and status)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
from pathlib import Path


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be asked (no controller, no commands); the message says what failed."""


LIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SUSPENDED", "PREEMPTED", "STAGE_OUT", "SIGNALING",
}


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
    if fields[0] in ("Z", "X"):  # ended, not yet reaped (an orphan whose reaper is slow): gone
        return None
    return f"{boot}:{fields[19]}"  # field 22 of proc(5): start time in clock ticks after boot


#: recorded when a local task had ended before its identity could be read
EXITED = "exited"


def local_task_alive(pid: int, identity: str | None) -> bool:
    """Whether the local task recorded as (pid, identity) still runs: the same process, not its PID."""
    if identity is None and not Path("/proc").is_dir():  # no /proc here: the PID is all there is
        return pid_alive(pid)
    return identity not in (None, EXITED) and process_identity(pid) == identity


# ---- how a task ended: signals, process groups, Slurm's accounting


def signal_text(signum: int) -> str:
    """`signal 9 (SIGKILL)`."""
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def describe_exit(code: int | None) -> str | None:
    """A process's exit status in words: -9 -> `killed by signal 9 (SIGKILL)`; None: unknown."""
    if code is None:
        return None
    if code < 0:
        return f"killed by {signal_text(-code)}"
    if code > 128 and code - 128 < 65:
        return f"exited with code {code} (128 + {signal_text(code - 128)})"
    return f"exited with code {code}"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to process group `pgid`; False when it has no process left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a recycled group id of another user: not ours
        return False
    return True


#: Slurm job states that say how a job ended, in words
SLURM_END_STATES = {
    "OUT_OF_MEMORY": "out of memory (Slurm: OUT_OF_MEMORY)",
    "TIMEOUT": "hit its time limit (Slurm: TIMEOUT)",
    "NODE_FAIL": "its node failed (Slurm: NODE_FAIL)",
    "PREEMPTED": "preempted (Slurm: PREEMPTED)",
    "CANCELLED": "cancelled (Slurm: CANCELLED, scancel)",
    "BOOT_FAIL": "its node did not boot (Slurm: BOOT_FAIL)",
    "DEADLINE": "missed its deadline (Slurm: DEADLINE)",
}


def describe_slurm_end(rows: list[tuple[str, str, str]]) -> str | None:
    """How a Slurm job ended, from sacct's (job id, state, exit code) rows of the job and its
    steps: out of memory first, then a signal (`0:9` -> killed by signal 9 (SIGKILL)), then the
    job's state, then a non-zero exit code."""
    if not rows:
        return None
    states = [r[1].split()[0] if r[1] else "" for r in rows]
    if "OUT_OF_MEMORY" in states:
        return SLURM_END_STATES["OUT_OF_MEMORY"]
    for st, (_, _, exit_code) in zip(states, rows, strict=True):
        sig = exit_code.partition(":")[2]
        if sig.isdigit() and int(sig) > 0:
            return f"killed by {signal_text(int(sig))} (Slurm: {st or '?'} {exit_code})"
    main = states[0]
    if main in SLURM_END_STATES:
        return SLURM_END_STATES[main]
    for st, (_, _, exit_code) in zip(states, rows, strict=True):
        code = exit_code.partition(":")[0]
        if code.isdigit() and int(code) > 0:
            return f"exited with code {code} (Slurm: {st or '?'})"
    return f"ended {main}" if main else None


def slurm_job_end(job_id: str) -> str | None:
    """How Slurm job (or array task) `job_id` ended, in words, from sacct; None when sacct has
    no word on it (no accounting, not ended yet)."""
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rows = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and (parts[0] == job_id or parts[0].startswith(f"{job_id}.")):
            rows.append((parts[0], parts[1], parts[2]))
    if not rows or rows[0][1].split()[0] in LIVE_STATES:
        return None
    return describe_slurm_end(rows)
