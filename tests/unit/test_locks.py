"""Two identical launches at the same moment never run a stage twice (issue 9, point 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clinsynth.core.atomic import read_jsonl
from tests.helpers import toy_outputs, toy_overrides

REPO = Path(__file__).resolve().parents[2]


def test_concurrent_identical_launches_run_each_stage_once(tmp_path):
    runs = tmp_path / "runs"
    # one rank for the reducer: this test is about locking, not torch.distributed
    args = toy_overrides(runs, "local", n_items=12, shards=2, nodes=1, sleep_s=0.2)
    procs = [
        subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("waiting: another launch holds stage" in err for _, err in outs) == 1, outs
    for stage in ("toy_rows", "toy_sum"):
        (folder,) = [p for p in (runs / "stages" / stage).iterdir() if p.is_dir()]
        submissions = list(read_jsonl(folder / "jobs.jsonl"))
        units = sorted(u for s in submissions for u in s["units"])
        assert units == sorted(set(units)), f"{stage}: a unit was run by both launches: {submissions}"
        assert (folder / "DONE").exists()
    from launchers.submit import launch

    again = launch(args)  # and the result is whole
    rows, summary = toy_outputs(again)
    assert [r["item"] for r in rows] == list(range(12)) and summary["count"] == 12
