"""The REST source against hostile or broken servers: real HTTP servers on localhost, no mocks of httpx."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from clinsynth.ingest.server import ServerSource
from clinsynth.ingest.sources import SourceError

TOKEN = "s3cr3t-T0ken-value.42"

Handler = Callable[["_Req"], None]


class _Req(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        srv: Server = self.server.owner  # type: ignore[attr-defined]
        srv.log.append({"path": self.path, "auth": self.headers.get("Authorization")})
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, on purpose
            srv.handler(self)

    def send(
        self, status: int, body: bytes | str | dict | list, ctype: str = "application/fhir+json"
    ) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.log: list[dict[str, Any]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Req)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    started: list[Server] = []

    def start(handler: Handler) -> Server:
        s = Server(handler).__enter__()
        started.append(s)
        return s

    yield start
    for s in started:
        s.__exit__()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTILE_TOKEN", TOKEN)


def source(url: str, **kw: Any) -> ServerSource:
    opts: dict[str, Any] = {"timeout_s": 1.0, "retries": 0, "backoff_s": 0.01, "types": ("Patient",)}
    opts.update(kw)
    return ServerSource(url + "/fhir", token_env="HOSTILE_TOKEN", **opts)


def bundle(*, next_url: str | None = None, n: int = 1, tag: str = "x") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Patient", "id": f"{tag}{i}"}} for i in range(n)],
    }
    if next_url:
        doc["link"] = [{"relation": "self", "url": "ignored"}, {"relation": "next", "url": next_url}]
    return doc


def no_token_in(exc: pytest.ExceptionInfo[SourceError]) -> None:
    for text in (str(exc.value), repr(exc.value), exc.exconly()):
        assert TOKEN not in text and "s3cr3t" not in text and "T0ken" not in text, text


def test_a_well_behaved_server_is_read_with_the_token(serve):
    def handler(r: _Req) -> None:
        if "page=2" in r.path:
            r.send(200, bundle(n=2, tag="b"))
        else:
            r.send(200, bundle(next_url=f"{a.url}/fhir/Patient?page=2", n=2, tag="a"))

    a = serve(handler)
    ids = [item.resource["id"] for item in source(a.url)]
    assert ids == ["a0", "a1", "b0", "b1"]
    assert [e["auth"] for e in a.log] == [f"Bearer {TOKEN}"] * 2


def test_next_link_to_another_origin_is_refused_and_gets_no_token(serve):
    other = serve(lambda r: r.send(200, bundle(tag="evil")))
    a = serve(lambda r: r.send(200, bundle(next_url=f"{other.url}/steal?page=2")))
    with pytest.raises(SourceError, match="next link") as exc:
        list(source(a.url))
    msg = str(exc.value)
    assert a.url.replace("http://", "") in msg and other.url.replace("http://", "") in msg
    assert other.log == []  # not even a request without the token
    no_token_in(exc)


def test_localhost_and_127_are_different_origins(serve):
    a = serve(lambda r: None)
    a.handler = lambda r: r.send(200, bundle(next_url=a.url.replace("127.0.0.1", "localhost") + "/fhir/x"))
    with pytest.raises(SourceError, match="origin"):
        list(source(a.url))
    assert len(a.log) == 1


def test_redirect_to_another_origin_is_refused_and_gets_no_token(serve):
    other = serve(lambda r: r.send(200, bundle(tag="evil")))

    def handler(r: _Req) -> None:
        r.send_response(302)
        r.send_header("Location", f"{other.url}/fhir/Patient")
        r.send_header("Content-Length", "0")
        r.end_headers()

    a = serve(handler)
    with pytest.raises(SourceError, match="redirect") as exc:
        list(source(a.url, retries=2))
    assert other.url.replace("http://", "") in str(exc.value)
    assert other.log == []
    assert len(a.log) == 1  # a refused redirect is not retried
    no_token_in(exc)


def test_redirect_within_the_origin_is_followed(serve):
    def handler(r: _Req) -> None:
        if r.path.startswith("/moved"):
            r.send(200, bundle(tag="m"))
        else:
            r.send_response(307)
            r.send_header("Location", "/moved/Patient")
            r.send_header("Content-Length", "0")
            r.end_headers()

    a = serve(handler)
    assert [i.resource["id"] for i in source(a.url)] == ["m0"]
    assert [e["auth"] for e in a.log] == [f"Bearer {TOKEN}"] * 2


def test_a_next_link_to_a_page_already_read_stops_the_walk(serve):
    a = serve(lambda r: r.send(200, bundle(next_url=a.url + r.path)))
    with pytest.raises(SourceError, match="page loop"):
        list(source(a.url))
    assert len(a.log) == 1


def test_a_longer_page_cycle_is_caught_too(serve):
    def handler(r: _Req) -> None:
        nxt = "/fhir/Patient?p=B" if r.path.endswith("p=A") else "/fhir/Patient?p=A"
        r.send(200, bundle(next_url=a.url + nxt))

    a = serve(handler)
    with pytest.raises(SourceError, match="page loop"):
        list(source(a.url))
    assert len(a.log) == 3  # first page, A, B; then A again is refused


def test_max_pages_stops_an_endless_server(serve):
    count = iter(range(10**6))
    a = serve(lambda r: r.send(200, bundle(next_url=f"{a.url}/fhir/Patient?page={next(count)}")))
    with pytest.raises(SourceError, match="max_pages=3"):
        list(source(a.url, max_pages=3))
    assert len(a.log) == 3


def _trickle_body(r: _Req) -> None:
    body = json.dumps(bundle()).encode()
    r.send_response(200)
    r.send_header("Content-Type", "application/fhir+json")
    r.send_header("Content-Length", str(len(body)))
    r.end_headers()
    r.wfile.flush()
    for b in body:
        r.wfile.write(bytes([b]))
        r.wfile.flush()
        time.sleep(0.1)  # each byte well within the read timeout, the whole far beyond timeout_s


def _trickle_headers(r: _Req) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n"
    for b in head:
        r.wfile.write(bytes([b]))
        r.wfile.flush()
        time.sleep(0.1)


@pytest.mark.parametrize("handler", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_cannot_stretch_the_deadline(serve, handler):
    a = serve(handler)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"failed after 2 attempts \(ReadTimeout.*timeout_s=0.5"):
        list(source(a.url, timeout_s=0.5, retries=1))
    assert time.monotonic() - t0 < 2.5  # 2 x 0.5 s plus backoff and slack, not the ~20 s the server wants
    assert len(a.log) == 2  # the deadline is retried like a timeout


def test_html_answer_names_the_url_and_status(serve):
    a = serve(lambda r: r.send(200, "<!doctype html><html><body>Login</body></html>", "text/html"))
    with pytest.raises(SourceError, match=r"/fhir/Patient.*HTTP 200.*HTML page, not a FHIR Bundle"):
        list(source(a.url))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("this is not json", "not JSON"),
        ([1, 2], "JSON list, not a FHIR Bundle"),
        ({"resourceType": "OperationOutcome", "issue": []}, "resourceType=OperationOutcome, not a Bundle"),
        ({"resourceType": "Bundle", "link": "http://x/next"}, "Bundle.link must be a list"),
        ({"resourceType": "Bundle", "link": ["next"]}, "Bundle.link must be a list"),
        ({"resourceType": "Bundle", "link": [{"relation": "next", "url": 7}]}, "Bundle.link must be a list"),
        (
            {"resourceType": "Bundle", "entry": {"resource": {}}},
            "Bundle.entry must be a list, got a JSON dict",
        ),
    ],
    ids=["text", "list", "outcome", "link-str", "link-item-str", "link-url-int", "entry-dict"],
)
def test_non_fhir_answers_are_source_errors(serve, body, match):
    a = serve(lambda r: r.send(200, body))
    with pytest.raises(SourceError, match=match) as exc:
        list(source(a.url))
    assert "/fhir/Patient" in str(exc.value) and "HTTP 200" in str(exc.value)


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "text/html"])
def test_a_401_echoing_the_authorization_header_leaks_nothing(serve, ctype):
    def handler(r: _Req) -> None:
        echo = {"error": "unauthorized", "headers": {k: v for k, v in r.headers.items()}}
        text = f"bad credentials; you sent Authorization: {r.headers['Authorization']}\n{json.dumps(echo)}"
        r.send(401, text, ctype)

    a = serve(handler)
    with pytest.raises(SourceError, match="HTTP 401") as exc:
        list(source(a.url))
    no_token_in(exc)
    assert "HOSTILE_TOKEN" in str(exc.value) and "User-Agent" not in str(exc.value)
    assert len(str(exc.value)) < 300


def test_an_operation_outcome_error_is_reported_scrubbed(serve):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": f"token {TOKEN} lacks scope"}],
    }
    a = serve(lambda r: r.send(403, outcome))
    with pytest.raises(SourceError, match=r"HTTP 403: token \*\*\* lacks scope") as exc:
        list(source(a.url))
    no_token_in(exc)


def test_other_errors_show_one_short_scrubbed_line(serve):
    a = serve(
        lambda r: r.send(404, f"no such type; Authorization: Bearer {TOKEN}\nsecond line", "text/plain")
    )
    with pytest.raises(SourceError, match=r"HTTP 404: no such type; Authorization: \*\*\*$") as exc:
        list(source(a.url))
    no_token_in(exc)


def test_transport_errors_after_retries_do_not_leak_the_token(serve):
    a = serve(lambda r: r.send(503, f"Authorization: Bearer {TOKEN}", "text/plain"))
    with pytest.raises(SourceError, match=r"failed after 2 attempts \(HTTP 503\)") as exc:
        list(source(a.url, retries=1))
    no_token_in(exc)


def test_a_relative_next_link_stays_on_the_origin(serve):
    def handler(r: _Req) -> None:
        r.send(200, bundle(tag="b") if "page=2" in r.path else bundle(next_url="Patient?page=2", tag="a"))

    a = serve(handler)
    assert [i.resource["id"] for i in source(a.url)] == ["a0", "b0"]
    assert a.log[1]["path"] == "/fhir/Patient?page=2" and a.log[1]["auth"] == f"Bearer {TOKEN}"
