"""Extraction plans must give exactly what the generic extractor gives, resource by resource."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from clinsynth.cohort.fhir_build import resources
from clinsynth.cohort.generator import CohortConfig, CohortGenerator
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest.extract import extract
from clinsynth.ingest.plans import Planner, json_form
from tests import fhir_samples as fs


def check_lines(lines: list[bytes]) -> tuple[int, int]:
    validator = FastValidator()
    planner = Planner(validator)
    hits = 0
    for raw in lines * 2:  # the second round runs on learnt plans
        res = orjson.loads(raw)
        fast = planner.match(raw)
        if fast is None:
            if validator.validate(res, raw) is None:
                planner.learn(res, raw, extract(res))
            continue
        hits += 1
        assert validator.validate(res, raw) is None, f"a plan accepted an invalid resource: {raw[:200]!r}"
        assert json_form(fast) == json_form(extract(res)), f"plan and extractor differ on {raw[:200]!r}"
    return hits, len(lines) * 2


def test_plans_equal_the_extractor_on_a_cohort():
    gen = CohortGenerator(CohortConfig(seed=3))
    med_ids: dict[str, str] = {}
    lines = [orjson.dumps(r) for i in range(120) for r in resources(gen.person(i), 0, med_ids)]
    hits, total = check_lines(lines)
    assert hits > total * 0.6  # most of a cohort is repetitive enough to take the fast path


def test_plans_pin_what_steers_extraction():
    base = [fs.patient(f"p{i}") for i in range(3)] + [fs.condition(f"c{i}", eid=None) for i in range(3)]
    refuted = fs.condition("c-refuted", eid=None)
    refuted["verificationStatus"]["coding"][0]["code"] = "refuted"
    other_system = fs.condition("c-who", eid=None, system="http://hl7.org/fhir/sid/icd-10")
    two_given = fs.patient("p-two", name=[{"family": "Muster", "given": ["Anna", "Maria"]}])
    variants = [refuted, other_system, two_given, *[m for _, m in fs.mutations(fs.lab())]]
    hits, _ = check_lines([orjson.dumps(r) for r in base + variants])
    assert hits > 0


SHARED = Path(__file__).resolve().parents[3] / "shared"
MII = SHARED / "external" / "mii-testdata" / "kds-testdata" / "fsh-generated" / "resources"


@pytest.mark.skipif(not MII.is_dir(), reason=f"MII test data not found at {MII} (../shared absent)")
def test_plans_equal_the_extractor_on_mii_test_data():
    lines = []
    for f in sorted(MII.glob("Bundle-*.json")):
        for e in orjson.loads(f.read_bytes()).get("entry", []):
            lines.append(orjson.dumps(e["resource"]))
    check_lines(lines)


def test_duplicate_keys_never_teach_the_fast_paths():
    """A duplicate key shifts raw tokens against the parsed dict: nothing may be learnt from it."""
    from fhir.resources.R4B import get_fhir_model_class

    v = FastValidator()
    lines = [
        b'{"resourceType":"Patient","gender":"female","birthDate":"1980-02-02"}',
        b'{"resourceType":"Patient","gender":null,"birthDate":"1990-01-01","gender":"male"}',
        b'{"resourceType":"Patient","gender":"female","birthDate":"male"}',
        b'{"resourceType":"Patient","gender":null,"birthDate":"not-a-date","gender":"1990-01-01"}',
    ]
    for raw in lines:
        res = orjson.loads(raw)
        try:
            get_fhir_model_class("Patient").model_validate(res)
            expected = None
        except Exception:
            expected = "invalid"
        assert (v.validate(res, raw) is None) == (expected is None), raw


def test_plans_reject_invalid_utf8_and_keep_number_types():
    validator = FastValidator()
    planner = Planner(validator)
    good = fs.patient("p1")
    good["name"] = [{"text": "Anna", "family": "Muster"}]
    raw = orjson.dumps(good)
    assert validator.validate(good, raw) is None
    planner.learn(good, raw, extract(good))
    assert planner.match(raw) is not None
    assert planner.match(raw.replace(b"Anna", b"An\xffna")) is None  # not UTF-8: generic path decides
    assert planner.match(raw.replace(b"Muster", b"Mu\xffster")) is None
    # value_num is float(dose) whatever the JSON number looks like; extra keeps the JSON type
    ms = fs.medication_statement()
    ms["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 2.5
    raw = orjson.dumps(ms)
    assert validator.validate(ms, raw) is None
    planner.learn(ms, raw, extract(ms))
    as_int = raw.replace(b'"value":2.5', b'"value":2')
    fast = planner.match(as_int)
    assert fast is not None
    assert json_form(fast) == json_form(extract(orjson.loads(as_int)))
    assert type(fast.rows[0]["value_num"]) is float
