"""Paper scale through the real stages: cohort (array) -> ingest, against a naive validation baseline.

    python benchmarks/cohort_ingest.py                   # 41,175 patients, as in the study
    python benchmarks/cohort_ingest.py --patients 4000   # a quick look

Runs `python -m launch +experiment=paper_cohort cluster=local` in a temporary run folder
(cohort as --shards local processes, ingest with --workers validation processes) and
reads wall times, throughput and peak RSS from the stage folders. Baseline, measured in
the same run on a uniform sample of the same NDJSON lines: a plain loop of `json.loads`
+ fhir.resources (R4B) `model_validate` on one core. Ingest's own per-resource path
(fast validator and extraction plans, `ingest.process.Processor`) is fed the same sample
plus planted invalid variants, and must reject exactly the same lines.

Two ratios: wall-clock throughput against the baseline (the target, >= 10x with 2 workers
on 2 cores), and throughput per core used (ingest's CPU seconds, workers included, against
the baseline's) — the second hardly moves when another job takes a core, the first halves.
The load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console

TARGET_RATIO, TARGET_SECONDS, TARGET_RSS_MB = 10.0, 600.0, 2048.0


def baseline(lines: list[bytes]) -> tuple[float, float, set[int]]:
    """Resources per wall second and per CPU second of the naive loop, and the lines it rejects."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    rejected = set()
    t0, c0 = time.perf_counter(), time.process_time()
    for i, line in enumerate(lines):
        try:
            d = json.loads(line)
            get_fhir_model_class(d["resourceType"]).model_validate(d)
        except (ValidationError, ValueError, KeyError, TypeError):
            rejected.add(i)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(lines) / wall, len(lines) / cpu, rejected


def fast_rejections(lines: list[bytes]) -> set[int]:
    """The lines ingest's per-resource path (validator + plans) finds invalid or unparseable."""
    from clinsynth.ingest.options import Options
    from clinsynth.ingest.process import Processor
    from clinsynth.ingest.sources import Item

    p = Processor(Options(as_of="2100-01-01"))
    results = p.process([Item("sample.ndjson", i + 1, line) for i, line in enumerate(lines)])
    return {i for i, r in enumerate(results) if r.reason in ("malformed_json", "invalid_resource")}


def planted(lines: list[bytes], rng: random.Random, n: int) -> list[bytes]:
    """Invalid variants: unknown element, bad date, empty code, wrong type, broken JSON."""
    import orjson

    out = []
    for line in rng.sample(lines, n):
        d = orjson.loads(line)
        kind = rng.randrange(5)
        if kind == 0:
            d["colour"] = "blue"
        elif kind == 1:
            d["id"] = "a b"
        elif kind == 2:
            d["meta"] = [d.get("meta")]
        elif kind == 3:
            d["resourceType"] = d["resourceType"] + "x"
        else:
            out.append(orjson.dumps(d)[:-7])
            continue
        out.append(orjson.dumps(d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=41175)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=20000, help="lines for the baseline loop")
    args = ap.parse_args()

    from clinsynth.core.atomic import read_json
    from launchers.submit import launch

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "+experiment=paper_cohort",
            "cluster=local",
            "tracking=disabled",
            f"paths.runs={tmp}",
            f"cohort.patients={args.patients}",
            f"resources.cohort.shards={args.shards}",
            f"ingest.workers={args.workers}",
            "cluster.max_parallel_tasks=8",
        ]
        t0 = time.perf_counter()
        result = launch(overrides, console=Console(file=io.StringIO()))
        wall = time.perf_counter() - t0
        cohort, ingest = result.plan.stage("cohort").folder, result.plan.stage("ingest").folder
        rec_c = cohort.task_records()
        rec_i = ingest.task_records()[0]
        report = read_json(ingest.path / "ingest_report.json")
        n_res = report["resources_read"]
        cohort_wall = max(r["end"] for r in rec_c.values()) - min(r["start"] for r in rec_c.values())
        rss_c = max(r["peak_rss_mb"] for r in rec_c.values())
        rss_i = max(rec_i["peak_rss_mb"], rec_i["peak_rss_children_mb"])

        lines = []
        for f in sorted((cohort.path / "fhir").glob("*.ndjson")):
            lines += f.read_bytes().splitlines()
        rng = random.Random(0)
        sample = rng.sample(lines, min(args.sample, len(lines)))
        sample += planted(sample, rng, max(20, len(sample) // 100))
        rate, rate_cpu, rejected_base = baseline(sample)
        rejected_fast = fast_rejections(sample)

    ingest_rate = n_res / rec_i["seconds"]
    cpu = (rec_i.get("timing") or {}).get("cpu_seconds")  # timings live in the task record (ctx.timing)
    per_core = n_res / cpu if cpu else float("nan")
    rows = [
        ("cohort (generate)", cohort_wall, n_res / cohort_wall, rss_c),
        ("ingest", rec_i["seconds"], ingest_rate, rss_i),
        ("baseline json.loads + fhir.resources, 1 core", len(sample) / rate, rate, float("nan")),
    ]
    print(
        f"{args.patients} patients, {n_res:,} resources, "
        f"{args.shards} cohort shards, {args.workers} ingest workers"
    )
    print(f"{'':46s} {'seconds':>9s} {'resources/s':>12s} {'peak RSS MB':>12s}")
    for name, sec, r, rss in rows:
        print(f"{name:46s} {sec:9.1f} {r:12,.0f} {rss:12.0f}")
    print(f"ingest phases (s): {(rec_i.get('timing') or {}).get('phase_seconds')}")
    print(f"ingest throughput / baseline: {ingest_rate / rate:.1f}x (target >= {TARGET_RATIO:.0f}x)")
    print(
        f"per core used: ingest {per_core:,.0f} resources/CPU-s on {cpu or float('nan'):.1f} CPU-s "
        f"({(cpu or float('nan')) / rec_i['seconds']:.2f} cores busy), baseline {rate_cpu:,.0f}/CPU-s: "
        f"{per_core / rate_cpu:.1f}x"
    )
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f} "
        "on {} CPUs".format(*load_before, *os.getloadavg(), os.cpu_count())
    )
    print(f"both stages, wall: {wall:.0f} s (target < {TARGET_SECONDS:.0f} s on 2 cores)")
    print(f"peak RSS: cohort task {rss_c:.0f} MB, ingest {rss_i:.0f} MB (target < {TARGET_RSS_MB:.0f} MB)")
    same = rejected_base == rejected_fast
    print(f"same rejections on {len(sample):,} lines ({len(rejected_base)} invalid planted): {same}")
    print(
        f"quarantined by ingest: {report['resources_quarantined']}; this process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    checks = {
        "ratio": ingest_rate / rate >= TARGET_RATIO,
        "time": wall < TARGET_SECONDS,
        "memory": max(rss_c, rss_i) < TARGET_RSS_MB,
        "same_rejections": same,
    }
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()))


if __name__ == "__main__":
    main()
