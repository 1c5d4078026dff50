"""Ingest, file level: every file under an NDJSON/Bundle source is read or skipped with a reason,
one bad file never stops the run (unless strict), and BOM / CRLF / CR-only files read the same."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson
import pytest

from clinsynth.ingest.pipeline import IngestError, Options, ingest
from clinsynth.ingest.sources import SourceError, read_bundles, read_ndjson
from tests import fhir_samples as fs
from tests.unit.test_ingest import accounted, quarantine

OPTS = Options(as_of="2026-01-01")
N = len(fs.one_patient())


def lines_by_type() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in fs.one_patient():
        out.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    return out


def write(folder: Path, name: str = "{rt}.ndjson", sep: bytes = b"\n", head: bytes = b"") -> Path:
    """one_patient() as one file per type, named by `name` (may hold a sub-folder)."""
    for rt, lines in lines_by_type().items():
        f = folder / name.format(rt=rt)
        f.parent.mkdir(parents=True, exist_ok=True)
        data = head + sep.join(lines) + sep
        f.write_bytes(gzip.compress(data) if f.name.lower().endswith(".gz") else data)
    return folder


def run(src: Path, out: Path, workers: int = 1, **opts: object) -> dict:
    report = ingest(read_ndjson(src), out, Options(as_of="2026-01-01", **opts), workers=workers)  # type: ignore[arg-type]
    assert accounted(report)
    stored = orjson.loads((out / "ingest_report.json").read_bytes())
    assert stored["files_read"] == report["files_read"]
    assert stored["files_skipped"] == report["files_skipped"]
    return report


def all_ok(report: dict) -> bool:
    return report["resources_read"] == N and report["resources_ok"] == N


def skipped(report: dict) -> dict[str, str]:
    return {e["file"]: e["reason"] for e in report["files_skipped"]}


@pytest.mark.parametrize("workers", [0, 1])
def test_upper_case_extensions_are_read(tmp_path, workers):
    src = write(tmp_path / "in", "{rt}.NDJSON")
    report = run(src, tmp_path / "out", workers)
    assert all_ok(report) and report["files_skipped"] == []
    assert sorted(report["files_read"]) == sorted(f"{rt}.NDJSON" for rt in lines_by_type())


@pytest.mark.parametrize("name", ["{rt}.jsonl", "{rt}.JSONL.GZ", "{rt}.ndjson.gz"])
def test_jsonl_and_gzip_files_are_read(tmp_path, name):
    report = run(write(tmp_path / "in", name), tmp_path / "out")
    assert all_ok(report) and len(report["files_read"]) == len(lines_by_type())


def test_sub_folders_are_read_in_a_deterministic_order_with_their_path(tmp_path):
    src = write(tmp_path / "in", "b/{rt}.ndjson")
    (src / "a").mkdir()
    (src / "a" / "Patient.ndjson").write_bytes(orjson.dumps(fs.patient("p2")) + b"\n")
    (src / "notes.txt").write_text("not FHIR")
    report = run(src, tmp_path / "out")
    assert report["resources_read"] == N + 1 and report["resources_ok"] == N + 1
    # Patients first (references to them are checked as the stream goes by), then by path
    assert report["files_read"][:2] == ["a/Patient.ndjson", "b/Patient.ndjson"]
    assert "not a NDJSON file name" in skipped(report)["notes.txt"]
    again = run(src, tmp_path / "again")
    assert again["files_read"] == report["files_read"]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_utf8_bom_does_not_spoil_line_one(tmp_path, workers):
    src = write(tmp_path / "in", head=b"\xef\xbb\xbf")
    report = run(src, tmp_path / "out", workers)
    assert all_ok(report) and report["resources_quarantined"] == 0


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("sep", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_only_line_ends_are_line_breaks(tmp_path, workers, sep):
    src = write(tmp_path / "in", sep=sep)
    (src / "Patient.ndjson").write_bytes(
        sep.join([orjson.dumps(fs.patient()), b"", b"{broken", orjson.dumps(fs.patient("p2"))]) + sep
    )
    report = run(src, tmp_path / "out", workers)
    [bad] = quarantine(tmp_path / "out")
    assert (bad["source"], bad["line"], bad["reason"]) == ("Patient.ndjson", 3, "malformed_json")
    assert report["resources_ok"] == N + 1 and report["files_skipped"] == []


def test_a_lone_cr_in_an_lf_file_numbers_lines_alike_for_any_worker_count(tmp_path):
    src = write(tmp_path / "in")
    pats = [orjson.dumps(fs.patient(f"p{i}")) for i in range(2, 400)]
    body = (
        b"\n".join(pats[:200]) + b"\r" + b"\r\n".join(pats[200:300]) + b"\n{broken\n" + b"\n".join(pats[300:])
    )
    (src / "Patient-2.ndjson").write_bytes(body + b"\n")
    reports = [run(src, tmp_path / f"out{w}", w) for w in (0, 1)]
    for w, report in zip((0, 1), reports, strict=True):
        [bad] = quarantine(tmp_path / f"out{w}")
        assert (bad["source"], bad["line"]) == ("Patient-2.ndjson", 301)
        assert report["resources_ok"] == N + len(pats)
    ingest(read_ndjson(src), tmp_path / "small", OPTS, workers=1, chunk=1)  # many small byte ranges
    assert quarantine(tmp_path / "small")[0]["line"] == 301


def test_a_gzip_bom_and_cr_only_file_is_read(tmp_path):
    report = run(write(tmp_path / "in", "{rt}.ndjson.gz", sep=b"\r", head=b"\xef\xbb\xbf"), tmp_path / "out")
    assert all_ok(report)


BAD = {  # every kind of unreadable entry -> (part of) the reason it must be reported with
    "dir.ndjson": "a folder",
    "fifo.ndjson": "FIFO",
    "dangling.ndjson": "dangling symbolic link",
    "loop.ndjson": "symbolic link loop",
    "Condition-truncated.ndjson.gz": "not a valid gzip file",
    "Condition-plain.ndjson.gz": "not a valid gzip file",
}


def _bad_files(src: Path, only: str | None = None) -> dict[str, str]:
    data = b"\n".join(orjson.dumps(fs.condition(f"c{i}")) for i in range(2000)) + b"\n"
    make = {
        "dir.ndjson": lambda p: p.mkdir(),
        "fifo.ndjson": os.mkfifo,
        "dangling.ndjson": lambda p: p.symlink_to(src / "nowhere.ndjson"),
        "loop.ndjson": lambda p: p.symlink_to(p),
        "Condition-truncated.ndjson.gz": lambda p: p.write_bytes(gzip.compress(data)[:4000]),
        "Condition-plain.ndjson.gz": lambda p: p.write_bytes(data[:300]),
    }
    for name in [only] if only else BAD:
        make[name](src / name)
    return {k: v for k, v in BAD.items() if only in (None, k)}


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_files_are_skipped_with_a_reason_and_the_run_goes_on(tmp_path, workers):
    src = write(tmp_path / "in")
    expected = _bad_files(src)
    report = run(src, tmp_path / "out", workers)  # a FIFO would hang here if it were opened
    got = skipped(report)
    assert set(got) == set(expected)
    for name, reason in expected.items():
        assert reason in got[name], (name, got[name])
    assert "after line" in got["Condition-truncated.ndjson.gz"]  # lines before the damage were read
    assert sorted(report["files_read"]) == sorted(f"{rt}.ndjson" for rt in lines_by_type())
    assert report["resources_ok"] >= N


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_file_kind_alone(tmp_path, kind):
    src = write(tmp_path / "in")
    _bad_files(src, kind)
    report = run(src, tmp_path / "out")
    assert list(skipped(report)) == [kind] and BAD[kind] in skipped(report)[kind]
    assert report["resources_read"] >= N and report["resources_ok"] >= N


def test_strict_stops_at_the_first_unreadable_file_naming_it(tmp_path):
    src = write(tmp_path / "in")
    os.mkfifo(src / "fifo.ndjson")
    with pytest.raises(IngestError, match=r"fifo.ndjson: a FIFO"):
        ingest(read_ndjson(src), tmp_path / "out", Options(as_of="2026-01-01", strict=True))


def test_strict_stops_at_a_bad_gzip_naming_it(tmp_path):
    src = write(tmp_path / "in")
    (src / "Observation-2.ndjson.gz").write_bytes(b"plain text\n")
    with pytest.raises(IngestError, match=r"Observation-2.ndjson.gz: not a valid gzip file"):
        ingest(read_ndjson(src), tmp_path / "out", Options(as_of="2026-01-01", strict=True))


def test_strict_does_not_stop_at_files_merely_named_otherwise(tmp_path):
    src = write(tmp_path / "in")
    (src / "README.md").write_text("export notes")
    report = run(src, tmp_path / "out", strict=True)
    assert all_ok(report) and list(skipped(report)) == ["README.md"]


def test_a_non_utf8_file_name_is_read_and_reported_escaped(tmp_path):
    src = write(tmp_path / "in")
    os.rename(src / "Observation.ndjson", src / os.fsdecode(b"Observation-\xff.ndjson"))
    (src / os.fsdecode(b"Condition-\xfe.ndjson")).write_bytes(b"{broken\n")
    report = run(src, tmp_path / "out")
    assert report["resources_ok"] == N and "Observation-\\xff.ndjson" in report["files_read"]
    [bad] = quarantine(tmp_path / "out")
    assert bad["source"] == "Condition-\\xfe.ndjson" and bad["line"] == 1


def test_a_source_without_resources_is_an_error_naming_the_path(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "Patient.ndjson").write_bytes(b"\n\n")
    os.mkfifo(src / "fifo.ndjson")
    with pytest.raises(SourceError, match=r"no FHIR resources found in .*in: 1 file\(s\) read.*fifo.ndjson"):
        ingest(read_ndjson(src), tmp_path / "out", OPTS)
    with pytest.raises(SourceError, match=r"no FHIR resources found"):
        ingest(read_ndjson(tmp_path / "in"), tmp_path / "out", OPTS, workers=0)


def test_allow_empty_writes_an_empty_record_set(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    report = run(src, tmp_path / "out", allow_empty=True)
    assert report["resources_read"] == 0 and report["files_read"] == [] and report["files_skipped"] == []


def test_a_missing_folder_is_still_an_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        ingest(read_ndjson(tmp_path / "nope"), tmp_path / "out", OPTS)


def test_bundle_sources_report_skipped_files_too(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in fs.one_patient()]}
    (src / "sub" / "b.json").write_bytes(orjson.dumps(bundle))
    os.mkfifo(src / "fifo.json")
    (src / "gone.json").symlink_to(src / "nowhere.json")
    report = ingest(read_bundles(src), tmp_path / "out", OPTS)
    assert accounted(report) and report["resources_ok"] == N
    assert report["files_read"] == ["sub/b.json"]
    assert set(skipped(report)) == {"fifo.json", "gone.json"}
