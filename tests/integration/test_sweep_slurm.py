"""A LoRA-rank sweep on the real test Slurm cluster (slurm/up.sh), the way the README runs it:
`python -m launch -m ... train.lora.r=4,8 cluster=slurm wait=true` (launchers.cli in-process).

Both points run; cohort .. dataset are one set of stage folders, submitted once, linked from both runs;
only train differs. The same command again submits nothing. The agent's path: under the variables
`wandb agent` sets (offline W&B here), a point's launch reports its metrics to the sweep's run.
`summary` over the experiment folder prints both points and writes the PNG. sweeps/wandb_agent.sbatch
runs as a Slurm array with a stand-in `wandb` that records what the agent would get.
Tiny model, 2 steps, 6 patients: the cost is mostly Slurm's job starts.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from launchers.cli import main as cli
from launchers.results import main as summary
from tests.helpers import TINY_TRAIN
from tests.unit.test_results import offline_sweep_run, sweep_env

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = ("cohort", "ingest", "sample", "generate", "verify", "dataset")
TINY = [
    *TINY_TRAIN,
    "compare=null",  # smoke's one-shot/rules variants: not part of a rank sweep
    "train.max_steps=2",
    "train.save_steps=2",
    "cluster=slurm",
    "wait=true",
]


def _submissions(runs: Path) -> dict[str, int]:
    """Stage folder -> submissions recorded in its jobs.jsonl (one line per sbatch)."""
    return {
        str(p.parent.relative_to(runs)): len(p.read_text().splitlines())
        for p in sorted((runs / "stages").glob("*/*/jobs.jsonl"))
    }


def test_lora_rank_sweep_shares_upstream_resubmits_nothing_and_summarizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    command = ["-m", *TINY, f"paths.runs={runs}", "train.lora.r=4,8"]
    assert cli(command) == 0, capsys.readouterr()
    capsys.readouterr()
    points = sorted((runs / "smoke").iterdir())
    assert len(points) == 2
    by_r = {int(yaml.safe_load((p / "delta.yaml").read_text())["train.lora.r"]): p for p in points}
    assert set(by_r) == {4, 8}
    for stage in UPSTREAM:  # one stage folder for both points
        assert (by_r[4] / "stages" / stage).resolve() == (by_r[8] / "stages" / stage).resolve(), stage
    trains = [(by_r[r] / "stages" / "train").resolve() for r in (4, 8)]
    assert trains[0] != trains[1] and all((t / "DONE").exists() for t in trains)
    jobs = _submissions(runs)
    assert len(jobs) == len(UPSTREAM) + 2 and set(jobs.values()) == {1}  # each stage submitted once

    assert cli(command) == 0  # the same sweep again: every stage is done
    assert _submissions(runs) == jobs

    # the agent's path for point r=8: nothing to run, its metrics go to the sweep's run
    wandb_dir = sweep_env(monkeypatch, tmp_path, "point8", {"train.lora.r": 8})
    assert cli([*TINY, f"paths.runs={runs}", "train.lora.r=8"]) == 0
    assert _submissions(runs) == jobs
    run, values = offline_sweep_run(wandb_dir, "point8")
    assert run.sweep_id == "sweep01" and values["train/steps"] == 2
    assert values["train/final_loss"] > 0 and values["clinsynth/stages_done"] == len(UPSTREAM) + 1

    capsys.readouterr()
    assert summary([str(runs / "smoke")]) == 0
    out = capsys.readouterr().out
    assert "train.lora.r" in out and all(f"smoke/{p.name}" in out for p in points)
    with open(runs / "smoke" / "summary.csv", newline="") as fh:
        rows = {r["train.lora.r"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"4", "8"} and all(float(r["train/final_loss"]) > 0 for r in rows.values())
    assert (runs / "smoke" / "summary.png").read_bytes().startswith(b"\x89PNG")


def test_agent_sbatch_runs_one_agent_per_array_task(tmp_path: Path) -> None:
    """The script under sbatch --array, with a stand-in `wandb` (the real agent needs W&B's server)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "agents"
    record.mkdir()
    (fake / "wandb").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$PWD" "$CLINSYNTH_RUNS" "$HF_HUB_OFFLINE" "$*" '
        f"> {record}/task-$SLURM_ARRAY_TASK_ID\n"
    )
    (fake / "wandb").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CLINSYNTH_RUNS": str(tmp_path / "runs")}
    out = subprocess.run(
        ["sbatch", "--wait", "--array=0-1", f"--output={tmp_path}/agent-%A_%a.out",
         "sweeps/wandb_agent.sbatch", "team/clinsynth/abc123"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + "".join(p.read_text() for p in tmp_path.glob("agent-*.out"))
    for task in (0, 1):
        lines = (record / f"task-{task}").read_text().splitlines()
        assert lines == [str(REPO), str(tmp_path / "runs"), "1", "agent --count 1 team/clinsynth/abc123"]
    assert "array task 1" in "".join(p.read_text() for p in tmp_path.glob("agent-*_1.out"))
