# python tests/gpu/train_gpu_check.py --steps 6 --json $OUT/train_gpu.json \
#     --liger-wheel .wheels/liger_kernel-0.8.5-py3-none-any.whl      # one H200, ~3-5 min
# python tests/gpu/train_gpu_check.py --tiny --steps 2   # same code path on CPU (tests/unit/test_collate.py)
"""GPU check of the train step: LoRA in bf16 on a Gemma-3-27B-shaped model with random weights (one H200).

Built from config (no download; the GPU machine has no network). LoRA r=16, alpha=16, dropout 0 on all
linear layers but lm_head, gradient checkpointing, sdpa, AdamW. Examples: the letter + JSON length mix
of benchmarks/train_throughput.py (mean ~1,500 tokens), labels on the answer only. Measured in order,
on the same model and the same examples (2 x --steps of them, after untimed warm-up steps):

1. padded    - the plain peft + transformers loop: batches of 2, right padding, attention mask;
2. packed    - clinsynth.training.collate: rows of --row-len (4,096) tokens, position ids, no mask,
               + Liger's fused linear cross-entropy, RMSNorm and GeGLU where liger_kernel imports
               (applied after step 1, so the baseline stays plain);
3. packed_sel - as 2, with gradient checkpointing switched off on as many decoder layers as the
               memory left allows (measured: peak growth per un-checkpointed layer), which removes
               their recompute (~1/3 of a layer's backward+forward cost).

Prints useful (non-padding) tokens/s, peak GPU memory, and the ratio of the best packed variant to
the padded loop (goal >= 2.0). Before: ~1,090 (padded) and ~1,620 (packed + Liger) useful tokens/s on
one H200 (machine-facts "On the GPU machine"). liger-kernel 0.8.5 is not on the GPU machine: carry
the wheel (`pip download liger-kernel==0.8.5 --no-deps -d .wheels`, ~0.9 MB) and pass --liger-wheel.
With --tiny it runs a tiny Gemma-3 shape on CPU in fp32 (no Liger: Triton is GPU-only).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# a 27B model near the memory limit: fewer fragmentation OOMs (set before torch initialises CUDA)
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

_BENCH = ROOT / "benchmarks" / "train_throughput.py"
_spec = importlib.util.spec_from_file_location("train_throughput", _BENCH)
assert _spec and _spec.loader
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)

from clinsynth.training.collate import make_collator, pack_examples, useful_tokens  # noqa: E402


def try_liger(wheel: Path | None) -> Any:
    """liger_kernel's Gemma-3 patch, installing the carried wheel first if given; None when absent."""
    if wheel is not None and importlib.util.find_spec("liger_kernel") is None:
        pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
        r = subprocess.run(pip, capture_output=True, text=True)
        print(f"pip install {wheel.name}: rc {r.returncode} {r.stderr.strip()[-300:]}", flush=True)
        importlib.invalidate_caches()
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_gemma3_text
    except Exception as exc:  # ImportError, or Triton missing / failing to initialise
        print(f"liger_kernel not usable: {type(exc).__name__}: {exc}", flush=True)
        return None
    return apply_liger_kernel_to_gemma3_text


def decoder_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def set_checkpointed(model: Any, n_plain: int) -> None:
    """Gradient checkpointing on every decoder layer except the first n_plain (transformers'
    GradientCheckpointingLayer reads its own `gradient_checkpointing` flag at each call)."""
    for i, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = i >= n_plain


def measure(name: str, model: Any, batches: list[dict[str, Any]], warmup: int, device: str) -> dict[str, Any]:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    res = tt.train_steps(model, batches, warmup=warmup, device=device)
    res["variant"] = name
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(f"{name:11s} steps {res['steps']:3d}  useful {res['useful_tokens']:7d}  "
          f"pad {res['padding_fraction']:.3f}  {res['tokens_per_s']:9.1f} tok/s  "
          f"peak {res['peak_mem_gb']:7.2f} GB  loss {res['loss_last']}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny Gemma-3 shape, fp32, on CPU (code path check)")
    ap.add_argument("--steps", type=int, default=6,
                    help="timed padded steps; every variant gets their 2x examples")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each variant")
    ap.add_argument("--row-len", type=int, default=None, help="packed row length (4096; tiny: 512)")
    ap.add_argument("--liger-wheel", type=Path, default=None)
    ap.add_argument("--no-liger", action="store_true")
    ap.add_argument("--plain-layers", default="auto",
                    help="decoder layers without checkpointing in packed_sel: auto (from memory), N, or off")
    ap.add_argument("--mem-fraction", type=float, default=0.85,
                    help="of total GPU memory, for --plain-layers auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("no CUDA device: run with --tiny on CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda and not args.tiny else "cpu"
    shape, scale = ("tiny", 0.125) if args.tiny else ("gemma3-27b", 1.0)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    row_len = args.row_len or (512 if args.tiny else 4096)
    info: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                            "torch": torch.__version__, "shape": shape, "row_len": row_len}
    import peft
    import transformers

    info.update(transformers=transformers.__version__, peft=peft.__version__)
    print(json.dumps(info), flush=True)

    t0 = time.perf_counter()
    model = tt.add_lora(tt.build_model(shape, device, dtype, attn="sdpa"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_layers = len(decoder_layers(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"model {shape}: {total / 1e9:.2f}B params, {trainable / 1e6:.1f}M trainable, {n_layers} layers, "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)

    n_warm, n_timed = 2 * args.warmup, 2 * args.steps
    mix = tt.length_mix(n_warm + n_timed, scale=scale, seed=0, max_len=row_len)
    examples = tt.make_examples(mix, tt.SHAPES[shape]["vocab_size"], seed=0)
    warm, timed = examples[:n_warm], examples[n_warm:]
    info["mean_example_tokens"] = round(sum(p + a for p, a in mix) / len(mix), 1)
    results: dict[str, Any] = {}

    # 1. the plain loop
    padded = tt.plain_padded_batches(warm + timed, 2, pad_id=0)
    results["padded"] = measure("padded", model, padded, args.warmup, device)

    # 2. clinsynth's packed rows (+ Liger)
    liger = None if (args.no_liger or device != "cuda") else try_liger(args.liger_wheel)
    if liger is not None:
        try:
            liger(rope=False, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, geglu=True,
                  model=model.get_base_model())
        except Exception as exc:  # a transformers version the patch does not know: measure without it
            print(f"liger patch failed, packed runs without it: {type(exc).__name__}: {exc}", flush=True)
            info["liger_error"] = f"{type(exc).__name__}: {exc}"
            liger = None
    info["liger"] = liger is not None
    collator, mode = make_collator(model, packing=True, pad_id=0, max_len=row_len)
    info["packing_mode"] = mode
    if mode != "position_ids":
        print(f"packing mode {mode}: packed rows are not exact for this model", file=sys.stderr)
        return 1
    warm_rows = [collator([r]) for r in pack_examples(warm, row_len)]
    rows = warm_rows + [collator([r]) for r in pack_examples(timed, row_len)]
    n_warm_rows = len(warm_rows)
    assert sum(useful_tokens(b) for b in rows[n_warm_rows:]) == sum(len(e["input_ids"]) for e in timed)
    results["packed"] = measure("packed", model, rows, n_warm_rows, device)

    # 3. fewer checkpointed layers where memory allows
    n_plain = 0
    if args.plain_layers != "off":
        if args.plain_layers != "auto":
            n_plain = min(n_layers, int(args.plain_layers))
        elif device == "cuda":
            probe = max(1, n_layers // 16)
            set_checkpointed(model, probe)
            longest = max(rows, key=lambda b: int(b["input_ids"].numel()))
            p = measure("probe", model, [longest, longest], 1, device)["peak_mem_gb"]
            per_layer = max(0.05, (p - results["packed"]["peak_mem_gb"]) / probe)
            budget = args.mem_fraction * torch.cuda.get_device_properties(0).total_memory / 2**30
            n_plain = max(0, min(n_layers, int((budget - results["packed"]["peak_mem_gb"]) / per_layer)))
            info["per_plain_layer_gb"] = round(per_layer, 3)
        else:
            n_plain = n_layers // 2
    while n_plain > 0:
        set_checkpointed(model, n_plain)
        try:
            results["packed_sel"] = measure("packed_sel", model, rows, n_warm_rows, device)
            results["packed_sel"]["plain_layers"] = n_plain
            break
        except torch.cuda.OutOfMemoryError:
            print(f"out of memory with {n_plain} plain layers; trying {n_plain * 2 // 3}", flush=True)
            model.zero_grad(set_to_none=True)
            n_plain = n_plain * 2 // 3
        except Exception as exc:  # keep the padded/packed numbers: report and stop this variant
            print(f"packed_sel failed: {type(exc).__name__}: {exc}", flush=True)
            info["packed_sel_error"] = f"{type(exc).__name__}: {exc}"
            break
    set_checkpointed(model, 0)

    base = results["padded"]["tokens_per_s"]
    best = max((k for k in results if k != "padded"), key=lambda k: results[k]["tokens_per_s"])
    ratio = results[best]["tokens_per_s"] / base if base else 0.0
    report = {**info, **results, "best": best, "ratio": round(ratio, 3), "goal": 2.0,
              "goal_met": ratio >= 2.0}
    print(f"\nbest {best}: {results[best]['tokens_per_s']:.1f} useful tok/s vs padded {base:.1f}: "
          f"{ratio:.2f}x (goal 2.0x); peak {results[best]['peak_mem_gb']:.1f} GB vs "
          f"{results['padded']['peak_mem_gb']:.1f} GB", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
