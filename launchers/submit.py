"""Plan, decide, then do: submit what is missing, and say where everything went.

`launch` composes the config and plans the stages; `launchers.decide` says what to do with
each (reuse, leave running, cancel, submit which units); this module only carries that out
and prints the summary. A submission that fails takes back everything this launch created.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import io
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from clinsynth.core.atomic import write_bytes
from clinsynth.core.context import TaskStopped, signal_name
from launchers import slurm_state
from launchers.config import compose_config, redact, to_plain
from launchers.decide import Decision, Reuse, decide, dependency, observe, placement
from launchers.executors import make_executor, read_exit_codes, sbatch_script
from launchers.folders import StageFolder, link_stage, make_private_dir, private_files
from launchers.job import TaskSpec, run_task
from launchers.locks import stage_locks
from launchers.plan import Plan, PlannedStage, build_plan
from launchers.provenance import environment
from launchers.states import StageState
from launchers.status import unit_ranges
from launchers.summary import console_for, print_summary


class LaunchError(RuntimeError):
    """A stage failed while the launcher waited for it, or a submission failed; the message
    names stage, unit and log."""


class LaunchStopped(LaunchError):
    """The launcher got SIGINT/SIGTERM/SIGHUP: its local tasks were stopped (Slurm jobs keep
    running); the one-line message says what was stopped and that a relaunch resumes."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


#: what stops a launch: Ctrl-C, `kill`, a closed terminal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: seconds a local task has to end after SIGTERM before its process group gets SIGKILL
#: (`cluster.stop_grace_s`, conf/cluster/local.yaml; a second Ctrl-C/SIGTERM kills at once)
STOP_GRACE_S = 20.0


def stop_grace_s(cluster: dict[str, Any]) -> float:
    value = cluster.get("stop_grace_s")
    return STOP_GRACE_S if value is None else max(0.0, float(value))


#: errors of the file system under the runs folder, in words
STORAGE_ERRORS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is not a folder",
}


def storage_error(exc: OSError, runs_root: Path | None = None) -> str | None:
    """One line for an OSError of the runs folder's file system (None for other errors): what
    failed, where, and what to do."""
    if exc.errno not in STORAGE_ERRORS:
        return None
    what = STORAGE_ERRORS[exc.errno]
    name = errno.errorcode.get(exc.errno or 0, "?")
    where = exc.filename or (f"a file under {runs_root}" if runs_root else "a file of the run")
    runs = f"paths.runs={runs_root}" if runs_root else "paths.runs"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space there or point paths.runs at another file system ({runs}); a relaunch resumes"
    elif exc.errno == errno.ENOTDIR:
        todo = f"point paths.runs at a folder ({runs})"
    else:
        todo = f"make it writable, or point paths.runs at a folder you can write ({runs})"
    return f"cannot write {where}: {what} ({name}); {todo}"


class _StopSignals:
    """SIGINT/SIGTERM/SIGHUP while the launcher runs or submits stages: a flag the launch acts
    on between steps (stop the local tasks; stop submitting), never an exception in the middle
    of a write. A signal that was ignored when the launch began (nohup) stays ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self.previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def note(self, signum: int) -> None:
        """A debug task got the signal (its own handler held it while it ran)."""
        if self.signum is None:
            self.signum = signum
        self.count += 1


@dataclass
class StageAction:
    """A stage's decision and what became of it in this launch."""

    stage: str
    stage_id: str
    folder: Path
    status: StageState
    n_units: int
    units: list[int] = field(default_factory=list)  # units submitted (or planned) now
    live_units: list[int] = field(default_factory=list)
    live_ids: list[str] = field(default_factory=list)  # still-live jobs of earlier launches
    job_ids: list[str] = field(default_factory=list)  # jobs this launch submitted
    cancelled: list[str] = field(default_factory=list)
    sbatch: str | None = None
    reuse: Reuse | None = None
    reason: str = ""

    @classmethod
    def of(cls, st: PlannedStage, d: Decision) -> StageAction:
        return cls(
            d.stage, st.stage_id, st.folder.path, d.state, d.n_units, list(d.units), list(d.live_units),
            list(d.live_ids), reuse=d.reuse, reason=d.reason,
        )  # fmt: skip


@dataclass
class LaunchResult:
    plan: Plan
    actions: list[StageAction]

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    def action(self, stage: str) -> StageAction:
        return next(a for a in self.actions if a.stage == stage)

    @property
    def submitted(self) -> dict[str, list[int]]:
        """Stage -> units this launch submitted (queued on Slurm or ran here)."""
        return {
            a.stage: a.units
            for a in self.actions
            if a.status in (StageState.SUBMITTED, StageState.RAN, StageState.FAILED) and a.units
        }


def _redact_overrides(overrides: Sequence[str]) -> list[str]:
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        red = redact({key.rsplit(".", 1)[-1].lstrip("+~"): value}) if sep else {}
        out.append(f"{key}={next(iter(red.values()))}" if sep else o)
    return out


def _task_spec(plan: Plan, st: PlannedStage, n_units: int, shard: int | None) -> TaskSpec:
    return TaskSpec(
        stage=st.name,
        stage_id=st.stage_id,
        stage_dir=str(st.folder.path),
        config=st.config,
        inputs={dep: str(plan.stage(dep).folder.path) for dep in st.needs},
        num_shards=st.shards,
        n_units=n_units,
        run_id=plan.run_id,
        experiment=plan.experiment,
        tracking=dict(plan.plain.get("tracking") or {}),
        stage_modules=list(plan.plain.get("stage_modules") or []),
        shard=shard,
        cache_dir=str(plan.runs_root / "cache"),
    )


class _Undo:
    """What this launch created, so that a failed submission leaves no half run behind."""

    def __init__(self) -> None:
        self.created: list[Path] = []  # topmost new dirs and new links, in creation order
        self.meta: dict[Path, bytes | None] = {}  # meta.json before this launch touched it
        self.logs: dict[Path, set[str]] = {}  # files in pre-existing logs/ before submitting
        self.slurm_jobs: list[str] = []

    def mkdir(self, path: Path) -> Path:
        top = None
        for p in (path, *path.parents):
            if p.exists() or p.is_symlink():
                break
            top = p
        make_private_dir(path)
        if top is not None:
            self.created.append(top)
        return path

    def stage_folder(self, folder: StageFolder) -> None:
        self.mkdir(folder.path)
        for p in (folder.logs, folder.completions, folder.tasks):
            self.mkdir(p)
        self.keep_meta(folder)
        self.logs.setdefault(folder.logs, {p.name for p in folder.logs.iterdir()})

    def keep_meta(self, folder: StageFolder) -> None:
        """Remember meta.json as it was before this launch wrote to it."""
        meta = folder.path / "meta.json"
        self.meta.setdefault(meta, meta.read_bytes() if meta.exists() else None)

    def link(self, run_dir: Path, stage: str, folder: StageFolder) -> None:
        link = run_dir / "stages" / stage
        if not link.is_symlink():
            self.mkdir(run_dir / "stages")
            self.created.append(link)
        link_stage(run_dir, stage, folder)

    def rollback(self, keep: Sequence[Path]) -> None:
        """Cancel this launch's Slurm jobs and remove what it created, except `keep` and above."""
        slurm_state.scancel(self.slurm_jobs)
        kept = [k.resolve() for k in keep]
        for path in reversed(self.created):
            real = path.parent.resolve() / path.name
            if any(k == real or real in k.parents for k in kept):
                continue
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        for meta, old in self.meta.items():
            if meta.parent.is_dir() and old is not None:
                write_bytes(meta, old)
        for logs, before in self.logs.items():
            if logs.is_dir():  # submitit's pickles and sbatch files of the failed submission
                for p in logs.iterdir():
                    if p.name not in before and p.is_file():
                        p.unlink(missing_ok=True)


class _SubmissionFailed(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"submitting stage {stage} failed: {message}")


def _write_stage_files(plan: Plan, st: PlannedStage, n_units: int, kind: str, units: Sequence[int]) -> None:
    """config.yaml and meta.json before a submission; meta records who ran it where (producers)."""
    folder = st.folder
    folder.write_config(
        {
            "stage": st.name,
            "stage_id": st.stage_id,
            "needs": {d: plan.stage(d).stage_id for d in st.needs},
            "shards": st.shards,
            "config": redact(st.config),
        }
    )
    meta = folder.read_meta()
    if not meta:
        meta = {"stage": st.name, "stage_id": st.stage_id, "created": time.time(), **environment()}
    meta.setdefault("runs", [])
    if plan.run_id not in meta["runs"]:
        meta["runs"].append(plan.run_id)
    resources = placement(st, plan.plain, kind)
    meta.setdefault("producers", []).append(
        {
            "run_id": plan.run_id,
            "experiment": plan.experiment,
            "run_dir": str(plan.run_dir),
            "executor": kind,
            "resources": resources,
            "units": list(units),
            "time": time.time(),
        }
    )
    meta.update(
        n_units=n_units,
        num_shards=st.shards,
        executor=kind,
        resources=resources,
        world_size=n_units if st.shards == 1 else 1,
    )
    folder.write_meta(meta)


def _note_reuse(plan: Plan, st: PlannedStage) -> None:
    """A done stage this run reuses lists the run in its meta.json."""
    meta = st.folder.read_meta()
    runs = meta.setdefault("runs", [])
    if plan.run_id not in runs:
        runs.append(plan.run_id)
        st.folder.write_meta(meta)


def _write_run_files(plan: Plan, overrides: Sequence[str], undo: _Undo) -> None:
    undo.mkdir(plan.run_dir)
    write_bytes(plan.run_dir / "config.yaml", yaml.safe_dump(redact(plan.plain), sort_keys=False).encode())
    write_bytes(plan.run_dir / "overrides.yaml", yaml.safe_dump(_redact_overrides(overrides)).encode())
    write_bytes(plan.run_dir / "delta.yaml", yaml.safe_dump(redact(plan.delta)).encode())


def launch(
    overrides: Sequence[str] = (),
    console: Console | None = None,
    cwd: Path | None = None,
    *,
    err: Console | None = None,
) -> LaunchResult:
    """Compose, plan, decide, then carry the decisions out.

    `console` gets the results (tables, summary, dry-run sbatch files; default stdout),
    `err` the progress bars (default stderr).
    """
    console = console or console_for()
    err = err or console_for(stderr=True)
    cfg = compose_config(overrides)
    plain = to_plain(cfg)
    base = to_plain(compose_config([]))
    plan = build_plan(plain, base, cwd=cwd)
    cluster = dict(plain.get("cluster") or {})
    kind = str(cluster.get("executor"))
    if plain.get("dry_run"):
        decisions = decide(plan, observe(plan, kind), kind)
        actions = [StageAction.of(plan.stage(d.stage), d) for d in decisions]
        _dry_run(console, plan, decisions, actions, cluster, kind)
        return LaunchResult(plan, actions)
    undo = _Undo()
    with private_files(), stage_locks(plan, err, undo.mkdir):
        # decided under the locks: a concurrent launch of the same stages has finished deciding
        # (and, on local/debug, running) by now, so what it did is seen, never done twice
        decisions = decide(plan, observe(plan, kind), kind)
        actions = [StageAction.of(plan.stage(d.stage), d) for d in decisions]
        result = LaunchResult(plan, actions)
        try:
            with _StopSignals() as signals:
                _write_run_files(plan, overrides, undo)
                _execute(plan, decisions, actions, cluster, kind, undo, err, signals)
        except _SubmissionFailed as exc:
            ran = [a.folder for a in actions if a.status in (StageState.RAN, StageState.FAILED)]
            undo.rollback(keep=[*ran, plan.run_dir] if ran else [])
            raise LaunchError(f"{exc}; nothing of this launch was left behind") from None
        except LaunchError:
            print_summary(console, plan, actions, kind)
            raise
        except OSError as exc:
            why = storage_error(exc, plan.runs_root)
            if why is None:
                raise
            ran = [a.folder for a in actions if a.status in (StageState.RAN, StageState.FAILED)]
            with contextlib.suppress(OSError):
                undo.rollback(keep=[*ran, plan.run_dir] if ran else [])
            raise LaunchError(why) from None
    print_summary(console, plan, actions, kind)
    _raise_if_unfinished(plan, actions, kind)
    return result


def _raise_if_unfinished(plan: Plan, actions: list[StageAction], kind: str) -> None:
    """local/debug: a launch ends with its pipeline done, or says why not (exit non-zero).

    A stage still run by an earlier launch's live task (its launcher was killed) is not waited
    for; the stages after it were not started, and exit 0 would read as success."""
    if kind == "slurm":
        return  # submitted with dependencies: the jobs finish the pipeline
    busy = [a for a in actions if a.status is StageState.RUNNING]
    blocked = [a.stage for a in actions if a.status is StageState.BLOCKED]
    if not busy and not blocked:
        return
    parts = [
        f"stage {a.stage} is still being run by an earlier launch (unit(s) "
        f"{', '.join(map(str, a.live_units)) or '?'}, job(s) {', '.join(a.live_ids) or '?'})"
        for a in busy
    ]
    if blocked:
        parts.append(f"not started: {', '.join(blocked)}")
    raise LaunchError(
        "; ".join(parts) + f"; launch the same command again once it has ended "
        f"(watch: python -m launch status {plan.run_dir})"
    )


def _execute(
    plan: Plan,
    decisions: list[Decision],
    actions: list[StageAction],
    cluster: dict[str, Any],
    kind: str,
    undo: _Undo,
    err: Console,
    signals: _StopSignals | None = None,
) -> None:
    signals = signals or _StopSignals()
    by_stage = {d.stage: d for d in decisions}
    new_ids: dict[str, list[str]] = {}
    for d, act in zip(decisions, actions, strict=True):
        st = plan.stage(d.stage)
        if signals.requested and d.state is StageState.PLANNED:
            _stop_before(plan, actions, act, kind, signals)
        if d.state is StageState.DONE:
            if d.mark_done:
                st.folder.try_mark_done(d.n_units)
            undo.keep_meta(st.folder)
            _note_reuse(plan, st)
            undo.link(plan.run_dir, st.name, st.folder)
        elif d.state is StageState.RUNNING:
            undo.link(plan.run_dir, st.name, st.folder)
        elif d.state is StageState.PLANNED:
            if d.cancel:
                slurm_state.scancel(list(d.cancel))
                act.cancelled = list(d.cancel)
            undo.stage_folder(st.folder)
            _write_stage_files(plan, st, d.n_units, kind, d.units)
            if kind == "slurm":
                ids = _submit_slurm(plan, st, cluster, dependency(d, by_stage, new_ids), d, undo)
                act.status, act.job_ids = StageState.SUBMITTED, ids
                new_ids[st.name] = _array_bases(ids)
                undo.link(plan.run_dir, st.name, st.folder)
            else:
                undo.link(plan.run_dir, st.name, st.folder)
                try:
                    _run_here(plan, st, cluster, kind, d, err, act.job_ids, signals)
                except LaunchError as exc:
                    act.status = StageState.STOPPED if isinstance(exc, LaunchStopped) else StageState.FAILED
                    _not_started_after(actions, act)
                    raise
                act.status = StageState.RAN

    if kind == "slurm" and signals.requested:
        submitted = [i for a in actions for i in a.job_ids]
        signum = signals.signum or signal.SIGINT
        if submitted:
            raise LaunchStopped(
                f"stopped by {signal_name(signum)} after every stage was submitted: "
                + slurm_keep_running(submitted, plan.run_dir),
                signum,
            )


def _not_started_after(actions: list[StageAction], act: StageAction) -> None:
    for later in actions[actions.index(act) + 1 :]:
        if later.status is StageState.PLANNED:
            later.status = StageState.NOT_STARTED


def _stop_before(
    plan: Plan, actions: list[StageAction], act: StageAction, kind: str, signals: _StopSignals
) -> None:
    """A stop signal came between stages: submit or start nothing more."""
    signum = signals.signum or signal.SIGINT
    act.status = StageState.NOT_STARTED
    _not_started_after(actions, act)
    if kind == "slurm":
        submitted = [i for a in actions for i in a.job_ids]
        if submitted:
            raise LaunchStopped(
                f"stopped by {signal_name(signum)} while submitting: "
                f"{slurm_keep_running(submitted, plan.run_dir)}; stage {act.stage} and later were not "
                "submitted: relaunch the same command to submit them",
                signum,
            )
    raise LaunchStopped(
        f"stopped by {signal_name(signum)} before stage {act.stage} started; nothing of this launch is "
        "running; relaunch the same command to resume",
        signum,
    )


def slurm_keep_running(job_ids: Sequence[str], run_dir: Path) -> str:
    """`the Slurm jobs 12, 13 keep running; watch: ...; cancel: scancel 12 13` (one line)."""
    ids = list(dict.fromkeys(i.split("_")[0] for i in job_ids))
    return (
        f"the Slurm job(s) {', '.join(ids)} keep running (not cancelled); "
        f"watch: python -m launch status {run_dir} or squeue -j {','.join(ids)}; "
        f"cancel: scancel {' '.join(ids)}"
    )


def _array_bases(ids: list[str]) -> list[str]:
    """A whole fresh array is one dependency on its base id."""
    return list(dict.fromkeys(i.split("_")[0] for i in ids))


@contextlib.contextmanager
def _submission(stage: str) -> Iterator[None]:
    """Any error while submitting becomes one message (submitit also prints sbatch's stderr: muted)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except OSError as exc:
        if exc.errno in STORAGE_ERRORS:
            raise  # the runs folder cannot be written: launch() says so in one line
        raise _SubmissionFailed(stage, str(exc).strip() or type(exc).__name__) from exc
    except Exception as exc:
        raise _SubmissionFailed(stage, str(exc).strip() or type(exc).__name__) from exc


def _submit_slurm(
    plan: Plan, st: PlannedStage, cluster: dict[str, Any], dep: str | None, d: Decision, undo: _Undo
) -> list[str]:
    units = list(d.units)
    with _submission(st.name):
        ex = make_executor(st, cluster, dep, plan.run_id)
        if st.shards > 1:
            specs = [_task_spec(plan, st, d.n_units, shard=u) for u in units]
        else:
            specs = [_task_spec(plan, st, d.n_units, shard=None)]
        with ex.batch():
            jobs = [ex.submit(run_task, s) for s in specs]
    ids = [str(j.job_id) for j in jobs]
    undo.slurm_jobs.extend(ids)
    task_ids = ids if st.shards > 1 else ids * len(units)
    _record(st, "slurm", ids[0].split("_")[0], units, task_ids, dep, plan.run_id)
    return ids


def _record(
    st: PlannedStage,
    kind: str,
    job_id: str,
    units: list[int],
    task_ids: list[str],
    dependency: str | None,
    run_id: str,
) -> None:
    record: dict[str, Any] = {
        "time": time.time(),
        "executor": kind,
        "job_id": job_id,
        "units": units,
        "task_ids": task_ids,
        "dependency": dependency,
        "run_id": run_id,
        "host": socket.gethostname(),
        "user": getpass.getuser(),
    }
    if kind == "local" and job_id.isdigit():
        # PID + start time: a later launch tells this task from an unrelated process with its PID
        record["process"] = slurm_state.process_identity(int(job_id)) or slurm_state.EXITED
    st.folder.append_job(record)


def _run_here(
    plan: Plan,
    st: PlannedStage,
    cluster: dict[str, Any],
    kind: str,
    d: Decision,
    err: Console,
    ids: list[str],
    signals: _StopSignals | None = None,
) -> None:
    """local/debug: run the stage's tasks now (at most cluster.max_parallel_tasks at once);
    `ids` gets each job id as it starts, so a failure still says which jobs ran.

    A stop signal (see `_StopSignals`) stops the running tasks (`_stop_local`), records
    them as stopped and raises LaunchStopped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    signals = signals or _StopSignals()
    n_units = d.n_units
    units = list(d.units)
    with _submission(st.name):
        ex = make_executor(st, cluster, None, plan.run_id)
    if st.shards > 1:
        pending = [(u, _task_spec(plan, st, n_units, shard=u)) for u in units]
    else:
        pending = [(0, _task_spec(plan, st, n_units, shard=None))]
    limit = 1 if kind == "debug" else max(1, int(cluster.get("max_parallel_tasks", 4)))
    running: list[tuple[int, Any]] = []
    failures: list[str] = []
    stopped: list[tuple[list[int], str]] = []  # debug: units a task stopped on a signal, job id

    def units_of(unit: int) -> list[int]:
        return [unit] if st.shards > 1 else list(range(n_units))

    columns = (TextColumn(f"[bold]{st.name}[/] {st.stage_id}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=kind == "debug") as progress:
        bar = progress.add_task(st.name, total=n_units, completed=n_units - len(d.missing))
        try:
            while pending or running:
                if signals.requested:
                    break
                while pending and len(running) < limit and not signals.requested:
                    unit, spec = pending.pop(0)
                    with _submission(st.name):  # debug: the task runs later, in .results()
                        job = ex.submit(run_task, spec)
                    ids.append(str(job.job_id))
                    task_units = units_of(unit)
                    _record(st, kind, str(job.job_id), task_units, [str(job.job_id)] * len(task_units), None,
                            plan.run_id)  # fmt: skip
                    running.append((unit, job))
                still = []
                for unit, job in running:
                    if kind == "debug":
                        try:
                            # debug runs the task here: what it prints is a log, not a result (stdout)
                            with contextlib.redirect_stdout(sys.stderr):
                                job.results()
                        except TaskStopped as exc:
                            signals.note(exc.signum)
                            stopped.append((units_of(unit), str(job.job_id)))
                        except Exception as exc:
                            failures.append(f"unit {unit}: {str(exc).strip()[-2000:]}")
                    elif job.done():
                        why = _local_job_failure(st, job, units_of(unit))
                        if why is not None:
                            failures.append(f"unit {unit}: {why}")
                    else:
                        still.append((unit, job))
                running = still
                progress.update(bar, completed=len(st.folder.completed_units()))
                if running and not signals.requested:
                    time.sleep(0.2)
        except BaseException:
            # an unexpected error mid-stage (a failed submission, a full disk): the local jobs
            # started so far run in their own sessions, so stop them before the caller rolls back
            if kind == "local" and running:
                _stop_local([job for _, job in running], stop_grace_s(cluster), signals)
            raise
    if signals.requested:
        grace = stop_grace_s(cluster)
        killed = _stop_local([job for _, job in running], grace, signals) if running else set()
        for unit, job in running:
            stopped.append((units_of(unit), str(job.job_id)))
        signum = signals.signum or signal.SIGINT
        _stopped_records(st, stopped, killed, signum, grace)
        raise LaunchStopped(_stop_message(plan, st, stopped, killed, [u for u, _ in pending], signum), signum)
    if failures:
        raise LaunchError(
            f"stage {st.name} ({st.folder.path}) failed:\n"
            + "\n".join(failures)
            + f"\nlogs: {st.folder.logs}; status: python -m launch status {plan.run_dir}"
        )


def _local_job_failure(st: PlannedStage, job: Any, units: list[int]) -> str | None:
    """None when a finished local job left its result; else why it failed, in words.

    A task killed by a signal (kill -9, the OOM killer) leaves no result: its controller's exit
    codes say which signal, and its task record, still "running", is amended to say so.
    Without the codes, submitit's own error is the reason (after its wait for a result)."""
    from submitit.core.utils import JobPaths

    n_tasks = len(units) if st.shards == 1 else 1
    results = all(JobPaths(st.folder.logs, str(job.job_id), k).result_pickle.exists() for k in range(n_tasks))
    codes = read_exit_codes(st.folder.logs, str(job.job_id)) if not results else None
    if codes is not None and any(c not in (0, None) for c in codes):
        reasons = []
        for k, code in enumerate(codes):
            why = slurm_state.describe_exit(code)
            if code is None or code == 0 or why is None:
                continue
            task_units = [units[k]] if st.shards == 1 and k < len(units) else units
            for u in task_units:
                _amend_record(st, u, str(job.job_id), "running", status="failed", error=why, exit_code=code,
                              **({"signal": signal_name(-code)} if code < 0 else {}))  # fmt: skip
            reasons.append(why if n_tasks == 1 else f"rank {k} {why}")
        log = JobPaths(st.folder.logs, str(job.job_id), 0).stderr
        return f"{'; '.join(reasons)} (job {job.job_id}; log {log})"
    try:
        job.results()
    except Exception as exc:
        for u in units:
            _amend_record(st, u, str(job.job_id), "running", status="failed",
                          error="ended without a result (no exit status recorded)")  # fmt: skip
        return str(exc).strip()[-2000:]
    return None


def _amend_record(st: PlannedStage, unit: int, job_id: str, only_if: str | None, **fields: Any) -> bool:
    from launchers.status import amend_record

    return amend_record(st.folder, unit, job_id, only_if, **fields)


def _stop_local(jobs: list[Any], grace_s: float, signals: _StopSignals) -> set[str]:
    """SIGTERM to each local job's process group (its shell, controller, tasks and their
    children: a job is its own group, see launchers.executors), then wait up to `grace_s`
    (a second stop signal ends the wait), then SIGKILL whatever is left. Returns the ids of
    the jobs that had to be killed."""
    groups = {str(job.job_id): int(job.job_id) for job in jobs if str(job.job_id).isdigit()}
    for pgid in groups.values():
        slurm_state.signal_group(pgid, signal.SIGTERM)
    count = signals.count
    deadline = time.monotonic() + grace_s

    def left() -> dict[str, int]:
        for job in jobs:
            job.done()  # reaps the job's shell
        return {j: g for j, g in groups.items() if slurm_state.group_members(g)}

    alive = left()
    while alive and time.monotonic() < deadline and signals.count == count:
        time.sleep(0.1)
        alive = left()
    for pgid in alive.values():
        slurm_state.signal_group(pgid, signal.SIGKILL)
    end = time.monotonic() + 10
    while left() and time.monotonic() < end:
        time.sleep(0.05)
    return set(alive)


def _stopped_records(
    st: PlannedStage, stopped: list[tuple[list[int], str]], killed: set[str], signum: int, grace: float
) -> None:
    """Each stopped unit's record says who stopped it and how."""
    by = f"the launcher (pid {os.getpid()}), which got {signal_name(signum)}"
    for units, job_id in stopped:
        if not job_id.isdigit():
            continue  # debug: the task got the signal itself, in this process, and said so
        for u in units:
            if job_id in killed:
                how = f"killed with SIGKILL by {by}, {grace:g}s after SIGTERM"
                _amend_record(st, u, job_id, "running", status="stopped", error=how, signal="SIGKILL")
                _amend_record(st, u, job_id, "stopped", error=how)
            elif not _amend_record(st, u, job_id, "stopped", error=f"stopped by SIGTERM from {by}"):
                _amend_record(st, u, job_id, "running", status="stopped", error=f"stopped by {by}")


def _stop_message(
    plan: Plan,
    st: PlannedStage,
    stopped: list[tuple[list[int], str]],
    killed: set[str],
    not_started: list[int],
    signum: int,
) -> str:
    units = sorted({u for us, _ in stopped for u in us})
    jobs = [j for _, j in stopped]
    what = f"stopped unit(s) {unit_ranges(units)}" if units else "nothing was running"
    what = f"stage {st.name}: {what}"
    if jobs and all(j.isdigit() for j in jobs):
        kills = f"; {len(killed)} killed with SIGKILL" if killed else ""
        what += f" (local job(s) {', '.join(jobs)}{kills})"
    if not_started:
        what += f", unit(s) {unit_ranges(sorted(not_started))} not started"
    return (
        f"stopped by {signal_name(signum)}: {what}; nothing of this launch is left running; "
        f"relaunch the same command to resume (status: python -m launch status {plan.run_dir})"
    )


def _dry_run(
    console: Console,
    plan: Plan,
    decisions: list[Decision],
    actions: list[StageAction],
    cluster: dict[str, Any],
    kind: str,
) -> None:
    """The decisions, then per stage to submit: the exact sbatch file and the config its task gets."""
    by_stage = {d.stage: d for d in decisions}
    placeholders = {d.stage: [f"<{d.stage}>"] for d in decisions if d.units}
    for d, act in zip(decisions, actions, strict=True):
        if d.units and kind == "slurm":
            st = plan.stage(d.stage)
            dep = dependency(d, by_stage, placeholders)
            act.sbatch = sbatch_script(st, cluster, dep, plan.run_id, len(d.units))
        if d.cancel:
            act.cancelled = list(d.cancel)
    print_summary(console, plan, actions, kind, dry_run=True)
    for d, act in zip(decisions, actions, strict=True):
        if not d.units:
            continue
        st = plan.stage(d.stage)
        if act.sbatch is not None:
            console.out(f"--- sbatch for {d.stage} ({len(d.units)} task(s)) ---", highlight=False)
            console.out(act.sbatch, highlight=False)
        head = f"--- config for {d.stage} (what its task receives; secrets redacted) ---"
        console.out(head, highlight=False)
        console.out(yaml.safe_dump(redact(st.config), sort_keys=False).rstrip(), highlight=False)
    from launchers.estimate import estimate_plan, format_estimate

    # estimate=<name>: GPU-hours of what this launch would submit, and what they assume
    estimate = estimate_plan(plan, {d.stage: (len(d.units), d.n_units) for d in decisions})
    for line in format_estimate(estimate) if estimate else []:
        console.out(line, highlight=False)
    for warning in plan.warnings:
        console.out(f"warning: {warning}", highlight=False)
    console.out("dry run: nothing was written or submitted", highlight=False)
