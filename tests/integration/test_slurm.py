"""The toy pipeline on the real test Slurm cluster (slurm/up.sh: 2 emulated nodes).

An array stage (4 shards) feeds a stage that runs 2 tasks on 2 nodes. No wall-clock
limits: waits end when the run is done or when nothing of it is queued or running.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from clinsynth.artifacts.specs import read_specs
from clinsynth.core.atomic import read_json, read_jsonl
from launchers.status import run_status
from launchers.submit import launch
from launchers.waiting import wait_for
from tests.helpers import toy_outputs, toy_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_array_then_two_node_stage_then_nothing_to_resubmit(tmp_path):
    pytest.importorskip("torch", reason="2-rank stages use torch.distributed (pip install -e .[torch])")
    first = launch(toy_overrides(tmp_path / "slurm", "slurm"))
    assert first.submitted == {"toy_rows": [0, 1, 2, 3], "toy_sum": [0, 1]}
    rows_job = first.action("toy_rows").job_ids
    assert len(rows_job) == 4 and len({j.split("_")[0] for j in rows_job}) == 1  # one array job
    assert wait_for(first, poll_s=1.0)

    # the reducer really ran as 2 tasks on the 2 nodes
    records = first.plan.stage("toy_sum").folder.task_records()
    assert sorted(records) == [0, 1]
    assert {r["node"] for r in records.values()} == {"node1", "node2"}
    assert {r["world_size"] for r in records.values()} == {2}
    meta = read_json(first.plan.stage("toy_rows").folder.path / "meta.json")
    assert meta["git"]["commit"] and meta["units"] == 4 and meta["job_ids"]
    assert set(meta["hosts"]) <= {"node1", "node2"}
    assert meta["slurm"]["array_job_ids"] == [rows_job[0].split("_")[0]]
    assert sorted(meta["slurm"]["array_task_of_unit"]) == ["0", "1", "2", "3"]
    # the dependent job waited on the array through afterok
    deps = [j["dependency"] for j in first.plan.stage("toy_sum").folder.jobs()]
    assert deps == [f"afterok:{rows_job[0].split('_')[0]}"]

    again = launch(toy_overrides(tmp_path / "slurm", "slurm"))
    assert again.submitted == {}
    assert [a.status for a in again.actions] == ["done", "done"]

    # same outputs as the local and debug executors
    local = launch(toy_overrides(tmp_path / "local", "local"))
    debug = launch(toy_overrides(tmp_path / "debug", "debug"))
    assert toy_outputs(first) == toy_outputs(local) == toy_outputs(debug)


def _array_task_of(result, unit: int) -> str:
    for rec in result.plan.stage("toy_rows").folder.jobs():
        if unit in rec["units"]:
            return rec["task_ids"][rec["units"].index(unit)]
    raise AssertionError(f"unit {unit} was never submitted")


def _wait_until(predicate, what: str, poll_s: float = 0.2) -> None:
    """Wait for a condition that a live job will reach; fail if the job is gone first."""
    while not predicate():
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
        if not out.strip() and not predicate():
            raise AssertionError(f"jobs ended before {what}")
        time.sleep(poll_s)


def test_scancel_one_array_task_then_relaunch_reruns_only_that_shard(tmp_path):
    pytest.importorskip("torch", reason="2-rank stages use torch.distributed (pip install -e .[torch])")
    # 10 items per shard at 1 s each: a shard runs ~10 s, longer than the cluster's KillWait
    # (5 s), so the cancelled task cannot finish its shard in the grace period after SIGTERM
    overrides = toy_overrides(tmp_path, "slurm", sleep_s=1.0)
    first = launch(overrides)
    folder = first.plan.stage("toy_rows").folder
    victim = _array_task_of(first, 1)
    _wait_until(lambda: folder.task_record_path(1).exists(), "shard 1 started")
    assert not folder.unit_complete(1)
    subprocess.run(["scancel", victim], check=True)
    assert not wait_for(first, poll_s=1.0)  # the run cannot finish: shard 1 is gone

    states = {s.stage: s for s in run_status(first.run_dir)}
    assert states["toy_rows"].complete == [0, 2, 3] and not folder.is_done()
    assert not (folder.path / "rows" / "shard-00001.jsonl").exists()  # nothing half-written

    again = launch(overrides)
    assert again.submitted == {"toy_rows": [1], "toy_sum": [0, 1]}
    assert wait_for(again, poll_s=1.0)
    rows, summary = toy_outputs(again)
    assert [r["item"] for r in rows] == list(range(40))  # no duplicate, no missing row
    assert summary == {"sum": float(sum(i * i for i in range(40))), "count": 40, "unique_items": 40}
    assert len(read_json(folder.task_record_path(1))["attempts"]) == 2
    assert launch(overrides).submitted == {}


def test_smoke_doctor_on_two_nodes_checks_the_collective(tmp_path):
    """The README's main command on the cluster, shaped like a 2-node training job."""
    pytest.importorskip("torch", reason="2-rank stages use torch.distributed (pip install -e .[torch])")
    from clinsynth.stages.doctor import summarize

    result = launch(
        [
            "+experiment=doctor",
            "cluster=slurm",
            "resources/doctor=multinode",
            "tracking=disabled",
            f"paths.runs={tmp_path}",
        ]
    )
    assert result.submitted == {"doctor": [0, 1]}
    assert wait_for(result, poll_s=1.0)
    reports = summarize(result.plan.stage("doctor").folder.path)
    assert [r["rank"] for r in reports] == [0, 1]
    assert {r["world_size"] for r in reports} == {2}
    expected = {"checked": True, "backend": "gloo", "sum": 3.0, "ok": True}
    assert all(r["collective"] == expected for r in reports)
    assert all(r["env"]["HF_HUB_OFFLINE"] == "1" for r in reports)  # set by slurm/env.sh


def test_smoke_on_slurm_arrays_match_local(tmp_path):
    """The README's main command on the test cluster: cohort and generate as job arrays, the rest
    as single jobs chained by afterok; every output equals the local run's."""
    overrides = [
        "+experiment=smoke",
            "pipeline=[verify]", "tracking=disabled", "cohort.patients=40", "resources.cohort.shards=4",
        "resources.generate.shards=3",
    ]  # fmt: skip
    result = launch([*overrides, "cluster=slurm", f"paths.runs={tmp_path / 'slurm'}"])
    assert result.submitted == {"cohort": [0, 1, 2, 3], "ingest": [0], "sample": [0], "generate": [0, 1, 2],
                                "verify": [0]}  # fmt: skip
    for stage in ("cohort", "generate"):
        assert len({j.split("_")[0] for j in result.action(stage).job_ids}) == 1  # one array job each
    assert wait_for(result, poll_s=1.0)
    local = launch([*overrides, "cluster=local", f"paths.runs={tmp_path / 'local'}"])
    for stage, rel in (("cohort", "truth"), ("ingest", "records")):
        a, b = result.plan.stage(stage).folder.path / rel, local.plan.stage(stage).folder.path / rel
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{stage}/{rel}/{name} differs"
    report = read_json(result.plan.stage("ingest").folder.path / "ingest_report.json")
    assert report["resources_quarantined"] == 0 and report["rows"]["patients"] == 40
    specs = [read_specs(r.plan.stage("sample").folder.path).to_pylist() for r in (result, local)]
    assert specs[0] == specs[1] and len(specs[0]) >= 30
    letters = [_letters(r.plan.stage("generate").folder.path) for r in (result, local)]
    assert letters[0] == letters[1] and sorted(letters[0]) == sorted(s["spec_id"] for s in specs[0])
    tasks = result.plan.stage("generate").folder.task_records()
    assert sorted(tasks) == [0, 1, 2] and all(t.get("slurm_array_job_id") for t in tasks.values())
    verdict = read_json(result.plan.stage("verify").folder.path / "verification_report.json")
    assert verdict["letters"] == len(specs[0]) and verdict["pass_rate"] == 1.0


def _letters(stage_dir):
    out = {}
    for path in sorted((stage_dir / "letters").glob("shard-*.jsonl")):
        for rec in read_jsonl(path):
            assert rec["spec_id"] not in out
            out[rec["spec_id"]] = rec["text"]
    return out
