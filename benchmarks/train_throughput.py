# python benchmarks/train_throughput.py        # CPU: tiny Gemma-3-shaped model, lengths scaled by 1/8
# python benchmarks/train_throughput.py --shape gemma3-1b --scale 1 --row-len 4096   # CUDA (bf16)
"""Useful tokens/s and peak memory of clinsynth's train step beside a plain peft + transformers loop.

Same random-weight model (built from config, no download), same LoRA (r=16, alpha=16, all linear
layers, never lm_head), same AdamW step, same examples (a letter + JSON answer length mix: prompt
~1,150 and answer ~350 tokens, mean ~1,500; `--scale` shrinks it for CPU), in one run:

- padded: the plain loop, micro-batches of 2 examples right-padded with an attention mask (written
  here with torch only, not with clinsynth code);
- clinsynth: the train stage's collator (clinsynth.training.trainer.make_collator: micro-batches of
  `--micro-batch` examples packed into rows of `--row-len` with position ids) and the same step; the
  HF Trainer around it adds bookkeeping, not tokens;
- rows: the dataset packed once into rows (collate.pack_examples), one row per step: what packing
  gives when the micro-batch is not the limit.

Useful tokens are real tokens (prompt + answer, no padding). Each variant runs in its own process
(peak RSS is per process on CPU; torch.cuda peak stats on GPU), variants alternate for `--repeats`
rounds and the best round counts (these machines are noisy). On CPU the ratio is per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPES: dict[str, dict[str, Any]] = {
    # CPU: small enough for 2 cores, Gemma-3 layout (sliding + full layers, tied embeddings, big vocab)
    "tiny": dict(vocab_size=8192, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=128,
                 query_pre_attn_scalar=32),
    "gemma3-1b": dict(vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                      query_pre_attn_scalar=256),
    # google/gemma-3-27b-it's text config (MedGemma-27B has the same shape)
    "gemma3-27b": dict(vocab_size=262_208, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                       num_attention_heads=32, num_key_value_heads=16, head_dim=128, sliding_window=1024,
                       query_pre_attn_scalar=168),
}


def length_mix(n: int, *, scale: float, seed: int, max_len: int) -> list[tuple[int, int]]:
    """(prompt, answer) token counts: letter + instructions ~N(1150, 330), JSON answer ~N(350, 150),
    clipped to plausible ranges, times `scale`; every example fits a row of max_len."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = float(torch.normal(1150.0, 330.0, (1,), generator=g).clamp(400, 3000))
        a = float(torch.normal(350.0, 150.0, (1,), generator=g).clamp(60, 1000))
        p_n, a_n = max(2, round(p * scale)), max(1, round(a * scale))
        while p_n + a_n > max_len:
            p_n = max(2, p_n // 2)
        out.append((p_n, a_n))
    return out


def make_examples(mix: list[tuple[int, int]], vocab: int, seed: int) -> list[dict[str, Any]]:
    """Random token ids; labels only on the answer (as tokenize_example builds them)."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for i, (p, a) in enumerate(mix):
        ids = torch.randint(3, vocab, (p + a,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:], "example_id": i})
    return out


def build_model(shape: str, device: str, dtype: torch.dtype, attn: str = "sdpa") -> Any:
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**SHAPES[shape], max_position_embeddings=32_768, use_cache=False)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.config.use_cache = False  # the HF Trainer's default too; a KV cache would defeat packing
    return model


def add_lora(model: Any, r: int = 16) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    names = [n for n, _ in peft_model.named_modules() if n.endswith("lm_head.lora_A")]
    assert not names, f"LoRA must not wrap lm_head (fused CE needs its plain weight): {names}"
    return peft_model


def plain_padded_batches(examples: list[dict[str, Any]], batch: int, pad_id: int) -> list[dict[str, Any]]:
    """The baseline's batches: consecutive examples, right padding, attention mask (plain torch)."""
    out = []
    for i in range(0, len(examples) - batch + 1, batch):
        chunk = examples[i:i + batch]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[j, :n] = torch.tensor(e["input_ids"])
            labels[j, :n] = torch.tensor(e["labels"])
            mask[j, :n] = 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def trainer_batches(model: Any, examples: list[dict[str, Any]], micro: int, row_len: int) -> tuple[list, str]:
    """The train stage's micro-batches through its own collator (clinsynth.training.trainer)."""
    from clinsynth.training.trainer import make_collator

    collator, mode = make_collator(model, packing=True, pad_id=0, max_len=row_len)
    out = []
    for i in range(0, len(examples), micro):
        b = collator(examples[i:i + micro])
        b.pop("example_ids", None)
        out.append(b)
    return out, mode


def row_batches(model: Any, examples: list[dict[str, Any]], row_len: int) -> tuple[list, str]:
    from clinsynth.training.collate import make_collator, pack_examples

    collator, mode = make_collator(model, packing=True, pad_id=0, max_len=row_len)
    return [collator([r]) for r in pack_examples(examples, row_len)], mode


def count_useful(batch: dict[str, Any]) -> int:
    from clinsynth.training.collate import useful_tokens

    return useful_tokens(batch)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_steps(model: Any, batches: list[dict[str, Any]], *, warmup: int, device: str) -> dict[str, Any]:
    """AdamW steps over `batches` (the first `warmup` untimed): useful tokens/s, per CPU-s, peak memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(b: dict[str, Any]) -> float:
        b = {k: v.to(device) for k, v in b.items()}
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for b in batches[:warmup]:
        step(b)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    timed = batches[warmup:]
    losses = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for b in timed:
        losses.append(step(b))
    sync(device)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    useful = sum(count_useful(b) for b in timed)
    total = sum(int(b["input_ids"].numel()) for b in timed)
    if device.startswith("cuda"):
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    return {
        "steps": len(timed), "useful_tokens": useful, "slots": total,
        "padding_fraction": round(1 - useful / total, 4) if total else 0.0,
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
        "tokens_per_s": round(useful / wall, 1) if wall else 0.0,
        "tokens_per_cpu_s": round(useful / cpu, 1) if cpu else 0.0,
        "peak_mem_gb": round(peak_gb, 3), "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
    }


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)  # 1: no spinning threads; CPU-seconds then measure work
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = add_lora(build_model(args.shape, device, dtype))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mix = length_mix(args.examples, scale=args.scale, seed=args.seed, max_len=args.row_len)
    examples = make_examples(mix, SHAPES[args.shape]["vocab_size"], args.seed)
    mode = "padded"
    if args.variant == "padded":
        batches = plain_padded_batches(examples, 2, pad_id=0)
    elif args.variant == "clinsynth":
        batches, mode = trainer_batches(model, examples, args.micro_batch, args.row_len)
    else:
        batches, mode = row_batches(model, examples, args.row_len)
    # warm up on as many examples as the padded loop's warmup (2 steps x 2): the timed part is the same data
    n_warm, seen = 0, 0
    while n_warm < len(batches) and seen < 2 * args.warmup:
        seen += _examples_in(batches[n_warm])
        n_warm += 1
    res = train_steps(model, batches, warmup=n_warm, device=device)
    res.update(variant=args.variant, packing_mode=mode, device=device,
               threads=torch.get_num_threads(), torch=torch.__version__)
    return res


def _examples_in(batch: dict[str, Any]) -> int:
    if "attention_mask" in batch:
        return int(batch["input_ids"].shape[0])
    pos = batch["position_ids"]
    nxt = torch.zeros_like(pos, dtype=torch.bool)
    nxt[:, :-1] = pos[:, 1:] == 1
    return int(((pos == 0) & nxt).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES),
                    help="default: tiny on CPU, gemma3-1b on CUDA")
    ap.add_argument("--scale", type=float, default=None, help="length factor (default 1/8 on CPU, 1 on CUDA)")
    ap.add_argument("--row-len", type=int, default=None, help="packed row length (default 4096 x scale)")
    ap.add_argument("--micro-batch", type=int, default=8,
                    help="examples per micro-batch of the clinsynth collator")
    ap.add_argument("--examples", type=int, default=68, help="examples per variant (the first 4 warm up)")
    ap.add_argument("--warmup", type=int, default=2, help="padded-loop steps (x2 examples) not timed")
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="(on by default on CUDA)")
    ap.add_argument("--variants", default="padded,clinsynth,rows")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    args.shape = args.shape or ("gemma3-1b" if cuda else "tiny")
    args.scale = args.scale if args.scale is not None else (1.0 if cuda else 0.125)
    args.row_len = args.row_len or max(64, int(4096 * args.scale))
    args.gradient_checkpointing = args.gradient_checkpointing or cuda
    if args.variant:  # child process: one variant
        args.out.write_text(json.dumps(run_variant(args)))
        return

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    best: dict[str, dict[str, Any]] = {}
    key = "tokens_per_s" if cuda else "tokens_per_cpu_s"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeats):
            for name in names:
                out = Path(tmp) / f"{name}-{rnd}.json"
                cmd = [sys.executable, __file__, "--variant", name, "--out", str(out)]
                for flag in ("shape", "scale", "row_len", "micro_batch", "examples", "warmup", "seed",
                             "threads"):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                if args.gradient_checkpointing:
                    cmd.append("--gradient-checkpointing")
                subprocess.run(cmd, check=True, cwd=ROOT)
                res = json.loads(out.read_text())
                print(f"round {rnd} {name:9s} {res[key]:>10.1f} {key}", flush=True)
                if name not in best or res[key] > best[name][key]:
                    best[name] = res
    base = best.get("padded")
    print(f"\n{'variant':10s} {'mode':13s} {'useful tok':>10s} {'pad %':>6s} {'tok/s':>9s} "
          f"{'tok/CPU-s':>10s} {'peak GB':>8s} {'ratio':>6s}")
    for name, r in best.items():
        ratio = r[key] / base[key] if base and base[key] else math.nan
        r["ratio_vs_padded"] = round(ratio, 3)
        print(f"{name:10s} {r['packing_mode']:13s} {r['useful_tokens']:>10d} "
              f"{100 * r['padding_fraction']:>6.1f} {r['tokens_per_s']:>9.1f} {r['tokens_per_cpu_s']:>10.1f} "
              f"{r['peak_mem_gb']:>8.3f} {ratio:>6.2f}")
    load_after = os.getloadavg()
    print(f"\ndevice {best[names[0]]['device']}, shape {args.shape}, scale {args.scale}, row {args.row_len}, "
          f"ratio by {key}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": best,
                                         "load_before": load_before, "load_after": load_after}, indent=1))


if __name__ == "__main__":
    main()
