"""Extraction plans must give exactly what the generic extractor gives, resource by resource."""

from __future__ import annotations

import functools
import inspect
import random
import types
from pathlib import Path

import orjson
import pytest

from clinsynth.cohort.fhir_build import resources
from clinsynth.cohort.generator import CohortConfig, CohortGenerator
from clinsynth.fhir import conventions
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest import extract as extract_module
from clinsynth.ingest.extract import STEERING, SUPPORTED, extract, steering
from clinsynth.ingest.plans import Planner, _leaf_paths, _set, json_form
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


# ---- property: steering fields are declared by the extractor, and plans honour them


def _constants(code: types.CodeType, out: set) -> None:
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _constants(c, out)
        elif isinstance(c, tuple):
            out.update(c)
        else:
            out.add(c)


def _vocabulary() -> dict[type, list]:
    """Values an extractor may react to, by JSON type (str / number), found without trusting the
    declarations: every declared value, every literal in the extractors' code, the keys of the
    module's lookup tables (a new `== "foo"` check brings "foo" along by itself), and the profiles
    and code systems of `fhir.conventions`."""
    found: set = set()
    for fields in STEERING.values():
        for values in fields.values():
            found.update(values)
    for name, obj in vars(extract_module).items():
        if inspect.isfunction(obj) and obj.__module__ == extract_module.__name__:
            _constants(obj.__code__, found)
        elif name.startswith("_") and name[1:].isupper() and isinstance(obj, dict):
            found.update(obj)
    for name, obj in vars(conventions).items():  # the FHIR vocabulary clinsynth writes and reads
        if name.isupper():
            found.update(obj.values() if isinstance(obj, dict) else [obj] if isinstance(obj, str) else obj)
    strs = sorted(v for v in found if isinstance(v, str) and 0 < len(v) < 200 and " " not in v)
    nums = sorted({v for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {str: strs, int: nums}


def _values(rng: random.Random, old: object, vocab: dict[type, list], declared: tuple, n: int | None) -> list:
    """Values of the leaf's JSON type: all declared for this field, `n` from the vocabulary (None: all
    of it), and a few random ones."""
    if isinstance(old, str):
        pool = vocab[str]
        noise = "".join(rng.choices("abcXYZ019-./:", k=rng.randint(1, 12)))
        extra: list[str | int | float] = [old.upper(), old + "x", noise]
        if len(old) >= 10 and old[4] == "-" and old[7] == "-":  # a date: keep it a date
            extra.append(
                f"{rng.randint(1930, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}{old[10:]}"
            )
    else:
        pool = vocab[int]
        extra = [rng.randint(0, 5), rng.randint(0, 10**6), round(rng.uniform(0, 100), 2)]
    picked = pool if n is None else rng.sample(pool, min(n, len(pool)))
    return [v for v in (*declared, *picked, *extra) if isinstance(v, str) == isinstance(old, str)]


def property_mismatches(
    lines: list[bytes], seed: int, per_leaf: int | None = 3, first: bool = False
) -> list[str]:
    """Learn plans from `lines`, then put random and declared values into every leaf of every
    exemplar (every steering field gets each of its declared values): wherever a plan matches the
    mutated line, it must be valid and extracted exactly as `extract()` does. `first` stops at the
    first mismatch: a test that expects the property to fail needs only one, and the full sweep of
    every vocabulary value through every leaf of every exemplar costs ~20 s of CPU."""
    rng = random.Random(seed)
    vocab = _vocabulary()
    validator = FastValidator()
    planner = Planner(validator)
    exemplars = []
    for raw in lines:
        res = orjson.loads(raw)
        if planner.match(raw) is None and validator.validate(res, raw) is None:
            planner.learn(res, raw, extract(res))
            exemplars.append(res)
    assert planner.plans, "no plan was learnt: nothing to test"
    bad: list[str] = []
    for res in exemplars:
        steers = steering(res["resourceType"])
        for path, dotted in _leaf_paths(res):
            if dotted == "resourceType":
                continue
            old = res
            for p in path:
                old = old[p]
            for value in _values(rng, old, vocab, steers.get(dotted, ()), per_leaf):
                probe = orjson.loads(orjson.dumps(res))
                _set(probe, path, value)
                raw = orjson.dumps(probe)
                fast = planner.match(raw)
                if fast is None:
                    continue
                if validator.validate(probe, raw) is not None:
                    bad.append(f"{dotted}={value!r}: a plan accepted an invalid resource")
                elif json_form(fast) != json_form(extract(probe)):
                    bad.append(f"{res['resourceType']}.{dotted}={value!r}: plan and extractor differ")
                if bad and first:
                    return bad
    return bad


@functools.cache
def _property_lines() -> tuple[bytes, ...]:
    """One cohort's lines for all property tests in this module (built once)."""
    gen = CohortGenerator(CohortConfig(seed=11))
    med_ids: dict[str, str] = {}
    lines = [orjson.dumps(r) for i in range(40) for r in resources(gen.person(i), 0, med_ids)]
    lines += [orjson.dumps(r) for r in fs.one_patient()]
    return tuple(lines)


def test_plans_equal_the_extractor_under_random_values_in_every_field():
    assert property_mismatches(list(_property_lines()), seed=1, per_leaf=8) == []


@pytest.mark.skipif(not MII.is_dir(), reason=f"MII test data not found at {MII} (../shared absent)")
def test_plans_equal_the_extractor_under_random_values_on_mii_shapes():
    lines = []
    for f in sorted(MII.glob("Bundle-*.json")):
        lines += [orjson.dumps(e["resource"]) for e in orjson.loads(f.read_bytes()).get("entry", [])]
    assert property_mismatches(lines, seed=2, per_leaf=1) == []


@pytest.mark.parametrize(
    ("resource_type", "field"),
    [
        ("Condition", "verificationStatus.coding.code"),
        ("Condition", "clinicalStatus.coding.code"),
        ("Observation", "meta.profile"),
    ],
)
def test_the_property_catches_an_undeclared_steering_field(monkeypatch, resource_type, field):
    """Drop one declaration: plans then treat the field as a copied value (the sentinel probes cannot
    tell: a lookup maps exemplar and sentinel alike), and the property fails."""
    fields = {k: v for k, v in STEERING[resource_type].items() if k != field}
    monkeypatch.setitem(STEERING, resource_type, fields)
    lines = [ln for ln in _property_lines() if b'"resourceType":"' + resource_type.encode() in ln]
    # every vocabulary value in every leaf, until the first mismatch: the verdict of the full sweep
    assert property_mismatches(lines, seed=3, per_leaf=None, first=True)


def test_every_extracted_type_declares_its_steering_fields():
    assert set(STEERING) == set(SUPPORTED)
    for fields in STEERING.values():
        assert "resourceType" in fields
        assert all(isinstance(v, tuple) for v in fields.values())
