"""Turn a stage's resources into a submitit executor (local, debug or Slurm).

Local jobs run through `LocalExecutor`, submitit's with two changes: each job's processes
(its shell, the controller, the tasks and whatever they start) form their own session and
process group, so a Ctrl-C at the terminal reaches only the launcher, which then stops its
tasks in order (SIGTERM, a grace period, SIGKILL to the group); and the controller writes
the exit code of every task to `logs/<job id>_exit.json`, so a task killed by a signal
(kill -9, the OOM killer) is reported as such. `python -m launchers.executors FOLDER` is
that controller.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import submitit
from submitit.local import local as submitit_local

from launchers.provenance import REPO_ROOT

if TYPE_CHECKING:  # the controller (`python -m launchers.executors`) imports this module: keep it light
    from launchers.plan import PlannedStage

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
    from submitit.slurm.slurm import _make_sbatch_string

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
    from launchers.plan import PlanError

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
        ex = LocalExecutor(folder=folder)
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


# ---- local jobs: own process group, exit codes recorded

#: the file where the controller of local job JOB writes its tasks' exit codes
EXIT_FILE = "{job_id}_exit.json"


def exit_file(logs: Path, job_id: str) -> Path:
    return Path(logs) / EXIT_FILE.format(job_id=job_id)


def read_exit_codes(logs: Path, job_id: str, since: float | None = None) -> list[int | None] | None:
    """The exit codes the controller of local job `job_id` saw (a negative code: killed by that
    signal; None: still running when the controller gave up), or None when it wrote none
    (or, with `since`, none after that time: a requeued job's tasks start again)."""
    try:
        data = orjson.loads(exit_file(logs, job_id).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (since is not None and float(data.get("time") or 0) < since):
        return None
    codes = data.get("exit_codes")
    return [c if isinstance(c, int) else None for c in codes] if isinstance(codes, list) else None


class LocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor; each job in its own session, run by `RecordingController`."""

    def _submit_command(self, command: str) -> submitit_local.LocalJob[Any]:
        ntasks = self.parameters.get("tasks_per_node", 1)
        n_gpus = self.parameters.get("gpus_per_node", 0)
        visible_gpus = self.parameters.get("visible_gpus", ())
        gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
        process = start_controller(
            folder=self.folder,
            command=command,
            tasks_per_node=ntasks,
            cuda_devices=",".join(str(k) for k in gpus),
            timeout_min=self.parameters.get("timeout_min", 2.0),
            signal_delay_s=self.parameters.get("signal_delay_s", 30),
            stderr_to_stdout=self.parameters.get("stderr_to_stdout", False),
            setup=self.parameters.get("setup", ()),
        )
        return submitit_local.LocalJob(
            folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks))
        )


def start_controller(
    folder: Path,
    command: str,
    tasks_per_node: int = 1,
    cuda_devices: str = "",
    timeout_min: float = 5.0,
    signal_delay_s: int = 30,
    stderr_to_stdout: bool = False,
    setup: Sequence[str] = (),
) -> Any:
    """`submitit.local.local.start_controller` (submitit 1.5), in a new session, with our controller.

    The environment is the contract between this function and submitit's Controller and
    JobEnvironment; it is submitit's, unchanged.
    """
    import subprocess

    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node),
        SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "",
        SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices,
        SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    proc_cmd: Any = [sys.executable, "-m", "launchers.executors", str(folder)]
    if setup:
        proc_cmd = " && ".join([*setup, shlex.join(proc_cmd)])
    else:  # the controller imports this module from the checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    # start_new_session: the job is its own process group (pgid = this pid), out of the
    # terminal's reach; the launcher signals it as a whole
    return subprocess.Popen(proc_cmd, shell=bool(setup), env=env, start_new_session=True)


class RecordingController(submitit_local.Controller):
    """submitit's local controller, writing its tasks' exit codes to `<folder>/<job id>_exit.json`
    (atomically) each time they have all ended."""

    def wait(self, freq: int = 24) -> Sequence[int | None]:
        codes = list(super().wait(freq))
        path = exit_file(self.folder, self.pid)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_bytes(orjson.dumps({"job_id": self.pid, "exit_codes": codes, "time": time.time()}))
            os.replace(tmp, path)
        except OSError:  # a full or read-only disk: the codes are lost, the job goes on
            pass
        return codes


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m launchers.executors SUBMITIT_FOLDER (the local job controller)")
    RecordingController(Path(sys.argv[1])).run()
