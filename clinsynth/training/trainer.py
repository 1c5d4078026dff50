"""The train stage's engine: the HF Trainer with peft LoRA / QLoRA or full fine-tuning, DeepSpeed ZeRO-2/3.

Why the plain `transformers.Trainer` (not TRL): the labels are built by `chat.tokenize_example` from the
model's own chat template (loss on the assistant turn only), so the dataset holds pre-tokenised rows and the
Trainer needs nothing else. What this module adds around it:

- the batch geometry: gradient accumulation = effective_batch / (per_device_batch x world size), exactly;
- one process group per job (gloo on CPU, nccl on GPU) from the launcher's MASTER_ADDR/PORT, RANK,
  WORLD_SIZE, LOCAL_RANK; on CPU `TrainingArguments(use_cpu=True)`, without which every rank trains alone;
- stop -> checkpoint -> requeue: at every optimizer-step end all ranks ask `ctx.should_stop()` (a
  collective); on yes the Trainer saves an HF checkpoint (optimizer, scheduler, RNG, step) into
  `ctx.checkpoint_dir`, the stage records it with `ctx.save_checkpoint` and raises `StopRequested`. The
  requeued attempt resumes with `trainer.train(resume_from_checkpoint=...)`: the seedable sampler gives the
  same order and the Trainer skips the consumed batches, so every example is seen as often as in an
  uninterrupted run (`seen/rank-NNNNN.jsonl` records the example ids of every step: tests compare them);
- metrics: loss, lr, grad norm, useful (non-pad) tokens/s, an MFU estimate and peak memory per logging
  step in `metrics.jsonl` and the tracker; `train_report.json` at the end.

MFU estimate (stated, approximate): FLOPs per token = 4 x N + 2 x N_trainable, where N counts the
parameters of the matmuls (all parameters less an untied input embedding): forward 2N, backward through the
activations 2N (also for frozen weights), weight gradients 2 x N_trainable (= 6N for full fine-tuning,
~4N for LoRA). Attention's quadratic term and the gradient-checkpointing recompute are not counted (MFU, not
hardware FLOPs). MFU = FLOPs/token x useful tokens/s (all ranks) / (peak FLOP/s per device x world size).
Peak: bf16 dense of the GPU model (table below) or, on CPU, an assumed 100 GFLOP/s per core in fp32
(AVX2: two 256-bit FMA pipes = 32 FLOP/cycle at ~3 GHz); CLINSYNTH_PEAK_TFLOPS overrides both (per device).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinsynth.core.atomic import write_json
from clinsynth.core.context import StageContext
from clinsynth.training.config import TrainConfig, TrainSection

log = logging.getLogger(__name__)

#: assumed CPU peak per core (fp32 FLOP/s) for the MFU estimate; see the module docstring
CPU_PEAK_FLOPS_PER_CORE = 100e9
#: bf16 dense peak FLOP/s by GPU name fragment (vendor data sheets, without sparsity)
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
    "V100": 125e12,
}
#: train_report.json's packing when packing was on but no row held two examples (per_device_batch=1)
ONE_PER_ROW = "none (one example per row)"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainSetupError(ValueError):
    """The train config cannot run here (batch geometry, QLoRA without GPU/bitsandbytes, ...)."""


@dataclass(frozen=True)
class Geometry:
    """Where and how the optimisation runs."""

    device: str  # "cuda" | "cpu"
    world_size: int
    grad_accum: int
    bf16: bool
    backend: str  # "nccl" | "gloo"
    deepspeed: str  # "none" | "zero2" | "zero3"


def gradient_accumulation(effective_batch: int, per_device_batch: int, world_size: int) -> int:
    """effective_batch / (per_device_batch x world_size), which must be a whole number."""
    per_step = per_device_batch * world_size
    if effective_batch % per_step:
        raise TrainSetupError(
            f"train.effective_batch={effective_batch} is not a multiple of train.per_device_batch="
            f"{per_device_batch} x {world_size} ranks = {per_step}: change one of them so that gradient "
            "accumulation is a whole number of micro-batches"
        )
    return effective_batch // per_step


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def plan_geometry(train: TrainSection, world_size: int, *, cuda: bool | None = None) -> Geometry:
    """Check what this config needs against this machine; raise TrainSetupError saying what to change."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if train.method == "qlora":
        if not cuda:
            raise TrainSetupError(
                "train.method=qlora loads the model in 4 bit with bitsandbytes, which needs a GPU; none is "
                "visible here: use train.method=lora on CPU"
            )
        if not bitsandbytes_available():
            raise TrainSetupError(
                "train.method=qlora needs bitsandbytes on the GPU nodes: pip install bitsandbytes"
            )
    if train.precision == "bf16" and not cuda:
        bf16 = True  # asked for explicitly: CPU autocast in bf16
    else:
        bf16 = train.precision == "bf16" or (train.precision == "auto" and cuda)
    return Geometry(
        device="cuda" if cuda else "cpu",
        world_size=world_size,
        grad_accum=gradient_accumulation(train.effective_batch, train.per_device_batch, world_size),
        bf16=bf16,
        backend="nccl" if cuda else "gloo",
        deepspeed=train.deepspeed.name,
    )


# ---- data


def load_examples(
    dataset_dir: Path, tokenizer: Any, max_len: int, split: str = "train"
) -> list[dict[str, Any]]:
    """The dataset stage's chat examples of `split`, tokenised with the labels mask of `chat.py`."""
    from clinsynth.artifacts.sft import read_sft
    from clinsynth.training.chat import ExampleTooLong, TemplateError, tokenize_example

    rows = []
    for n, row in enumerate(read_sft(dataset_dir, split)):
        try:
            ex = tokenize_example(tokenizer, row["messages"], max_len)
        except ExampleTooLong as exc:
            raise TrainSetupError(
                f"example {row.get('id')!r} of {dataset_dir}/sft/{split}.jsonl: {exc} (train.max_seq_len): "
                "build the dataset with dataset.max_tokens <= train.max_seq_len (the default interpolates it)"
            ) from exc
        except TemplateError as exc:
            raise TrainSetupError(
                f"example {row.get('id')!r} (line {n + 1}) of {dataset_dir}/sft/{split}.jsonl: {exc}. The "
                "dataset stage holds one example per batch to this check, training every example: fix the "
                "model's chat template or tokenizer (train.model) and rebuild the dataset"
            ) from exc
        rows.append({"input_ids": list(ex.input_ids), "labels": list(ex.labels), "example_id": n})
    if not rows:
        raise TrainSetupError(f"{dataset_dir}/sft/{split}.jsonl has no examples: nothing to train on")
    return rows


class ExampleDataset:
    """A map-style dataset of tokenised examples (the Trainer's seedable sampler shuffles it)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class IdCollator:
    """Runs the packed or padded collator on (input_ids, labels) and adds the batch's example ids.

    Counts rows and examples, so the report can say whether packing ever put two examples in a row (it
    packs within a micro-batch: with per_device_batch=1 and no flattening it never does)."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner
        self.rows = 0
        self.examples = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = dict(self.inner([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]))
        batch["example_ids"] = torch.tensor([int(f["example_id"]) for f in features], dtype=torch.long)
        self.rows += int(batch["input_ids"].shape[0])
        self.examples += len(features)
        return batch


def make_collator(model: Any, packing: bool, pad_id: int, max_len: int) -> tuple[IdCollator, str]:
    """(collator, packing mode): the micro-batch packed into rows of max_len with position ids where that
    is exact for this model (collate.packing_mode), else right padding."""
    from clinsynth.training import collate

    inner, mode = collate.make_collator(model, packing=packing, pad_id=pad_id, max_len=max_len)
    return IdCollator(inner), mode


# ---- model


def count_params(model: Any) -> tuple[int, int, int]:
    """(all parameters, trainable, matmul parameters N of the MFU estimate); ZeRO-3 shards counted whole."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        if type(p).__name__ == "Params4bit":
            n *= 2  # bitsandbytes packs two 4-bit weights per byte: numel() counts bytes
        total += n
        if p.requires_grad:
            trainable += n
    matmul = total
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        emb = base.get_input_embeddings().weight
        out = base.get_output_embeddings()
        if out is None or out.weight is not emb:
            matmul -= int(getattr(emb, "ds_numel", 0) or emb.numel())
    except (AttributeError, NotImplementedError):
        pass
    return total, trainable, matmul


def peak_flops_per_device(device: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    env = os.environ.get("CLINSYNTH_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12, "CLINSYNTH_PEAK_TFLOPS"
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops, f"bf16 dense peak of {name}"
        return None, f"unknown GPU {name}: set CLINSYNTH_PEAK_TFLOPS"
    import torch

    cores = torch.get_num_threads()
    return (
        cores * CPU_PEAK_FLOPS_PER_CORE,
        f"assumed {CPU_PEAK_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s x {cores} CPU threads",
    )


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def _dtype(geom: Geometry, train: TrainSection) -> Any:
    """Weights' dtype at load: fp32 on CPU and for full fine-tuning without DeepSpeed (AdamW on fp32
    master weights, bf16 autocast); bf16 for frozen LoRA base weights on GPU."""
    import torch

    if not geom.bf16:
        return torch.float32
    if train.method == "full" and geom.deepspeed == "none":
        return torch.float32
    return torch.bfloat16


def build_model(train: TrainSection, geom: Geometry, cache_dir: Path, local_rank: int) -> Any:
    """The model to train: base + LoRA adapters (lora, qlora) or the whole model (full)."""
    import torch

    from clinsynth.llm.weights import load_causal_lm

    quantization = None
    if train.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=train.qlora.quant_type,
            bnb_4bit_use_double_quant=train.qlora.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, train.qlora.compute_dtype),
        )
    model = load_causal_lm(
        train.model.model_dump(),
        cache_dir,
        dtype=_dtype(geom, train),
        quantization=quantization,
        attn_implementation=train.attn_implementation,
    )
    model.config.use_cache = False  # training; packed rows are exact only without the KV cache
    if train.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if train.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing
        )
    lora = LoraConfig(
        r=train.lora.r,
        lora_alpha=train.lora.alpha,
        lora_dropout=train.lora.dropout,
        target_modules=_target_modules(model, train.lora.target_modules, train.lora.last_layers),
        layers_to_transform=_last_layers(model, train.lora.last_layers),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if train.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still get a grad path
    return model


def _target_modules(model: Any, targets: str | list[str], last_layers: int | None) -> str | list[str]:
    """peft refuses layers_to_transform with "all-linear": name the decoder layers' linear modules."""
    if last_layers is None or targets != "all-linear":
        return targets
    import torch

    return sorted(
        {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
         if isinstance(mod, torch.nn.Linear) and ".layers." in name}
    )


def _last_layers(model: Any, n: int | None) -> list[int] | None:
    if n is None:
        return None
    total = int(model.config.get_text_config().num_hidden_layers)
    if n >= total:  # a smaller model than the config was written for (tests' tiny model): every layer
        log.info("train.lora.last_layers=%d >= the %d decoder layers: adapters in all of them", n, total)
    return list(range(max(0, total - n), total))


# ---- checkpoints


def complete_checkpoints(folder: Path | None, world_size: int = 1) -> list[tuple[int, Path]]:
    """HF checkpoint folders under `folder` that finished saving: rank 0 writes trainer_state.json last,
    but each rank writes its own RNG state (rng_state_<rank>.pth with several ranks), possibly after rank
    0 is done; a checkpoint without all of them would resume with a fresh RNG on some rank."""
    if folder is None or not folder.is_dir():
        return []
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    out = []
    for p in folder.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if (
            m
            and p.is_dir()
            and (p / "trainer_state.json").is_file()
            and all((p / name).is_file() for name in rng)
        ):
            out.append((int(m.group(1)), p))
    return sorted(out)


GEOMETRY_FILE = "geometry.json"


def resume_point(ctx: StageContext) -> Path | None:
    """The newest complete HF checkpoint of an earlier attempt (a stop save or a periodic one), complete
    for the world size it was written with (check_geometry then refuses another one)."""
    world_size = ctx.world_size
    recorded = ctx.checkpoint_dir / GEOMETRY_FILE if ctx.checkpoint_dir else None
    if recorded is not None and recorded.is_file():
        world_size = int(json.loads(recorded.read_text()).get("world_size", world_size))
    found = complete_checkpoints(ctx.checkpoint_dir, world_size)
    return found[-1][1] if found else None


def check_geometry(ctx: StageContext, train: TrainSection, geom: Geometry, resume: Path | None) -> None:
    """Resume only with the batch geometry the checkpoint was written with.

    world_size and per_device_batch are operational settings (the same stage id), but the Trainer
    restores the data position as a count of micro-batches per rank: another geometry would skip the
    wrong examples. A fresh start records the geometry (rank 0) next to the checkpoints."""
    if ctx.checkpoint_dir is None:
        return
    want = {
        "world_size": geom.world_size,
        "per_device_batch": train.per_device_batch,
        "gradient_accumulation": geom.grad_accum,
    }
    path = ctx.checkpoint_dir / GEOMETRY_FILE
    if resume is not None and path.is_file():
        had = json.loads(path.read_text())
        if had != want:
            raise TrainSetupError(
                f"{resume} was written with {had}, this attempt runs with {want}: relaunch with the "
                f"resources and train.per_device_batch of that run, or delete {ctx.checkpoint_dir} to "
                "start the training over"
            )
    elif ctx.is_main:
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, want)


def _keep_until(path: Path, step: int) -> None:
    """Drop the lines of a JSONL log written after `step` (an attempt that ran past its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{x}\n" for x in keep))
    os.replace(tmp, path)


# ---- the Trainer and its callback


def _trainer_class() -> type:
    from transformers import Trainer

    class ClinsynthTrainer(Trainer):
        """Records the example ids and useful tokens of every micro-batch (then the usual step)."""

        def __init__(self, *args: Any, seen_path: Path, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seen_path = seen_path
            self.window_tokens = 0
            self.step_ids: list[int] = []
            self.total_tokens = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            from clinsynth.training.collate import useful_tokens

            ids = inputs.pop("example_ids", None)
            if ids is not None:
                self.step_ids.extend(int(i) for i in ids.tolist())
            n = int(useful_tokens(inputs))
            self.window_tokens += n
            self.total_tokens += n
            return super().training_step(model, inputs, num_items_in_batch)

        def flush_seen(self, step: int) -> None:
            """One line per optimizer step: {"step", "ids"} of this rank."""
            with open(self.seen_path, "a") as fh:
                fh.write(json.dumps({"step": step, "ids": self.step_ids}) + "\n")
            self.step_ids = []

    return ClinsynthTrainer


def _control_callback(
    ctx: StageContext, geom: Geometry, flops_per_token: float, peak: float | None, metrics_path: Path
) -> Any:
    from transformers import TrainerCallback

    class StageControl(TrainerCallback):
        """Step end, on every rank: record the step's examples, ask whether to stop (collective),
        measure throughput; on_log (rank 0): one metrics line and the tracker."""

        def __init__(self) -> None:
            self.trainer: Any = None
            self.stopped_at: int | None = None
            self.t_window = time.perf_counter()
            self.pending: dict[str, float] = {}
            self.last: dict[str, Any] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.t_window = time.perf_counter()
            ctx.progress(int(state.global_step), int(state.max_steps), "steps")  # rank 0 reports
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            step = int(state.global_step)
            self.trainer.flush_seen(step)
            ctx.progress(step, int(state.max_steps), "steps")
            stop = ctx.should_stop()  # every rank, every step: the same answer everywhere
            if stop and step < state.max_steps:
                self.stopped_at = step
                control.should_save = True
                control.should_training_stop = True
            if control.should_log or step % args.logging_steps == 0 or self.stopped_at is not None:
                self._measure(step)
            return control

        def _measure(self, step: int) -> None:
            import torch

            tokens = float(self.trainer.window_tokens)
            if geom.world_size > 1 and torch.distributed.is_initialized():
                device = torch.device("cuda", torch.cuda.current_device()) if geom.backend == "nccl" else None
                t = torch.tensor([tokens], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                tokens = float(t.item())
            dt = max(time.perf_counter() - self.t_window, 1e-9)
            tps = tokens / dt
            self.pending = {
                "train/tokens_per_s": tps,
                "train/step_s": dt,
                "train/peak_mem_gb": peak_memory_gb(geom.device),
            }
            if peak:
                self.pending["train/mfu"] = flops_per_token * tps / (peak * geom.world_size)
            self.trainer.window_tokens = 0
            self.t_window = time.perf_counter()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any
        ) -> Any:
            if not logs or "loss" not in logs or not ctx.is_main:
                return control
            line: dict[str, Any] = {"step": int(state.global_step), "epoch": logs.get("epoch")}
            line["train/loss"] = float(logs["loss"])
            for key, name in (("learning_rate", "train/lr"), ("grad_norm", "train/grad_norm")):
                if logs.get(key) is not None:
                    line[name] = float(logs[key])
            line.update(self.pending)
            self.last = line
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            ctx.tracker.log({k: v for k, v in line.items() if k.startswith("train/")}, step=line["step"])
            return control

    return StageControl()


# ---- the stage


def _training_args(train: TrainSection, geom: Geometry, cfg: TrainConfig, out: Path) -> Any:
    from transformers import TrainingArguments

    deepspeed = json.loads(json.dumps(train.deepspeed.config)) if train.deepspeed.config else None
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=train.per_device_batch,
        gradient_accumulation_steps=geom.grad_accum,
        learning_rate=train.lr,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1): a ratio of the total steps
        weight_decay=train.weight_decay,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        bf16=geom.bf16,
        use_cpu=geom.device == "cpu",  # else, on CPU, each rank trains alone as rank 0 of 1
        ddp_backend=geom.backend if geom.world_size > 1 else None,
        deepspeed=deepspeed,
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if train.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,  # workers would need to ignore USR2; tokenised rows are cheap to collate
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
    )


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def run_training(cfg: TrainConfig, ctx: StageContext) -> dict[str, Any]:
    """Train (stop request: checkpoint + requeue); write adapter/, merged/, train_report.json, metrics."""
    import torch

    train = cfg.train
    geom = plan_geometry(train, ctx.world_size)
    t_start = time.time()
    stage_dir = ctx.stage_dir
    cache_dir = ctx.cache_dir or stage_dir / ".cache"
    if geom.device == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if ctx.world_size > 1 and geom.deepspeed != "none":
        import deepspeed  # its comm layer must wrap the group, else DeepSpeed sees a world of 1

        deepspeed.init_distributed(dist_backend=geom.backend, rank=ctx.rank, world_size=ctx.world_size)
    elif ctx.world_size > 1:
        ctx.init_distributed(geom.backend)

    merged_only = _merge_only(train, ctx, cache_dir)
    if merged_only is not None:
        return merged_only
    resume = resume_point(ctx)
    check_geometry(ctx, train, geom, resume)  # before any loading: a mismatch is refused at once
    from clinsynth.llm.weights import load_tokenizer

    args = _training_args(train, geom, cfg, ctx.checkpoint_dir or stage_dir / "checkpoints" / "job")
    # TrainingArguments first: under ZeRO-3 the model is then built sharded (zero.Init)
    tokenizer = load_tokenizer(train.model.model_dump(), cache_dir)
    rows = load_examples(ctx.input_dir("dataset"), tokenizer, train.max_seq_len)
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA's initial A matrices come from the global RNG: same seed, same start
    model = build_model(train, geom, cache_dir, ctx.local_rank)
    total, trainable, matmul = count_params(model)
    flops_per_token = 4.0 * matmul + 2.0 * trainable
    peak, peak_source = peak_flops_per_device(geom.device)
    collator, mode = make_collator(model, train.packing, int(tokenizer.pad_token_id), train.max_seq_len)

    resumed_step = int(resume.name.split("-")[1]) if resume else 0
    metrics_path = stage_dir / "metrics.jsonl"
    seen_dir = stage_dir / "seen"
    seen_dir.mkdir(parents=True, exist_ok=True)
    seen_path = seen_dir / f"rank-{ctx.rank:05d}.jsonl"
    if resume is None:
        seen_path.unlink(missing_ok=True)
        if ctx.is_main:
            metrics_path.unlink(missing_ok=True)
            for stale in seen_dir.glob("rank-*.jsonl"):  # ranks of an earlier, larger run
                if int(stale.stem.split("-")[1]) >= ctx.world_size:
                    stale.unlink()
    else:
        _keep_until(seen_path, resumed_step)
        if ctx.is_main:
            _keep_until(metrics_path, resumed_step)
        ctx.logger.info("resuming from %s (step %d)", resume, resumed_step)
    ctx.barrier()

    control = _control_callback(ctx, geom, flops_per_token, peak, metrics_path)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=ExampleDataset(rows),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[control],
        seen_path=seen_path,
    )
    control.trainer = trainer
    if ctx.should_stop():  # asked while loading: nothing new to save, the requeued attempt starts over here
        ctx.save_checkpoint({"hf_checkpoint": str(resume) if resume else None, "step": resumed_step})
        ctx.requeue("asked to stop before training started")
    t_train = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_s = time.perf_counter() - t_train
    step = int(trainer.state.global_step)
    if control.stopped_at is not None:
        path = Path(args.output_dir) / f"checkpoint-{step}"
        ctx.save_checkpoint({"hf_checkpoint": str(path), "step": step})
        ctx.requeue(f"asked to stop; checkpoint at step {step}")

    # ---- outputs
    out_dir = "adapter" if train.method != "full" else "merged"
    tmp = _fresh_dir(stage_dir / f".{out_dir}.tmp") if ctx.is_main else stage_dir / f".{out_dir}.tmp"
    ctx.barrier()
    trainer.save_model(str(tmp))  # every rank: under ZeRO-3 the adapter is gathered from the shards
    if ctx.is_main:
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, stage_dir / out_dir)
    ctx.barrier()

    examples_seen = _count_seen(seen_path, ctx)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    tokens_total = float(trainer.total_tokens)
    if ctx.world_size > 1 and torch.distributed.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if geom.backend == "nccl" else None
        t = torch.tensor([tokens_total], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        tokens_total = float(t.item())
    tps = tokens_total / max(train_s, 1e-9)
    report = {
        "method": train.method,
        "model": train.model.name,
        "steps": step,
        "max_steps": int(trainer.state.max_steps),
        "examples": len(rows),
        "examples_seen": examples_seen,
        "epochs": float(trainer.state.epoch or 0.0),
        "final_loss": losses[-1] if losses else None,
        "train_loss_this_attempt": float(output.training_loss),
        "tokens_useful_this_attempt": int(tokens_total),
        "tokens_per_s_useful": tps,
        "mfu": flops_per_token * tps / (peak * geom.world_size) if peak else None,
        "mfu_formula": "(4*N_matmul + 2*N_trainable) * useful tokens/s / (peak FLOP/s per device * ranks)",
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_source,
        "peak_mem_gb": peak_memory_gb(geom.device),
        "peak_mem_kind": "torch.cuda.max_memory_allocated" if geom.device == "cuda" else "max RSS of rank 0",
        "params_total": total,
        "params_trainable": trainable,
        # packing packs within a micro-batch: say so when no row ever held two examples
        "packing": mode if mode == "padded" or collator.examples > collator.rows else ONE_PER_ROW,
        "examples_per_row": round(collator.examples / collator.rows, 3) if collator.rows else None,
        "world_size": geom.world_size,
        "device": geom.device,
        "backend": geom.backend if geom.world_size > 1 else None,
        "precision": "bf16" if geom.bf16 else "fp32",
        "deepspeed": geom.deepspeed,
        "effective_batch": train.effective_batch,
        "per_device_batch": train.per_device_batch,
        "gradient_accumulation": geom.grad_accum,
        "resumed_from": str(resume) if resume else None,
        "attempt": ctx.attempt,
        "seconds_this_attempt": round(time.time() - t_start, 3),
        "train_seconds_this_attempt": round(train_s, 3),
    }
    if ctx.is_main:
        write_json(stage_dir / "train_report.json", report)
        ctx.tracker.summary(
            {k: v for k, v in report.items() if isinstance(v, (int, float)) and v is not None}
        )
    ctx.barrier()
    return _finish(train, ctx, cache_dir, tokenizer, report)


RESULT_KEYS = ("steps", "final_loss", "examples_seen", "packing", "world_size", "deepspeed")


def _finish(
    train: TrainSection, ctx: StageContext, cache_dir: Path, tokenizer: Any, report: dict[str, Any]
) -> dict[str, Any]:
    """After the last collective: rank 0 merges (train.merge) while the other ranks end their task.

    A stop asked for by then (every rank asks: a collective) checkpoints the phase instead: the
    requeued attempt finds adapter/ and train_report.json and only merges."""
    if train.merge and train.method != "full":
        if ctx.should_stop():
            ctx.save_checkpoint({"phase": "merge", "step": report["steps"]})
            ctx.requeue("asked to stop after training; the requeued attempt merges the adapter")
        if ctx.is_main:
            merge_adapter(train, ctx.stage_dir / "adapter", ctx.stage_dir / "merged", cache_dir, tokenizer)
    return {k: report[k] for k in RESULT_KEYS}


def _merge_only(train: TrainSection, ctx: StageContext, cache_dir: Path) -> dict[str, Any] | None:
    """A requeued attempt after a stop between training and merging: merge, nothing else."""
    state = ctx.load_checkpoint() if ctx.resuming else None
    report_path = ctx.stage_dir / "train_report.json"
    if not state or state.get("phase") != "merge":
        return None
    if not (ctx.stage_dir / "adapter").is_dir() or not report_path.is_file():
        return None  # the outputs are gone: train again from the newest HF checkpoint
    from clinsynth.llm.weights import load_tokenizer

    ctx.logger.info("training finished in an earlier attempt: merging the adapter only")
    tokenizer = load_tokenizer(train.model.model_dump(), cache_dir)
    return _finish(train, ctx, cache_dir, tokenizer, json.loads(report_path.read_text()))


def _count_seen(seen_path: Path, ctx: StageContext) -> int:
    """Examples seen over all ranks (every rank's per-step id lines, read after a barrier)."""
    ctx.barrier()
    n = 0
    for p in sorted(seen_path.parent.glob("rank-*.jsonl")):
        for line in p.read_text().splitlines():
            n += len(json.loads(line)["ids"])
    return n


def merge_adapter(train: TrainSection, adapter: Path, out: Path, cache_dir: Path, tokenizer: Any) -> None:
    """Base weights + adapter merged into one model folder (loads in transformers and vLLM without peft)."""
    import torch
    from peft import PeftModel

    from clinsynth.llm.weights import load_causal_lm

    dtype = (
        torch.bfloat16
        if train.precision == "bf16" or (train.precision == "auto" and torch.cuda.is_available())
        else torch.float32
    )
    base = load_causal_lm(train.model.model_dump(), cache_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = _fresh_dir(out.with_name(f".{out.name}.tmp"))
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _replace_dir(tmp, out)


def seen_counts(stage_dir: Path) -> dict[int, int]:
    """example id -> how often it was trained on, over all ranks and attempts (from seen/rank-*.jsonl)."""
    counts: dict[int, int] = {}
    for p in sorted((stage_dir / "seen").glob("rank-*.jsonl")):
        for line in p.read_text().splitlines():
            for i in json.loads(line)["ids"]:
                counts[int(i)] = counts.get(int(i), 0) + 1
    return counts


def seen_by_step(stage_dir: Path) -> dict[int, list[int]]:
    """step -> sorted example ids of that optimizer step over all ranks."""
    out: dict[int, list[int]] = {}
    for p in sorted((stage_dir / "seen").glob("rank-*.jsonl")):
        for line in p.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(int(rec["step"]), []).extend(int(i) for i in rec["ids"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def read_metrics(stage_dir: Path) -> list[dict[str, Any]]:
    path = stage_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)
