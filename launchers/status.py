"""`python -m launch status RUN_FOLDER`: stage and unit state from the folders, plus squeue.

The folders say what is done, running, failed or requeued (tasks/NNNNN.json lists every
attempt) and where the last checkpoint is; squeue says which submitted jobs still wait
(on a dependency, for their begin time after a requeue, for resources). Without Slurm,
or when squeue cannot be asked, the folders alone are shown.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from clinsynth.core.atomic import read_json, write_json
from clinsynth.core.context import latest_checkpoint, unit_checkpoint_dir
from clinsynth.core.progress import format_duration, progress_line, read_progress
from launchers import slurm_state
from launchers.folders import StageFolder
from launchers.states import StageState

S = StageState  # short for the many state comparisons below

#: unit states, in the order a stage's state is picked from its units' states
STAGE_STATES = (S.FAILED, S.DIED, S.STOPPED, S.RUNNING, S.REQUEUED, S.QUEUED)


class StatusError(ValueError):
    """The folder given to `status` is not a run folder; the one-line message says what to pass."""


@dataclass
class UnitStatus:
    unit: int
    #: done | running | requeued | queued | failed | stopped | not started; stopped: the unit
    #: saved a checkpoint and was requeued (or could not be), but no job is left to resume it
    state: StageState
    #: status of every attempt, oldest first (running, done, failed, requeued, stopped)
    attempts: list[str] = field(default_factory=list)
    host: str | None = None
    job_id: str | None = None
    #: (modification time, path) of the newest checkpoint, if any
    checkpoint: tuple[float, Path] | None = None
    #: Slurm's view of the unit's live job: (job id, state, reason)
    slurm: tuple[str, str, str] | None = None
    #: how the unit's last attempt ended, when it failed, stopped or died ("killed by signal 9
    #: (SIGKILL)", "out of memory (Slurm: OUT_OF_MEMORY)", "stopped by SIGTERM ...")
    reason: str | None = None
    #: a running unit's last progress record (clinsynth/core/progress.py) written by this attempt
    progress: dict[str, Any] | None = None


@dataclass
class StageStatus:
    stage: str
    stage_id: str
    path: Path
    state: StageState
    n_units: int
    complete: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)
    stopped: list[int] = field(default_factory=list)
    died: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    units: dict[int, UnitStatus] = field(default_factory=dict)


def tail(path: str | Path | None, lines: int = 20) -> str:
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return f"(no log at {p})"
    with open(p, errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines))


def _live_jobs_of(
    folder: StageFolder, live: dict[str, tuple[str, str]] | None
) -> dict[int, tuple[str, str, str]]:
    """unit -> (task id, state, reason) for the units whose latest submitted job Slurm still lists."""
    if not live:
        return {}
    latest: dict[int, str] = {}
    for rec in folder.jobs():  # oldest first: later submissions of a unit win
        if rec.get("executor") != "slurm":
            continue
        for unit, tid in zip(rec.get("units", []), rec.get("task_ids", []), strict=False):
            latest[int(unit)] = str(tid)
    return {u: (tid, *live[tid]) for u, tid in latest.items() if tid in live}


def amend_record(folder: StageFolder, unit: int, job_id: str, only_if: str | None, **fields: Any) -> bool:
    """Update the last attempt of `unit`'s task record, when job `job_id` wrote it (and, with
    `only_if`, its status is that one): a task killed hard cannot say how it ended; whoever
    learns it (the launcher, status) writes it down. False when nothing was written."""
    path = folder.task_record_path(unit)
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return False
    attempts = rec.get("attempts") or []
    if not attempts or str(rec.get("job_id")) != str(job_id) or (only_if and rec.get("status") != only_if):
        return False
    attempts[-1].update(fields)
    attempts[-1].setdefault("end", time.time())
    rec.update(attempts[-1])
    rec["attempts"] = attempts
    try:
        write_json(path, rec)
    except OSError:  # a read-only view of someone else's run: say it, do not write it
        return False
    return True


def _local_job_of(folder: StageFolder, unit: int, job_id: str) -> dict[str, Any] | None:
    """The jobs.jsonl record of local job `job_id` that ran `unit` (its pid identity)."""
    for rec in reversed(folder.jobs()):
        local = rec.get("executor") == "local"
        if local and str(rec.get("job_id")) == job_id and unit in rec.get("units", []):
            return rec
    return None


def _slurm_task_of(folder: StageFolder, unit: int, rec: dict[str, Any]) -> str | None:
    if rec.get("slurm_array_job_id") and rec.get("slurm_array_task_id") is not None:
        return f"{rec['slurm_array_job_id']}_{rec['slurm_array_task_id']}"
    if rec.get("slurm_job_id"):
        return str(rec["slurm_job_id"])
    latest = None
    for job in folder.jobs():
        if job.get("executor") == "slurm":
            for u, tid in zip(job.get("units", []), job.get("task_ids", []), strict=False):
                if int(u) == unit:
                    latest = str(tid)
    return latest


def died(
    folder: StageFolder, unit: int, rec: dict[str, Any], live: dict[str, tuple[str, str]] | None
) -> tuple[bool, str | None]:
    """(dead, why) for a unit whose record says running: is its process (local: PID + start
    time; debug: the launcher's PID) or its Slurm job gone, and how did it end, if known.
    (False, None) while it runs or when that cannot be told from here (another host; Slurm
    was not asked)."""
    from launchers.executors import read_exit_codes

    executor = rec.get("executor")
    job_id = str(rec.get("job_id"))
    if executor == "slurm":
        if live is None:
            return False, None
        tid = _slurm_task_of(folder, unit, rec)
        if tid is not None and (tid in live or str(rec.get("slurm_job_id")) in live):
            return False, None
        why = slurm_state.slurm_job_end(tid) if tid else None
        return True, why or "its Slurm job is gone (sacct has no word on how it ended)"
    if rec.get("host") not in (None, socket.gethostname()):
        return False, None
    if executor == "local" and job_id.isdigit():
        # the controller writes the exit codes once every task of the job has ended
        codes = read_exit_codes(folder.logs, job_id, since=float(rec.get("start") or 0))
        rank = int(rec.get("rank") or 0)
        code = codes[rank] if codes and rank < len(codes) else None
        if codes is None:
            job = _local_job_of(folder, unit, job_id)
            if job is not None and slurm_state.local_task_alive(int(job_id), job.get("process")):
                return False, None
            if job is None and slurm_state.pid_alive(int(job_id)):
                return False, None
        return True, slurm_state.describe_exit(code) or "its process is gone (no exit status was recorded)"
    if executor == "debug" and isinstance(rec.get("pid"), int):
        if slurm_state.pid_alive(int(rec["pid"])):
            return False, None
        return True, "the launcher that ran it in-process is gone"
    return False, None


def live_progress(stage_dir: Path, unit: int, rec: dict[str, Any]) -> dict[str, Any] | None:
    """The running unit's progress record when its current attempt wrote it (an earlier attempt's
    file is not this attempt's progress)."""
    prog = read_progress(stage_dir, unit)
    if prog is None:
        return None
    started = rec.get("start")
    if isinstance(started, (int, float)) and float(prog.get("updated_at") or 0) < started:
        return None
    return prog


def progress_text(prog: dict[str, Any], now: float | None = None) -> str:
    """`37/43 letters (86%), 2.1 letters/s, ~3 s left, updated 4 s ago`."""
    age = max(0.0, (now if now is not None else time.time()) - float(prog.get("updated_at") or 0))
    line = progress_line(
        None, int(prog["done"]), prog.get("total"), str(prog.get("unit") or "items"), prog.get("rate"),
        prog.get("eta_s"),
    )  # fmt: skip
    return f"{line}, updated {format_duration(age)} ago"


def stage_progress(st: StageStatus) -> str:
    """One line for a stage's running units: a single unit's progress, or the sum over its
    running tasks (rates add up; the slowest task's time left): `370/430 letters ... (4 tasks)`."""
    progs = [u.progress for u in st.units.values() if u.progress]
    if not progs:
        return ""
    unit = str(progs[0].get("unit") or "items")
    progs = [p for p in progs if p.get("unit", "items") == unit]
    totals = [p.get("total") for p in progs]
    total = sum(int(t) for t in totals if t is not None) if None not in totals else None
    rate = sum(float(p.get("rate") or 0) for p in progs) or None
    etas = [float(p["eta_s"]) for p in progs if p.get("eta_s") is not None]
    line = progress_line(None, sum(int(p["done"]) for p in progs), total, unit, rate, max(etas, default=None))
    return line + (f" ({len(progs)} tasks)" if len(progs) > 1 else "")


def _checkpoint_of(folder: StageFolder, unit: int, array: bool) -> tuple[float, Path] | None:
    """Array shards keep one checkpoint each; all ranks of a single or multi-rank job share one."""
    return latest_checkpoint(unit_checkpoint_dir(folder.path, unit if array else None))


def stage_status(folder: StageFolder, live: dict[str, tuple[str, str]] | None = None) -> StageStatus:
    """State of one stage folder; `live` (from `slurm_state.live_slurm_tasks()`) adds queued jobs."""
    meta = folder.read_meta()
    n_units = int(meta.get("n_units", 1))
    array = int(meta.get("num_shards", 1) or 1) > 1
    complete = sorted(folder.completed_units())
    records = folder.task_records()
    jobs = _live_jobs_of(folder, live)
    units: dict[int, UnitStatus] = {}
    for unit in sorted(set(range(n_units)) | set(records) | set(jobs)):
        rec = records.get(unit, {})
        attempts = [str(a.get("status", "?")) for a in rec.get("attempts", [])]
        last = rec.get("status")
        job = jobs.get(unit)
        state: StageState
        reason: str | None = None
        if unit in complete:
            state = S.DONE
        elif job is not None and job[1] in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"):
            state = S.REQUEUED if last == "requeued" or job[1].startswith("REQUEUE") else S.QUEUED
        elif job is not None:
            state = S.RUNNING
        elif last == "requeued" and live is not None:
            state = S.STOPPED  # requeued, but Slurm no longer lists its job: nothing will resume it
        elif last == "running":
            # running without a live job: killed without a word (kill -9, OOM, node loss)
            dead, why = died(folder, unit, rec, live)
            state = S.DIED if dead else S.RUNNING
            if dead:
                reason = why
                if why and amend_record(folder, unit, str(rec.get("job_id")), "running", status="died",
                                        error=why):  # fmt: skip
                    rec = folder.task_records().get(unit, rec)
                    records[unit] = rec
                    attempts = [str(a.get("status", "?")) for a in rec.get("attempts", [])]
        elif last in ("failed", "requeued", "stopped", "died"):
            state = S(last)
            reason = rec.get("error")
        else:
            state = S.NOT_STARTED
        units[unit] = UnitStatus(
            unit=unit,
            state=state,
            attempts=attempts,
            host=rec.get("node") or rec.get("host"),
            job_id=str(rec["job_id"]) if rec.get("job_id") is not None else None,
            checkpoint=_checkpoint_of(folder, unit, array),
            slurm=job,
            reason=reason,
            progress=live_progress(folder.path, unit, rec) if state == S.RUNNING else None,
        )
    by_state: dict[StageState, list[int]] = {}
    for u in units.values():
        by_state.setdefault(u.state, []).append(u.unit)
    failed = {u: records[u] for u in by_state.get(S.FAILED, []) if u in records}
    stage_state: StageState
    if folder.is_done():
        stage_state = S.DONE
    else:
        stage_state = next(
            (s for s in STAGE_STATES if by_state.get(s)), S.INCOMPLETE if complete else S.NOT_STARTED
        )
    return StageStatus(
        folder.name,
        folder.stage_id,
        folder.path,
        stage_state,
        n_units,
        complete,
        running=by_state.get(S.RUNNING, []),
        failed=failed,
        stopped=by_state.get(S.STOPPED, []),
        died=by_state.get(S.DIED, []),
        queued=by_state.get(S.QUEUED, []),
        requeued=by_state.get(S.REQUEUED, []),
        units=units,
    )


def _is_run_folder(path: Path) -> bool:
    return (path / "stages").is_dir() and (path / "config.yaml").is_file()


def check_run_folder(run_dir: Path) -> Path:
    """`run_dir` itself when it is a run folder; else StatusError saying what to pass instead."""
    run_dir = Path(run_dir)
    hint = "pass runs/<experiment>/<run_id> (the launcher prints it as 'run folder: ...')"
    if not run_dir.exists():
        raise StatusError(f"{run_dir} does not exist; {hint}")
    if not run_dir.is_dir():
        raise StatusError(f"{run_dir} is a file, not a run folder; {hint}")
    if _is_run_folder(run_dir):
        return run_dir
    if (run_dir / "completions").is_dir() or (run_dir / "tasks").is_dir():
        raise StatusError(f"{run_dir} is a stage folder, not a run folder; {hint}")
    found = sorted(p.parent for p in run_dir.glob("*/*/stages") if _is_run_folder(p.parent))
    found += sorted(p.parent for p in run_dir.glob("*/stages") if _is_run_folder(p.parent))
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise StatusError(
            f"{run_dir} is not a run folder; run folders under it: "
            + ", ".join(str(p) for p in found[:3])
            + more
        )
    raise StatusError(f"{run_dir} is not a run folder (no stages/ and config.yaml inside); {hint}")


def _live(folders: list[StageFolder]) -> tuple[dict[str, tuple[str, str]] | None, str | None]:
    """squeue's live jobs when any of these stages went to Slurm; (None, why) when it cannot be asked."""
    if not any(r.get("executor") == "slurm" for f in folders for r in f.jobs()):
        return None, None
    if shutil.which("squeue") is None:  # a login-less host: no answer is not "every job is gone"
        return None, "squeue not found here; states come from the folders alone"
    try:
        return slurm_state.live_slurm_tasks(), None
    except (slurm_state.SlurmUnavailable, OSError) as exc:
        return None, f"Slurm was not asked ({exc}); states come from the folders alone"


def run_status(run_dir: Path, live: dict[str, tuple[str, str]] | None = None) -> list[StageStatus]:
    return _run_status(run_dir, live, ask_slurm=live is None)[0]


def _run_status(
    run_dir: Path, live: dict[str, tuple[str, str]] | None, ask_slurm: bool
) -> tuple[list[StageStatus], str | None]:
    run_dir = check_run_folder(run_dir)
    links = run_dir / "stages"
    names = sorted(p.name for p in links.iterdir() if not p.name.startswith("."))
    order = _topo(names, links)
    folders = [StageFolder((links / n).resolve()) for n in order]
    note = None
    if ask_slurm:
        live, note = _live(folders)
    return [stage_status(f, live) for f in folders], note


def _topo(names: list[str], links: Path) -> list[str]:
    """Upstream stages first, from the `needs` each stage folder's config.yaml records."""
    needs: dict[str, list[str]] = {}
    for n in names:
        cfg = (links / n).resolve() / "config.yaml"
        data = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        needs[n] = [d for d in (data or {}).get("needs", {}) if d in names]
    out: list[str] = []

    def visit(n: str) -> None:
        if n not in out:
            for d in needs.get(n, []):
                visit(d)
            out.append(n)

    for n in names:
        visit(n)
    return out


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _short(path: Path, stage_dir: Path) -> str:
    """A checkpoint path relative to its stage folder (the table's stage id names the folder)."""
    try:
        return str(path.relative_to(stage_dir))
    except ValueError:
        return str(path)


def _attempts(u: UnitStatus) -> str:
    n = len(u.attempts)
    return f"{n} attempt{'s' if n != 1 else ''}" + (f" ({', '.join(u.attempts)})" if n else "")


def _interesting(u: UnitStatus) -> bool:
    """Units worth a line: anything but a single clean attempt that is done."""
    return u.state != S.DONE or len(u.attempts) > 1 or u.checkpoint is not None


def print_status(
    run_dir: Path, console: Console | None = None, log_lines: int = 15, max_units: int = 40
) -> list[StageStatus]:
    console = console or Console()
    statuses, note = _run_status(run_dir, None, ask_slurm=True)
    table = Table(title=f"run {run_dir}")
    for col in ("stage", "stage id", "state", "done", "running", "queued", "requeued", "failed"):
        # names and ids stay whole (tests and scripts grep them); unit ranges fold
        table.add_column(col, no_wrap=col in ("stage", "stage id", "state"), overflow="fold")
    for s in statuses:
        table.add_row(
            s.stage,
            s.stage_id,
            s.state,
            f"{len(s.complete)}/{s.n_units}",
            unit_ranges(s.running) or "-",
            unit_ranges(s.queued) or "-",
            unit_ranges(s.requeued) or "-",
            unit_ranges(sorted(s.failed)) or "-",
        )
    console.print(table)
    if note:
        console.print(note, markup=False)
    rows = [(s, u) for s in statuses for u in s.units.values() if _interesting(u)]
    if rows:
        units = Table(title="units")
        for col in ("stage", "unit", "state", "progress", "attempts", "host / job", "last checkpoint", "why"):
            units.add_column(col, no_wrap=col in ("stage", "unit", "state"), overflow="fold")
        for s, u in rows[:max_units]:
            where = " / ".join(x for x in (u.host, u.job_id) if x) or "-"
            if u.slurm is not None:
                tid, state, reason = u.slurm
                where += f" [{tid} {state}" + (f" {reason}" if reason not in ("", "None") else "") + "]"
            ckpt = f"{_when(u.checkpoint[0])} {_short(u.checkpoint[1], s.path)}" if u.checkpoint else "-"
            prog = progress_text(u.progress) if u.progress else "-"
            units.add_row(s.stage, str(u.unit), u.state, prog, _attempts(u), where, ckpt, u.reason or "-")
        console.print(units)
        if len(rows) > max_units:
            console.print(f"... and {len(rows) - max_units} more units", markup=False)
    for s in statuses:
        records = StageFolder(s.path).task_records() if (s.failed or s.stopped or s.died) else {}
        for unit in sorted({*s.failed, *s.stopped, *s.died}):
            rec = records.get(unit, {})
            unit_status = s.units.get(unit)
            reason = (unit_status.reason if unit_status else None) or rec.get("error") or ""
            if unit in s.failed:
                what = "failed"
            elif unit in s.died:
                what = "died"
            elif rec.get("status") == "stopped":
                what = "was stopped; a relaunch resumes it"
            else:
                what = "was requeued but no job is left to resume it"
            console.rule(f"{s.stage} unit {unit} {what} ({rec.get('host')}, job {rec.get('job_id')})")
            console.print(reason, markup=False)
            console.print(
                tail(rec.get("log_err"), log_lines) or tail(rec.get("log_out"), log_lines), markup=False
            )
    return statuses


def unit_ranges(units: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    spans: list[list[int]] = []
    for u in units:
        if spans and u == spans[-1][1] + 1:
            spans[-1][1] = u
        else:
            spans.append([u, u])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
