"""Ingest: every kind of bad input is quarantined with a reason, nothing vanishes, and the
fast validator rejects exactly what fhir.resources rejects."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from clinsynth.fhir import conventions as fc
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.pipeline import IngestError, Options, ingest
from clinsynth.ingest.sources import read_bundles, read_ndjson
from clinsynth.records import iter_patients
from tests import fhir_samples as fs

OPTS = Options(as_of="2026-01-01")


def write_ndjson(folder: Path, resources: list, extra_lines: dict[str, list[bytes]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rt, lines in (extra_lines or {}).items():
        by_type.setdefault(rt, []).extend(lines)
    for rt, lines in by_type.items():
        (folder / f"{rt}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def quarantine(out: Path) -> list[dict]:
    return [orjson.loads(x) for x in (out / "quarantine.ndjson").read_bytes().splitlines()]


def accounted(report: dict) -> bool:
    repeats = sum(report["identical_repeats_by_type"].values())
    return report["resources_read"] == (
        report["resources_ok"] + report["resources_quarantined"] + report["resources_ignored"] + repeats
    )


def test_valid_patient_round_trips_into_records(tmp_path):
    src = write_ndjson(tmp_path / "in", fs.one_patient())
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    assert report["resources_quarantined"] == 0 and report["rows"] == {
        "patients": 1,
        "encounters": 1,
        "facts": 4,
    }
    [rec] = list(iter_patients(tmp_path / "out" / "records"))
    facts = {f["category"]: f for f in rec.encounters["e1"].facts}
    assert facts["diagnosis"]["code"] == "C20" and facts["diagnosis"]["role"] == "main"
    assert facts["lab"]["value_num"] == 10.2 and facts["lab"]["unit"] == "g/dL"
    assert facts["procedure"]["code"] == "5-484.55"
    med = facts["medication"]
    assert med["code"] == "A02BC02" and med["value_num"] == 40 and rec.extra(med)["schedule"] == [1, 0, 0, 0]


def test_each_kind_of_bad_input_is_quarantined_with_file_line_and_reason(tmp_path):
    good = fs.one_patient()
    bad = [
        fs.condition("c-dangling", pid="nobody", eid=None),  # dangling subject
        fs.lab("o-dangling-enc", eid="no-such-encounter"),  # dangling encounter
        fs.condition("c-system", system="http://example.org/my-codes", eid=None),  # unknown code system
        fs.condition("c-typo", system="http://fhir.de/CodeSystem/bfarm/icd10gm", eid=None),  # near miss
        fs.encounter("e-backwards", start="2024-05-10", end="2024-05-01"),  # end before start
        fs.condition("c-before-birth", onset="1940-01-01", eid=None),  # before the patient's birth
        fs.lab("o-future", when="2030-01-01"),  # after the reference date
    ]
    invalid = copy.deepcopy(fs.lab("o-invalid"))
    invalid.pop("status")
    src = write_ndjson(
        tmp_path / "in", good + bad + [invalid], {"Observation": [b'{"resourceType": "Observ']}
    )
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    q = {(e["id"] or f"line{e['line']}"): e for e in quarantine(tmp_path / "out")}
    assert q["c-dangling"]["reason"] == "dangling_reference"
    assert (
        q["o-dangling-enc"]["reason"] == "dangling_reference"
        and "Encounter/no-such-encounter" in q["o-dangling-enc"]["detail"]
    )
    assert q["c-system"]["reason"] == q["c-typo"]["reason"] == "unknown_code_system"
    assert (
        q["e-backwards"]["reason"] == "impossible_date" and "before its start" in q["e-backwards"]["detail"]
    )
    assert q["c-before-birth"]["reason"] == "impossible_date" and "birth" in q["c-before-birth"]["detail"]
    assert q["o-future"]["reason"] == "impossible_date" and "reference date" in q["o-future"]["detail"]
    assert q["o-invalid"]["reason"] == "invalid_resource" and "status" in q["o-invalid"]["detail"]
    malformed = next(e for e in q.values() if e["reason"] == "malformed_json")
    assert malformed["source"] == "Observation.ndjson" and malformed["line"] == 5  # 4 good/bad lines, then it
    assert report["quarantined_by_reason"] == {
        "dangling_reference": 2,
        "unknown_code_system": 2,
        "impossible_date": 3,
        "invalid_resource": 1,
        "malformed_json": 1,
    }
    assert report["resources_ok"] == len(good) and accounted(report)


def test_conflicting_duplicate_is_quarantined_identical_repeat_is_counted(tmp_path):
    res = fs.one_patient()
    changed = fs.lab(value=99.0)
    src = write_ndjson(tmp_path / "in", [*res, fs.lab(), changed])
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    assert report["identical_repeats_by_type"] == {"Observation": 1}
    assert [e["reason"] for e in quarantine(tmp_path / "out")] == ["duplicate_id"]
    assert accounted(report)


def test_strict_stops_at_the_first_bad_record_naming_it(tmp_path):
    src = write_ndjson(tmp_path / "in", fs.one_patient(), {"Condition": [b"not json"]})
    with pytest.raises(IngestError, match=r"Condition.ndjson:2: malformed_json"):
        ingest(read_ndjson(src), tmp_path / "out", Options(as_of="2026-01-01", strict=True))


def test_workers_give_the_same_result_as_one_process(tmp_path):
    resources = []
    for i in range(60):
        resources += [
            fs.patient(f"p{i}"),
            fs.encounter(f"e{i}", f"p{i}"),
            fs.lab(f"o{i}", f"p{i}", f"e{i}", i / 3),
        ]
    resources.append(fs.lab("dangling", "p-none", "e0"))
    src = write_ndjson(tmp_path / "in", resources)
    one = ingest(read_ndjson(src), tmp_path / "one", OPTS, workers=1, chunk=7)
    files = sorted(p.name for p in (tmp_path / "one" / "records").iterdir())
    # ingest.workers and ingest.chunk are operational (not in the stage id): the records must not change
    for name, workers, chunk in (("two", 2, 7), ("inline", 0, 7), ("big-chunks", 2, 1000)):  # 0: in-process
        other = ingest(read_ndjson(src), tmp_path / name, OPTS, workers=workers, chunk=chunk)
        for key in ("read_by_type", "ok_by_type", "quarantined_by_reason", "rows"):
            assert one[key] == other[key]
        for f in files:  # byte for byte: records do not depend on which worker took which chunk
            assert (tmp_path / "one" / "records" / f).read_bytes() == (
                tmp_path / name / "records" / f
            ).read_bytes()


def baseline_rejects(resource) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, KeyError, ValueError, TypeError):
        return True
    return False


def test_fast_validator_rejects_exactly_what_fhir_resources_rejects():
    samples = fs.one_patient()
    mutated = [(name, r) for s in samples for name, r in fs.mutations(s)]
    assert len(mutated) > 20
    v = FastValidator()
    for s in samples:  # warm: every valid shape is now cached, so mutants hit the fast path
        assert v.validate(s) is None
    verdicts = {}
    for name, r in mutated * 2:  # twice: the second round runs on cached shapes and leaves
        try:
            fast = v.validate(r) is not None
        except Exception as exc:
            pytest.fail(f"{name}: the fast validator raised {exc!r}")
        verdicts.setdefault(name, set()).add(fast)
        assert fast == baseline_rejects(r), f"{name}: fast={fast}, baseline={baseline_rejects(r)}"
    assert all(len(s) == 1 for s in verdicts.values())
    assert v.stats.fast > len(mutated) // 4  # the fast path really ran on the valid variants
    assert any(not rejected for (rejected,) in verdicts.values()) and any(r for (r,) in verdicts.values())


PZN = "http://fhir.de/CodeSystem/ifa/pzn"


def _codings(res: dict, path: str, codings: list[tuple[str, str]]) -> dict:
    res = copy.deepcopy(res)
    res[path] = {"coding": [{"system": s, "code": c} for s, c in codings]}
    return res


def test_ingest_prefers_the_schema_system_and_keeps_foreign_systems(tmp_path):
    """A code keeps its own system in the record; with several codings the schema's system wins.

    The sampler puts a code into a schema slot (ICD-10-GM, OPS, ATC, LOINC) only when `system`
    is that slot's system, so a SNOMED-only procedure must never come out as if it were OPS.
    """
    snomed, icd, ops, atc, loinc = fc.SNOMED, fc.ICD10GM, fc.OPS, fc.ATC, fc.LOINC
    medication = {
        "resourceType": "Medication",
        "id": "m-snomed",
        "code": {"coding": [{"system": snomed, "code": "372817009", "display": "Doxorubicin"}]},
    }
    by_ref = fs.medication_statement("ms-ref")
    del by_ref["medicationCodeableConcept"]
    by_ref["medicationReference"] = {"reference": "Medication/m-snomed"}
    resources = [
        fs.patient(),
        fs.encounter(),
        _codings(fs.condition(), "code", [(snomed, "363351006"), (icd, "C20")]),
        _codings(fs.condition("c2"), "code", [(snomed, "38341003")]),
        _codings(fs.procedure("pr-both"), "code", [(snomed, "54884007"), (ops, "5-484.55")]),
        _codings(fs.procedure("pr-snomed"), "code", [(snomed, "233573008")]),
        _codings(fs.medication_statement("ms-both"), "medicationCodeableConcept",
                 [(PZN, "01234567"), (atc, "A02BC02")]),
        _codings(fs.medication_statement("ms-pzn"), "medicationCodeableConcept", [(PZN, "07654321")]),
        medication,
        by_ref,
        _codings(fs.lab("o-both"), "code", [(snomed, "271026005"), (loinc, "718-7")]),
        _codings(fs.lab("o-snomed"), "code", [(snomed, "271026005")]),
    ]  # fmt: skip
    report = ingest(read_ndjson(write_ndjson(tmp_path / "in", resources)), tmp_path / "out", OPTS)
    assert report["resources_quarantined"] == 0
    [rec] = list(iter_patients(tmp_path / "out" / "records"))
    got = {f["resource_id"]: (f["category"], f["system"], f["code"]) for f in rec.all_facts()}
    assert got == {
        "c1": ("diagnosis", icd, "C20"),
        "c2": ("diagnosis", snomed, "38341003"),
        "pr-both": ("procedure", ops, "5-484.55"),
        "pr-snomed": ("procedure", snomed, "233573008"),
        "ms-both": ("medication", atc, "A02BC02"),
        "ms-pzn": ("medication", PZN, "07654321"),
        "ms-ref": ("medication", snomed, "372817009"),
        "o-both": ("lab", loinc, "718-7"),
        "o-snomed": ("lab", snomed, "271026005"),
    }


def test_a_blood_pressure_panel_becomes_one_vital_per_component(tmp_path):
    panel = fs.lab("bp")
    panel["meta"]["profile"] = ["http://hl7.org/fhir/StructureDefinition/bp"]
    panel["category"][0]["coding"][0]["code"] = "vital-signs"
    panel["code"] = {"coding": [{"system": fc.LOINC, "code": "85354-9"}]}
    del panel["valueQuantity"]
    panel["component"] = [
        {
            "code": {"coding": [{"system": fc.LOINC, "code": code}]},
            "valueQuantity": {"value": v, "unit": "mmHg", "system": fc.UCUM, "code": "mm[Hg]"},
        }
        for code, v in (("8480-6", 135), ("8462-4", 85))
    ]
    src = write_ndjson(tmp_path / "in", [fs.patient(), fs.encounter(), panel])
    assert ingest(read_ndjson(src), tmp_path / "out", OPTS)["resources_quarantined"] == 0
    [rec] = list(iter_patients(tmp_path / "out" / "records"))
    got = sorted((f["category"], f["code"], f["value_num"], f["unit"]) for f in rec.all_facts())
    assert got == [("vital", "8462-4", 85, "mm[Hg]"), ("vital", "8480-6", 135, "mm[Hg]")]


SHARED = Path(__file__).resolve().parents[3] / "shared"
MII = SHARED / "external" / "mii-testdata" / "kds-testdata" / "fsh-generated" / "resources"


@pytest.mark.skipif(not MII.is_dir(), reason=f"MII test data not found at {MII} (../shared absent)")
def test_mii_test_bundles_ingest_without_quarantining_valid_fhir(tmp_path):
    report = ingest(read_bundles(MII), tmp_path / "out", Options(as_of="2026-11-01"))
    q = quarantine(tmp_path / "out")
    for entry in q:  # anything quarantined must be invalid FHIR by fhir.resources' own verdict
        assert entry["reason"] == "invalid_resource", entry
    assert report["resources_ok"] > 450 and accounted(report)
    onko = next(
        r
        for r in iter_patients(tmp_path / "out" / "records")
        if r.patient_id == "mii-exa-test-data-onko-patient-1"
    )
    facts = onko.all_facts()
    codes = {(f["category"], f["code"]) for f in facts}
    assert ("diagnosis", "C56") in codes
    assert ("procedure", "5-547.0") in codes
    assert {("tnm_t", "T3c"), ("uicc_stage", "IVB"), ("grading", "3"), ("histology", "8441/3")} <= codes
    assert {("medication", "L01CD01"), ("medication", "L01XA02"), ("medication", "L01XK02")} <= codes
    t = next(f for f in facts if f["category"] == "tnm_t")
    assert onko.extra(t)["prefix"] == "p"
    # v2 categories from the MII oncology profiles, each tied to its primary tumour
    assert {("tnm_l", "L1"), ("tnm_v", "V0"), ("tnm_pn", "Pn0"), ("tnm_r", "R0"), ("ecog", "1")} <= codes
    assert {("metastasis", "HEP"), ("stage_other", "IVB"), ("tumor_status", "V")} <= codes
    tumour = "mii-exa-test-data-onko-diagnose-1"
    by_cat = {}
    for f in facts:
        by_cat.setdefault(f["category"], []).append(f)
    for cat in ("tnm_t", "tnm_l", "tnm_r", "metastasis", "stage_other", "lymph_nodes", "radiotherapy"):
        assert by_cat[cat] and all(onko.extra(f).get("tumor") == tumour for f in by_cat[cat]), cat
    nodes = {onko.extra(f)["nodes"]: f["value_num"] for f in by_cat["lymph_nodes"]}
    assert nodes == {"positive": 2, "examined": 23}
    markers = {f["code"]: f for f in by_cat["marker_status"]}
    assert markers["40556-3"]["value_num"] == 85 and markers["40556-3"]["value_str"] == "LA6576-8"
    rt = {f["code"]: onko.extra(f) for f in by_cat["radiotherapy"]}
    assert rt["8-522.6"]["total_gy"] == 50 and rt["8-522.6"]["fraction_gy"] == 2
    assert "total_gy" not in rt["8-531"] and rt["8-531"]["dose_unit"]  # radioiodine: an activity, not Gy
    vitals = {f["code"] for r in iter_patients(tmp_path / "out" / "records") for f in r.all_facts()
              if f["category"] == "vital"}  # fmt: skip
    assert {"8480-6", "8462-4", "8867-4", "29463-7"} <= vitals  # the BP panel as systolic + diastolic


def test_worker_byte_ranges_keep_file_and_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [orjson.dumps(fs.patient(f"p{i}")) for i in range(5)]
    lines.insert(2, b"")  # a blank line still counts
    lines.insert(4, b'{"resourceType": "Patient", "id": ')  # line 5
    (folder / "Patient.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest(read_ndjson(folder), tmp_path / "out", OPTS, workers=2, chunk=1)
    [bad] = quarantine(tmp_path / "out")
    assert (bad["source"], bad["line"], bad["reason"]) == ("Patient.ndjson", 5, "malformed_json")
    assert report["rows"]["patients"] == 5 and accounted(report)


def test_patients_and_encounters_without_an_id_are_quarantined_not_fatal(tmp_path):
    anonymous = [fs.patient("p-x"), fs.encounter("e-x", "p1")]
    for r in anonymous:
        r.pop("id")
    src = write_ndjson(tmp_path / "in", [*fs.one_patient(), *anonymous])
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    q = quarantine(tmp_path / "out")
    assert sorted(e["resource_type"] for e in q) == ["Encounter", "Patient"]
    assert {e["reason"] for e in q} == {"extraction_failed"}
    assert all("without an id" in e["detail"] for e in q)
    assert report["rows"]["patients"] == 1 and accounted(report)


def test_a_death_before_birth_is_an_impossible_date(tmp_path):
    ok = fs.patient("p-ok", deceasedDateTime="2020-01-01")
    backwards = fs.patient("p-backwards", birth="1980-05-01", deceasedDateTime="1979-12-31")
    src = write_ndjson(tmp_path / "in", [ok, backwards])
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    q = {e["id"]: e for e in quarantine(tmp_path / "out")}
    assert set(q) == {"p-backwards"} and q["p-backwards"]["reason"] == "impossible_date"
    assert "before birthDate" in q["p-backwards"]["detail"]
    assert report["resources_read"] == report["resources_ok"] + report["resources_quarantined"] == 2


def test_an_id_longer_than_fhir_allows_is_rejected_with_the_rule(tmp_path):
    long_id = "p" * 65
    src = write_ndjson(tmp_path / "in", [fs.patient("p-ok"), fs.patient(long_id)])
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    (entry,) = quarantine(tmp_path / "out")
    assert entry["reason"] == "invalid_resource" and "id rule" in entry["detail"]
    assert report["resources_read"] == report["resources_ok"] + report["resources_quarantined"] == 2


def _urn_transaction() -> dict:
    """A transaction Bundle as FHIR clients write it: no ids, references to urn:uuid fullUrls."""
    pat, enc, cond = fs.patient("x"), fs.encounter("x", "x"), fs.condition("x", "x", "x")
    enc.pop("diagnosis", None)
    for r in (pat, enc, cond):
        r.pop("id")
    urls = {"Patient": "urn:uuid:6b0e4bde-0a3f-4f39-9d0c-2f1b1d2b0a01",
            "Encounter": "urn:uuid:6b0e4bde-0a3f-4f39-9d0c-2f1b1d2b0a02"}  # fmt: skip
    enc["subject"]["reference"] = cond["subject"]["reference"] = urls["Patient"]
    cond["encounter"]["reference"] = urls["Encounter"]
    entries = [{"fullUrl": urls.get(r["resourceType"], "urn:uuid:6b0e4bde-0a3f-4f39-9d0c-2f1b1d2b0a03"),
                "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
               for r in (pat, enc, cond)]  # fmt: skip
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_transaction_bundles_with_urn_uuid_references_are_resolved_inside_the_bundle(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tx.json").write_bytes(orjson.dumps(_urn_transaction()))
    report = ingest(read_bundles(folder), tmp_path / "out", OPTS)
    assert quarantine(tmp_path / "out") == []
    assert report["resources_ok"] == 3 and report["resources_quarantined"] == 0


def test_a_bundle_inside_a_bundle_is_unpacked_and_an_untyped_entry_is_quarantined_once(tmp_path):
    entries = [{"resource": r} for r in fs.one_patient()]
    inner = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    outer = {"resourceType": "Bundle", "type": "collection",
             "entry": [{"resource": inner}, {"resource": {"id": "no-type"}}]}  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "nested.json").write_bytes(orjson.dumps(outer))
    report = ingest(read_bundles(folder), tmp_path / "out", OPTS)
    q = quarantine(tmp_path / "out")
    assert len(q) == 1 and "entry[1]" in str(q[0].get("location")), q
    assert report["resources_ok"] == len(fs.one_patient())
    assert report["resources_read"] == report["resources_ok"] + report["resources_quarantined"]


def test_a_reference_to_another_server_is_never_linked_to_a_local_id(tmp_path):
    foreign = fs.condition("c-foreign", eid=None)
    foreign["subject"]["reference"] = "https://other.example/fhir/Patient/p1"
    src = write_ndjson(tmp_path / "in", [*fs.one_patient(), foreign])
    report = ingest(read_ndjson(src), tmp_path / "out", OPTS)
    q = {e["id"]: e for e in quarantine(tmp_path / "out")}
    assert set(q) == {"c-foreign"} and q["c-foreign"]["reason"] == "dangling_reference"
    assert "https://other.example/fhir/Patient/p1" in q["c-foreign"]["detail"]
    assert report["resources_read"] == report["resources_ok"] + report["resources_quarantined"]
