"""Stage registry: a name -> `run(cfg, ctx)` plus what the stage needs and reads.

`needs` names upstream stages (the DAG); `config` is the stage's typed config model
(`clinsynth.core.config.StageConfig`): its fields are the top-level keys the stage reads,
each marked identity or operational, so the launcher validates them at plan time and
content-addresses the stage folder by the identity fields. `version` is bumped by hand
when a stage's output format changes. `requires` names the optional packages a config
needs (module, pip extra), checked at plan time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clinsynth.core.config import StageConfig
from clinsynth.core.context import StageContext

StageFn = Callable[[Any, StageContext], Any]
#: config -> [(importable module, pip extra that provides it)]
Requires = Callable[[Any], list[tuple[str, str]]]

#: Modules that define the built-in stages; imported on first lookup.
BUILTIN_STAGE_MODULES: tuple[str, ...] = (
    "clinsynth.stages.doctor",
    "clinsynth.stages.cohort",
    "clinsynth.stages.ingest",
    "clinsynth.stages.sample",
    "clinsynth.stages.generate",
    "clinsynth.stages.verify",
    "clinsynth.stages.dataset",
    "clinsynth.stages.train",
    "clinsynth.stages.extract",
    "clinsynth.stages.evaluate",
    "clinsynth.stages.export",
)


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: StageFn
    needs: tuple[str, ...] | Callable[[dict[str, Any]], tuple[str, ...]] = ()
    #: the stage's typed config model; None only for legacy stages that list `reads`
    config: type[StageConfig] | None = None
    reads: tuple[str, ...] = ()
    #: array stages run one task per shard; others may run several ranks
    array: bool = False
    version: int = 1
    #: the stage's result describes where it ran (doctor): its resources enter its id
    identity_resources: bool = False
    requires: Requires | None = None
    #: config -> a fingerprint of the data outside the runs folder the stage reads (a file
    #: source's names, sizes and mtimes), computed at plan time and part of the stage id
    fingerprint: Callable[[Any], Any] | None = None
    #: config -> the seeds and settings that keep a rerun from giving byte-identical outputs (LLM
    #: sampling, training), or None: the outputs are a function of inputs and config (launchers/manifest.py)
    nondeterminism: Callable[[Any], dict[str, Any] | None] | None = None
    #: paths in the stage folder ("stats/" for a folder) that record timing (letters/s, tokens/s):
    #: hashed into the manifest but not compared by `rerun`
    timing_records: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)

    @property
    def keys(self) -> tuple[str, ...]:
        """Top-level config keys this stage reads."""
        return tuple(self.config.model_fields) if self.config is not None else self.reads

    def parse_config(self, data: Any) -> Any:
        """The task's config as the stage's model (a plain dict for legacy stages)."""
        if self.config is None or isinstance(data, self.config):
            return data
        return self.config.model_validate(data)

    @property
    def module(self) -> str:
        return self.fn.__module__

    def needs_for(self, plain: dict[str, Any]) -> tuple[str, ...]:
        """Upstream stages; a callable decides from the config (ingest needs cohort for synthetic data)."""
        return tuple(self.needs(plain)) if callable(self.needs) else self.needs


_REGISTRY: dict[str, StageSpec] = {}
_loaded_builtins = False


def stage(
    name: str,
    *,
    needs: Iterable[str] | Callable[[dict[str, Any]], tuple[str, ...]] = (),
    config: type[StageConfig] | None = None,
    reads: Iterable[str] = (),
    array: bool = False,
    version: int = 1,
    identity_resources: bool = False,
    requires: Requires | None = None,
    fingerprint: Callable[[Any], Any] | None = None,
    nondeterminism: Callable[[Any], dict[str, Any] | None] | None = None,
    timing_records: Iterable[str] = (),
) -> Callable[[StageFn], StageFn]:
    """Register `fn` as stage `name`. Re-registering the same function is a no-op."""

    def deco(fn: StageFn) -> StageFn:
        spec = StageSpec(
            name=name,
            fn=fn,
            needs=needs if callable(needs) else tuple(needs),
            config=config,
            reads=tuple(reads),
            array=array,
            version=version,
            identity_resources=identity_resources,
            fingerprint=fingerprint,
            nondeterminism=nondeterminism,
            timing_records=tuple(timing_records),
            requires=requires,
            doc=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        old = _REGISTRY.get(name)
        if old is not None and (old.module, old.fn.__qualname__) != (spec.module, fn.__qualname__):
            raise ValueError(
                f"stage {name!r} is registered twice: by {old.module}.{old.fn.__qualname__} "
                f"and {spec.module}.{fn.__qualname__}; rename one of them"
            )
        _REGISTRY[name] = spec
        return fn

    return deco


def load_stage_modules(modules: Iterable[str] = ()) -> None:
    """Import the built-in stage modules and any extra ones (plugins, tests)."""
    global _loaded_builtins
    if not _loaded_builtins:
        for mod in BUILTIN_STAGE_MODULES:
            importlib.import_module(mod)
        _loaded_builtins = True
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ImportError(
                f"stage module {mod!r} (from config key stage_modules) cannot be imported: {exc}. "
                "Check the module path and that the repository root is on PYTHONPATH."
            ) from exc


def get_stage(name: str) -> StageSpec:
    load_stage_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(
            f"unknown stage {name!r}; registered stages: {known}. "
            "Add the module that defines it to stage_modules=[...]."
        ) from None


def registered() -> dict[str, StageSpec]:
    load_stage_modules()
    return dict(_REGISTRY)
