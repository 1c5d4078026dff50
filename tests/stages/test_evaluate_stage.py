"""The evaluate stage on real sample + generate outputs of a small smoke run, with predictions written
through clinsynth.artifacts.predictions as the extract stage writes them (perturbed gold, one invalid,
one missing, a development letter, an external letter, and ungrounded/ beside predictions/), and the
verify stage's verdicts with one predicted test letter failing (left out of scoring, counted)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinsynth.artifacts.predictions import prediction, shard_path, write_predictions
from clinsynth.artifacts.specs import read_specs
from clinsynth.core.context import StageContext
from clinsynth.core.registry import get_stage
from clinsynth.letters.devset import load_gold
from clinsynth.stages.evaluate import run
from launchers.plan import stage_config
from launchers.submit import launch
from tests.helpers import DEFAULT_LETTERS


class Recorder:
    log_samples = False

    def __init__(self) -> None:
        self.summaries: list[dict[str, Any]] = []
        self.tables: dict[str, list[list[Any]]] = {}

    def log(self, metrics: Any, step: int | None = None) -> None:
        pass

    def summary(self, values: Any) -> None:
        self.summaries.append(dict(values))

    def table(self, name: str, columns: Any, rows: Any) -> None:
        self.tables[name] = [list(r) for r in rows]

    def finish(self, exit_code: int = 0) -> None:
        pass


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    small = ["cluster=debug", "tracking=disabled", "cohort.patients=16", *DEFAULT_LETTERS,
             f"paths.runs={runs}"]  # fmt: skip
    result = launch(["+experiment=smoke", "pipeline=[verify]", *small])
    return {s: result.plan.stage(s).folder.path for s in ("sample", "generate", "verify")}


def _verdicts_failing(verify_dir: Path, out: Path, tests: list[dict[str, Any]], failing: str) -> Path:
    """A copy of the verify stage's verdicts where every test letter passed but `failing` (the smoke
    run's own verdicts vary with the cohort; the test needs a known one)."""
    test_ids = {r["spec_id"] for r in tests}
    rows = [orjson.loads(x) for x in (verify_dir / "verification.jsonl").read_bytes().splitlines()]
    assert failing in {v["spec_id"] for v in rows}
    for v in rows:
        if v["spec_id"] in test_ids:
            v["ok"] = v["use_for_training"] = v["spec_id"] != failing
            v["reasons"] = [] if v["ok"] else ["value mismatch: set by the test"]
    (out / "verification.jsonl").write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in rows))
    return out


def _perturb(gold: dict[str, Any]) -> dict[str, Any]:
    p = copy.deepcopy(gold)
    if p.get("diagnoses"):
        p["diagnoses"][0]["assertion"] = (
            "present" if p["diagnoses"][0]["assertion"] != "present" else "negated"
        )
    if p.get("labs"):
        p["labs"].pop()
    return p


@pytest.fixture(scope="module")
def evaluated(upstream: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rows = read_specs(upstream["sample"], ["spec_id", "split", "gold"]).to_pylist()
    tests = [r for r in rows if r["split"] == "test"]
    assert len(tests) >= 4, "the smoke cohort has too few test letters for this test"
    failing = tests[-1]["spec_id"]  # predicted (perturbed); tests[0] missing, tests[1] invalid
    verify = _verdicts_failing(upstream["verify"], tmp_path_factory.mktemp("verify"), tests, failing)
    extract = tmp_path_factory.mktemp("extract")
    records = []
    for i, r in enumerate(tests[1:]):  # tests[0]: no prediction at all (missing)
        gold = orjson.loads(r["gold"])
        if i == 0:
            records.append(
                prediction(r["spec_id"], "synthetic", "rules", "invalid", None, "garbage", error="no JSON")
            )
        else:
            records.append(prediction(r["spec_id"], "synthetic", "rules", "ok", _perturb(gold), "{}"))
    meyr = load_gold("Meyr").model_dump(mode="json", exclude_none=True)
    records.append(prediction("grascco:Meyr", "dev", "rules", "ok", meyr, "{}"))
    records.append(prediction("file:x.txt", "external", "rules", "ok", {"diagnoses": []}, "{}"))
    write_predictions(shard_path(extract, 0), records[::2])
    write_predictions(shard_path(extract, 1), records[1::2])
    ungrounded = [dict(r, extraction={"diagnoses": []}) if r["extraction"] else r for r in records]
    write_predictions(extract / "ungrounded" / "shard-00000.jsonl", ungrounded)

    out = tmp_path_factory.mktemp("evaluate")
    tracker = Recorder()
    ctx = StageContext(
        stage="evaluate",
        stage_id="test",
        stage_dir=out,
        inputs={"extract": extract, **upstream, "verify": verify},
        tracker=tracker,
    )
    cfg = stage_config("evaluate", ["evaluate.bootstrap=200"])
    result = run(cfg, ctx)
    return {
        "out": out, "result": result, "tracker": tracker, "tests": tests, "upstream": upstream,
        "failing": failing,
    }  # fmt: skip


def test_sources_reported_separately_with_missing_and_invalid(evaluated: dict[str, Any]) -> None:
    m = json.loads((evaluated["out"] / "metrics.json").read_text())
    syn, dev = m["sources"]["synthetic"], m["sources"]["dev"]
    # every test letter, predicted or not, but the one that failed verification
    assert syn["documents"] == len(evaluated["tests"]) - 1
    assert syn["status"]["missing"] == 1 and syn["status"]["invalid"] == 1
    assert dev["documents"] == 1 and dev["strict"]["icd10gm"]["f1"] == 1.0  # Meyr predicted as its gold
    assert m["not_scored"]["external"]["documents"] == 1
    # perturbed: the first diagnosis' assertion flipped, one lab dropped, two documents empty
    assert 0 < syn["strict"]["icd10gm"]["f1"] < 1 and syn["strict"]["lab"]["recall"] < 1
    assert sum(map(sum, syn["assertion_confusion"]["by_category"]["icd10gm"])) > 0
    assert syn["codes"]["not_supported_rate"] is not None  # the test letters were read
    assert evaluated["result"]["ungrounded_scored"] is True
    assert "strict_f1" in m["grounding"] and (evaluated["out"] / "ungrounded" / "metrics.json").is_file()


def test_outputs_and_tracker_hold_no_letter_text(evaluated: dict[str, Any]) -> None:
    from clinsynth.artifacts.letters import letter_shards, read_letters

    out = evaluated["out"]
    for name in ("metrics.json", "report.md", "errors.jsonl"):
        assert (out / name).stat().st_size > 0
    assert (out / "plots" / "f1_synthetic.png").is_file() and (out / "plots" / "f1_dev.png").is_file()
    texts = [(out / n).read_text(encoding="utf-8") for n in ("metrics.json", "report.md", "errors.jsonl")]
    sentences = []
    for _, _, path in letter_shards(evaluated["upstream"]["generate"]):
        for letter in read_letters(path):
            sentences += [s for s in letter["text"].splitlines() if len(s) > 60][:2]
    assert sentences
    for s in sentences:
        assert all(s not in t for t in texts), "a letter sentence leaked into the outputs"
    (summary,) = evaluated["tracker"].summaries
    assert summary and all(isinstance(v, (int, float)) for v in summary.values())
    assert "evaluate/dev/strict/icd10gm/f1" in summary
    (table,) = evaluated["tracker"].tables.values()  # the metrics table; no errors table (log_samples off)
    assert list(evaluated["tracker"].tables) == ["evaluate/metrics"] and table
    assert all(v is None or isinstance(v, (int, float)) for row in table for v in row[3:])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## synthetic" in report and "## dev" in report and "With and without grounding" in report


def test_needs_follow_the_extract_inputs() -> None:
    spec = get_stage("evaluate")
    full = ("extract", "sample", "generate", "verify")
    assert spec.needs_for({"extract": {"test_letters": True}}) == full
    assert spec.needs_for({"extract": {"test_letters": True}, "evaluate": {"include_failed": False}}) == full
    both = {"extract": {"test_letters": True}, "evaluate": {"include_failed": True}}
    assert spec.needs_for(both) == ("extract", "sample", "generate")  # no verdicts read
    assert spec.needs_for({"extract": {"test_letters": False}}) == ("extract",)


def test_a_test_letter_that_failed_verification_is_left_out_and_counted(evaluated: dict[str, Any]) -> None:
    out, failing = evaluated["out"], evaluated["failing"]
    m = json.loads((out / "metrics.json").read_text())
    excluded = m["excluded"]["failed_verification"]
    assert excluded == {"documents": 1, "include_failed": False, "docs": [failing]}
    assert failing not in m["sources"]["synthetic"]["problems"]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert errors and failing not in {e["doc"] for e in errors}  # its perturbed prediction is not scored
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## excluded: failed verification" in report and "1 synthetic letter(s) failed" in report
    (summary,) = evaluated["tracker"].summaries
    assert summary["evaluate/synthetic/excluded_failed_verification"] == 1
    assert evaluated["result"]["excluded_failed_verification"] == 1
    u = json.loads((out / "ungrounded" / "metrics.json").read_text())
    assert u["sources"]["synthetic"]["documents"] == len(evaluated["tests"]) - 1
