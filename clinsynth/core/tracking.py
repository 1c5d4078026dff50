"""Experiment tracking behind a small protocol, so stages never import wandb.

Only metrics and configs go out. Samples (letters, records) are patient-like
data and are sent only when the user opts in with `tracking.log_samples=true`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

#: wandb.init's run modes
WandbMode = Literal["online", "offline", "disabled", "shared"]


class Tracker(Protocol):
    log_samples: bool

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Tracking disabled (and every rank but 0)."""

    log_samples = False

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """A W&B run with a deterministic id, so a requeued or relaunched task resumes it."""

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        group: str,
        project: str,
        mode: WandbMode,
        directory: Path,
        config: Mapping[str, Any],
        entity: str | None = None,
        tags: list[str] | None = None,
        log_samples: bool = False,
    ) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
            os.environ.setdefault(var, str(directory / var.split("_")[1].lower()))
        self.log_samples = log_samples
        self._run = wandb.init(
            id=run_id,
            name=name,
            group=group,
            project=project,
            entity=entity,
            mode=mode,
            dir=str(directory),
            config=dict(config),
            tags=tags,
            resume="allow",
            settings=wandb.Settings(
                console="off", save_code=False, disable_code=True, quiet=True, x_disable_stats=True
            ),
        )

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._run.log(dict(metrics), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._run.summary.update(dict(values))

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)
