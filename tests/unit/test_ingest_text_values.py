"""A lab value the MII Laborbefund cannot hold as value[x] (text, or a number whose unit is not UCUM) is
exported as dataAbsentReason as-text with the value in `note`; ingest reads it back, on the generic path
and through extraction plans alike."""

from __future__ import annotations

import orjson
import pytest

from clinsynth.export.bundle import build_bundle
from clinsynth.export.clinical import number_text
from clinsynth.export.config import ExportSection
from clinsynth.export.profiles import BundleValidator
from clinsynth.ingest.extract import extract
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import load_catalog
from tests import fhir_samples as fs
from tests.unit.test_plans import check_lines, property_mismatches

CFG = ExportSection(formats=["bundles"], statuses=["ok"], icd10gm_version="2025", ops_version="2025")
LABS = [
    {"name": "HBs-Ag", "loinc": "5196-1", "value_text": "negativ"},
    {"name": "Erythrozyten", "loinc": "789-8", "value": 4.35, "unit": "Mio/µl"},  # not UCUM
    {"name": "Thrombozyten", "loinc": "777-3", "value": 1234567.0, "unit": "pro µl"},  # unit of 2 words
    {"name": "Leukozyten", "loinc": "6690-2", "value": 12.5},  # no unit
    {"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"},  # a UCUM quantity
]
#: what ingest gives back per lab: (value_num, unit, value_str)
BACK = [
    (None, None, "negativ"),
    (4.35, "Mio/µl", None),
    (None, None, "1234567 pro µl"),  # a unit of several words stays text, every digit kept
    (12.5, None, None),
    (10.2, "g/dL", None),
]


@pytest.fixture(scope="module")
def observations():
    cat = load_catalog()
    extraction = ClinicalExtraction.model_validate({"labs": LABS})
    built = build_bundle("doc-text", extraction, CFG, cat)
    assert [i for i in BundleValidator(cat).validate(built.bundle) if i.severity == "error"] == []
    return [r for r in built.resources() if r["resourceType"] == "Observation"]


def test_text_lab_values_round_trip_through_ingest(observations):
    rows = [extract(r).rows[0] for r in observations]
    assert [r["category"] for r in rows] == ["lab"] * len(LABS)
    assert [(r["value_num"], r["unit"], r["value_str"]) for r in rows] == BACK
    assert [r["code"] for r in rows] == [lab["loinc"] for lab in LABS]


def test_plans_read_text_values_as_the_extractor_does(observations):
    # the second HBs-Ag differs only in its text: a plan learnt from the first must not copy it wrongly
    lines = [orjson.dumps(r) for r in observations]
    other = orjson.loads(lines[0])
    other["id"], other["note"] = "other", [{"text": "7.5 mg/l"}]
    lines.append(orjson.dumps(other))
    hits, _ = check_lines(lines)
    assert hits > 0
    assert property_mismatches(lines, seed=5, per_leaf=4) == []
    assert extract(other).rows[0]["value_num"] == 7.5


def test_a_note_is_a_value_only_under_as_text():
    """A comment beside a value, or a note without as-text, is not the value."""
    commented = fs.lab()
    commented["note"] = [{"text": "hämolytisch"}]
    row = extract(commented).rows[0]
    assert (row["value_num"], row["value_str"]) == (10.2, None)
    unknown = fs.lab()
    del unknown["valueQuantity"]
    unknown["dataAbsentReason"] = {"coding": [{"code": "unknown"}]}
    unknown["note"] = [{"text": "3.1"}]
    row = extract(unknown).rows[0]
    assert (row["value_num"], row["value_str"]) == (None, None)
    string = fs.lab()
    del string["valueQuantity"]
    string["valueString"] = "positiv"
    assert extract(string).rows[0]["value_str"] == "positiv"


@pytest.mark.parametrize(
    ("value", "text"), [(245000.0, "245000"), (5.2, "5.2"), (1e-05, "1e-05"), (-3.0, "-3")]
)
def test_numbers_are_written_with_every_digit(value, text):
    assert number_text(value) == text
    assert float(text) == value
