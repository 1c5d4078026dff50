"""Round trip: cohort FHIR -> ingest -> sample -> gold -> export -> ingest (`source=bundles` and
`source=ndjson`, the real launcher and ingest code) gives back the same codes per document and per
patient, without quarantine.

The sample stage's gold extractions stand in for the extract stage's output (written as prediction
records through `artifacts.predictions`, two shards); the export stage function runs on them as the
launcher would run it. ICD-O-3 morphology/topography and TNM (per axis, with prefix) are compared
too, as ingest reads them back. Twelve synthetic patients, on the debug executor, in this process.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import yaml

from clinsynth.artifacts.predictions import prediction, shard_path, write_predictions
from clinsynth.artifacts.specs import iter_specs
from clinsynth.core.atomic import read_json, read_jsonl
from clinsynth.core.context import StageContext
from clinsynth.export.bundle import resource_id
from clinsynth.export.config import ExportConfig
from clinsynth.export.report import bundles_dir, ndjson_dir, report_path
from clinsynth.fhir import conventions as fc
from clinsynth.records import iter_patients
from clinsynth.stages import export as export_stage
from launchers.submit import launch

REPO = Path(__file__).resolve().parents[2]
SYSTEMS = {"icd10gm": fc.ICD10GM, "ops": fc.OPS, "atc": fc.ATC, "loinc": fc.LOINC}
#: the code each list's facts carry, where the export needs one
CODE_OF = {
    "diagnoses": "icd10gm",
    "tumors": "icd10gm",
    "procedures": "ops",
    "labs": "loinc",
    "vitals": "loinc",
}


def _config() -> ExportConfig:
    """The export section of conf/config.yaml, as a launch would validate it."""
    conf = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    return ExportConfig.model_validate({"export": conf["export"]})


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roundtrip")
    small = ["cohort.patients=12", "tracking=disabled", f"paths.runs={tmp / 'runs'}", "cluster=debug"]
    first = launch(["+experiment=smoke", "pipeline=[sample]", *small])
    sample_dir = first.plan.stage("sample").folder.path
    specs = list(iter_specs(sample_dir, ["spec_id", "patient_id", "gold"]))
    extract_dir = tmp / "extract"
    records = [
        prediction(s["spec_id"], "synthetic", "gold", "ok", orjson.loads(s["gold"]), s["gold"]) for s in specs
    ]
    for shard in (0, 1):
        write_predictions(shard_path(extract_dir, shard), records[shard::2])
    export_dir = tmp / "export"
    ctx = StageContext(stage="export", stage_id="test", stage_dir=export_dir, inputs={"extract": extract_dir})
    summary = export_stage.run(_config(), ctx)
    back = {}
    for kind, folder in (("bundles", bundles_dir(export_dir)), ("ndjson", ndjson_dir(export_dir))):
        res = launch(
            ["+experiment=smoke", "pipeline=[ingest]", f"source={kind}", f"source.path={folder}", *small]
        )
        back[kind] = res.plan.stage("ingest").folder.path
    return {
        "specs": specs,
        "summary": summary,
        "export": export_dir,
        "cohort_ingest": first.plan.stage("ingest").folder.path,
        "back": back,
        "tmp": tmp,
    }


def _codes(facts, skip=("lymph_nodes",)) -> dict[str, set[str]]:
    """Codes by schema slot of record facts, by their system (lymph node counts carry LOINC codes
    that no gold slot holds: the N category's "2/14")."""
    out: dict[str, set[str]] = defaultdict(set)
    for f in facts:
        for slot, system in SYSTEMS.items():
            if f["category"] not in skip and f.get("system") == system and f.get("code"):
                out[slot].add(f["code"])
    return out


def _gold_codes(gold: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for lst, slot in CODE_OF.items():
        out[slot] |= {f[slot] for f in gold.get(lst, []) if f.get(slot)}
    out["loinc"] |= {
        m["loinc"] for t in gold.get("tumors", []) for m in t.get("markers", []) if m.get("loinc")
    }
    # an allergy is an AllergyIntolerance, which ingest does not read (counted as ignored)
    out["atc"] |= {
        m["atc"] for m in gold.get("medications", []) if m.get("atc") and m.get("context") != "allergy"
    }
    return out


def test_every_exported_bundle_validates(rt):
    from fhir.resources.R4B.bundle import Bundle

    report = read_json(report_path(rt["export"]))
    n = len(rt["specs"])
    assert n >= 12 and report["records"] == report["exported"] == n
    assert report["errors"] == 0 and report["rejected"] == 0 and report["skipped"] == {}
    assert rt["summary"]["exported"] == n
    files = sorted(bundles_dir(rt["export"]).glob("*.json"))
    assert len(files) == n
    for path in files:  # the full fhir.resources model, beside the validator the export used
        Bundle.model_validate_json(path.read_bytes())
    # a variety: every kind of resource the cohort gives a letter
    written = report["resources_written_by_type"]
    assert {"Patient", "Encounter", "Condition", "Procedure", "Medication", "MedicationStatement"} <= set(
        written
    )
    assert written["Observation"] > 5 * n
    profiles = {k.split(" ", 1)[1] for k in report["resources_written_by_profile"]}
    assert {"mii-pr-onko-diagnose-primaertumor", "mii-pr-onko-tnm-t-kategorie", "ObservationLab"} <= profiles


@pytest.mark.parametrize("kind", ["bundles", "ndjson"])
def test_ingest_reads_every_resource_back_without_quarantine(rt, kind):
    report = read_json(rt["back"][kind] / "ingest_report.json")
    written = read_json(report_path(rt["export"]))["resources_written_by_type"]
    allergies = written.get("AllergyIntolerance", 0)
    assert report["resources_quarantined"] == 0, report["quarantined_by_reason"]
    assert report["resources_read"] == sum(written.values())
    assert report["resources_ignored"] == allergies  # ingest has no AllergyIntolerance reader
    assert report["resources_ok"] == sum(written.values()) - allergies
    assert report["rows"]["patients"] == len(rt["specs"])


def test_the_same_codes_come_back_per_document_and_per_patient(rt):
    back = {r.patient_id: r for r in iter_patients(rt["back"]["bundles"] / "records")}
    per_patient_gold: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    per_patient_back: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    compared = defaultdict(int)
    for s in rt["specs"]:
        gold = orjson.loads(s["gold"])
        record = back[resource_id(s["spec_id"], "Patient")]  # one Patient per letter
        want, got = _gold_codes(gold), _codes(record.all_facts())
        for slot in SYSTEMS:
            assert got[slot] == want[slot], (s["spec_id"], slot, want[slot] ^ got[slot])
            per_patient_gold[s["patient_id"]][slot] |= want[slot]
            per_patient_back[s["patient_id"]][slot] |= got[slot]
            compared[slot] += len(want[slot])
        # each diagnosis keeps its assertion (refuted -> negated, inactive -> historical, ...)
        pairs = {(f["code"], f["assertion"]) for f in record.all_facts() if f["category"] == "diagnosis"}
        assert {
            (d["icd10gm"], d["assertion"]) for d in gold.get("diagnoses", []) if d.get("icd10gm")
        } <= pairs
    assert per_patient_gold == per_patient_back
    assert all(compared[slot] > 0 for slot in SYSTEMS), compared  # none of the comparisons is vacuous
    assertions = {d["assertion"] for s in rt["specs"] for d in orjson.loads(s["gold"]).get("diagnoses", [])}
    assert {"present", "negated"} <= assertions


TNM_AXES = ("t", "n", "m")
SUFFIXES = {"l": "tnm_l", "v": "tnm_v", "pn": "tnm_pn", "r": "tnm_r"}


def _gold_tumour_facts(gold: dict, omitted: set[int]) -> set[tuple]:
    """What ingest can read back of the gold's exported tumours: ICD-O-3 topography (on the Condition,
    a refuted one too), and for a tumour that is not negated its ICD-O-3 morphology, TNM T/N/M with
    prefix, L/V/Pn/R and UICC stages."""
    out: set[tuple] = set()
    for i, t in enumerate(gold.get("tumors", [])):
        if i in omitted:  # no ICD-10-GM code of its own or of its diagnosis: not exported (counted)
            continue
        if t.get("topography"):
            out.add(("topography", t["topography"]))
        if t.get("assertion", "present") == "negated":
            continue
        if t.get("morphology"):
            out.add(("morphology", t["morphology"]))
        tnm = t.get("tnm") or {}
        for axis in TNM_AXES:
            if tnm.get(axis):
                out.add((f"tnm_{axis}", tnm[axis].get("prefix"), tnm[axis]["value"]))
        out |= {(cat, tnm[key]) for key, cat in SUFFIXES.items() if tnm.get(key)}
        stages = [s["value"] for s in t.get("stages", []) if s["system"] == "UICC"]
        out |= {("uicc_stage", v) for v in [t.get("uicc_stage"), *stages] if v}
    return out


def _back_tumour_facts(record) -> set[tuple]:
    out: set[tuple] = set()
    for f in record.all_facts():
        extra = record.extra(f)
        if extra.get("topography"):
            out.add(("topography", extra["topography"]))
        cat = f["category"]
        if cat == "histology":
            out.add(("morphology", f["code"]))
        elif cat in {f"tnm_{a}" for a in TNM_AXES}:
            out.add((cat, extra.get("prefix"), f["code"]))
        elif cat in SUFFIXES.values() or cat == "uicc_stage":
            out.add((cat, f["code"]))
    return out


def test_icdo3_and_tnm_come_back_per_document(rt):
    """ICD-O-3 morphology and topography, TNM per axis with its prefix, L/V/Pn/R and UICC stage: what
    the gold's tumours state comes back from ingest, nothing more, and each finding names its tumour."""
    back = {r.patient_id: r for r in iter_patients(rt["back"]["bundles"] / "records")}
    omitted: dict[str, set[int]] = defaultdict(set)
    for x in read_jsonl(rt["export"] / "issues.jsonl"):
        for o in x["omitted"]:
            if o["list"] == "tumors" and o["reason"].startswith("no ICD-10-GM code"):
                omitted[x["doc"]].add(o["index"])
    kinds: dict[str, int] = defaultdict(int)
    for s in rt["specs"]:
        record = back[resource_id(s["spec_id"], "Patient")]
        want = _gold_tumour_facts(orjson.loads(s["gold"]), omitted[s["spec_id"]])
        got = _back_tumour_facts(record)
        assert got == want, (s["spec_id"], want ^ got)
        for k in want:
            kinds[k[0]] += 1
        conditions = {f["resource_id"] for f in record.all_facts() if f["category"] == "diagnosis"}
        for f in record.all_facts():
            if f["category"] in ("histology", "uicc_stage", *SUFFIXES.values(), "tnm_t", "tnm_n", "tnm_m"):
                assert record.extra(f).get("tumor") in conditions, (s["spec_id"], f["category"])
    # none of the comparisons is vacuous: the cohort's letters state each kind somewhere
    assert {"topography", "morphology", "tnm_t", "tnm_n", "tnm_m", "uicc_stage"} <= set(kinds), dict(kinds)


def test_the_gold_codes_are_the_cohorts(rt):
    """Present facts of the gold come from the patient's own record (at the letter's level of detail);
    negated, suspected and allergy facts are drawn from pools by design."""
    cohort = {
        r.patient_id: _codes(r.all_facts(), skip=()) for r in iter_patients(rt["cohort_ingest"] / "records")
    }
    for s in rt["specs"]:
        gold = orjson.loads(s["gold"])
        have = cohort[s["patient_id"]]
        for lst, slot in (*CODE_OF.items(), ("medications", "atc")):
            for f in gold.get(lst, []):
                code = f.get(slot)
                if code and f.get("assertion", "present") == "present" and f.get("context") != "allergy":
                    assert any(c.startswith(code) for c in have[slot]), (s["spec_id"], lst, code)


def test_only_uncoded_facts_are_omitted(rt):
    gold = {s["spec_id"]: orjson.loads(s["gold"]) for s in rt["specs"]}
    omitted = [(x["doc"], o) for x in read_jsonl(rt["export"] / "issues.jsonl") for o in x["omitted"]]
    for doc, o in omitted:
        fact = gold[doc][o["list"]][o["index"]]
        if o["reason"].startswith("marker "):
            marker = fact["markers"][int(o["reason"].split()[1])]
            assert not marker.get("loinc"), (doc, o)
        else:
            assert not fact.get(CODE_OF[o["list"]]), (doc, o)


def test_a_rerun_writes_the_same_bundles(rt):
    again = rt["tmp"] / "export-again"
    ctx = StageContext(
        stage="export", stage_id="test", stage_dir=again, inputs={"extract": rt["tmp"] / "extract"}
    )
    export_stage.run(_config(), ctx)
    first = {p.name: p.read_bytes() for p in bundles_dir(rt["export"]).glob("*.json")}
    second = {p.name: p.read_bytes() for p in bundles_dir(again).glob("*.json")}
    assert first == second
    for name in ("Patient", "Condition", "Observation"):
        assert (ndjson_dir(again) / f"{name}.ndjson").read_bytes() == (
            ndjson_dir(rt["export"]) / f"{name}.ndjson"
        ).read_bytes()
