"""What a launch will do, decided before it does anything.

`decide` is one pure function of the plan, a snapshot of the stage folders and the live
jobs: which stages are done (and where they came from), which a live job still runs, which
live jobs to cancel, and which units to submit. `launchers.submit` only carries the
decisions out, so every rule here is tested without Slurm (tests/unit/test_decide.py).
`observe` takes the snapshot; it is the only part of this module that touches disk or Slurm.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from launchers import slurm_state
from launchers.config import redact
from launchers.executors import world_size
from launchers.folders import StageFolder
from launchers.plan import Plan, PlannedStage
from launchers.states import StageState

#: executors that run a stage's tasks inside the launch, one stage after another
IN_PROCESS = frozenset({"local", "debug"})


@dataclass(frozen=True)
class FolderState:
    """A stage folder as the launch found it."""

    exists: bool = False
    done: bool = False
    #: units with a completion marker (not listed when `done`: a DONE stage needs no scan)
    completed: frozenset[int] = frozenset()
    #: meta.json "producers": one entry per launch that submitted units (run, executor, resources)
    producers: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Observation:
    folders: Mapping[str, FolderState] = field(default_factory=dict)
    #: stage -> unit -> id of the live job (Slurm job/array task id, or local pid) that runs it
    live: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Reuse:
    """Where a done stage came from and what differs from this launch (said, never acted on)."""

    #: "<experiment>/<run_id>" of the launches that produced it, oldest first (empty: unknown)
    runs: tuple[str, ...] = ()
    #: every producer was this very run (a relaunch), so nothing to point at
    this_run: bool = False
    #: "ran on slurm (this launch: local)", "mem_gb: 4 (this launch: 8)", ...
    differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    stage: str
    state: StageState  # DONE | RUNNING | PLANNED | BLOCKED
    n_units: int
    needs: tuple[str, ...] = ()
    #: units to submit now (a multi-rank job always carries all its ranks)
    units: tuple[int, ...] = ()
    #: units without a completion marker
    missing: tuple[int, ...] = ()
    #: units a still-live job runs, and those jobs' ids (kept as dependencies of children)
    live_units: tuple[int, ...] = ()
    live_ids: tuple[str, ...] = ()
    #: live job ids to cancel first: their parents run again, so they wait on jobs that never succeed
    cancel: tuple[str, ...] = ()
    #: every unit is complete but DONE is not written yet
    mark_done: bool = False
    reuse: Reuse | None = None
    reason: str = ""


def decide(plan: Plan, seen: Observation, executor: str) -> list[Decision]:
    """One decision per planned stage, upstream first; pure (same inputs, same decisions)."""
    out: dict[str, Decision] = {}
    for st in plan.stages:
        out[st.name] = _decide_stage(plan, st, seen, executor, out)
    return [out[st.name] for st in plan.stages]


def _decide_stage(
    plan: Plan, st: PlannedStage, seen: Observation, executor: str, upstream: Mapping[str, Decision]
) -> Decision:
    n = st.shards if st.shards > 1 else world_size(st, executor)
    folder = seen.folders.get(st.name, FolderState())
    missing = () if folder.done else tuple(u for u in range(n) if u not in folder.completed)
    base = Decision(st.name, StageState.PLANNED, n, tuple(st.needs), missing=missing)
    if folder.done or (folder.exists and not missing):
        return replace(
            base,
            state=StageState.DONE,
            mark_done=not folder.done,
            reuse=reuse_of(folder, plan.run_id, executor, placement(st, plan.plain, executor)),
        )
    live = dict(seen.live.get(st.name, {}))
    live_ids = tuple(dict.fromkeys(live[u] for u in sorted(live)))
    rerun = [d for d in st.needs if upstream[d].state is StageState.PLANNED]
    waiting = [d for d in st.needs if upstream[d].state in (StageState.RUNNING, StageState.BLOCKED)]
    if executor in IN_PROCESS and (waiting or (live and rerun)):
        # this launch runs stages one after another: it cannot wait on someone else's jobs
        why = (
            f"waits for {', '.join(waiting)}, still running in another launch"
            if waiting
            else f"runs in another launch (pids {', '.join(live_ids)}) while {', '.join(rerun)} reruns"
        )
        return replace(
            base, state=StageState.BLOCKED, live_units=tuple(sorted(live)), live_ids=live_ids, reason=why
        )
    cancel: tuple[str, ...] = ()
    if live and rerun:
        cancel, live, live_ids = live_ids, {}, ()
    # an array resubmits its missing shards; the ranks of one job run (again) together
    array = tuple(u for u in missing if u not in live)
    units = array if st.shards > 1 else (() if live else tuple(range(n)))
    state = StageState.PLANNED if units else StageState.RUNNING
    return replace(
        base, state=state, units=units, live_units=tuple(sorted(live)), live_ids=live_ids, cancel=cancel
    )


def placement(st: PlannedStage, plain: Mapping[str, Any], executor: str) -> dict[str, Any]:
    """Where a stage's tasks run, as recorded in meta.json and compared on reuse: its resources
    (secrets redacted), with Slurm's partition/account filled in from the cluster config."""
    res = redact(dict(st.resources))
    if executor == "slurm":
        cluster = plain.get("cluster") or {}
        for key in ("partition", "account", "qos"):
            res[key] = res.get(key) or cluster.get(key)
    return res


def reuse_of(folder: FolderState, run_id: str, executor: str, resources: Mapping[str, Any]) -> Reuse:
    """Who produced a done stage, and where that differs from this launch's executor/resources."""
    runs: list[str] = []
    differences: list[str] = []
    for p in folder.producers:
        where = f"{p.get('experiment') or '?'}/{p.get('run_id') or '?'}"
        if where not in runs:
            runs.append(where)
        was = p.get("executor")
        if was and was != executor:
            note = f"ran on {was} (this launch: {executor})"
            if note not in differences:
                differences.append(note)
        old = p.get("resources")
        if isinstance(old, Mapping):
            for key in sorted(set(old) | set(resources)):
                if old.get(key) != resources.get(key):
                    note = f"{key}: {old.get(key)!r} (this launch: {resources.get(key)!r})"
                    if note not in differences:
                        differences.append(note)
    this_run = bool(folder.producers) and all(p.get("run_id") == run_id for p in folder.producers)
    return Reuse(tuple(runs), this_run, tuple(differences))


def dependency(
    decision: Decision, decisions: Mapping[str, Decision], new_ids: Mapping[str, Sequence[str]]
) -> str | None:
    """`afterok:` on the parents' live jobs and on the jobs this launch submitted for them."""
    ids: list[str] = []
    for dep in decision.needs:
        for i in (*decisions[dep].live_ids, *new_ids.get(dep, ())):
            if i not in ids:
                ids.append(i)
    return "afterok:" + ":".join(ids) if ids else None


# ---- the snapshot (I/O)


def observe(plan: Plan, executor: str) -> Observation:
    """Read every stage folder once, and ask Slurm (or the process table) which jobs still live."""
    folders = {st.name: read_folder(st.folder) for st in plan.stages}
    pending = [st for st in plan.stages if folders[st.name].exists and not folders[st.name].done]
    return Observation(folders, live_jobs(pending, executor) if pending else {})


def read_folder(folder: StageFolder) -> FolderState:
    if not folder.path.exists():
        return FolderState()
    producers = tuple(p for p in folder.read_meta().get("producers", []) if isinstance(p, Mapping))
    if folder.is_done():
        return FolderState(True, True, frozenset(), producers)
    return FolderState(True, False, frozenset(folder.completed_units()), producers)


def live_jobs(stages: Sequence[PlannedStage], executor: str) -> dict[str, dict[int, str]]:
    """Units that a still-living job will run, from each folder's jobs.jsonl.

    Slurm records are checked with one squeue call; local records by pid on this host. A
    local/debug launch also counts live Slurm jobs (it must not redo what Slurm still runs);
    a Slurm launch counts only Slurm jobs (its children can wait on nothing else).
    """
    records = {st.name: st.folder.jobs() for st in stages}
    slurm_live: Mapping[str, Any] = {}
    if any(r.get("executor") == "slurm" for recs in records.values() for r in recs):
        try:
            slurm_live = slurm_state.live_slurm_tasks()
        except slurm_state.SlurmUnavailable:
            if executor == "slurm":
                raise
    here = socket.gethostname()
    out: dict[str, dict[int, str]] = {}
    for name, recs in records.items():
        units: dict[int, str] = {}
        for r in recs:
            kind = r.get("executor")
            for unit, tid in zip(r.get("units", []), r.get("task_ids", []), strict=False):
                tid = str(tid)
                if kind == "slurm":
                    alive = tid in slurm_live
                elif kind == "local" and executor != "slurm" and r.get("host") == here and tid.isdigit():
                    alive = slurm_state.local_task_alive(int(tid), r.get("process"))
                else:
                    alive = False
                if alive:
                    units[int(unit)] = tid
        if units:
            out[name] = units
    return out
