"""dry_run=true prints the exact sbatch parameters and touches nothing."""

from __future__ import annotations

import io
import re

from rich.console import Console

from launchers.submit import launch
from tests.helpers import toy_overrides


def _dry(overrides):
    buf = io.StringIO()
    result = launch(overrides, console=Console(file=buf, width=200))
    return result, buf.getvalue()


def sbatch_flags(text: str) -> dict[str, str]:
    return {m.group(1): m.group(3) or "" for m in re.finditer(r"^#SBATCH --([\w-]+)(=(\S+))?$", text, re.M)}


def test_multinode_gpu_stage_sbatch_parameters(tmp_path):
    result, out = _dry(
        [
            "+experiment=doctor",
            "cluster=slurm",
            "cluster.account=proj42",
            "resources/doctor=gpu_2x8",
            "doctor.backend=nccl",
            "dry_run=true",
            f"paths.runs={tmp_path / 'runs'}",
        ]
    )
    flags = sbatch_flags(out)
    logs = result.plan.stage("doctor").folder.logs
    assert flags == {
        "account": "proj42",
        "comment": f"clinsynth:{result.plan.run_id}:doctor/{result.plan.stage('doctor').stage_id}",
        "cpus-per-task": "8",
        "error": f"{logs}/%j_0_log.err",
        "exclusive": "",
        "gpus-per-node": "8",
        "job-name": "cs-doctor",
        "kill-on-invalid-dep": "yes",
        "mem": "400GB",
        "nodes": "2",
        "ntasks-per-node": "8",
        "open-mode": "append",
        "output": f"{logs}/%j_0_log.out",
        "partition": "gpu",
        "signal": "USR2@120",
        "time": "15",
        "wckey": "submitit",
    }
    assert "srun --unbuffered --output" in out
    assert "slurm/env.sh" in out  # every job sources the site environment
    assert result.actions[0].status == "planned" and result.actions[0].n_units == 16
    assert not (tmp_path / "runs").exists(), "a dry run must not create folders"


def test_array_and_dependency_in_dry_run(tmp_path):
    result, out = _dry(toy_overrides(tmp_path / "runs", "slurm", shards=4, nodes=2) + ["dry_run=true"])
    scripts = out.split("sbatch for ")[1:]
    assert len(scripts) == 2
    rows, red = sbatch_flags(scripts[0]), sbatch_flags(scripts[1])
    assert rows["array"] == "0-3%4" and "dependency" not in rows
    assert red["nodes"] == "2" and red["dependency"] == "'afterok:<toy_rows>'" and "array" not in red
    assert result.submitted == {}
    assert not (tmp_path / "runs").exists()


def test_dry_run_sbatch_is_the_file_submitit_writes(tmp_path):
    """Same text as submitit's own SlurmExecutor (real interpreter and paths), for an array and a job."""
    import shutil
    import sys

    import pytest

    from launchers.executors import make_executor

    result, out = _dry(toy_overrides(tmp_path / "runs", "slurm", shards=4, nodes=2) + ["dry_run=true"])
    assert "<python>" not in out and "<stage>" not in out
    assert f"{sys.executable} -u -m submitit.core._submit" in out
    rows, red = result.action("toy_rows"), result.action("toy_sum")
    assert rows.sbatch and rows.sbatch in out and red.sbatch and red.sbatch in out
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        pytest.skip("submitit's SlurmExecutor needs srun/sbatch on PATH to be built")
    cluster = result.plan.plain["cluster"]
    for action, dep, n in ((rows, None, 4), (red, "afterok:<toy_rows>", 1)):
        ex = make_executor(result.plan.stage(action.stage), cluster, dep, result.plan.run_id)
        if n > 1:
            ex.parameters["map_count"] = n  # what submitit's batch() does for an array
        assert ex._make_submission_file_text(ex._submitit_command_str, "uid") == action.sbatch


def test_dry_run_prints_each_task_config_redacted_and_unwrapped(tmp_path):
    import yaml

    from launchers.summary import console_for

    overrides = toy_overrides(tmp_path / "runs", "slurm", extra=["+toy.api_token=s3cret", "dry_run=true"])
    buf = io.StringIO()
    result = launch(overrides, console=console_for(buf))
    out = buf.getvalue()
    assert "s3cret" not in out and "***redacted***" in out
    config = out.split("--- config for toy_rows (what its task receives; secrets redacted) ---\n")[1]
    config = config.split("\n---")[0]
    assert yaml.safe_load(config)["toy"]["n_items"] == result.plan.stage("toy_rows").config["toy"]["n_items"]
    assert out.index("--- sbatch for toy_rows") < out.index("--- config for toy_rows")
    # a narrow terminal width does not wrap the sbatch lines either
    narrow = io.StringIO()
    launch(overrides, console=Console(file=narrow, width=40))
    logs = str(result.plan.stage("toy_rows").folder.logs)
    assert f"#SBATCH --output={logs}/%A_%a_0_log.out" in narrow.getvalue().splitlines()
    assert not (tmp_path / "runs").exists()
