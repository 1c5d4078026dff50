"""The extraction schema: assertions on every fact, codes by pattern and catalogue, a usable JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from clinsynth.schema import ClinicalExtraction, catalogue_issues, json_schema
from clinsynth.terminology import load_catalog

EXAMPLE = {
    "encounter": {"admission": "2025-03-17", "discharge": "2025-03-28", "type": "inpatient"},
    "patient": {"sex": "female", "birth_date": "1958-04"},
    "diagnoses": [
        {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main", "date": "2024-11"},
        {"text": "Lebermetastasen", "icd10gm": "C78.7", "role": "secondary", "assertion": "negated"},
        {"text": "CIPN", "icd10gm": "G62.0", "icd10gm_mark": "!", "role": "secondary"},
    ],
    "tumors": [
        {
            "entity": "Rektumkarzinom",
            "topography": "C20.9",
            "morphology": "8140/3",
            "histology": "Adenokarzinom",
            "grading": "G2",
            "staging": "current",
            "date": "2025-03-20",
            "tnm": {
                "t": {"prefix": "yp", "value": "T3c"},
                "n": {"prefix": "yp", "value": "N0", "nodes": "0/14"},
                "m": {"prefix": "c", "value": "M0"},
                "l": "L0",
                "v": "V0",
                "pn": "Pn0",
                "r": "R0",
            },
            "uicc_stage": "IIA",
            "markers": [
                {"name": "CEA", "loinc": "2039-6", "value": 3.1, "unit": "ng/mL"},
                {"name": "KRAS", "result": "wildtype"},
            ],
            "ecog": 1,
            "status": "partial_remission",
        },
        {"entity": "Mammakarzinom", "laterality": "L", "assertion": "historical"},
    ],
    "procedures": [{"text": "Tiefe anteriore Rektumresektion", "ops": "5-484.55", "date": "2025-03-20"}],
    "radiotherapy": [
        {"target": "Rektum", "total_gy": 50.4, "fraction_gy": 1.8, "fractions": 28, "assertion": "historical"}
    ],
    "medications": [
        {
            "name": "Oxaliplatin",
            "atc": "L01XA03",
            "dose": 85,
            "unit": "mg/m2",
            "route": "i.v.",
            "context": "therapy",
            "regimen": "FOLFOX",
            "cycle": 3,
            "day": 1,
        },
        {
            "name": "Pantoprazol",
            "atc": "A02BC02",
            "dose": 40,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        },
        {"name": "Metamizol", "atc": "N02BB02", "dose": 500, "unit": "mg", "as_needed": True},
    ],
    "labs": [{"name": "Hämoglobin", "loinc": "718-7", "value": 10.2, "unit": "g/dL", "flag": "low"}],
    "vitals": [{"name": "RR systolisch", "value": 132, "unit": "mm[Hg]"}],
    "risk_factors": [{"kind": "smoking", "text": "Ex-Raucher", "pack_years": 30, "assertion": "historical"}],
}


def test_design_example_round_trips_and_keeps_assertions():
    ex = ClinicalExtraction.model_validate(EXAMPLE)
    assert ex.diagnoses[1].assertion == "negated" and ex.diagnoses[0].assertion == "present"
    assert ClinicalExtraction.model_validate_json(ex.model_dump_json()) == ex


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("diagnoses", 0, "icd10gm"), "C20-"),
        (("diagnoses", 2, "icd10gm"), "G62.0!"),
        (("tumors", 0, "tnm", "t", "prefix"), "x"),
        (("tumors", 0, "tnm", "n", "nodes"), "14"),
        (("tumors", 0, "tnm", "r"), "R3"),
        (("tumors", 0, "ecog"), 6),
        (("tumors", 0, "status"), "better"),
        (("radiotherapy", 0, "total_gy"), 0),
        (("risk_factors", 0, "kind"), "coffee"),
        (("labs", 0, "flag"), "H"),
        (("encounter", "admission"), "17.03.2025"),
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
    # gold follows the text: a less specific (non-terminal) code the catalogue holds is fine
    data["diagnoses"][0]["icd10gm"] = "E11.9"
    data["diagnoses"][1]["icd10gm"] = "C67"
    assert catalogue_issues(ClinicalExtraction.model_validate(data, context={"catalog": cat}), cat) == []
    data["diagnoses"][0]["icd10gm"] = "C99"  # well formed, but no ICD-10-GM code
    data["tumors"][0]["morphology"] = "8888/3"
    loose = ClinicalExtraction.model_validate(data)  # pattern only: accepted, reported
    issues = catalogue_issues(loose, cat)
    assert len(issues) == 2
    assert issues[0].startswith("diagnoses[0]: icd10gm 'C99' is not")
    assert issues[1].startswith("tumors[0]: morphology '8888/3' is not")
    with pytest.raises(ValidationError, match=r"C99"):
        ClinicalExtraction.model_validate(data, context={"catalog": cat})


def test_json_schema_uses_patterns_not_huge_enums():
    schema = json_schema()
    text = json.dumps(schema)
    assert len(text) < 20_000
    defs = schema["$defs"]
    assert defs["Diagnosis"]["properties"]["icd10gm"]["anyOf"][0]["pattern"].startswith("^[A-Z]")
    assertion = defs["Diagnosis"]["properties"]["assertion"]
    assert assertion["enum"] == ["present", "negated", "historical", "suspected"]
    # small closed vocabularies only (assertions, prefixes, stage systems); codes are patterns
    assert all(len(p.get("enum", [])) <= 12 for d in defs.values() for p in d.get("properties", {}).values())
    assert defs["TAxis"]["properties"]["prefix"]["anyOf"][0]["enum"] == ["c", "p", "yp", "r", "a", "u"]
