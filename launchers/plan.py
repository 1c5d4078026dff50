"""The stage DAG of one launch: which stages, in which order, under which ids and folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinsynth.core.config import dump, identity_view
from clinsynth.core.registry import StageSpec, get_stage, load_stage_modules, registered
from clinsynth.core.secrets import pasted_secrets, secret_env_names
from launchers import identity
from launchers.config import delta, resources_for, semantic
from launchers.folders import StageFolder, stage_folder
from launchers.validate import missing_packages, validate_launcher, validate_stages


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
    #: the validated config model (None for legacy stages); `config` is its plain dump
    model: Any = None

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
    #: things a dry run should say but not stop at (missing optional packages)
    warnings: list[str] = field(default_factory=list)

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


def _identity_config(plain: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    """The config as far as results go: identity fields of every stage's keys, plus what to run."""
    out: dict[str, Any] = {k: plain.get(k) for k in ("name", "pipeline")}
    for model in models.values():
        view = identity_view(model)
        for key in type(model).model_fields:
            out[key] = view[key]
    return out


def _secret_names(models: dict[str, Any]) -> set[str]:
    """The variables the stage configs name through their secret_env fields (source.token_env, ...)."""
    return {n for m in models.values() for n in secret_env_names(m)}


def build_plan(
    plain: dict[str, Any], base: dict[str, Any], cwd: Path | None = None, *, check_packages: bool = True
) -> Plan:
    """Validate, order and identify the stages of one launch.

    `check_packages`: a stage whose config needs a package this environment lacks, or input data
    that is not there, stops a real launch; a dry run (often on a login node without the GPU
    extras) only warns, and config tests turn the check off.
    """
    load_stage_modules(plain.get("stage_modules") or [])
    pipeline = list(plain.get("pipeline") or [])
    if not pipeline:
        raise PlanError("pipeline is empty: choose an experiment, e.g. +experiment=smoke")
    ordered = order_stages(pipeline, plain)
    models, errors = validate_stages(plain, registered(), {s.name for s in ordered})
    errors = validate_launcher(plain) + errors
    errors += [
        f"{key} holds the value of the secret variable {name}: configs are pickled into jobs and saved "
        f"beside the results; name the variable instead (e.g. source.token_env={name})"
        for key, name in pasted_secrets(plain, names=_secret_names(models))
    ]
    if errors:
        raise PlanError("invalid config:\n  " + "\n  ".join(errors))
    missing = [m for spec in ordered for m in missing_packages(spec, models.get(spec.name))]
    if missing and check_packages and not plain.get("dry_run"):
        raise PlanError("\n".join(missing))
    runs_root = Path(plain["paths"]["runs"])
    if not runs_root.is_absolute():
        runs_root = (cwd or Path.cwd()) / runs_root
    base_models, _ = validate_stages(base, registered(), set())
    id_delta = delta(_identity_config(plain, models), _identity_config(base, base_models))
    rid = identity.run_id(id_delta)
    experiment = str(plain.get("name") or "default")
    sem_delta = delta(semantic(plain), semantic(base))
    plan = Plan(experiment, rid, runs_root, runs_root / experiment / rid, plain, sem_delta)
    plan.warnings = [f"{m} (on the nodes that run it)" for m in missing] if check_packages else []

    ids: dict[str, str] = {}
    for spec in ordered:
        res = resources_for(plain, spec.name)
        shards = int(res.get("shards", 1) or 1)
        ranks = int(res.get("nodes", 1)) * int(res.get("tasks_per_node", 1))
        if shards > 1 and not spec.array:
            raise PlanError(f"stage {spec.name!r} is not an array stage; set resources.{spec.name}.shards=1")
        if shards > 1 and ranks > 1:
            raise PlanError(
                f"stage {spec.name!r}: an array stage runs one task per shard; "
                f"use shards>1 or nodes*tasks_per_node>1, not both"
            )
        model = models.get(spec.name)
        if model is not None:
            config = dump(model)
            reads: Any = identity_view(model)
        else:  # a legacy stage that lists the keys it reads
            reads = identity.stage_inputs(plain, spec.reads)
            config = _nest(reads)
        if spec.fingerprint is not None and model is not None:
            # the data it reads from outside the runs folder: a changed export is read again
            try:
                inputs = spec.fingerprint(model)
            except (OSError, ValueError) as exc:
                if check_packages and not plain.get("dry_run"):
                    raise PlanError(f"stage {spec.name}: {exc}") from None
                plan.warnings.append(f"stage {spec.name}: {exc}")
                inputs = {"unavailable": str(exc)}
            reads = {"config": reads, "inputs": inputs}
        if spec.identity_resources:
            # its result describes where it ran: other nodes or GPUs are another result
            executor = (plain.get("cluster") or {}).get("executor")
            reads = {"config": reads, "resources": res, "executor": executor}
        needs = {dep: ids[dep] for dep in spec.needs_for(plain)}
        sid = identity.stage_id(spec.name, spec.version, reads, shards, needs)
        ids[spec.name] = sid
        plan.stages.append(
            PlannedStage(
                name=spec.name,
                spec=spec,
                stage_id=sid,
                needs=spec.needs_for(plain),
                config=config,
                resources=res,
                folder=stage_folder(runs_root, spec.name, sid),
                model=model,
            )
        )
    return plan


def stage_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The validated config model of one stage under `overrides` (tests, benchmarks, notebooks)."""
    from launchers.config import compose_config, to_plain

    plain = to_plain(compose_config(list(overrides)))
    load_stage_modules(plain.get("stage_modules") or [])
    models, errors = validate_stages(plain, registered(), {name})
    if errors:
        raise PlanError("invalid config:\n  " + "\n  ".join(errors))
    return models[name]
