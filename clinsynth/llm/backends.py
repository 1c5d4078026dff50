"""Generation backends behind one small interface: vLLM offline, an OpenAI-compatible server, transformers.

Letter stages build `GenRequest`s and get `GenResult`s back in the same order,
whatever engine runs them: vLLM on the GPU nodes, a shared `vllm serve` (or any
OpenAI-compatible endpoint) reached over HTTP, or plain transformers as a
reference and CPU fallback. Every request carries its own seed, so a letter is
reproducible on its own, independent of the batch it happened to be in.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clinsynth.llm.weights import chat_template as _chat_template
from clinsynth.llm.weights import local_model

log = logging.getLogger("clinsynth.llm")

FINISH_REASONS = ("stop", "length", "error")
SAMPLING_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": None,               # null: off
    "repetition_penalty": None,  # null: off (1.0)
    "max_tokens": None,          # callers' default when building requests; each request carries its own
}
#: ~65k SmolLM2 tokens: ~25 one-shot letters at once; vLLM on CPU otherwise takes 90% of RAM
CPU_KV_CACHE_GIB = 3.0
#: vLLM's default token budget per step; without chunked prefill it must hold the longest prompt
CPU_MIN_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter to answer a request with: vLLM loads `path` (LoRARequest), a server knows it as
    `name` (`--lora-modules NAME=DIR`), transformers loads it with peft."""

    name: str
    path: str


@dataclass(frozen=True)
class GenRequest:
    key: str                         # unique id, e.g. "<spec_id>/anamnese"
    messages: list[dict[str, str]]   # chat messages [{"role": "system"|"user", "content": ...}]
    seed: int                        # per-request seed: same seed + same prompt -> same text
    max_tokens: int
    #: guided decoding: the output must match this JSON Schema (vllm, openai; hf parses with repair)
    json_schema: dict[str, Any] | None = field(default=None, compare=False)
    #: answer with base model + this LoRA adapter (None: the base model)
    lora: Adapter | None = None


@dataclass
class GenResult:
    key: str
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str               # "stop" | "length" | "error"
    latency_s: float
    error: str | None = None


class Backend(Protocol):
    name: str                         # "vllm" | "openai" | "hf"
    model: str                        # model path or served name
    sampling: dict[str, Any]          # temperature, top_p, ... as used (recorded per letter)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]: ...

    def close(self) -> None: ...


class LoraNotEnabled(RuntimeError):
    """A request asks for a LoRA adapter that the engine cannot serve: a configuration error."""


def error_result(req: GenRequest, error: str, latency_s: float = 0.0) -> GenResult:
    return GenResult(req.key, "", 0, 0, "error", latency_s, error)


def normalize_sampling(sampling: Mapping[str, Any] | None, logger: logging.Logger = log) -> dict[str, Any]:
    """Sampling settings with defaults; unknown keys are dropped with a warning (no engine would see them)."""
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_DEFAULTS))
    if unknown:
        logger.warning("sampling keys %s are not used by the generation backends", unknown)
    out = {k: default if sampling.get(k) is None else sampling[k] for k, default in SAMPLING_DEFAULTS.items()}
    out["temperature"] = float(out["temperature"])
    out["top_p"] = float(out["top_p"])
    if out["top_k"] is not None and int(out["top_k"]) <= 0:
        out["top_k"] = None
    if out["repetition_penalty"] is not None and float(out["repetition_penalty"]) == 1.0:
        out["repetition_penalty"] = None
    if out["max_tokens"] is not None:
        out["max_tokens"] = int(out["max_tokens"])
    return out


def resolve_model_path(model_cfg: Mapping[str, Any], cache_dir: Path) -> str:
    """HF id or folder to load; tiny is built and packaged converted (once) under cache_dir."""
    return local_model(model_cfg, cache_dir)


def _dtype(backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> str:
    """The backend's dtype unless it is auto; then the model's hint (tiny: float32); then auto."""
    dtype = backend_cfg.get("dtype") or "auto"
    if dtype == "auto":
        dtype = model_cfg.get("dtype") or "auto"
    return str(dtype)


def _model_max_len(model_path: str) -> int | None:
    """The positions a local model folder holds (config.json), or None when unknown (a hub id)."""
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text()).get("max_position_embeddings")
    return int(value) if isinstance(value, (int, float)) else None


def make_backend(
    backend_cfg: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    sampling: Mapping[str, Any],
    *,
    cache_dir: Path,
    logger: logging.Logger | None = None,
) -> Backend:
    """Build the backend named by backend_cfg["kind"] for the model in model_cfg."""
    logger = logger or log
    kind = backend_cfg.get("kind")
    samp = normalize_sampling(sampling, logger)
    if kind == "vllm":
        return VLLMBackend(resolve_model_path(model_cfg, cache_dir), backend_cfg, model_cfg, samp, logger)
    if kind == "hf":
        return HFBackend(resolve_model_path(model_cfg, cache_dir), backend_cfg, model_cfg, samp, logger)
    if kind == "openai":
        return OpenAIBackend(backend_cfg, model_cfg, samp, logger)
    raise ValueError(f"unknown generation backend kind {kind!r}; known: vllm, openai, hf")


# ---------------------------------------------------------------- vLLM offline


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # platform detection differs across releases: guess from torch
        import torch

        return not torch.cuda.is_available()


#: vLLM on CPU reserves one core per rank for its scheduler process (VLLM_CPU_OMP_THREADS_BIND=auto): on
#: a 2-core task that halves the matmul threads. Measured here (SmolLM2-135M, 25 letters, 2 cores):
#: 66 tokens/s with the reserve, 109 without it. Up to this many CPUs the reserve is dropped.
CPU_NO_RESERVE_MAX_CPUS = 4


def use_every_cpu_for_vllm(logger: logging.Logger = log) -> None:
    """On a small CPU task let vLLM's OpenMP threads use every core (its scheduler then shares one):
    the environment is read by the engine processes it spawns. A user's own setting wins."""
    own_bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto"
    if own_bind or "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus <= CPU_NO_RESERVE_MAX_CPUS:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        logger.info("vLLM on %d CPU(s): no core reserved for its scheduler (VLLM_CPU_NUM_OF_RESERVED_CPU=0)",
                    cpus)


def vllm_engine_kwargs(
    model_path: str,
    backend_cfg: Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    logger: logging.Logger = log,
) -> dict[str, Any]:
    """The `vllm.LLM(...)` arguments of a backend config (benchmarks start a bare engine with the same)."""
    on_cpu = _vllm_on_cpu()
    if on_cpu:
        use_every_cpu_for_vllm(logger)
    eager = backend_cfg.get("enforce_eager")
    kv_gib = backend_cfg.get("kv_cache_memory_gib")
    if kv_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": int(backend_cfg.get("tensor_parallel_size") or 1),
        "dtype": _dtype(backend_cfg, model_cfg),
        "seed": int(backend_cfg.get("seed") or 0),
        "enable_prefix_caching": bool(backend_cfg.get("enable_prefix_caching", True)),
        # null: eager on CPU (skips a ~30 s torch.compile warm-up), CUDA graphs on GPU
        "enforce_eager": on_cpu if eager is None else bool(eager),
        "trust_remote_code": bool(backend_cfg.get("trust_remote_code", False)),
    }
    for key in ("max_num_seqs", "max_model_len", "gpu_memory_utilization"):
        if backend_cfg.get(key) is not None:
            kwargs[key] = backend_cfg[key]
    own = _model_max_len(model_path)
    if own is not None and int(kwargs.get("max_model_len") or 0) > own:
        # max_model_len is a cap on KV per sequence; a model that holds fewer positions caps it lower
        logger.info("max_model_len %s > the model's %d positions: capped", kwargs["max_model_len"], own)
        kwargs["max_model_len"] = own
    if on_cpu:
        # vLLM's CPU worker cannot rewind a seeded request's generator ("CPU Generator does not
        # use offset"), which it does whenever a prompt is prefilled in chunks: the engine dies
        # mid-batch. Whole prompts per step avoid it (every letter request carries a seed).
        kwargs["enable_chunked_prefill"] = False
        length = kwargs.get("max_model_len") or own
        if length:
            kwargs["max_num_batched_tokens"] = max(int(length), CPU_MIN_BATCHED_TOKENS)
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(float(kv_gib) * 2**30)
    if backend_cfg.get("enable_lora"):
        # LoRA requests (the fine-tuned extractor): rank cap and adapters per batch are engine-wide
        kwargs["enable_lora"] = True
        kwargs["max_lora_rank"] = int(backend_cfg.get("max_lora_rank") or 16)
        kwargs["max_loras"] = int(backend_cfg.get("max_loras") or 1)
    guided = backend_cfg.get("structured_outputs_backend")
    reasoning = backend_cfg.get("reasoning_parser")
    if guided or backend_cfg.get("disable_any_whitespace") or reasoning:
        # guided decoding's backend and whitespace are chosen per engine, not per request
        kwargs["structured_outputs_config"] = {
            "backend": guided or "auto",
            "disable_any_whitespace": bool(backend_cfg.get("disable_any_whitespace")),
        }
        if reasoning:
            # a reasoning model (GPT-OSS, thinking Qwen3): the grammar holds the answer after its reasoning
            kwargs["structured_outputs_config"]["reasoning_parser"] = str(reasoning)
    return kwargs


class VLLMBackend:
    """An in-process vLLM engine: one `LLM.chat` call per batch; vLLM schedules it continuously."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        backend_cfg: Mapping[str, Any],
        model_cfg: Mapping[str, Any],
        sampling: dict[str, Any],
        logger: logging.Logger = log,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:  # an extra: GPU nodes and CPU machines install different wheels
            raise ImportError(
                "the vllm backend needs vLLM: pip install 'clinsynth[gen]' on GPU machines, "
                f"'clinsynth[gen-cpu]' on CPU-only ones ({exc})"
            ) from exc
        self._vllm = vllm
        self.model = model_path
        self.sampling = dict(sampling)
        self.logger = logger
        self._chat_template = _chat_template(model_cfg)
        kwargs = vllm_engine_kwargs(model_path, backend_cfg, model_cfg, logger)
        self.chat_template_kwargs = dict(backend_cfg.get("chat_template_kwargs") or {}) or None
        self._lora_ids: dict[str, int] = {}
        if backend_cfg.get("batch_invariant"):
            # GPU kernels otherwise vary with batch size: a seed's text could change with its neighbours.
            # Read by vLLM from the environment (engine processes inherit it); slower, so opt-in.
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        self.engine_args = dict(kwargs)
        t0 = time.perf_counter()
        self._llm: vllm.LLM | None = vllm.LLM(**kwargs)  # None once closed
        self.start_s = time.perf_counter() - t0
        logger.info("vllm engine for %s ready in %.1f s (%s)", model_path, self.start_s, kwargs)

    def _params(self, req: GenRequest) -> Any:
        s = self.sampling
        guided = None
        if req.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            guided = StructuredOutputsParams(json=req.json_schema)
        return self._vllm.SamplingParams(
            temperature=s["temperature"],
            top_p=s["top_p"],
            top_k=int(s["top_k"] or 0),  # 0: off in vLLM 0.32 (-1 in older releases)
            repetition_penalty=float(s["repetition_penalty"] or 1.0),
            max_tokens=int(req.max_tokens),
            seed=int(req.seed),
            structured_outputs=guided,
        )

    def _lora(self, req: GenRequest) -> Any:
        if req.lora is None:
            return None
        if not self.engine_args.get("enable_lora"):
            raise LoraNotEnabled(
                f"request {req.key!r} asks for LoRA adapter {req.lora.path} but this vLLM engine was "
                "started without enable_lora (set backend.enable_lora=true)"
            )
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(req.lora.path, len(self._lora_ids) + 1)
        return LoRARequest(req.lora.name, lora_id, req.lora.path)

    def _run(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if self._llm is None:
            raise RuntimeError("the vllm engine is closed")
        # plain dicts: vLLM types messages as its own TypedDicts, which these satisfy
        conversations: list[Any] = [list(r.messages) for r in requests]
        loras = [self._lora(r) for r in requests]
        t0 = time.perf_counter()
        outs = self._llm.chat(
            conversations,
            [self._params(r) for r in requests],
            use_tqdm=False,
            lora_request=loras if any(x is not None for x in loras) else None,
            chat_template=self._chat_template,
            chat_template_kwargs=self.chat_template_kwargs,
        )
        wall = time.perf_counter() - t0
        results = []
        for req, out in zip(requests, outs, strict=True):
            comp = out.outputs[0]
            reason = comp.finish_reason if comp.finish_reason in ("stop", "length") else "error"
            m = getattr(out, "metrics", None)
            latency = wall
            if m is not None and getattr(m, "last_token_ts", 0) > getattr(m, "queued_ts", 0) > 0:
                latency = m.last_token_ts - m.queued_ts
            results.append(
                GenResult(
                    key=req.key,
                    text=comp.text,
                    tokens_in=len(out.prompt_token_ids or []),
                    tokens_out=len(comp.token_ids),
                    finish_reason=reason,
                    latency_s=latency,
                    error=None if reason != "error" else f"vllm finish_reason={comp.finish_reason!r}",
                )
            )
        return results

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        try:
            return self._run(requests)
        except Exception as exc:
            if type(exc).__name__ == "EngineDeadError" or isinstance(exc, LoraNotEnabled):
                raise  # nothing will work any more: fail the task, a relaunch resumes it
            if len(requests) == 1:
                return [error_result(requests[0], f"{type(exc).__name__}: {exc}")]
            # vLLM validates the whole batch up front (e.g. a prompt over max_model_len): halve until
            # the bad requests stand alone; the good ones rerun with their own seeds, same text
            self.logger.warning("vllm batch of %d failed (%s); splitting it", len(requests), exc)
            mid = len(requests) // 2
            return self.generate(requests[:mid]) + self.generate(requests[mid:])

    def close(self) -> None:
        """Stop the engine core and its workers now, not whenever the garbage collector gets to them."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)  # public in some releases; 0.32 has only the core's
        if shutdown is None:
            shutdown = getattr(getattr(llm.llm_engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIBackend:
    """Chat completions over HTTP with bounded concurrency and retries.

    Uses httpx (a core dependency) rather than the openai client: no extra to
    install on login nodes, vLLM's sampling extensions (top_k,
    repetition_penalty) go in the JSON body as they are, and the retry policy is
    ours alone (the openai client retries on its own unless told not to).
    """

    name = "openai"
    RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(
        self,
        backend_cfg: Mapping[str, Any],
        model_cfg: Mapping[str, Any],
        sampling: dict[str, Any],
        logger: logging.Logger = log,
    ) -> None:
        import httpx

        self._httpx = httpx
        base_url = backend_cfg.get("base_url")
        if not base_url:
            raise ValueError("backend.base_url is required for the openai backend, e.g. http://host:8000/v1")
        self.base_url = str(base_url).rstrip("/")
        self.model = str(backend_cfg.get("served_model_name") or model_cfg.get("name"))
        self.sampling = dict(sampling)
        self.logger = logger
        self.concurrency = max(1, int(backend_cfg.get("concurrency") or 8))
        self.max_retries = max(0, int(backend_cfg.get("max_retries", 5)))
        self.backoff_s = float(backend_cfg.get("backoff_s", 1.0))
        self.backoff_max_s = float(backend_cfg.get("backoff_max_s", 30.0))
        self.timeout_s = float(backend_cfg.get("timeout_s", 600.0))
        self.send_extensions = bool(backend_cfg.get("vllm_extensions", True))
        self._chat_template = _chat_template(model_cfg)
        self.chat_template_kwargs = dict(backend_cfg.get("chat_template_kwargs") or {}) or None
        headers = {}
        key_env = backend_cfg.get("api_key_env")
        if key_env:
            key = os.environ.get(str(key_env))
            if key:
                headers["Authorization"] = f"Bearer {key}"
            else:
                logger.warning("api key variable %s is not set; sending requests without a key", key_env)
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0  # observed concurrency, for logs and tests

    def _body(self, req: GenRequest) -> dict[str, Any]:
        s = self.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(req.messages),
            "max_tokens": int(req.max_tokens),
            "temperature": s["temperature"],
            "top_p": s["top_p"],
            "seed": int(req.seed),
        }
        if req.lora is not None:
            body["model"] = req.lora.name  # the server's --lora-modules NAME=DIR
        if self.send_extensions:  # vLLM accepts these; the OpenAI API itself would reject them
            if s["top_k"] is not None:
                body["top_k"] = int(s["top_k"])
            if s["repetition_penalty"] is not None:
                body["repetition_penalty"] = float(s["repetition_penalty"])
            if self._chat_template:
                body["chat_template"] = self._chat_template
            if self.chat_template_kwargs:
                body["chat_template_kwargs"] = self.chat_template_kwargs
            if req.json_schema is not None:
                # vLLM 0.32's field; the removed `guided_json` is ignored by the server without an error
                body["structured_outputs"] = {"json": req.json_schema}
        elif req.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "extraction", "schema": req.json_schema},
            }
        return body

    def _delay(self, attempt: int, response: Any = None) -> float:
        """Exponential backoff with jitter; a server's Retry-After wins when it is shorter than the cap."""
        if response is not None:
            try:
                return min(self.backoff_max_s, float(response.headers["retry-after"]))
            except (KeyError, ValueError):
                pass
        return min(self.backoff_max_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)

    def _one(self, req: GenRequest) -> GenResult:
        httpx = self._httpx
        t0 = time.perf_counter()
        body = self._body(req)
        error = "no attempt made"
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            for attempt in range(self.max_retries + 1):
                response = None
                try:
                    response = self._client.post("chat/completions", json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return self._parse(req, response.json(), time.perf_counter() - t0)
                    error = f"HTTP {response.status_code}: {response.text[:500]}"
                    if response.status_code not in self.RETRY_STATUS:
                        break  # a bad request stays bad: do not hammer the server
                if attempt < self.max_retries:
                    delay = self._delay(attempt, response)
                    self.logger.debug(
                        "%s: attempt %d failed (%s); retry in %.2f s", req.key, attempt + 1, error, delay
                    )
                    time.sleep(delay)
            attempts = attempt + 1
        finally:
            with self._lock:
                self.in_flight -= 1
        self.logger.warning("%s failed after %d attempt(s): %s", req.key, attempts, error)
        return error_result(req, f"{error} (after {attempts} attempt(s))", time.perf_counter() - t0)

    def _parse(self, req: GenRequest, data: dict[str, Any], latency: float) -> GenResult:
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            reason = choice.get("finish_reason")
            return GenResult(
                key=req.key,
                text=choice["message"].get("content") or "",
                tokens_in=int(usage.get("prompt_tokens") or 0),
                tokens_out=int(usage.get("completion_tokens") or 0),
                finish_reason=reason if reason in ("stop", "length") else "error",
                latency_s=latency,
                error=None if reason in ("stop", "length") else f"finish_reason={reason!r}",
            )
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            return error_result(req, f"unexpected response {str(data)[:300]}: {exc!r}", latency)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))  # map keeps the input order

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------- transformers


class _SeededSampler:
    """Samples each batch row with its own torch.Generator, inside `generate`'s greedy loop.

    transformers draws one random stream for the whole batch, so a row's text
    would depend on its neighbours. This processor applies the warpers, samples
    per row and leaves only the chosen token finite, so greedy picks it.
    """

    def __init__(self, seeds: Sequence[int], sampling: dict[str, Any], device: Any) -> None:
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.torch = torch
        procs: list[Any] = []
        if sampling["repetition_penalty"] is not None:
            procs.append(RepetitionPenaltyLogitsProcessor(float(sampling["repetition_penalty"])))
        procs.append(TemperatureLogitsWarper(float(sampling["temperature"])))
        if sampling["top_k"] is not None:
            procs.append(TopKLogitsWarper(int(sampling["top_k"])))
        if sampling["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(float(sampling["top_p"])))
        self.warpers = LogitsProcessorList(procs)
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        probs = torch.softmax(self.warpers(input_ids, scores.float()), dim=-1)
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


class HFBackend:
    """transformers `generate` with left-padded batches; the reference engine and a CPU fallback."""

    name = "hf"

    def __init__(
        self,
        model_path: str,
        backend_cfg: Mapping[str, Any],
        model_cfg: Mapping[str, Any],
        sampling: dict[str, Any],
        logger: logging.Logger = log,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model = model_path
        self.sampling = dict(sampling)
        self.logger = logger
        self.batch_size = max(1, int(backend_cfg.get("batch_size") or 8))
        device = backend_cfg.get("device") or "auto"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = _dtype(backend_cfg, model_cfg)
        t0 = time.perf_counter()
        trust = bool(backend_cfg.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        tpl = _chat_template(model_cfg)
        if tpl:
            self.tokenizer.chat_template = tpl
        self.chat_template_kwargs = dict(backend_cfg.get("chat_template_kwargs") or {})
        self._adapter: str | None = None  # the LoRA adapter loaded into the model (peft), if any
        # Any: transformers types PreTrainedModel.to's wrapper as if the device were the model
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust)
        self._model = model.to(self.device)
        self._model.eval()
        self.start_s = time.perf_counter() - t0
        logger.info("hf model %s on %s (%s) ready in %.1f s", model_path, self.device, dtype, self.start_s)
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def _prompt(self, req: GenRequest) -> str:
        msgs = list(req.messages)
        prompt = self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )
        assert isinstance(prompt, str)  # tokenize=False: the rendered text
        return prompt

    def _run(self, batch: Sequence[GenRequest]) -> list[GenResult]:
        torch = self.torch
        from transformers import LogitsProcessorList

        t0 = time.perf_counter()
        # add_special_tokens=False: the chat template already holds BOS (as vLLM tokenizes it)
        enc = self.tokenizer(
            [self._prompt(r) for r in batch], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        max_new = max(int(r.max_tokens) for r in batch)
        greedy = self.sampling["temperature"] <= 0.0
        procs = LogitsProcessorList()
        if not greedy:
            procs.append(_SeededSampler([r.seed for r in batch], self.sampling, self.device))
        elif self.sampling["repetition_penalty"] is not None:
            from transformers import RepetitionPenaltyLogitsProcessor

            procs.append(RepetitionPenaltyLogitsProcessor(float(self.sampling["repetition_penalty"])))
        with torch.inference_mode():
            out = self._model.generate(
                **enc,
                max_new_tokens=max_new,
                do_sample=False,  # sampling, when asked for, happens per row in _SeededSampler
                logits_processor=procs,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                temperature=None,
                top_p=None,
                top_k=None,
            )
        wall = time.perf_counter() - t0
        n_prompt = enc["input_ids"].shape[1]
        results = []
        for i, req in enumerate(batch):
            new = out[i, n_prompt:].tolist()[: int(req.max_tokens)]
            stop_at = next((j for j, t in enumerate(new) if t in self.eos_ids), None)
            if stop_at is not None:
                new, reason = new[: stop_at + 1], "stop"  # EOS counts as an output token, as in vLLM
            else:
                reason = "length"
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            assert isinstance(text, str)  # one sequence in, one string out
            results.append(
                GenResult(
                    key=req.key,
                    text=text,
                    tokens_in=int(enc["attention_mask"][i].sum()),
                    tokens_out=len(new),
                    finish_reason=reason,
                    latency_s=wall,
                )
            )
        return results

    def _with_adapter(self, lora: Adapter | None) -> Any:
        """A context in which the model answers as base + `lora` (peft), or as the base model.

        No guided decoding here: outputs are parsed with repair (clinsynth.extraction.parse)."""
        import contextlib

        if lora is None:
            if self._adapter is None:
                return contextlib.nullcontext()
            return self._model.disable_adapter()
        if self._adapter is None:
            from peft import PeftModel

            self._model = PeftModel.from_pretrained(self._model, lora.path).eval()
            self._adapter = lora.path
        elif self._adapter != lora.path:
            raise ValueError(
                f"the hf backend serves one LoRA adapter per task: {self._adapter} is loaded, "
                f"{lora.path} was asked for"
            )
        return contextlib.nullcontext()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        by_key: dict[int, GenResult] = {}
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.lora.path if r.lora else None, []).append(i)
        for idx in groups.values():
            lora = requests[idx[0]].lora
            with self._with_adapter(lora):
                for i, res in zip(idx, self._generate([requests[i] for i in idx]), strict=True):
                    by_key[i] = res
        return [by_key[i] for i in range(len(requests))]

    def _generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results: list[GenResult] = []
        for i in range(0, len(requests), self.batch_size):
            batch = requests[i : i + self.batch_size]
            try:
                results.extend(self._run(batch))
            except Exception as exc:
                if len(batch) == 1:
                    results.append(error_result(batch[0], f"{type(exc).__name__}: {exc}"))
                    continue
                self.logger.warning("hf batch of %d failed (%s); retrying one by one", len(batch), exc)
                results.extend(r for one in batch for r in self._generate([one]))
        return results

    def close(self) -> None:
        self._model = None
