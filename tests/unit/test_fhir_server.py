"""The local FHIR test server (tests/fhir_server): paging, search, auth, faults, metadata.

These tests pin the behaviour that the ingest-stage tests rely on, against the real
Medplum fhir-router + MemoryRepository behind tests/fhir_server/server.mjs.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fhir_server.fixture import FhirTestServer, fhir_server  # noqa: F401  (pytest fixture)

httpx = pytest.importorskip("httpx")

N = 250


def _patients_and_observations(n: int = N) -> list[dict]:
    patients = [
        {
            "resourceType": "Patient",
            "id": f"p{i}",
            "identifier": [{"system": "urn:clinsynth:test-mrn", "value": f"MRN{i:05d}"}],
            "name": [{"family": f"Test{i}", "given": ["Pat"]}],
            "gender": "female" if i % 2 else "male",
            "birthDate": f"19{50 + i % 50:02d}-01-{1 + i % 28:02d}",
        }
        for i in range(n)
    ]
    observations = [
        {
            "resourceType": "Observation",
            "id": f"obs{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": f"Patient/p{i}"},
            "effectiveDateTime": f"2024-01-{1 + i % 28:02d}T08:00:00Z",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
        }
        for i in range(n)
    ]
    return patients + observations


@pytest.fixture
def loaded(fhir_server: FhirTestServer) -> FhirTestServer:  # noqa: F811
    fhir_server.reset()
    refs = fhir_server.load(_patients_and_observations())
    assert len(refs) == 2 * N
    assert refs[0] == "Patient/p0" and refs[-1] == f"Observation/obs{N - 1}"
    return fhir_server


def _follow(
    client: httpx.Client, first_url: str, params: dict | None = None
) -> tuple[list[dict], list[dict]]:
    """Returns (all bundles, all entries) following link[relation=next] until there is none."""
    bundles, entries = [], []
    r = client.get(first_url, params=params)
    while True:
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
        bundles.append(bundle)
        entries.extend(bundle.get("entry", []))
        nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not nxt:
            return bundles, entries
        assert len(nxt) == 1
        assert len(bundles) < 100, "runaway paging"
        r = client.get(nxt[0])  # the absolute URL, exactly as given


def test_paging_with_count_follows_next_links_to_all_observations(loaded: FhirTestServer) -> None:
    loaded.clear_requests_log()
    with loaded.client() as c:
        bundles, entries = _follow(c, "Observation", {"_count": 50})
    ids = [e["resource"]["id"] for e in entries]
    assert len(ids) == N
    assert sorted(ids) == sorted(f"obs{i}" for i in range(N))  # each exactly once
    assert [len(b.get("entry", [])) for b in bundles] == [50] * 5
    assert all(b["total"] == N for b in bundles)
    next_urls = [link["url"] for b in bundles for link in b["link"] if link["relation"] == "next"]
    assert len(next_urls) == 4
    for k, url in enumerate(next_urls, start=1):
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == loaded.root_url
        assert parts.path == "/fhir/R4/Observation"
        assert parse_qs(parts.query) == {"_offset": [str(50 * k)], "_count": ["50"]}
    for e in entries:
        assert e["fullUrl"] == f"{loaded.base_url}/Observation/{e['resource']['id']}"
        assert e["search"] == {"mode": "match"}
    assert [r["status"] for r in loaded.requests_log()] == [200] * 5


def test_next_links_use_the_request_host_and_keep_search_params(loaded: FhirTestServer) -> None:
    with loaded.client(headers={"Host": "fhir.example.test:8443"}) as c:
        r = c.get("Observation", params={"code": "http://loinc.org|8867-4", "_count": 100})
    assert r.status_code == 200
    links = {link["relation"]: link["url"] for link in r.json()["link"]}
    nxt = urlsplit(links["next"])
    assert nxt.netloc == "fhir.example.test:8443" and nxt.path == "/fhir/R4/Observation"
    assert parse_qs(nxt.query) == {"code": ["http://loinc.org|8867-4"], "_offset": ["100"], "_count": ["100"]}
    assert "previous" not in links and links["self"].startswith("http://fhir.example.test:8443/fhir/R4/")


def test_cursor_paging_mode(loaded: FhirTestServer) -> None:
    loaded.configure(paging="cursor")
    try:
        with loaded.client() as c:
            bundles, entries = _follow(c, "Observation", {"_count": 60})
    finally:
        loaded.configure(paging="offset")
    assert sorted(e["resource"]["id"] for e in entries) == sorted(f"obs{i}" for i in range(N))
    assert len(bundles) == 5
    for b in bundles[:-1]:
        nxt = next(link["url"] for link in b["link"] if link["relation"] == "next")
        q = parse_qs(urlsplit(nxt).query)
        assert "_offset" not in q and len(q["_cursor"]) == 1


def test_default_page_size_applies_without_count(loaded: FhirTestServer) -> None:
    with loaded.client() as c:
        b = c.get("Patient").json()
    assert b["total"] == N and len(b["entry"]) == 20  # Medplum's default page size
    assert any(link["relation"] == "next" for link in b["link"])


def test_search_by_subject_patient_and_id(loaded: FhirTestServer) -> None:
    with loaded.client() as c:
        for params in (
            {"subject": "Patient/p7"},
            {"patient": "p7"},
            {"patient": "Patient/p7"},
            {"subject": "p7"},
        ):
            b = c.get("Observation", params=params).json()
            assert b["total"] == 1, params
            assert [e["resource"]["id"] for e in b["entry"]] == ["obs7"], params
            assert b["entry"][0]["resource"]["subject"] == {"reference": "Patient/p7"}
        b = c.get("Observation", params={"subject": "Patient/nobody"}).json()
        assert b["total"] == 0 and "entry" not in b
        b = c.get("Patient", params={"_id": "p1,p2,p3"}).json()
        assert sorted(e["resource"]["id"] for e in b["entry"]) == ["p1", "p2", "p3"]
        b = c.get("Patient", params={"identifier": "urn:clinsynth:test-mrn|MRN00042"}).json()
        assert [e["resource"]["id"] for e in b["entry"]] == ["p42"]
        r = c.get("Patient/p3")
        assert r.status_code == 200 and r.json()["id"] == "p3" and r.headers["ETag"].startswith('W/"')
        assert c.get("Patient/does-not-exist").status_code == 404


def test_search_by_last_updated_and_date(loaded: FhirTestServer) -> None:
    before = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with loaded.client() as c:
        assert c.get("Observation", params={"_lastUpdated": f"ge{before}", "_count": 0}).json()["total"] == N
        assert c.get("Observation", params={"_lastUpdated": f"ge{after}"}).json()["total"] == 0
        b = c.get("Observation", params={"date": "2024-01-01", "_count": 100}).json()
        expected = sum(1 for i in range(N) if i % 28 == 0)
        assert b["total"] == expected and len(b["entry"]) == expected


def test_unsupported_or_unknown_params_are_400_not_silently_empty(loaded: FhirTestServer) -> None:
    with loaded.client() as c:
        for params in ({"no-such-param": "1"}, {"_include": "Observation:subject"}, {"value-quantity": "60"}):
            r = c.get("Observation", params=params)
            assert r.status_code == 400, params
            assert r.json()["resourceType"] == "OperationOutcome"


def test_requests_without_the_bearer_token_get_401(fhir_server: FhirTestServer) -> None:  # noqa: F811
    with httpx.Client(base_url=fhir_server.base_url, trust_env=False, timeout=10) as anon:
        for path in ("Patient", "metadata", "Patient/p1"):
            r = anon.get(path)
            assert r.status_code == 401, path
            assert r.json()["resourceType"] == "OperationOutcome"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = anon.get("Patient", headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 401
        r = anon.get("Patient", headers={"Authorization": f"Bearer {fhir_server.token}"})
        assert r.status_code == 200


def test_fault_injection_503_once_then_success(loaded: FhirTestServer) -> None:
    loaded.clear_requests_log()
    loaded.faults(fail_next=1, status=503, retry_after=1)
    with loaded.client() as c:
        r1 = c.get("Observation", params={"_count": 50})
        r2 = c.get("Observation", params={"_count": 50})
    assert r1.status_code == 503
    assert r1.headers["Retry-After"] == "1"
    assert r1.json()["resourceType"] == "OperationOutcome"
    assert r2.status_code == 200 and len(r2.json()["entry"]) == 50
    log = loaded.requests_log()
    assert [(e["status"], e.get("fault")) for e in log] == [(503, "503"), (200, None)]


def test_fault_injection_delay_reset_and_match(loaded: FhirTestServer) -> None:
    loaded.faults(delay_ms=2000, count=1)
    with loaded.client(timeout=0.3) as c:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.get("Patient/p1")
        assert time.monotonic() - t0 < 1.5
        assert c.get("Patient/p1").status_code == 200  # the rule is used up
    loaded.faults(reset=True)
    with loaded.client() as c:
        with pytest.raises(httpx.TransportError):
            c.get("Patient/p1")
        assert c.get("Patient/p1").status_code == 200
    loaded.faults(fail_next=2, status=429, match="/Observation")
    with loaded.client() as c:
        assert c.get("Patient/p1").status_code == 200  # does not match, rule untouched
        assert c.get("Observation/obs1").status_code == 429
        assert c.get("Observation/obs1").status_code == 429
        assert c.get("Observation/obs1").status_code == 200
    loaded.faults(fail_next=5, status=500)
    loaded.clear_faults()
    with loaded.client() as c:
        assert c.get("Patient/p1").status_code == 200


def test_metadata(fhir_server: FhirTestServer) -> None:  # noqa: F811
    with fhir_server.client() as c:
        r = c.get("metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    assert cs["implementation"]["url"] == fhir_server.base_url
    rest = cs["rest"][0]
    obs = next(res for res in rest["resource"] if res["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"subject", "patient", "_id", "_lastUpdated", "date", "code"} <= names
    assert {"search-type", "read"} <= {i["code"] for i in obs["interaction"]}


def test_a_few_thousand_resources(fhir_server: FhirTestServer) -> None:  # noqa: F811
    fhir_server.reset()
    n_pat, n_obs = 500, 4000
    resources = [{"resourceType": "Patient", "id": f"bp{i}"} for i in range(n_pat)] + [
        {
            "resourceType": "Observation",
            "id": f"bo{i}",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/bp{i % n_pat}"},
        }
        for i in range(n_obs)
    ]
    t0 = time.monotonic()
    fhir_server.load(resources, chunk_size=1000)
    with fhir_server.client() as c:
        _, entries = _follow(c, "Observation", {"_count": 500})
        assert len({e["resource"]["id"] for e in entries}) == len(entries) == n_obs
        b = c.get("Observation", params={"patient": "bp3", "_count": 100}).json()
        assert b["total"] == n_obs // n_pat
    assert time.monotonic() - t0 < 60
    fhir_server.reset()
