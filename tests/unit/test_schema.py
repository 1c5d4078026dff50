"""The extraction schema: assertions on every fact, codes by pattern and catalogue, a usable JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from clinsynth.schema import ClinicalExtraction, catalogue_issues, json_schema
from clinsynth.terminology import load_catalog

EXAMPLE = {
    "diagnoses": [
        {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main"},
        {"text": "Lebermetastasen", "icd10gm": "C78.7", "role": "secondary", "assertion": "negated"},
    ],
    "tumor": {
        "topography": "C20.9",
        "morphology": "8140/3",
        "grading": "G2",
        "tnm": {"prefix": "yp", "t": "T3c", "n": "N0", "m": "M0"},
        "uicc_stage": "IIA",
        "markers": [{"name": "CEA", "loinc": "2039-6", "value": 3.1, "unit": "ng/mL"}],
    },
    "procedures": [{"text": "Tiefe anteriore Rektumresektion", "ops": "5-484.55", "date": "2025-03-20"}],
    "medications": [
        {"name": "Oxaliplatin", "atc": "L01XA03", "dose": 85, "unit": "mg/m2", "route": "i.v."},
        {
            "name": "Pantoprazol",
            "atc": "A02BC02",
            "dose": 40,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        },
    ],
    "labs": [{"name": "Hämoglobin", "loinc": "718-7", "value": 10.2, "unit": "g/dL"}],
}


def test_design_example_round_trips_and_keeps_assertions():
    ex = ClinicalExtraction.model_validate(EXAMPLE)
    assert ex.diagnoses[1].assertion == "negated" and ex.diagnoses[0].assertion == "present"
    assert ClinicalExtraction.model_validate_json(ex.model_dump_json()) == ex


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("diagnoses", 0, "icd10gm"), "C20-"),
        (("procedures", 0, "ops"), "5484.55"),
        (("medications", 0, "atc"), "l01xa03"),
        (("labs", 0, "loinc"), "718"),
        (("diagnoses", 1, "assertion"), "absent"),
        (("medications", 1, "schedule"), [1, 0, 1]),
    ],
)
def test_bad_codes_and_values_are_rejected_by_pattern(path, value):
    data = json.loads(json.dumps(EXAMPLE))
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(ValidationError):
        ClinicalExtraction.model_validate(data)


def test_catalogue_check_on_request():
    cat = load_catalog()
    ok = ClinicalExtraction.model_validate(EXAMPLE, context={"catalog": cat})
    assert catalogue_issues(ok, cat) == []
    data = json.loads(json.dumps(EXAMPLE))
    data["diagnoses"][0]["icd10gm"] = "E11.9"  # well formed, but not a terminal ICD-10-GM code
    loose = ClinicalExtraction.model_validate(data)  # pattern only: accepted, reported
    assert catalogue_issues(loose, cat) == ["diagnoses[0]: icd10gm 'E11.9' is not a valid icd-10-gm code"]
    with pytest.raises(ValidationError, match=r"E11\.9"):
        ClinicalExtraction.model_validate(data, context={"catalog": cat})


def test_json_schema_uses_patterns_not_huge_enums():
    schema = json_schema()
    text = json.dumps(schema)
    assert len(text) < 20_000
    defs = schema["$defs"]
    assert defs["Diagnosis"]["properties"]["icd10gm"]["anyOf"][0]["pattern"].startswith("^[A-Z]")
    assertion = defs["Diagnosis"]["properties"]["assertion"]
    assert assertion["enum"] == ["present", "negated", "historical", "suspected"]
    assert all(len(p.get("enum", [])) < 10 for d in defs.values() for p in d.get("properties", {}).values())
