"""Fault injection for ingest: one table of bad inputs (lines, files, Bundles), one set of invariants.

Many kinds are tested in depth elsewhere (test_ingest.py, test_ingest_files.py,
test_ingest_hostile.py); here every kind goes through the same checks (`check`):

- the ingest finishes; with strict=true it fails with a message naming the file (and the line,
  for a bad NDJSON line) — or finishes too, when nothing was bad;
- resources read = ok + quarantined + ignored + identical repeats (ingest_report.json);
- every quarantine entry names its file, its line (or, in a Bundle, its location) and a reason;
- a secret in the environment (FHIR_TOKEN) never reaches any file under the output folder.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinsynth.fhir.jsonio import deep_stack
from clinsynth.ingest.options import REASONS
from clinsynth.ingest.pipeline import IngestError, Options, ingest
from clinsynth.ingest.sources import read_bundles, read_ndjson
from tests import fhir_samples as fs

GOOD = fs.one_patient()


def _nested(levels: int) -> dict[str, Any]:
    v: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "leaf"}
    for i in range(levels):
        v = {"url": f"http://example.org/e{i}", "extension": [v]}
    return v


def _compact(obj: Any) -> bytes:
    with deep_stack():
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def write_good(folder: Path, name: str = "{rt}.ndjson", sep: bytes = b"\n", head: bytes = b"") -> None:
    """one_patient() as one NDJSON file per type."""
    by_type: dict[str, list[bytes]] = {}
    for r in GOOD:
        by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for rt, lines in by_type.items():
        f = folder / name.format(rt=rt)
        f.parent.mkdir(parents=True, exist_ok=True)
        data = head + sep.join(lines) + sep
        f.write_bytes(gzip.compress(data) if f.name.lower().endswith(".gz") else data)


def add_lines(folder: Path, *lines: bytes, name: str = "Extra.ndjson") -> None:
    write_good(folder)
    (folder / name).write_bytes(b"\n".join(lines) + b"\n")


def write_bundle(folder: Path, extra: list[Any], name: str = "b.json", **top: Any) -> None:
    entries = [{"resource": r} for r in [*GOOD, *extra]]
    doc = {"resourceType": "Bundle", "type": "collection", **top, "entry": entries}
    (folder / name).write_bytes(orjson.dumps(doc))


@dataclass
class Case:
    build: Callable[[Path], None]
    reasons: set[str] = field(default_factory=set)  # exactly these quarantine reasons
    skipped: str | None = None  # a files_skipped reason containing this
    bundles: bool = False
    workers: int = 1
    repeats: int = 0  # identical repeats expected
    extra_ok: int | None = None  # resources accepted beyond one_patient()


def _line(r: dict[str, Any]) -> bytes:
    return orjson.dumps(r)


def _patient(**kw: Any) -> dict[str, Any]:
    p = fs.patient("px")
    p.update(kw)
    return p


def _without(r: dict[str, Any], key: str) -> dict[str, Any]:
    r = copy.deepcopy(r)
    r.pop(key)
    return r


def _symlink_loop(folder: Path) -> None:
    write_good(folder)
    (folder / "loop.ndjson").symlink_to(folder / "loop.ndjson")


def _unreadable(folder: Path) -> None:
    write_good(folder)
    f = folder / "Extra.ndjson"
    f.write_bytes(_line(fs.patient("p-unreadable")) + b"\n")
    f.chmod(0)
    try:
        f.open("rb").close()
    except PermissionError:
        return
    pytest.skip("running as root: chmod 000 does not stop reading")


def _truncated_gz(folder: Path) -> None:
    write_good(folder)
    data = b"\n".join(_line(fs.patient(f"gz{i}")) for i in range(300)) + b"\n"
    packed = gzip.compress(data)
    (folder / "Patient-2.ndjson.gz").write_bytes(packed[: len(packed) // 2])


def _conflicting_ids(folder: Path) -> None:
    add_lines(folder, _line(fs.patient("p1", gender="male")))


def _foreign_ref(folder: Path) -> None:
    c = fs.condition("c-foreign", eid=None)
    c["subject"]["reference"] = "https://other.example/fhir/Patient/p1"
    add_lines(folder, _line(c))


def _big_int(folder: Path) -> None:
    o = fs.lab("o-big")
    o["valueQuantity"]["value"] = 2**63 + 5
    i = _without(fs.lab("o-int"), "valueQuantity")
    i["valueInteger"] = 2**40
    add_lines(folder, json.dumps(o).encode(), json.dumps(i).encode(), name="Observation-2.ndjson")


def _urn_bundle(folder: Path) -> None:
    pid, eid = uuid.uuid4(), uuid.uuid4()
    pat = _without(fs.patient("x"), "id")
    enc = _without(fs.encounter("x", "x"), "id")
    enc["subject"] = {"reference": f"urn:uuid:{pid}"}
    doc = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{pid}", "resource": pat, "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": f"urn:uuid:{eid}",
                "resource": enc,
                "request": {"method": "POST", "url": "Encounter"},
            },
        ],
    }
    write_bundle(folder, [])
    (folder / "tx.json").write_bytes(orjson.dumps(doc))


def _nested_bundle(folder: Path) -> None:
    inner = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": fs.patient("p-inner")}]}
    write_bundle(folder, [inner])


def _non_utf8_name(folder: Path) -> None:
    write_good(folder)
    (folder / os.fsdecode(b"Patient-\xff.ndjson")).write_bytes(_line(fs.patient("p-ff")) + b"\n")


CASES: dict[str, Case] = {
    # ---- bad lines
    "truncated json": Case(
        lambda d: add_lines(d, b'{"resourceType":"Patient","id":"t1"'), {"malformed_json"}
    ),
    "wrong value type": Case(lambda d: add_lines(d, _line(_patient(gender=5))), {"invalid_resource"}),
    "utf-8 bom": Case(lambda d: write_good(d, head=b"\xef\xbb\xbf"), extra_ok=0),
    "cr-only line ends": Case(lambda d: write_good(d, sep=b"\r"), extra_ok=0, workers=2),
    "crlf line ends": Case(lambda d: write_good(d, sep=b"\r\n"), extra_ok=0),
    "nul byte": Case(lambda d: add_lines(d, b'{"resourceType":"Patient","id":"n\x00"}'), {"malformed_json"}),
    "invalid utf-8": Case(
        lambda d: add_lines(d, b'{"resourceType":"Patient","id":"u1","gender":"\xff"}'), {"malformed_json"}
    ),
    "huge line": Case(
        lambda d: add_lines(d, _line(_patient(name=[{"family": "x" * 3_000_000}]))), extra_ok=1
    ),
    "not an object": Case(lambda d: add_lines(d, b"[1, 2, 3]", b'"text"', b"42"), {"invalid_resource"}),
    "blank lines between": Case(
        lambda d: add_lines(d, b"", b"   ", _line(fs.patient("p-b")), b""), extra_ok=1
    ),
    "duplicate key": Case(
        lambda d: add_lines(d, b'{"resourceType":"Patient","id":"d","gender":"male","gender":"female"}'),
        {"duplicate_key"},
        workers=2,
    ),
    "deep nesting 130": Case(
        lambda d: add_lines(d, _compact(fs.patient("p-deep", extension=[_nested(130)]))), extra_ok=1
    ),
    "deep nesting 2000": Case(
        lambda d: add_lines(d, _compact(fs.patient("p-deeper", extension=[_nested(2000)]))), {"too_deep"}
    ),
    "big integers": Case(_big_int, {"invalid_resource"}, extra_ok=1),
    "missing id": Case(lambda d: add_lines(d, _line(_without(fs.patient("x"), "id"))), {"extraction_failed"}),
    "id too long": Case(lambda d: add_lines(d, _line(fs.patient("p" * 65))), {"invalid_resource"}),
    "bad id characters": Case(lambda d: add_lines(d, _line(fs.patient("a b/c"))), {"invalid_resource"}),
    "missing resourceType": Case(
        lambda d: add_lines(d, _line(_without(fs.patient("x"), "resourceType"))), {"invalid_resource"}
    ),
    "unknown resourceType": Case(
        lambda d: add_lines(d, b'{"resourceType":"Frobnication","id":"f1"}'), {"invalid_resource"}
    ),
    "ignored resourceType": Case(
        lambda d: add_lines(d, b'{"resourceType":"Basic","id":"b1","code":{"text":"x"}}'), extra_ok=1
    ),
    "death before birth": Case(
        lambda d: add_lines(d, _line(fs.patient("p-dead", deceasedDateTime="1940-01-01"))),
        {"impossible_date"},
    ),
    "dangling reference": Case(
        lambda d: add_lines(d, _line(fs.condition("c-d", pid="nobody", eid=None))), {"dangling_reference"}
    ),
    "foreign reference": Case(_foreign_ref, {"dangling_reference"}),
    "conflicting duplicate ids": Case(_conflicting_ids, {"duplicate_id"}, workers=2),
    "identical repeats": Case(
        lambda d: add_lines(d, _line(fs.patient("p1")), _line(fs.patient("p1"))), repeats=2
    ),
    "unknown code system": Case(
        lambda d: add_lines(d, _line(fs.condition("c-s", system="http://example.org/x", eid=None))),
        {"unknown_code_system"},
    ),
    "date after the reference day": Case(
        lambda d: add_lines(d, _line(fs.lab("o-future", when="2030-01-01"))), {"impossible_date"}
    ),
    # ---- bad files
    "empty file": Case(lambda d: add_lines(d, name="Empty.ndjson"), extra_ok=0),
    "blank lines only": Case(lambda d: add_lines(d, b"", b"  ", b"\r", name="Blank.ndjson"), extra_ok=0),
    "truncated gzip": Case(_truncated_gz, skipped="not a valid gzip file"),
    "text named .gz": Case(
        lambda d: (write_good(d), (d / "Patient-2.ndjson.gz").write_bytes(_line(fs.patient("p-t")) + b"\n")),
        skipped="not a valid gzip file",
    ),
    "dangling symlink": Case(
        lambda d: (write_good(d), (d / "gone.ndjson").symlink_to(d / "nowhere.ndjson")), skipped="dangling"
    ),
    "symlink loop": Case(_symlink_loop, skipped="loop"),
    "folder named x.ndjson": Case(
        lambda d: (write_good(d), (d / "x.ndjson").mkdir()), skipped="a folder, not a file", extra_ok=0
    ),
    "fifo": Case(lambda d: (write_good(d), os.mkfifo(d / "fifo.ndjson")), skipped="FIFO", workers=0),
    "unreadable file": Case(_unreadable, skipped="ermission"),
    "non-utf-8 file name": Case(_non_utf8_name, extra_ok=1),
    "upper-case .NDJSON": Case(lambda d: write_good(d, "{rt}.NDJSON"), extra_ok=0),
    ".jsonl and .jsonl.gz": Case(lambda d: write_good(d, "{rt}.jsonl.gz"), extra_ok=0),
    "nested folders": Case(lambda d: write_good(d, "a/b/c/{rt}.ndjson"), extra_ok=0, workers=0),
    "other file names": Case(
        lambda d: (write_good(d), (d / "notes.txt").write_text("x"), (d / "x.json").write_text("{}")),
        extra_ok=0,
    ),
    # ---- bad Bundles
    "nested bundle": Case(_nested_bundle, bundles=True, extra_ok=1),
    "urn:uuid fullUrls": Case(_urn_bundle, bundles=True, extra_ok=2, workers=2),
    "entry without resource": Case(
        lambda d: (
            write_bundle(d, [])
            or (d / "c.json").write_bytes(
                orjson.dumps(
                    {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:x"}]}
                )
            )
        ),
        {"invalid_resource"},
        bundles=True,
    ),
    "entry without resourceType": Case(
        lambda d: write_bundle(d, [{"id": "no-type"}]), {"invalid_resource"}, bundles=True
    ),
    "entry not an object": Case(
        lambda d: (
            (d / "c.json").write_bytes(
                orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [5, "x"]})
            )
            or write_bundle(d, [])
        ),
        {"invalid_resource"},
        bundles=True,
    ),
    "bundle of another type": Case(lambda d: write_bundle(d, [], type="searchset"), bundles=True, extra_ok=0),
    "bundle entry is not a list": Case(
        lambda d: (write_bundle(d, []), (d / "c.json").write_text('{"resourceType":"Bundle","entry":{}}')),
        {"invalid_resource"},
        bundles=True,
    ),
    "malformed bundle file": Case(
        lambda d: (write_bundle(d, []), (d / "c.json").write_text('{"resourceType": "Bund')),
        {"malformed_json"},
        bundles=True,
    ),
    "duplicate key in a bundle entry": Case(
        lambda d: (
            write_bundle(d, []),
            (d / "c.json").write_text(
                '{"resourceType":"Bundle","type":"collection","entry":[{"resource":'
                '{"resourceType":"Patient","id":"q","gender":"male","gender":"female"}}]}'
            ),
        ),
        {"duplicate_key"},
        bundles=True,
    ),
    "a single resource file": Case(
        lambda d: (write_bundle(d, []), (d / "p.json").write_bytes(orjson.dumps(fs.patient("p-single")))),
        bundles=True,
        extra_ok=1,
    ),
}


def _run(src: Path, out: Path, case: Case, strict: bool) -> dict[str, Any]:
    source = read_bundles(src) if case.bundles else read_ndjson(src)
    opts = Options(as_of="2026-01-01", strict=strict)
    return ingest(source, out, opts, workers=case.workers, chunk=3)


def check(tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = f"secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("FHIR_TOKEN", marker)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    case.build(src)
    report = _run(src, out, case, strict=False)

    stored = orjson.loads((out / "ingest_report.json").read_bytes())
    repeats = sum(stored["identical_repeats_by_type"].values())
    assert stored["resources_read"] == (
        stored["resources_ok"] + stored["resources_quarantined"] + stored["resources_ignored"] + repeats
    ), stored
    assert stored["resources_read"] == report["resources_read"]
    q = [orjson.loads(x) for x in (out / "quarantine.ndjson").read_bytes().splitlines()]
    assert len(q) == stored["resources_quarantined"]
    for e in q:
        assert e["source"] and e["reason"] in REASONS and e["detail"], e
        if case.bundles:  # a Bundle entry has its location; without one, the record is the whole file
            assert e["line"] is None and (e["location"] or e["resource_type"] in (None, "Bundle")), e
        else:
            assert isinstance(e["line"], int) and e["line"] >= 1, e
    assert {e["reason"] for e in q} == case.reasons, q
    if case.skipped is not None:
        assert any(case.skipped in s["reason"] for s in stored["files_skipped"]), stored["files_skipped"]
    if case.repeats:
        assert repeats == case.repeats
    if case.extra_ok is not None:
        assert stored["resources_ok"] + stored["resources_ignored"] == len(GOOD) + case.extra_ok, stored
    for f in out.rglob("*"):
        if f.is_file():
            assert marker.encode() not in f.read_bytes(), f"{f} holds the token"
    assert not list(out.glob("_parts*")) and not list(out.rglob("*.tmp"))

    problems = [s for s in stored["files_skipped"] if case.skipped and case.skipped in s["reason"]]
    if not q and not problems:
        _run(src, tmp_path / "strict", case, strict=True)  # nothing bad: strict finishes too
        return
    with pytest.raises(IngestError) as err:
        _run(src, tmp_path / "strict", case, strict=True)
    msg = str(err.value)
    named = [f"{e['source']}:{e['line']}" if e["line"] else e["source"] for e in q]
    named += [s["file"] for s in problems]
    assert any(n in msg for n in named), (msg, named)


@pytest.mark.parametrize("kind", list(CASES))
def test_fault(tmp_path, monkeypatch, kind):
    check(tmp_path, CASES[kind], monkeypatch)


def test_the_table_is_broad():
    assert len(CASES) >= 30
    # internal_error and unreadable need a patched ingest: see test_ingest_hostile.py
    assert {r for c in CASES.values() for r in c.reasons} >= set(REASONS) - {"internal_error", "unreadable"}
