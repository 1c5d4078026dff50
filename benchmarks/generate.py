# python benchmarks/generate.py                 # CPU: tiny model, hybrid letters of 40 patients, ~2-3 min
# python benchmarks/generate.py --model smollm2_packaged --patients 12 --max-tokens 96
"""Tokens/s of the generate stage (through the launcher, one vLLM engine per task) beside a bare
`vllm.LLM.generate` loop on the same prompts, in the same run.

The stage writes hybrid letters (`+experiment=smoke_hybrid`: template sections + Anamnese/Epikrise
from the LLM) for the specs of a small synthetic cohort. The bare side rebuilds exactly the requests
the stage sent (clinsynth's LetterWriter with a recording backend: same messages, per-section seeds,
max_tokens) and runs them through one `vllm.LLM.generate` call with the same sampling and the same
engine arguments (clinsynth.llm.backends.vllm_engine_kwargs).

What each side's seconds count (engine start and shutdown are in neither):
- stage: its stats' `seconds`, from before the first chunk's prompts to after the last chunk's
  atomic write: prompt rendering, chat templating and tokenisation (inside `LLM.chat`), the engine,
  letter rendering, chunk writes, progress/tracker calls. Template parsing runs while the engine
  starts (clinsynth.letters.generate.compile_templates), as in every task.
- bare: the `generate` call only; the prompts are templated and tokenised before the clock starts
  (so the bare side is, if anything, favoured by that ~0.1 s).
Also printed: wall time with the engine start, how many sections both sides wrote alike (same
seeds), the peak RSS of each side's process tree, and the CPU seconds other processes on the
machine took during each side's window (benchmarks/machine_load.py): on 2 shared cores a test run
elsewhere during one side moves the ratio by 30 % or more, so rerun when they differ. Goal: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.extract import PeakRss  # noqa: E402  (after the sys.path line)
from benchmarks.machine_load import MachineLoad  # noqa: E402


def overrides(args: argparse.Namespace, runs: Path | None) -> list[str]:
    out = [
        "+experiment=smoke_hybrid",
        "pipeline=[generate]",
        f"generate/model={args.model}",
        f"cohort.patients={args.patients}",
        f"generate.letters.max_tokens={args.max_tokens}",
        f"generate.letters.chunk={args.chunk}",
        "cluster=local",
        "tracking=disabled",
        *args.override,
    ]
    return out + ([f"paths.runs={runs}"] if runs is not None else [])


class Recorder:
    """A backend that only records the requests LetterWriter builds."""

    name = "recorder"
    model = "recorder"
    sampling: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def generate(self, requests: Any) -> list[Any]:
        from clinsynth.llm.backends import GenResult

        self.requests += list(requests)
        return [GenResult(r.key, "", 0, 0, "stop", 0.0) for r in requests]


def stage_requests(args: argparse.Namespace, sample_dir: Path) -> tuple[Any, list[Any]]:
    """The generate config and every request the stage sent, in its chunks (shard 0 of 1)."""
    from clinsynth.artifacts.specs import shard_recipes
    from clinsynth.letters.generate import LetterWriter
    from clinsynth.sampling.recipe import Recipe
    from launchers.plan import stage_config

    cfg = stage_config("generate", overrides(args, None))
    gc = cfg.generate
    rec = Recorder()
    writer = LetterWriter(
        gc.letters.mode,
        seed=cfg.seed,
        backend=rec,
        prompts=gc.prompts.model_dump(),
        narrative_sections=tuple(gc.letters.narrative_sections),
        max_tokens=gc.letters.max_tokens or 0,
    )
    recipes = [Recipe.from_json(r) for r in shard_recipes(sample_dir, 0, 1)]
    for i in range(0, len(recipes), gc.letters.chunk):
        writer.write(recipes[i : i + gc.letters.chunk])
    return cfg, rec.requests


def main() -> None:
    with MachineLoad() as load:
        _main(load)


def _main(load: MachineLoad) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="conf/generate/model preset")
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--runs", type=Path, default=None)
    ap.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("CLINSYNTH_MODEL_CACHE", str(Path.home() / ".cache" / "clinsynth-test-models"))
    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-generate-"))

    from clinsynth.core.atomic import read_json, read_jsonl
    from clinsynth.llm.backends import normalize_sampling, resolve_model_path, vllm_engine_kwargs
    from launchers.submit import launch

    t0 = time.perf_counter()
    with PeakRss() as stage_mem:
        result = launch(overrides(args, runs))
    stage_wall = time.perf_counter() - t0
    gen_dir = result.plan.stage("generate").folder.path
    stats = [read_json(p) for p in sorted((gen_dir / "stats").glob("shard-*.json"))]
    if len(stats) != 1:
        raise SystemExit(f"expected one generate task (resources/generate=cpu_llm), found {len(stats)}")
    stage = stats[0]
    progress = read_json(gen_dir / "progress" / "00000.json")  # started_at, updated_at: the stage's window
    stage_other = load.other_cpu_s(progress["started_at"], progress["updated_at"])
    letters = {r["spec_id"]: r for r in read_jsonl(gen_dir / "letters" / "shard-00000.jsonl")}

    cfg, requests = stage_requests(args, result.plan.stage("sample").folder.path)
    gc = cfg.generate
    model_cfg = gc.model.model_dump()
    kwargs = vllm_engine_kwargs(
        resolve_model_path(model_cfg, runs / "cache"), gc.backend.model_dump(), model_cfg
    )

    import vllm
    from vllm.inputs import TokensPrompt

    s = normalize_sampling(gc.sampling.model_dump())
    t1 = time.perf_counter()
    with PeakRss() as bare_mem:
        llm = vllm.LLM(**kwargs)
        start = time.perf_counter() - t1
        tok = llm.get_tokenizer()
        template = model_cfg.get("chat_template")
        prompts = [
            TokensPrompt(
                prompt_token_ids=list(
                    tok.apply_chat_template(
                        r.messages,
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=False,
                        **({"chat_template": template} if template else {}),
                    )
                )
            )
            for r in requests
        ]
        params = [
            vllm.SamplingParams(
                temperature=s["temperature"],
                top_p=s["top_p"],
                top_k=int(s["top_k"] or 0),
                repetition_penalty=float(s["repetition_penalty"] or 1.0),
                max_tokens=r.max_tokens,
                seed=r.seed,
            )
            for r in requests
        ]
        t2, wall2 = time.perf_counter(), time.time()
        outs = llm.generate(prompts, params, use_tqdm=False)
        gen_s = time.perf_counter() - t2
        bare_other = load.other_cpu_s(wall2, wall2 + gen_s)
        llm.llm_engine.engine_core.shutdown()
    bare_wall = time.perf_counter() - t1
    bare_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    same = sum(
        bool(o.outputs[0].text.strip()) and o.outputs[0].text.strip() in letters[r.key.split("/")[0]]["text"]
        for r, o in zip(requests, outs, strict=True)
    )

    stage_tps = stage["tokens_out"] / stage["seconds"]
    bare_tps = bare_tokens / gen_s
    print(
        f"\ngenerate: {len(letters)} hybrid letters, {len(requests)} LLM sections, {args.model}, "
        f"max_tokens {args.max_tokens}, chunk {args.chunk}"
    )
    print(f"engine: {kwargs}")
    print(
        f"{'':28}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'engine start':>14}{'wall':>8}{'peak RSS':>10}"
    )
    print(
        f"{'stage (launcher, 1 task)':28}{stage['tokens_out']:>8}{stage['seconds']:>9.1f}{stage_tps:>10.1f}"
        f"{'-':>14}{stage_wall:>7.1f}s{stage_mem.gb:>8.2f}GB"
    )
    print(
        f"{'bare vllm.LLM.generate':28}{bare_tokens:>8}{gen_s:>9.1f}{bare_tps:>10.1f}"
        f"{start:>13.1f}s{bare_wall:>7.1f}s{bare_mem.gb:>8.2f}GB"
    )
    print(f"ratio stage/bare tokens/s: {stage_tps / bare_tps:.3f}   (goal >= 0.95)")
    print(f"sections written alike (same seeds): {same}/{len(requests)}")
    cores = os.cpu_count() or 1
    shares = {
        "stage": stage_other / (stage["seconds"] * cores),
        "bare": bare_other / (gen_s * cores),
    }
    print(
        f"other processes' CPU in each window: stage {stage_other:.1f} cpu-s ({shares['stage']:.0%} of "
        f"{cores} cores), bare {bare_other:.1f} cpu-s ({shares['bare']:.0%})"
    )
    if max(shares.values()) > 0.10:
        print("  the machine was busy during a side: the ratio measures that load too; rerun when quiet")


if __name__ == "__main__":  # vLLM spawns processes
    main()
