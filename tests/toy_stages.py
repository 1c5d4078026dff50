"""Test-only stages that exercise the launcher: an array stage and a multi-rank reducer.

Registered through `stage_modules=[tests.toy_stages]`; nothing in the product uses them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from clinsynth.core.atomic import read_jsonl, write_json, write_jsonl
from clinsynth.core.config import StageConfig, identity, operational, secret_env
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage


class ToySection(StageConfig):
    # test-only stages may carry defaults; product stages take theirs from conf/
    n_items: int = identity(40, ge=0)
    sleep_s: float = operational(0.0, why="pacing for tests that act mid-run")
    fail_shards: list[int] = operational([], why="planted transient failures")
    fail_while_exists: str | None = operational(None, why="the planted failure lasts while this file exists")
    # secret-looking keys: saved configs must redact them
    api_key: str | None = operational(None, why="a planted secret")
    api_token: str | None = operational(None, why="a planted secret")
    server_token: str | None = operational(None, why="a planted secret")
    # a stage that is careless with a real secret: prints, logs, returns and raises its value
    leak_env: str | None = secret_env(None, why="names the variable whose value the stage leaks")
    leak_fail: bool = operational(False, why="raise an error that quotes the secret")


class ToyRowsConfig(StageConfig):
    toy: ToySection = ToySection()


class ToySumSection(StageConfig):
    scale: float = identity(1.0)


class ToySumConfig(StageConfig):
    toy_sum: ToySumSection = ToySumSection()


@stage("toy_rows", config=ToyRowsConfig, array=True)
def toy_rows(cfg: ToyRowsConfig, ctx: StageContext) -> dict[str, Any]:
    """Rows i::N of range(n_items), one shard file per task, written atomically."""
    opts = cfg.toy
    # a transient failure: planted while the flag file exists
    flag = opts.fail_while_exists
    if ctx.shard in opts.fail_shards and flag and Path(flag).exists():
        raise ValueError(f"planted failure in shard {ctx.shard}")
    leaked = os.environ.get(opts.leak_env, "") if opts.leak_env else ""
    if leaked:
        print(f"stdout: the token is {leaked}")
        print(f"stderr: the token is {leaked}", file=sys.stderr)
        ctx.logger.warning("log: the token is %s", leaked)
        if opts.leak_fail:
            raise ValueError(f"server said: bad token {leaked}")
    rows = []
    mine = ctx.items(range(opts.n_items))
    for item in mine:
        time.sleep(opts.sleep_s)
        rows.append({"item": item, "value": item * item})
        ctx.progress(len(rows), len(mine), "items")
    n = write_jsonl(ctx.shard_path("rows", ".jsonl"), rows)
    return {"rows": n, **({"note": f"used {leaked}"} if leaked else {})}


@stage("toy_sum", needs=("toy_rows",), config=ToySumConfig)
def toy_sum(cfg: ToySumConfig, ctx: StageContext) -> dict[str, Any]:
    """Every rank reduces its share of all shard rows; rank 0 writes the merged result."""
    rows = sorted(
        (
            r
            for p in sorted((ctx.input_dir("toy_rows") / "rows").glob("shard-*.jsonl"))
            for r in read_jsonl(p)
        ),
        key=lambda r: r["item"],
    )
    mine = rows[ctx.rank :: ctx.world_size]
    ctx.progress(len(mine), len(mine), "rows")  # every rank calls; rank 0 reports for the job
    local = [float(sum(r["value"] for r in mine)), float(len(mine))]
    if ctx.world_size > 1:
        import torch
        import torch.distributed as dist

        ctx.init_distributed("gloo")
        t = torch.tensor(local, dtype=torch.float64)
        dist.all_reduce(t)
        total = t.tolist()
        dist.barrier()
        dist.destroy_process_group()
    else:
        total = local
    if ctx.is_main:
        scale = cfg.toy_sum.scale
        write_jsonl(ctx.stage_dir / "merged.jsonl", rows)
        write_json(
            ctx.stage_dir / "summary.json",
            {
                "sum": total[0] * scale,
                "count": int(total[1]),
                "unique_items": len({r["item"] for r in rows}),
            },
        )
    return {"rank": ctx.rank, "world_size": ctx.world_size}
