"""Test-only stages that checkpoint, stop when asked and resume (tests/integration/test_requeue.py).

Registered through `stage_modules=[tests.checkpoint_stages]`; nothing in the product uses them.

Each does `ckpt.steps` slow steps that fold a running value (`acc`) into one row per step
(kept as [step, acc] pairs, which a JSON checkpoint restores exactly),
asks `ctx.should_stop()` before every step, saves its step, `acc` and the rows so far to
`ctx.checkpoint_dir` when told to stop, and resumes from there. The rows are a pure function
of the config, so an interrupted run must write exactly what an uninterrupted one writes.
Besides the output they record, for the tests only, where each attempt started
(`history/unit-NNNNN.jsonl`) and how far the current one got (`progress/unit-NNNNN.json`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import read_jsonl, write_json, write_jsonl
from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage

MODULUS = 1_000_003


class CkptSection(StageConfig):
    steps: int = identity(12, ge=1)
    seed: int = identity(7)
    step_s: float = operational(0.5, why="test pacing: how long each step sleeps; not part of the result")
    hold_at: int = operational(
        -1, why="test control: at this step wait while hold_file exists (a job that would run on)"
    )
    hold_file: str | None = operational(None, why="test control: see hold_at")


class CkptConfig(StageConfig):
    ckpt: CkptSection


class AfterConfig(StageConfig):
    pass


def _unit(ctx: StageContext) -> int:
    return ctx.shard if ctx.num_shards > 1 else ctx.rank


def _note_start(ctx: StageContext, from_step: int) -> None:
    """One line per attempt (append; test bookkeeping, not output)."""
    path = ctx.stage_dir / "history" / f"unit-{_unit(ctx):05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "attempt": ctx.attempt,
        "from_step": from_step,
        "resuming": ctx.resuming,
        "unit_was_complete": ctx.unit_was_complete,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
    }
    with open(path, "ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")


def _progress(ctx: StageContext, step: int) -> None:
    write_json(
        ctx.stage_dir / "progress" / f"unit-{_unit(ctx):05d}.json", {"attempt": ctx.attempt, "step": step}
    )


def _hold(ctx: StageContext, opts: CkptSection, step: int) -> None:
    """Single-rank only: wait at `hold_at` while `hold_file` exists, until asked to stop."""
    if step != opts.hold_at or not opts.hold_file:
        return
    while Path(opts.hold_file).exists() and not ctx.should_stop():
        time.sleep(0.1)


def _fold(acc: int, step: int, contribution: int) -> int:
    return (acc * 31 + contribution * (step + 1) + 17) % MODULUS


@stage("ckpt_array", config=CkptConfig, array=True)
def ckpt_array(cfg: CkptConfig, ctx: StageContext) -> dict[str, Any]:
    """Steps 0..steps-1 of this shard, resumable from its checkpoint."""
    opts = cfg.ckpt
    state = ctx.load_checkpoint() or {"step": 0, "acc": opts.seed + ctx.shard, "rows": []}
    step, acc, rows = int(state["step"]), int(state["acc"]), list(state["rows"])
    _note_start(ctx, step)
    while step < opts.steps:
        _hold(ctx, opts, step)
        if ctx.should_stop():
            ctx.save_checkpoint({"step": step, "acc": acc, "rows": rows})
            ctx.requeue()
        time.sleep(opts.step_s)
        acc = _fold(acc, step, ctx.shard + 1)
        rows.append([step, acc])
        step += 1
        _progress(ctx, step)
    write_jsonl(ctx.shard_path("out", ".jsonl"), ({"shard": ctx.shard, "step": s, "acc": a} for s, a in rows))
    return {"rows": len(rows)}


@stage("ckpt_ranks", config=CkptConfig)
def ckpt_ranks(cfg: CkptConfig, ctx: StageContext) -> dict[str, Any]:
    """Every step all ranks all_reduce their contribution (gloo); rank 0 keeps the rows."""
    import torch
    import torch.distributed as dist

    opts = cfg.ckpt
    ctx.init_distributed("gloo")
    state = ctx.load_checkpoint() or {"step": 0, "acc": opts.seed, "rows": []}
    step, acc, rows = int(state["step"]), int(state["acc"]), list(state["rows"])
    _note_start(ctx, step)
    while step < opts.steps:
        if ctx.should_stop():  # collective: every rank stops at the same step
            ctx.save_checkpoint({"step": step, "acc": acc, "rows": rows})  # rank 0 writes, barrier
            ctx.requeue()
        time.sleep(opts.step_s)
        t = torch.tensor([ctx.rank + 1], dtype=torch.int64)
        dist.all_reduce(t)
        acc = _fold(acc, step, int(t.item()))
        rows.append([step, acc])
        step += 1
        if ctx.is_main:
            _progress(ctx, step)
    if ctx.is_main:
        write_jsonl(
            ctx.stage_dir / "out" / "ranks.jsonl",
            ({"step": s, "acc": a, "world_size": ctx.world_size} for s, a in rows),
        )
    dist.barrier()
    dist.destroy_process_group()
    return {"rows": len(rows), "rank": ctx.rank}


@stage("ckpt_after", needs=("ckpt_array",), config=AfterConfig)
def ckpt_after(cfg: AfterConfig, ctx: StageContext) -> dict[str, Any]:
    """Waits on ckpt_array (afterok) and counts its rows."""
    n = sum(
        1 for p in sorted((ctx.input_dir("ckpt_array") / "out").glob("shard-*.jsonl")) for _ in read_jsonl(p)
    )
    write_json(ctx.stage_dir / "count.json", {"rows": n})
    return {"rows": n}
