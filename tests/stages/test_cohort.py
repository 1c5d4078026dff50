"""The synthetic cohort: clinically consistent, deterministic, valid FHIR, and lossless through ingest."""

from __future__ import annotations

from collections import Counter
from datetime import date

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from clinsynth.cohort import clinic
from clinsynth.cohort.fhir_build import resources, truth
from clinsynth.cohort.generator import CohortConfig, CohortGenerator
from clinsynth.cohort.model import Dx, Lab, Marker, Med, Person, Proc, Radiotherapy, Stay, Tumor, Vital
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.extract import extract
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.plans import Planner
from clinsynth.ingest.sources import read_ndjson
from clinsynth.records import TUMOR_CATEGORIES, PatientRecord, iter_patients
from clinsynth.terminology import load_catalog
from launchers.submit import launch
from tests.unit.test_plans import check_lines

REF = date(2025, 6, 30)


@pytest.fixture(scope="module")
def people():
    gen = CohortGenerator(CohortConfig(seed=7, reference_date=REF))
    return [gen.person(i) for i in range(300)]


def test_courses_are_clinically_consistent(people):
    cat = load_catalog()
    by_key = {e.key: e for e in cat.entities}
    entities = Counter()
    for p in people:
        assert p.stays, p.key
        for st in p.stays:
            assert p.birth < st.start <= st.end <= REF
            for pr in st.procedures:
                assert st.start <= pr.when <= st.end, (p.key, pr)
            for lab in st.labs:
                assert lab.value > 0 and st.start <= lab.when <= st.end
            main = [d for d in st.diagnoses if d.role == "main"]
            assert len(main) == 1 and cat.icd10gm.validate(main[0].icd)
            assert all(cat.icd10gm.validate(d.icd) for d in st.diagnoses), [d.icd for d in st.diagnoses]
            assert all(cat.ops.lookup(x.ops) for x in st.procedures)
            assert all(cat.atc.lookup(m.atc) for m in st.medications)
        tumor = p.stays[0].tumor
        entity = by_key[tumor.entity]
        entities[entity.key] += 1
        if entity.sex != "any":
            assert p.sex == entity.sex, f"{entity.key} in a {p.sex} patient"
        assert cat.icdo3_morphology.lookup(tumor.morphology) and cat.icdo3_topography.lookup(tumor.topography)
        icds = {d.icd for st in p.stays for d in st.diagnoses}
        mets = {c for c in icds if c[:3] in ("C77", "C78", "C79")}
        if tumor.t is not None:
            # clinical TNM gets the clinical stage group where UICC 8 has one (gastric cT4b cN0 -> IVA)
            clinical = (
                clinic.clinical_stage(entity.key, tumor.t, tumor.n, tumor.m) if tumor.prefix == "c" else None
            )
            assert (clinical or cat.stage_group(entity.key, tumor.t, tumor.n, tumor.m)) == tumor.uicc
            assert bool(mets & {c for c in icds if c[:3] in ("C78", "C79")}) <= tumor.m.startswith("M1")
        ops = [x for st in p.stays for x in st.procedures if x.kind == "operation"]
        chemo = [m.start for st in p.stays for m in st.medications if m.therapy and m.intent != "neoadjuvant"]
        if ops and chemo:
            assert min(x.when for x in ops) <= min(chemo)  # surgery before adjuvant therapy
        age = (p.stays[0].start - p.birth).days / 365.25
        assert entity.age_min - 1 <= age <= entity.age_max + 1
    assert len(entities) >= 8  # the inpatient mix reaches many entities


def test_nothing_happens_after_the_export_day():
    """Ingest quarantines a date after the reference date (impossible_date): the cohort must make none."""
    gen = CohortGenerator(CohortConfig(seed=7, reference_date=REF))
    late = []
    for i in range(1000):
        p = gen.person(i)
        for st in p.stays:
            dates = [("stay", st.end), *(("radiotherapy", r.end) for r in st.radiotherapy)]
            dates += [("medication", m.end) for m in st.medications if m.end is not None]
            dates += [("procedure", x.when) for x in st.procedures] + [("lab", x.when) for x in st.labs]
            dates += [("vital", x.when) for x in st.vitals] + [("diagnosis", d.onset) for d in st.diagnoses]
            late += [(p.key, st.key, what, when) for what, when in dates if when > REF]
    assert not late, f"{len(late)} dates after {REF}, e.g. {late[:3]}"


def test_chemotherapy_doses_follow_body_surface_and_labs_show_toxicity(people):
    cat = load_catalog()
    seen = 0
    for p in people:
        for st in p.stays:
            for m in (m for m in st.medications if m.therapy):
                drug = next((d for r in cat.regimens.values() for d in r.drugs if d.atc == m.atc), None)
                if drug is not None and drug.unit == "mg/m2" and drug.max_mg is None:
                    seen += 1
                    assert m.dose == pytest.approx(drug.dose * p.bsa, rel=0.02) or any(
                        m.dose == pytest.approx(d.dose * p.bsa, rel=0.02)
                        for r in cat.regimens.values() for d in r.drugs if d.atc == m.atc
                    )  # fmt: skip
    assert seen > 20
    hb = [(lab.value, lab.low, i) for p in people for i, st in enumerate(p.stays) for lab in st.labs
          if lab.loinc == "718-7"]  # fmt: skip
    first = [v for v, lo, i in hb if i == 0]
    late = [v for v, lo, i in hb if i >= 3]
    assert late and sum(late) / len(late) < sum(first) / len(first)  # anaemia during chemotherapy


def test_same_seed_same_people_independent_of_order(people):
    gen = CohortGenerator(CohortConfig(seed=7, reference_date=REF))
    assert truth(gen.person(123)) == truth(people[123])
    assert truth(gen.person(5)) == truth(people[5])
    other = CohortGenerator(CohortConfig(seed=8, reference_date=REF))
    assert truth(other.person(5)) != truth(people[5])


def test_every_emitted_resource_validates_and_references_resolve(people):
    ids: set[str] = set()
    refs: list[str] = []
    profiles = Counter()
    med_ids: dict[str, str] = {}
    for p in people[:80]:
        for res in resources(p, 0, med_ids):
            get_fhir_model_class(res["resourceType"]).model_validate(res)  # raises on invalid
            ids.add(f"{res['resourceType']}/{res['id']}")
            profiles[res["meta"]["profile"][0].rsplit("/", 1)[-1]] += 1

            def walk(x):
                if isinstance(x, dict):
                    if isinstance(x.get("reference"), str):
                        refs.append(x["reference"])
                    for v in x.values():
                        walk(v)
                elif isinstance(x, list):
                    for v in x:
                        walk(v)

            walk(res)
    assert refs and set(refs) <= ids
    for prof in ("Patient", "KontaktGesundheitseinrichtung", "Diagnose", "mii-pr-onko-diagnose-primaertumor",
                 "Procedure", "MedicationStatement", "ObservationLab", "mii-pr-onko-tnm-t-kategorie",
                 "mii-pr-onko-grading", "mii-pr-onko-histologie-icdo3", "Medication",
                 "mii-pr-onko-strahlentherapie", "vitalsigns",
                 "mii-pr-onko-allgemeiner-leistungszustand-ecog", "mii-pr-onko-verlauf",
                 "mii-pr-onko-fernmetastasen", "mii-pr-onko-tnm-l-kategorie", "mii-pr-onko-residualstatus",
                 "mii-pr-onko-anzahl-befallene-lymphknoten", "mii-pr-onko-weitere-klassifikationen",
                 "mii-pr-onko-mamma-rezeptorstatus-estrogen"):  # fmt: skip
        assert profiles[prof], f"no resource with profile {prof}"


def _g(x) -> str:
    return "-" if x is None else f"{x:g}"


_STAGED = (
    "tnm_t",
    "tnm_n",
    "tnm_m",
    "tnm_l",
    "tnm_v",
    "tnm_pn",
    "tnm_r",
    "lymph_nodes",
    "uicc_stage",
    "stage_other",
)


def from_records(rec: PatientRecord) -> tuple[dict[str, list], dict[str, list[str]]]:
    """The record side of `truth()`: codes per category and the v2 fields, read from the record set only."""
    facts = rec.all_facts()
    by_id = {f["resource_id"]: f for f in facts}
    codes: dict[str, list] = {}
    fields: dict[str, list[str]] = {}
    groups: dict[tuple[str, str], list[str]] = {}

    def put(name: str, value: str) -> None:
        fields.setdefault(name, []).append(value)

    for f in facts:
        cat, code, x = f["category"], f["code"], PatientRecord.extra(f)
        codes.setdefault(cat, []).append(code)
        if cat == "diagnosis":
            put("diagnosis.assertion", f"{code}:{f['assertion']}")
            if x.get("tumor"):
                put("diagnosis.tumor", f"{code}->{by_id[x['tumor']]['code']}")
        elif cat == "medication":
            put(
                "medication.dose",
                f"{code}:{_g(x.get('dose'))}:{x.get('dose_unit')}:{_g(x.get('per_dose'))}:"
                f"{x.get('per_unit') or '-'}",
            )
            put(
                "medication.v2",
                f"{code}:{'as_needed' if x.get('as_needed') else '-'}:{x.get('frequency') or '-'}:"
                f"{x.get('regimen') or '-'}:{_g(x.get('cycle'))}:{_g(x.get('day'))}:{x.get('intent') or '-'}:"
                f"{f['date']}:{f['end_date'] or '-'}",
            )
        elif cat == "radiotherapy":
            assert f["value_num"] == x["total_gy"] and f["unit"] == "Gy" and x["end_date"] == f["end_date"]
            put(
                "radiotherapy",
                f"{code}:{x.get('target')}:{_g(x.get('total_gy'))}:{_g(x.get('fraction_gy'))}:"
                f"{x.get('fractions')}:{f['date']}:{f['end_date']}:{x.get('intent') or '-'}:"
                f"{x.get('concurrent') or '-'}",
            )
        elif cat == "vital":
            put("vital", f"{code}:{_g(f['value_num'])}:{f['unit']}:{f['date']}")
        elif cat == "smoking":
            put("smoking", f"{f['value_str']}:{_g(x.get('pack_years'))}")
        if cat in _STAGED:
            put("staging", f"{cat}={code}:{x.get('staging')}:{f['date']}")
        if cat in ("tnm_t", "tnm_n", "tnm_m"):
            put("tnm.prefix", f"{code}:{x.get('prefix')}")
        if cat == "lymph_nodes":
            put("lymph_nodes", f"{x.get('nodes')}:{int(f['value_num'])}")
        if cat == "stage_other":
            put("stage_other.system", f"{x.get('system')}:{code}")
        if cat == "marker_status":
            put(
                "marker_status",
                f"{code}:{x.get('result')}:{_g(f['value_num'])}:{f['unit'] or '-'}:{x.get('text') or '-'}",
            )
        if cat in TUMOR_CATEGORIES:
            assert x.get("tumor"), f"{f['resource_id']}: a tumour fact without extra.tumor"
            groups.setdefault((f["encounter_id"], x["tumor"]), []).append(f"{cat}={code}")
    for enc in rec.encounters.values():
        row = enc.row
        put(
            "encounter.stay_kind",
            f"{row['encounter_id']}:{row['stay_kind']}:{row['postponed_reason'] or '-'}",
        )
    for (enc_id, tumor), group in groups.items():
        put("tumor.facts", f"{enc_id}|{by_id[tumor]['code']}|" + ",".join(sorted(group)))
    return {k: sorted(v) for k, v in codes.items()}, {k: sorted(v) for k, v in fields.items()}


def full_person(key: str, k: int) -> Person:
    """Every v2 field of the cohort model set (varied by `k`): two tumours, one staged by TNM."""
    d = date
    t1 = Tumor(
        entity="breast", morphology="8500/3", morphology_display="Invasives duktales Karzinom",
        topography="C50.4", grading="G2", prefix="yp" if k % 2 else "p", t="T2", n="N1a", m="M0", uicc="IIB",
        when=d(2025, 3, 20), key="t1", m_prefix="c", nodes=f"{k + 1}/{18 + k}", l="L1", v="V0", pn="Pn0",
        r="R0", kind="current", stages=[("Gleason", f"3+{3 + k % 2}={6 + k % 2}"), ("Ann Arbor", "IIB")],
        markers=[
            Marker("ER", "positive", loinc="40556-3", value=90.0 - k, unit="%", text="IRS 12"),
            Marker("HER2", "negative", loinc="48676-1", text="1+"),
            Marker("Ki-67", "positive", value=30.5 + k, unit="%"),
            Marker("EGFR", "mutated", text="Exon-19-Deletion"),
        ],
        ecog=k % 3, status="partial_remission", metastasis_sites=["C78.7", "C22.0"],
    )  # fmt: skip
    t2 = Tumor(
        entity="cll", morphology="9823/3", morphology_display="CLL", topography="C42.1", grading="GX",
        prefix="c", t=None, n=None, m=None, uicc=None, when=d(2025, 3, 18), key="t2",
        stages=[("Binet", "A"), ("Rai", "II"), ("ELN 2022", ("günstig", "intermediär", "ungünstig")[k % 3])],
        kind="initial", status="stable",
    )  # fmt: skip
    st = Stay(
        key=f"{key}-s0", start=d(2025, 3, 17), end=d(2025, 3, 28), department_code="0100",
        department="Innere",
        diagnoses=[
            Dx("C50.4", "Mammakarzinom", "main", d(2025, 3, 1), primary_tumor=True, topography="C50.4",
               laterality="L", tumor_key="t1"),
            Dx("C78.7", "Lebermetastasen", "secondary", d(2025, 3, 10), tumor_key="t1",
               verification="provisional"),
            Dx("C91.1", "CLL", "secondary", d(2020, 1, 1), primary_tumor=True, tumor_key="t2"),
            Dx("I26.9", "Lungenembolie", "secondary", d(2025, 3, 17), verification="refuted"),
        ],
        procedures=[Proc("5-870.a0", "Mastektomie", d(2025, 3, 20), "operation")],
        medications=[
            Med("L01CD01", "Paclitaxel", 150.0 + k, "mg", "i.v.", d(2025, 3, 21), d(2025, 3, 21),
                therapy=True, regimen="Paclitaxel weekly", cycle=3 + k, day=1 + k, intent="palliative",
                frequency="wöchentlich", per_dose=80.0, per_unit="mg/m2"),
            Med("L01XA02", "Carboplatin", 450.0 + k, "mg", "i.v.", d(2025, 3, 21), therapy=True,
                per_dose=5.0 if k else None, per_unit="AUC" if k else None),
            Med("N02BE01", "Metamizol", 500.0, "mg", "p.o.", d(2025, 3, 21), context="discharge",
                as_needed=True, schedule=(1, 1, 1, 1)),
        ],
        labs=[Lab("718-7", "Hb", 10.2, "g/dL", d(2025, 3, 18), 12.0, 16.0)],
        tumor=t1, other_tumors=[t2],
        radiotherapy=[
            Radiotherapy("Mamma links", 50.4, 1.8, 28, d(2025, 1, 2), d(2025, 2, 10), "adjuvant",
                         concurrent="Capecitabin" if k % 2 else None),
            Radiotherapy("LWK 3", 20.0 + k, 4.0, 5, d(2025, 3, 22), d(2025, 3, 26), "palliative",
                         ops="8-522.91"),
        ],
        vitals=[
            Vital("8480-6", "RR systolisch", 135.0 + k, "mm[Hg]", d(2025, 3, 17)),
            Vital("8462-4", "RR diastolisch", 85.0, "mm[Hg]", d(2025, 3, 17)),
            Vital("8867-4", "Puls", 72.0, "/min", d(2025, 3, 17)),
            Vital("8310-5", "Temperatur", 36.8, "Cel", d(2025, 3, 17)),
            Vital("29463-7", "Gewicht", 71.5, "kg", d(2025, 3, 17)),
        ],
        kind="therapy",
    )  # fmt: skip
    # a second stay: the CLL is known but has no diagnosis of its own there (points back to stay 1)
    st2 = Stay(
        key=f"{key}-s1", start=d(2025, 5, 2), end=d(2025, 5, 6), department_code="0100", department="Innere",
        diagnoses=[Dx("C50.4", "Mammakarzinom", "main", d(2025, 3, 1), primary_tumor=True, tumor_key="t1")],
        tumor=Tumor(**{**t1.__dict__, "kind": "current", "when": d(2025, 5, 3), "status": "progression",
                       "markers": [], "stages": [], "confirmed": k != 1}),
        postponed=k == 2, postpone_reason="neutrophils" if k == 2 else None,
        kind=("diagnostic", "complication", "palliative")[k % 3],
        other_tumors=[Tumor(**{**t2.__dict__, "status": "stable", "when": d(2025, 5, 3)})],
    )  # fmt: skip
    return Person(
        key=key, sex="female", birth=d(1960, 5, 5), family="Muster", given="Anna", city="Jena",
        postal_code="07743", height_cm=168, weight_kg=70, smoking=("former", "current", "never")[k % 3],
        pack_years=None if k % 3 == 2 else 30.0 + k, stays=[st, st2],
    )  # fmt: skip


FIELDS = (
    "diagnosis.assertion", "diagnosis.tumor", "medication.v2", "medication.dose", "radiotherapy", "vital",
    "smoking", "staging", "tnm.prefix", "lymph_nodes", "stage_other.system", "marker_status", "tumor.facts",
    "encounter.stay_kind",
)  # fmt: skip


@pytest.fixture(scope="module")
def v2_round_trip(tmp_path_factory):
    """Three fully filled patients through FHIR, the real ingest (plans included) and back out of records."""
    people = [full_person(f"v2p{k}", k) for k in range(3)]
    folder = tmp_path_factory.mktemp("v2")
    by_type: dict[str, list[bytes]] = {}
    med_ids: dict[str, str] = {}
    for p in people:
        for res in resources(p, 0, med_ids):
            get_fhir_model_class(res["resourceType"]).model_validate(res)
            by_type.setdefault(res["resourceType"], []).append(orjson.dumps(res))
    for rt, lines in by_type.items():
        (folder / "in").mkdir(exist_ok=True)
        (folder / "in" / f"{rt}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest(read_ndjson(folder / "in"), folder / "out", Options(as_of="2026-01-01"))
    assert report["resources_quarantined"] == 0, report
    records = {r.patient_id: r for r in iter_patients(folder / "out" / "records")}
    return {truth(p)["patient_id"]: (truth(p), records[f"pat-{p.key}"]) for p in people}


@pytest.mark.parametrize("field", FIELDS)
def test_every_v2_field_survives_fhir_and_ingest(v2_round_trip, field):
    for pid, (want, rec) in v2_round_trip.items():
        assert want["fields"].get(field), f"the oracle has no {field}: the test would prove nothing"
        _, got = from_records(rec)
        assert got.get(field) == want["fields"][field], f"{pid}: {field}"


def test_v2_resources_take_the_fast_path_unchanged():
    """Extraction plans (ingest's fast path) give exactly what the extractor gives on every v2 resource,
    and a second sight of a line always takes a plan (non-ASCII codes such as "ungünstig" included)."""
    med_ids: dict[str, str] = {}
    lines = [orjson.dumps(r) for k in range(4) for r in resources(full_person(f"pl{k}", k), 0, med_ids)]
    check_lines(lines)  # plans equal the extractor wherever they match
    validator = FastValidator()
    planner = Planner(validator)
    for raw in lines:
        if planner.match(raw) is None:
            res = orjson.loads(raw)
            assert validator.validate(res, raw) is None
            planner.learn(res, raw, extract(res))
    missed = [raw[:120] for raw in lines if planner.match(raw) is None]
    assert not missed, f"{len(missed)} lines learnt a plan that does not match them, e.g. {missed[0]!r}"


def test_v2_codes_per_category_survive(v2_round_trip):
    for pid, (want, rec) in v2_round_trip.items():
        codes, _ = from_records(rec)
        assert {k: v for k, v in codes.items() if v} == {k: v for k, v in want["facts"].items() if v}, pid
        assert not rec.unlinked


def test_cohort_to_ingest_round_trip_keeps_every_fact(tmp_path):
    result = launch([
        "+experiment=smoke", "pipeline=[ingest]", "cluster=debug", "tracking=disabled", "cohort.patients=60",
        "resources.cohort.shards=3", f"paths.runs={tmp_path}",
    ])  # fmt: skip
    cohort_dir = result.plan.stage("cohort").folder.path
    ingest_dir = result.plan.stage("ingest").folder.path
    report = orjson.loads((ingest_dir / "ingest_report.json").read_bytes())
    assert report["resources_quarantined"] == 0 and report["resources_read"] == report["resources_ok"]
    assert sorted(p.name for p in (cohort_dir / "fhir").iterdir())[:2] == [
        "Condition-00000.ndjson",
        "Condition-00001.ndjson",
    ]  # bulk-export layout, per type and shard
    expected = {}
    for f in sorted((cohort_dir / "truth").glob("shard-*.jsonl")):
        for line in f.read_bytes().splitlines():
            t = orjson.loads(line)
            expected[t["patient_id"]] = t
    records = {r.patient_id: r for r in iter_patients(ingest_dir / "records")}
    assert sorted(records) == sorted(expected) and len(records) == 60
    for pid, t in expected.items():
        rec = records[pid]
        assert len(rec.encounters) == t["encounters"]
        assert rec.patient["sex"] == t["sex"] and rec.patient["birth_date"] == t["birth_date"]
        codes, fields = from_records(rec)
        assert {k: v for k, v in codes.items() if v} == {k: v for k, v in t["facts"].items() if v}, pid
        for field, values in t["fields"].items():
            assert fields.get(field) == values, f"{pid}: {field}"
        assert not rec.unlinked  # every fact belongs to its stay
