"""Prompts: the fine-tuned extractor is prompted exactly as in training; the one-shot prompt holds one
worked example whose gold is schema-valid, catalogue-clean and written in the canonical answer form."""

from __future__ import annotations

from clinsynth.extraction.prompts import (
    EXAMPLE_GOLD,
    EXAMPLE_LETTER,
    example_answer,
    finetuned_messages,
    oneshot_messages,
)
from clinsynth.schema import ClinicalExtraction, catalogue_issues
from clinsynth.terminology import load_catalog
from clinsynth.training.answer import canonical_answer
from clinsynth.training.chat import SYSTEM, compact_schema, prompt_messages

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
