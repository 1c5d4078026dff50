"""Typed config of the extract stage (conf/config.yaml `extract:`, conf/extract/{extractor,backend,model}).

Three extractors: `finetuned` (train.model + the train stage's adapter), `oneshot` (an instruct model
from conf/extract/model with one worked example) and `rules` (no model). What an extractor does not
use is set to null before validation, so it never enters the stage id: flipping the vLLM dtype does
not rerun the rules baseline.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.llm.config import HfBackend, Model, OpenAIBackend, SamplingConfig, VllmBackend

#: how grounding matches a text to catalogue names (clinsynth/extraction/grounding.py)
GroundMethod = Literal["rapidfuzz", "tfidf"]

GuidedBackend = Literal["auto", "guidance", "xgrammar", "outlines"]


class ExtractVllmBackend(VllmBackend):
    structured_outputs_backend: GuidedBackend = identity(
        why="guided decoding's engine: guidance keeps strings valid JSON under maxLength (xgrammar 0.2.8 "
        "does not); auto picks per request"
    )
    disable_any_whitespace: bool = identity(
        why="compact JSON only: fewer tokens, and a looping model cannot fill max_tokens with blanks"
    )
    max_lora_rank: int | None = operational(
        why="null: the adapter's own rank, rounded up to a size vLLM supports; capacity, not output"
    )
    max_loras: int = operational(ge=1, why="adapters per batch: capacity, not output")


class ExtractOpenAIBackend(OpenAIBackend):
    lora_name: str = operational(
        why="finetuned: the name the server serves the train stage's adapter under (--lora-modules NAME=DIR)"
    )


ExtractBackend = Annotated[ExtractVllmBackend | ExtractOpenAIBackend | HfBackend, Field(discriminator="kind")]


class FinetunedExtractor(StageConfig):
    kind: Literal["finetuned"] = identity()
    model: Model = identity(why="the base model the adapter was trained on (train.model)")
    weights: Literal["auto", "adapter", "merged"] = identity(
        why="adapter: base + LoRA (vLLM LoRARequest, peft); merged: the train stage's merged/ folder; "
        "auto: merged/ when the train stage wrote it (train.merge, full fine-tuning), else the adapter"
    )


class OneshotExtractor(StageConfig):
    kind: Literal["oneshot"] = identity()
    schema_in_prompt: Literal["compact", "json_schema", "none"] = identity(
        why="what the system turn says about the output besides the worked example"
    )


class RulesExtractor(StageConfig):
    kind: Literal["rules"] = identity()


Extractor = Annotated[FinetunedExtractor | OneshotExtractor | RulesExtractor, Field(discriminator="kind")]


class GuidedConfig(StageConfig):
    enabled: bool = identity(why="hold the output to the schema where the backend can (vllm, openai)")
    max_items: int = identity(ge=1, why="maxItems of every list in the decoding schema")
    max_string: int = identity(ge=1, why="maxLength of every free-text string in the decoding schema")


#: chunk = this x the backend's batch by default: vLLM's batch drains at the end of every engine call (the
#: last long answers decode nearly alone), so one call holds several batches' worth of letters
CHUNK_PER_BATCH = 4
#: the rules baseline's chunk (no engine: only the atomic write's size)
RULES_CHUNK = 1024

#: keys only the LLM extractors read: nulled for rules so that they stay out of its stage id
LLM_KEYS = ("backend", "model", "sampling", "max_tokens", "guided", "enable_thinking", "reasoning_parser")


class ExtractSection(StageConfig):
    extractor: Extractor
    backend: ExtractBackend | None = identity(why="LLM extractors; null (ignored) for rules")
    model: Model | None = identity(
        None, why="oneshot: the instruct model (extract/model=...); null (no group) for the others"
    )
    sampling: SamplingConfig | None = identity(why="the study extracts greedily (temperature 0)")
    max_tokens: int | None = identity(ge=1, why="per letter; a longer answer is cut and marked truncated")
    guided: GuidedConfig | None = identity()
    enable_thinking: bool | None = identity(
        None,
        why="oneshot: chat_template_kwargs enable_thinking (the qwen3_* presets set false); null: the "
        "template's default; finetuned: dropped (prompted exactly as trained)",
    )
    reasoning_parser: str | None = identity(
        None,
        why="vLLM reasoning parser (structured_outputs_config.reasoning_parser): guided decoding holds "
        "the answer after the model's reasoning instead of forcing '{' as its first token (gpt_oss_*: "
        "openai_gptoss; qwen3_8b/32b: qwen3); null: none",
    )
    ground: bool = identity(
        why="map missing codes, and codes of no catalogue category, from their text (predictions/); "
        "the codes as extracted stay in ungrounded/"
    )
    ground_method: GroundMethod = identity(
        why="how a text is matched to catalogue titles and synonyms, rapidfuzz or tfidf: WRatio + token_set, "
        "or the cosine of character 2-4-gram TF-IDF vectors (top-1 0.83 vs 0.76, benchmarks/grounding.py)"
    )
    ground_threshold: float | None = identity(
        ge=0,
        le=100,
        why="score (0-100) a text must reach; null: the method's own (grounding.DEFAULT_THRESHOLD)",
    )
    test_letters: bool = identity(why="the synthetic test split (needs sample + generate)")
    dev_letters: bool = identity(why="the six GraSCCo development letters, where the corpus copy is present")
    letters: str | None = identity(
        why="a folder of external *.txt letters (searched recursively); names, sizes, contents enter the id"
    )
    chunk: int | None = operational(
        ge=1,
        why="letters per engine call and atomic write (each letter has its own seed); null: CHUNK_PER_BATCH "
        "x the backend's batch (vllm max_num_seqs, openai concurrency, hf batch_size), rules RULES_CHUNK",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_unused(cls, data: Any) -> Any:
        kind = (data.get("extractor") or {}).get("kind") if isinstance(data, dict) else None
        if kind == "rules":
            data = {**data, **dict.fromkeys(LLM_KEYS)}
        elif kind == "finetuned":
            # prompted as trained (chat_template_kwargs found from the training tokenizer): not a choice
            data = {**data, "enable_thinking": None}
        return data

    @model_validator(mode="after")
    def _fits(self) -> ExtractSection:
        kind = self.extractor.kind
        if not (self.test_letters or self.dev_letters or self.letters):
            raise ValueError(
                "nothing to extract: set extract.test_letters, extract.dev_letters or extract.letters"
            )
        if kind == "rules":
            return self
        if self.backend is None:
            raise ValueError(f"extractor {kind} needs a backend: extract/backend=vllm|openai|hf")
        if self.sampling is None or self.max_tokens is None or self.guided is None:
            raise ValueError(
                f"extractor {kind} needs extract.sampling, extract.max_tokens and extract.guided"
            )
        if kind == "oneshot" and self.model is None:
            raise ValueError(
                "extractor oneshot needs a model: extract/model=smollm2_135m|qwen3_8b|llama3_1_8b|"
                "gpt_oss_20b|..."
            )
        if kind == "finetuned" and self.model is not None:
            raise ValueError(
                "extract.model is the one-shot model; the fine-tuned extractor runs train.model + its "
                "adapter (extract.extractor.model): drop extract/model"
            )
        return self

    @property
    def chunk_size(self) -> int:
        """extract.chunk, or CHUNK_PER_BATCH x the backend's batch width when null."""
        if self.chunk is not None:
            return self.chunk
        b = self.backend
        width = (
            b.max_num_seqs if isinstance(b, ExtractVllmBackend)
            else b.concurrency if isinstance(b, ExtractOpenAIBackend)
            else b.batch_size if isinstance(b, HfBackend)
            else None
        )  # fmt: skip
        return RULES_CHUNK if width is None else CHUNK_PER_BATCH * width

    @property
    def llm_model(self) -> Model | None:
        """The model the LLM extractor runs (the base model for finetuned)."""
        ex = self.extractor
        return ex.model if isinstance(ex, FinetunedExtractor) else self.model


class ExtractConfig(StageConfig):
    seed: int = identity()
    extract: ExtractSection


__all__ = [
    "CHUNK_PER_BATCH",
    "RULES_CHUNK",
    "ExtractBackend",
    "ExtractConfig",
    "ExtractOpenAIBackend",
    "ExtractSection",
    "ExtractVllmBackend",
    "Extractor",
    "FinetunedExtractor",
    "GuidedConfig",
    "OneshotExtractor",
    "RulesExtractor",
]
