"""The `server` source against a real FHIR search implementation (Medplum's fhir-router on localhost)."""

from __future__ import annotations

import pytest

from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.server import ServerSource
from clinsynth.ingest.sources import SourceError
from clinsynth.records import iter_patients
from tests import fhir_samples as fs
from tests.fhir_server.fixture import fhir_server  # noqa: F401 - pytest fixture

OPTS = Options(as_of="2026-01-01")


def cohort(n: int) -> list[dict]:
    out = []
    for i in range(n):
        p, e = f"p{i}", f"e{i}"
        out += [
            fs.patient(p),
            fs.encounter(e, p),
            fs.condition(f"c{i}", p, e),
            fs.lab(f"o{i}", p, e, i / 10),
            fs.procedure(f"pr{i}", p, e),
            fs.medication_statement(f"ms{i}", p, e),
        ]
    return out


@pytest.fixture
def server(fhir_server, monkeypatch):  # noqa: F811
    fhir_server.reset()
    monkeypatch.setenv("TEST_FHIR_TOKEN", fhir_server.token)
    return fhir_server


def test_paged_search_brings_every_resource_once(server, tmp_path):
    resources = cohort(120)
    server.load(resources)
    src = ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN", page_size=50)
    report = ingest(src, tmp_path, OPTS)
    assert report["resources_read"] == len(resources) and report["resources_quarantined"] == 0
    assert report["rows"] == {"patients": 120, "encounters": 120, "facts": 480}
    pages = [r for r in server.requests_log() if r["path"].startswith("/fhir/R4/Observation")]
    assert len(pages) == 3  # 120 Observations at _count=50 -> 3 pages via next links
    ids = sorted(r.patient_id for r in iter_patients(tmp_path / "records"))
    assert ids == sorted(f"p{i}" for i in range(120))


def test_cursor_paging_is_followed_by_links(server, tmp_path):
    server.configure(paging="cursor")
    server.load(cohort(30))
    report = ingest(ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN", page_size=7), tmp_path, OPTS)
    assert report["rows"]["facts"] == 120 and report["resources_quarantined"] == 0


def test_transient_errors_are_retried_with_backoff(server, tmp_path):
    server.load(cohort(10))
    server.faults(fail_next=2, status=503)
    server.faults(fail_next=1, status=429, retry_after=1, match="/Observation")
    src = ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN", page_size=5, backoff_s=0.05)
    report = ingest(src, tmp_path, OPTS)
    assert report["rows"] == {"patients": 10, "encounters": 10, "facts": 40}
    statuses = [r["status"] for r in server.requests_log()]
    assert statuses.count(503) == 2 and statuses.count(429) == 1


def test_timeouts_are_retried_then_reported(server, tmp_path):
    server.load(cohort(3))
    server.faults(delay_ms=1500, count=1)
    src = ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN", timeout_s=0.5, backoff_s=0.05)
    assert ingest(src, tmp_path / "a", OPTS)["rows"]["patients"] == 3  # first try timed out, second worked
    server.faults(delay_ms=1500, count=10)
    src = ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN", timeout_s=0.3, retries=2, backoff_s=0.01)
    with pytest.raises(SourceError, match=r"failed after 3 attempts \(ReadTimeout"):
        ingest(src, tmp_path / "b", OPTS)


def test_missing_or_wrong_token_is_a_clear_error(server, tmp_path, monkeypatch):
    server.load(cohort(1))
    monkeypatch.setenv("TEST_FHIR_TOKEN", "wrong")
    with pytest.raises(SourceError, match="HTTP 401"):
        ingest(ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN"), tmp_path / "a", OPTS)
    monkeypatch.delenv("TEST_FHIR_TOKEN")
    with pytest.raises(SourceError, match="TEST_FHIR_TOKEN"):
        ingest(ServerSource(server.base_url, token_env="TEST_FHIR_TOKEN"), tmp_path / "b", OPTS)
