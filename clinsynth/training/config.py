"""Typed configs of the dataset and train stages (conf/config.yaml `dataset:`/`train:`, conf/train/*).

The dataset stage reads `dataset.model` (an interpolation of `train.model` in conf/config.yaml): token
counts and the length rule depend on the tokenizer and chat template of the model that will be trained,
and on nothing else of `train`, so a LoRA-rank sweep shares one dataset. Batch geometry that does not
change the optimisation (per-device batch, logging, checkpoint cadence, attention kernel) is operational.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.llm.config import Model


class DatasetSection(StageConfig):
    model: Model = identity(why="the tokenizer and chat template the examples are counted and cut with")
    include_failed: bool = identity(
        why="letters that failed verification go into every split too (default: no); their gold does not "
        "match their text, so they would mislead evaluation as much as training"
    )
    max_tokens: int = identity(ge=64, why="examples longer than this (prompt + answer) are dropped, counted")
    schema_in_prompt: Literal["compact", "json_schema", "none"] = identity(
        why="what the user turn says about the output: a compact field list, the full JSON Schema, nothing"
    )
    splits: list[Literal["train", "val", "test"]] = identity(min_length=1)


class LoraSection(StageConfig):
    r: int = identity(ge=1)
    alpha: int = identity(ge=1)
    dropout: float = identity(ge=0, lt=1)
    #: "all-linear" or module names (q_proj, k_proj, ...); never lm_head with a fused CE loss
    target_modules: str | list[str] = identity()
    #: adapters in the last N decoder layers only (None: every layer): backpropagation then stops below
    #: them, so a step costs the forward pass plus N layers' backward; fewer adapters learn slower
    last_layers: int | None = identity(ge=1)

    @model_validator(mode="after")
    def _no_lm_head(self) -> LoraSection:
        names = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        if any(n == "lm_head" or n.endswith(".lm_head") for n in names):
            raise ValueError(
                "train.lora.target_modules must not name lm_head: its adapter would be tied to the input "
                "embedding in models that share them, vLLM's LoRA does not load it, and fused "
                "cross-entropy kernels skip it; use all-linear (which leaves lm_head out) or the "
                "attention/MLP projections"
            )
        return self


class QloraSection(StageConfig):
    quant_type: Literal["nf4", "fp4"] = identity()
    double_quant: bool = identity()
    compute_dtype: Literal["bfloat16", "float16", "float32"] = identity()


class DeepSpeedSection(StageConfig):
    """conf/train/deepspeed/{none,zero2,zero3}.yaml: the DeepSpeed JSON config as YAML ("auto" values are
    filled from the Trainer's arguments), or none."""

    name: Literal["none", "zero2", "zero3"] = identity()
    config: dict[str, Any] | None = identity(why="passed to TrainingArguments(deepspeed=...) as a dict")

    @model_validator(mode="after")
    def _config_fits_name(self) -> DeepSpeedSection:
        if (self.name == "none") != (self.config is None):
            raise ValueError("train.deepspeed.config must be null exactly when train.deepspeed.name is none")
        return self


class TrainSection(StageConfig):
    method: Literal["lora", "qlora", "full"] = identity()
    model: Model = identity()
    deepspeed: DeepSpeedSection = identity()
    lora: LoraSection = identity(why="used by lora and qlora; ignored by full")
    qlora: QloraSection = identity(why="used by qlora only (needs bitsandbytes and a GPU)")
    lr: float = identity(gt=0)
    lr_scheduler: str = identity(why="transformers scheduler name: linear, cosine, constant_with_warmup")
    warmup_ratio: float = identity(ge=0, lt=1)
    weight_decay: float = identity(ge=0)
    epochs: float = identity(gt=0)
    max_steps: int | None = identity(ge=1, why="caps optimizer steps (smoke, tests); null: epochs decide")
    effective_batch: int = identity(ge=1, why="examples per optimizer step over all ranks (the study: 64)")
    per_device_batch: int = operational(
        ge=1, why="micro-batch; gradient accumulation makes up effective_batch, same optimisation"
    )
    max_seq_len: int = identity(ge=64, why="rows are cut to this (packing: the row length)")
    packing: bool = identity(why="several examples per row, no attention across them (position ids)")
    precision: Literal["auto", "bf16", "fp32"] = identity(why="auto: bf16 on GPU, fp32 on CPU")
    gradient_checkpointing: bool = operational(why="recomputes activations: memory for time, same math")
    attn_implementation: str | None = operational(
        why="sdpa, eager, flash_attention_2: the kernel, not the math"
    )
    save_steps: int = operational(ge=1, why="checkpoint cadence for preemption; resume is exact")
    logging_steps: int = operational(ge=1, why="how often loss/lr/grad norm/throughput are logged")
    merge: bool = identity(why="also write merged full weights beside the adapter")

    @model_validator(mode="after")
    def _method_fits(self) -> TrainSection:
        if self.method == "qlora" and self.deepspeed.name == "zero3":
            raise ValueError(
                "train.method=qlora does not shard with ZeRO-3: use train/deepspeed=zero2 or none"
            )
        return self


class DatasetConfig(StageConfig):
    seed: int = identity()
    dataset: DatasetSection


class TrainConfig(StageConfig):
    seed: int = identity()
    train: TrainSection
