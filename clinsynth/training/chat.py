"""Chat-format training examples: the prompt (system + user turn), the answer turn, and token labels.

The system turn says what to extract and how (assertions, bare codes, only what the letter states,
compact JSON); the user turn carries the schema (`schema_in_prompt`: a compact field list generated
from the pydantic model, the full JSON Schema, or nothing) and the letter. The same prompt is used at
inference (issue 12), so `PROMPT_VERSION` is bumped whenever its text changes.

Labels come from the chat template's own rendering: the prompt rendered with
``add_generation_prompt=True`` must be a prefix of the whole conversation, and its tokens a prefix of
the conversation's tokens; only the assistant content and the end-of-turn token(s) after it are
labelled. Nothing is masked by pad id (SmolLM2: pad == eos == <|im_end|>).
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import orjson
from pydantic import BaseModel

from clinsynth.schema import ISO_DATE, ClinicalExtraction, Fact, json_schema

#: bump when the system text, the schema rendering or the user turn layout changes
PROMPT_VERSION = 2

SchemaInPrompt = Literal["compact", "json_schema", "none"]

SYSTEM = """\
You extract structured clinical facts from a German hospital letter (discharge, transfer or \
physician's letter). Reply with exactly one JSON object in the schema below, written compactly \
(no indentation, no line breaks), and nothing else.
Rules:
- Extract only what the letter states. Do not infer facts, values or dates that are not written.
- Every fact has an assertion: "present", "negated" (the letter rules it out, e.g. "kein Anhalt \
für ..."), "historical" (past and over, e.g. "Z. n. ..."), or "suspected" (e.g. "V. a. ...").
- Codes are bare (C50.4, 5-870.a2, L01XC03, 2160-0): no system name, no dagger, asterisk or \
exclamation mark (an ICD-10-GM mark goes to icd10gm_mark). Give a code only as specific as the \
letter supports: a code written in the letter is copied as written; never add digits the text \
does not justify.
- Dates as YYYY, YYYY-MM or YYYY-MM-DD; numbers as JSON numbers, not strings.
- Leave out keys without a value and empty lists."""

#: what the compact schema calls each code field (the pattern alone says little to a model)
_CODE_NAMES = {
    "icd10gm": "ICD-10-GM",
    "ops": "OPS",
    "atc": "ATC",
    "loinc": "LOINC",
    "topography": "ICD-O-3 topography",
    "morphology": "ICD-O-3 morphology",
}


def _pattern(field: Any) -> str | None:
    for m in getattr(field, "metadata", ()):
        if getattr(m, "pattern", None):
            return str(m.pattern)
    return None


def _type(annotation: Any, name: str, pattern: str | None) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = args[0]
        for meta in args[1:]:
            pattern = pattern or _pattern(meta)
        return _type(inner, name, pattern)
    if origin in (Union, types.UnionType):
        return "|".join(_type(a, name, pattern) for a in args if a is not type(None))
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return f"[{_type(args[0], name, None)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation)
    if annotation is str:
        if name in _CODE_NAMES:
            return _CODE_NAMES[name]
        if pattern == ISO_DATE:
            return "date"
        return "str"  # patterns (TNM, grading) cost hundreds of tokens; the answers teach them
    return {int: "int", float: "number", bool: "bool"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _model(model: type[BaseModel]) -> str:
    parts = []
    for name, field in model.model_fields.items():
        if name == "assertion" and issubclass(model, Fact):
            continue  # said once for every fact (compact_schema's first line)
        req = "!" if field.is_required() else ""
        parts.append(f"{name}{req}:{_type(field.annotation, name, _pattern(field))}")
    return "{" + ",".join(parts) + "}"


@functools.cache
def compact_schema() -> str:
    """The schema as one field per line of the top object, generated from the pydantic model
    (`!` marks a required key; a|b|c lists the allowed values; [x] is a list of x)."""
    assertion = _type(Fact.model_fields["assertion"].annotation, "assertion", None)
    lines = [f"every fact in a list also has assertion:{assertion} (default present)"]
    lines += [
        f"{name}:{_type(field.annotation, name, _pattern(field))}"
        for name, field in ClinicalExtraction.model_fields.items()
    ]
    return "\n".join(lines)


@functools.cache
def _schema_text(schema_in_prompt: str) -> str | None:
    if schema_in_prompt == "compact":
        return compact_schema()
    if schema_in_prompt == "json_schema":
        return orjson.dumps(json_schema()).decode()
    if schema_in_prompt == "none":
        return None
    raise ValueError(f"schema_in_prompt must be compact, json_schema or none, not {schema_in_prompt!r}")


def prompt_messages(letter_text: str, *, schema_in_prompt: str) -> list[dict[str, str]]:
    """System + user turn for one letter (the same at training and at inference)."""
    schema = _schema_text(schema_in_prompt)
    user = f"Schema:\n{schema}\n\nLetter:\n{letter_text}" if schema else f"Letter:\n{letter_text}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def example_messages(letter_text: str, answer: str, *, schema_in_prompt: str) -> list[dict[str, str]]:
    """The prompt turns + the assistant turn holding the canonical answer."""
    return [
        *prompt_messages(letter_text, schema_in_prompt=schema_in_prompt),
        {"role": "assistant", "content": answer},
    ]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 except the answer and its end-of-turn token(s)
    n_prompt: int  # unlabelled tokens at the start (everything up to the assistant content)
    n_answer: int  # labelled tokens (answer + end of turn)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


class TemplateError(ValueError):
    """The chat template cannot give exact labels (the prompt is not a prefix of the conversation)."""


class ExampleTooLong(ValueError):
    def __init__(self, n_tokens: int, max_tokens: int) -> None:
        super().__init__(f"example has {n_tokens} tokens, more than max_tokens={max_tokens}")
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    )


def _split(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, str]:
    """(prompt text, prompt + answer + end-of-turn text) from the template's own rendering."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training conversation ends with the assistant turn")
    answer = messages[-1]["content"]
    prompt = _render(tokenizer, messages[:-1], True)
    full = _render(tokenizer, messages, False)
    name = getattr(tokenizer, "name_or_path", "?")
    if not full.startswith(prompt):
        raise TemplateError(
            f"chat template of {name}: the prompt rendered with add_generation_prompt=True is not a prefix "
            "of the whole conversation, so the answer tokens cannot be told apart; set the model's "
            "chat_template to one that renders the assistant turn after the generation prompt"
        )
    rest = full[len(prompt) :]
    at = rest.find(answer)
    if at < 0 or rest.find(answer, at + 1) >= 0:
        raise TemplateError(f"chat template of {name}: the assistant content is not rendered verbatim once")
    # what a template puts before the content (an empty think block) is prompt, never labelled;
    # after it: the end-of-turn token(s), without the whitespace that separates turns
    eot = rest[at + len(answer) :].rstrip()
    if not eot:
        raise TemplateError(
            f"chat template of {name}: nothing ends the assistant turn (no end-of-turn token)"
        )
    return prompt + rest[:at], prompt + rest[: at + len(answer)] + eot


def tokenize_examples(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    max_tokens: int | None = None,
    *,
    exact_every: int = 1,
) -> list[TokenizedExample | None]:
    """`tokenize_example` for many conversations in batch encodes; None where over max_tokens.

    Each conversation is encoded once, with character offsets: the prompt ends where a token ends at
    the prompt's last character. Every `exact_every`-th conversation (1: all, the default) is also
    held to the strict rule, the prompt encoded on its own being a prefix of the whole; the dataset
    stage checks one per batch, since the boundary is the template's (the same text before every
    answer's opening brace), which halves the tokenizer's work at paper scale.
    """
    texts = [_split(tokenizer, m) for m in conversations]
    if not texts:
        return []
    name = getattr(tokenizer, "name_or_path", "?")
    enc = tokenizer([f for _, f in texts], add_special_tokens=False, return_offsets_mapping=True)
    strict = list(range(0, len(texts), max(1, exact_every)))
    enc_prompt = tokenizer([texts[i][0] for i in strict], add_special_tokens=False)["input_ids"]
    exact = dict(zip(strict, enc_prompt, strict=True))
    out: list[TokenizedExample | None] = []
    for i, ((prompt, _), ids, offsets) in enumerate(
        zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True)
    ):
        cut = len(prompt)
        n_p = sum(1 for _, end in offsets if end <= cut)
        if (
            n_p == 0
            or offsets[n_p - 1][1] != cut
            or n_p >= len(ids)
            or (n_p < len(ids) and offsets[n_p][0] < cut)
        ):
            raise TemplateError(
                f"tokenizer {name}: no token boundary where the prompt ends (a token spans the turn "
                "boundary); labels would be inexact"
            )
        if i in exact and ids[:n_p] != exact[i]:
            raise TemplateError(
                f"tokenizer {name}: the prompt's tokens are not a prefix of the conversation's tokens "
                "(a merge across the turn boundary); labels would be inexact"
            )
        if max_tokens is not None and len(ids) > max_tokens:
            out.append(None)
            continue
        out.append(TokenizedExample(list(ids), [-100] * n_p + list(ids[n_p:]), n_p, len(ids) - n_p))
    return out


def tokenize_example(
    tokenizer: Any, messages: Sequence[dict[str, str]], max_tokens: int | None = None
) -> TokenizedExample:
    """Token ids and labels of one conversation (prompt turns + assistant turn).

    Raises TemplateError when the template or tokenizer cannot give exact labels, ExampleTooLong over
    max_tokens.
    """
    (ex,) = tokenize_examples(tokenizer, [messages])
    if ex is None:  # pragma: no cover - max_tokens is applied below
        raise AssertionError
    if max_tokens is not None and ex.n_tokens > max_tokens:
        raise ExampleTooLong(ex.n_tokens, max_tokens)
    return ex


__all__ = [
    "PROMPT_VERSION",
    "SYSTEM",
    "ExampleTooLong",
    "TemplateError",
    "TokenizedExample",
    "compact_schema",
    "example_messages",
    "prompt_messages",
    "tokenize_example",
    "tokenize_examples",
]
