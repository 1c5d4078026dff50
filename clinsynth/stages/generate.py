"""`generate`: specs -> letters, as a job array with one LLM engine per task.

Task i takes specs i::N and writes them in chunks (`letters/shard-0000i.parts/chunk-000012.jsonl`),
each chunk atomically; a relaunch after SIGKILL, scancel or preemption skips the chunks that
exist, so every spec ends up with exactly one letter. When all chunks are there they are joined
into `letters/shard-0000i.jsonl` and the task's throughput goes to `stats/shard-0000i.json`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.letters.generate import LetterWriter
from clinsynth.sampling.recipe import Recipe


def _backend(cfg: dict[str, Any], ctx: StageContext) -> Any:
    kind = (cfg.get("backend") or {}).get("kind", "template")
    if kind == "template":
        return None
    from clinsynth.llm.backends import make_backend

    return make_backend(
        dict(cfg["backend"]),
        dict(cfg.get("model") or {}),
        dict(cfg.get("sampling") or {}),
        cache_dir=ctx.stage_dir.parents[2] / "cache",  # runs/cache: tiny models built once per runs folder
        logger=ctx.logger,
    )


def shard_recipes(path: Path, shard: int, num_shards: int, batch_size: int = 4096) -> list[str]:
    """Recipes shard, shard+N, ... of the specs file (the order of ctx.items), streamed by batches."""
    out: list[str] = []
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["recipe"], batch_size=batch_size):
        col = batch.column(0)
        first = (shard - start) % num_shards
        out += col.slice(first).to_pylist()[::num_shards] if first < len(col) else []
        start += len(col)
    return out


@stage(
    "generate",
    needs=("sample",),
    # backend.kind, not backend: engine tuning (max_num_seqs, concurrency) does not change the letters' id
    reads=("letters", "backend.kind", "model", "sampling", "prompts", "seed"),
    array=True,
    version=1,
)
def run(cfg: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Letters for specs shard::shards; resumable at chunk granularity."""
    lc = dict(cfg.get("letters") or {})
    mode = lc.get("mode", "template")
    backend_kind = (cfg.get("backend") or {}).get("kind", "template")
    if mode == "template" and backend_kind != "template":
        ctx.logger.warning("letters=template ignores backend=%s", backend_kind)
    # only this shard's recipes in memory: at paper scale all of them are ~700 MB of JSON
    my_recipes = shard_recipes(
        ctx.input_dir("sample") / "specs" / "specs.parquet", ctx.shard, ctx.num_shards
    )
    mine = list(range(len(my_recipes)))
    chunk = max(1, int(lc.get("chunk", 256)))
    parts = ctx.stage_dir / "letters" / f"shard-{ctx.shard:05d}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(mine) + chunk - 1) // chunk
    todo = [c for c in range(n_chunks) if not (parts / f"chunk-{c:06d}.jsonl").exists()]
    if len(todo) < n_chunks:
        ctx.logger.info(
            "resuming shard %d: %d of %d chunk(s) already written", ctx.shard, n_chunks - len(todo), n_chunks
        )
    backend = _backend(cfg, ctx) if todo and mode != "template" else None
    writer = (
        LetterWriter(
            mode,
            seed=int(cfg.get("seed", 0)),
            backend=backend,
            prompts=cfg.get("prompts"),
            narrative_sections=lc.get("narrative_sections", ("anamnese", "epikrise")),
            max_tokens=int(lc.get("max_tokens", 512)),
        )
        if todo
        else None
    )
    t0 = time.perf_counter()
    letters = tokens_in = tokens_out = 0
    try:
        for k, c in enumerate(todo, 1):
            rows = mine[c * chunk : (c + 1) * chunk]
            recipes = [Recipe.from_json(my_recipes[i]) for i in rows]
            assert writer is not None
            records = writer.write(recipes)
            with atomic_open(parts / f"chunk-{c:06d}.jsonl", "wb") as fh:
                for rec in records:
                    fh.write(orjson.dumps(rec) + b"\n")
            letters += len(records)
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
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
    seconds = time.perf_counter() - t0
    # join the chunks in spec order; the parts folder goes only after the shard file is in place
    out = ctx.shard_path("letters", ".jsonl")
    n = 0
    with atomic_open(out, "wb") as fh:
        for c in range(n_chunks):
            data = (parts / f"chunk-{c:06d}.jsonl").read_bytes()
            n += data.count(b"\n")
            fh.write(data)
    if n != len(mine):
        raise RuntimeError(
            f"shard {ctx.shard}: {n} letters for {len(mine)} specs; delete {parts} and relaunch"
        )
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
    write_json(ctx.stage_dir / "stats" / f"shard-{ctx.shard:05d}.json", stats)
    shutil.rmtree(parts, ignore_errors=True)
    return stats
