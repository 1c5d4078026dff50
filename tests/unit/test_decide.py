"""The launcher's decisions as one pure function of (plan, folder state, live jobs): no Slurm, no disk."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from launchers.decide import (
    Decision,
    FolderState,
    Observation,
    decide,
    dependency,
    observe,
    placement,
    reuse_of,
)
from launchers.folders import stage_folder
from launchers.plan import Plan, PlannedStage
from launchers.states import StageState
from launchers.submit import launch
from tests.helpers import toy_overrides

RUNS = Path("/nonexistent/runs")  # decide never looks at disk: nothing here exists
RES = {"mem_gb": 1, "tasks_per_node": 1}


def _stage(name: str, needs: tuple[str, ...] = (), shards: int = 1, nodes: int = 1) -> PlannedStage:
    sid = f"{name}-id"
    return PlannedStage(
        name=name,
        spec=None,  # type: ignore[arg-type]  # decide reads names, needs and resources only
        stage_id=sid,
        needs=needs,
        config={},
        resources={**RES, "shards": shards, "nodes": nodes},
        folder=stage_folder(RUNS, name, sid),
    )


def toy_plan(shards: int = 4, nodes: int = 2) -> Plan:
    """An array stage (toy_rows, `shards` tasks) feeding a multi-rank stage (toy_sum, `nodes` ranks)."""
    stages = [_stage("toy_rows", shards=shards), _stage("toy_sum", ("toy_rows",), nodes=nodes)]
    return Plan("toy", "run1", RUNS, RUNS / "toy" / "run1", {}, {}, stages)


def by_stage(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.stage: d for d in decisions}


def folder(*completed: int, done: bool = False, producers: tuple = ()) -> FolderState:
    return FolderState(True, done, frozenset(completed), producers)


def test_fresh_plan_submits_every_unit():
    d = by_stage(decide(toy_plan(), Observation(), "slurm"))
    assert d["toy_rows"].state is StageState.PLANNED and d["toy_rows"].units == (0, 1, 2, 3)
    assert d["toy_sum"].state is StageState.PLANNED and d["toy_sum"].units == (0, 1)  # 2 ranks, one job
    assert not d["toy_rows"].cancel and not d["toy_sum"].live_ids
    # the child waits on whatever this launch submits for its parent
    assert dependency(d["toy_sum"], d, {"toy_rows": ["41"]}) == "afterok:41"
    assert dependency(d["toy_rows"], d, {}) is None
    # debug runs every stage as one rank
    dbg = by_stage(decide(toy_plan(), Observation(), "debug"))
    assert dbg["toy_sum"].n_units == 1 and dbg["toy_sum"].units == (0,)


def test_all_done_submits_nothing_and_says_where_from():
    producer = {
        "run_id": "run0",
        "experiment": "toy",
        "executor": "slurm",
        "resources": {**RES, "shards": 4, "nodes": 1},
    }
    seen = Observation(
        {"toy_rows": folder(done=True, producers=(producer,)), "toy_sum": folder(0, 1, done=True)}
    )
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    assert [x.state for x in d.values()] == [StageState.DONE, StageState.DONE]
    assert all(not x.units and not x.mark_done for x in d.values())
    reuse = d["toy_rows"].reuse
    assert reuse is not None and reuse.runs == ("toy/run0",) and not reuse.this_run
    assert reuse.differences == ()  # same executor, same resources
    # every unit complete but no DONE marker yet (the last task died before writing it)
    d = by_stage(decide(toy_plan(), Observation({"toy_rows": folder(0, 1, 2, 3)}), "slurm"))
    assert d["toy_rows"].state is StageState.DONE and d["toy_rows"].mark_done


def test_some_shards_missing_only_they_run():
    seen = Observation({"toy_rows": folder(0, 1, 3), "toy_sum": folder()})
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    assert d["toy_rows"].units == (2,) and d["toy_rows"].missing == (2,)
    assert d["toy_sum"].units == (0, 1)


def test_live_shards_are_not_submitted_again_and_children_wait_on_them():
    seen = Observation({"toy_rows": folder(0)}, live={"toy_rows": {1: "7_1", 2: "7_2"}})
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    rows = d["toy_rows"]
    assert rows.state is StageState.PLANNED and rows.units == (3,)
    assert rows.live_units == (1, 2) and rows.live_ids == ("7_1", "7_2") and not rows.cancel
    assert dependency(d["toy_sum"], d, {"toy_rows": ["9"]}) == "afterok:7_1:7_2:9"
    # every missing shard live: nothing to submit, the stage is running
    seen = Observation({"toy_rows": folder(0)}, live={"toy_rows": {1: "7_1", 2: "7_2", 3: "7_3"}})
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    assert d["toy_rows"].state is StageState.RUNNING and d["toy_rows"].units == ()
    assert d["toy_sum"].state is StageState.PLANNED
    assert dependency(d["toy_sum"], d, {}) == "afterok:7_1:7_2:7_3"


def test_a_parent_being_resubmitted_cancels_live_children():
    seen = Observation(
        {"toy_rows": folder(0, 1, 3), "toy_sum": folder()},
        live={"toy_sum": {0: "8", 1: "8"}},  # waits (afterok) on a rows job that died
    )
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    assert d["toy_rows"].units == (2,)
    child = d["toy_sum"]
    assert child.cancel == ("8",) and child.live_ids == () and child.units == (0, 1)
    assert dependency(child, d, {"toy_rows": ["12"]}) == "afterok:12"  # not on the cancelled job
    # a parent that only runs (nothing resubmitted) leaves the live child alone
    seen = Observation(
        {"toy_rows": folder(0, 1, 3), "toy_sum": folder()},
        live={"toy_rows": {2: "7_2"}, "toy_sum": {0: "8", 1: "8"}},
    )
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    assert d["toy_rows"].state is StageState.RUNNING
    assert d["toy_sum"].state is StageState.RUNNING and not d["toy_sum"].cancel


def test_multi_rank_stage_partially_complete_reruns_all_ranks_without_clearing():
    seen = Observation({"toy_rows": folder(done=True), "toy_sum": folder(0)})
    d = by_stage(decide(toy_plan(), seen, "slurm"))
    s = d["toy_sum"]
    # the ranks of one job run together; rank 0's completion stays (run_task skips its work)
    assert s.state is StageState.PLANNED and s.units == (0, 1) and s.missing == (1,)
    import launchers.submit as submit

    source = Path(submit.__file__).read_text()
    assert "clear_completions" not in source  # a rerun never wipes completed ranks


def test_in_process_executors_do_not_run_on_top_of_another_launch():
    seen = Observation({"toy_rows": folder(0)}, live={"toy_rows": {1: "555", 2: "556", 3: "557"}})
    d = by_stage(decide(toy_plan(), seen, "local"))
    assert d["toy_rows"].state is StageState.RUNNING
    assert d["toy_sum"].state is StageState.BLOCKED and "toy_rows" in d["toy_sum"].reason


def test_reuse_names_other_executor_and_resources():
    producers = (
        {"run_id": "r0", "experiment": "smoke", "executor": "slurm", "resources": {**RES, "mem_gb": 4}},
        {"run_id": "r1", "experiment": "smoke", "executor": "local", "resources": dict(RES)},
    )
    reuse = reuse_of(folder(done=True, producers=producers), "r2", "local", RES)
    assert reuse.runs == ("smoke/r0", "smoke/r1") and not reuse.this_run
    assert reuse.differences == ("ran on slurm (this launch: local)", "mem_gb: 4 (this launch: 1)")
    same = reuse_of(folder(done=True, producers=producers[1:]), "r1", "local", RES)
    assert same.this_run and same.differences == ()
    assert reuse_of(folder(done=True), "r1", "local", RES).runs == ()  # made before producers were recorded


def test_placement_names_the_slurm_partition_and_account_and_hides_secrets():
    st = _stage("toy_rows", shards=4)
    st.resources.update(partition=None, account="proj", sbatch={"api_token": "x"})
    plain = {"cluster": {"partition": "gpu", "account": "other", "executor": "slurm"}}
    slurm = placement(st, plain, "slurm")
    assert slurm["partition"] == "gpu" and slurm["account"] == "proj"  # the stage's own account wins
    assert slurm["sbatch"] == {"api_token": "***redacted***"}
    assert placement(st, plain, "local")["partition"] is None  # no Slurm, no partition
    # produced on partition gpu, reused from partition cpu: said
    done = folder(done=True, producers=({"run_id": "r0", "executor": "slurm", "resources": slurm},))
    plain["cluster"]["partition"] = "cpu"
    notes = reuse_of(done, "r1", "slurm", placement(st, plain, "slurm")).differences
    assert notes == ("partition: 'gpu' (this launch: 'cpu')",)


def test_decide_is_pure():
    seen = Observation({"toy_rows": folder(0, 2)}, live={"toy_rows": {1: "3_1"}})
    assert decide(toy_plan(), seen, "slurm") == decide(toy_plan(), seen, "slurm")
    assert not RUNS.exists()


def test_dry_run_shows_the_decisions_a_launch_would_carry_out(tmp_path):
    overrides = toy_overrides(tmp_path / "runs", "slurm") + ["dry_run=true"]
    result = launch(overrides, console=Console(file=io.StringIO()))
    expected = decide(result.plan, observe(result.plan, "slurm"), "slurm")
    assert [(a.stage, a.status, tuple(a.units)) for a in result.actions] == [
        (d.stage, d.state, d.units) for d in expected
    ]
    assert [a.status for a in result.actions] == [StageState.PLANNED, StageState.PLANNED]
    assert result.submitted == {} and not (tmp_path / "runs").exists()
