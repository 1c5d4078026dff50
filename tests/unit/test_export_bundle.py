"""Extraction -> MII transaction Bundle: the mapping, the assertion table, identity, and that the six
annotated development letters' gold exports and validates (fhir.resources' full Bundle model too)."""

from __future__ import annotations

from typing import Any

import pytest

from clinsynth.export.bundle import (
    DATA_ABSENT,
    EARLIER_TUMOR_PROFILE,
    IDENTIFIER_TYPE,
    build_bundle,
    resource_id,
    split_name,
)
from clinsynth.export.config import ExportSection
from clinsynth.export.profiles import BundleValidator
from clinsynth.fhir import conventions as fc
from clinsynth.letters.devset import load_dev_gold
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import load_catalog

CFG = ExportSection(
    formats=["bundles", "ndjson"],
    statuses=["ok", "repaired", "truncated"],
    icd10gm_version="2025",
    ops_version="2025",
)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def validator(catalog):
    return BundleValidator(catalog)


def build(data: dict[str, Any], catalog, doc: str = "spec-1"):
    return build_bundle(doc, ClinicalExtraction.model_validate(data), CFG, catalog)


def by_type(built, rt: str) -> list[dict[str, Any]]:
    return [r for r in built.resources() if r["resourceType"] == rt]


def profile(res: dict[str, Any]) -> str:
    return res["meta"]["profile"][0]


def codes(cc: dict[str, Any], system: str) -> list[str]:
    return [c["code"] for c in cc.get("coding", []) if c["system"] == system]


def test_the_six_dev_letters_export_and_validate(catalog, validator):
    from fhir.resources.R4B.bundle import Bundle

    gold = load_dev_gold()
    assert len(gold) == 6
    for name, extraction in gold.items():
        built = build_bundle(f"grascco:{name}", extraction, CFG, catalog)
        errors = [i for i in validator.validate(built.bundle) if i.severity == "error"]
        assert errors == [], (name, errors)
        Bundle.model_validate(built.bundle)  # the full model, not only the fast validator's verdict
        coded = [d for d in extraction.diagnoses if d.icd10gm]
        icd = [c for r in by_type(built, "Condition") for c in codes(r["code"], fc.ICD10GM)]
        assert sorted(
            {d.icd10gm for d in coded} | {t.icd10gm for t in extraction.tumors if t.icd10gm}
        ) == sorted(set(icd))
        uncoded = [i for i, d in enumerate(extraction.diagnoses) if not d.icd10gm]
        assert [o.index for o in built.omitted if o.kind == "diagnoses"] == uncoded


def test_condition_assertions_follow_the_table(catalog, validator):
    dx = [
        {"text": "A", "icd10gm": "C20", "assertion": "present", "role": "main"},
        {"text": "B", "icd10gm": "C78.7", "assertion": "negated"},
        {"text": "C", "icd10gm": "C67.2", "assertion": "historical"},
        {"text": "D", "icd10gm": "C79.5", "assertion": "suspected"},
    ]
    built = build({"diagnoses": dx}, catalog)
    assert [i for i in validator.validate(built.bundle) if i.severity == "error"] == []
    got = {
        codes(r["code"], fc.ICD10GM)[0]: (
            codes(r.get("clinicalStatus", {}), fc.CONDITION_CLINICAL),
            codes(r["verificationStatus"], fc.CONDITION_VERIFICATION),
        )
        for r in by_type(built, "Condition")
    }
    assert got == {
        "C20": (["active"], ["confirmed"]),
        "C78.7": ([], ["refuted"]),
        "C67.2": (["inactive"], ["confirmed"]),
        "C79.5": (["active"], ["provisional"]),
    }
    [enc] = by_type(built, "Encounter")
    # the stay's diagnoses: present and suspected; the main one is CC with rank 1
    uses = [(d["use"]["coding"][0]["code"], d.get("rank")) for d in enc["diagnosis"]]
    assert uses == [("CC", 1), ("CM", None)]


def test_medication_procedure_and_lab_assertions(catalog, validator):
    meds = [
        {
            "name": "Pantoprazol",
            "atc": "A02BC02",
            "dose": 40,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        },
        {
            "name": "Oxaliplatin",
            "atc": "L01XA03",
            "dose": 85,
            "unit": "mg/m2",
            "route": "i.v.",
            "context": "therapy",
            "regimen": "FOLFOX",
            "cycle": 3,
        },
        {"name": "Metamizol", "atc": "N02BB02", "assertion": "negated", "context": "inpatient"},
        {"name": "Capecitabin", "atc": "L01BC06", "assertion": "historical"},
        {"name": "Fentanyl", "dose": 25, "unit": "µg/h", "assertion": "suspected"},
        {"name": "Penicillin", "atc": "J01CE02", "context": "allergy", "assertion": "suspected"},
    ]
    procs = [
        {"text": "Rektumresektion", "ops": "5-484.55", "date": "2025-03-20"},
        {"text": "Koloskopie", "ops": "1-650", "assertion": "negated"},
        {"text": "Port", "ops": "5-399.5", "assertion": "historical"},
        {"text": "unkodiert"},
    ]
    labs = [
        {"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL", "flag": "low"},
        {"name": "CRP", "loinc": "1988-5", "assertion": "negated"},
        {"name": "Leukozyten", "loinc": "6690-2", "value": 12.0, "unit": "Mio/µl"},
        {"name": "Ferritin", "loinc": "2276-4", "value_text": "normal", "assertion": "suspected"},
    ]
    enc = {"admission": "2025-03-17", "discharge": "2025-03-28", "type": "inpatient"}
    built = build({"encounter": enc, "medications": meds, "procedures": procs, "labs": labs}, catalog)
    assert [i for i in validator.validate(built.bundle) if i.severity == "error"] == []
    statements = by_type(built, "MedicationStatement")
    assert [s["status"] for s in statements] == ["active", "completed", "not-taken", "completed", "unknown"]
    assert profile(statements[1]) == fc.PROFILE["MedicationStatement.systemic_therapy"]
    pan = statements[0]
    assert pan["effectivePeriod"] == {"start": "2025-03-28"}  # discharge medication: from discharge on
    dose = pan["dosage"][0]
    assert dose["timing"]["repeat"]["when"] == ["MORN"] and dose["text"] == "Pantoprazol 40 mg 1-0-0-0"
    assert dose["doseAndRate"][0]["doseQuantity"] == {
        "value": 40.0,
        "unit": "mg",
        "system": fc.UCUM,
        "code": "mg",
    }
    oxa = statements[1]
    assert oxa["dosage"][0]["route"]["coding"][0]["code"] == fc.ROUTE_EDQM["i.v."][0]
    assert {e["url"]: next(v for k, v in e.items() if k != "url") for e in oxa["extension"]} == {
        fc.EXT_REGIMEN: "FOLFOX",
        fc.EXT_CYCLE: 3,
    }
    fen = statements[4]
    assert fen["dosage"][0]["doseAndRate"][0]["doseQuantity"]["code"] == "ug/h"  # µ -> u
    meds_written = by_type(built, "Medication")
    assert {m["code"].get("text") for m in meds_written} == {
        "Pantoprazol",
        "Oxaliplatin",
        "Metamizol",
        "Capecitabin",
        "Fentanyl",
    }
    assert next(m for m in meds_written if m["code"]["text"] == "Fentanyl")["code"] == {"text": "Fentanyl"}
    [allergy] = by_type(built, "AllergyIntolerance")
    assert "meta" not in allergy and allergy["verificationStatus"]["coding"][0]["code"] == "unconfirmed"
    assert [p["status"] for p in by_type(built, "Procedure")] == ["completed", "not-done", "completed"]
    assert [o.index for o in built.omitted if o.kind == "procedures"] == [3]
    obs = by_type(built, "Observation")
    assert [codes(o["code"], fc.LOINC)[0] for o in obs] == ["718-7", "6690-2", "2276-4"]
    hb, leuko, ferritin = obs
    assert hb["status"] == "final" and hb["interpretation"][0]["coding"][0]["code"] == "L"
    # the Laborbefund's effective[x] is a dateTime only: an undated lab is not given the stay's period
    assert "effectivePeriod" not in hb and hb["_effectiveDateTime"]["extension"][0]["url"] == DATA_ABSENT
    # value[x] holds no string: a value the profile cannot hold is kept as written in note (as-text)
    as_text = [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "as-text"}]
    for obs_, text in ((leuko, "12 Mio/µl"), (ferritin, "normal")):  # not UCUM (a warning); text
        assert not any(k.startswith("value") for k in obs_), obs_
        assert [{k: c[k] for k in ("system", "code")} for c in obs_["dataAbsentReason"]["coding"]] == as_text
        assert obs_["note"] == [{"text": text}]
    assert ferritin["status"] == "preliminary"
    assert [(o.kind, o.index) for o in built.omitted if o.kind == "labs"] == [("labs", 1)]
    assert {n.kind for n in built.notes} == {"unit_not_ucum"}


def test_tumour_reuses_its_diagnosis_and_carries_tnm_per_axis(catalog, validator):
    data = {
        "diagnoses": [
            {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main"},
            {"text": "Z.n. Mammakarzinom", "icd10gm": "C50.4", "assertion": "historical"},
        ],
        "tumors": [
            {
                "entity": "Rektumkarzinom",
                "icd10gm": "C20",
                "topography": "C20.9",
                "morphology": "8140/3",
                "histology": "Adenokarzinom",
                "grading": "G2",
                "staging": "current",
                "date": "2025-03-20",
                "tnm": {
                    "t": {"prefix": "yp", "value": "T3c"},
                    "n": {"prefix": "yp", "value": "N1", "nodes": "2/14"},
                    "m": {"prefix": "c", "value": "M0"},
                    "l": "L0",
                    "r": "R0",
                },
                "uicc_stage": "IIIB",
                "stages": [{"system": "Gleason", "value": "3+4=7"}],
                "markers": [
                    {"name": "CEA", "loinc": "2039-6", "value": 3.1, "unit": "ng/mL"},
                    {"name": "Ki-67", "value": 30, "unit": "%"},
                ],
                "ecog": 1,
                "karnofsky": 80,
                "status": "partial_remission",
            },
            {"entity": "Mammakarzinom", "icd10gm": "C50.4", "assertion": "historical"},
            {"entity": "Sarkom", "histology": "Leiomyosarkom"},
        ],
    }
    built = build(data, catalog)
    assert [i for i in validator.validate(built.bundle) if i.severity == "error"] == []
    conds = {codes(r["code"], fc.ICD10GM)[0]: r for r in by_type(built, "Condition")}
    assert sorted(conds) == ["C20", "C50.4"]  # one Condition per disease
    assert profile(conds["C20"]) == fc.PROFILE["Condition.primary_tumor"]
    assert profile(conds["C50.4"]) == EARLIER_TUMOR_PROFILE
    assert codes(conds["C50.4"]["clinicalStatus"], fc.CONDITION_CLINICAL) == ["remission"]
    assert codes(conds["C20"]["bodySite"][0], fc.ICDO3) == ["C20.9"]
    obs = {profile(r).rsplit("/", 1)[-1]: r for r in by_type(built, "Observation")}
    focus = {o["focus"][0]["reference"] for o in obs.values()}
    assert focus == {f"urn:uuid:{conds['C20']['id']}"}
    t = obs["mii-pr-onko-tnm-t-kategorie"]
    assert codes(t["valueCodeableConcept"], fc.UICC) == ["T3c"]
    assert t["code"]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "yp"
    assert t["extension"] == [{"url": fc.EXT_STAGING_KIND, "valueCode": "current"}]
    assert t["effectiveDateTime"] == "2025-03-20"
    n = obs["mii-pr-onko-tnm-n-kategorie"]
    counts = {
        obs[f"mii-pr-onko-anzahl-{k}-lymphknoten"]["valueQuantity"]["value"]
        for k in ("befallene", "untersuchte")
    }
    assert counts == {2, 14} and len(n["hasMember"]) == 2
    grouping = obs["mii-pr-onko-tnm-klassifikation"]
    assert codes(grouping["valueCodeableConcept"], fc.UICC) == ["IIIB"] and len(grouping["hasMember"]) == 4
    assert codes(obs["mii-pr-onko-grading"]["valueCodeableConcept"], fc.GRADING) == ["2"]
    assert codes(obs["mii-pr-onko-residualstatus"]["valueCodeableConcept"], fc.RESIDUAL) == ["R0"]
    assert codes(obs["mii-pr-onko-histologie-icdo3"]["valueCodeableConcept"], fc.ICDO3) == ["8140/3"]
    assert (
        obs["mii-pr-onko-weitere-klassifikationen"]["valueCodeableConcept"]["coding"][0]["system"]
        == (fc.STAGE_SYSTEMS["Gleason"])
    )
    assert codes(obs["ObservationLab"]["code"], fc.LOINC) == ["2039-6"]  # CEA as a lab value
    assert obs["ObservationLab"]["identifier"][0]["value"] == "spec-1/tumors/0/markers/0"
    reasons = sorted((o.index, o.reason.split(":")[0].split(",")[0]) for o in built.omitted)
    assert reasons == [(0, "Karnofsky index"), (0, "marker 1 (Ki-67)"), (2, "no ICD-10-GM code")]


def test_tumour_conditions_carry_the_diagnosis_date_and_the_oncology_categories(catalog, validator):
    """Feststellungsdatum = the shared diagnosis's first-diagnosis date (never the staging date);
    category[onkologie] on every tumour Condition, category[oncology] too on an earlier one."""
    from clinsynth.export.oncology import FESTSTELLUNGSDATUM_EXT

    data = {
        "diagnoses": [
            {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main", "date": "2024-03"},
            {"text": "Z.n. Mammakarzinom", "icd10gm": "C50.4", "assertion": "historical", "date": "2015"},
            {"text": "Asthma", "icd10gm": "J45.9"},
        ],
        "tumors": [
            {"entity": "Rektumkarzinom", "icd10gm": "C20", "date": "2025-03-20", "staging": "current"},
            {"entity": "Mammakarzinom", "icd10gm": "C50.4", "assertion": "historical"},
            {"entity": "Prostatakarzinom", "icd10gm": "C61", "date": "2025-01-10", "staging": "initial"},
        ],
    }
    built = build(data, catalog)
    issues = validator.validate(built.bundle)
    assert [i for i in issues if i.severity == "error"] == []
    conds = {codes(r["code"], fc.ICD10GM)[0]: r for r in by_type(built, "Condition")}
    snomed = {k: [codes(cc, fc.SNOMED) for cc in r.get("category", [])] for k, r in conds.items()}
    assert snomed == {
        "C20": [["55342001"]],
        "C50.4": [["394593009"], ["55342001"]],
        "C61": [["55342001"]],
        "J45.9": [],
    }
    dates = {
        k: [(e["url"], e.get("valueDateTime")) for e in r.get("extension", [])] for k, r in conds.items()
    }
    assert dates["C20"] == [(FESTSTELLUNGSDATUM_EXT, "2024-03")]
    assert dates["C50.4"] == [(FESTSTELLUNGSDATUM_EXT, "2015")]
    assert dates["C61"] == [] and dates["J45.9"] == []  # no diagnosis date: none is made up
    warned = [i.resource for i in issues if i.kind == "no_diagnosis_date"]
    assert warned == [f"Condition/{conds['C61']['id']}"]
    # one CodeableConcept holding both codes would match both category slices: refused
    both = conds["C50.4"]["category"]
    conds["C50.4"]["category"] = [{"coding": [c for cc in both for c in cc["coding"]]}]
    found = [(i.kind, i.path) for i in validator.validate(built.bundle) if i.severity == "error"]
    assert found == [("invariant", "category[0]")]
    conds["C50.4"]["category"] = both
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(built.bundle)


def test_patient_identity_is_deterministic_per_document(catalog):
    data = {"patient": {"sex": "diverse", "name": "Frau Dr. Anna Maria Müller"}}
    a, b, c = build(data, catalog, "doc-a"), build(data, catalog, "doc-a"), build(data, catalog, "doc-b")
    assert a.bundle == b.bundle
    ids_a = {r["id"] for r in a.resources()}
    assert ids_a.isdisjoint({r["id"] for r in c.resources()})
    [pat] = by_type(a, "Patient")
    assert pat["id"] == resource_id("doc-a", "Patient") and pat["identifier"][0]["value"] == "doc-a"
    assert pat["name"][0]["family"] == "Müller" and pat["name"][0]["given"] == ["Anna", "Maria"]
    assert pat["name"][0]["prefix"] == ["Dr."]
    assert pat["gender"] == "other" and pat["_gender"]["extension"][0]["valueCoding"]["code"] == "D"
    assert pat["_birthDate"]["extension"][0]["url"] == DATA_ABSENT
    [enc] = by_type(a, "Encounter")
    assert enc["period"] == {"_start": {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}}
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in a.bundle["entry"])
    assert all(
        e["request"] == {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}
        for e in a.bundle["entry"]
    )


@pytest.mark.parametrize(
    ("name", "family", "given"),
    [
        ("Müller, Anna", "Müller", ["Anna"]),
        ("Herr Franz-Josef Meyr", "Meyr", ["Franz-Josef"]),
        ("Meyr", "Meyr", []),
    ],
)
def test_split_name(name, family, given):
    assert split_name(name)[:2] == (family, given)


def test_required_dates_and_the_lab_identifier_without_dates_in_the_letter(catalog, validator):
    """MII Diagnose needs recordedDate, MII Prozedur performed[x], the Laborbefund its OBI identifier
    (1..1 each): a letter without dates gets data-absent-reason, one with a discharge date gets it."""
    data = {
        "diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main"}],
        "tumors": [{"entity": "Mammakarzinom", "icd10gm": "C50.4", "morphology": "8500/3"}],
        "procedures": [
            {"text": "Rektumresektion", "ops": "5-484.55"},
            {"text": "Koloskopie", "ops": "1-650", "assertion": "negated"},
            {"text": "Port", "ops": "5-399.5", "assertion": "historical"},
        ],
        "labs": [{"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"}],
    }
    absent = {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    built = build(data, catalog, "doc-undated")
    assert [i for i in validator.validate(built.bundle) if i.severity == "error"] == []
    conds = by_type(built, "Condition")
    assert {profile(c).rsplit("/", 1)[-1] for c in conds} == {"Diagnose", "mii-pr-onko-diagnose-primaertumor"}
    assert all("recordedDate" not in c and c["_recordedDate"] == absent for c in conds)
    procs = by_type(built, "Procedure")
    assert [p["_performedDateTime"]["extension"][0]["valueCode"] for p in procs] == [
        "unknown",
        "not-applicable",  # not done: no time it was done
        "unknown",
    ]
    [hb] = [o for o in by_type(built, "Observation") if profile(o).endswith("ObservationLab")]
    [ident] = hb["identifier"]
    assert ident["type"]["coding"] == [{"system": IDENTIFIER_TYPE, "code": "OBI"}]
    assert ident["value"] == "doc-undated/labs/0" and ident["system"] and ident["assigner"]["identifier"]

    dated = build({**data, "encounter": {"admission": "2025-03-17", "discharge": "2025-03-28"}}, catalog)
    assert [i for i in validator.validate(dated.bundle) if i.severity == "error"] == []
    assert {c["recordedDate"] for c in by_type(dated, "Condition")} == {"2025-03-28"}
    present, negated, historical = by_type(dated, "Procedure")
    assert present["performedPeriod"] == {"start": "2025-03-17", "end": "2025-03-28"}  # during the stay
    assert "_performedDateTime" in negated and "_performedDateTime" in historical
    only_discharge = build({**data, "encounter": {"discharge": "2025-03-28"}}, catalog)
    assert {c["recordedDate"] for c in by_type(only_discharge, "Condition")} == {"2025-03-28"}
