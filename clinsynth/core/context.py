"""What a stage sees of where it runs: its rank, its shard, its folder, its inputs.

It is also how a running stage is asked to stop. When Slurm warns of the time limit, when
the job is preempted or when someone runs `scancel --signal=USR2 JOB`, the launcher only
sets a flag (no I/O, no collectives inside a signal handler). A stage that checkpoints
looks at it between steps and hands over:

    state = ctx.load_checkpoint() or {"step": 0}
    for step in range(state["step"], n_steps):
        if ctx.should_stop():                     # collective when world_size > 1
            ctx.save_checkpoint({"step": step, ...})   # rank 0 writes atomically, then a barrier
            ctx.requeue()                         # raises StopRequested: the job requeues itself
        ...

The requeued job runs the same stage id in the same folder with `ctx.attempt` one higher
and `ctx.resuming` true. A stage that never asks `should_stop()` is requeued at once when
the signal comes (submitit's default) and redoes its unit from what it wrote atomically.

Local and debug tasks also stop on SIGTERM/SIGINT (a stopped launcher sends SIGTERM): a
stage that asks `should_stop()` stops at its next step boundary the same way (but the unit
is recorded "stopped", not requeued: a relaunch resumes it); any other stage is unwound at
once by `TaskStopped`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from clinsynth.core.atomic import atomic_path, read_json, write_json
from clinsynth.core.progress import ProgressReporter, progress_path
from clinsynth.core.tracking import NullTracker, Tracker

T = TypeVar("T")

#: the state `save_checkpoint` writes inside the checkpoint folder
CHECKPOINT_FILE = "checkpoint.json"


def unit_checkpoint_dir(stage_dir: Path, shard: int | None) -> Path:
    """Where a unit keeps its checkpoint: one folder per array shard; one for all ranks of a job."""
    return stage_dir / "checkpoints" / (f"shard-{shard:05d}" if shard is not None else "job")


def latest_checkpoint(folder: Path, max_files: int = 10_000) -> tuple[float, Path] | None:
    """(modification time, path) of the newest checkpoint in `folder`: `checkpoint.json` when
    `save_checkpoint` wrote one, else the newest file a stage saved there itself."""
    main = folder / CHECKPOINT_FILE
    if main.is_file():
        return main.stat().st_mtime, main
    if not folder.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for n, path in enumerate(folder.rglob("*")):
        if n >= max_files:
            break
        if path.name.startswith(".") or not path.is_file():  # temp files of atomic writes
            continue
        mtime = path.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, path)
    return best


class StopRequested(BaseException):
    """Raised by `ctx.requeue()`: the stage saved what it needs and wants the job requeued.

    A BaseException, so `except Exception` blocks inside a stage do not swallow it.
    """


class TaskStopped(BaseException):
    """Raised inside a local or debug task when it is told to end (SIGTERM, SIGINT): the
    launcher was stopped, or someone stopped the task. The stage unwinds at once (a stage
    that asks `ctx.should_stop()` stops at its next step boundary instead); the unit stays
    incomplete, so a relaunch redoes or resumes it.

    A BaseException, so `except Exception` blocks inside a stage do not swallow it.
    """

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        super().__init__(message or f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15; `signal 64` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignal:
    """The flag the launcher's signal handler sets, and what a stage registered to hear of it.

    `request()` runs inside a signal handler: it sets plain attributes and calls the
    callbacks, which must only set flags themselves (no I/O, no locks, no collectives).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.time: float | None = None
        #: the stage asked `should_stop()` at least once: it stops itself at a step boundary
        self.polled = False
        self.callbacks: list[Callable[[], None]] = []

    def request(self, signum: int | None = None) -> None:
        if not self.requested:
            self.requested, self.signum, self.time = True, signum, time.time()
        for callback in list(self.callbacks):
            with contextlib.suppress(Exception):
                callback()


@dataclass
class StageContext:
    stage: str
    stage_id: str
    stage_dir: Path
    #: upstream stage name -> its stage folder (read-only for this stage)
    inputs: dict[str, Path] = field(default_factory=dict)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    #: array stages: this task's shard and the shard count; else 0 and 1
    shard: int = 0
    num_shards: int = 1
    run_id: str = ""
    #: shared cache of the runs folder (built tiny models, tokenizers): reused across stages and runs
    cache_dir: Path | None = None
    #: where a stage saves state when asked to stop; the requeued attempt resumes from it.
    #: One folder per array shard; all ranks of a multi-rank job share one (rank 0 writes).
    checkpoint_dir: Path | None = None
    #: 1 for the first attempt of this unit, 2 after one requeue (or relaunch), ...
    attempt: int = 1
    #: multi-rank rerun: this rank's unit was already complete; it runs again to join the collectives
    unit_was_complete: bool = False
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("clinsynth"))
    tracker: Tracker = field(default_factory=NullTracker)
    #: set by the launcher's signal handler; read it through `stop_requested` / `should_stop()`
    stop_signal: StopSignal = field(default_factory=StopSignal, repr=False)
    _progress: ProgressReporter | None = field(default=None, init=False, repr=False, compare=False)
    _timing: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def timing(self, **values: Any) -> None:
        """How long and how fast (seconds, letters/s, phase times): kept in the task record
        (tasks/NNNNN.json, the attempt's `timing`) and meta.json, never in an output file, so that
        a rerun's outputs compare byte for byte (launchers/manifest.py)."""
        self._timing.update(values)

    @property
    def timings(self) -> dict[str, Any]:
        return dict(self._timing)

    def progress(self, done: int, total: int | None, unit: str = "items") -> None:
        """`done` of `total` `unit`s so far (total None: unknown): a log line every ~10 s and
        `<stage_dir>/progress/<shard>.json` for `launch status` (clinsynth/core/progress.py).
        Cheap enough to call per item; rank 0 reports, other ranks' calls do nothing."""
        if not self.is_main:
            return
        if self._progress is None:
            path = progress_path(self.stage_dir, self.shard)
            self._progress = ProgressReporter(self.stage, path, self.logger, attempt=self.attempt)
        self._progress.update(done, total, unit)

    def items(self, seq: Sequence[T]) -> Sequence[T]:
        """This shard's share of `seq`: items shard, shard+N, shard+2N, ..."""
        return seq[self.shard :: self.num_shards]

    def shard_path(self, subdir: str, suffix: str) -> Path:
        """`<stage_dir>/<subdir>/shard-00007<suffix>`; the folder is created."""
        folder = self.stage_dir / subdir
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"shard-{self.shard:05d}{suffix}"

    def input_dir(self, stage: str) -> Path:
        try:
            return self.inputs[stage]
        except KeyError:
            raise KeyError(
                f"stage {self.stage!r} asked for the output of {stage!r}, which it does not "
                f"declare in needs=...; declared: {sorted(self.inputs)}"
            ) from None

    def init_distributed(self, backend: str = "gloo") -> None:
        """Join the stage's process group (MASTER_ADDR/PORT, RANK, WORLD_SIZE are set by the launcher)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            for key in ("MASTER_ADDR", "MASTER_PORT"):
                if key not in os.environ:
                    raise RuntimeError(f"{key} is not set: run this stage through the launcher")
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)

    # ---- stop, checkpoint, requeue
    @property
    def stop_requested(self) -> bool:
        """This process was asked to stop (time limit near, preemption, scancel --signal=USR2).

        Local and cheap; in a multi-rank stage the ranks may disagree for a moment: decide
        with `should_stop()`.
        """
        return self.stop_signal.requested

    def should_stop(self, group: Any = None) -> bool:
        """Whether to stop at this step boundary, the same answer on every rank.

        With world_size > 1 and torch.distributed initialised this is a collective (an
        all_reduce MAX of the flag over `group`, default the stage's process group): every
        rank must call it at the same step boundaries. Calling it at all tells the launcher
        that this stage stops itself, so the signal only sets the flag.
        """
        self.stop_signal.polled = True
        flag = self.stop_signal.requested
        if self.world_size > 1 and _distributed_ready():
            import torch
            import torch.distributed as dist

            device = torch.device("cpu")
            if dist.get_backend(group) == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
            flag = bool(t.item())
        if flag and not self.stop_signal.requested:
            self.stop_signal.request()  # another rank got the signal: this one stops too
        return flag

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the stop signal arrives (e.g. set a trainer's `should_save`).

        It runs inside the signal handler: it may only set flags.
        """
        self.stop_signal.callbacks.append(callback)
        if self.stop_signal.requested:
            callback()

    def _checkpoint_folder(self) -> Path:
        if self.checkpoint_dir is None:
            raise RuntimeError(
                f"stage {self.stage!r} has no checkpoint folder: run it through the launcher "
                "(or pass checkpoint_dir= to StageContext)"
            )
        return self.checkpoint_dir

    @property
    def resuming(self) -> bool:
        """A checkpoint of an earlier attempt is there to resume from."""
        return self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT_FILE).is_file()

    def save_checkpoint(self, state: Mapping[str, Any], group: Any = None) -> Path:
        """Save JSON-able `state` as this unit's checkpoint: rank 0 writes it atomically
        (temp file + rename), then every rank waits at a barrier (multi-rank stages call it
        on every rank). Large files (weights, optimizer state) go through `checkpoint_file()`
        before this call; `state` then names them."""
        folder = self._checkpoint_folder()
        path = folder / CHECKPOINT_FILE
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(
                path,
                {
                    "saved_at": time.time(),
                    "attempt": self.attempt,
                    "stage": self.stage,
                    "stage_id": self.stage_id,
                    "shard": self.shard,
                    "world_size": self.world_size,
                    "state": dict(state),
                },
            )
            self.logger.info("checkpoint saved to %s", path)
        self.barrier(group)
        return path

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last `save_checkpoint`, or None on a fresh start (every rank may read it)."""
        if self.checkpoint_dir is None:
            return None
        path = self.checkpoint_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        data = read_json(path)
        self.logger.info("resuming from %s (saved in attempt %s)", path, data.get("attempt"))
        return dict(data.get("state") or {})

    @contextlib.contextmanager
    def checkpoint_file(self, name: str) -> Iterator[Path]:
        """A temporary path for one checkpoint file (`torch.save(obj, tmp)`), renamed to
        `<checkpoint_dir>/<name>` only when the block succeeds."""
        with atomic_path(self._checkpoint_folder() / name) as tmp:
            yield tmp

    def barrier(self, group: Any = None) -> None:
        """Wait for every rank (a no-op for single-rank stages or without torch.distributed)."""
        if self.world_size > 1 and _distributed_ready():
            import torch.distributed as dist

            dist.barrier(group=group)

    def requeue(self, reason: str = "asked to stop") -> NoReturn:
        """End this attempt so that the job requeues itself; call it on every rank after
        `save_checkpoint`. Never returns."""
        raise StopRequested(reason)


def _distributed_ready() -> bool:
    """torch.distributed is imported (never import torch just to ask) and initialised."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())
