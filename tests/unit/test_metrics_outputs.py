"""Normalisation (Python and Arrow agree), bootstrap intervals, code checks (catalogue, letter support),
the written outputs (no letter text in them) and `python -m launch score`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from clinsynth.evaluation import normalize as nz
from clinsynth.evaluation.bootstrap import mean_intervals, micro_intervals, resample_weights
from clinsynth.evaluation.docs import DocSet, validated
from clinsynth.evaluation.report import ERRORS, METRICS, REPORT, STUDY_LABEL, evaluate
from clinsynth.evaluation.scorer import ScoreSettings
from clinsynth.evaluation.support import code_checks
from clinsynth.stages.evaluate import tracker_summary
from clinsynth.terminology import load_catalog
from launchers.cli import main as cli

SENTINEL = "Der Patient wurde am Sonntagmorgen bei Nieselregen entlassen"


@pytest.fixture(scope="module")
def catalog() -> Any:
    return load_catalog()


# ---- normalisation
@pytest.mark.parametrize(
    ("python", "arrow", "values"),
    [
        (
            nz.text,
            nz.a_text,
            [" Tiefe  anteriore\tRektumresektion.", "Port-Implantation", "ÄRZTLICH\u00a0ß", "::x;"],
        ),
        (nz.code, nz.a_code, ["c78.7*", " G63.2† ", "B99!", "L01xa03"]),
        (nz.ops, nz.a_ops, ["5-38A.1", " 5-484.55 "]),
        (nz.unit, nz.a_unit, ["mg/m2", "µg", "μg", "10*3/ uL"]),
        (nz.pigeon_code, nz.a_pigeon_code, ["I10.00!", "C34.1+", "C20.0", "5-470.0", "L01XA03*"]),
    ],
)
def test_python_and_arrow_rules_agree(python: Any, arrow: Any, values: list[str]) -> None:
    assert [python(v) for v in values] == arrow(pa.array(values)).to_pylist()


def test_rules_on_examples() -> None:
    assert nz.text(" Tiefe  anteriore Rektumresektion.") == "tiefe anteriore rektumresektion"
    assert nz.code("c78.7*") == "C78.7"
    assert nz.unit("µg") == "ug"
    assert [nz.number(x) for x in (85.0, 2.50, 0.1, 12)] == ["85", "2.5", "0.1", "12"]
    assert nz.a_number(pa.array([85.0, 2.5, 0.1, None])).to_pylist() == ["85", "2.5", "0.1", None]
    assert nz.pigeon_code("I10.00!") == "i10"


# ---- bootstrap
def test_resampling_is_seeded_and_each_resample_draws_n_documents() -> None:
    w = resample_weights(50, 200, seed=3)
    assert w.shape == (200, 50) and np.all(w.sum(axis=1) == 50)
    assert np.array_equal(w, resample_weights(50, 200, seed=3))
    assert not np.array_equal(w, resample_weights(50, 200, seed=4))


def test_intervals_collapse_on_identical_documents_and_cover_the_estimate() -> None:
    n = 200
    tp, fp, fn = np.full((n, 1), 3), np.full((n, 1), 1), np.full((n, 1), 2)
    ci = micro_intervals(tp, fp, fn, resample_weights(n, 300, 0), 0.95)
    # every resample has the same per-document counts: F1 = 6/(6+1+2) = 2/3 in every one
    assert ci["f1"][0][0] == pytest.approx(2 / 3) and ci["f1"][1][0] == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    tp = rng.integers(0, 4, (n, 1))
    fp = rng.integers(0, 2, (n, 1))
    fn = rng.integers(0, 2, (n, 1))
    point = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    lo, hi = micro_intervals(tp, fp, fn, resample_weights(n, 500, 0), 0.95)["f1"]
    assert lo[0] < point < hi[0] and hi[0] - lo[0] < 0.2
    vals = rng.random((n, 1))
    lo, hi = mean_intervals(vals, np.ones((n, 1), bool), resample_weights(n, 500, 0), 0.95)
    assert lo[0] < vals.mean() < hi[0]


# ---- code checks
def test_codes_not_in_catalogue_and_not_supported_by_the_letter(catalog: Any) -> None:
    assert catalog.icd10gm.lookup("N39.0") is None  # the curated subset lacks it: "not in the catalogue"
    letter = "Diagnosen: Lungenkarzinom C34.1. Obstipation. Therapie mit Pantoprazol."
    pred = validated(
        {
            "diagnoses": [
                {"text": "Lungenkarzinom OL", "icd10gm": "C34.1"},  # code written in the letter
                {"text": "Verstopfung", "icd10gm": "K59.0"},  # catalogue title "Obstipation" in the letter
                {"text": "Hypertonie", "icd10gm": "I10"},  # neither code, text nor title: unsupported
                {"text": "Harnwegsinfekt", "icd10gm": "N39.0"},  # not in the catalogue, unsupported
            ],
            "medications": [{"name": "Pantoprazol", "atc": "A02BC02"}],  # its name is in the letter
        }
    )
    other = validated({"diagnoses": [{"text": "x", "icd10gm": "C34.1"}]})
    out = code_checks([pred, other, None], [letter, None, None], catalog)
    # 6 codes, 1 not in the catalogue (N39.0): 1/6; 5 codes with a letter, 2 unsupported (I10, N39.0): 2/5
    assert out["codes"] == 6 and out["not_in_catalogue"] == 1
    assert out["not_in_catalogue_rate"] == pytest.approx(1 / 6)
    assert out["codes_with_letter"] == 5 and out["not_supported"] == 2
    assert out["not_supported_rate"] == pytest.approx(2 / 5)
    assert "1 document(s) without letter text" in out["reason"]
    none = code_checks([other], [None], catalog)
    assert none["not_supported_rate"] is None and "unavailable" in none["reason"]


# ---- outputs
def _docs() -> DocSet:
    docs = DocSet()
    gold = {"diagnoses": [{"text": "Lebermetastasen", "icd10gm": "C78.7", "assertion": "negated"},
                          {"text": "Rektumkarzinom", "icd10gm": "C20"}],
            "procedures": [{"text": "Tiefe anteriore Rektumresektion", "ops": "5-484.55"}]}  # fmt: skip
    pred = {"diagnoses": [{"text": "Lebermetastasen", "icd10gm": "C78.7"},
                          {"text": "Rektumkarzinom", "icd10gm": "C20"}],
            "procedures": [{"text": "Rektumresektion", "ops": "5-484.5"}]}  # fmt: skip
    docs.add(
        "spec-1", "synthetic", validated(gold), validated(pred), "ok", f"Rektumkarzinom C20. {SENTINEL}."
    )
    docs.add("spec-2", "synthetic", validated(gold), None, "invalid", SENTINEL)
    docs.add("grascco:Meyr", "dev", validated(gold), validated(gold), "repaired", None)
    docs.add("file:a.txt", "external", None, validated(pred), "ok", SENTINEL)
    return docs


def test_outputs_per_source_errors_and_no_letter_text(tmp_path: Path, catalog: Any) -> None:
    metrics = evaluate(_docs(), tmp_path, ScoreSettings(resamples=100), catalog, plots=True)
    assert set(metrics["sources"]) == {"synthetic", "dev"}  # reported separately
    assert metrics["not_scored"]["external"]["documents"] == 1
    syn = metrics["sources"]["synthetic"]
    assert syn["documents"] == 2 and syn["status"]["invalid"] == 1
    assert syn["assertion_confusion"]["negated_as_present"] == 1
    assert metrics["sources"]["dev"]["strict"]["icd10gm"]["f1"] == 1.0
    assert (tmp_path / "plots" / "f1_synthetic.png").stat().st_size > 1000
    written = {
        p.name: p.read_text(encoding="utf-8")
        for p in (tmp_path / METRICS, tmp_path / REPORT, tmp_path / ERRORS)
    }
    for name, text in written.items():
        assert SENTINEL not in text, f"letter text in {name}"
    report = written[REPORT]
    assert STUDY_LABEL in report and "pigeon_compat" in report and "## dev:" in report
    lines = [json.loads(x) for x in written[ERRORS].splitlines()]
    icd = next(x for x in lines if x["doc"] == "spec-1" and x["category"] == "icd10gm")
    assert icd["missed"] == [{"key": "C78.7", "assertion": "negated"}]
    assert icd["spurious"] == [{"key": "C78.7", "assertion": "present"}]
    assert icd["assertion"] == [{"key": "C78.7", "gold": "negated", "pred": "present", "count": 1}]
    invalid = [x for x in lines if x["doc"] == "spec-2"]
    assert invalid and all(x["status"] == "invalid" and "spurious" not in x for x in invalid)
    summary = tracker_summary(metrics)
    assert summary and all(isinstance(v, (int, float)) for v in summary.values())
    assert summary["evaluate/synthetic/negated_as_present"] == 1


# ---- python -m launch score
def _write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def _score(tmp_path: Path, gold: list[Any], pred: list[Any], *extra: str) -> tuple[int, Path]:
    g = _write(tmp_path / "gold.jsonl", gold)
    p = _write(tmp_path / "pred.jsonl", pred)
    out = tmp_path / "out"
    rc = cli(["score", f"gold={g}", f"pred={p}", f"out={out}", "bootstrap=50", "plots=false", *extra])
    return rc, out


GOLD = {"diagnoses": [{"text": "x", "icd10gm": "C34.1"}]}


def test_score_command_scores_files_lists_missing_and_unknown(tmp_path: Path, capsys: Any) -> None:
    from clinsynth.artifacts.predictions import prediction

    gold = [
        {"doc": "a", "extraction": GOLD},
        {"doc": "b", "extraction": GOLD},
        {"doc": "c", "extraction": GOLD},
    ]
    pred = [
        {"doc": "a", "extraction": GOLD},  # the plain shape: status ok assumed
        prediction("b", "synthetic", "rules", "invalid", None, "not json", error="no JSON object"),
        {"doc": "zzz", "extraction": GOLD},  # no gold: listed, not scored
    ]
    rc, out = _score(tmp_path, gold, pred)
    assert rc == 0
    m = json.loads((out / METRICS).read_text())
    src = m["sources"]["synthetic"]  # the source the prediction records name
    assert src["documents"] == 3 and src["status"]["missing"] == 1 and src["status"]["invalid"] == 1
    # strict: a scored, b (invalid) and c (missing) empty: tp 1, fn 2 -> R 1/3, F1 = 2/(2+2) = 0.5
    assert src["strict"]["icd10gm"]["f1"] == pytest.approx(0.5)
    assert src["pigeon_compat"]["icd10gm"]["f1"] == 1.0  # b and c skipped, as the study did
    assert "no prediction for gold doc 'c'" in src["problems"]["c"]
    assert m["unknown_docs"] == ["zzz"]
    assert (out / ERRORS).is_file() and not (out / "plots").exists()
    assert "ICD-10-GM code" in capsys.readouterr().out


def test_score_command_names_the_bad_line(tmp_path: Path, capsys: Any) -> None:
    rc, _ = _score(
        tmp_path, [{"doc": "a", "extraction": GOLD}], [{"doc": "a", "extraction": GOLD}, b"{not json"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "pred.jsonl:2: not JSON" in err
    rc, _ = _score(tmp_path, [{"doc": "a", "extraction": {"diagnoses": [{"icd10gm": "C34.1"}]}}], [])
    err = capsys.readouterr().err
    assert rc == 2 and "gold.jsonl:1: gold does not fit schema v2" in err and "diagnoses.0.text" in err
    rc, _ = _score(tmp_path, [], [], "colour=blue")
    assert rc == 2 and "unknown key 'colour'" in capsys.readouterr().err


# one malformed code among good facts: the study scores any prediction that parses, so both modes must too
GOLD3 = {
    "diagnoses": [{"text": "Lungenkarzinom", "icd10gm": "C34.1"}, {"text": "Hypertonie", "icd10gm": "I10"}],
    "medications": [{"name": "Pantoprazol", "atc": "A02BC02"}],
}
PRED3 = {
    "diagnoses": [{"text": "Lungenkarzinom", "icd10gm": "C341"}, {"text": "Hypertonie", "icd10gm": "I10"}],
    "medications": [{"name": "Pantoprazol", "atc": "A02BC02"}],
}


def _assert_repaired_and_scored(m: dict[str, Any]) -> None:
    assert m["status"]["repaired"] == 1 and m["status"]["invalid"] == 0
    s, pg = m["strict"], m["pigeon_compat"]
    assert s["atc"]["tp"] == 1 and s["atc"]["f1"] == 1.0  # the other facts count
    assert s["icd10gm"]["tp"] == 1 and s["icd10gm"]["fn"] == 1  # I10 kept, the malformed code dropped
    assert pg["_documents_scored"] == 1 and pg["_documents_skipped"] == 0  # not skipped
    assert pg["atc"]["f1"] == 1.0
    # pigeon ICD: pred {i10} vs gold {c34.1, i10}: P 1, R 1/2 -> F1 2/3
    assert pg["icd10gm"]["f1"] == pytest.approx(2 / 3)


def test_score_command_repairs_a_schema_invalid_prediction_and_scores_the_rest(tmp_path: Path) -> None:
    rc, out = _score(tmp_path, [{"doc": "a", "extraction": GOLD3}], [{"doc": "a", "extraction": PRED3}])
    assert rc == 0
    m = json.loads((out / METRICS).read_text())["sources"]["all"]
    _assert_repaired_and_scored(m)
    problem = m["problems"]["a"]
    assert "pred.jsonl:1: status ok but the extraction does not fit schema v2" in problem
    assert "repaired: diagnoses[0].icd10gm removed" in problem


def test_stage_documents_repair_a_schema_invalid_prediction(tmp_path: Path, catalog: Any) -> None:
    from clinsynth.evaluation.report import evaluate as write_all
    from clinsynth.stages.evaluate import build_docs

    rec = {"doc": "spec-1", "source": "synthetic", "status": "ok", "extraction": PRED3}
    docs = build_docs([rec], {"spec-1": validated(GOLD3)}, {}, where="extract")
    assert docs.status == ["repaired"] and docs.pred[0] is not None
    m = write_all(docs, tmp_path, ScoreSettings(resamples=20), catalog, plots=False)
    _assert_repaired_and_scored(m["sources"]["synthetic"])


def test_a_prediction_with_nothing_usable_is_invalid(tmp_path: Path) -> None:
    rc, out = _score(tmp_path, [{"doc": "a", "extraction": GOLD}], [{"doc": "a", "extraction": [1, 2]}])
    assert rc == 0
    m = json.loads((out / METRICS).read_text())["sources"]["all"]
    assert m["status"]["invalid"] == 1 and m["strict"]["icd10gm"]["fn"] == 1
    assert m["pigeon_compat"]["_documents_skipped"] == 1
    assert "not a JSON object: nothing to repair" in m["problems"]["a"]


def test_score_command_keeps_the_mode_of_an_existing_out_folder(tmp_path: Path) -> None:
    import os
    import stat

    shared = tmp_path / "out"  # _score writes to tmp_path/out
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    rc, out = _score(tmp_path, [{"doc": "a", "extraction": GOLD}], [{"doc": "a", "extraction": GOLD}])
    assert rc == 0 and out == shared and (out / METRICS).is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not made private: the user chose this folder
    fresh = tmp_path / "new"
    g, p = tmp_path / "gold.jsonl", tmp_path / "pred.jsonl"
    assert cli(["score", f"gold={g}", f"pred={p}", f"out={fresh}", "bootstrap=20", "plots=false"]) == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700  # created here: private


def test_score_command_refuses_an_unknown_status_naming_the_line(tmp_path: Path, capsys: Any) -> None:
    pred = [{"doc": "a", "extraction": GOLD}, {"doc": "b", "extraction": GOLD, "status": "OK"}]
    gold = [{"doc": "a", "extraction": GOLD}, {"doc": "b", "extraction": GOLD}]
    rc, out = _score(tmp_path, gold, pred)
    err = capsys.readouterr().err
    assert rc == 2 and "pred.jsonl:2: status 'OK' is not one of ok, repaired, invalid, truncated" in err
    assert not (out / METRICS).exists()
