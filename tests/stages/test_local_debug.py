"""The toy pipeline on the local and debug executors: same outputs, resume, failures."""

from __future__ import annotations

import pytest

from clinsynth.core.atomic import read_json
from launchers.status import run_status
from launchers.submit import LaunchError, launch
from tests.helpers import toy_outputs, toy_overrides

pytest.importorskip("torch", reason="the 2-rank reducer uses torch.distributed (pip install -e .[train])")


def test_local_and_debug_give_the_same_outputs(tmp_path):
    local = launch(toy_overrides(tmp_path / "local", "local"))
    debug = launch(toy_overrides(tmp_path / "debug", "debug"))
    assert local.run_dir.name == debug.run_dir.name  # the executor is not part of the identity
    rows_l, summary_l = toy_outputs(local)
    rows_d, summary_d = toy_outputs(debug)
    assert rows_l == rows_d
    assert (
        summary_l
        == summary_d
        == {"sum": float(sum(i * i for i in range(40))), "count": 40, "unique_items": 40}
    )
    # local ran the reducer as 2 ranks, debug as 1
    rec_l = local.plan.stage("toy_sum").folder.task_records()
    rec_d = debug.plan.stage("toy_sum").folder.task_records()
    assert sorted(rec_l) == [0, 1] and {r["world_size"] for r in rec_l.values()} == {2}
    assert sorted(rec_d) == [0] and rec_d[0]["world_size"] == 1
    # progress: one file per array shard, one for the 2-rank job (rank 0's), and a line in the log
    rows_dir, sum_dir = (local.plan.stage(s).folder.path for s in ("toy_rows", "toy_sum"))
    progress = {p.name: read_json(p) for p in sorted((rows_dir / "progress").iterdir())}
    assert list(progress) == [f"{u:05d}.json" for u in range(4)]
    assert {(p["done"], p["total"], p["unit"]) for p in progress.values()} == {(10, 10, "items")}
    assert [p.name for p in (sum_dir / "progress").iterdir()] == ["00000.json"]
    assert read_json(sum_dir / "progress" / "00000.json")["done"] == 20
    logs = "".join(p.read_text(errors="replace") for p in rows_dir.joinpath("logs").rglob("*") if p.is_file())
    assert logs.count("toy_rows: 10/10 items (100%)") == 4


def test_relaunch_submits_nothing(tmp_path):
    first = launch(toy_overrides(tmp_path, "local"))
    assert first.submitted == {"toy_rows": [0, 1, 2, 3], "toy_sum": [0, 1]}
    again = launch(toy_overrides(tmp_path, "local"))
    assert again.submitted == {}
    assert [a.status for a in again.actions] == ["done", "done"]
    assert [s.state for s in run_status(again.run_dir)] == ["done", "done"]


def test_failed_shard_is_reported_and_only_it_reruns(tmp_path):
    flag = tmp_path / "fail-now"
    flag.touch()
    overrides = toy_overrides(
        tmp_path, "local", extra=["+toy.fail_shards=[2]", f"+toy.fail_while_exists={flag}"]
    )
    with pytest.raises(LaunchError, match=r"toy_rows(.|\n)*unit 2(.|\n)*planted failure in shard 2"):
        launch(overrides)
    # the launch stopped before the reducer; status names the failed unit from the folders alone
    run_dir = next((tmp_path / "toy").iterdir())
    states = {s.stage: s for s in run_status(run_dir)}
    assert states["toy_rows"].state == "failed"
    assert states["toy_rows"].complete == [0, 1, 3]
    assert "planted failure" in states["toy_rows"].failed[2]["error"]
    assert "toy_sum" not in states  # never reached
    flag.unlink()  # the cause goes away: a relaunch reruns shard 2 only, then the reducer
    again = launch(overrides)
    assert again.submitted == {"toy_rows": [2], "toy_sum": [0, 1]}
    rows, _summary = toy_outputs(again)
    assert [r["item"] for r in rows] == list(range(40))


def test_lost_shard_is_rerun_alone(tmp_path):
    first = launch(toy_overrides(tmp_path, "local"))
    rows_before, summary_before = toy_outputs(first)
    folder = first.plan.stage("toy_rows").folder
    # simulate a shard whose task died before completing: no completion, no DONE, no output
    (folder.completions / "00002").unlink()
    folder.done_marker.unlink()
    (folder.path / "rows" / "shard-00002.jsonl").unlink()
    downstream = first.plan.stage("toy_sum").folder
    again = launch(toy_overrides(tmp_path, "local"))
    # only the lost shard runs; the reducer is already done for this stage id
    assert again.submitted == {"toy_rows": [2]}
    assert folder.is_done() and downstream.is_done()
    rows_after, summary_after = toy_outputs(again)
    assert rows_after == rows_before and summary_after == summary_before
