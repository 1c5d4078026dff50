"""Code grounding: a missing or non-catalogue code is mapped from its text when one catalogue concept
(or one parent of several) clearly wins; codes the catalogue holds are never touched; every attempt is
recorded."""

from __future__ import annotations

import pytest

from clinsynth.extraction.grounding import best_code, ground
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import load_catalog


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def test_missing_and_invented_codes_are_mapped_from_their_text(cat) -> None:
    ex = ClinicalExtraction.model_validate(
        {
            "diagnoses": [
                {"text": "Mammakarzinom links", "icd10gm": "C50.49"},  # not in the catalogue
                {"text": "Rektumkarzinom", "icd10gm": "C18.7"},  # in the catalogue: kept, even if odd
                {"text": "Arterielle Hypertonie"},
            ],
            "tumors": [{"entity": "Adenokarzinom", "histology": "Adenokarzinom"}],
            "procedures": [{"text": "Sigmaresektion"}],
            "medications": [{"name": "Pantoprazol", "atc": "A02BC99"}],
            "labs": [{"name": "Hämoglobin"}],
        }
    )
    out, corrections = ground(ex, cat, threshold=90)
    assert [d.icd10gm for d in out.diagnoses] == ["C50", "C18.7", "I10"]  # C50: the text's level, not C50.4
    assert out.tumors[0].morphology == "8140/3"
    assert out.procedures[0].ops == "5-455.7"  # the parent of the tied 5-455.7x
    assert out.medications[0].atc == "A02BC02" and out.labs[0].loinc == "718-7"
    by_path = {c.path: c for c in corrections}
    assert "diagnoses[1].icd10gm" not in by_path
    assert (by_path["diagnoses[0].icd10gm"].before, by_path["diagnoses[0].icd10gm"].after) == (
        "C50.49",
        "C50",
    )
    assert by_path["medications[0].atc"].as_dict() == {
        "path": "medications[0].atc",
        "text": "Pantoprazol",
        "before": "A02BC99",
        "after": "A02BC02",
        "score": 100.0,
        "reason": "mapped",
    }
    assert ex.diagnoses[0].icd10gm == "C50.49"  # the input is not changed


def test_weak_and_ambiguous_matches_are_left_alone_and_said(cat) -> None:
    code, score, reason = best_code(cat.loinc, "Leukozyten", 90)
    assert code is None and score == 100 and reason.startswith("ambiguous: ") and "6690-2" in reason
    code, score, reason = best_code(cat.icd10gm, "Kopfschmerz", 90)
    assert code is None and score is not None and score < 90 and reason.startswith("no match above 90")
    ex = ClinicalExtraction.model_validate({"diagnoses": [{"text": "Kopfschmerz", "icd10gm": "R51.9"}]})
    out, corrections = ground(ex, cat, threshold=90)
    assert out.diagnoses[0].icd10gm == "R51.9" and corrections[0].after is None


def test_nothing_to_ground_returns_the_same_extraction(cat) -> None:
    ex = ClinicalExtraction.model_validate({"diagnoses": [{"text": "Prostatakarzinom", "icd10gm": "C61"}]})
    out, corrections = ground(ex, cat)
    assert out is ex and corrections == []
