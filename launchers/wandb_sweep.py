"""A launch started by `wandb agent` (sweeps/*.yaml): the sweep's run gets the point's headline metrics.

The agent runs `python -m launch ... KEY=VALUE` with WANDB_SWEEP_ID, WANDB_RUN_ID and
WANDB_SWEEP_PARAM_PATH set. Under WANDB_SWEEP_ID `wandb.init` ignores the run id and project it is
given, so a stage task that inherited these variables would log into the sweep's run — every stage
and shard of the point into one run, at once. The launcher therefore takes them out of its own
environment before any task starts (stage runs stay their own runs, grouped by the clinsynth run id),
and once the launch has finished it opens the sweep's run itself, once, and writes the point's metrics
(launchers.results: the same numbers `python -m launch summary` tables) to its summary and one
history row. A point whose stages are not all done reports what there is and fails (exit 1), so the
agent marks the run failed instead of optimising over a half-finished point.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from launchers.results import read_run

#: what `wandb agent` sets for the program it starts (wandb/wandb_agent.py, Agent._command_run)
SWEEP_VARS = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")


@dataclass(frozen=True)
class SweepRun:
    """The sweep run the agent started this launch for (its variables, taken out of the environment)."""

    env: dict[str, str]

    @property
    def sweep_id(self) -> str:
        return self.env["WANDB_SWEEP_ID"]

    @property
    def run_id(self) -> str:
        return self.env.get("WANDB_RUN_ID", "")

    @classmethod
    def take_from_env(cls, environ: MutableMapping[str, str] | None = None) -> SweepRun | None:
        """None outside a W&B sweep; else the sweep's variables, removed from `environ` (os.environ)."""
        environ = os.environ if environ is None else environ
        if not environ.get("WANDB_SWEEP_ID"):
            return None
        return cls({k: environ.pop(k) for k in SWEEP_VARS if k in environ})

    def metrics(self, run_dir: Path) -> tuple[dict[str, Any], str | None]:
        """The run's headline numbers, and why the point is not complete (None when it is)."""
        row = read_run(run_dir)
        values = {k: v for k, v in row.metrics.items() if v is not None}
        values["clinsynth/stages_done"] = row.stages_done
        values["clinsynth/stages"] = row.stages
        if row.stages == 0 or row.stages_done < row.stages:
            return values, (
                f"{row.stages_done} of {row.stages} stages of {run_dir} are done; the sweep's program must "
                "wait for them (wait=true with cluster=slurm)"
            )
        return values, None

    def report(self, run_dirs: Sequence[Path], console: Console) -> bool:
        """Write the point's metrics to the sweep's run; False when the point is not complete."""
        if len(run_dirs) != 1:
            console.print(
                f"error: a W&B sweep run is one point, this launch ran {len(run_dirs)} (drop -m)",
                style="red", markup=False, highlight=False,
            )  # fmt: skip
            return False
        run_dir = run_dirs[0]
        values, incomplete = self.metrics(run_dir)
        self._log(run_dir, values)
        where = f"W&B sweep {self.sweep_id} run {self.run_id}"
        if incomplete:
            console.print(f"error: {where}: {incomplete}", style="red", markup=False, highlight=False)
            return False
        names = ", ".join(k for k in values if not k.startswith("clinsynth/")) or "no metrics"
        console.print(f"{where}: reported {names}", markup=False, highlight=False, soft_wrap=True)
        return True

    def _log(self, run_dir: Path, values: dict[str, Any]) -> None:
        import wandb

        with self._environment():
            wandb.teardown()  # settings are read from the environment at setup: set up again with ours
            run = wandb.init(
                config={"clinsynth/run_id": run_dir.name, "clinsynth/run_dir": str(run_dir)},
                settings=wandb.Settings(console="off", save_code=False, disable_code=True, quiet=True,
                                        x_disable_stats=True),
            )  # fmt: skip
            try:
                run.log(values)
                run.summary.update(values)
            finally:
                run.finish()
            wandb.teardown()

    @contextlib.contextmanager
    def _environment(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
