"""`generate`: specs -> letters, as a job array with one LLM engine per task.

Task i takes specs i::N and writes them in chunks (`letters/shard-0000i.parts/chunk-000012.size8.jsonl`),
each chunk atomically; a relaunch after SIGKILL, scancel or preemption skips the chunks that
exist, so every spec ends up with exactly one letter. When all chunks are there they are joined
into `letters/shard-0000i.jsonl` and the task's throughput goes to `stats/shard-0000i.json`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import model_validator

from clinsynth.artifacts.letters import LetterShard
from clinsynth.artifacts.specs import check_shard_recipes, check_specs, shard_recipes
from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.letters.generate import LetterWriter, compile_templates
from clinsynth.llm.config import Backend, Model, SamplingConfig
from clinsynth.sampling.recipe import Recipe


class LettersConfig(StageConfig):
    mode: Literal["template", "hybrid", "llm"] = identity()
    narrative_sections: list[str] = identity(why="hybrid: the sections the LLM writes")
    max_tokens: int | None = identity(ge=1, why="per LLM call; a shorter cap truncates other letters")
    chunk: int = operational(
        ge=1, why="letters per atomic write; every letter has its own seed (GPU: see backend.batch_invariant)"
    )


class PromptsConfig(StageConfig):
    system: str = identity()
    section: str = identity()
    letter: str = identity()


class GenerateSection(StageConfig):
    letters: LettersConfig
    backend: Backend
    model: Model | None = identity(None, why="null (no generate/model group) only with backend=template")
    prompts: PromptsConfig
    sampling: SamplingConfig

    @model_validator(mode="after")
    def _backend_fits_mode(self) -> GenerateSection:
        kind = self.backend.kind
        if self.letters.mode != "template" and kind == "template":
            raise ValueError(
                f"letters={self.letters.mode} needs an LLM: set generate/backend=vllm|openai|hf "
                "and generate/model=..."
            )
        if kind != "template" and self.model is None:
            raise ValueError(f"backend={kind} needs a model: set generate/model=tiny|smollm2_135m|qwen3_235b")
        if self.letters.mode != "template" and self.letters.max_tokens is None:
            raise ValueError(f"letters={self.letters.mode} needs generate.letters.max_tokens")
        return self


class GenerateConfig(StageConfig):
    seed: int = identity()
    generate: GenerateSection


def _requires(cfg: GenerateConfig) -> list[tuple[str, str]]:
    if cfg.generate.letters.mode == "template":
        return []
    kind = cfg.generate.backend.kind
    model_kind = cfg.generate.model.kind if cfg.generate.model is not None else None
    # a packaged model (GGUF in a package) is converted locally by transformers + gguf for vllm and hf
    packaged = [("gguf", "hf")] if model_kind == "packaged" and kind in ("vllm", "hf") else []
    if kind == "vllm":
        return [("vllm", "gen (GPU) or gen-cpu (CPU)"), *packaged]
    if kind == "hf":
        return [("torch", "hf"), ("transformers", "hf"), *packaged]
    if model_kind == "tiny":
        return [("tokenizers", "hf")]  # the tiny model is built locally even for a server
    return []


def _backend(cfg: GenerateSection, ctx: StageContext) -> Any:
    from clinsynth.llm.backends import make_backend

    assert cfg.model is not None  # checked by GenerateSection
    if ctx.cache_dir is None:
        raise RuntimeError("generate needs ctx.cache_dir (the runs folder's cache) to build or find models")
    return make_backend(
        cfg.backend.model_dump(),
        cfg.model.model_dump(),
        cfg.sampling.model_dump(),
        cache_dir=ctx.cache_dir,  # runs/cache: tiny models built once per runs folder
        logger=ctx.logger,
    )


def _nondeterminism(cfg: GenerateConfig) -> dict[str, Any] | None:
    """Template letters are a function of the recipes; LLM sections are sampled (per-letter seeds, but
    batched kernels are not bitwise reproducible across batch layouts and hardware)."""
    g = cfg.generate
    if g.letters.mode == "template":
        return None
    return {
        "why": "LLM sampling",
        "seed": cfg.seed,
        "letter_seeds": "letter_seed(seed, spec_id), recorded per letter",
        "backend": g.backend.model_dump(mode="json"),
        "model": g.model.model_dump(mode="json") if g.model is not None else None,
        "sampling": g.sampling.model_dump(mode="json"),
    }


@stage(
    "generate",
    needs=("sample",),
    config=GenerateConfig,
    array=True,
    version=1,
    requires=_requires,
    nondeterminism=_nondeterminism,
    timing_records=("stats/",),  # each task's letters/s and tokens/s (launchers/manifest.py)
)
def run(cfg: GenerateConfig, ctx: StageContext) -> dict[str, Any]:
    """Letters for specs shard::shards; resumable at chunk granularity."""
    gc = cfg.generate
    lc = gc.letters
    mode = lc.mode
    backend_kind = gc.backend.kind
    if mode == "template" and backend_kind != "template":
        ctx.logger.warning("letters=template ignores backend=%s", backend_kind)
    sample_dir = ctx.input_dir("sample")
    total = check_specs(sample_dir, stage="generate")  # the sample report's count == specs.parquet's rows
    my_recipes = shard_recipes(sample_dir, ctx.shard, ctx.num_shards)
    check_shard_recipes(sample_dir, my_recipes, total, ctx.shard, ctx.num_shards, stage="generate")
    mine = list(range(len(my_recipes)))
    chunk = lc.chunk
    out = LetterShard(ctx.stage_dir, ctx.shard, ctx.num_shards, chunk)
    n_chunks = (len(mine) + chunk - 1) // chunk
    todo = out.missing_chunks(n_chunks)
    if len(todo) < n_chunks:
        ctx.logger.info(
            "resuming shard %d: %d of %d chunk(s) already written", ctx.shard, n_chunks - len(todo), n_chunks
        )
    prompts = gc.prompts.model_dump()
    backend = None
    if todo and mode != "template":
        # parse the templates while the engine starts (this thread then mostly waits on the engine's
        # process), not in the first chunk with the engine idle; a broken template fails here
        with ThreadPoolExecutor(1) as pool:
            compiled = pool.submit(compile_templates, prompts)
            backend = _backend(gc, ctx)
            compiled.result()
    writer = (
        LetterWriter(
            mode,
            seed=cfg.seed,
            backend=backend,
            prompts=prompts,
            narrative_sections=tuple(lc.narrative_sections),
            max_tokens=lc.max_tokens or 0,
        )
        if todo
        else None
    )
    t0 = time.perf_counter()
    letters = tokens_in = tokens_out = 0
    resumed = len(mine) - sum(len(mine[c * chunk : (c + 1) * chunk]) for c in todo)
    ctx.progress(resumed, len(mine), "letters")
    try:
        for k, c in enumerate(todo, 1):
            rows = mine[c * chunk : (c + 1) * chunk]
            recipes = [Recipe.from_json(my_recipes[i]) for i in rows]
            assert writer is not None
            records = writer.write(recipes)
            out.write_chunk(c, records)
            letters += len(records)
            ctx.progress(resumed + letters, len(mine), "letters")
            tokens_in += sum(r["tokens_in"] or 0 for r in records)
            tokens_out += sum(r["tokens_out"] or 0 for r in records)
            elapsed = time.perf_counter() - t0
            ctx.logger.info(
                "shard %d: chunk %d/%d, %d letters, %.1f letters/s",
                ctx.shard,
                k,
                len(todo),
                letters,
                letters / elapsed if elapsed else 0.0,
            )
            ctx.tracker.log(
                {
                    "generate/letters": letters,
                    "generate/letters_per_s": letters / elapsed,
                    "generate/tokens_out_per_s": tokens_out / elapsed,
                }
            )
        seconds = time.perf_counter() - t0  # the engine's shutdown (~5 s on CPU) is not generation
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
    stats = {
        "shard": ctx.shard,
        "specs": len(mine),
        "letters_generated": letters,
        "letters_resumed": len(mine) - letters,
        "seconds": round(seconds, 3),
        "letters_per_s": round(letters / seconds, 2) if seconds and letters else None,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens_out_per_s": round(tokens_out / seconds, 1) if seconds and tokens_out else None,
        "backend": backend_kind if mode != "template" else "template",
        "mode": mode,
    }
    out.finish(n_chunks, len(mine), stats)
    return stats
