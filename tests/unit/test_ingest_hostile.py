"""Ingest, hostile values inside well-formed files: duplicate JSON keys, deep nesting, huge integers.
Each is either read correctly or quarantined with a reason that says what is wrong; never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinsynth.fhir import jsonio
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.sources import read_bundles, read_ndjson
from clinsynth.records import iter_patients
from tests import fhir_samples as fs
from tests.unit.test_ingest import accounted, quarantine

OPTS = Options(as_of="2026-01-01")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def run_lines(
    tmp_path: Path, extra: dict[str, list[bytes]], workers: int = 1, opts: Options = OPTS
) -> tuple[dict, list[dict]]:
    """one_patient() plus `extra` raw lines per type; the report (all accounted for) and quarantine."""
    src = tmp_path / "in"
    src.mkdir()
    by_type: dict[str, list[bytes]] = {}
    for r in fs.one_patient():
        by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rt, lines in extra.items():
        by_type.setdefault(rt, []).extend(lines)
    for rt, lines in by_type.items():
        (src / f"{rt}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest(read_ndjson(src), tmp_path / "out", opts, workers=workers, chunk=4)
    assert accounted(report)
    return report, quarantine(tmp_path / "out")


def nested_extension(levels: int) -> dict[str, Any]:
    v: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "leaf"}
    for i in range(levels):
        v = {"url": f"http://example.org/e{i}", "extension": [v]}
    return v


# ---- duplicate keys


DUP = b'{"resourceType":"Patient","id":"pd","gender":"male","gender":"female","birthDate":"1950-01-01"}'


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    "line, key",
    [
        (DUP, "gender"),
        (DUP.replace(b",", b", "), "gender"),  # not compact: the slow path alone finds it
        (b'{"resourceType":"Patient","id":"pd","name":[{"family":"A","family":"B"}]}', "family"),
        (b'{"resourceType":"Patient","id":"pd","id":"other"}', "id"),
    ],
)
def test_a_duplicate_key_is_quarantined_naming_the_key(tmp_path, workers, line, key):
    # many Patients first: their shape has a regex and an extraction plan, which must not match
    good = [orjson.dumps(fs.patient(f"g{i}")) for i in range(12)]
    report, q = run_lines(tmp_path, {"Patient": [*good, line]}, workers)
    [entry] = q
    assert entry["reason"] == "duplicate_key" and repr(key) in entry["detail"]
    assert entry["source"] == "Patient.ndjson" and entry["line"] == 14
    assert entry["resource_type"] == "Patient"
    assert report["resources_ok"] == len(fs.one_patient()) + 12


def test_lines_that_are_not_compact_but_have_no_duplicate_are_read(tmp_path):
    spaced = json.dumps(fs.patient("spaced")).encode()  # ", " and ": "
    escaped = orjson.dumps(fs.patient("esc")).replace(b'"female"', b'"fem\\u0061le"')
    report, q = run_lines(tmp_path, {"Patient": [spaced, escaped]})
    assert q == [] and report["resources_ok"] == len(fs.one_patient()) + 2


def test_fast_path_is_exact():
    obj, dumped = jsonio.loads_line(orjson.dumps(fs.patient("x")))
    assert dumped == orjson.dumps(obj)
    with pytest.raises(jsonio.JsonProblem) as err:
        jsonio.loads_line(DUP)
    assert err.value.reason == "duplicate_key" and err.value.value["id"] == "pd"


def bundle(entries: list[Any], **top: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", **top, "entry": entries}


def test_a_duplicate_key_in_a_bundle_entry_quarantines_that_entry_only(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = [{"resource": r} for r in fs.one_patient()]
    text = json.dumps(bundle([*good, {"resource": fs.patient("pd")}]), indent=1)
    # the last entry's Patient gets a second gender; entry 0's wrapper a second fullUrl
    text = text.replace('"id": "pd",', '"id": "pd", "gender": "male",', 1)
    text = text.replace('"resource": {', '"fullUrl": "urn:a", "fullUrl": "urn:b", "resource": {', 1)
    (src / "b.json").write_text(text)
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=1)
    assert accounted(report)
    q = {e["location"]: e for e in quarantine(tmp_path / "out")}
    assert q["entry[0]"]["reason"] == "duplicate_key" and "'fullUrl'" in q["entry[0]"]["detail"]
    last = f"entry[{len(good)}]"
    assert q[last]["reason"] == "duplicate_key" and "'gender'" in q[last]["detail"]
    # entry 0 (the Patient) is gone, so the rest of one_patient dangles; nothing crashed
    assert report["resources_read"] == len(good) + 1


def test_a_duplicate_key_in_the_bundle_itself_is_reported_and_its_entries_read(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    text = json.dumps(bundle([{"resource": r} for r in fs.one_patient()]))
    text = text.replace('"type": "collection"', '"type": "collection", "type": "batch"')
    (src / "b.json").write_text(text)
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=0)
    assert accounted(report)
    [entry] = quarantine(tmp_path / "out")
    assert (
        entry["reason"] == "duplicate_key" and entry["location"] == "Bundle" and "'type'" in entry["detail"]
    )
    assert report["resources_ok"] == len(fs.one_patient())


# ---- deep nesting


@pytest.mark.parametrize("workers", [0, 1])
def test_deep_extensions_are_read_and_too_deep_ones_quarantined(tmp_path, workers):
    ok = fs.patient("deep130", extension=[nested_extension(130)])
    ok_200 = fs.patient("deep200", extension=[nested_extension(200)])
    too_deep = fs.patient("deep2000", extension=[nested_extension(2000)])
    lab = fs.lab("o-deep")
    lab["extension"] = [nested_extension(130)]
    with jsonio.deep_stack():
        lines = {"Patient": [compact(ok), compact(ok_200), compact(too_deep)], "Observation": [compact(lab)]}
    report, q = run_lines(tmp_path, lines, workers)
    [entry] = q
    assert entry["reason"] == "too_deep" and entry["line"] == 4 and entry["id"] == "deep2000"
    assert entry["exception"] == "JSONDecodeError"  # orjson's reader refused it
    assert "500 levels" in entry["detail"]
    assert report["resources_ok"] == len(fs.one_patient()) + 3
    ids = {rec.patient["patient_id"] for rec in iter_patients(tmp_path / "out" / "records")}
    assert {"deep130", "deep200"} <= ids


@pytest.mark.parametrize("levels", [40, 121, 122, 125, 126, 200, 245])
def test_every_depth_up_to_the_limit_is_valid_fhir_to_the_validator(levels):
    """Around 122 nested extensions fhir.resources exhausts Python's default recursion limit; orjson's
    writer gives up at 126: the generic path and the deep path must both say valid."""
    from clinsynth.ingest.process import Processor
    from clinsynth.ingest.sources import Item

    res = fs.patient(f"d{levels}", extension=[nested_extension(levels)])
    with jsonio.deep_stack():
        r = Processor(OPTS).one(Item("x.ndjson", 1, compact(res)))
    assert r.reason is None, r.detail


def test_deep_entries_in_bundles_too(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    entries = [{"resource": r} for r in fs.one_patient()]
    entries.append({"resource": fs.patient("deep130", extension=[nested_extension(130)])})
    entries.append({"resource": fs.patient("deep2000", extension=[nested_extension(2000)])})
    with jsonio.deep_stack():
        (src / "b.json").write_bytes(compact(bundle(entries)))
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=1)
    assert accounted(report)
    [entry] = quarantine(tmp_path / "out")
    assert entry["reason"] == "too_deep" and entry["location"] == f"entry[{len(entries) - 1}]"
    assert report["resources_ok"] == len(fs.one_patient()) + 1


@pytest.mark.parametrize("levels", [130, 2000])
def test_deep_entries_of_transaction_bundles_with_urn_references(tmp_path, levels):
    """urn:uuid references are resolved by walking each entry: a deep one must not crash that walk."""
    src = tmp_path / "in"
    src.mkdir()
    pid = "urn:uuid:6f1f5b1c-0000-4000-8000-000000000001"
    pat = fs.patient("px", extension=[nested_extension(levels)])
    enc = fs.encounter("ex", "px")
    enc["subject"] = {"reference": pid}
    entries = [{"fullUrl": pid, "resource": pat}, {"fullUrl": "urn:uuid:x2", "resource": enc}]
    doc = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    with jsonio.deep_stack():
        (src / "tx.json").write_bytes(compact(doc))
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=1)
    assert accounted(report)
    q = quarantine(tmp_path / "out")
    if levels == 130:
        assert q == [] and report["resources_ok"] == 2
    else:  # the Patient is too deep; the Encounter then dangles
        assert [e["reason"] for e in q] == ["too_deep", "dangling_reference"], q


def test_bundles_nested_in_bundles_a_thousand_deep_are_quarantined_not_a_crash(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    doc: dict[str, Any] = bundle([{"resource": fs.patient("p-inner")}])
    for _ in range(1000):
        doc = bundle([{"resource": doc}])
    with jsonio.deep_stack():
        (src / "nest.json").write_bytes(compact(doc))
    (src / "ok.json").write_bytes(orjson.dumps(bundle([{"resource": r} for r in fs.one_patient()])))
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=1)
    assert accounted(report)
    [entry] = quarantine(tmp_path / "out")
    assert (
        entry["reason"] == "too_deep" and entry["source"] == "nest.json" and "64 Bundles" in entry["detail"]
    )
    assert report["resources_ok"] == len(fs.one_patient())


def test_a_file_deeper_than_json_can_parse_is_quarantined_whole(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "b.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    (src / "ok.json").write_bytes(orjson.dumps(bundle([{"resource": r} for r in fs.one_patient()])))
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=0)
    assert accounted(report)
    [entry] = quarantine(tmp_path / "out")
    assert entry["reason"] == "too_deep" and entry["source"] == "b.json"


# ---- integers beyond 2**53, 2**63, 2**64


BIG = [2**53 + 1, 2**63 + 5, 2**64 + 5, -(2**63) - 5, -(2**70), 10**40]


def _with_value(where: str, v: int) -> tuple[str, dict[str, Any]]:
    n = BIG.index(v)
    if where == "valueQuantity":
        o = fs.lab(f"q{n}")
        o["valueQuantity"]["value"] = v
        return "Observation", o
    if where == "valueInteger":
        o = fs.lab(f"i{n}")
        o.pop("valueQuantity")
        o["valueInteger"] = v
        return "Observation", o
    if where == "component":
        o = fs.lab(f"c{n}")
        o["component"] = [{"code": {"text": "x"}, "valueQuantity": {"value": v, "unit": "g"}}]
        return "Observation", o
    if where == "referenceRange":
        o = fs.lab(f"r{n}")
        o["referenceRange"] = [{"low": {"value": v}, "high": {"value": 1}}]
        return "Observation", o
    if where == "extension-decimal":
        return "Patient", fs.patient(f"d{n}", extension=[{"url": "http://x", "valueDecimal": v}])
    if where == "extension-integer":
        return "Patient", fs.patient(f"e{n}", extension=[{"url": "http://x", "valueInteger": v}])
    if where == "dose":
        o = fs.medication_statement(f"m{n}")
        o["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] = v
        return "MedicationStatement", o
    raise AssertionError(where)


DECIMALS = ("valueQuantity", "component", "referenceRange", "extension-decimal", "dose")
INTEGERS = ("valueInteger", "extension-integer")


@pytest.mark.parametrize("where", DECIMALS + INTEGERS)
def test_huge_integers_are_read_as_floats_or_quarantined_naming_the_field(tmp_path, where):
    lines: dict[str, list[bytes]] = {}
    for v in BIG:
        rt, res = _with_value(where, v)
        lines.setdefault(rt, []).append(compact(res))  # exactly as written: json keeps every digit
    report, q = run_lines(tmp_path, lines)
    if where in INTEGERS:  # FHIR integer is 32-bit signed
        assert len(q) == len(BIG) and {e["reason"] for e in q} == {"invalid_resource"}
        assert all("valueInteger" in e["detail"] for e in q)
        return
    assert q == [], q
    assert report["resources_ok"] == len(fs.one_patient()) + len(BIG)
    if where == "valueQuantity":
        [rec] = list(iter_patients(tmp_path / "out" / "records"))
        nums = sorted(f["value_num"] for e in rec.encounters.values() for f in e.facts if f["value_num"])
        for v in BIG:
            assert any(n == float(v) for n in nums), (v, nums)


def test_huge_integers_in_bundles_too(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    entries = [{"resource": r} for r in fs.one_patient()]
    for v in BIG:
        entries.append({"resource": _with_value("valueQuantity", v)[1]})
        entries.append({"resource": _with_value("valueInteger", v)[1]})
    (src / "b.json").write_text(json.dumps(bundle(entries), indent=2))
    report = ingest(read_bundles(src), tmp_path / "out", OPTS, workers=1)
    assert accounted(report)
    q = quarantine(tmp_path / "out")
    assert len(q) == len(BIG) and all("valueInteger" in e["detail"] for e in q)
    assert report["resources_ok"] == len(fs.one_patient()) + len(BIG)


def test_a_value_arrow_refuses_quarantines_its_record_not_the_chunk(tmp_path, monkeypatch):
    """Whatever slips past validation into a row that Arrow cannot hold costs that record only."""
    from clinsynth.ingest import extract as extract_module

    real = extract_module._fact

    def odd(res, category, **kw):
        row = real(res, category, **kw)
        if res.get("id") == "o-odd":
            row["value_num"] = object()  # no Arrow type takes it
        return row

    monkeypatch.setattr(extract_module, "_fact", odd)
    lines = {"Observation": [orjson.dumps(fs.lab("o-odd"))]}
    plain = Options(as_of="2026-01-01", plans=False)  # a plan would fill the row without _fact
    report, q = run_lines(tmp_path, lines, workers=0, opts=plain)
    [entry] = q
    assert entry["reason"] == "internal_error" and entry["id"] == "o-odd" and entry["exception"]
    assert entry["line"] == 2 and entry["source"] == "Observation.ndjson"
    assert report["resources_ok"] == len(fs.one_patient())


def test_a_file_that_vanishes_after_the_scan_is_quarantined_and_the_run_goes_on(tmp_path, monkeypatch):
    from clinsynth.ingest import pool

    real = pool.read_range

    def vanishing(path, *args):
        if path.name == "Extra.ndjson":
            path.unlink(missing_ok=True)
        return real(path, *args)

    monkeypatch.setattr(pool, "read_range", vanishing)  # forked workers inherit the patch
    report, q = run_lines(tmp_path, {"Extra": [orjson.dumps(fs.patient("p-gone"))]}, workers=1)
    [entry] = q
    assert entry["reason"] == "unreadable" and entry["source"] == "Extra.ndjson" and entry["line"] == 1
    assert "could not be read" in entry["detail"]
    assert report["resources_ok"] == len(fs.one_patient())
