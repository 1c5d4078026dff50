"""paper_repro with dry_run=true: the study's multi-node plan as sbatch files, and its GPU-hour estimate.

No Slurm needed: a dry run builds the sbatch text the way submitit does (tests/unit/test_dry_run.py
checks that it is the same file). The expected parameters below are the issue's: Qwen3-235B on one
whole 8-GPU node per array task, MedGemma-27B LoRA on 2 nodes x 8 GPUs (one rank per GPU, ZeRO-3),
extraction as a GPU array, CPU stages around them, chained with afterok.
"""

from __future__ import annotations

import copy
import functools
import io
import re
from typing import Any

import pytest
import yaml

from launchers.config import CONF_DIR, compose_config, to_plain
from launchers.estimate import estimate_plan, format_estimate
from launchers.plan import PlanError, build_plan
from launchers.submit import launch
from launchers.summary import console_for
from tests.unit.test_dry_run import sbatch_flags

PAPER = ["+experiment=paper_repro", "cluster=slurm", "dry_run=true"]

#: stage -> (nodes, tasks per node, GPUs per node, time limit in minutes, array, afterok stages, partition)
EXPECTED: dict[str, tuple[int, int, int | None, int, str | None, set[str], str | None]] = {
    "cohort": (1, 1, None, 60, "0-31%32", set(), None),
    "ingest": (1, 1, None, 60, None, {"cohort"}, None),
    "sample": (1, 1, None, 60, None, {"ingest"}, None),
    "generate": (1, 1, 8, 720, "0-7%8", {"sample"}, "gpu"),
    "verify": (1, 1, None, 30, None, {"generate", "sample"}, None),
    "dataset": (1, 1, None, 60, None, {"verify", "generate", "sample"}, None),
    "train": (2, 8, 8, 720, None, {"dataset"}, "gpu"),
    "extract": (1, 1, 1, 240, "0-7%8", {"sample", "generate", "dataset", "train"}, "gpu"),
    "evaluate": (1, 1, None, 60, None, {"extract", "sample", "generate", "verify"}, None),
    "export": (1, 1, None, 60, None, {"extract"}, None),
}
#: tasks each stage submits: array tasks, or ranks of one job
TASKS = {"cohort": 32, "generate": 8, "train": 16, "extract": 8}


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    runs = tmp_path_factory.mktemp("paper") / "runs"
    buf = io.StringIO()
    result = launch([*PAPER, f"paths.runs={runs}"], console=console_for(buf))
    assert not runs.exists(), "a dry run must not create folders"
    return result, buf.getvalue()


def _sections(out: str) -> dict[str, tuple[int, str]]:
    """stage -> (tasks, its sbatch file), in the printed order."""
    found = re.findall(r"^--- sbatch for (\w+) \((\d+) task\(s\)\) ---\n(.*?)(?=^--- )", out, re.M | re.S)
    return {stage: (int(n), text) for stage, n, text in found}


def test_every_stage_has_the_expected_sbatch_parameters(dry):
    result, out = dry
    sections = _sections(out)
    assert list(sections) == list(EXPECTED), "stages in dependency order, one sbatch file each"
    for stage, (nodes, per_node, gpus, time_min, array, after, partition) in EXPECTED.items():
        n_tasks, text = sections[stage]
        flags = sbatch_flags(text)
        gpu = int(flags["gpus-per-node"]) if "gpus-per-node" in flags else None
        deps = set(re.findall(r"<(\w+)>", flags.get("dependency", "")))
        nodes_tasks = (int(flags["nodes"]), int(flags["ntasks-per-node"]))
        got = (*nodes_tasks, gpu, int(flags["time"]), flags.get("array"), deps, flags.get("partition"))
        assert got == (nodes, per_node, gpus, time_min, array, after, partition), stage
        assert n_tasks == TASKS.get(stage, 1), stage
        if after:  # afterok on every stage it needs, nothing else
            assert flags["dependency"].startswith("'afterok:"), stage
            assert after == set(result.plan.stage(stage).needs), stage
        assert "gres" not in flags  # GPUs as --gpus-per-node (submitit), never a second, conflicting --gres
    # whole nodes where the GPUs of a node work together (tensor parallelism, NCCL)
    for stage in ("generate", "train"):
        assert "exclusive" in sbatch_flags(sections[stage][1]), stage
    # one rank that dies ends the 16-rank job instead of leaving the others hanging in a collective
    assert "--kill-on-bad-exit=1" in sections["train"][1]
    # generate: one process per task; vLLM starts its tensor-parallel workers itself
    assert "--kill-on-bad-exit=1" not in sections["generate"][1]


def test_the_afterok_chain_only_points_backwards(dry):
    _, out = dry
    order = list(_sections(out))
    for stage, (*_, after, _partition) in EXPECTED.items():
        assert all(order.index(dep) < order.index(stage) for dep in after), stage


def test_the_models_and_engines_are_the_studys(dry):
    result, _ = dry
    plain = result.plan.plain
    assert plain["generate"]["model"]["name"] == "qwen3_235b"
    tp = plain["generate"]["backend"]["tensor_parallel_size"]
    assert tp == 8 == plain["resources"]["generate"]["gpus_per_node"]
    assert plain["train"]["model"]["name"] == "medgemma_27b"
    assert plain["train"]["deepspeed"]["config"]["zero_optimization"]["stage"] == 3
    train = result.plan.stage("train")
    ranks = train.ranks
    assert ranks == 16 and plain["train"]["effective_batch"] == 64
    assert plain["train"]["per_device_batch"] * ranks == 64  # the study's batch without accumulation
    assert plain["extract"]["extractor"]["kind"] == "finetuned"


def _why(text: str) -> str:
    return " ".join(text.split())


def test_the_estimate_is_printed_with_its_assumptions(dry):
    _, out = dry
    block = out.split("--- estimate: GPU-hours per stage")[1]
    table = block.splitlines()[1 : 3 + len(EXPECTED)]  # header, a row per stage, total
    rows = {line.split()[0]: line for line in table[1:-1]}
    assert list(rows) == list(EXPECTED) and table[-1].startswith("total")
    header = table[0].split()
    assert header[-7:] == ["GPU-h", "CPU-h", "h/task", "limit", "h", "wall", "h"]
    gpu_h = {s: rows[s].split()[-5] for s in rows}
    assert all(float(gpu_h[s].replace(",", "")) > 1 for s in ("generate", "train", "extract"))
    assert all(gpu_h[s] == "-" for s in set(EXPECTED) - {"generate", "train", "extract"})
    total = table[-1].split()
    assert float(total[1].replace(",", "")) == pytest.approx(
        sum(float(gpu_h[s].replace(",", "")) for s in ("generate", "train", "extract")), abs=0.15
    )
    # what was derived from the config, and every assumption that entered the numbers, with its reason
    assert "patients 41,175 (cohort.patients)" in block
    assert re.search(r"letters 75,\d{3} = patients x 1\.83\d \(sample\.sampler\.stays_per_patient=2", block)
    assert "test split 0.10 (sample.sampler.splits)" in block
    conf = yaml.safe_load((CONF_DIR / "estimate" / "h100.yaml").read_text())
    assumed = dict(re.findall(r"^  ([\w.]+) = [^:]+: (.+)$", block.split("\nassumed")[1], re.M))
    keys = (
        "chars_per_token", "engines.qwen3_235b.decode_tokens_per_s", "engines.medgemma_27b.load_min",
        "train.mfu", "train.params_b.medgemma_27b", "cpu.verify_letters_per_s", "letters_per_patient",
    )  # fmt: skip
    for key in keys:
        node = conf
        for part in key.split("."):
            node = node[part]
        assert assumed[key] == _why(node["why"]), key
    assert "warning: estimate" not in out  # every task fits its time limit


# ---- the estimate itself, on plans built without Hydra (fast)


@functools.cache
def _plain(overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    return to_plain(compose_config([*PAPER, *overrides]))


@functools.cache
def _base() -> dict[str, Any]:
    return to_plain(compose_config([]))


def _plan(**keys: Any):
    plain = copy.deepcopy(_plain())
    for dotted, value in keys.items():
        node = plain
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return build_plan(plain, _base(), check_packages=False)


def _stage(plan, name: str, todo=None):
    est = estimate_plan(plan, todo)
    assert est is not None
    return next(s for s in est.stages if s.stage == name), est


def test_token_work_scales_with_the_config_and_load_time_does_not():
    full, _ = _stage(_plan(), "generate")
    half, _ = _stage(_plan(cohort__patients=41175 // 2), "generate")
    load = 15 / 60 * 8 * 8  # load_min x tasks x GPUs per task
    assert half.gpu_hours is not None and full.gpu_hours is not None
    assert half.gpu_hours - load == pytest.approx((full.gpu_hours - load) / 2, rel=1e-3)
    one, _ = _stage(_plan(sample__sampler__stays_per_patient=1), "sample")
    assert one.work.startswith("41,175 letter recipes")  # one letter per patient
    short, _ = _stage(_plan(generate__letters__max_tokens=50), "generate")
    assert short.gpu_hours is not None and short.gpu_hours < full.gpu_hours  # 200 assumed tokens capped at 50
    two, _ = _stage(_plan(train__epochs=2), "train")
    base, _ = _stage(_plan(), "train")
    startup = 10 / 60 * 16
    assert two.gpu_hours is not None and base.gpu_hours is not None
    assert two.gpu_hours - startup == pytest.approx(2 * (base.gpu_hours - startup), rel=1e-3)


def test_a_task_over_its_time_limit_is_flagged():
    plain = copy.deepcopy(_plain())
    plain["resources"]["generate"]["time_min"] = 20
    _, est = _stage(build_plan(plain, _base(), check_packages=False), "generate")
    assert any("generate: ~0.7 h per task is over resources.generate.time_min=20" in w for w in est.warnings)
    assert any(line.startswith("warning: estimate: generate") for line in format_estimate(est))


def test_only_what_a_launch_submits_is_counted():
    plan = _plan()
    whole, _ = _stage(plan, "generate")
    left, est = _stage(plan, "generate", {"cohort": (0, 32), "generate": (2, 8)})
    assert left.tasks == 2 and "(2 of 8 tasks left)" in left.work
    assert left.gpu_hours == pytest.approx((whole.gpu_hours or 0) / 4)
    assert "cohort" not in [s.stage for s in est.stages]
    assert est.missing["cohort"].startswith("not counted: nothing to submit")


def test_a_model_without_assumed_throughput_is_named_not_guessed():
    est = estimate_plan(_plan(generate__model__name="mystery_70b"))
    assert est is not None and "generate" not in [s.stage for s in est.stages]
    assert "add estimate.engines.mystery_70b" in est.missing["generate"]


def test_a_bad_assumption_stops_the_plan_naming_the_key():
    plain = copy.deepcopy(_plain())
    plain["estimate"]["chars_per_token"]["value"] = -3
    with pytest.raises(PlanError, match=r"estimate\.chars_per_token\.value"):
        build_plan(plain, _base(), check_packages=False)
    plain = copy.deepcopy(_plain())
    del plain["estimate"]["train"]["mfu"]["why"]  # every number says where it comes from
    with pytest.raises(PlanError, match=r"estimate\.train\.mfu\.why"):
        build_plan(plain, _base(), check_packages=False)


def test_a_users_fhir_needs_the_patient_count():
    plan = _plan(source={"kind": "ndjson", "path": "/nonexistent/export"})
    est = estimate_plan(plan)
    assert est is not None and "cohort" not in [s.name for s in plan.stages]
    assert "set estimate.patients.value=N" in est.missing["ingest"]
    plain = copy.deepcopy(plan.plain)
    plain["estimate"]["patients"] = {"value": 1000, "why": "our export"}
    est = estimate_plan(build_plan(plain, _base(), check_packages=False))
    assert est is not None and not est.missing
    assert est.used["patients"].why == "our export"
