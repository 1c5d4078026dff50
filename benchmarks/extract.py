# python benchmarks/extract.py                       # CPU: SmolLM2-135M one-shot, 8 letters, ~3-5 min
# python benchmarks/extract.py --letters 512 --max-tokens 1024 --model qwen3_8b --model-path /models/Qwen3-8B
"""Tokens/s of the extract stage (through the launcher, one vLLM engine per task) beside a bare
`vllm.LLM.generate` loop on the same prompts, in the same run.

Both sides do the same work: the same letters (synthetic ones written here, as external .txt
letters), the one-shot prompt with its worked example, greedy decoding with the same per-letter
seeds, guided decoding with the same bounded schema, the same engine arguments (the stage records
its own; the bare engine is started with exactly those). The stage side is measured from its stats:
completion tokens over its work time after the engine start (prompts, engine calls, parsing, chunk
writes); the bare side over its single generate call (prompts tokenised before the clock starts).
Also printed: wall time with the engine start, whether both sides wrote the same answers, and the
peak RSS of each side's process tree (benchmark process + task + engine processes, sampled).
Goal: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DIAGNOSES = [
    ("Mammakarzinom links", "C50.4", "Letrozol 2,5 mg 1-0-0-0", "CA 15-3 34 U/ml"),
    ("Adenokarzinom des Rektums", "C20", "Capecitabin 1000 mg/m² 1-0-1-0", "CEA 5,2 ng/ml"),
    ("Nichtkleinzelliges Bronchialkarzinom rechts", "C34.1", "Pembrolizumab 200 mg i.v.", "LDH 312 U/l"),
    ("Prostatakarzinom", "C61", "Bicalutamid 50 mg 1-0-0-0", "PSA 12,4 ng/ml"),
    ("Diffus großzelliges B-Zell-Lymphom", "C83.3", "Rituximab 375 mg/m² i.v.", "Hb 9,8 g/dl"),
    ("Magenkarzinom", "C16.2", "Oxaliplatin 85 mg/m² i.v.", "Leukozyten 3,1 /nl"),
]


def letter(i: int) -> str:
    """A short synthetic discharge letter (written here; no patient, no corpus text)."""
    dx, code, drug, lab = DIAGNOSES[i % len(DIAGNOSES)]
    day = 1 + (i * 5) % 25
    return (
        f"Entlassungsbrief\n\nSehr geehrte Kollegen,\n\nwir berichten über unseren Patienten Nr. {1000 + i}, "
        f"der sich vom {day:02d}.04.2025 bis {day + 3:02d}.04.2025 in stationärer Behandlung befand.\n\n"
        f"Diagnosen:\n- {dx} ({code}), ED 0{1 + i % 9}/2024\n- Arterielle Hypertonie\n"
        "- Kein Anhalt für Fernmetastasen\n\n"
        f"Verlauf:\nAufnahme zur Fortführung der Therapie. Laborchemisch {lab}. Die Therapie mit {drug} "
        "wurde gut vertragen.\n\nMedikation bei Entlassung:\nRamipril 5 mg 1-0-0-0\n"
        "Pantoprazol 40 mg 1-0-0-0\n"
    )


class PeakRss:
    """Peak resident memory of this process and all its descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        import psutil  # type: ignore[import-untyped]

        self._psutil = psutil
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = self._psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 2**30


def extract_overrides(args: argparse.Namespace, folder: Path, runs: Path) -> list[str]:
    """The one config both sides run (the bare side reads its sampling, schema and prompt from it)."""
    return [
        "pipeline=[extract]",
        "extract/extractor=oneshot",
        f"extract/model={args.model}",
        "extract.test_letters=false",
        "extract.dev_letters=false",
        f"extract.letters={folder}",
        f"extract.max_tokens={args.max_tokens}",
        f"extract.chunk={args.letters}",
        "resources/extract=cpu_llm",
        "cluster=local",
        "tracking=disabled",
        f"paths.runs={runs}",
        *([f"extract.model.path={args.model_path}"] if args.model_path else []),
        *args.override,
    ]


def run_stage(
    args: argparse.Namespace, folder: Path, runs: Path
) -> tuple[dict[str, Any], Path, float, float]:
    from clinsynth.extraction.store import read_stats
    from launchers.submit import launch

    overrides = extract_overrides(args, folder, runs)
    t0 = time.perf_counter()
    with PeakRss() as mem:
        result = launch(overrides)
    wall = time.perf_counter() - t0
    stage_dir = result.plan.stage("extract").folder.path
    (stats,) = read_stats(stage_dir)
    return stats, stage_dir, wall, mem.gb


def run_bare(
    stats: dict[str, Any], stage_dir: Path, folder: Path, runs: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same prompts through a plain vllm.LLM.generate call (nothing of clinsynth in the loop)."""
    import vllm
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    from clinsynth.artifacts.predictions import read_predictions
    from clinsynth.extraction.documents import documents
    from clinsynth.extraction.guided import decoding_schema
    from clinsynth.extraction.llm import doc_seed
    from clinsynth.extraction.prompts import oneshot_messages
    from launchers.plan import stage_config

    cfg = stage_config("extract", extract_overrides(args, folder, runs))
    ec = cfg.extract
    _, docs = documents(sample_dir=None, gen_dir=None, dev_letters=False, letters=str(folder))
    schema = decoding_schema(ec.guided.max_items, ec.guided.max_string)
    from clinsynth.llm.backends import _vllm_on_cpu, use_every_cpu_for_vllm

    if _vllm_on_cpu():
        use_every_cpu_for_vllm()  # the stage's engine got the same thread environment with its arguments
    t0 = time.perf_counter()
    with PeakRss() as mem:
        llm = vllm.LLM(**stats["engine_args"])
        start = time.perf_counter() - t0
        tok = llm.get_tokenizer()
        s = ec.sampling
        prompts, params = [], []
        for d in docs:
            msgs = oneshot_messages(d.text, schema_in_prompt=ec.extractor.schema_in_prompt)
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
            prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
            params.append(
                vllm.SamplingParams(
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=int(s.top_k or 0),
                    repetition_penalty=float(s.repetition_penalty or 1.0),
                    max_tokens=ec.max_tokens,
                    seed=doc_seed(cfg.seed, d.doc),
                    structured_outputs=StructuredOutputsParams(json=schema),
                )
            )
        t1 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        gen_s = time.perf_counter() - t1
        llm.llm_engine.engine_core.shutdown()
    wall = time.perf_counter() - t0
    stage_raw = {p["doc"]: p["raw"] for p in read_predictions(stage_dir)}
    stage_prompt = {p["doc"]: (p["tokens"] or {}).get("prompt") for p in read_predictions(stage_dir)}
    same = sum(stage_raw.get(d.doc) == o.outputs[0].text for d, o in zip(docs, outs, strict=True))
    same_prompt = sum(
        stage_prompt.get(d.doc) == len(p["prompt_token_ids"]) for d, p in zip(docs, prompts, strict=True)
    )
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "tokens": tokens,
        "gen_s": gen_s,
        "start_s": start,
        "wall": wall,
        "peak_gb": mem.gb,
        "same": same,
        "same_prompt": same_prompt,
        "n": len(docs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m", help="conf/extract/model preset (one-shot)")
    ap.add_argument("--model-path", default=None, help="local folder for pretrained presets")
    ap.add_argument("--letters", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--runs", type=Path, default=None, help="runs folder (default: a temp folder)")
    ap.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("CLINSYNTH_MODEL_CACHE", str(Path.home() / ".cache" / "clinsynth-test-models"))
    base = args.runs or Path(tempfile.mkdtemp(prefix="bench-extract-"))
    folder = base / "letters"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.letters):
        (folder / f"letter-{i:04d}.txt").write_text(letter(i), encoding="utf-8")

    stats, stage_dir, stage_wall, stage_mem = run_stage(args, folder, base / "runs")
    bare = run_bare(stats, stage_dir, folder, base / "runs", args)

    stage_tps = stats["completion_tokens"] / stats["work_s"]
    bare_tps = bare["tokens"] / bare["gen_s"]
    print(
        f"\nextract: {args.letters} letters, one-shot {args.model}, guided, greedy, "
        f"max_tokens {args.max_tokens}"
    )
    print(f"engine: {stats['engine_args']}")
    print(
        f"{'':28}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'engine start':>14}{'wall':>8}{'peak RSS':>10}"
    )
    print(
        f"{'stage (launcher, 1 task)':28}{stats['completion_tokens']:>8}{stats['work_s']:>9.1f}"
        f"{stage_tps:>10.1f}"
        f"{stats['engine_start_s']:>13.1f}s{stage_wall:>7.1f}s{stage_mem:>8.2f}GB"
    )
    print(
        f"{'bare vllm.LLM.generate':28}{bare['tokens']:>8}{bare['gen_s']:>9.1f}{bare_tps:>10.1f}"
        f"{bare['start_s']:>13.1f}s{bare['wall']:>7.1f}s{bare['peak_gb']:>8.2f}GB"
    )
    print(f"ratio stage/bare tokens/s: {stage_tps / bare_tps:.3f}   (goal >= 0.95)")
    print(f"same answers: {bare['same']}/{bare['n']}, same prompt tokens: {bare['same_prompt']}/{bare['n']}")
    print(f"statuses: {stats['statuses']}")


if __name__ == "__main__":  # vLLM spawns processes
    main()
