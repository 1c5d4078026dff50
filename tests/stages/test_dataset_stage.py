"""The dataset stage on the debug cluster: patient-level splits, failing letters left out, counts that add
up, the length rule, lengths.png, a rerun that skips; and the stage function on doctored inputs."""

from __future__ import annotations

import logging
import shutil
from collections import Counter

import orjson
import pytest

from clinsynth.artifacts.sft import ROW_KEYS, read_sft, read_stats, sft_path
from clinsynth.artifacts.specs import read_specs
from clinsynth.core.atomic import read_jsonl
from clinsynth.core.context import StageContext
from clinsynth.sampling.recipe import Recipe
from clinsynth.stages import dataset
from clinsynth.training.answer import canonical_answer, expand_answer
from clinsynth.training.chat import PROMPT_VERSION
from launchers.plan import stage_config
from launchers.submit import launch
from tests.helpers import DEFAULT_LETTERS

SPLITS = ("train", "val", "test")
#: tiny's byte-level BPE (1k vocabulary) makes these letters with the compact schema ~3.9k-7k tokens: a
#: limit in the middle keeps some and drops some, so both sides of the rule are exercised
MAX_TOKENS = 5600
OVERRIDES = [
    "+experiment=smoke",
    "pipeline=[dataset]",
    "cluster=debug",
    "tracking=disabled",
    "cohort.patients=30",
    *DEFAULT_LETTERS,  # long letters: some examples exceed MAX_TOKENS
    "train/model=tiny",
    "dataset.schema_in_prompt=compact",  # pinned: the smoke experiment leaves the schema out
    f"dataset.max_tokens={MAX_TOKENS}",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = launch([*OVERRIDES, f"paths.runs={runs}"])
    assert result.action("dataset").status == "ran"
    return result, runs


def _dir(result, stage):
    return result.plan.stage(stage).folder.path


def _rows(stage_dir):
    return {s: list(read_sft(stage_dir, s)) for s in SPLITS}


def _specs(result):
    return {r["spec_id"]: r for r in read_specs(_dir(result, "sample")).to_pylist()}


def test_rows_follow_specs_and_patients_never_cross_splits(run):
    result, _ = run
    specs = _specs(result)
    rows = _rows(_dir(result, "dataset"))
    patients: dict[str, set[str]] = {}
    for split, items in rows.items():
        for row in items:
            assert set(row) == set(ROW_KEYS)
            spec = specs[row["id"]]
            assert row["split"] == split == spec["split"]
            assert row["patient_id"] == spec["patient_id"]
            patients.setdefault(row["patient_id"], set()).add(split)
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
            gold = Recipe.from_json(spec["recipe"]).gold()  # the answer is the recipe's gold
            assert row["messages"][2]["content"] == canonical_answer(gold)
            assert expand_answer(row["messages"][2]["content"]) == gold
            assert row["n_tokens"] == row["n_prompt"] + row["n_answer"] <= MAX_TOKENS
    assert all(len(s) == 1 for s in patients.values())
    assert sum(map(len, rows.values())) > 10
    assert len({s for v in patients.values() for s in v}) >= 2


def test_counts_add_up(run):
    result, _ = run
    stage_dir = _dir(result, "dataset")
    stats = read_stats(stage_dir)
    rows = _rows(stage_dir)
    letters = Counter(r["split"] for r in _specs(result).values())
    failed = Counter(
        v["split"] for v in read_jsonl(_dir(result, "verify") / "verification.jsonl") if not v["ok"]
    )
    assert stats["letters"] == sum(letters.values())
    assert stats["prompt_version"] == PROMPT_VERSION
    assert stats["tokenizer"].startswith("tiny")
    assert stats["max_tokens"] == MAX_TOKENS and stats["include_failed"] is False
    for split in SPLITS:
        s = stats["splits"][split]
        assert s["examples"] == len(rows[split])
        assert s["excluded_failed"] == failed[split]
        assert s["examples"] + s["excluded_failed"] + s["dropped_too_long"] == letters[split]
        assert s["tokens"]["total"] == sum(r["n_tokens"] for r in rows[split])
        assert s["tokens"]["prompt"] == sum(r["n_prompt"] for r in rows[split])
        assert s["tokens"]["answer"] == sum(r["n_answer"] for r in rows[split])
        assert s["tokens"]["total"] == s["tokens"]["prompt"] + s["tokens"]["answer"]
        if rows[split]:
            assert s["length"]["max"] == max(r["n_tokens"] for r in rows[split]) <= MAX_TOKENS
            assert s["length"]["min"] <= s["length"]["p50"] <= s["length"]["p99"] <= s["length"]["max"]
        if s["dropped_too_long"]:
            assert s["dropped_length"]["min"] > MAX_TOKENS
    for key in ("examples", "excluded_failed", "dropped_too_long"):
        assert stats[key] == sum(stats["splits"][s][key] for s in SPLITS)
    assert stats["examples"] > 0 and stats["dropped_too_long"] > 0  # both sides of the length rule


def test_lengths_png_and_rerun_skips(run):
    result, runs = run
    png = _dir(result, "dataset") / "lengths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    before = sft_path(_dir(result, "dataset"), "train").stat().st_mtime_ns
    again = launch([*OVERRIDES, f"paths.runs={runs}"])
    assert again.action("dataset").status == "done"
    assert sft_path(_dir(again, "dataset"), "train").stat().st_mtime_ns == before


def _run_stage(result, runs, tmp_path, verify_dir, gen_dir=None, extra=()):
    cfg = stage_config("dataset", [*OVERRIDES, *extra])
    out = tmp_path / f"dataset-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    ctx = StageContext(
        stage="dataset",
        stage_id="test",
        stage_dir=out,
        inputs={"sample": _dir(result, "sample"), "generate": gen_dir or _dir(result, "generate"),
                "verify": verify_dir},
        cache_dir=runs / "cache",
        logger=logging.getLogger("test"),
    )  # fmt: skip
    dataset.run(cfg, ctx)
    return out


def test_failing_letters_are_excluded_unless_include_failed(run, tmp_path):
    """Verdicts doctored so that some letters fail: they leave the dataset, and come back with
    dataset.include_failed=true (the smoke letters all pass verification)."""
    result, runs = run
    verify_dir = tmp_path / "verify"
    shutil.copytree(_dir(result, "verify"), verify_dir)
    verdicts = list(read_jsonl(verify_dir / "verification.jsonl"))
    kept = {r["id"] for rows in _rows(_dir(result, "dataset")).values() for r in rows}
    failing = {v["spec_id"] for v in verdicts if v["spec_id"] in kept}
    failing = set(sorted(failing)[:5])
    with open(verify_dir / "verification.jsonl", "wb") as fh:
        for v in verdicts:
            if v["spec_id"] in failing:
                v.update(ok=False, use_for_training=False, reasons=["value mismatch (doctored by the test)"])
            fh.write(orjson.dumps(v) + b"\n")
    base = read_stats(_dir(result, "dataset"))
    out = _run_stage(result, runs, tmp_path, verify_dir)
    stats = read_stats(out)
    ids = {r["id"] for s in SPLITS for r in read_sft(out, s)}
    assert not ids & failing and ids == kept - failing
    assert stats["excluded_failed"] == base["excluded_failed"] + 5
    assert stats["examples"] == base["examples"] - 5
    out = _run_stage(result, runs, tmp_path, verify_dir, extra=["dataset.include_failed=true"])
    assert {r["id"] for s in SPLITS for r in read_sft(out, s)} == kept
    assert read_stats(out)["excluded_failed"] == 0


def test_a_damaged_letter_line_is_named(run, tmp_path):
    result, runs = run
    gen_dir = tmp_path / "generate"
    shutil.copytree(_dir(result, "generate"), gen_dir)
    shard = sorted((gen_dir / "letters").glob("shard-*.jsonl"))[0]
    lines = shard.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"spec_id": "x", "text": \n'
    shard.write_bytes(b"".join(lines))
    with pytest.raises(RuntimeError, match=rf"{shard.name}:3: not a JSON letter"):
        _run_stage(result, runs, tmp_path, _dir(result, "verify"), gen_dir=gen_dir)


def test_an_empty_train_split_fails_with_the_counts(run, tmp_path):
    """Every letter longer than the limit: the stage refuses to write a dataset with nothing to train on."""
    result, runs = run
    with pytest.raises(RuntimeError, match=r"train split has no examples .* than dataset.max_tokens=64"):
        _run_stage(result, runs, tmp_path, _dir(result, "verify"), extra=["dataset.max_tokens=64"])
