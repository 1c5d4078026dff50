"""Plan, decide, then do: submit what is missing, and say where everything went.

`launch` composes the config and plans the stages; `launchers.decide` says what to do with
each (reuse, leave running, cancel, submit which units); this module only carries that out
and prints the summary. A submission that fails takes back everything this launch created.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from clinsynth.core.atomic import write_bytes
from launchers import slurm_state
from launchers.config import compose_config, redact, to_plain
from launchers.decide import Decision, Reuse, decide, dependency, observe, placement
from launchers.executors import make_executor, sbatch_script
from launchers.folders import StageFolder, link_stage, make_private_dir, private_files
from launchers.job import TaskSpec, run_task
from launchers.locks import stage_locks
from launchers.plan import Plan, PlannedStage, build_plan
from launchers.provenance import environment
from launchers.states import StageState
from launchers.summary import console_for, print_summary


class LaunchError(RuntimeError):
    """A stage failed while the launcher waited for it, or a submission failed; the message
    names stage, unit and log."""


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
            _write_run_files(plan, overrides, undo)
            _execute(plan, decisions, actions, cluster, kind, undo, err)
        except _SubmissionFailed as exc:
            ran = [a.folder for a in actions if a.status in (StageState.RAN, StageState.FAILED)]
            undo.rollback(keep=[*ran, plan.run_dir] if ran else [])
            raise LaunchError(f"{exc}; nothing of this launch was left behind") from None
        except LaunchError:
            print_summary(console, plan, actions, kind)
            raise
    print_summary(console, plan, actions, kind)
    return result


def _execute(
    plan: Plan,
    decisions: list[Decision],
    actions: list[StageAction],
    cluster: dict[str, Any],
    kind: str,
    undo: _Undo,
    err: Console,
) -> None:
    by_stage = {d.stage: d for d in decisions}
    new_ids: dict[str, list[str]] = {}
    for d, act in zip(decisions, actions, strict=True):
        st = plan.stage(d.stage)
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
                    _run_here(plan, st, cluster, kind, d, err, act.job_ids)
                except LaunchError:
                    act.status = StageState.FAILED
                    for later in actions[actions.index(act) + 1 :]:
                        if later.status is StageState.PLANNED:
                            later.status = StageState.NOT_STARTED
                    raise
                act.status = StageState.RAN


def _array_bases(ids: list[str]) -> list[str]:
    """A whole fresh array is one dependency on its base id."""
    return list(dict.fromkeys(i.split("_")[0] for i in ids))


@contextlib.contextmanager
def _submission(stage: str) -> Iterator[None]:
    """Any error while submitting becomes one message (submitit also prints sbatch's stderr: muted)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
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
) -> None:
    """local/debug: run the stage's tasks now (at most cluster.max_parallel_tasks at once);
    `ids` gets each job id as it starts, so a failure still says which jobs ran."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    columns = (TextColumn(f"[bold]{st.name}[/] {st.stage_id}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=kind == "debug") as progress:
        bar = progress.add_task(st.name, total=n_units, completed=n_units - len(d.missing))
        while pending or running:
            while pending and len(running) < limit:
                unit, spec = pending.pop(0)
                with _submission(st.name):  # debug: the task runs later, in .results()
                    job = ex.submit(run_task, spec)
                ids.append(str(job.job_id))
                task_units = [unit] if st.shards > 1 else list(range(n_units))
                _record(st, kind, str(job.job_id), task_units, [str(job.job_id)] * len(task_units), None,
                        plan.run_id)  # fmt: skip
                running.append((unit, job))
            still = []
            for unit, job in running:
                if kind == "debug" or job.done():
                    try:
                        # debug runs the task here: what it prints is a log, not a result (stdout)
                        with contextlib.redirect_stdout(sys.stderr if kind == "debug" else sys.stdout):
                            job.results()
                    except Exception as exc:
                        failures.append(f"unit {unit}: {str(exc).strip()[-2000:]}")
                else:
                    still.append((unit, job))
            running = still
            progress.update(bar, completed=len(st.folder.completed_units()))
            if running:
                time.sleep(0.2)
    if failures:
        raise LaunchError(
            f"stage {st.name} ({st.folder.path}) failed:\n"
            + "\n".join(failures)
            + f"\nlogs: {st.folder.logs}; status: python -m launch status {plan.run_dir}"
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
    for warning in plan.warnings:
        console.out(f"warning: {warning}", highlight=False)
    console.out("dry run: nothing was written or submitted", highlight=False)
