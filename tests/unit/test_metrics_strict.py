"""`strict` scoring, hand-computed: every category, one-to-one matching, assertions, levels, fuzzy text,
micro vs document-macro, invalid predictions as empty predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clinsynth.evaluation import strict
from clinsynth.evaluation.docs import DocSet, validated
from clinsynth.evaluation.items import ASSERTIONS, CAT_INDEX
from clinsynth.evaluation.scorer import ScoreSettings, score_both, score_source
from clinsynth.terminology import load_catalog


def score(golds: list[dict[str, Any]], preds: list[dict[str, Any] | None], status: list[str] | None = None):
    docs = DocSet()
    for i, (g, p) in enumerate(zip(golds, preds, strict=True)):
        st = status[i] if status else ("invalid" if p is None else "ok")
        docs.add(f"d{i}", "synthetic", validated(g), None if p is None else validated(p), st)
    return docs, score_both(docs, ScoreSettings(text_threshold=85.0, resamples=50))


def micro(s: strict.StrictResult, cat: str) -> tuple[int, int, int, float, float, float]:
    j = CAT_INDEX[cat]
    tp, fp, fn = int(s.tp[:, j].sum()), int(s.fp[:, j].sum()), int(s.fn[:, j].sum())
    p, r, f1 = strict.prf(tp, fp, fn)
    return tp, fp, fn, float(p), float(r), float(f1)


def conf(s: strict.StrictResult, cat: str, gold: str, pred: str) -> int:
    return int(s.confusion[CAT_INDEX[cat], ASSERTIONS.index(gold), ASSERTIONS.index(pred)])


def dx(code: str, assertion: str = "present", text: str = "x") -> dict[str, Any]:
    return {"text": text, "icd10gm": code, "assertion": assertion}


def test_icd_exact_one_to_one_with_assertion_and_3_character_level():
    gold = {"diagnoses": [dx("C34.1"), dx("C34.1"), dx("C78.7", "negated"), dx("E11.90")]}
    pred = {"diagnoses": [dx("C34.1"), dx("C78.7"), dx("I10"), dx("E11.90")]}
    _, (s, _) = score([gold], [pred])
    # C34.1 x2 gold vs x1 pred -> 1 TP + 1 FN; E11.90 TP; C78.7 negated vs present -> 1 FN + 1 FP; I10 FP
    # tp 2, fp 2, fn 2: P = 2/4, R = 2/4, F1 = 2*2/(2*2+2+2) = 0.5
    assert micro(s, "icd10gm") == (2, 2, 2, 0.5, 0.5, 0.5)
    # 3 characters: C34 x2 / C34, C78 negated / C78 present, E11 / E11, -- / I10: the same counts
    assert micro(s, "icd10gm@3") == (2, 2, 2, 0.5, 0.5, 0.5)
    # confusion (keys matched, assertion ignored): C34.1, E11.90 present->present (2), C78.7 negated->present
    assert conf(s, "icd10gm", "present", "present") == 2
    assert conf(s, "icd10gm", "negated", "present") == 1


def test_tumour_parts_and_pooled_tumour():
    gold = {
        "tumors": [
            {
                "entity": "Rektumkarzinom",
                "morphology": "8140/3",
                "grading": "G2",
                "tnm": {
                    "t": {"prefix": "p", "value": "T2"},
                    "n": {"prefix": "p", "value": "N1"},
                    "m": {"prefix": "c", "value": "M0"},
                    "r": "R0",
                },
                "uicc_stage": "IIIA",
                "markers": [{"name": "CEA", "value": 3.1, "unit": "ng/mL"}],
                "ecog": 1,
                "status": "stable",
            }
        ]
    }
    pred = {
        "tumors": [
            {
                "entity": "Rektum-Ca",
                "morphology": "8140/3",
                "grading": "G2",
                "tnm": {
                    "t": {"prefix": "p", "value": "T2"},
                    "n": {"prefix": "c", "value": "N1"},
                    "m": {"prefix": "c", "value": "M0"},
                    "r": "R1",
                },
                "uicc_stage": "IIIA",
                "markers": [{"name": "cea", "value": 3.10, "unit": "ng/ml"}],
                "ecog": 1,
                "status": "progression",
            }
        ]
    }
    _, (s, _) = score([gold], [pred])
    assert micro(s, "tnm_t")[:3] == (1, 0, 0)  # pT2 = pT2
    assert micro(s, "tnm_n")[:3] == (0, 1, 1)  # pN1 vs cN1: the prefix is part of the axis
    assert micro(s, "tnm_m")[:3] == (1, 0, 0)
    assert micro(s, "tnm_suffix")[:3] == (0, 1, 1)  # R0 vs R1
    assert micro(s, "grading")[:3] == (1, 0, 0)
    assert micro(s, "tumor_stage")[:3] == (1, 0, 0)  # "UICC IIIA"
    assert micro(s, "morphology")[:3] == (1, 0, 0)
    assert micro(s, "marker")[:3] == (1, 0, 0)  # "cea|3.1|ng/ml|" both after normalisation
    assert micro(s, "performance")[:3] == (1, 0, 0)  # "ECOG 1"
    assert micro(s, "tumor_status")[:3] == (0, 1, 1)
    assert micro(s, "topography")[:3] == (0, 0, 0)  # absent on both sides
    # pooled: 10 gold items, 10 predicted, 7 equal -> P = R = F1 = 0.7
    assert micro(s, "tumor") == pytest.approx((7, 3, 3, 0.7, 0.7, 0.7))


def test_labs_vitals_and_loinc():
    gold = {
        "labs": [
            {"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"},
            {"name": "Leukozyten", "loinc": "6690-2", "value": 6.5, "unit": "10*3/uL"},
            {"name": "CRP", "loinc": "1988-5", "value": 12, "unit": "mg/L"},
        ],
        "vitals": [
            {"name": "Puls", "value": 80, "unit": "/min"},
            {"name": "RR sys", "value": 130, "unit": "mm[Hg]"},
        ],
    }
    pred = {
        "labs": [
            {"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"},
            {"name": "Leukozyten", "loinc": "6690-2", "value": 6.8, "unit": "10*3/uL"},
            {"name": "CRP", "value": 12.0, "unit": "mg/l"},  # unit case and 12 vs 12.0 normalise away
        ],
        "vitals": [{"name": "Puls", "value": 80.0, "unit": "/min"}],
    }
    _, (s, _) = score([gold], [pred])
    # labs: Hb and CRP equal, Leukozyten 6.5 vs 6.8 -> tp 2, fp 1, fn 1: P = R = F1 = 2/3
    assert micro(s, "lab") == pytest.approx((2, 1, 1, 2 / 3, 2 / 3, 2 / 3))
    # LOINC: 718-7, 6690-2 found, 1988-5 missing (no code predicted) -> tp 2, fp 0, fn 1: P 1, R 2/3, F1 0.8
    assert micro(s, "lab_loinc") == pytest.approx((2, 0, 1, 1.0, 2 / 3, 0.8))
    # vitals: Puls equal, RR missed -> P 1, R 1/2, F1 = 2*1/(2*1+0+1) = 2/3
    assert micro(s, "vital") == pytest.approx((1, 0, 1, 1.0, 0.5, 2 / 3))


def test_medication_name_dose_atc_and_atc_levels():
    gold = {
        "medications": [
            {"name": "Pantoprazol", "atc": "A02BC02", "dose": 40, "unit": "mg"},
            {"name": "Oxaliplatin", "atc": "L01XA03", "dose": 85, "unit": "mg/m2"},
        ]
    }
    pred = {
        "medications": [
            {"name": "pantoprazol", "atc": "A02BC02", "dose": 40, "unit": "mg"},
            {"name": "Oxaliplatin", "atc": "L01XA01", "dose": 100, "unit": "mg/m2"},
        ]
    }
    _, (s, _) = score([gold], [pred])
    # name + dose + unit: Pantoprazol equal (case), Oxaliplatin 85 vs 100 -> tp 1, fp 1, fn 1: 0.5
    assert micro(s, "medication") == pytest.approx((1, 1, 1, 0.5, 0.5, 0.5))
    assert micro(s, "medication_name")[:3] == (2, 0, 0)
    # ATC L01XA03 vs L01XA01 -> tp 1, fp 1, fn 1: 0.5; equal down to level 4 (L01XA, 5 characters)
    assert micro(s, "atc")[5] == pytest.approx(0.5)
    assert micro(s, "atc@5")[5] == pytest.approx(0.5)
    for level in (1, 2, 3, 4):
        assert micro(s, f"atc@{level}")[:3] == (2, 0, 0)


def test_ops_levels_and_fuzzy_procedure_descriptions():
    gold = {
        "procedures": [
            {"text": "Tiefe anteriore Rektumresektion", "ops": "5-484.55"},
            {"text": "Portimplantation rechts", "ops": "5-399.5"},
            {"text": "Chemotherapie", "ops": "8-542.11"},
        ]
    }
    pred = {
        "procedures": [
            {"text": "tiefe anteriore Rektumresektion.", "ops": "5-484.51"},
            {"text": "Port-Implantation rechts", "ops": "5-399.5"},
            {"text": "Chemotherapie, nicht komplex", "ops": "8-542.11"},
        ]
    }
    _, (s, _) = score([gold], [pred])
    # codes: 5-399.5 and 8-542.11 equal, 5-484.51 vs 5-484.55 not -> tp 2, fp 1, fn 1: 2/3
    assert micro(s, "ops") == pytest.approx((2, 1, 1, 2 / 3, 2 / 3, 2 / 3))
    # 5 characters (5-484.5) and 4 (5-484): all equal
    assert micro(s, "ops@5")[:3] == (3, 0, 0)
    assert micro(s, "ops@4")[:3] == (3, 0, 0)
    # texts: "tiefe anteriore rektumresektion" equal after normalisation (case, trailing ".");
    # "port-implantation rechts" vs "portimplantation rechts": Indel distance 1 over 24 + 23 characters
    # -> 100 * (1 - 1/47) = 97.9 >= 85: a fuzzy match; "chemotherapie" vs "chemotherapie, komplex nicht"
    # (tokens sorted): distance 15 over 13 + 28 -> 100 * (1 - 15/41) = 63.4 < 85: no match
    # -> tp 2, fp 1, fn 1: 2/3
    assert micro(s, "procedure_text") == pytest.approx((2, 1, 1, 2 / 3, 2 / 3, 2 / 3))
    assert len(s.fuzzy_pairs) == 1 and s.fuzzy_pairs[0][4] == pytest.approx(100 * (1 - 1 / 47))


def test_fuzzy_threshold_is_a_setting():
    gold = {"procedures": [{"text": "Chemotherapie"}]}
    pred = {"procedures": [{"text": "Chemotherapie, nicht komplex"}]}
    docs = DocSet()
    docs.add("d0", "synthetic", validated(gold), validated(pred), "ok")
    # score 63.4 (see above): matches at threshold 60, not at 85
    s60, _ = score_both(docs, ScoreSettings(text_threshold=60.0))
    s85, _ = score_both(docs, ScoreSettings(text_threshold=85.0))
    assert micro(s60, "procedure_text")[:3] == (1, 0, 0)
    assert micro(s85, "procedure_text")[:3] == (0, 1, 1)


def test_encounter_and_patient_fields():
    gold = {
        "encounter": {"admission": "2025-03-17", "discharge": "2025-03-28", "type": "inpatient"},
        "patient": {"sex": "female", "birth_date": "1950-01-02", "name": "Erika Muster"},
    }
    pred = {
        "encounter": {
            "admission": "2025-03-17",
            "discharge": "2025-03-27",
            "type": "inpatient",
            "department": "Onko",
        },
        "patient": {"sex": "female", "name": "erika  muster"},
    }
    _, (s, _) = score([gold], [pred])
    # encounter: admission, type equal; discharge differs (FP + FN); department extra (FP)
    # tp 2, fp 2, fn 1: P = 2/4, R = 2/3, F1 = 4/(4+2+1) = 4/7
    assert micro(s, "encounter") == pytest.approx((2, 2, 1, 0.5, 2 / 3, 4 / 7))
    # patient: sex, name (case, white space) equal; birth date missed: P 1, R 2/3, F1 0.8
    assert micro(s, "patient") == pytest.approx((2, 0, 1, 1.0, 2 / 3, 0.8))


def test_radiotherapy_and_risk_factors_assertion_confusion():
    gold = {
        "radiotherapy": [{"target": "Becken", "total_gy": 50.4, "fractions": 28, "assertion": "historical"}],
        "risk_factors": [{"kind": "smoking", "text": "Nichtraucher", "assertion": "negated"}],
    }
    pred = {
        "radiotherapy": [{"target": "Rektum", "total_gy": 50.4, "fractions": 28, "assertion": "present"}],
        "risk_factors": [{"kind": "smoking", "text": "Raucher", "assertion": "present"}],
    }
    _, (s, _) = score([gold], [pred])
    # same key ("50.4|28", "smoking|"), other assertion: FN + FP each, F1 0; one confusion each
    assert micro(s, "radiotherapy")[:3] == (0, 1, 1)
    assert micro(s, "risk_factor")[:3] == (0, 1, 1)
    assert conf(s, "radiotherapy", "historical", "present") == 1
    assert conf(s, "risk_factor", "negated", "present") == 1
    assert s.confusions.count.sum() == 2


def test_invalid_prediction_is_an_empty_prediction_and_micro_vs_macro():
    golds = [
        {"diagnoses": [dx("C34.1")]},
        {"diagnoses": [dx("C50.9"), dx("C78.7"), dx("C79.5")]},
        {"labs": [{"name": "Hb", "value": 10.2}]},  # no ICD item on either side: out of the ICD macro mean
    ]
    preds = [{"diagnoses": [dx("C34.1")]}, None, {"labs": [{"name": "Hb", "value": 10.2}]}]
    docs, (s, _) = score(golds, preds, status=["ok", "invalid", "ok"])
    # doc 2 is invalid: all 3 gold codes are false negatives (never skipped)
    assert micro(s, "icd10gm")[:3] == (1, 0, 3)
    m = score_source("synthetic", docs, ScoreSettings(resamples=200), load_catalog()).metrics
    icd = m["strict"]["icd10gm"]
    # micro: P = 1/1, R = 1/4, F1 = 2*1/(2*1+0+3) = 0.4; macro over the 2 documents with ICD items: (1 + 0)/2
    assert (icd["precision"], icd["recall"], icd["f1"]) == pytest.approx((1.0, 0.25, 0.4))
    assert icd["macro_f1"] == pytest.approx(0.5) and icd["macro_docs"] == 2
    assert m["status"]["invalid"] == 1 and m["status"]["schema_valid_rate"] == pytest.approx(2 / 3)
    assert m["assertion_confusion"]["negated_as_present"] == 0


def test_counts_do_not_depend_on_document_or_item_order():
    rng = np.random.default_rng(0)
    codes = ["C34.1", "C34.9", "C50.9", "C78.7", "E11.90", "I10"]
    golds, preds = [], []
    for _ in range(30):
        golds.append({"diagnoses": [dx(str(c), str(rng.choice(ASSERTIONS))) for c in rng.choice(codes, 4)]})
        preds.append({"diagnoses": [dx(str(c), str(rng.choice(ASSERTIONS))) for c in rng.choice(codes, 4)]})
    _, (a, _) = score(golds, preds)
    order = rng.permutation(30)
    shuffled = [{"diagnoses": list(reversed(p["diagnoses"]))} for p in preds]
    _, (b, _) = score([golds[i] for i in order], [shuffled[i] for i in order])
    assert np.array_equal(a.tp[order], b.tp) and np.array_equal(a.fn[order], b.fn)
    assert np.array_equal(a.confusion, b.confusion)


def test_vectorised_scoring_equals_the_per_document_loop_on_random_documents():
    """The benchmark's plain-Python loop over the same rules (benchmarks/evaluate.py) gives the same
    strict counts, confusion matrices and pigeon_compat scores on random perturbed documents."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("bench_evaluate", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    docs = bench.make_docs(300, seed=7, letters=False)
    fast = score_both(docs, ScoreSettings(text_threshold=85.0))
    bench.check_same(fast, bench.naive_score(docs, 85.0))  # raises naming the first difference
    assert fast[0].tp.sum() > 1000 and fast[0].confusion.sum() > 0 and fast[0].fuzzy_pairs
