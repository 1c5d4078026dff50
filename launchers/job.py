"""What every Slurm/local/debug task runs: build the context, run the stage, mark it.

`StageTask(spec)` is submitit-checkpointable: on the time-limit warning, on preemption
and on `scancel --signal=USR2` the stage is asked to stop through its context, saves to
`ctx.checkpoint_dir`, and the job requeues itself under the same stage id and folder;
`tasks/NNNNN.json` lists every attempt (running, done, failed, requeued, stopped).

Local and debug tasks also end on SIGTERM and SIGINT (submitit ignores SIGTERM in every
task, as Slurm sends it next to the warning signal; a stopped launcher sends it to its local
tasks): the attempt is recorded as "stopped", the unit stays incomplete, and a relaunch
redoes or resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import submitit
import submitit.helpers

from clinsynth.core.atomic import read_json, write_json
from clinsynth.core.context import (
    StageContext,
    StopRequested,
    StopSignal,
    TaskStopped,
    latest_checkpoint,
    signal_name,
    unit_checkpoint_dir,
)
from clinsynth.core.registry import get_stage, load_stage_modules
from clinsynth.core.secrets import Scrubber, scrubbed_output, secret_env_names
from clinsynth.core.tracking import NullTracker, Tracker, WandbTracker, start_tracker
from launchers.config import redact
from launchers.folders import StageFolder


@dataclass
class TaskSpec:
    """Everything a task needs, pickled by submitit into the job folder."""

    stage: str
    stage_id: str
    stage_dir: str
    config: dict[str, Any]
    inputs: dict[str, str]
    num_shards: int
    n_units: int
    run_id: str
    experiment: str
    tracking: dict[str, Any]
    stage_modules: list[str] = field(default_factory=list)
    #: array stages: the shard this task takes; None for single or multi-rank jobs
    shard: int | None = None
    #: the runs folder's shared cache (runs/cache)
    cache_dir: str | None = None


def _logger(stage: str, rank: int) -> logging.Logger:
    logger = logging.getLogger(f"clinsynth.{stage}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{stage} r{rank}] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _tracker(
    spec: TaskSpec, rank: int, folder: StageFolder, logger: logging.Logger, scrubber: Scrubber | None = None
) -> Tracker:
    trk = spec.tracking or {}
    if rank != 0 or trk.get("backend") != "wandb" or trk.get("mode") == "disabled":
        return NullTracker()
    return start_tracker(lambda: _wandb(spec, trk, folder, scrubber), logger)


def _wandb(spec: TaskSpec, trk: dict[str, Any], folder: StageFolder, scrubber: Scrubber | None) -> Tracker:
    return WandbTracker(
        run_id=f"{spec.run_id}-{spec.stage}" + (f"-{spec.shard:05d}" if spec.shard is not None else ""),
        name=f"{spec.experiment}/{spec.stage}" + (f"/{spec.shard}" if spec.shard is not None else ""),
        group=spec.run_id,
        project=trk.get("project", "clinsynth"),
        entity=trk.get("entity"),
        mode=trk.get("mode", "offline"),
        directory=folder.path / "wandb",
        config=redact({"stage": spec.stage, "stage_id": spec.stage_id, **spec.config}, scrubber),
        tags=[spec.experiment, spec.stage],
        log_samples=bool(trk.get("log_samples", False)),
    )


def _job_info() -> dict[str, Any]:
    env = submitit.JobEnvironment()
    info: dict[str, Any] = {
        "executor": env.cluster,
        "job_id": env.job_id,
        "rank": env.global_rank,
        "local_rank": env.local_rank,
        "world_size": env.num_tasks,
        "num_nodes": env.num_nodes,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if env.cluster == "slurm":
        info["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
        info["slurm_array_job_id"] = os.environ.get("SLURM_ARRAY_JOB_ID")
        info["slurm_array_task_id"] = os.environ.get("SLURM_ARRAY_TASK_ID")
        info["node"] = os.environ.get("SLURMD_NODENAME")
    try:
        paths = env.paths
        info["log_out"] = str(paths.stdout).replace("%t", str(env.global_rank))
        info["log_err"] = str(paths.stderr).replace("%t", str(env.global_rank))
    except Exception:  # debug executor has no log files
        pass
    return info


def _peak_rss() -> dict[str, float]:
    """Peak resident memory of this task and of its largest child process (worker pools), in MB."""
    import resource

    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


#: MASTER_PORT range below Linux's ephemeral ports (32768-60999), which any outgoing connection
#: on the node may hold: submitit's default range (20000-60000) collides with them now and then
MASTER_PORTS = (20000, 32000)


def _export_distributed(world_size: int, job_id: str) -> None:
    if world_size > 1:
        env = submitit.helpers.TorchDistributedEnvironment()
        if "MASTER_PORT" not in os.environ:  # the same on every rank and every attempt of the job
            env.master_port = random.Random(f"master-port:{job_id}").randint(*MASTER_PORTS)
        else:
            env.master_port = int(os.environ["MASTER_PORT"])
        # overwrite: a vLLM engine built earlier in this process (cluster=debug) sets LOCAL_WORLD_SIZE
        env.export(set_cuda_visible_devices=False, overwrite=True)


class StageTask(submitit.helpers.Checkpointable):
    """What every Slurm/local/debug task runs: `StageTask(spec)()`. Checkpointable, so that
    submitit requeues it on the warning signal before the time limit, on preemption and on
    `scancel --signal=USR2`: `checkpoint()` re-pickles only the spec (no stage state; the
    stage keeps that in `ctx.checkpoint_dir`)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return _scrubbed_run(self.spec)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(StageTask(self.spec))


class _RunTask(submitit.helpers.Checkpointable):
    """`ex.submit(run_task, spec)`: the same as `ex.submit(StageTask(spec))`."""

    def __call__(self, spec: TaskSpec) -> dict[str, Any]:
        return _scrubbed_run(spec)

    def checkpoint(self, spec: TaskSpec) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(StageTask(spec))


run_task = _RunTask()


def _stop_signal() -> int:
    """The signal submitit treats as preemption / time-out warning (USR2 unless overridden)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return int(getattr(signal, f"SIG{name}", signal.SIGUSR2))


class _StopHandler:
    """Replaces submitit's USR2 handler while the stage runs, and keeps it for later.

    The signal only sets the context's flag. A stage that asks `ctx.should_stop()` stops at
    its next step boundary, saves, and raises StopRequested; then rank 0 calls submitit's
    handler (checkpoint() + `scontrol requeue` + SystemExit) outside any collective. A stage
    that never asked is handed to submitit's handler at once, as without this wrapper.
    """

    def __init__(self, stop: StopSignal, rank: int, logger: logging.Logger) -> None:
        self.stop, self.rank, self.logger = stop, rank, logger
        self.signum = _stop_signal()
        self.previous: Any = None
        self.installed = False
        #: submitit's requeue path was entered: a SystemExit from now on is a requeue
        self.requeue_started = False

    def __enter__(self) -> _StopHandler:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(self.signum)
            signal.signal(self.signum, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(self.signum, self.previous)
            self.installed = False

    @property
    def can_requeue(self) -> bool:
        return callable(self.previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.stop.requested
        self.stop.request(signum)
        if self.stop.polled:
            if first:
                self.logger.warning("got %s: stopping at the next step boundary", signal.Signals(signum).name)
            return
        if self.can_requeue:
            self.logger.warning(
                "got %s; the stage does not check ctx.should_stop(): submitit requeues now",
                signal.Signals(signum).name,
            )
            self.requeue_started = self.rank == 0
            self.previous(signum, frame)

    def disarm(self) -> None:
        """The stage returned: a late signal changes nothing any more (the unit is done)."""
        self.stop.polled = True

    def requeue(self) -> None:
        """Rank 0, after the stage stopped: submitit's handler dumps checkpoint(), runs
        `scontrol requeue` and raises SystemExit; it raises UncompletedJobError when the job
        timed out too often (max_num_timeout)."""
        self.requeue_started = True
        self.previous(self.stop.signum or self.signum, None)


#: what ends a local or debug task (Slurm tasks keep submitit's handling: SIGTERM is ignored
#: there, the warning signal before it requeues the job)
TERMINATE_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Terminate:
    """local/debug: SIGTERM and SIGINT end the task, promptly.

    A stage that asks `ctx.should_stop()` is only flagged and stops at its next step boundary
    (StopRequested); any other stage is unwound at once by TaskStopped raised from the
    handler. After the stage returned (`disarm`), the signal only is noted: the unit's outputs
    are in place and marking it complete takes a moment. Repeats of the signal change nothing
    (the local controller forwards the launcher's SIGTERM once more); the launcher escalates to
    SIGKILL when a task outlasts its grace period.
    """

    def __init__(self, stop: StopSignal, logger: logging.Logger, executor: str) -> None:
        self.stop, self.logger = stop, logger
        self.active = executor in ("local", "debug") and threading.current_thread() is threading.main_thread()
        self.previous: dict[int, Any] = {}
        self.signum: int | None = None
        self.armed = False
        self.disarmed = False

    def __enter__(self) -> _Terminate:
        if self.active and not self.previous:
            for sig in TERMINATE_SIGNALS:
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.stop.request(signum)
        if not self.armed:
            self.logger.warning("got %s before the stage started: it will not start", signal_name(signum))
            return
        if self.disarmed:
            self.logger.warning("got %s after the stage returned: finishing the unit", signal_name(signum))
            return
        if self.stop.polled:
            self.logger.warning("got %s: stopping at the next step boundary", signal_name(signum))
            return
        self.logger.warning("got %s: stopping the stage now", signal_name(signum))
        raise TaskStopped(signum)

    def arm(self) -> None:
        """The stage starts now: a signal that came while the task set up ends it here."""
        self.armed = True
        if self.signum is not None:
            raise TaskStopped(self.signum)

    def disarm(self) -> None:
        self.disarmed = True


def _leave_process_group() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _previous_attempts(record_path: Path) -> list[dict[str, Any]]:
    """Earlier attempts of this unit; one still marked running ended without a word (SIGKILL,
    node loss, a requeue that took this rank down mid-step): it becomes "interrupted"."""
    if not record_path.exists():
        return []
    try:
        attempts = list(read_json(record_path).get("attempts", []))
    except Exception:
        return []
    for a in attempts:
        if a.get("status") == "running":
            a["status"] = "interrupted"
    return attempts


def _scrubbed_run(spec: TaskSpec) -> dict[str, Any]:
    """Design §10: the values of secret variables (those the stage config names through its
    `secret_env` fields, and the usual ones) never reach the task's stdout/stderr logs, its
    record, its result or error pickle, or W&B, whatever the stage prints or raises."""
    load_stage_modules(spec.stage_modules)
    try:
        names = secret_env_names(get_stage(spec.stage).parse_config(spec.config))
    except Exception:  # a config the stage refuses fails inside _run, with its record
        names = set()
    scrubber = Scrubber.from_env(names)
    with scrubbed_output(scrubber):
        return scrubber.data(_run(spec, scrubber))


def _run(spec: TaskSpec, scrubber: Scrubber | None = None) -> dict[str, Any]:
    scrubber = scrubber or Scrubber()
    os.umask(0o077)  # design §10: everything a task writes is private to its owner
    load_stage_modules(spec.stage_modules)
    stage_spec = get_stage(spec.stage)
    info = _job_info()
    rank, world = info["rank"], info["world_size"]
    unit = spec.shard if spec.shard is not None else rank
    folder = StageFolder(Path(spec.stage_dir))
    logger = _logger(spec.stage, rank)
    multi_rank = spec.shard is None and world > 1
    unit_was_complete = folder.unit_complete(unit)
    # a multi-rank job runs all its ranks or none: a rank whose unit is complete still joins
    # the collectives of a rerun (only when every rank is complete is there nothing to do)
    if (multi_rank and not folder.missing_units(spec.n_units)) or (not multi_rank and unit_was_complete):
        logger.info("unit %d of %s is already complete; nothing to do", unit, spec.stage)
        return {"unit": unit, "skipped": True}
    _export_distributed(world, str(info["job_id"]))

    record_path = folder.task_record_path(unit)
    attempts = _previous_attempts(record_path)
    attempt: dict[str, Any] = {**info, "start": time.time(), "status": "running"}
    attempts.append(attempt)

    def save_record() -> None:
        write_json(record_path, scrubber.data({"unit": unit, "attempts": attempts, **attempt}))

    stop = StopSignal()
    terminate = _Terminate(stop, logger, str(info["executor"]))
    terminate.__enter__()  # from here SIGTERM/SIGINT are noted; they end the stage once it runs (arm)
    try:
        save_record()
        checkpoint_dir = unit_checkpoint_dir(folder.path, spec.shard)
        tracker = _tracker(spec, rank, folder, logger, scrubber)
        ctx = StageContext(
            stage=spec.stage,
            stage_id=spec.stage_id,
            stage_dir=folder.path,
            inputs={k: Path(v) for k, v in spec.inputs.items()},
            rank=rank,
            local_rank=info["local_rank"],
            world_size=world,
            shard=spec.shard or 0,
            num_shards=spec.num_shards,
            run_id=spec.run_id,
            cache_dir=Path(spec.cache_dir) if spec.cache_dir else None,
            checkpoint_dir=checkpoint_dir,
            attempt=len(attempts),
            unit_was_complete=unit_was_complete,
            logger=logger,
            tracker=tracker,
            stop_signal=stop,
        )
        logger.info(
            "start unit %d/%d on %s (job %s, attempt %d%s)",
            unit,
            spec.n_units,
            info["host"],
            info["job_id"],
            ctx.attempt,
            ", resuming from a checkpoint" if ctx.resuming else "",
        )
        t0 = time.time()
    except BaseException:
        terminate.__exit__()
        raise
    with terminate, _StopHandler(stop, rank, logger) as handler:
        try:
            terminate.arm()
            result = stage_spec.fn(stage_spec.parse_config(spec.config), ctx)
            terminate.disarm()
            handler.disarm()
        except BaseException as exc:
            terminate.disarm()
            handler.disarm()
            if terminate.signum is not None:
                # told to end (TaskStopped, or a step-boundary stop, or whatever the stage
                # raised while it unwound): stopped, never requeued here
                _stopped(spec, ctx, attempt, save_record, t0, terminate.signum, exc, str(info["executor"]))
            if isinstance(exc, StopRequested):
                return _requeue(spec, ctx, handler, attempt, save_record, t0, str(exc) or "asked to stop")
            if isinstance(exc, SystemExit) and handler.requeue_started:
                # the stage did not check should_stop(): submitit requeued the job under it
                _end_attempt(attempt, "requeued", t0, ctx, reason="requeued by submitit on the signal")
                save_record()
                tracker.finish(exit_code=1)
                raise
            attempt.update(
                status="failed",
                end=time.time(),
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=20),
            )
            save_record()
            tracker.finish(exit_code=1)
            raise
    attempt.update(status="done", end=time.time(), seconds=round(time.time() - t0, 3), **_peak_rss())
    if ctx.timings:  # the stage's own timings (ctx.timing): records, never outputs
        attempt["timing"] = ctx.timings
    save_record()
    tracker.summary({"seconds": attempt["seconds"]})
    tracker.finish()
    folder.mark_unit_complete(unit)
    if folder.try_mark_done(spec.n_units):
        finalize_meta(folder)
    logger.info("unit %d done in %.1fs", unit, attempt["seconds"])
    return {
        "unit": unit,
        "skipped": False,
        "seconds": attempt["seconds"],
        "result": result if isinstance(result, (dict, list, str, int, float, type(None))) else repr(result),
    }


def _stopped(
    spec: TaskSpec,
    ctx: StageContext,
    attempt: dict[str, Any],
    save_record: Callable[[], None],
    t0: float,
    signum: int,
    exc: BaseException,
    executor: str,
) -> NoReturn:
    """The task was told to end (local/debug): record "stopped", then end without a result.

    A local task exits with 128 + the signal number (never submitit's requeue code); a debug
    task raises TaskStopped into the launcher, which runs it in its own process.
    """
    unit = spec.shard if spec.shard is not None else ctx.rank
    how = "at a step boundary" if isinstance(exc, StopRequested) else "while running"
    extra: dict[str, Any] = {"reason": f"stopped by {signal_name(signum)} {how}"}
    if not isinstance(exc, (StopRequested, TaskStopped)):
        extra["stop_error"] = f"{type(exc).__name__}: {exc}"  # what the stage raised as it unwound
    _end_attempt(attempt, "stopped", t0, ctx, error=f"stopped by {signal_name(signum)}", **extra)
    attempt["signal"] = signal_name(signum)
    save_record()
    ctx.tracker.finish(exit_code=1)
    _leave_process_group()
    ctx.logger.warning("unit %d stopped by %s; it stays incomplete", unit, signal_name(signum))
    if executor == "local":
        raise SystemExit(128 + signum)
    raise TaskStopped(signum, f"stage {spec.stage} unit {unit} stopped by {signal_name(signum)}")


def _end_attempt(attempt: dict[str, Any], status: str, t0: float, ctx: StageContext, **extra: Any) -> None:
    attempt.update(status=status, end=time.time(), seconds=round(time.time() - t0, 3), **extra)
    if ctx.stop_signal.signum is not None:
        attempt.update(signal=signal.Signals(ctx.stop_signal.signum).name, signal_time=ctx.stop_signal.time)
    last = latest_checkpoint(ctx.checkpoint_dir) if ctx.checkpoint_dir else None
    if last is not None:
        attempt["checkpoint"] = {"time": last[0], "path": str(last[1])}


def _requeue(
    spec: TaskSpec,
    ctx: StageContext,
    handler: _StopHandler,
    attempt: dict[str, Any],
    save_record: Callable[[], None],
    t0: float,
    reason: str,
) -> dict[str, Any]:
    """The stage stopped at a step boundary and saved: record it, then (rank 0) requeue the job."""
    unit = spec.shard if spec.shard is not None else ctx.rank
    _end_attempt(attempt, "requeued", t0, ctx, reason=reason)
    save_record()
    ctx.tracker.finish(exit_code=1)
    _leave_process_group()
    if ctx.rank != 0:
        # rank 0 requeues the whole job; this rank ends quietly (a non-zero exit could make
        # srun kill rank 0 before it requeued, where KillOnBadExit is set)
        ctx.logger.info("unit %d stopped; rank 0 requeues the job", unit)
        return {"unit": unit, "requeued": True}
    if not handler.can_requeue:
        attempt.update(status="stopped", error="stopped on request; this executor cannot requeue")
        save_record()
        raise RuntimeError(
            f"stage {spec.stage} unit {unit} stopped and saved a checkpoint, but this executor "
            "cannot requeue: launch the same command again to resume"
        )
    ctx.logger.info("unit %d stopped after %.1fs; requeueing the job", unit, attempt["seconds"])
    try:
        handler.requeue()  # SystemExit once `scontrol requeue` went through
    except SystemExit:
        raise
    except BaseException as exc:
        attempt.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
        )
        save_record()
        raise
    # a handler that returns did not requeue (it should not happen with submitit 1.5)
    attempt.update(status="stopped", error="submitit's handler returned without requeueing")
    save_record()
    raise RuntimeError(f"stage {spec.stage} unit {unit} stopped but the job was not requeued")


def finalize_meta(folder: StageFolder) -> None:
    """Fold the task records into meta.json once the stage is done: hosts, job ids, times."""
    meta = folder.read_meta()
    records = folder.task_records()
    starts = [a["start"] for r in records.values() for a in r.get("attempts", []) if "start" in a]
    ends = [a["end"] for r in records.values() for a in r.get("attempts", []) if "end" in a]
    latest = [r for _, r in sorted(records.items())]
    arrays = {
        str(u): f"{r['slurm_array_job_id']}_{r['slurm_array_task_id']}"
        for u, r in sorted(records.items())
        if r.get("slurm_array_job_id")
    }
    meta.update(
        hosts=sorted({str(r.get("node") or r.get("host")) for r in latest if r.get("node") or r.get("host")}),
        job_ids=sorted({str(r["job_id"]) for r in latest if r.get("job_id")}),
        slurm={
            "job_ids": sorted({str(r["slurm_job_id"]) for r in latest if r.get("slurm_job_id")}),
            "array_job_ids": sorted({a.split("_")[0] for a in arrays.values()}),
            "array_task_of_unit": arrays,
        },
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
        timing={str(u): r["timing"] for u, r in sorted(records.items()) if r.get("timing")},
        units=len(records),
        attempts=sum(len(r.get("attempts", [])) for r in records.values()),
    )
    folder.write_meta(meta)
