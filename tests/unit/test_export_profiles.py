"""clinsynth's profile checks fire on what the MII profiles forbid: each test breaks one valid Bundle in
one place and expects exactly that rule (and kind) to report it; UCUM codes parse by the grammar."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from clinsynth.export.bundle import build_bundle
from clinsynth.export.config import ExportSection
from clinsynth.export.oncology import FESTSTELLUNGSDATUM_EXT
from clinsynth.export.profiles import BundleValidator, Issue
from clinsynth.export.ucum import is_ucum, ucum_code
from clinsynth.fhir import conventions as fc
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import load_catalog

CFG = ExportSection(formats=["bundles"], statuses=["ok"], icd10gm_version="2025", ops_version="2025")
DATA = {
    "encounter": {"admission": "2025-03-17", "discharge": "2025-03-28", "type": "inpatient"},
    "patient": {"sex": "female", "birth_date": "1950-02-01", "name": "Anna Muster"},
    "diagnoses": [
        {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main", "date": "2025-02"},
        {"text": "Lebermetastasen", "icd10gm": "C78.7", "assertion": "negated"},
    ],
    "tumors": [
        {
            "entity": "Rektumkarzinom",
            "icd10gm": "C20",
            "morphology": "8140/3",
            "tnm": {"t": {"prefix": "p", "value": "T3"}, "n": {"value": "N0"}},
        }
    ],
    "procedures": [{"text": "Rektumresektion", "ops": "5-484.55"}],
    "medications": [
        {
            "name": "Pantoprazol",
            "atc": "A02BC02",
            "dose": 40,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        }
    ],
    "labs": [{"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"}],
    "vitals": [{"name": "Puls", "loinc": "8867-4", "value": 80, "unit": "/min"}],
}


@pytest.fixture(scope="module")
def env():
    cat = load_catalog()
    built = build_bundle("spec-7", ClinicalExtraction.model_validate(DATA), CFG, cat)
    return BundleValidator(cat), built.bundle


def first(bundle: dict[str, Any], rt: str, where: Callable[[dict[str, Any]], bool] = lambda r: True):
    return next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rt and where(e["resource"])
    )


def profile_ends(suffix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("meta", {}).get("profile", [""])[0].endswith(suffix)


def errors(validator: BundleValidator, bundle: dict[str, Any]) -> list[Issue]:
    return [i for i in validator.validate(bundle) if i.severity == "error"]


def test_the_unbroken_bundle_is_valid(env):
    validator, bundle = env
    assert errors(validator, bundle) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(res: dict[str, Any]) -> None:
        node: Any = res
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DROP:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return apply


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(res: dict[str, Any]) -> None:
        for change in changes:
            change(res)

    return apply


_DROP = object()
CASES = [
    # (resource type, selector, change, expected kind, words in the message)
    (
        "Condition",
        profile_ends("Diagnose"),
        _set("code.coding.0.version", _DROP),
        "required",
        "ICD-10-GM version",
    ),
    (
        "Condition",
        profile_ends("Diagnose"),
        _set("code.coding.0.code", "C2O"),
        "code_system",
        "well-formed icd10gm",
    ),
    (
        "Condition",
        profile_ends("Diagnose"),
        _set("code.coding.0.system", fc.ICD10_WHO),
        "required",
        "exactly one ICD-10-GM",
    ),
    (
        "Condition",
        profile_ends("Diagnose"),
        _set("clinicalStatus", {"coding": [{"system": fc.CONDITION_CLINICAL, "code": "active"}]}),
        "invariant",
        "absent exactly when",
    ),
    (
        "Condition",
        profile_ends("primaertumor"),
        _set("verificationStatus.coding.0.code", "sure"),
        "value_set",
        "condition-ver-status",
    ),
    (
        "Condition",
        profile_ends("primaertumor"),
        _set("subject", {"reference": "urn:uuid:nowhere"}),
        "reference",
        "names no entry",
    ),
    # the cardinalities of the MII profiles (kds-testdata): recordedDate, performed[x], the lab identifier
    ("Condition", profile_ends("Diagnose"), _set("recordedDate", _DROP), "required", "recordedDate"),
    ("Condition", profile_ends("primaertumor"), _set("recordedDate", _DROP), "required", "recordedDate"),
    (  # an extension that is not data-absent-reason does not stand in for the date
        "Condition",
        profile_ends("Diagnose"),
        _both(
            _set("recordedDate", _DROP),
            _set("_recordedDate", {"extension": [{"url": "http://example.org/why", "valueCode": "x"}]}),
        ),
        "required",
        "recordedDate",
    ),
    # the newer onko primaertumor: Feststellungsdatum (a date, at most one), category[onkologie] 1..1
    (
        "Condition",
        profile_ends("primaertumor"),
        _set("extension.0", {"url": FESTSTELLUNGSDATUM_EXT, "valueString": "Frühjahr 2025"}),
        "required",
        "Feststellungsdatum as valueDateTime",
    ),
    (
        "Condition",
        profile_ends("primaertumor"),
        _set("extension", [{"url": FESTSTELLUNGSDATUM_EXT, "valueDateTime": d} for d in ("2025-02", "2024")]),
        "invariant",
        "at most one Feststellungsdatum",
    ),
    ("Condition", profile_ends("primaertumor"), _set("category", _DROP), "required", "category 55342001"),
    (
        "Condition",
        profile_ends("primaertumor"),
        _set("category.0.coding.0.code", "394593009"),
        "required",
        "category 55342001",
    ),
    ("Procedure", lambda r: True, _set("performedPeriod", _DROP), "required", "performed[x]"),
    ("Observation", profile_ends("ObservationLab"), _set("identifier", _DROP), "required", "type OBI"),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("identifier.0.type.coding.0.code", "FILL"),
        "required",
        "type OBI",
    ),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("identifier.0.assigner", _DROP),
        "required",
        "assigner",
    ),
    ("Observation", profile_ends("ObservationLab"), _set("identifier.0.value", _DROP), "required", "value"),
    ("Procedure", lambda r: True, _set("status", "done"), "value_set", "EventStatus"),
    ("Procedure", lambda r: True, _set("code.coding.0.code", "5484"), "code_system", "well-formed ops"),
    (
        "MedicationStatement",
        lambda r: True,
        _set("dosage.0.doseAndRate.0.doseQuantity.code", "Mio. IE"),
        "code_system",
        "not a UCUM code",
    ),
    (
        "MedicationStatement",
        lambda r: True,
        _set("dosage.0.timing.repeat.when", ["MORNING"]),
        "value_set",
        "EventTiming",
    ),
    ("MedicationStatement", lambda r: True, _set("effectivePeriod", _DROP), "required", "effective[x]"),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("_effectiveDateTime", _DROP),
        "required",
        "effective[x]",
    ),
    (  # the Laborbefund's value[x] is Quantity, CodeableConcept, Range or Ratio only
        "Observation",
        profile_ends("ObservationLab"),
        _both(_set("valueQuantity", _DROP), _set("valueString", "10.2 g/dL")),
        "type",
        "value[x] only",
    ),
    (  # ... and its effective[x] a dateTime only
        "Observation",
        profile_ends("ObservationLab"),
        _both(_set("_effectiveDateTime", _DROP), _set("effectivePeriod", {"start": "2025-03-17"})),
        "type",
        "effective[x] only",
    ),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _both(_set("valueQuantity", _DROP), _set("valueCodeableConcept", {"text": "normal"})),
        "required",
        "coded valueCodeableConcept",
    ),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("valueQuantity.system", fc.LOINC),
        "required",
        "UCUM quantity",
    ),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("category.0.coding", [{"system": fc.OBSERVATION_CATEGORY, "code": "laboratory"}]),
        "required",
        "26436-6",
    ),
    (
        "Observation",
        profile_ends("ObservationLab"),
        _set("dataAbsentReason", {"text": "x"}),
        "invariant",
        "obs-6",
    ),
    (
        "Observation",
        profile_ends("vitalsigns"),
        _set(
            "code.coding",
            [{"system": fc.LOINC, "code": "8867-4"}, {"system": "http://example.org/codes", "code": "x"}],
        ),
        "code_system",
        "unknown code system",
    ),
    (
        "Observation",
        profile_ends("tnm-t-kategorie"),
        _set("valueCodeableConcept.coding.0.code", "T9"),
        "value_set",
        "TNM T category",
    ),
    (
        "Observation",
        profile_ends("tnm-t-kategorie"),
        _set("code.extension.0.valueCodeableConcept.coding.0.code", "x"),
        "value_set",
        "TNM prefix",
    ),
    (
        "Observation",
        profile_ends("histologie-icdo3"),
        _set("valueCodeableConcept.coding.0.code", "8140"),
        "code_system",
        "morphology",
    ),
    ("Patient", lambda r: True, _set("identifier.0.type.coding.0.code", "XX"), "required", "MR identifier"),
    ("Encounter", lambda r: True, _set("period.end", "2025-03-01"), "invariant", "before it starts"),
    ("Encounter", lambda r: True, _set("class.code", "INPATIENT"), "value_set", "ActEncounterCode"),
    (
        "Patient",
        lambda r: True,
        _set("meta.profile", ["http://example.org/Patient"]),
        "profile",
        "known Patient",
    ),
]


@pytest.mark.parametrize(
    ("rt", "select", "change", "kind", "words"), CASES, ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CASES]
)
def test_one_broken_element_is_reported_with_its_rule(env, rt, select, change, kind, words):
    validator, valid = env
    bundle = copy.deepcopy(valid)
    res = first(bundle, rt, select)
    change(res)
    found = errors(validator, bundle)
    assert found, "the broken element was not reported"
    assert {i.kind for i in found} == {kind}, found
    assert all(i.resource == f"{rt}/{res['id']}" for i in found)
    assert any(words in i.message for i in found), found


def test_a_primary_tumour_without_diagnosis_date_is_a_warning_not_an_error(env):
    """The letter gave no diagnosis date: nothing is made up; the record is exported and counted."""
    validator, valid = env
    bundle = copy.deepcopy(valid)
    res = first(bundle, "Condition", profile_ends("primaertumor"))
    del res["extension"]
    assert errors(validator, bundle) == []
    warned = [i for i in validator.validate(bundle) if i.kind == "no_diagnosis_date"]
    assert [(i.severity, i.resource) for i in warned] == [("warning", f"Condition/{res['id']}")]


def test_fhir_resources_rejects_what_is_not_fhir(env):
    validator, valid = env
    bundle = copy.deepcopy(valid)
    first(bundle, "Patient")["birthDate"] = "1950-13-45"
    first(bundle, "Observation", profile_ends("ObservationLab"))["valueQuantity"]["value"] = "ten"
    # fhir.resources types a code but knows no value set: "femme" is the profile checks' to find
    first(bundle, "Encounter")["status"] = "femme"
    kinds = {(i.kind, i.resource.split("/")[0]) for i in errors(validator, bundle)}
    assert kinds == {
        ("fhir", "Patient"),
        ("fhir", "Observation"),
        ("required", "Observation"),
        ("value_set", "Encounter"),
    }


def test_references_must_name_the_right_type_and_a_tumour(env):
    validator, valid = env
    bundle = copy.deepcopy(valid)
    enc = first(bundle, "Encounter")
    first(bundle, "Procedure")["subject"] = {"reference": f"urn:uuid:{enc['id']}"}
    diagnose = first(bundle, "Condition", profile_ends("Diagnose"))
    first(bundle, "Observation", profile_ends("tnm-t-kategorie"))["focus"] = [
        {"reference": f"urn:uuid:{diagnose['id']}"}
    ]
    found = errors(validator, bundle)
    assert {i.kind for i in found} == {"reference"}
    assert sorted(i.message.split(",")[0] for i in found) == [
        "focus must name a primary-tumour Condition",
        "subject must name a Patient",
    ]


def test_bundle_rules(env):
    validator, valid = env
    bundle = copy.deepcopy(valid)
    bundle["entry"][2]["request"]["method"] = "POST"
    bundle["entry"].append(copy.deepcopy(bundle["entry"][0]))  # a second Patient, the same fullUrl
    msgs = [i.message for i in errors(validator, bundle) if i.kind == "bundle"]
    assert any("is not PUT" in m for m in msgs) and any("appears twice" in m for m in msgs)
    assert any("one Patient per Bundle, found 2" in m for m in msgs)


def test_codes_the_catalogue_lacks_are_warnings(env):
    validator, valid = env
    bundle = copy.deepcopy(valid)
    first(bundle, "Condition", profile_ends("Diagnose"))["code"]["coding"][0]["code"] = "F29"
    found = validator.validate(bundle)
    assert [(i.kind, i.severity) for i in found] == [("not_in_catalogue", "warning")]


@pytest.mark.parametrize(
    "code",
    [
        "mg",
        "10*3/uL",
        "g/dL",
        "%",
        "mm[Hg]",
        "/min",
        "kg/m2",
        "Cel",
        "1",
        "mL/min/{1.73_m2}",
        "[IU]/m2",
        "ug/h",
        "mmol/L",
        "(mg/kg)/d",
        "mg.kg-1",
        "{Tbl}",
        "10*9/L",
        "fL",
    ],
)
def test_ucum_accepts(code):
    assert is_ucum(code)


@pytest.mark.parametrize(
    "code", ["", "Mio. IE", "AUC", "{Stück}", "10*", "mg/", "pack-years", "mgg", " mg", "kg m2"]
)
def test_ucum_rejects(code):
    assert not is_ucum(code)


def test_units_as_written_map_to_ucum():
    assert ucum_code("µg") == "ug" and ucum_code("IE") == "[IU]" and ucum_code("IE/m2") == "[IU]/m2"
    assert ucum_code("ml") == "mL" and ucum_code("µg/kg") == "ug/kg" and ucum_code("Mio. IE") is None
