"""Prompts: the fine-tuned extractor is prompted exactly as in training, token for token (the chat
template's switches included); the one-shot prompt holds one worked example whose gold is schema-valid,
catalogue-clean and written in the canonical answer form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clinsynth.artifacts.sft import stats_path
from clinsynth.core.context import StageContext
from clinsynth.extraction.prompts import (
    EXAMPLE_GOLD,
    EXAMPLE_LETTER,
    example_answer,
    finetuned_messages,
    oneshot_messages,
)
from clinsynth.schema import ClinicalExtraction, catalogue_issues
from clinsynth.stages import extract
from clinsynth.terminology import load_catalog
from clinsynth.training.answer import canonical_answer
from clinsynth.training.chat import (
    PROMPT_VERSION,
    SYSTEM,
    compact_schema,
    example_messages,
    prompt_messages,
    tokenize_example,
)
from launchers.plan import stage_config

pytest_plugins = ["tests.llm_fixtures"]

LETTER = "Diagnosen: Prostatakarzinom (C61)."


def test_the_fine_tuned_prompt_is_the_training_prompt() -> None:
    for schema in ("compact", "json_schema", "none"):
        assert finetuned_messages(LETTER, schema_in_prompt=schema) == prompt_messages(
            LETTER, schema_in_prompt=schema
        )


def test_the_one_shot_prompt_holds_one_worked_example_before_the_letter() -> None:
    msgs = oneshot_messages(LETTER, schema_in_prompt="compact")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith(SYSTEM) and compact_schema() in msgs[0]["content"]
    assert msgs[1]["content"] == f"Letter:\n{EXAMPLE_LETTER}" and msgs[3]["content"] == f"Letter:\n{LETTER}"
    assert msgs[2]["content"] == example_answer()
    assert oneshot_messages(LETTER, schema_in_prompt="none")[0]["content"] == SYSTEM


def test_the_example_gold_is_valid_catalogue_clean_and_canonical() -> None:
    gold = ClinicalExtraction.model_validate(EXAMPLE_GOLD)
    assert catalogue_issues(gold, load_catalog()) == []
    assert example_answer() == canonical_answer(gold)
    assert " " not in example_answer().split('"')[0]  # compact JSON
    # every category the study scores is shown once
    assert gold.diagnoses and gold.tumors and gold.procedures and gold.medications and gold.labs
    assert {d.assertion for d in gold.diagnoses} == {"present", "negated"}
    # what the gold says is written in the example letter
    for text in ("C18.7", "pT3", "2/21", "Oxaliplatin 85 mg/m²", "Ramipril 5 mg", "Hb 11,8", "Nichtraucher"):
        assert text in EXAMPLE_LETTER


# A Qwen3-style template on the tiny tokenizer: an empty think block before the last answer whatever
# enable_thinking says, in the generation prompt only with enable_thinking=false (as Qwen3's own does).
THINKING_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}"
    "{%- if loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{ m['content'] + eos_token + '\\n' }}"
    "{%- else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def _train_folders(root: Path, tokenizer: Any) -> dict[str, Path]:
    """A dataset stage folder (stats) and a train stage folder (adapter + the tokenizer training saved)."""
    dataset, train = root / "dataset", root / "train"
    stats_path(dataset).parent.mkdir(parents=True, exist_ok=True)
    stats_path(dataset).write_text(
        json.dumps({"prompt_version": PROMPT_VERSION, "schema_in_prompt": "compact"})
    )
    (train / "adapter").mkdir(parents=True)
    (train / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    tokenizer.save_pretrained(str(train / "adapter"))
    return {"dataset": dataset, "train": train}


@pytest.mark.parametrize("template", ["tiny", "thinking"])
def test_the_fine_tuned_model_is_prompted_token_for_token_as_trained(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, template: str
) -> None:
    """Whatever extract.enable_thinking says, the stage's chat_template_kwargs render a generation prompt
    whose tokens are exactly the prompt part of the training example (then the answer follows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if template == "thinking":
        tokenizer.chat_template = THINKING_TEMPLATE
    inputs = _train_folders(tmp_path, tokenizer)
    cfg = stage_config(
        "extract", ["extract/extractor=finetuned", "train/model=tiny", "extract.enable_thinking=true"]
    )
    assert cfg.extract.enable_thinking is None  # not a choice for the fine-tuned model: out of its id
    ctx = StageContext(
        stage="extract", stage_id="t", stage_dir=tmp_path / "extract", inputs=inputs, cache_dir=tmp_path
    )
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        extract, "_make_backend", lambda backend_cfg, *a: seen.update(backend_cfg) or object()
    )
    extract._runner(cfg, ctx, None)
    kwargs = seen.get("chat_template_kwargs") or {}
    assert kwargs == ({"enable_thinking": False} if template == "thinking" else {})

    answer = example_answer()
    trained = tokenize_example(tokenizer, example_messages(LETTER, answer, schema_in_prompt="compact"))
    # rendered and tokenized as the backends do (vLLM's chat, hf: the template's text, no added BOS)
    text = tokenizer.apply_chat_template(
        finetuned_messages(LETTER, schema_in_prompt="compact"),
        tokenize=False,
        add_generation_prompt=True,
        **kwargs,
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == trained.input_ids[: len(ids)] and len(ids) == trained.n_prompt
    if template == "thinking":  # what the thinking default would have sent: not the trained prompt
        plain = tokenizer.apply_chat_template(
            finetuned_messages(LETTER, schema_in_prompt="compact"), tokenize=False, add_generation_prompt=True
        )
        assert len(tokenizer(plain, add_special_tokens=False)["input_ids"]) < trained.n_prompt


def test_a_one_shot_model_gets_extract_enable_thinking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = StageContext(stage="extract", stage_id="t", stage_dir=tmp_path, inputs={}, cache_dir=tmp_path)
    on = stage_config(
        "extract", ["extract/extractor=oneshot", "extract/model=tiny", "extract.enable_thinking=true"]
    )
    assert extract._template_kwargs(on.extract, ctx, {}, None) == {"enable_thinking": True}
    off = stage_config("extract", ["extract/extractor=oneshot", "extract/model=tiny"])
    assert extract._template_kwargs(off.extract, ctx, {}, None) == {}
