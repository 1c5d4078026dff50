"""The FHIR REST source: paged search per resource type with Bearer auth, retries and timeouts.

Hostile-server rules: the token goes only to the base URL's origin (a `next` link or redirect elsewhere
is refused), a page loop or more than `max_pages` pages per type stops the walk, every request has a
total deadline (connect + headers + body) that a trickling server cannot extend, a non-FHIR answer is
a SourceError naming the URL and status, and no message carries the token or an echoed header.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from clinsynth.fhir.jsonio import JsonProblem, loads_document
from clinsynth.ingest.extract import SUPPORTED
from clinsynth.ingest.sources import Item, Problem, SourceError, _entries, _priority

RETRYABLE = (429, 500, 502, 503, 504)
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
MAX_BODY = 512 * 1024 * 1024  # one search page larger than this is not a page
_DEFAULT_PORTS = {"http": 80, "https": 443}
_AUTH_RE = re.compile(r"(?i)\b(proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?[^\"'\r\n,}]*")
_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")


class _Deadline(Exception):
    """The request's total deadline passed (a trickling or stalled server); retried like a timeout."""


def origin(url: Any) -> str:
    """scheme://host:port, with the scheme's default port made explicit."""
    import httpx

    u = httpx.URL(str(url))
    port = u.port or _DEFAULT_PORTS.get(u.scheme, 0)
    return f"{u.scheme}://{u.host}:{port}"


@dataclass
class ServerSource:
    """Paged FHIR search (`_count`, next links) with Bearer auth, retries with backoff and timeouts."""

    base_url: str
    token_env: str | None = None
    page_size: int = 500
    timeout_s: float = 30.0  # total per request: connect + headers + body
    retries: int = 5
    backoff_s: float = 0.5
    types: tuple[str, ...] = ()
    max_pages: int = 100_000  # per resource type
    _secrets: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def _token(self) -> str | None:
        if not self.token_env:
            return None
        token = os.environ.get(self.token_env)
        if not token:
            raise SourceError(
                f"source.token_env={self.token_env} but that environment variable is empty; "
                "export the server's Bearer token there (it is never written to configs or logs)"
            )
        self._secrets = [token]
        return token

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/fhir+json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _scrub(self, text: Any, limit: int = 200) -> str:
        """A short, single-line text with the token and any Authorization/Bearer value blanked."""
        s = str(text)
        for secret in self._secrets:
            if secret:
                s = s.replace(secret, "***")
        s = _AUTH_RE.sub("Authorization: ***", s)
        s = _BEARER_RE.sub("Bearer ***", s)
        s = " ".join(s.split())
        return s if len(s) <= limit else s[: limit - 3] + "..."

    def _check_origin(self, url: Any, what: str) -> None:
        want, got = origin(self.base_url), origin(url)
        if got != want:
            raise SourceError(
                f"refusing {what} to {self._scrub(got)}: the Bearer token is only sent to the base URL's "
                f"origin {self._scrub(want)}; point source.url at the server the links use"
            )

    def _fetch(self, client: Any, url: str, headers: dict[str, str]) -> tuple[int, Any, str, bytes]:
        """One GET within a total deadline: (status, response, content type, body). No redirects."""
        import httpx

        start = time.monotonic()
        socks: list[socket.socket] = []
        fired = threading.Event()

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.complete":
                sock = getattr(info.get("return_value"), "get_extra_info", lambda _: None)("socket")
                if isinstance(sock, socket.socket):
                    socks.append(sock)
                    if fired.is_set():
                        _shutdown(sock)

        def expire() -> None:
            fired.set()
            for s in socks:
                _shutdown(s)

        timer = threading.Timer(self.timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            with client.stream("GET", url, headers=headers, extensions={"trace": trace}) as resp:
                body = bytearray()
                if resp.status_code < 300 or resp.status_code >= 400:
                    for chunk in resp.iter_bytes():  # decoded: the size limit holds after gzip too
                        body += chunk
                        if fired.is_set() or time.monotonic() - start > self.timeout_s:
                            raise _Deadline()
                        if len(body) > MAX_BODY:
                            raise SourceError(f"GET {self._scrub(url)}: answer larger than {MAX_BODY} bytes")
                if fired.is_set() or time.monotonic() - start > self.timeout_s:
                    raise _Deadline()
                ctype = resp.headers.get("content-type", "")
                return resp.status_code, resp, ctype, bytes(body)
        except httpx.TransportError:
            if fired.is_set():
                raise _Deadline() from None
            raise
        finally:
            timer.cancel()

    def _get(self, client: Any, url: str) -> dict[str, Any]:
        """A search page as a Bundle: same-origin redirects followed, 429/5xx/timeouts retried."""
        import httpx

        headers = self._headers()
        last = ""
        for attempt in range(self.retries + 1):
            try:
                target = url
                for _hop in range(MAX_REDIRECTS + 1):
                    self._check_origin(target, "a request" if target == url else "a redirect")
                    status, resp, ctype, body = self._fetch(client, target, headers)
                    if status not in REDIRECTS:
                        break
                    location = resp.headers.get("location")
                    if not location:
                        raise SourceError(f"GET {self._scrub(target)} answered HTTP {status}, no Location")
                    target = str(httpx.URL(target).join(location))
                else:
                    raise SourceError(f"GET {self._scrub(url)}: more than {MAX_REDIRECTS} redirects")
                if status in RETRYABLE:
                    last = f"HTTP {status}"
                elif status >= 400:
                    detail = self._error_detail(status, ctype, body)
                    raise SourceError(f"GET {self._scrub(target)} answered HTTP {status}: {detail}")
                else:
                    return self._bundle(target, status, ctype, body)
            except _Deadline:
                last = f"ReadTimeout: no complete answer within timeout_s={self.timeout_s:g} s"
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = self._scrub(f"{type(exc).__name__}: {exc}", 150)
            if attempt < self.retries:
                delay = self.backoff_s * 2**attempt * (0.5 + random.random())
                time.sleep(delay)
        raise SourceError(f"GET {self._scrub(url)} failed after {self.retries + 1} attempts ({last})")

    def _error_detail(self, status: int, ctype: str, body: bytes) -> str:
        """An OperationOutcome's diagnostics (scrubbed), else a hint: a raw body may echo our headers."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
            issue = doc.get("issue")
            issues: list[Any] = issue if isinstance(issue, list) else []
            texts = [str(i.get("diagnostics") or i.get("code") or "") for i in issues if isinstance(i, dict)]
            return self._scrub("; ".join(t for t in texts if t) or "OperationOutcome", 200)
        if status in (401, 403, 407):
            hint = (
                f"the token in ${self.token_env}" if self.token_env else "no token (source.token_env is null)"
            )
            return f"{hint} was refused; body not shown (it may echo credentials)"
        if "html" in ctype.lower() or body.lstrip()[:1] == b"<":
            return "an HTML page (not FHIR)"
        first = body.decode("utf-8", "replace").strip().splitlines()[:1]
        return self._scrub(first[0], 120) if first else "(empty body)"

    def _bundle(self, url: str, status: int, ctype: str, body: bytes) -> dict[str, Any]:
        where = f"GET {self._scrub(url)} (HTTP {status}, {self._scrub(ctype or 'no content-type', 60)})"
        try:  # objects with a duplicate key are marked; their entries are quarantined (see __iter__)
            doc, _ = loads_document(body)
        except JsonProblem as exc:
            if exc.reason == "too_deep":
                raise SourceError(f"{where} answered a Bundle {exc.detail}") from None
            kind = "an HTML page" if "html" in ctype.lower() or body.lstrip()[:1] == b"<" else "not JSON"
            raise SourceError(f"{where} answered {kind}, not a FHIR Bundle") from None
        if not isinstance(doc, dict):
            raise SourceError(f"{where} answered a JSON {type(doc).__name__}, not a FHIR Bundle")
        rt = doc.get("resourceType")
        if rt != "Bundle":
            raise SourceError(f"{where} answered resourceType={self._scrub(rt, 40)!s}, not a Bundle")
        links = doc.get("link")
        if links is not None and not (
            isinstance(links, list)
            and all(isinstance(ln, dict) and isinstance(ln.get("url", ""), str) for ln in links)
        ):
            raise SourceError(f"{where}: Bundle.link must be a list of {{relation, url}} objects")
        entries = doc.get("entry")
        if entries is not None and not isinstance(entries, list):
            raise SourceError(f"{where}: Bundle.entry must be a list, got a JSON {type(entries).__name__}")
        return doc

    def __iter__(self) -> Iterator[Item]:
        import httpx

        types = sorted(self.types or SUPPORTED, key=_priority)
        base = self.base_url.rstrip("/")
        self._headers()  # an empty token variable fails before any request
        limits = httpx.Limits(max_keepalive_connections=0)  # a socket per request: the deadline can cut it
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False, limits=limits) as client:
            for rt in types:
                url: str | None = f"{base}/{rt}?" + urlencode({"_count": self.page_size})
                seen: set[str] = set()
                page = 0
                while url:
                    if url in seen:
                        raise SourceError(
                            f"{rt}: the next link {self._scrub(url)} was already read (a page loop); "
                            "the server's paging is broken"
                        )
                    if page >= self.max_pages:
                        raise SourceError(
                            f"{rt}: more than source.max_pages={self.max_pages} pages (next: "
                            f"{self._scrub(url)}); raise it if the server really holds that many, else "
                            "its paging is broken"
                        )
                    seen.add(url)
                    self._check_origin(url, "a next link" if page else "a request")
                    bundle = self._get(client, url)
                    page += 1
                    for loc, res in _entries(bundle, dups=True):  # a page is small: look for marks always
                        if isinstance(res, Problem):
                            yield Item(source=f"{base}/{rt}", line=None, location=f"page {page} {loc}",
                                       error=res.detail, reason=res.reason)  # fmt: skip
                            continue
                        if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
                            continue  # search warnings, not data
                        yield Item(
                            source=f"{base}/{rt}", line=None, resource=res, location=f"page {page} {loc}"
                        )
                    nxt = next(
                        (ln.get("url") for ln in bundle.get("link") or [] if ln.get("relation") == "next"),
                        None,
                    )
                    url = str(httpx.URL(url).join(nxt)) if nxt else None  # a relative link: same origin


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
