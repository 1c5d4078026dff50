"""`doctor`: check, on the nodes a job really gets, what a long training job assumes.

Run it with the resources of the job you plan (e.g. `resources/doctor=multinode`)
before spending GPU hours: it reports each rank's host, CPUs, GPUs, Python and
package versions, offline settings and free disk, and — when torch is present —
proves that the ranks can talk (an all_reduce over the chosen backend).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from typing import Any, Literal

from clinsynth.core.atomic import read_json, write_json
from clinsynth.core.config import StageConfig, identity
from clinsynth.core.context import StageContext
from clinsynth.core.environment import package_versions
from clinsynth.core.registry import stage


def _gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    return out


def _all_reduce(ctx: StageContext, backend: str) -> dict[str, Any]:
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return {"checked": False, "reason": "torch is not installed (extra `train`)"}
    if backend == "nccl" and not torch.cuda.is_available():
        return {"checked": False, "reason": "backend nccl asked for but no GPU is visible"}
    ctx.init_distributed(backend)
    device = torch.device("cuda", ctx.local_rank) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([float(ctx.rank + 1)], device=device)
    dist.all_reduce(value)
    expected = ctx.world_size * (ctx.world_size + 1) / 2
    dist.barrier()
    dist.destroy_process_group()
    return {
        "checked": True,
        "backend": backend,
        "sum": float(value.item()),
        "ok": float(value.item()) == expected,
    }


class DoctorSection(StageConfig):
    collective: bool = identity(why="all_reduce across the stage's ranks when world size > 1")
    backend: Literal["gloo", "nccl"] = identity()
    require_offline: bool = identity()
    min_free_disk_gb: float = identity(ge=0)


class DoctorConfig(StageConfig):
    doctor: DoctorSection


# its report describes the nodes it ran on: other resources are another check (identity_resources)
@stage(
    "doctor",
    config=DoctorConfig,
    version=1,
    identity_resources=True,
    nondeterminism=lambda cfg: {"why": "reports the hosts, devices and disks it ran on"},
)
def run(cfg: DoctorConfig, ctx: StageContext) -> dict[str, Any]:
    """Report each rank's environment and check that the ranks can communicate."""
    opts = cfg.doctor
    report: dict[str, Any] = {
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "world_size": ctx.world_size,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus_visible": len(os.sched_getaffinity(0)),
        "gpus": _gpus(),
        "packages": package_versions(),
        "env": {
            k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "WANDB_MODE", "OMP_NUM_THREADS", "SLURM_JOB_ID")
        },
        "free_disk_gb": round(shutil.disk_usage(ctx.stage_dir).free / 2**30, 1),
    }
    problems = []
    if opts.require_offline and os.environ.get("HF_HUB_OFFLINE") != "1":
        problems.append("HF_HUB_OFFLINE is not 1: a job may try to download from the hub")
    if report["free_disk_gb"] < opts.min_free_disk_gb:
        problems.append(f"only {report['free_disk_gb']} GB free in {ctx.stage_dir}")
    if ctx.world_size > 1 and opts.collective:
        report["collective"] = _all_reduce(ctx, opts.backend)
        if report["collective"].get("checked") and not report["collective"]["ok"]:
            problems.append(f"all_reduce gave a wrong sum: {report['collective']}")
    report["problems"] = problems
    write_json(ctx.stage_dir / "reports" / f"rank-{ctx.rank:05d}.json", report)
    for p in problems:
        ctx.logger.warning("doctor rank %d on %s: %s", ctx.rank, report["host"], p)
    ctx.tracker.summary({f"doctor/rank{ctx.rank}/problems": len(problems)})
    return report


def summarize(stage_dir: os.PathLike[str] | str) -> list[dict[str, Any]]:
    """All rank reports of a finished doctor stage, in rank order."""
    from pathlib import Path

    return [read_json(p) for p in sorted(Path(stage_dir, "reports").glob("rank-*.json"))]
