"""Experiment tracking behind a small protocol, so stages never import wandb.

Only metrics and configs go out. Samples (letters, records) are patient-like
data and are sent only when the user opts in with `tracking.log_samples=true`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

#: wandb.init's run modes
WandbMode = Literal["online", "offline", "disabled", "shared"]


class Tracker(Protocol):
    log_samples: bool

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Tracking disabled (and every rank but 0)."""

    log_samples = False

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
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

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A wandb.Table under `name`; the caller decides what may go in (samples only with log_samples)."""
        import wandb

        self._run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


class GuardedTracker:
    """Tracking never fails a stage's work: each call is retried once, then tracking turns off.

    W&B's service process can die or its disk fill up; the letters a stage wrote are still good.
    """

    def __init__(self, inner: Tracker, logger: logging.Logger) -> None:
        self._inner: Tracker = inner
        self._logger = logger
        self.log_samples = inner.log_samples

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        for attempt in (1, 2):
            try:
                fn()
                return
            except Exception as exc:  # any tracking failure: never the stage's
                if attempt == 2:
                    self._logger.warning("tracking %s failed twice (%s: %s); tracking is off for this task",
                                         what, type(exc).__name__, exc)  # fmt: skip
                    self._inner = NullTracker()
                    self.log_samples = False

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._call("log", lambda: self._inner.log(metrics, step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._call("summary", lambda: self._inner.summary(values))

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self._call("table", lambda: self._inner.table(name, columns, rows))

    def finish(self, exit_code: int = 0) -> None:
        self._call("finish", lambda: self._inner.finish(exit_code=exit_code))


def start_tracker(factory: Callable[[], Tracker], logger: logging.Logger) -> Tracker:
    """The tracker `factory` builds, guarded; a tracker that cannot start (twice) is replaced by none."""
    for attempt in (1, 2):
        try:
            return GuardedTracker(factory(), logger)
        except Exception as exc:
            if attempt == 2:
                logger.warning("tracking could not start (%s: %s); the stage runs without it",
                               type(exc).__name__, exc)  # fmt: skip
    return NullTracker()
