"""`extract`: letters -> schema-v2 predictions, as a job array with one LLM engine per task.

Reads the test split's letters (sample + generate), the six development letters where present and
any folder of external .txt letters (clinsynth/extraction/documents.py); task i takes documents
i::N in chunks (`parts/shard-0000i/chunk-000012.size8.jsonl`), each written atomically, so a relaunch
redoes only missing chunks. Extractors: `finetuned` (train.model + the train stage's LoRA adapter,
the training prompt), `oneshot` (an instruct model, one worked example), `rules` (no model).
Writes predictions/shard-0000i.jsonl (clinsynth.artifacts.predictions), with extract.ground also
ungrounded/ and grounding/ (clinsynth/extraction/store.py), and stats/shard-0000i.json.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.extraction.config import ExtractConfig, ExtractSection, FinetunedExtractor, OneshotExtractor
from clinsynth.extraction.documents import documents, fingerprint
from clinsynth.extraction.prompts import (
    ONESHOT_VERSION,
    finetuned_messages,
    oneshot_messages,
    trained_template_kwargs,
)
from clinsynth.extraction.store import ChunkStore
from clinsynth.training.chat import PROMPT_VERSION

#: bumped with the training prompt (finetuned, and the rules text oneshot shares) or the one-shot prompt
EXTRACT_VERSION = 100 * PROMPT_VERSION + ONESHOT_VERSION
#: LoRA ranks vLLM 0.32 accepts for max_lora_rank
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _needs(plain: dict[str, Any]) -> tuple[str, ...]:
    ex = plain.get("extract") or {}
    needs: list[str] = ["sample", "generate"] if ex.get("test_letters", True) else []
    if (ex.get("extractor") or {}).get("kind") == "finetuned":
        needs += ["dataset", "train"]  # the training prompt's schema_in_prompt, the adapter
    return tuple(needs)


def _requires(cfg: ExtractConfig) -> list[tuple[str, str]]:
    ec = cfg.extract
    if ec.extractor.kind == "rules" or ec.backend is None:
        return []
    model = ec.llm_model
    packaged = [("gguf", "hf")] if model is not None and model.kind == "packaged" else []
    if ec.backend.kind == "vllm":
        return [("vllm", "gen (GPU) or gen-cpu (CPU)"), *packaged]
    if ec.backend.kind == "hf":
        peft = [("peft", "train")] if ec.extractor.kind == "finetuned" else []
        return [("torch", "hf"), ("transformers", "hf"), *peft, *packaged]
    return [("tokenizers", "hf")] if model is not None and model.kind == "tiny" else []


def _inputs(cfg: ExtractConfig) -> Any:
    """External letters and the dev letters present here: names, sizes and contents enter the stage id."""
    return fingerprint(cfg.extract.letters, cfg.extract.dev_letters)


def _make_backend(
    backend_cfg: dict[str, Any], model_cfg: dict[str, Any], sampling: dict[str, Any], ctx: StageContext
) -> Any:
    """One engine per task (tests replace this to share one engine)."""
    from clinsynth.llm.backends import make_backend

    if ctx.cache_dir is None:
        raise RuntimeError("extract needs ctx.cache_dir (the runs folder's cache) to build or find models")
    return make_backend(backend_cfg, model_cfg, sampling, cache_dir=ctx.cache_dir, logger=ctx.logger)


def lora_rank(adapter_dir: Path) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's rank."""
    r = int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])
    for size in VLLM_LORA_RANKS:
        if size >= r:
            return size
    raise ValueError(f"{adapter_dir}: LoRA rank {r} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def _finetuned(ex: FinetunedExtractor, ctx: StageContext) -> tuple[str, Path | None, Path | None]:
    """(schema_in_prompt of the training prompt, adapter folder or None, merged folder or None)."""
    from clinsynth.artifacts.sft import read_stats

    dataset_dir, train_dir = ctx.input_dir("dataset"), ctx.input_dir("train")
    stats = read_stats(dataset_dir)
    if stats.get("prompt_version") != PROMPT_VERSION:
        raise RuntimeError(
            f"extract: the dataset in {dataset_dir} was built with prompt version "
            f"{stats.get('prompt_version')}, "
            f"this code prompts with version {PROMPT_VERSION}: relaunch so the dataset and train stages rerun"
        )
    adapter, merged = train_dir / "adapter", train_dir / "merged"
    has_adapter = (adapter / "adapter_config.json").is_file()
    has_merged = (merged / "config.json").is_file()
    # auto: merged weights when training wrote them (train.merge), the same model without vLLM's LoRA path
    # (on CPU its punica kernels took ~3/4 of the engine's time); else the adapter
    want = ex.weights if ex.weights != "auto" else ("merged" if has_merged else "adapter")
    if want == "adapter" and not has_adapter:
        raise RuntimeError(f"extract: no LoRA adapter in {adapter} (full fine-tuning? use weights=merged)")
    if want == "merged" and not has_merged:
        raise RuntimeError(f"extract: no merged model in {merged}: set train.merge=true, or weights=adapter")
    return (
        str(stats["schema_in_prompt"]),
        adapter if want == "adapter" else None,
        merged if want == "merged" else None,
    )


def _trained_tokenizer(weights_dir: Path, model_cfg: dict[str, Any], ctx: StageContext) -> Any:
    """The tokenizer training saved beside the adapter / merged model (else the base model's), with
    model.chat_template applied as the backends apply it."""
    from clinsynth.llm.weights import chat_template, load_tokenizer

    if not (weights_dir / "tokenizer_config.json").is_file():
        assert ctx.cache_dir is not None
        return load_tokenizer(model_cfg, ctx.cache_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))
    tpl = chat_template(model_cfg)
    if tpl:
        tokenizer.chat_template = tpl
    return tokenizer


def _template_kwargs(
    ec: ExtractSection, ctx: StageContext, model_cfg: dict[str, Any], trained: tuple[str, Path] | None
) -> dict[str, Any]:
    """chat_template_kwargs: finetuned, those that reproduce the training prompt (extract.enable_thinking
    is not used: the config drops it); oneshot, extract.enable_thinking where set."""
    if trained is not None:
        schema_in_prompt, weights_dir = trained
        kwargs = trained_template_kwargs(
            _trained_tokenizer(weights_dir, model_cfg, ctx), schema_in_prompt=schema_in_prompt
        )
        ctx.logger.info("fine-tuned model prompted as trained: chat_template_kwargs %s", kwargs or "{}")
        return kwargs
    return {} if ec.enable_thinking is None else {"enable_thinking": ec.enable_thinking}


def _runner(cfg: ExtractConfig, ctx: StageContext, catalog: Any) -> tuple[Any, Any]:
    """(runner, backend or None) for the configured extractor; the engine starts here."""
    from clinsynth.extraction.guided import decoding_schema
    from clinsynth.extraction.llm import LLMRunner, RulesRunner
    from clinsynth.llm.backends import Adapter

    ec: ExtractSection = cfg.extract
    ex = ec.extractor
    if ex.kind == "rules":
        return RulesRunner(
            catalog=catalog, threshold=ec.ground_threshold, method=ec.ground_method, logger=ctx.logger
        ), None
    assert ec.backend is not None and ec.sampling is not None and ec.guided is not None  # checked by config
    assert ec.max_tokens is not None
    model = ec.llm_model
    assert model is not None
    model_cfg = model.model_dump()
    backend_cfg = ec.backend.model_dump()
    adapter = None
    trained: tuple[str, Path] | None = None
    if isinstance(ex, FinetunedExtractor):
        schema_in_prompt, adapter_dir, merged = _finetuned(ex, ctx)
        messages = functools.partial(finetuned_messages, schema_in_prompt=schema_in_prompt)
        weights_dir = adapter_dir or merged
        assert weights_dir is not None  # _finetuned found one
        trained = (schema_in_prompt, weights_dir)
        if merged is not None:
            model_cfg = {**model_cfg, "kind": "pretrained", "path": str(merged)}
        if adapter_dir is not None:
            name = backend_cfg.get("lora_name") or "finetuned"
            adapter = Adapter(name=str(name), path=str(adapter_dir))
            if ec.backend.kind == "vllm":
                backend_cfg["enable_lora"] = True
                backend_cfg["max_lora_rank"] = backend_cfg.get("max_lora_rank") or lora_rank(adapter_dir)
    else:
        assert isinstance(ex, OneshotExtractor)
        messages = functools.partial(oneshot_messages, schema_in_prompt=ex.schema_in_prompt)
    template_kwargs = _template_kwargs(ec, ctx, model.model_dump(), trained)
    if template_kwargs:
        backend_cfg["chat_template_kwargs"] = template_kwargs
    if ec.reasoning_parser:
        if ec.backend.kind == "vllm":
            backend_cfg["reasoning_parser"] = ec.reasoning_parser
        else:  # a server's own --reasoning-parser decides (vLLM picks openai_gptoss for GPT-OSS itself)
            ctx.logger.info("extract.reasoning_parser=%s: used by the vllm backend only", ec.reasoning_parser)
    backend = _make_backend(backend_cfg, model_cfg, ec.sampling.model_dump(), ctx)
    schema = decoding_schema(ec.guided.max_items, ec.guided.max_string) if ec.guided.enabled else None
    runner = LLMRunner(
        backend, ex.kind, messages, max_tokens=ec.max_tokens, seed=cfg.seed, json_schema=schema,
        adapter=adapter, catalog=catalog, threshold=ec.ground_threshold, method=ec.ground_method,
        logger=ctx.logger,
    )  # fmt: skip
    return runner, backend


def _peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (2**30 if sys.platform == "darwin" else 2**20), 3)


def _nondeterminism(cfg: ExtractConfig) -> dict[str, Any] | None:
    """The rules extractor is a function of the letters; an LLM's answers are not bitwise reproducible
    (batched kernels, even greedy), so a rerun may differ."""
    ec = cfg.extract
    if ec.extractor.kind == "rules":
        return None
    model = ec.llm_model
    return {
        "why": f"{ec.extractor.kind} extraction by an LLM",
        "seed": cfg.seed,
        "backend": ec.backend.model_dump(mode="json") if ec.backend is not None else None,
        "model": model.model_dump(mode="json") if model is not None else None,
        "sampling": ec.sampling.model_dump(mode="json") if ec.sampling is not None else None,
    }


@stage(
    "extract",
    needs=_needs,
    config=ExtractConfig,
    array=True,
    version=EXTRACT_VERSION,
    requires=_requires,
    fingerprint=_inputs,
    nondeterminism=_nondeterminism,
    timing_records=("stats/",),  # each task's documents/s, tokens/s, engine start, memory
)
def run(cfg: ExtractConfig, ctx: StageContext) -> dict[str, Any]:
    """Predictions for documents shard::shards; resumable at chunk granularity."""
    ec = cfg.extract
    total, docs = documents(
        sample_dir=ctx.input_dir("sample") if ec.test_letters else None,
        gen_dir=ctx.input_dir("generate") if ec.test_letters else None,
        dev_letters=ec.dev_letters,
        letters=ec.letters,
        shard=ctx.shard,
        num_shards=ctx.num_shards,
    )
    if total == 0:
        raise RuntimeError(
            "extract: no letters to read (no test-split letters, no development letters here, "
            f"extract.letters={ec.letters!r}): sample more patients, or point extract.letters at a folder"
        )
    chunk = ec.chunk_size
    store = ChunkStore(ctx.stage_dir, ctx.shard, chunk)
    n_chunks = (len(docs) + chunk - 1) // chunk
    todo = store.missing(n_chunks)
    if len(todo) < n_chunks:
        ctx.logger.info(
            "resuming shard %d: %d of %d chunk(s) already written", ctx.shard, n_chunks - len(todo), n_chunks
        )
    catalog = None
    if ec.ground:
        from clinsynth.terminology import load_catalog

        catalog = load_catalog()
    t0 = time.perf_counter()
    runner, backend = _runner(cfg, ctx, catalog) if todo else (None, None)
    start_s = time.perf_counter() - t0
    engine_args = dict(getattr(backend, "engine_args", None) or {})
    done = 0
    work_end = t0 + start_s
    resumed = len(docs) - sum(len(docs[c * chunk : (c + 1) * chunk]) for c in todo)
    ctx.progress(resumed, len(docs), "letters")
    try:
        for k, c in enumerate(todo, 1):
            assert runner is not None
            outcomes = runner.run(docs[c * chunk : (c + 1) * chunk])
            store.write(c, outcomes)
            done += len(outcomes)
            ctx.progress(resumed + done, len(docs), "letters")
            summary = runner.stats.summary()
            rate = summary["completion_tokens"] / max(time.perf_counter() - t0 - start_s, 1e-9)
            ctx.logger.info(
                "shard %d: chunk %d/%d, %d letters, %.1f completion tokens/s",
                ctx.shard, k, len(todo), done, rate,
            )  # fmt: skip
            ctx.tracker.log(
                {
                    "extract/documents": done,
                    "extract/completion_tokens_per_s": rate,
                    **{f"extract/status_{s}": n for s, n in summary["statuses"].items()},
                }
            )
        work_end = time.perf_counter()  # the engine's shutdown below is not work, as its start is not
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
    stats = {
        "shard": ctx.shard,
        "num_shards": ctx.num_shards,
        "documents_total": total,
        "documents": len(docs),
        "documents_extracted": done,
        "documents_resumed": len(docs) - done,
        "extractor": ec.extractor.kind,
        "backend": ec.backend.kind if ec.backend is not None else None,
        "model": ec.llm_model.name if ec.llm_model is not None else None,
        "guided": bool(ec.guided and ec.guided.enabled)
        and ec.backend is not None
        and ec.backend.kind != "hf",
        "ground": ec.ground,
        "chunk": chunk,
        "engine_start_s": round(start_s, 3),
        # from the engine start to the last chunk written: prompts, engine calls, parsing, grounding, writes
        "work_s": round(work_end - t0 - start_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "engine_args": engine_args or None,
        "peak_rss_gb": _peak_rss_gb(),
        **{
            k: v
            for k, v in (runner.stats.summary() if runner is not None else {}).items()
            if k != "documents"
        },
    }
    tokens, work = stats.get("completion_tokens") or 0, stats["work_s"]
    stats["completion_tokens_per_s"] = round(tokens / work, 2) if tokens and work else None
    store.finish(n_chunks, len(docs), stats, ground=ec.ground)
    return {k: stats[k] for k in ("documents", "documents_extracted", "extractor") if k in stats} | {
        "statuses": stats.get("statuses", {}),
        "completion_tokens_per_s": stats.get("completion_tokens_per_s"),
    }
