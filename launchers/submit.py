"""Plan, skip what is done, submit what is missing, and say where everything went."""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from clinsynth.core.atomic import write_bytes
from launchers import slurm_state
from launchers.config import compose_config, redact, to_plain
from launchers.executors import make_executor, sbatch_script, world_size
from launchers.folders import link_stage, make_private_dir
from launchers.job import TaskSpec, run_task
from launchers.plan import Plan, PlannedStage, build_plan
from launchers.provenance import environment


class LaunchError(RuntimeError):
    """A stage failed while the launcher waited for it; the message names stage, unit and log."""


@dataclass
class StageAction:
    stage: str
    stage_id: str
    folder: Path
    status: str  # done | running | submitted | planned
    n_units: int
    units: list[int] = field(default_factory=list)  # units submitted (or planned) now
    live_units: list[int] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    sbatch: str | None = None


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
        return {a.stage: a.units for a in self.actions if a.status == "submitted"}


def _redact_overrides(overrides: Sequence[str]) -> list[str]:
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        red = redact({key.rsplit(".", 1)[-1].lstrip("+~"): value}) if sep else {}
        out.append(f"{key}={next(iter(red.values()))}" if sep else o)
    return out


def _live(stage: PlannedStage, executor: str) -> tuple[set[int], list[str]]:
    """Units of this stage that a still-living job will run, and those jobs' ids."""
    records = stage.folder.jobs()
    live_units: set[int] = set()
    live_ids: list[str] = []
    if executor == "slurm":
        if not any(r.get("executor") == "slurm" for r in records):
            return live_units, live_ids
        live = slurm_state.live_slurm_tasks()
        for r in records:
            if r.get("executor") != "slurm":
                continue
            for unit, tid in zip(r["units"], r["task_ids"], strict=True):
                if tid in live:
                    live_units.add(unit)
                    if tid not in live_ids:
                        live_ids.append(tid)
    elif executor == "local":
        here = socket.gethostname()
        for r in records:
            if r.get("executor") == "local" and r.get("host") == here:
                for unit, tid in zip(r["units"], r["task_ids"], strict=True):
                    if slurm_state.pid_alive(int(tid)):
                        live_units.add(unit)
                        live_ids.append(tid)
    return live_units, live_ids


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


def _write_stage_files(plan: Plan, st: PlannedStage, n_units: int, kind: str) -> None:
    folder = st.folder.create()
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
    meta.update(
        n_units=n_units, num_shards=st.shards, executor=kind, world_size=n_units if st.shards == 1 else 1
    )
    folder.write_meta(meta)
    link_stage(plan.run_dir, st.name, folder)


def _write_run_files(plan: Plan, overrides: Sequence[str]) -> None:
    make_private_dir(plan.runs_root)
    make_private_dir(plan.run_dir)
    write_bytes(plan.run_dir / "config.yaml", yaml.safe_dump(redact(plan.plain), sort_keys=False).encode())
    write_bytes(plan.run_dir / "overrides.yaml", yaml.safe_dump(_redact_overrides(overrides)).encode())
    write_bytes(plan.run_dir / "delta.yaml", yaml.safe_dump(redact(plan.delta)).encode())


def launch(
    overrides: Sequence[str] = (), console: Console | None = None, cwd: Path | None = None
) -> LaunchResult:
    console = console or Console(stderr=True)
    cfg = compose_config(overrides)
    plain = to_plain(cfg)
    base = to_plain(compose_config([]))
    plan = build_plan(plain, base, cwd=cwd)
    cluster = dict(plain.get("cluster") or {})
    kind = str(cluster.get("executor"))
    dry = bool(plain.get("dry_run"))
    if not dry:
        _write_run_files(plan, overrides)

    actions: list[StageAction] = []
    deps: dict[str, list[str]] = {}
    resubmitted: set[str] = set()
    for st in plan.stages:
        n_units = st.shards if st.shards > 1 else world_size(st, kind)
        act = StageAction(st.name, st.stage_id, st.folder.path, "planned", n_units)
        actions.append(act)
        if st.folder.is_done() or (st.folder.path.exists() and not st.folder.missing_units(n_units)):
            if not dry:
                _write_stage_files(plan, st, n_units, kind)
                st.folder.try_mark_done(n_units)
            act.status, deps[st.name] = "done", []
            continue
        live_units, live_ids = _live(st, kind) if st.folder.path.exists() else (set(), [])
        if live_ids and any(d in resubmitted for d in st.needs):
            # its parents run again: the old job waits on jobs that will never succeed
            act.cancelled = live_ids
            if not dry:
                slurm_state.scancel(live_ids)
            live_units, live_ids = set(), []
        if st.shards > 1:
            to_run = [u for u in st.folder.missing_units(n_units) if u not in live_units]
        else:
            to_run = [] if live_units else list(range(n_units))
        act.live_units, act.units = sorted(live_units), to_run
        dependency = _dependency(st, deps)
        if dry:
            act.status = "planned" if to_run else "running"
            if kind == "slurm" and to_run:
                act.sbatch = sbatch_script(
                    st, cluster, _dry_dependency(st, deps, plan), plan.run_id, len(to_run)
                )
            deps[st.name] = live_ids + ([f"<{st.name}>"] if to_run else [])
            continue
        _write_stage_files(plan, st, n_units, kind)
        if not to_run:
            act.status, act.job_ids, deps[st.name] = "running", live_ids, live_ids
            continue
        if st.shards == 1:
            st.folder.clear_completions()  # a multi-rank stage reruns all its ranks together
        new_ids = _submit(plan, st, cluster, kind, dependency, to_run, n_units, console)
        act.status, act.job_ids = "submitted", new_ids
        deps[st.name] = live_ids + _dependency_ids(new_ids, kind)
        resubmitted.add(st.name)

    _print_actions(console, plan, actions, kind, dry)
    if dry:
        for act in actions:
            if act.sbatch:
                console.rule(f"sbatch for {act.stage} ({len(act.units)} task(s))")
                console.print(act.sbatch, markup=False, highlight=False)
    return LaunchResult(plan, actions)


def _dependency(st: PlannedStage, deps: dict[str, list[str]]) -> str | None:
    ids = [i for d in st.needs for i in deps.get(d, [])]
    return "afterok:" + ":".join(ids) if ids else None


def _dry_dependency(st: PlannedStage, deps: dict[str, list[str]], plan: Plan) -> str | None:
    return _dependency(st, deps)


def _dependency_ids(new_ids: list[str], kind: str) -> list[str]:
    if kind != "slurm":
        return []
    # a whole fresh array is one dependency on its base id
    bases = []
    for i in new_ids:
        b = i.split("_")[0]
        if b not in bases:
            bases.append(b)
    return bases


def _submit(
    plan: Plan,
    st: PlannedStage,
    cluster: dict[str, Any],
    kind: str,
    dependency: str | None,
    units: list[int],
    n_units: int,
    console: Console,
) -> list[str]:
    ex = make_executor(st, cluster, dependency, plan.run_id)
    if st.shards > 1:
        specs = [_task_spec(plan, st, n_units, shard=u) for u in units]
    else:
        specs = [_task_spec(plan, st, n_units, shard=None)]
    if kind == "slurm":
        with ex.batch():
            jobs = [ex.submit(run_task, s) for s in specs]
        task_ids = [j.job_id for j in jobs] if st.shards > 1 else [jobs[0].job_id] * len(units)
        _record(st, kind, jobs[0].job_id.split("_")[0], units, task_ids, dependency, plan.run_id)
        return [j.job_id for j in jobs]
    return _run_here(plan, st, cluster, kind, ex, specs, units, n_units, console)


def _record(
    st: PlannedStage,
    kind: str,
    job_id: str,
    units: list[int],
    task_ids: list[str],
    dependency: str | None,
    run_id: str,
) -> None:
    st.folder.append_job(
        {
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
    )


def _run_here(
    plan: Plan,
    st: PlannedStage,
    cluster: dict[str, Any],
    kind: str,
    ex: Any,
    specs: list[TaskSpec],
    units: list[int],
    n_units: int,
    console: Console,
) -> list[str]:
    """local/debug: run the stage's tasks now (at most cluster.max_parallel_tasks at once)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    limit = 1 if kind == "debug" else max(1, int(cluster.get("max_parallel_tasks", 4)))
    pending = list(zip(units if st.shards > 1 else [0], specs, strict=False))
    running: list[tuple[int, Any]] = []
    ids: list[str] = []
    failures: list[str] = []
    columns = (TextColumn(f"[bold]{st.name}[/] {st.stage_id}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=kind == "debug") as progress:
        bar = progress.add_task(st.name, total=n_units, completed=n_units - len(units))
        while pending or running:
            while pending and len(running) < limit:
                unit, spec = pending.pop(0)
                job = ex.submit(run_task, spec)
                ids.append(str(job.job_id))
                task_units = [unit] if st.shards > 1 else list(range(n_units))
                _record(
                    st,
                    kind,
                    str(job.job_id),
                    task_units,
                    [str(job.job_id)] * len(task_units),
                    None,
                    plan.run_id,
                )
                running.append((unit, job))
            still = []
            for unit, job in running:
                if kind == "debug" or job.done():
                    try:
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
    return ids


def _print_actions(console: Console, plan: Plan, actions: list[StageAction], kind: str, dry: bool) -> None:
    title = f"{'DRY RUN ' if dry else ''}{plan.experiment} run {plan.run_id} on {kind}"
    table = Table(title=title)
    for col in ("stage", "stage id", "status", "units", "job id(s)", "folder"):
        table.add_column(col, overflow="fold")
    for a in actions:
        units = f"{len(a.units)} of {a.n_units}" if a.units else ("all" if a.status == "done" else "-")
        jobs = ", ".join(_compact_ids(a.job_ids)) or "-"
        if a.cancelled:
            jobs += f" (cancelled {', '.join(a.cancelled)})"
        table.add_row(a.stage, a.stage_id, a.status, units, jobs, str(a.folder))
    console.print(table)
    if not dry:
        console.print(f"run folder: {plan.run_dir}")


def _compact_ids(ids: list[str]) -> list[str]:
    """123_0 123_1 123_2 -> 123_[0-2]."""
    groups: dict[str, list[str]] = {}
    for i in ids:
        base, _, idx = i.partition("_")
        groups.setdefault(base, []).append(idx)
    out = []
    for base, idxs in groups.items():
        idxs = [x for x in idxs if x]
        out.append(
            f"{base}_[{idxs[0]}-{idxs[-1]}]" if len(idxs) > 1 else (f"{base}_{idxs[0]}" if idxs else base)
        )
    return out
