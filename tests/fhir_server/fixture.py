"""pytest fixture for the local FHIR R4 test server (tests/fhir_server/server.mjs).

Use from any test module (or a conftest)::

    from tests.fhir_server.fixture import fhir_server  # noqa: F401  (pytest fixture)

    def test_ingest(fhir_server):
        fhir_server.reset()
        fhir_server.load([{"resourceType": "Patient", "id": "p1"}])
        ...  # point the code under test at fhir_server.base_url with fhir_server.token

The server is started once per session (``node server.mjs 0``) with a random bearer token in
FHIR_SERVER_TOKEN. ``npm ci`` runs first when node_modules is missing or older than the lockfile.
If node/npm are missing or the install fails the test is skipped, unless
CLINSYNTH_REQUIRE_FHIR_SERVER=1, in which case it fails.

Only the standard library and httpx are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER_DIR = Path(__file__).resolve().parent
BASE_PATH = "/fhir/R4"
MIN_NODE = (20, 19)
NPM_CI_TIMEOUT_S = 600
START_TIMEOUT_S = 60
REQUIRE_ENV = "CLINSYNTH_REQUIRE_FHIR_SERVER"


class FhirServerUnavailable(RuntimeError):
    """node/npm/httpx missing, npm ci failed, or the server did not start."""


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"the local FHIR test server is required ({REQUIRE_ENV}=1) but unavailable: {reason}")
    pytest.skip(f"local FHIR test server unavailable: {reason}")


def _node_version(node: str) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.stdout.strip())
    if out.returncode != 0 or not m:
        raise FhirServerUnavailable(f"`{node} --version` failed: {out.stdout}{out.stderr}".strip())
    return tuple(int(x) for x in m.groups())


def _node_modules_current(server_dir: Path) -> bool:
    installed = server_dir / "node_modules" / ".package-lock.json"  # written by npm ci/install
    lock = server_dir / "package-lock.json"
    return installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime


@contextlib.contextmanager
def _install_lock(server_dir: Path) -> Iterator[None]:
    """Serialise `npm ci` between concurrent pytest processes (e.g. xdist workers)."""
    key = hashlib.sha256(str(server_dir).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"clinsynth-fhir-server-npm-{key}.lock"
    with open(path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_node_modules(server_dir: Path = SERVER_DIR) -> str:
    """Checks node/npm and runs `npm ci` if needed. Returns the node executable.

    Raises FhirServerUnavailable with a readable reason.
    """
    node = shutil.which("node")
    if node is None:
        raise FhirServerUnavailable("`node` not found on PATH (Node.js >= 20.19 is needed)")
    version = _node_version(node)
    if version[:2] < MIN_NODE:
        raise FhirServerUnavailable(
            f"node {'.'.join(map(str, version))} is too old; @medplum/fhir-router needs >= 20.19"
        )
    with _install_lock(server_dir):
        if _node_modules_current(server_dir):
            return node
        npm = shutil.which("npm")
        if npm is None:
            raise FhirServerUnavailable(
                f"`npm` not found on PATH and {server_dir / 'node_modules'} is missing"
            )
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"]
        try:
            out = subprocess.run(
                cmd, cwd=server_dir, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise FhirServerUnavailable(f"`{' '.join(cmd)}` timed out after {NPM_CI_TIMEOUT_S}s") from None
        if out.returncode != 0:
            tail = (out.stdout + out.stderr).strip()[-2000:]
            raise FhirServerUnavailable(f"`{' '.join(cmd)}` in {server_dir} exited {out.returncode}: {tail}")
    return node


class FhirTestServer:
    """A running server.mjs process. Attributes: base_url, root_url, token, port, log_path."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log_path: Path) -> None:
        import httpx

        self.proc = proc
        self.port = port
        self.token = token
        self.log_path = log_path
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}{BASE_PATH}"
        self._admin = httpx.Client(
            base_url=self.root_url, headers=self.auth_headers(), timeout=60.0, trust_env=False
        )

    # -- convenience -------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, **kwargs: Any):
        """An httpx.Client on base_url with the bearer token (caller closes it)."""
        import httpx

        headers = {**self.auth_headers(), "Accept": "application/fhir+json", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("trust_env", False)
        return httpx.Client(base_url=self.base_url, headers=headers, **kwargs)

    def _admin_call(self, method: str, path: str, json: Any = None) -> Any:
        r = self._admin.request(method, path, json=json)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:1000]}")
        return r.json()

    # -- data ------------------------------------------------------------------------------
    def load(self, resources: list[dict[str, Any]], chunk_size: int = 500) -> list[str]:
        """Stores resources via transaction Bundles of at most chunk_size entries.

        A resource with an id is PUT to Type/id (so references like "Patient/p1" between loaded
        resources work); one without gets POSTed and a server-assigned id. Returns "Type/id" for
        each resource, in order. Raises RuntimeError if any entry fails.
        """
        refs: list[str] = []
        for start in range(0, len(resources), chunk_size):
            chunk = resources[start : start + chunk_size]
            entries = []
            for res in chunk:
                rtype = res["resourceType"]
                if res.get("id"):
                    entries.append(
                        {"resource": res, "request": {"method": "PUT", "url": f"{rtype}/{res['id']}"}}
                    )
                else:
                    entries.append({"resource": res, "request": {"method": "POST", "url": rtype}})
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            r = self._admin.post(BASE_PATH, json=bundle, headers={"Content-Type": "application/fhir+json"})
            if r.status_code != 200:
                raise RuntimeError(f"transaction failed: HTTP {r.status_code}: {r.text[:2000]}")
            out = r.json()
            for i, entry in enumerate(out.get("entry", [])):
                resp = entry.get("response", {})
                if not str(resp.get("status", "")).startswith("2"):
                    raise RuntimeError(
                        f"transaction entry {start + i} ({chunk[i]['resourceType']}) failed: "
                        f"{resp.get('status')} {resp.get('outcome')}"
                    )
                loc = resp.get("location", "")
                refs.append(loc.split(BASE_PATH + "/", 1)[-1])
        return refs

    def reset(self) -> None:
        """Empties the repository and clears faults, request log and runtime config."""
        self._admin_call("POST", "/admin/reset")

    # -- faults / config / log ----------------------------------------------------------------
    def faults(self, **rule: Any) -> dict[str, Any]:
        """Adds a fault rule; e.g. faults(fail_next=2, status=503), faults(delay_ms=3000, count=1),
        faults(reset=True), faults(fail_next=1, status=429, retry_after=1, match="/Observation").
        See README.md for all fields. Returns the server's rule list."""
        return self._admin_call("POST", "/admin/faults", json=rule)

    def clear_faults(self) -> None:
        self._admin_call("DELETE", "/admin/faults")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Runtime settings: paging ("offset" | "cursor"), default_count, max_count."""
        return self._admin_call("POST", "/admin/config", json=settings)

    def requests_log(self, since: int = 0) -> list[dict[str, Any]]:
        """FHIR requests served (not /admin), oldest first: seq, method, path, status, ms, fault, auth."""
        return self._admin_call("GET", f"/admin/requests?since={since}")["requests"]

    def clear_requests_log(self) -> None:
        self._admin_call("DELETE", "/admin/requests")

    def server_log(self) -> str:
        """The server's stderr so far (one line per request)."""
        return self.log_path.read_text(errors="replace")

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._admin.close()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()  # server exits on stdin EOF
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def start_fhir_server(log_dir: Path, env: dict[str, str] | None = None) -> FhirTestServer:
    """Installs if needed and starts a server; raises FhirServerUnavailable. Caller must .stop() it.

    env: extra environment for the server (e.g. {"FHIR_SERVER_PAGING": "cursor"}).
    """
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise FhirServerUnavailable("the Python package httpx is not installed") from None
    node = ensure_node_modules()
    token = secrets.token_urlsafe(24)
    server_env = {**os.environ, **(env or {}), "FHIR_SERVER_TOKEN": token}
    server_env.pop("FHIR_SERVER_PORT", None)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"fhir-server-{os.getpid()}-{secrets.token_hex(4)}.log"
    with open(log_path, "wb") as log_fh:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [node, "server.mjs", "0", "--exit-on-stdin-close"],
            cwd=SERVER_DIR,
            env=server_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_fh,
        )

    port_box: list[int] = []
    ready = threading.Event()

    def _read_stdout() -> None:  # reads LISTENING, then keeps the pipe drained
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            m = re.fullmatch(r"LISTENING (\d+)", line)
            if m and not port_box:
                port_box.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=_read_stdout, name="fhir-server-stdout", daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not port_box:
        proc.kill()
        proc.wait(timeout=10)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise FhirServerUnavailable(
            f"server.mjs did not print LISTENING within {START_TIMEOUT_S}s (exit code {proc.poll()}): {tail}"
        )
    return FhirTestServer(proc, port_box[0], token, log_path)


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """Session-wide local FHIR R4 server. Data persists between tests: call .reset() first."""
    try:
        server = start_fhir_server(tmp_path_factory.mktemp("fhir-server"))
    except FhirServerUnavailable as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield server
    finally:
        server.stop()
