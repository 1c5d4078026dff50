"""Prompts of the LLM extractors.

- `finetuned`: exactly the training prompt (clinsynth.training.chat.prompt_messages with the
  dataset's `schema_in_prompt`), rendered with the chat-template switches under which the generation
  prompt is, token for token, what training put before every answer (`trained_template_kwargs`:
  Qwen3's template writes an empty think block before a trained answer, which only
  enable_thinking=false writes into the generation prompt): a fine-tuned model sees at inference
  what it saw in training, whatever extract.enable_thinking says.
- `oneshot`: general instruct models, as in the study: the same rules, the schema, and ONE worked
  example (a letter and its answer in the canonical compact form) as a user/assistant exchange
  before the letter. The example letter and its gold were written for this module: a fictitious
  patient, no sentence from any corpus letter.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from clinsynth.schema import ClinicalExtraction, json_schema
from clinsynth.training.answer import canonical_answer
from clinsynth.training.chat import (
    SYSTEM,
    TemplateError,
    compact_schema,
    example_messages,
    prompt_messages,
    tokenize_example,
)

#: bump when the one-shot wording or example changes (it enters the extract stage's version)
ONESHOT_VERSION = 1

EXAMPLE_LETTER = """\
Entlassungsbrief

Sehr geehrte Frau Kollegin,

wir berichten über Herrn Konrad Beispiel, geb. 14.05.1961, der sich vom 03.02.2025 bis zum \
06.02.2025 in unserer stationären Behandlung befand.

Diagnosen:
- Adenokarzinom des Colon sigmoideum (C18.7), ED 10/2024, pT3 pN1b (2/21) cM0, G2, L1 V0 R0
  - Z. n. Sigmaresektion 11/2024
  - aktuell adjuvante Chemotherapie nach FOLFOX, Zyklus 4
- Arterielle Hypertonie
- Kein Anhalt für Lebermetastasen

Verlauf:
Die Aufnahme erfolgte zur Fortführung der adjuvanten Chemotherapie. Oxaliplatin 85 mg/m² i.v. an \
Tag 1 wurde gut vertragen. Im Aufnahmelabor Hb 11,8 g/dl (erniedrigt), Leukozyten 5,2 /nl, \
CEA 2,1 ng/ml. Die Sonographie des Abdomens ergab keinen Hinweis auf Lebermetastasen.

Medikation bei Entlassung:
Ramipril 5 mg 1-0-0-0
Pantoprazol 40 mg 1-0-0-0
Ondansetron 8 mg bei Bedarf

Nikotin: Nichtraucher.

Mit freundlichen kollegialen Grüßen"""

EXAMPLE_GOLD: dict[str, Any] = {
    "encounter": {
        "admission": "2025-02-03",
        "discharge": "2025-02-06",
        "type": "inpatient",
        "letter_type": "Entlassungsbrief",
    },
    "patient": {"sex": "male", "birth_date": "1961-05-14", "name": "Konrad Beispiel"},
    "diagnoses": [
        {"text": "Adenokarzinom des Colon sigmoideum", "icd10gm": "C18.7", "role": "main", "date": "2024-10"},
        {"text": "Arterielle Hypertonie", "icd10gm": "I10", "role": "secondary"},
        {"text": "Lebermetastasen", "icd10gm": "C78.7", "role": "secondary", "assertion": "negated"},
    ],
    "tumors": [
        {
            "entity": "Adenokarzinom des Colon sigmoideum",
            "icd10gm": "C18.7",
            "morphology": "8140/3",
            "histology": "Adenokarzinom",
            "grading": "G2",
            "tnm": {
                "t": {"prefix": "p", "value": "T3"},
                "n": {"prefix": "p", "value": "N1b", "nodes": "2/21"},
                "m": {"prefix": "c", "value": "M0"},
                "l": "L1",
                "v": "V0",
                "r": "R0",
            },
            "date": "2024-10",
        }
    ],
    "procedures": [
        {"text": "Sigmaresektion", "ops": "5-455.7", "date": "2024-11", "assertion": "historical"},
        {"text": "Sonographie des Abdomens"},
    ],
    "medications": [
        {
            "name": "Oxaliplatin",
            "atc": "L01XA03",
            "dose": 85,
            "unit": "mg/m2",
            "route": "i.v.",
            "context": "therapy",
            "regimen": "FOLFOX",
            "cycle": 4,
            "day": 1,
            "intent": "adjuvant",
        },
        {
            "name": "Ramipril",
            "atc": "C09AA05",
            "dose": 5,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        },
        {
            "name": "Pantoprazol",
            "atc": "A02BC02",
            "dose": 40,
            "unit": "mg",
            "schedule": [1, 0, 0, 0],
            "context": "discharge",
        },
        {
            "name": "Ondansetron",
            "atc": "A04AA01",
            "dose": 8,
            "unit": "mg",
            "as_needed": True,
            "context": "discharge",
        },
    ],
    "labs": [
        {"name": "Hb", "loinc": "718-7", "value": 11.8, "unit": "g/dL", "flag": "low"},
        {"name": "Leukozyten", "loinc": "6690-2", "value": 5.2, "unit": "/nL"},
        {"name": "CEA", "loinc": "2039-6", "value": 2.1, "unit": "ng/mL"},
    ],
    "risk_factors": [{"kind": "smoking", "text": "Nichtraucher", "assertion": "negated"}],
}


@functools.cache
def example_answer() -> str:
    """The worked example's answer in the canonical compact form (validated against schema v2)."""
    return canonical_answer(ClinicalExtraction.model_validate(EXAMPLE_GOLD))


def _schema_block(schema_in_prompt: str) -> str | None:
    if schema_in_prompt == "compact":
        return compact_schema()
    if schema_in_prompt == "json_schema":
        return orjson.dumps(json_schema()).decode()
    if schema_in_prompt == "none":
        return None
    raise ValueError(f"schema_in_prompt must be compact, json_schema or none, not {schema_in_prompt!r}")


def oneshot_messages(letter_text: str, *, schema_in_prompt: str) -> list[dict[str, str]]:
    """System (rules + schema), the worked example as one user/assistant exchange, then the letter."""
    schema = _schema_block(schema_in_prompt)
    system = f"{SYSTEM}\n\nSchema:\n{schema}" if schema else SYSTEM
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Letter:\n{EXAMPLE_LETTER}"},
        {"role": "assistant", "content": example_answer()},
        {"role": "user", "content": f"Letter:\n{letter_text}"},
    ]


def finetuned_messages(letter_text: str, *, schema_in_prompt: str) -> list[dict[str, str]]:
    """The training prompt, unchanged."""
    return prompt_messages(letter_text, schema_in_prompt=schema_in_prompt)


#: chat-template switches tried, in order, for the generation prompt a fine-tuned model was trained on
#: (training renders with none; a template may still write text before the answer, e.g. Qwen3's think block)
TEMPLATE_CANDIDATES: tuple[dict[str, Any], ...] = ({}, {"enable_thinking": False}, {"enable_thinking": True})


def trained_template_kwargs(tokenizer: Any, *, schema_in_prompt: str) -> dict[str, Any]:
    """The chat_template_kwargs under which the generation prompt's tokens are exactly the prompt tokens
    of a training example (clinsynth.training.chat.tokenize_example), found on a probe letter."""
    conversation = example_messages("Brief.", "{}", schema_in_prompt=schema_in_prompt)
    example = tokenize_example(tokenizer, conversation)
    trained = example.input_ids[: example.n_prompt]
    for kwargs in TEMPLATE_CANDIDATES:
        text = tokenizer.apply_chat_template(
            conversation[:-1], tokenize=False, add_generation_prompt=True, **kwargs
        )
        # as the backends tokenize a rendered chat: the template holds any BOS itself
        if tokenizer(str(text), add_special_tokens=False)["input_ids"] == trained:
            return dict(kwargs)
    before = tokenizer.decode(trained[-8:])
    raise TemplateError(
        f"chat template of {getattr(tokenizer, 'name_or_path', '?')}: no generation prompt (tried "
        f"{list(TEMPLATE_CANDIDATES)}) is the prompt the model was trained on (ending {before!r}); "
        "set train.model.chat_template to a template whose generation prompt ends where the answer starts"
    )


__all__ = [
    "EXAMPLE_GOLD",
    "EXAMPLE_LETTER",
    "ONESHOT_VERSION",
    "TEMPLATE_CANDIDATES",
    "example_answer",
    "finetuned_messages",
    "oneshot_messages",
    "trained_template_kwargs",
]
