"""The command line as a user runs it: real subprocesses, W&B offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=cwd, capture_output=True, text=True)


def test_smoke_runs_tracks_offline_and_reports_status(tmp_path):
    out = run("+experiment=smoke",
        "pipeline=[verify]", "cluster=debug", "cohort.patients=20", f"paths.runs={tmp_path}")
    assert out.returncode == 0, out.stderr
    run_dir = next((tmp_path / "smoke").iterdir())
    run_id = run_dir.name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["pipeline"] == ["verify"]
    stages = ["cohort", "generate", "ingest", "sample", "verify"]
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == stages
    stage_dir = (run_dir / "stages" / "ingest").resolve()
    assert (stage_dir / "DONE").exists() and (stage_dir / "ingest_report.json").exists()
    # W&B offline run with the deterministic id <run_id>-<stage>, grouped by run id
    offline = list((stage_dir / "wandb").rglob(f"offline-run-*-{run_id}-ingest"))
    assert offline, f"no offline W&B run named {run_id}-ingest under {stage_dir / 'wandb'}"
    assert list((stage_dir.parent.parent / "cohort").rglob(f"offline-run-*-{run_id}-cohort-00001"))
    assert list((stage_dir.parent.parent / "generate").rglob(f"offline-run-*-{run_id}-generate-00001"))
    status = run("status", str(run_dir))
    assert status.returncode == 0 and all(s in status.stdout for s in stages) and "done" in status.stdout


def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path):
    for args, expect in [
        (["+experiment=does_not_exist"], "experiment"),
        (["pipeline=[nope]"], "unknown stage 'nope'"),
        (["+experiment=smoke", "cluster=moon"], "cluster"),
        (["+experiment=smoke", "stage_modules=[no.such.module]"], "no.such.module"),
        (["+experiment=smoke", "source=bundles"], "source.path"),  # a mandatory ??? left unset
    ]:
        out = run(*args, f"paths.runs={tmp_path}")
        assert out.returncode == 1, (args, out.stderr)
        assert expect in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


def test_runs_from_outside_the_checkout(tmp_path):
    out = run("+experiment=doctor", "cluster=debug", "tracking=disabled", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "runs" / "doctor").iterdir())  # runs/ is relative to where you launch


def test_results_go_to_stdout_unwrapped_and_progress_to_stderr(tmp_path):
    """`python -m launch ... | cat`: the summary table and paths whole on stdout, bars on stderr."""
    import os

    from tests.helpers import toy_overrides

    runs = tmp_path / ("deep-" * 20) / "runs"
    env = {**os.environ, "COLUMNS": "40"}
    out = subprocess.run(
        [sys.executable, "-m", "launch", *toy_overrides(runs, "local", n_items=8, shards=2, nodes=1)],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for stage in ("toy_rows", "toy_sum"):
        folder = next((runs / "stages" / stage).iterdir())
        assert any(ln.split() == [stage, f"{folder}/"] for ln in lines), out.stdout  # one whole line
        assert any(ln.startswith("│ " + stage) and " ran " in ln for ln in lines), out.stdout
    assert "run folder: " + str(next((runs / "toy").iterdir())) in lines
    assert "2/2" in out.stderr and "2/2" not in out.stdout  # progress bars on stderr
    assert "┏" not in out.stderr and "run folder" not in out.stderr  # results on stdout


def _fake_slurm(tmp_path: Path, fail_at: int) -> dict[str, str]:
    """sbatch that accepts `fail_at - 1` submissions and then fails; scancel that records its args."""
    import os

    bin_dir, state = tmp_path / "bin", tmp_path / "slurm-state"
    bin_dir.mkdir(parents=True)
    state.mkdir(parents=True)
    scripts = {
        "sbatch": f"""n=$(cat {state}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {state}/count
if [ $n -ge {fail_at} ]; then
  echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination" >&2
  exit 1
fi
echo "Submitted batch job $((100+n))\"""",
        "scancel": f'echo "$@" >> {state}/scancel',
        "squeue": "exit 0",
        "srun": "exit 0",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_failed_sbatch_leaves_no_run_folder_and_prints_its_error_once(tmp_path):
    from tests.helpers import toy_overrides

    runs = tmp_path / "runs"
    env = _fake_slurm(tmp_path, fail_at=1)
    out = subprocess.run(
        [sys.executable, "-m", "launch", *toy_overrides(runs, "slurm")],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("Invalid account or account/partition combination") == 1, out.stderr
    assert "submitting stage toy_rows failed" in out.stderr and "Traceback" not in out.stderr
    assert not runs.exists()


def test_failed_sbatch_cancels_what_this_launch_submitted_and_keeps_the_rest(tmp_path, monkeypatch, capfd):
    import pytest

    from clinsynth.core.atomic import read_json
    from launchers.submit import LaunchError, launch
    from tests.helpers import toy_overrides

    runs = tmp_path / "runs"
    # an earlier run left toy_rows done (debug executor, in this process)
    earlier = launch(toy_overrides(runs, "debug", extra=["pipeline=[toy_rows]"]))
    rows = earlier.plan.stage("toy_rows").folder
    meta_before = (rows.path / "meta.json").read_bytes()
    capfd.readouterr()

    # toy_rows is done; the reducer's submission fails: nothing new stays, toy_rows is untouched
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path, fail_at=1)["PATH"])
    with pytest.raises(LaunchError, match="submitting stage toy_sum failed: sbatch: error"):
        launch(toy_overrides(runs, "slurm"))
    assert rows.is_done() and (rows.path / "meta.json").read_bytes() == meta_before
    assert not (runs / "stages" / "toy_sum").exists()
    assert [p.name for p in (runs / "toy").iterdir()] == [earlier.run_dir.name]
    assert "Invalid account" not in capfd.readouterr().err  # said once: in the error, not by submitit

    # a fresh run: the array goes in, the reducer fails -> the array is cancelled and removed
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "second", fail_at=2)["PATH"])
    with pytest.raises(LaunchError, match="toy_sum"):
        launch(toy_overrides(fresh, "slurm"))
    cancelled = (tmp_path / "second" / "slurm-state" / "scancel").read_text().split()
    assert cancelled == ["101_0", "101_1", "101_2", "101_3"]
    assert not fresh.exists()
    assert read_json(rows.path / "meta.json")["runs"] == [earlier.plan.run_id]
