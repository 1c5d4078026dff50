"""The guided-decoding schema: schema v2, bounded, codes by pattern; and the grammar really constrains.

The grammar checks run llguidance (vLLM's guidance backend, which conf/extract/backend/vllm.yaml pins)
on the tiny tokenizer: token by token, as the engine does, without starting an engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clinsynth.extraction.guided import (
    TEXT_PATTERN,
    check_decoding_schema,
    decoding_schema,
    strict_variant,
)
from clinsynth.extraction.prompts import example_answer
from clinsynth.schema import ClinicalExtraction

pytest_plugins = ["tests.llm_fixtures"]


def _nodes(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node, *(n for v in node.values() for n in _nodes(v))]
    if isinstance(node, list):
        return [n for v in node for n in _nodes(v)]
    return []


def test_the_schema_is_bounded_and_holds_no_code_enumeration() -> None:
    schema = decoding_schema(7, 50)
    assert check_decoding_schema(schema) == []
    nodes = _nodes(schema)
    assert all(
        n["maxItems"] <= 7 or n.get("minItems") == n["maxItems"] for n in nodes if n.get("type") == "array"
    )
    free = [n for n in nodes if n.get("pattern") == TEXT_PATTERN]
    assert free and all(n["maxLength"] <= 50 for n in free)
    assert not any(n.get("type") == "null" for n in nodes)  # optional keys are left out, never null
    dx = schema["$defs"]["Diagnosis"]["properties"]
    assert dx["icd10gm"] == {"type": "string", "pattern": r"^[A-Z][0-9]{2}(\.[0-9]{1,2})?$"}
    assert max(len(n.get("enum", ())) for n in nodes) < 20
    assert schema["$defs"]["Medication"]["properties"]["schedule"]["maxItems"] == 4  # never below minItems


def test_the_check_names_what_would_let_a_model_run_on() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"type": "array", "items": {"type": "number", "maximum": 1}},
            "b": {"type": "string"},
            "c": {"type": "string", "pattern": TEXT_PATTERN},
            "d": {"type": "string", "pattern": "^C[0-9]{2}$", "maxLength": 3},
            "e": {"type": "integer"},
            "f": {"type": "string", "enum": [f"C{i:02d}" for i in range(60)]},
        },
    }
    problems = " | ".join(check_decoding_schema(bad))
    for said in (
        "a: list without maxItems",
        "b: string without a pattern",
        "c: free text without maxLength",
        "d: a code pattern with maxLength",
        "e: number without maximum",
        "f: an enumeration of 60",
    ):
        assert said in problems, said


def test_every_gold_answer_fits_the_decoding_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from clinsynth.letters.devset import load_dev_gold

    schema = decoding_schema()
    answers = [json.loads(example_answer())]
    answers += [json.loads(g.model_dump_json(exclude_none=True)) for g in load_dev_gold().values()]
    for answer in answers:
        pruned = _drop_empty(answer)
        jsonschema.validate(pruned, schema)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


@pytest.fixture(scope="module")
def matcher(tiny_model_dir: Path) -> Any:
    llguidance = pytest.importorskip("llguidance", reason="vLLM's guidance backend (installed with vllm)")
    from llguidance.hf import from_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ll_tok = from_tokenizer(tok)

    def accepts(schema: dict[str, Any], text: str) -> bool:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        m = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
        ok = all(m.consume_token(t) for t in tok.encode(text, add_special_tokens=False))
        return bool(ok and not m.is_error() and m.is_accepting())

    return accepts


def test_the_grammar_accepts_real_answers_and_refuses_what_breaks_the_schema(matcher: Any) -> None:
    schema = decoding_schema(40, 30)
    assert matcher(schema, example_answer().replace("Adenokarzinom des Colon sigmoideum", "Adenokarzinom"))
    assert matcher(schema, "{}")
    refused = {
        "made-up code shape": '{"diagnoses":[{"text":"X","icd10gm":"C50.4*"}]}',
        "string over maxLength": '{"diagnoses":[{"text":"' + "x" * 31 + '"}]}',
        "control character": '{"diagnoses":[{"text":"a\x05b"}]}',
        "unknown key": '{"diagnoses":[{"text":"X","note":"y"}]}',
        "null instead of leaving out": '{"encounter":null}',
        "blanks": '{ "diagnoses": []}',
        "number beyond its magnitude": '{"labs":[{"name":"Hb","value":123456789012}]}',
        "required key missing": '{"diagnoses":[{"icd10gm":"C50.4"}]}',
    }
    for why, text in refused.items():
        assert not matcher(schema, text), why


def test_a_strict_variant_requires_lists_for_grammar_tests(matcher: Any) -> None:
    strict = strict_variant(decoding_schema(3, 20), {"diagnoses": 1})
    assert not matcher(strict, "{}")
    assert matcher(strict, '{"diagnoses":[{"text":"Mammakarzinom"}]}')
    ClinicalExtraction.model_validate_json('{"diagnoses":[{"text":"Mammakarzinom"}]}')


def test_server_requests_carry_the_schema_in_vllms_current_field() -> None:
    """vLLM 0.32's server reads `structured_outputs`; the removed `guided_json` it ignores silently."""
    from clinsynth.llm.backends import Adapter, GenRequest, OpenAIBackend

    schema = decoding_schema(3, 20)
    cfg = {"base_url": "http://127.0.0.1:9/v1", "chat_template_kwargs": {"enable_thinking": False}}
    req = GenRequest(
        "d1",
        [{"role": "user", "content": "Brief"}],
        7,
        64,
        json_schema=schema,
        lora=Adapter("clinsynth-adapter", "/x/adapter"),
    )
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": None, "repetition_penalty": None}
    vllm_server = OpenAIBackend(cfg, {"name": "smollm2_135m"}, sampling)
    body = vllm_server._body(req)
    assert body["structured_outputs"] == {"json": schema} and "guided_json" not in body
    assert body["model"] == "clinsynth-adapter" and body["chat_template_kwargs"] == {"enable_thinking": False}
    plain = OpenAIBackend({**cfg, "vllm_extensions": False}, {"name": "m"}, sampling)._body(req)
    assert plain["response_format"]["json_schema"]["schema"] == schema and "structured_outputs" not in plain
