"""Issue 10's letter acceptance numbers over a template run, each beside its target.

    python benchmarks/letters_acceptance.py [--letters 2000] [--runs DIR] [--seed N]

Runs cohort -> ingest -> sample -> generate (template) -> verify in-process (cluster=debug) with
enough patients for about `--letters` letters, then prints the verify stage's data report
(letters_report.json): every acceptance number with its target, and the report's counts beside
the development letters. It also times the report's counting alone over the run's letters (the
verify stage runs it on every letter; paper scale is 75,000).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from rich.console import Console
from rich.table import Table

from clinsynth.artifacts.letters import letter_shards, read_letters
from clinsynth.artifacts.specs import shard_recipes
from clinsynth.artifacts.verdicts import read_verdicts
from clinsynth.letters.report import (
    FRAMES_ALL,
    FRAMES_STRIDE,
    REPORT_JSON,
    REPORT_MD,
    LettersReport,
    load_dev_stats,
)
from clinsynth.sampling.recipe import Recipe
from launchers.submit import launch

STAYS_PER_PATIENT = 2
#: letters per patient a smoke cohort yields with 2 stays drawn (some patients have one stay)
LETTERS_PER_PATIENT = 1.9


def report_throughput(sample_dir: Path, gen_dir: Path, verify_dir: Path) -> tuple[int, float, float]:
    """(letters, CPU seconds framing every letter, CPU seconds framing none) of LettersReport over
    the run's letters, fed as the verify stage feeds it: recipe, text and the verdict row with the
    verifier's spans (so no binding is timed here). CPU time: the machine may be shared."""
    verdicts = read_verdicts(verify_dir)
    triples = []
    for shard, n, path in letter_shards(gen_dir):
        recipes = shard_recipes(sample_dir, shard, n)
        for raw, letter in zip(recipes, read_letters(path), strict=True):
            verdict = next(verdicts)
            assert verdict["spec_id"] == letter["spec_id"], "verdicts out of the letters' order"
            triples.append((Recipe.from_json(raw), letter["text"], verdict))
    seconds = []
    for acc in (LettersReport(), LettersReport(frames_all=0, frames_stride=len(triples) + 1)):
        t0 = time.process_time()
        for recipe, text, verdict in triples:
            acc.add(recipe, text, verdict)
        seconds.append(time.process_time() - t0)
    return len(triples), seconds[0], seconds[1]


def projected(n: int, framed_s: float, plain_s: float, letters: int = 75_000) -> float:
    """CPU seconds of the report over `letters`: FRAMES_ALL framed, then every FRAMES_STRIDE-th
    (the second pass frames the first letter only: counted as plain)."""
    framed = min(letters, FRAMES_ALL) + max(0, letters - FRAMES_ALL) // FRAMES_STRIDE
    return framed * framed_s / n + (letters - framed) * plain_s / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--letters", type=int, default=2000, help="at least about this many letters")
    ap.add_argument("--runs", type=Path, default=None, help="runs folder (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=None, help="the run's seed (default: the config's)")
    args = ap.parse_args()
    console = Console(width=160)
    patients = max(1, math.ceil(args.letters / LETTERS_PER_PATIENT))
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs or Path(tmp) / "runs"
        console.print(f"template run: {patients} patients, {STAYS_PER_PATIENT} stays each -> verify ...")
        t0 = time.perf_counter()
        result = launch(
            [
                "+experiment=smoke",
                "cluster=debug",
                "tracking=disabled",
                f"cohort.patients={patients}",
                "sample/sampler=default",  # the letters measured against the development set's style
                f"sample.sampler.stays_per_patient={STAYS_PER_PATIENT}",
                f"paths.runs={runs}",
                *([f"seed={args.seed}"] if args.seed is not None else []),
            ]
        )
        console.print(f"pipeline: {time.perf_counter() - t0:.0f} s")
        verify_dir = result.plan.stage("verify").folder.path
        path = verify_dir / REPORT_JSON
        if not path.is_file():
            raise SystemExit(f"{path}: no letters report; does the verify stage write it?")
        report = orjson.loads(path.read_bytes())
        n, framed_s, plain_s = report_throughput(
            result.plan.stage("sample").folder.path, result.plan.stage("generate").folder.path, verify_dir
        )
        md = (verify_dir / REPORT_MD).read_text()
    table = Table(title=f"issue 10 acceptance over {report['letters']} template letters")
    for col in ("check", "value", "target", "met"):
        table.add_column(col)
    for row in report["acceptance"]:
        met = {True: "yes", False: "NO", None: "not measurable"}[row["met"]]
        value = f"{row['value']}" + (f" ({row['unchecked']} unchecked)" if row.get("unchecked") else "")
        table.add_row(row["check"], value, str(row["target"]), met)
    console.print(table)
    console.print(md)
    dev = load_dev_stats()
    console.print(f"development letters: {'found' if dev else 'MISSING'} ({dev and dev['letters']} letters)")
    console.print(
        f"report counting alone (CPU): {1000 * framed_s / n:.2f} ms per letter with frames and style "
        f"features, {1000 * plain_s / n:.2f} ms without; 75,000 letters ({FRAMES_ALL:,} framed, then "
        f"every {FRAMES_STRIDE}th): ~{projected(n, framed_s, plain_s):.0f} s"
    )


if __name__ == "__main__":
    main()
