"""`compare:` variants: parsing, plan-time errors, ids, and the comparison table from metrics.json files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from rich.console import Console

from launchers.compare import (
    COMPARISON_JSON,
    COMPARISON_MD,
    GAP_WHY,
    OVERALL,
    CompareError,
    Variant,
    collect,
    report,
    variant_overrides,
    variants,
)
from launchers.config import compose_config, to_plain
from launchers.plan import PlanError, build_plan


def plan_for(overrides):
    return build_plan(to_plain(compose_config(overrides)), to_plain(compose_config([])), check_packages=False)


def test_smoke_compares_the_finetuned_model_with_oneshot_and_rules():
    plain = to_plain(compose_config(["+experiment=smoke"]))
    got = {v.name: v.overrides for v in variants(plain)}
    assert got == {
        "oneshot": ("extract/extractor=oneshot", "extract/model=smollm2_135m"),
        "rules": ("extract/extractor=rules",),
    }
    assert plain["extract"]["extractor"]["kind"] == "finetuned"


def test_variants_share_upstream_stages_and_compare_never_changes_the_run_id():
    base = plan_for(["+experiment=smoke"])
    assert plan_for(["+experiment=smoke", "compare=null"]).run_id == base.run_id
    oneshot = variants(base.plain)[0]
    other = plan_for(variant_overrides(["+experiment=smoke"], oneshot))
    assert other.run_id != base.run_id
    assert other.plain["compare"] is None  # a variant launches no comparisons of its own
    ids = {s.name: s.stage_id for s in base.stages}
    other_ids = {s.name: s.stage_id for s in other.stages}
    for shared in ("cohort", "ingest", "sample", "generate", "verify"):
        assert other_ids[shared] == ids[shared]
    assert other_ids["extract"] != ids["extract"]
    assert "train" not in other_ids  # the one-shot extractor needs no training


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": "extract/extractor=rules"}, "must be a list of overrides"),
        ({"x": ["rules"]}, "is not an override KEY=VALUE"),
        ({"x": ["compare=null"]}, "may not set compare itself"),
    ],
)
def test_bad_variants_are_refused(value, message):
    with pytest.raises(CompareError, match=message):
        variants({"compare": value})


def test_a_bad_variant_is_a_plan_time_error():
    with pytest.raises(PlanError, match="is not an override"):
        plan_for(["+experiment=smoke", "compare={x: [rules]}"])


def _metrics(run: Path, sources: dict) -> None:
    folder = run / "stages" / "evaluate"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_bytes(orjson.dumps({"sources": sources}))


def _source(docs: int, strict: dict, pigeon: dict) -> dict:
    return {
        "documents": docs,
        "status": {"schema_valid_rate": 1.0},
        "strict": {k: {"f1": f1, "gold": g, "fn": fn, "fp": fp} for k, (f1, g, fn, fp) in strict.items()},
        "pigeon_compat": {k: {"f1": v} for k, v in pigeon.items()},
    }


def test_table_pools_the_study_categories_and_marks_missing_runs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # icd: tp 8 (gold 10, fn 2), fp 2; lab: tp 3 (gold 5, fn 2), fp 0 -> tp 11, fp 2, fn 4: F1 = 22/28
    _metrics(a, {"synthetic": _source(4, {"icd10gm": (0.8, 10, 2, 2), "lab": (0.75, 5, 2, 0),
                                          "vital": (1.0, 9, 0, 0)}, {"icd10gm": 1.333})})  # fmt: skip
    _metrics(b, {"synthetic": _source(4, {"icd10gm": (0.0, 10, 10, 0)}, {"icd10gm": 0.0}),
                 "dev": _source(6, {"icd10gm": (0.5, 2, 1, 1)}, {})})  # fmt: skip
    c.mkdir()
    data = collect([("finetuned", a), ("oneshot", b), ("rules", c)])
    strict = data["finetuned"]["synthetic"]["strict"]
    assert strict[OVERALL] == pytest.approx(22 / 28)  # vital is not one of the study's categories
    assert strict["icd10gm"] == 0.8 and strict["ops"] is None
    assert data["finetuned"]["synthetic"]["pigeon_compat"]["icd10gm"] == 1.333
    assert data["oneshot"]["synthetic"]["strict"][OVERALL] == 0.0
    assert "dev" not in data["finetuned"] and data["oneshot"]["dev"]["documents"] == 6
    assert data["rules"]["evaluated"] is False

    console = Console(record=True, width=300)
    report(console, a, [("finetuned", a), ("oneshot", b), ("rules", c)])
    text = console.export_text()
    assert "not evaluated (yet): rules" in text and "0.786" in text
    md = (a / COMPARISON_MD).read_text()
    assert "| ICD-10-GM code | 0.800 | 0.000 | 0.500 |" in md  # finetuned syn, oneshot syn, oneshot dev
    assert orjson.loads((a / COMPARISON_JSON).read_bytes())["rules"]["evaluated"] is False
    # the gap: only oneshot was scored on both letter sets (synthetic 0.000, dev 2*1/(2+1+1) = 0.5)
    gap = ("oneshot: strict micro F1 0.000 on the synthetic test letters, 0.500 on the development "
           "letters (+0.500)")
    assert gap in text and f"- {gap}" in md and GAP_WHY in md and "finetuned: strict" not in md


def test_variant_dataclass_keeps_order():
    vs = variants({"compare": {"b": ["x=1"], "a": ["y=2"]}})
    assert vs == [Variant("b", ("x=1",)), Variant("a", ("y=2",))]
