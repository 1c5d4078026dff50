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
    out = run("+experiment=smoke", "cluster=debug", "cohort.patients=20", f"paths.runs={tmp_path}")
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
