"""The function every Slurm/local/debug task runs: build the context, run the stage, mark it."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from clinsynth.core.atomic import write_json
from clinsynth.core.context import StageContext
from clinsynth.core.registry import get_stage, load_stage_modules
from clinsynth.core.tracking import NullTracker, Tracker, WandbTracker
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


def _tracker(spec: TaskSpec, rank: int, folder: StageFolder) -> Tracker:
    trk = spec.tracking or {}
    if rank != 0 or trk.get("backend") != "wandb" or trk.get("mode") == "disabled":
        return NullTracker()
    return WandbTracker(
        run_id=f"{spec.run_id}-{spec.stage}" + (f"-{spec.shard:05d}" if spec.shard is not None else ""),
        name=f"{spec.experiment}/{spec.stage}" + (f"/{spec.shard}" if spec.shard is not None else ""),
        group=spec.run_id,
        project=trk.get("project", "clinsynth"),
        entity=trk.get("entity"),
        mode=trk.get("mode", "offline"),
        directory=folder.path / "wandb",
        config=redact({"stage": spec.stage, "stage_id": spec.stage_id, **spec.config}),
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


def _export_distributed(world_size: int) -> None:
    if world_size > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_task(spec: TaskSpec) -> dict[str, Any]:
    os.umask(0o077)  # design §10: everything a task writes is private to its owner
    load_stage_modules(spec.stage_modules)
    stage_spec = get_stage(spec.stage)
    info = _job_info()
    rank, world = info["rank"], info["world_size"]
    unit = spec.shard if spec.shard is not None else rank
    folder = StageFolder(Path(spec.stage_dir))
    logger = _logger(spec.stage, rank)
    if folder.unit_complete(unit):
        logger.info("unit %d of %s is already complete; nothing to do", unit, spec.stage)
        return {"unit": unit, "skipped": True}
    _export_distributed(world)

    record_path = folder.task_record_path(unit)
    attempts = []
    if record_path.exists():
        from clinsynth.core.atomic import read_json

        try:
            attempts = list(read_json(record_path).get("attempts", []))
        except Exception:
            attempts = []
    attempt = {**info, "start": time.time(), "status": "running"}
    attempts.append(attempt)
    write_json(record_path, {"unit": unit, "attempts": attempts, **attempt})

    tracker = _tracker(spec, rank, folder)
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
        logger=logger,
        tracker=tracker,
    )
    logger.info("start unit %d/%d on %s (job %s)", unit, spec.n_units, info["host"], info["job_id"])
    t0 = time.time()
    try:
        result = stage_spec.fn(stage_spec.parse_config(spec.config), ctx)
    except BaseException as exc:
        attempt.update(
            status="failed",
            end=time.time(),
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
        )
        write_json(record_path, {"unit": unit, "attempts": attempts, **attempt})
        tracker.finish(exit_code=1)
        raise
    attempt.update(status="done", end=time.time(), seconds=round(time.time() - t0, 3), **_peak_rss())
    write_json(record_path, {"unit": unit, "attempts": attempts, **attempt})
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
        hosts=sorted({r.get("node") or r.get("host") for r in latest if r.get("node") or r.get("host")}),
        job_ids=sorted({str(r["job_id"]) for r in latest if r.get("job_id")}),
        slurm={
            "job_ids": sorted({str(r["slurm_job_id"]) for r in latest if r.get("slurm_job_id")}),
            "array_job_ids": sorted({a.split("_")[0] for a in arrays.values()}),
            "array_task_of_unit": arrays,
        },
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
        units=len(records),
        attempts=sum(len(r.get("attempts", [])) for r in records.values()),
    )
    folder.write_meta(meta)
