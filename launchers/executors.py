"""Turn a stage's resources into a submitit executor (local, debug or Slurm)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launchers.plan import PlanError, PlannedStage
from launchers.provenance import REPO_ROOT

EXECUTORS = ("local", "debug", "slurm")


def setup_lines(cluster: dict[str, Any], resources: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    env_sh = cluster.get("env_sh")
    if env_sh is None and cluster.get("executor") == "slurm" and (REPO_ROOT / "slurm" / "env.sh").is_file():
        env_sh = str(REPO_ROOT / "slurm" / "env.sh")
    if env_sh:
        lines.append(f". {shlex.quote(str(env_sh))}")  # POSIX: local jobs run under /bin/sh
    # jobs import stage modules from the checkout even when it is not pip-installed
    lines.append(f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines += [str(x) for x in cluster.get("setup") or []]
    lines += [str(x) for x in resources.get("setup") or []]
    return lines


def slurm_parameters(
    stage: PlannedStage, cluster: dict[str, Any], dependency: str | None, run_id: str
) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch flags) for one stage."""
    r = stage.resources
    params: dict[str, Any] = {
        "job_name": f"cs-{stage.name}",
        "comment": f"clinsynth:{run_id}:{stage.name}/{stage.stage_id}",  # no spaces: shows in squeue -o %k
        "time": int(r.get("time_min", 60)),
        "nodes": int(r.get("nodes", 1)),
        "ntasks_per_node": int(r.get("tasks_per_node", 1)),
        "cpus_per_task": int(r.get("cpus_per_task", 1)),
        "mem": f"{r['mem_gb']}GB" if r.get("mem_gb") else None,
        "partition": r.get("partition") or cluster.get("partition"),
        "account": r.get("account") or cluster.get("account"),
        "qos": r.get("qos") or cluster.get("qos"),
        "constraint": r.get("constraint"),
        "signal_delay_s": int(cluster.get("signal_delay_s", 120)),
        "array_parallelism": int(r.get("array_parallelism", 64)),
        "use_srun": bool(cluster.get("use_srun", True)),
        "setup": setup_lines(cluster, r),
    }
    if stage.ranks > 1 and params["use_srun"]:
        # one rank that dies (a port in use, OOM) ends the job instead of leaving the others
        # waiting in a collective until the time limit
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if int(r.get("gpus_per_node", 0) or 0) > 0:
        params["gpus_per_node"] = int(r["gpus_per_node"])
    if r.get("exclusive"):
        params["exclusive"] = True
    if dependency:
        params["dependency"] = dependency
    extra: dict[str, Any] = {}
    if cluster.get("kill_on_invalid_dep", True):
        extra["kill_on_invalid_dep"] = "yes"
    extra.update({str(k).replace("-", "_"): v for k, v in (r.get("sbatch") or {}).items()})
    if extra:
        params["additional_parameters"] = extra
    return {k: v for k, v in params.items() if v is not None}


def sbatch_script(
    stage: PlannedStage, cluster: dict[str, Any], dependency: str | None, run_id: str, n_tasks: int
) -> str:
    """The sbatch file submitit writes when this stage's `n_tasks` tasks are submitted (dry runs).

    Built the way `submitit.SlurmExecutor` builds it: this interpreter, the stage's logs folder
    (absolute), and `--array` only when more than one task goes in one batch.
    """
    folder = Path(stage.folder.logs).expanduser().absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(
        command=command,
        folder=folder,
        map_count=n_tasks if stage.shards > 1 and n_tasks > 1 else None,
        **slurm_parameters(stage, cluster, dependency, run_id),
    )


def make_executor(
    stage: PlannedStage, cluster: dict[str, Any], dependency: str | None, run_id: str
) -> submitit.Executor:
    kind = cluster.get("executor")
    folder: Path = stage.folder.logs
    r = stage.resources
    if kind == "slurm":
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise PlanError(
                "cluster=slurm but sbatch/srun are not on PATH: run on a Slurm login node, "
                "or use cluster=local (dry_run=true shows the sbatch files without Slurm)"
            )
        # time-limit warnings a job may answer with a requeue before submitit calls it failed
        slurm = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(cluster["max_num_timeout"]))
        slurm.update_parameters(**slurm_parameters(stage, cluster, dependency, run_id))
        return slurm
    if kind == "local":
        ex = submitit.LocalExecutor(folder=folder)
        # one machine: all ranks of a multi-node stage become local processes
        ex.update_parameters(
            timeout_min=float(r.get("time_min", 60)),
            tasks_per_node=stage.ranks,
            gpus_per_node=int(r.get("gpus_per_node", 0) or 0) * int(r.get("nodes", 1)),
            setup=setup_lines(cluster, r),
        )
        return ex
    if kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise PlanError(f"cluster.executor must be one of {EXECUTORS}, got {kind!r}")


def world_size(stage: PlannedStage, kind: str) -> int:
    """Ranks the stage gets on this executor: debug runs every stage as a single rank."""
    return 1 if kind == "debug" else stage.ranks
