"""A user's own FHIR end to end: the public MII test bundles through ingest -> sample -> generate ->
verify, exactly as README's `python -m launch +experiment=own_fhir source.path=...` (smoke's pipeline
from a user's export).

The bundles are real-world shaped (SNOMED CT procedures, WHO ICD-10, OMIM, partial dates): every
patient either gets specs or is listed with its reason, no code lands in another system's slot,
and a strict run stops naming the patient. Skips when ../shared (the MII test data) is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from clinsynth.artifacts.specs import read_specs
from clinsynth.core.atomic import read_json, read_jsonl
from clinsynth.fhir import conventions as C
from clinsynth.records import iter_patients

REPO = Path(__file__).resolve().parents[2]
MII = REPO.parent / "shared" / "external" / "mii-testdata"
if not MII.is_dir():
    MII = Path("/work/shared/external/mii-testdata")
pytestmark = pytest.mark.skipif(not MII.is_dir(), reason=f"MII test data absent ({MII}; ../shared)")

#: the code systems whose codes may sit in each gold slot (WHO ICD-10 codes are ICD-10-GM codes
#: in all but a few German extensions, so a letter writes them the same way)
SLOT_SYSTEMS = {
    "icd10gm": {C.ICD10GM, C.ICD10_WHO, "http://fhir.de/CodeSystem/dimdi/icd-10-gm"},
    "ops": {C.OPS, "http://fhir.de/CodeSystem/dimdi/ops"},
    "atc": {C.ATC, "http://fhir.de/CodeSystem/dimdi/atc", "http://www.whocc.no/atc"},
    "loinc": {C.LOINC},
    "topography": {C.ICDO3, C.ICDO3_OID},
    "morphology": {C.ICDO3, C.ICDO3_OID},
}


def _launch(runs: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The README command (source.path relative to the repository, as a user types it)."""
    source = os.path.relpath(MII, REPO)
    cmd = [sys.executable, "-m", "launch", "+experiment=own_fhir",
        "pipeline=[verify]", f"source.path={source}",
           "cluster=local", "tracking=disabled", f"paths.runs={runs}", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})


def _stage_dir(runs: Path, stage: str) -> Path:
    [folder] = [p for p in (runs / "stages" / stage).iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("mii")
    proc = _launch(runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return runs


@pytest.fixture(scope="module")
def records(run):
    return {r.patient_id: r for r in iter_patients(_stage_dir(run, "ingest") / "records")}


@pytest.fixture(scope="module")
def sample(run):
    folder = _stage_dir(run, "sample")
    report = read_json(folder / "sample_report.json")
    errors = list(read_jsonl(folder / "errors.jsonl")) if (folder / "errors.jsonl").exists() else []
    return report, errors, read_specs(folder).to_pylist()


def test_ingest_accounts_for_every_resource_of_the_bundles(run):
    report = read_json(_stage_dir(run, "ingest") / "ingest_report.json")
    repeats = sum(report["identical_repeats_by_type"].values())
    assert report["resources_read"] == (
        report["resources_ok"] + report["resources_quarantined"] + report["resources_ignored"] + repeats
    )
    assert (
        report["resources_ok"] > 450 and report["rows"]["patients"] == report["ok_by_type"]["Patient"] >= 25
    )
    assert report["rows"]["encounters"] >= 20 and report["rows"]["facts"] > 300


def test_every_patient_is_sampled_or_listed_with_its_reason(sample, records):
    report, errors, specs = sample
    with_specs = {s["patient_id"] for s in specs}
    failed = {e["patient_id"] for e in errors}
    assert report["patients"] == len(records)
    assert report["specs"] == len(specs) > 0 and report["patients_failed"] == len(errors) == len(failed)
    assert report["patients_with_specs"] == len(with_specs) and not with_specs & failed
    assert report["patients_with_specs"] + report["patients_without_stays"] + len(failed) == len(records)
    for e in errors:  # what went wrong, where, and what to do
        assert e["patient_id"] in records and e["step"] in {"draw", "gold", "serialise"}
        assert e["error"] and "sample.strict=true" in e["what_to_do"]
    # every patient with a stay that has a start and an end gets a letter or is listed
    stays = {
        p
        for p, r in records.items()
        if any(e.row.get("start") and e.row.get("end") for e in r.encounters.values())
    }
    assert stays <= with_specs | failed, sorted(stays - with_specs - failed)
    assert with_specs <= stays
    why = "; ".join(f"{e['patient_id']} ({e['step']}: {e['error'].splitlines()[0][:120]})" for e in errors)
    print(f"\nMII bundles: {len(records)} patients, {len(stays)} with stays, {len(specs)} specs for "
          f"{len(with_specs)} patients, {len(failed)} failed: {why}")  # fmt: skip


def test_no_code_sits_in_another_systems_slot(sample, records):
    """A code the record holds only under a system foreign to a gold slot never fills that slot
    (the SNOMED CT procedure code that once filled `ops`)."""
    _, _, specs = sample
    problems = []
    slots = set().union(*SLOT_SYSTEMS.values())
    foreign = 0  # record codes of these patients in no slot's system: the check is not vacuous
    for s in specs:
        systems: dict[str, set[str]] = {}
        for f in records[s["patient_id"]].all_facts():
            if f.get("code"):
                systems.setdefault(str(f["code"]), set()).add(f.get("system") or "")
        foreign += sum(not seen & slots for seen in systems.values())
        gold = orjson.loads(s["gold"])
        for name, facts in gold.items():
            for fact in facts if isinstance(facts, list) else ():
                codes = [(k, fact[k]) for k in SLOT_SYSTEMS if fact.get(k)]
                codes += [("loinc", m["loinc"]) for m in fact.get("markers") or () if m.get("loinc")]
                for slot, code in codes:
                    seen = systems.get(str(code))
                    if seen and not seen & SLOT_SYSTEMS[slot]:
                        problems.append(f"{s['spec_id']}: {name}.{slot}={code} is coded in {sorted(seen)}")
    assert not problems, problems
    assert foreign > 10  # SNOMED CT procedures and observations, OMIM, HPO ... in the MII bundles


def test_letters_are_written_and_verified(run, sample):
    _, _, specs = sample
    letters = {}
    for path in sorted((_stage_dir(run, "generate") / "letters").glob("shard-*.jsonl")):
        letters.update({rec["spec_id"]: rec for rec in read_jsonl(path)})
    assert sorted(letters) == sorted(s["spec_id"] for s in specs)
    assert all(rec["mode"] == "template" and rec["text"].strip() for rec in letters.values())
    folder = _stage_dir(run, "verify")
    report = read_json(folder / "verification_report.json")
    verdicts = list(read_jsonl(folder / "verification.jsonl"))
    assert report["letters"] == len(verdicts) == len(specs)
    assert sorted(v["spec_id"] for v in verdicts) == sorted(letters)
    assert 0.0 <= report["pass_rate"] <= 1.0  # reported; a user's FHIR may hold what templates miss
    assert all(v["ok"] or v["reasons"] for v in verdicts)
    failing = [(v["spec_id"], v["reasons"][:2]) for v in verdicts if not v["ok"]]
    rate = f"{report['passed']} pass ({report['pass_rate']:.1%})"
    print(f"\nMII letters: {len(letters)}, verified {rate}; failing: {failing[:5]}")


def test_a_strict_run_stops_at_a_failing_patient_naming_it(tmp_path, sample):
    report, errors, _ = sample
    proc = _launch(tmp_path, "pipeline=[sample]", "sample.strict=true")
    if not errors:  # nothing to stop at: strict writes the same specs
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert read_json(_stage_dir(tmp_path, "sample") / "sample_report.json")["specs"] == report["specs"]
        return
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "sample.strict=true" in out and "could not be sampled" in out and "what to do" in out
    assert any(e["patient_id"] in out for e in errors)
    assert not (_stage_dir(tmp_path, "sample") / "specs" / "specs.parquet").exists()
