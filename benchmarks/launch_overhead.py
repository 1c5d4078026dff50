"""What the launcher costs on top of Hydra, and what crash-safe markers cost over plain writes.

    python benchmarks/launch_overhead.py [--shards 2000]

1. relaunch of a finished run whose array stage has N shards (plan, folder scan, skip)
   vs. the baseline: a bare Hydra compose of the same config;
2. atomic completion markers (temp file + fsync + rename) vs. the baseline: plain
   open/write/close of the same files.
Prints throughput, wall time and peak RSS, and each as a ratio to its baseline.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

from clinsynth.core.atomic import touch_marker
from launchers.config import compose_config
from launchers.submit import launch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        overrides = [
            "name=bench",
            "pipeline=[toy_rows]",
            "stage_modules=[tests.toy_stages]",
            "cluster=debug",
            "tracking=disabled",
            f"paths.runs={runs}",
            f"+toy.n_items={args.shards}",
            f"+resources.toy_rows.shards={args.shards}",
        ]
        quiet = Console(file=io.StringIO())
        t0 = time.perf_counter()
        launch(overrides, console=quiet)  # first launch: runs every shard in-process
        first = time.perf_counter() - t0
        base = timed(lambda: compose_config(overrides))
        relaunch = timed(lambda: launch(overrides, console=quiet))
        print(
            f"first launch of {args.shards} debug shards: {first:.2f}s ({args.shards / first:.0f} shards/s)"
        )
        print(f"baseline  hydra compose:          {base * 1e3:8.1f} ms")
        print(
            f"relaunch  (plan + scan + skip):   {relaunch * 1e3:8.1f} ms  "
            f"ratio {relaunch / base:.2f}x baseline, {args.shards / relaunch:.0f} shards checked/s"
        )

        n = 2000
        d = Path(tmp) / "markers"
        d.mkdir()

        def plain() -> None:
            for i in range(n):
                with open(d / f"p{i:05d}", "w") as fh:
                    fh.write("")

        def atomic() -> None:
            for i in range(n):
                touch_marker(d / f"a{i:05d}")

        tb, ta = timed(plain, 1), timed(atomic, 1)
        print(f"baseline  plain marker writes:    {n / tb:8.0f} markers/s")
        print(
            f"atomic    temp+fsync+rename:      {n / ta:8.0f} markers/s  ratio {tb / ta:.2f}x baseline speed"
        )
    print(f"peak RSS: {peak_rss_mb():.0f} MB (pid {os.getpid()})")


if __name__ == "__main__":
    main()
