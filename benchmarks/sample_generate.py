"""Sampler and template-letter throughput on one core, each beside a named baseline run the same way.

    python benchmarks/sample_generate.py [--patients 2000] [--runs DIR]

1. sampler: recipes + gold (validated) + JSON per second, over the smoke cohort's record set;
   baseline: reading the same record set patient by patient (iter_patients) without drawing.
2. template backend: LetterWriter("template") records (render + metadata + JSON line);
   baseline: a plain Jinja2 render loop of the same templates with the same contexts.
3. verification: letters checked against their recipes' gold per second (verify v2: spans, cues, codes,
   reverse check; v1, which only looked names up, did 548/s); baseline: the plain render loop. A second
   row runs the verify stage's worker pool on every CPU the machine gives (paper scale: 75k letters
   must verify in < 5 min in one job, i.e. >= 250 letters/s); the pass rate is printed beside it.
Prints throughput and peak Python memory (tracemalloc) of each, and each as a ratio to its baseline.
The cohort and record set are built first (cluster=debug) and are not timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from rich.console import Console
from rich.table import Table

from clinsynth.letters.generate import LetterWriter
from clinsynth.letters.render import environment, section_context, template_name
from clinsynth.letters.verify import verify
from clinsynth.records import iter_patients
from clinsynth.sampling.sampler import Sampler
from clinsynth.stages import verify as verify_stage
from launchers.plan import stage_config
from launchers.submit import launch


def measure(fn: Callable[[], int], repeat: int = 3) -> tuple[float, float]:
    """(items per second, best of `repeat`), then peak traced MB of one more run."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return best, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--runs", type=Path, default=None, help="reuse a runs folder (default: a temp folder)")
    args = ap.parse_args()
    all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else {0}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the issue asks
    console = Console(width=150)
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp) / "runs"
        console.print(f"building a cohort of {args.patients} patients and its record set (not timed) ...")
        result = launch(
            [
                "+experiment=smoke",
                "pipeline=[ingest]",
                "cluster=debug",
                "tracking=disabled",
                f"cohort.patients={args.patients}",
                f"paths.runs={runs}",
            ]
        )
        records_dir = result.plan.stage("ingest").folder.path / "records"
        patients = list(iter_patients(records_dir))
        sampler = Sampler(stage_config("sample").sample.sampler, seed=0)
        recipes = [r for rec in patients for r in sampler.recipes(rec)]

        def read_only() -> int:
            return sum(len(p.encounters) for p in iter_patients(records_dir))

        def sample() -> int:
            n = 0
            s = Sampler(stage_config("sample").sample.sampler, seed=0)
            for rec in iter_patients(records_dir):
                for r in s.recipes(rec):
                    r.gold().model_dump_json(exclude_none=True)
                    r.to_json()
                    n += 1
            return n

        env = environment()
        letter_tpl = env.get_template("letter.j2")
        section_tpls = {
            k: env.get_template(template_name(k)) for k in {s["key"] for r in recipes for s in r.sections}
        }
        contexts = [[(s, section_context(r, s)) for s in r.sections] for r in recipes]

        def plain_jinja() -> int:
            for r, ctxs in zip(recipes, contexts, strict=True):
                rendered = {s["key"]: section_tpls[s["key"]].render(c) for s, c in ctxs}
                letter_tpl.render(parts=[r.header.get("salutation", ""), *rendered.values()])
            return len(recipes)

        writer = LetterWriter("template")

        def template_backend() -> int:
            n = 0
            for i in range(0, len(recipes), 256):  # the generate stage's chunks
                for rec in writer.write(recipes[i : i + 256]):
                    orjson.dumps(rec)
                    n += 1
            return n

        records = writer.write(recipes)

        def verification() -> int:
            n = 0
            for r, rec in zip(recipes, records, strict=True):
                verify(r, rec["text"], untagged=rec.get("untagged") or (), noise=rec.get("noise") or ())
                n += 1
            return n

        items = [(r.spec_id, rec, r, r.to_json()) for r, rec in zip(recipes, records, strict=True)]

        def verification_pool() -> int:
            return sum(1 for _ in verify_stage.verdict_rows(items))

        rows: list[tuple[str, str, float, float, float, float]] = []
        base_read = measure(read_only)
        base_render = measure(plain_jinja)
        for name, unit, fn, base, base_name in (
            ("sampler", "specs/s", sample, base_read, "iter_patients (stays/s)"),
            ("template backend", "letters/s", template_backend, base_render, "plain Jinja2 render loop"),
            ("verification", "letters/s", verification, base_render, "plain Jinja2 render loop"),
        ):
            rate, peak = measure(fn)
            rows.append((name, f"{unit} vs {base_name}", rate, base[0], peak, base[1]))
        passed = sum(
            verify(r, rec["text"], untagged=rec.get("untagged") or (), noise=rec.get("noise") or ()).ok
            for r, rec in zip(recipes, records, strict=True)
        )
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, all_cpus)  # the pool row: every CPU, as the verify stage's job
        verify_stage.POOL_MIN_LETTERS = 0
        t0 = time.perf_counter()
        verification_pool()
        pool_rate = len(items) / (time.perf_counter() - t0)
        console.print(
            f"verification: {passed}/{len(records)} template letters pass; verify stage pool on "
            f"{len(all_cpus)} CPUs: {pool_rate:,.0f} letters/s "
            f"(75k letters in {75_000 / pool_rate / 60:.1f} min)"
        )
    table = Table(title=f"sample + generate on 1 core: {len(recipes)} specs from {args.patients} patients")
    for col in (
        "what",
        "unit / baseline",
        "rate",
        "baseline",
        "ratio",
        "peak MB",
        "baseline MB",
        "mem ratio",
    ):
        table.add_column(col)
    for name, unit, rate, base_rate, peak, base_peak in rows:
        table.add_row(
            name,
            unit,
            f"{rate:,.0f}",
            f"{base_rate:,.0f}",
            f"{rate / base_rate:.2f}x",
            f"{peak:.1f}",
            f"{base_peak:.1f}",
            f"{peak / base_peak:.2f}x" if base_peak >= 1 else "n/a (baseline < 1 MB)",
        )
    console.print(table)


if __name__ == "__main__":
    main()
