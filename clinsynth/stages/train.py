"""`train`: LoRA / QLoRA / full fine-tuning on the dataset stage's examples (clinsynth/training/trainer.py).

One job of nodes x tasks ranks (resources/train=...): gloo on CPU, nccl on GPU, DeepSpeed ZeRO-2/3 from
train/deepspeed. It checkpoints every train.save_steps and when asked to stop (Slurm's warning signal,
preemption, `scancel --signal=USR2`), requeues, and resumes with the exact data position.
Outputs: adapter/ (peft; transformers + peft and vLLM LoRA load it; full fine-tuning: merged/ only),
merged/ (train.merge), train_report.json, metrics.jsonl, seen/rank-NNNNN.jsonl (example ids per step).
"""

from __future__ import annotations

from typing import Any

from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.training.config import TrainConfig


def _requires(cfg: TrainConfig) -> list[tuple[str, str]]:
    needs = [("torch", "train"), ("transformers", "train"), ("peft", "train")]
    if cfg.train.deepspeed.name != "none":
        needs.append(("deepspeed", "train"))
    if cfg.train.model.kind == "packaged":
        needs.append(("gguf", "train"))
    if cfg.train.method == "qlora":
        # and a GPU: checked when the job starts (trainer.plan_geometry)
        needs.append(("bitsandbytes", "train (plus bitsandbytes on the GPU nodes)"))
    return needs


def _nondeterminism(cfg: TrainConfig) -> dict[str, Any]:
    """Seeded, but float reductions (threads, ranks, DeepSpeed buckets) are not bitwise reproducible,
    and train_report.json / metrics.jsonl carry throughput."""
    t = cfg.train
    return {
        "why": "training: float reductions across threads and ranks",
        "seed": cfg.seed,
        "method": t.method,
        "precision": t.precision,
        "deepspeed": t.deepspeed.name,
        "model": t.model.model_dump(mode="json"),
    }


@stage(
    "train",
    needs=("dataset",),
    config=TrainConfig,
    version=1,
    requires=_requires,
    nondeterminism=_nondeterminism,
)
def run(cfg: TrainConfig, ctx: StageContext) -> dict[str, Any]:
    """adapter/ (+ merged/), train_report.json, metrics.jsonl."""
    from clinsynth.training.trainer import run_training

    return run_training(cfg, ctx)
