"""`verify`: hold every letter to its recipe; write per-letter verdicts, rates and throughput.

Failing letters are kept (with reasons in verification.jsonl); use_for_training is the verdict
itself, and the dataset stage decides whether failing letters are trained on (dataset.include_failed),
so flipping that setting never reruns verification.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from clinsynth.artifacts.checks import upstream_error
from clinsynth.artifacts.letters import check_letters, read_letters, shard_stats
from clinsynth.artifacts.specs import check_shard_recipes, check_specs, shard_recipes, spec_ids
from clinsynth.artifacts.verdicts import REPORT, STATS, verdicts_path
from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.core.config import StageConfig
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.letters.report import LettersReport, write_report
from clinsynth.letters.verify import spans, summarize, verify
from clinsynth.sampling.recipe import Recipe


class VerifyConfig(StageConfig):
    """No keys: the rules are code (bump the stage version to rerun); what is trained on is the dataset
    stage's choice (dataset.include_failed)."""


@stage("verify", needs=("generate", "sample"), config=VerifyConfig, version=1, timing_records=(STATS,))
def run(cfg: VerifyConfig, ctx: StageContext) -> dict[str, Any]:
    """Verdict per letter (verification.jsonl), rates (verification_report.json), throughput (stats.json),
    the data report (letters_report.json, letters_report.md)."""
    gen_dir = ctx.input_dir("generate")
    sample_dir = ctx.input_dir("sample")
    # before anything is written: specs == the sample report, and every spec has exactly one
    # line in the letters (every generate shard's stats there, once, counting its share)
    total = check_specs(sample_dir, stage="verify")
    shards = check_letters(gen_dir, total, stage="verify")
    index = set(spec_ids(sample_dir))
    t0 = time.perf_counter()
    verdicts: list[dict[str, Any]] = []
    by_mode: dict[str, list[dict[str, Any]]] = {}
    seen: Counter[str] = Counter()
    letters_report = LettersReport()  # the data report (letters_report.json/.md), streamed
    # one pool for the whole stage: at paper scale the shards are small (75k letters in many array
    # tasks' shards), so a per-shard threshold would keep every shard on one core
    with _pool(total) as pool, atomic_open(verdicts_path(ctx.stage_dir), "wb") as fh:
        for shard, num_shards, path in shards:
            # shard i holds the letters of specs i::N in order: one shard's recipes in memory at a time
            recipes = shard_recipes(sample_dir, shard, num_shards)
            check_shard_recipes(sample_dir, recipes, total, shard, num_shards, stage="verify")
            items: list[tuple[str, dict[str, Any], Recipe, Any]] = []
            for line_no, letter in enumerate(read_letters(path), 1):
                sid = letter["spec_id"]
                seen[sid] += 1
                if sid not in index:
                    raise RuntimeError(
                        f"{path}:{line_no}: letter for unknown spec {sid!r}: the letters and "
                        "specs come from different sample runs"
                    )
                recipe = Recipe.from_json(recipes[line_no - 1]) if line_no <= len(recipes) else None
                if recipe is None or recipe.spec_id != sid:
                    raise RuntimeError(
                        f"{path}:{line_no}: letter {sid!r} is out of the order of its shard's "
                        "specs; delete the generate stage folder and relaunch"
                    )
                items.append((sid, letter, recipe, recipes[line_no - 1]))
            for (sid, letter, recipe, _), (ok, reasons, facts, fact_spans) in zip(
                items, verdict_rows(items, pool=pool), strict=True
            ):
                row = {
                    "spec_id": sid,
                    "split": letter.get("split"),
                    "mode": letter.get("mode"),
                    "ok": ok,
                    "reasons": reasons,
                    "facts": facts,
                    # fact id -> [start, end, sentence start, sentence end, section found, cue side]
                    "spans": fact_spans,
                    # failing letters stay here with their reasons; dataset.include_failed decides
                    "use_for_training": ok,
                }
                fh.write(orjson.dumps(row) + b"\n")
                letters_report.add(recipe, letter["text"], row)
                row.pop("facts")  # per-fact verdicts and spans stay in the file, not in memory
                row.pop("spans")
                verdicts.append(row)
                ctx.progress(len(verdicts), total, "letters")
                by_mode.setdefault(letter.get("mode") or "?", []).append(row)
        missing = [sid for sid in index if sid not in seen]
        duplicated = sorted(sid for sid, n in seen.items() if n > 1)
        if missing or duplicated:  # inside the block: no verdicts file
            raise upstream_error(
                "verify",
                "generate",
                gen_dir,
                f"letters per spec of {sample_dir}",
                "exactly one letter per spec",
                f"{len(missing)} spec(s) without a letter (e.g. {missing[:3]}), "
                f"{len(duplicated)} with more than one (e.g. {duplicated[:3]})",
            )
    seconds = time.perf_counter() - t0
    report = {
        **summarize(verdicts),
        "by_mode": {m: summarize(v) for m, v in sorted(by_mode.items())},
        "by_split": {
            s: summarize([v for v in verdicts if v["split"] == s])
            for s in sorted({v["split"] for v in verdicts})
        },
        "use_for_training": sum(v["use_for_training"] for v in verdicts),
        "excluded_from_training": sum(not v["use_for_training"] for v in verdicts),
    }
    # verify's own timing goes to the task record: a rerun's report is byte-identical (stats.json is
    # generate's throughput, a timing record: StageSpec.timing_records)
    ctx.timing(
        seconds=round(seconds, 3),
        letters_per_s=round(len(verdicts) / seconds, 1) if seconds else None,
    )
    write_json(ctx.stage_dir / REPORT, report)
    write_report(ctx.stage_dir, letters_report)
    stats = _throughput(gen_dir)
    stats["verification"] = {k: report[k] for k in ("letters", "passed", "pass_rate")}
    write_json(ctx.stage_dir / STATS, stats)
    ctx.tracker.log(
        {
            "verify/pass_rate": report["pass_rate"] or 0.0,
            "generate/letters_per_s": stats["letters_per_s"] or 0.0,
            "generate/tokens_out_per_s": stats["tokens_out_per_s"] or 0.0,
        }
    )
    ctx.logger.info(
        "%d letters, %d pass (%.1f%%)", report["letters"], report["passed"], 100 * (report["pass_rate"] or 0)
    )
    return {k: report[k] for k in ("letters", "passed", "pass_rate")}


#: below this many letters in a shard the verifier runs in this process (a pool's start costs ~1 s)
POOL_MIN_LETTERS = 2000


def _verify_one(
    item: tuple[Any, str, dict[str, Any]],
) -> tuple[bool, list[str], dict[str, str], dict[str, Any]]:
    recipe, text, kwargs = item
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_json(recipe)
    v = verify(recipe, text, **kwargs)
    return v.ok, v.reasons, v.facts, spans(v)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def _pool(letters: int) -> Iterator[Any]:
    """A pool on every CPU this job holds when there are enough letters to pay its start (else None)."""
    cpus = _cpus()
    if cpus < 2 or letters < POOL_MIN_LETTERS:
        yield None
        return
    # fork: a worker needs no re-import of the launcher's main module and starts in milliseconds
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(cpus, 16)) as pool:
        yield pool


def verdict_rows(
    items: list[tuple[str, dict[str, Any], Recipe, Any]], pool: Any = None
) -> Iterator[tuple[bool, list[str], dict[str, str], dict[str, Any]]]:
    """(ok, reasons, per-fact results, spans) per letter, in order; checked on `pool` (the stage's), else
    on a pool of its own for a large shard (the verifier is pure CPU: 75k letters in minutes need more
    than one core)."""

    def work(recipe: Any, letter: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
        kwargs = {
            "finish_reasons": letter.get("finish_reasons") or {},
            "llm_sections": letter.get("llm_sections") or (),
            "whole_letter_llm": letter.get("mode") == "llm",
            "untagged": letter.get("untagged") or (),
            "noise": letter.get("noise") or (),
        }
        return recipe, letter["text"], kwargs

    # the workers get the recipe's JSON (cheaper to send than the object) and parse it themselves
    if pool is not None:
        yield from pool.imap(_verify_one, (work(raw, letter) for _, letter, _, raw in items), chunksize=64)
        return
    with _pool(len(items)) as own:
        if own is None:
            yield from map(_verify_one, (work(r, letter) for _, letter, r, _ in items))
        else:
            yield from own.imap(_verify_one, (work(raw, letter) for _, letter, _, raw in items), chunksize=64)


def _throughput(gen_dir: Any) -> dict[str, Any]:
    shards = shard_stats(gen_dir)
    letters = sum(s["letters_generated"] for s in shards)
    seconds = sum(s["seconds"] for s in shards)
    tokens_out = sum(s["tokens_out"] for s in shards)
    return {
        "shards": shards,
        "letters": sum(s["specs"] for s in shards),
        "letters_generated": letters,
        "task_seconds": round(seconds, 3),
        # per task-second: what one engine delivers; the array runs its tasks in parallel
        "letters_per_s": round(letters / seconds, 2) if seconds else None,
        "tokens_out_per_s": round(tokens_out / seconds, 1) if seconds and tokens_out else None,
    }
