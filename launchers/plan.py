"""The stage DAG of one launch: which stages, in which order, under which ids and folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinsynth.core.registry import StageSpec, get_stage, load_stage_modules
from launchers import identity
from launchers.config import delta, resources_for, semantic
from launchers.folders import StageFolder, stage_folder


class PlanError(ValueError):
    """The experiment asks for something that cannot be planned; the message says what to change."""


@dataclass
class PlannedStage:
    name: str
    spec: StageSpec
    stage_id: str
    needs: tuple[str, ...]
    config: dict[str, Any]
    resources: dict[str, Any]
    folder: StageFolder

    @property
    def shards(self) -> int:
        return int(self.resources.get("shards", 1) or 1)

    @property
    def ranks(self) -> int:
        return int(self.resources.get("nodes", 1)) * int(self.resources.get("tasks_per_node", 1))


@dataclass
class Plan:
    experiment: str
    run_id: str
    runs_root: Path
    run_dir: Path
    plain: dict[str, Any]
    delta: dict[str, Any]
    stages: list[PlannedStage] = field(default_factory=list)

    def stage(self, name: str) -> PlannedStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def order_stages(targets: list[str], plain: dict[str, Any] | None = None) -> list[StageSpec]:
    """Targets plus everything they need, dependencies first (stable DFS order)."""
    ordered: list[StageSpec] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise PlanError(f"stage dependency cycle: {' -> '.join((*chain, name))}")
        state[name] = "visiting"
        try:
            spec = get_stage(name)
        except KeyError as exc:
            where = f" (needed by {chain[-1]!r})" if chain else ""
            raise PlanError(f"{exc.args[0]}{where}") from None
        for dep in spec.needs_for(plain or {}):
            visit(dep, (*chain, name))
        state[name] = "done"
        ordered.append(spec)

    for t in targets:
        visit(t, ())
    return ordered


def build_plan(plain: dict[str, Any], base: dict[str, Any], cwd: Path | None = None) -> Plan:
    load_stage_modules(plain.get("stage_modules") or [])
    pipeline = list(plain.get("pipeline") or [])
    if not pipeline:
        raise PlanError("pipeline is empty: choose an experiment, e.g. +experiment=smoke")
    runs_root = Path(plain["paths"]["runs"])
    if not runs_root.is_absolute():
        runs_root = (cwd or Path.cwd()) / runs_root
    sem_delta = delta(semantic(plain), semantic(base))
    rid = identity.run_id(sem_delta)
    experiment = str(plain.get("name") or "default")
    plan = Plan(experiment, rid, runs_root, runs_root / experiment / rid, plain, sem_delta)

    ids: dict[str, str] = {}
    for spec in order_stages(pipeline, plain):
        res = resources_for(plain, spec.name)
        shards = int(res.get("shards", 1) or 1)
        ranks = int(res.get("nodes", 1)) * int(res.get("tasks_per_node", 1))
        if shards < 1:
            raise PlanError(f"resources.{spec.name}.shards must be >= 1, got {shards}")
        if shards > 1 and not spec.array:
            raise PlanError(f"stage {spec.name!r} is not an array stage; set resources.{spec.name}.shards=1")
        if shards > 1 and ranks > 1:
            raise PlanError(
                f"stage {spec.name!r}: an array stage runs one task per shard; "
                f"use shards>1 or nodes*tasks_per_node>1, not both"
            )
        reads = identity.stage_inputs(plain, spec.reads)
        needs = {dep: ids[dep] for dep in spec.needs_for(plain)}
        sid = identity.stage_id(spec.name, spec.version, reads, shards, needs)
        ids[spec.name] = sid
        plan.stages.append(
            PlannedStage(
                name=spec.name,
                spec=spec,
                stage_id=sid,
                needs=spec.needs_for(plain),
                config=_nest(reads),
                resources=res,
                folder=stage_folder(runs_root, spec.name, sid),
            )
        )
    return plan
