"""`pigeon_compat`, hand-computed: the study's documented quirks (4-character prefix match, recall above 1,
both-empty = 1.0, unparseable skipped, B99, ICD at 3 and 1 characters, OPS category, mean over documents)
and every category of its table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clinsynth.evaluation.docs import DocSet, validated
from clinsynth.evaluation.pigeon import PigeonResult
from clinsynth.evaluation.scorer import ScoreSettings, score_both, score_source
from clinsynth.terminology import load_catalog


def score(golds: list[dict[str, Any]], preds: list[dict[str, Any] | None]) -> tuple[DocSet, PigeonResult]:
    docs = DocSet()
    for i, (g, p) in enumerate(zip(golds, preds, strict=True)):
        docs.add(
            f"d{i}",
            "synthetic",
            validated(g),
            None if p is None else validated(p),
            "invalid" if p is None else "ok",
        )
    _, res = score_both(docs, ScoreSettings(resamples=50))
    return docs, res


def prf(res: PigeonResult, cat: str, doc: int = 0) -> tuple[float, float, float]:
    return tuple(float(res.category(cat, m)[doc]) for m in ("p", "r", "f1"))  # type: ignore[return-value]


def icd(*codes: str) -> dict[str, Any]:
    return {"diagnoses": [{"text": "x", "icd10gm": c} for c in codes]}


def test_four_character_prefix_and_recall_above_one():
    # pred {C34.1, C34.9} vs gold {C34.1}: both share "c34." with the gold code -> tp 2
    # P = 2/2 = 1.0, R = 2/1 = 2.0, F1 = 2*1*2/(1+2) = 1.333
    _, res = score([icd("C34.1")], [icd("C34.1", "C34.9")])
    assert prf(res, "icd10gm") == pytest.approx((1.0, 2.0, 4 / 3))


def test_prefix_match_counts_a_wrong_subcode_strict_does_not():
    docs, res = score([icd("C34.1")], [icd("C34.9")])
    assert prf(res, "icd10gm") == (1.0, 1.0, 1.0)  # "c34." == "c34."
    m = score_source("synthetic", docs, ScoreSettings(resamples=50), load_catalog()).metrics
    assert m["strict"]["icd10gm"]["f1"] == 0.0


def test_both_empty_is_one_and_one_empty_is_zero():
    _, res = score([{}, icd("C34.1"), {}], [{}, {}, icd("C34.1")])
    assert prf(res, "icd10gm", 0) == (1.0, 1.0, 1.0)  # nothing to find, nothing found
    assert prf(res, "icd10gm", 1) == (0.0, 0.0, 0.0)  # missed
    assert prf(res, "icd10gm", 2) == (0.0, 0.0, 0.0)  # invented


def test_unparseable_prediction_is_skipped_dataset_score_is_the_document_mean():
    golds = [icd("C34.1"), icd("C50.9"), icd("C18.7", "K59.0")]
    preds = [icd("C34.1"), None, icd("C18.7")]
    docs, _ = score(golds, preds)
    m = score_source("synthetic", docs, ScoreSettings(resamples=100), load_catalog()).metrics
    pg = m["pigeon_compat"]
    # doc 2 (invalid) is left out; doc 1: F1 1.0; doc 3: P 1, R 1/2, F1 2/3 -> mean (1 + 2/3)/2 = 0.8333
    assert pg["_documents_scored"] == 2 and pg["_documents_skipped"] == 1
    assert pg["icd10gm"]["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert pg["icd10gm"]["recall"] == pytest.approx((1 + 0.5) / 2)
    # strict keeps doc 2 as an empty prediction: tp 2, fn 2 (C50.9, K59.0): R = 0.5, F1 = 4/6
    assert m["strict"]["icd10gm"]["f1"] == pytest.approx(2 / 3)


def test_code_normalisation_and_b99_in_gold():
    # I10.00 -> "i10" (trailing .00 dropped) = gold "I10"; the B99 gold code is removed before scoring
    _, res = score([icd("I10", "B99")], [icd("I10.00")])
    assert prf(res, "icd10gm") == (1.0, 1.0, 1.0)


def test_icd_at_three_and_one_character():
    _, res = score([icd("C34.1", "E11.90")], [icd("C34.9", "E10.1")])
    # full: "c34." matches, "e10." vs "e11." does not -> tp 1: P = R = F1 = 0.5
    assert prf(res, "icd10gm") == (0.5, 0.5, 0.5)
    # 3 characters: {c34, e11} vs {c34, e10} -> tp 1: 0.5; 1 character: {c, e} vs {c, e} -> 1.0
    assert prf(res, "icd10gm@3") == (0.5, 0.5, 0.5)
    assert prf(res, "icd10gm@1") == (1.0, 1.0, 1.0)


def test_b99_leaves_the_gold_before_the_cut():
    # gold {B99, C34.1} -> {c34.1}; at 1 character the study's gold is {c}, so a predicted "B..." code is
    # a false positive there: pred {C34.9, B95.2} at 1 character {c, b} vs {c} -> P 1/2, R 1/1, F1 2/3
    _, res = score([icd("B99", "C34.1")], [icd("C34.9", "B95.2")])
    assert prf(res, "icd10gm@1") == pytest.approx((0.5, 1.0, 2 / 3))


def test_ops_codes_category_and_procedure_texts():
    gold = {
        "procedures": [
            {"text": "Tiefe anteriore Rektumresektion", "ops": "5-484.55"},
            {"text": "Portimplantation", "ops": "5-399.5"},
            {"text": "Chemotherapie", "ops": "8-542.11"},
        ]
    }
    pred = {
        "procedures": [
            {"text": "tiefe anteriore Rektumresektion", "ops": "5-484.51"},
            {"text": "Port-Implantation", "ops": "5-399.5"},
            {"text": "Chemotherapie, nicht komplex", "ops": "1-632.0"},
        ]
    }
    _, res = score([gold], [pred])
    # codes: 5-484.51 ~ "5-48", 5-399.5 equal, "1-632" (trailing .0 dropped) vs "1-63": no -> tp 2: 2/3
    assert prf(res, "ops") == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # category (before "-"): {5, 1} vs {5, 8} -> tp 1: 0.5
    assert prf(res, "ops_category") == (0.5, 0.5, 0.5)
    # texts as written: "tief" vs "Tief" differ (case), "Port" = "Port", "Chem" = "Chem" -> tp 2: 2/3
    assert prf(res, "procedure_text") == pytest.approx((2 / 3, 2 / 3, 2 / 3))


def test_labs_medications_and_atc():
    gold = {
        "labs": [
            {"name": "Hb", "value": 10.2},
            {"name": "Leukozyten", "value": 6.5},
            {"name": "CRP", "value": 12},
        ],
        "medications": [
            {"name": "Pantoprazol", "atc": "A02BC02", "dose": 40, "unit": "mg"},
            {"name": "Oxaliplatin", "atc": "L01XA03", "dose": 85, "unit": "mg/m2"},
        ],
    }
    pred = {
        "labs": [
            {"name": "Hb", "value": 10.2},
            {"name": "Leukozyten", "value": 6.8},
            {"name": "CRP", "value": 12.0},
        ],
        "medications": [
            {"name": "Pantoprazol", "atc": "A02BC02", "dose": 40, "unit": "mg"},
            {"name": "Oxaliplatin", "atc": "L01XA01", "dose": 100, "unit": "mg/m2"},
        ],
    }
    _, res = score([gold], [pred])
    # labs = mean(names, values): names 3/3 -> 1.0; values {"10.2","6.5","12"} vs {"10.2","6.8","12"}:
    # "6.8" is shorter than 4 characters and not equal -> tp 2: 2/3 -> (1 + 2/3)/2 = 0.8333
    assert prf(res, "lab")[2] == pytest.approx((1 + 2 / 3) / 2)
    # medications = mean(names, dosages): names 1.0; dosages {"40 mg","85 mg/m2"} vs {"40 mg","100 mg/m2"}:
    # "100 " vs "85 m" no -> tp 1: 0.5 -> 0.75
    assert prf(res, "medication")[2] == pytest.approx(0.75)
    # ATC: "l01xa01" shares "l01x" with "l01xa03" -> tp 2: 1.0 (strict: 0.5)
    assert prf(res, "atc") == (1.0, 1.0, 1.0)


def test_tumour_is_the_mean_of_its_fields():
    gold = {
        "tumors": [
            {
                "entity": "Rektumkarzinom",
                "histology": "Adenokarzinom",
                "uicc_stage": "IIIA",
                "tnm": {
                    "t": {"prefix": "p", "value": "T2"},
                    "n": {"prefix": "p", "value": "N1"},
                    "m": {"prefix": "c", "value": "M0"},
                },
                "markers": [{"name": "CEA", "value": 3.1}],
                "ecog": 1,
                "status": "stable",
            }
        ]
    }
    pred = {
        "tumors": [
            {
                "entity": "Rektumkarzinom",
                "histology": "Adenokarzinom",
                "uicc_stage": "IIIA",
                "tnm": {
                    "t": {"prefix": "p", "value": "T2"},
                    "n": {"prefix": "c", "value": "N1"},
                    "m": {"prefix": "c", "value": "M0"},
                },
                "markers": [{"name": "CEA", "value": 3.1}],
                "ecog": 1,
                "status": "progression",
            }
        ]
    }
    _, res = score([gold], [pred])
    # 11 fields: t 1, n 0 ("cN1" vs "pN1"), m 1, stage 1, histology 1, status 0 ("prog" vs "stab"),
    # marker 1, marker value 1, smoking 1 (both empty), ECOG 1, radiotherapy 1 (both empty) -> 9/11
    assert prf(res, "tumor")[2] == pytest.approx(9 / 11)


def test_introduction_fields_exact_match():
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
        "patient": {"sex": "female", "name": "erika muster"},
    }
    _, res = score([gold], [pred])
    # 8 fields: admission =, discharge !=, type =, department ("" vs "Onko") !=, letter type ("" = "") =,
    # sex =, birth date ("1950-01-02" vs "") !=, name (as written, case differs) != -> 4/8
    assert res.intro[0] == 0.5


def test_sets_ignore_duplicates_and_assertions():
    gold = {"diagnoses": [{"text": "x", "icd10gm": "C78.7", "assertion": "negated"}]}
    pred = {"diagnoses": [{"text": "x", "icd10gm": "C78.7"}, {"text": "y", "icd10gm": "C78.7"}]}
    _, res = score([gold], [pred])
    assert prf(res, "icd10gm") == (1.0, 1.0, 1.0)  # the study labels negated facts as present
    assert np.all(res.scored)
