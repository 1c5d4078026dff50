"""Fault suite, hostile and broken FHIR servers: each kind goes through the whole ingest (real HTTP
servers on localhost) and must either finish with every resource accounted for
(read = ok + quarantined + ignored + identical repeats) or stop with an error that names the URL;
in both cases no byte of the token reaches the output folder or the error text."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clinsynth.core.secrets import walk_text_files
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.sources import SourceError
from tests.unit.test_rest_hostile import TOKEN, Server, _Req, bundle, serve, source, token  # noqa: F401

OPTS = Options(as_of="2026-01-01")


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-02-03", **extra}


def searchset(resources: list[Any], next_url: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    doc["entry"] = [{"resource": r} for r in resources]
    if next_url:
        doc["link"] = [{"relation": "next", "url": next_url}]
    return doc


def accounted(report: dict[str, Any]) -> bool:
    repeats = sum((report.get("identical_repeats_by_type") or {}).values())
    parts = report["resources_ok"] + report["resources_quarantined"] + report["resources_ignored"] + repeats
    return bool(report["resources_read"] == parts)


def no_token_under(root: Path) -> list[str]:
    return [p for p, data in walk_text_files(root) if TOKEN.encode() in data]


# kind -> (handler factory taking the started servers, source options, expected: "ok" or an error regex)
Kind = tuple[Callable[[dict[str, Server]], Callable[[_Req], None]], dict[str, Any], str]


def _two_pages(s: dict[str, Server]) -> Callable[[_Req], None]:
    def h(r: _Req) -> None:
        if "page=2" in r.path:
            r.send(200, searchset([patient("b1"), patient("b2")]))
        else:
            r.send(200, searchset([patient("a1"), patient("a2")], f"{s['a'].url}/fhir/Patient?page=2"))
    return h


def _flaky_then_ok(s: dict[str, Server]) -> Callable[[_Req], None]:
    calls = {"n": 0}

    def h(r: _Req) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            r.send(503, "busy", "text/plain")
        else:
            r.send(200, searchset([patient("p1")]))
    return h


def _bad_records(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, searchset([
        patient("ok1"),
        {"resourceType": "Patient", "gender": "female"},                          # no id
        patient("x" * 65),                                                         # id too long
        patient("dead", deceasedDateTime="1940-01-01"),                            # death before birth
        {"resourceType": "Patient", "id": "wrong", "birthDate": 1950},             # wrong type
        {"gender": "male"},                                                        # no resourceType
        patient("ok1"),                                                            # identical repeat
        patient("ok1", gender="male"),                                             # same id, other content
    ]))


def _foreign_reference(s: dict[str, Server]) -> Callable[[_Req], None]:
    obs = {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": "https://other.example/fhir/Patient/p1"},
        "effectiveDateTime": "2024-01-01", "valueQuantity": {"value": 12.5, "unit": "g/dL"},
    }
    return lambda r: r.send(200, searchset([patient("p1"), obs]))


def _entry_without_resource(s: dict[str, Server]) -> Callable[[_Req], None]:
    def h(r: _Req) -> None:
        doc = searchset([patient("p1")])
        doc["entry"].append({"fullUrl": "urn:uuid:0b1f", "search": {"mode": "match"}})
        r.send(200, doc)
    return h


def _cross_origin_next(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, searchset([patient("p1")], f"{s['evil'].url}/fhir/Patient?page=2"))


def _cross_origin_redirect(s: dict[str, Server]) -> Callable[[_Req], None]:
    def h(r: _Req) -> None:
        r.send_response(302)
        r.send_header("Location", f"{s['evil'].url}/fhir/Patient")
        r.send_header("Content-Length", "0")
        r.end_headers()
    return h


def _page_loop(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, searchset([patient("p1")], f"{s['a'].url}/fhir/Patient?page=1"))


def _endless(s: dict[str, Server]) -> Callable[[_Req], None]:
    def h(r: _Req) -> None:
        n = int(r.path.rsplit("page=", 1)[-1]) if "page=" in r.path else 0
        r.send(200, searchset([patient(f"p{n}")], f"{s['a'].url}/fhir/Patient?page={n + 1}"))
    return h


def _trickle(s: dict[str, Server]) -> Callable[[_Req], None]:
    def h(r: _Req) -> None:
        r.send_response(200)
        r.send_header("Content-Type", "application/fhir+json")
        r.send_header("Content-Length", "1000")
        r.end_headers()
        for _ in range(40):
            r.wfile.write(b" ")
            r.wfile.flush()
            time.sleep(0.1)
    return h


def _echo_401(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(401, f"denied; you sent Authorization: {r.headers['Authorization']}", "text/plain")  # noqa: E501


def _outcome_403(s: dict[str, Server]) -> Callable[[_Req], None]:
    issue = {"severity": "error", "code": "forbidden", "diagnostics": f"token {TOKEN} lacks scope"}
    outcome = {"resourceType": "OperationOutcome", "issue": [issue]}
    return lambda r: r.send(403, outcome)


def _html(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, "<html><body>Login</body></html>", "text/html")


def _not_a_bundle(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, patient("p1"))


def _entry_not_a_list(s: dict[str, Server]) -> Callable[[_Req], None]:
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": patient("p")}}
    return lambda r: r.send(200, doc)


def _link_not_a_list(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, {"resourceType": "Bundle", "type": "searchset", "link": "next", "entry": []})


def _truncated_json(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(200, '{"resourceType": "Bundle", "type": "searchset", "entry": [{"resou')


def _always_500(s: dict[str, Server]) -> Callable[[_Req], None]:
    return lambda r: r.send(500, f"internal error (Authorization: Bearer {TOKEN})", "text/plain")


KINDS: dict[str, Kind] = {
    "two pages": (_two_pages, {}, "ok"),
    "503 twice, then an answer": (_flaky_then_ok, {"retries": 2}, "ok"),
    "bad records in a page": (_bad_records, {}, "ok"),
    "a foreign absolute reference": (_foreign_reference, {"types": ("Patient", "Observation")}, "ok"),
    "an entry without a resource": (_entry_without_resource, {}, "ok"),
    "next link to another origin": (_cross_origin_next, {}, r"next link"),
    "redirect to another origin": (_cross_origin_redirect, {}, r"refusing"),
    "a next link back to the same page": (_page_loop, {}, r"page loop"),
    "an endless server": (_endless, {"max_pages": 5}, r"max_pages|pages"),
    "a trickling server": (_trickle, {"timeout_s": 0.5}, r"ReadTimeout|timed out|deadline|Timeout"),
    "401 echoing the Authorization header": (_echo_401, {}, r"HTTP 401"),
    "403 OperationOutcome quoting the token": (_outcome_403, {}, r"HTTP 403"),
    "an HTML login page": (_html, {}, r"HTTP 200"),
    "a Patient instead of a Bundle": (_not_a_bundle, {}, r"not a Bundle"),
    "entry is not a list": (_entry_not_a_list, {}, r"entry"),
    "link is not a list": (_link_not_a_list, {}, r"link"),
    "truncated JSON": (_truncated_json, {}, r"JSON|json"),
    "500 on every try": (_always_500, {"retries": 1}, r"HTTP 500"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_server_kind(kind: str, serve, tmp_path: Path) -> None:  # noqa: F811
    make, opts, expect = KINDS[kind]
    servers: dict[str, Server] = {}
    servers["evil"] = serve(lambda r: r.send(200, searchset([patient("evil")])))
    handler_box: dict[str, Callable[[_Req], None]] = {}
    servers["a"] = serve(lambda r: handler_box["h"](r))
    handler_box["h"] = make(servers)
    out = tmp_path / "out"
    src = source(servers["a"].url, **opts)
    if expect == "ok":
        report = ingest(src, out, OPTS)
        assert accounted(report), report
        assert report["resources_read"] > 0
        for entry in (out / "quarantine.ndjson").read_text().splitlines():
            assert '"reason"' in entry and "/fhir/" in entry, entry  # where it came from, and why
    else:
        with pytest.raises(SourceError, match=expect) as info:
            ingest(src, out, OPTS)
        assert servers["a"].url.removeprefix("http://") in str(info.value)  # the URL is named
        assert TOKEN not in str(info.value)
    assert servers["evil"].log == []  # the other origin never got a request, with or without token
    assert no_token_under(tmp_path) == []
