"""The FHIR REST source: paged search per resource type with Bearer auth, retries and timeouts."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from clinsynth.ingest.extract import SUPPORTED
from clinsynth.ingest.sources import Item, SourceError, _entries, _priority


@dataclass
class ServerSource:
    """Paged FHIR search (`_count`, next links) with Bearer auth, retries with backoff and timeouts."""

    base_url: str
    token_env: str | None = None
    page_size: int = 500
    timeout_s: float = 30.0
    retries: int = 5
    backoff_s: float = 0.5
    types: tuple[str, ...] = ()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/fhir+json"}
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise SourceError(
                    f"source.token_env={self.token_env} but that environment variable is empty; "
                    "export the server's Bearer token there (it is never written to configs or logs)"
                )
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get(self, client: Any, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            try:
                resp = client.get(url, params=params)
                if resp.status_code in (429, 500, 502, 503, 504):
                    last = f"HTTP {resp.status_code}"
                elif resp.status_code >= 400:
                    raise SourceError(
                        f"GET {resp.request.url} answered HTTP {resp.status_code}: {resp.text[:300]}"
                    )
                else:
                    return orjson.loads(resp.content)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                delay = self.backoff_s * 2**attempt * (0.5 + random.random())
                time.sleep(delay)
        raise SourceError(f"GET {url} failed after {self.retries + 1} attempts ({last})")

    def __iter__(self) -> Iterator[Item]:
        import httpx

        types = sorted(self.types or SUPPORTED, key=_priority)
        base = self.base_url.rstrip("/")
        with httpx.Client(headers=self._headers(), timeout=self.timeout_s, follow_redirects=True) as client:
            for rt in types:
                url: str | None = f"{base}/{rt}?" + urlencode({"_count": self.page_size})
                page = 0
                while url:
                    bundle = self._get(client, url)
                    page += 1
                    for loc, res in _entries(bundle):
                        if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
                            continue  # search warnings, not data
                        yield Item(
                            source=f"{base}/{rt}", line=None, resource=res, location=f"page {page} {loc}"
                        )
                    url = next(
                        (ln.get("url") for ln in bundle.get("link") or [] if ln.get("relation") == "next"),
                        None,
                    )
