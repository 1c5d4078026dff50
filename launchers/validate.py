"""Plan-time validation of the composed config: every key is owned, typed and complete.

The launcher owns `cluster`, `resources`, `tracking`, `paths` and a few switches; every other
top-level key belongs to the stages that declare it in their config model. A typo anywhere
(`+cohort.patiens=50`, `resources.generate.gpu=8`) is a launch error naming the key and the
closest valid one, before anything is written or submitted.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clinsynth.core.config import ConfigError, explain
from clinsynth.core.registry import StageSpec
from launchers.compare import CompareError, variants
from launchers.config import OPERATIONAL_KEYS
from launchers.estimate import Estimate

#: top-level keys the launcher owns: the operational ones, plus what to run
LAUNCHER_KEYS = (OPERATIONAL_KEYS - {"hydra"}) | {"name", "pipeline"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """resources.<stage>: conf/resources/_base.yaml lists every key with its default."""

    nodes: int = Field(ge=1)
    tasks_per_node: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    cpus_per_task: int = Field(ge=1)
    mem_gb: float = Field(gt=0)
    time_min: int = Field(ge=1)
    shards: int = Field(ge=1)
    array_parallelism: int = Field(ge=1)
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    exclusive: bool
    sbatch: dict[str, Any]
    setup: list[str]


class LocalCluster(_Strict):
    executor: Literal["local"]
    partition: str | None
    account: str | None
    max_parallel_tasks: int = Field(ge=1)
    setup: list[str]
    stop_grace_s: float = Field(ge=0)


class DebugCluster(_Strict):
    executor: Literal["debug"]
    partition: str | None
    account: str | None
    setup: list[str]
    stop_grace_s: float = Field(ge=0)


class SlurmCluster(_Strict):
    executor: Literal["slurm"]
    partition: str | None
    account: str | None
    qos: str | None
    env_sh: str | None
    setup: list[str]
    signal_delay_s: int = Field(ge=0)
    max_num_timeout: int = Field(ge=0)
    kill_on_invalid_dep: bool
    use_srun: bool


class Tracking(_Strict):
    backend: Literal["wandb", "none"]
    mode: Literal["online", "offline", "disabled"]
    project: str
    entity: str | None
    log_samples: bool


class Launcher(_Strict):
    name: str
    pipeline: list[str]
    paths: dict[str, str]
    wait: bool
    dry_run: bool
    stage_modules: list[str]
    compare: dict[str, list[str]] | None
    cluster: LocalCluster | DebugCluster | SlurmCluster = Field(discriminator="executor")
    tracking: Tracking
    estimate: dict[str, Any] | None = None  # conf/estimate/<name>.yaml: estimate.Estimate


def _unknown_top_level(plain: dict[str, Any], owned: set[str]) -> list[str]:
    out = []
    for key in sorted(set(plain) - owned - {"hydra"}):
        close = difflib.get_close_matches(key, sorted(owned), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"unknown key {key}{hint}: no stage reads it")
    return out


def validate_launcher(plain: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    try:
        Launcher.model_validate({k: plain.get(k) for k in LAUNCHER_KEYS - {"resources"}})
    except ValidationError as exc:
        errors.append(str(explain(exc, Launcher, "")))
    else:
        try:
            variants(plain)
        except CompareError as exc:
            errors.append(str(exc))
    if plain.get("estimate") is not None:  # what a dry run's GPU-hour estimate assumes
        try:
            Estimate.model_validate(plain["estimate"])
        except ValidationError as exc:
            errors.append(str(explain(exc, Estimate, "", prefix="estimate.")))
    resources = plain.get("resources") or {}
    for stage in sorted(resources):
        # a stage's resources are resources.default overlaid with resources.<stage>
        res = dict(resources.get("default") or {}, **(resources.get(stage) or {}))
        try:
            Resources.model_validate(res)
        except ValidationError as exc:
            errors.append(str(explain(exc, Resources, "", prefix=f"resources.{stage}.")))
    return errors


def validate_stages(
    plain: dict[str, Any], registered: dict[str, StageSpec], planned: set[str]
) -> tuple[dict[str, BaseModel], list[str]]:
    """Validated config model per stage: every planned stage, and every stage whose keys are set.

    Also flags top-level keys that no registered stage (and not the launcher) reads.
    """
    owned = set(LAUNCHER_KEYS)
    for spec in registered.values():
        owned.update(spec.keys)
    errors = _unknown_top_level(plain, owned)
    models: dict[str, BaseModel] = {}
    for name, spec in sorted(registered.items()):
        if spec.config is None:
            continue
        keys = spec.keys
        if name not in planned and not all(k in plain for k in keys):
            continue  # a plugin stage that this launch neither runs nor configures
        try:
            models[name] = spec.config.model_validate({k: plain[k] for k in keys if k in plain})
        except ValidationError as exc:
            errors.append(str(explain(exc, spec.config, f"stage {name}")))
    return models, errors


def missing_packages(spec: StageSpec, model: Any) -> list[str]:
    """`pip install` advice for each optional package this stage's config needs and this env lacks."""
    if spec.requires is None:
        return []
    out = []
    for module, extra in spec.requires(model):
        if not _importable(module):
            extras = " or ".join(f"pip install -e '.[{e.strip()}]'" for e in _extras(extra))
            out.append(f"stage {spec.name} needs the package {module!r}: {extras}")
    return out


def _importable(module: str) -> bool:
    """Whether the package is installed, without importing it (vLLM takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install or a blocked import counts as missing
        return False


def _extras(text: str) -> list[str]:
    """'gen (GPU) or gen-cpu (CPU)' -> ['gen', 'gen-cpu'] (the words in parentheses are dropped)."""
    return [part.split("(")[0].strip() for part in text.split(" or ")]


__all__ = ["LAUNCHER_KEYS", "ConfigError", "Resources", "missing_packages", "validate_launcher"]
