"""export_records: every record is exported, skipped or rejected, and the report and files say which.

A bad record (invalid parse, a status not exported, not schema v2, a duplicate id, a Bundle that
fails validation) is counted and named and never stops the run; only validated Bundles are written.
"""

from __future__ import annotations

import orjson
import pytest

from clinsynth.artifacts.predictions import prediction
from clinsynth.core.atomic import read_json, read_jsonl
from clinsynth.export.bundle import bundle_file_name
from clinsynth.export.config import ExportSection
from clinsynth.export.report import ISSUES, bundles_dir, ndjson_dir, report_path
from clinsynth.export.run import TIMING_KEYS, export_records

GOOD = {
    "encounter": {"admission": "2025-03-17", "discharge": "2025-03-28"},
    "diagnoses": [{"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main"}],
    "medications": [
        {"name": "Pantoprazol", "atc": "A02BC02", "context": "discharge"},
        {"name": "Penicillin", "atc": "J01CE02", "context": "allergy"},
    ],
    "labs": [{"name": "Hb", "loinc": "718-7", "value": 10.2, "unit": "g/dL"}],
}
#: valid schema v2, but the stay ends before it starts: the Encounter fails the profile checks
BACKWARDS = {"encounter": {"admission": "2025-03-28", "discharge": "2025-03-17"}}


def rec(doc: str, status: str, extraction):
    return prediction(doc, "synthetic", "rules", status, extraction, orjson.dumps(extraction).decode())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    cfg = ExportSection(
        formats=["bundles", "ndjson"], statuses=["ok", "repaired"], icd10gm_version="2025", ops_version="2025"
    )
    records = [
        rec("spec-1", "ok", GOOD),
        rec("spec-2", "invalid", None),
        rec("spec-3", "truncated", GOOD),
        rec("spec-1", "ok", GOOD),
        rec("spec-5", "ok", {"diagnoses": [{"code": "C20"}]}),
        rec("spec-6", "ok", BACKWARDS),
        rec("file:Brief 7.txt", "repaired", GOOD),
    ]
    report = export_records(records, out, cfg)
    return out, report


def test_every_record_is_accounted_for(run):
    out, report = run
    # the file is the report without its timings (they go to the task record: reruns compare the file)
    assert {k: v for k, v in report.items() if k not in TIMING_KEYS} == read_json(report_path(out))
    assert report["seconds"] > 0
    assert report["records"] == 7 and report["by_status"] == {
        "invalid": 1,
        "ok": 4,
        "repaired": 1,
        "truncated": 1,
    }
    assert report["exported"] == 2 and report["rejected"] == 1
    assert report["skipped"] == {
        "duplicate document id (the first record of it was exported)": 1,
        "extraction is not schema v2": 1,
        "status invalid: no extraction to export": 1,
        "status truncated not in export.statuses": 1,
    }
    assert report["exported"] + report["rejected"] + sum(report["skipped"].values()) == report["records"]
    assert report["skipped_docs"]["status invalid: no extraction to export"] == ["spec-2"]
    [bad] = report["rejected_records"]
    assert bad["doc"] == "spec-6" and [e["kind"] for e in bad["errors"]] == ["invariant"]
    assert "before it starts" in bad["errors"][0]["message"]
    assert report["errors_by_kind"] == {"invariant": 1}


def test_only_validated_bundles_are_written(run):
    out, report = run
    names = sorted(p.name for p in bundles_dir(out).iterdir())
    assert names == sorted([bundle_file_name("spec-1"), bundle_file_name("file:Brief 7.txt")])
    assert bundle_file_name("file:Brief 7.txt").startswith("file_Brief_7.txt-")
    written = {
        "Patient": 2,
        "Encounter": 2,
        "Condition": 2,
        "Medication": 2,
        "MedicationStatement": 2,
        "AllergyIntolerance": 2,
        "Observation": 2,
    }
    assert report["resources_written_by_type"] == written and report["resources_written"] == 14
    # spec-6 was built and validated, not written
    assert report["resources_validated_by_type"]["Encounter"] == 3


def test_ndjson_holds_the_same_resources_with_relative_references(run):
    out, report = run
    files = {
        p.stem: [orjson.loads(x) for x in p.read_bytes().splitlines()]
        for p in ndjson_dir(out).glob("*.ndjson")
    }
    assert {k: len(v) for k, v in files.items()} == report["resources_written_by_type"]
    ids = {f"{r['resourceType']}/{r['id']}" for rows in files.values() for r in rows}
    refs = [r for rows in files.values() for row in rows for r in _references(row)]
    assert refs and all(r in ids for r in refs), [r for r in refs if r not in ids]
    bundle = orjson.loads((bundles_dir(out) / bundle_file_name("spec-1")).read_bytes())
    assert all(
        e["resource"]["subject"]["reference"].startswith("urn:uuid:")
        for e in bundle["entry"]
        if "subject" in e["resource"]
    )


def _references(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference":
                yield v
            else:
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def test_issues_file_names_record_and_reason(run):
    out, _ = run
    lines = {x["doc"]: x for x in read_jsonl(out / ISSUES)}
    assert lines["spec-6"]["exported"] is False and lines["spec-6"]["errors"][0]["resource"].startswith(
        "Encounter/"
    )
    assert lines["spec-5"]["exported"] is False and lines["spec-5"]["errors"][0]["kind"] == "schema"
    # the good records: only the catalogue warning of the allergen's ATC, if any, and no omission
    assert all(
        x["exported"] and not x["omitted"] for d, x in lines.items() if d in ("spec-1", "file:Brief 7.txt")
    )
