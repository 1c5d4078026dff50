"""Parsing a model's raw answer: the envelope comes off for free, every repair is named, the status says
what happened (ok, repaired, truncated, invalid), and the fine-tuned compact form expands exactly."""

from __future__ import annotations

import pytest

from clinsynth.extraction.parse import load_object, parse_output, unwrap
from clinsynth.extraction.prompts import EXAMPLE_GOLD, example_answer
from clinsynth.schema import ClinicalExtraction

DX = '{"diagnoses":[{"text":"Mammakarzinom links","icd10gm":"C50.4"}]}'


@pytest.mark.parametrize(
    "raw",
    [
        DX,
        f"```json\n{DX}\n```",
        f"<think>Erst lesen {{ nicht das }}</think>\n{DX}",
        f"</think>\n\n{DX}",  # the template opened the think block in the prompt
        f"Hier ist die Extraktion:\n{DX}\nGerne wieder.",
        f"analysis Let me read the letter.assistantfinal{DX}",  # GPT-OSS with special tokens skipped
        f"<|channel|>analysis<|message|>...<|end|><|channel|>final<|message|>{DX}",
    ],
)
def test_the_envelope_is_not_a_repair(raw: str) -> None:
    p = parse_output(raw)
    assert p.status == "ok" and p.message is None
    assert p.extraction is not None and p.extraction.diagnoses[0].icd10gm == "C50.4"


def test_the_fine_tuned_compact_form_expands_to_the_whole_extraction() -> None:
    p = parse_output(example_answer())
    assert p.status == "ok"
    assert p.extraction == ClinicalExtraction.model_validate(EXAMPLE_GOLD)
    dumped = p.extraction_dict()
    assert (
        dumped is not None and dumped["diagnoses"][0]["assertion"] == "present"
    )  # dropped defaults come back


def test_marks_case_commas_and_dates_are_mended_and_named() -> None:
    raw = (
        '{"encounter":{"admission":"17.3.2025"},"diagnoses":[{"text":"Polyneuropathie","icd10gm":"G63.2*"},'
        '{"text":"Diabetes","icd10gm":"e11. 90"}],"tumors":[{"entity":"Mammakarzinom","icd10gm":"C50.4+"}],'
        '"procedures":[{"text":"Port","ops":"5-399.5"},{"text":"X","ops":"5-870.A2"}],'
        '"labs":[{"name":"Hb","value":"10,2","date":"03/2024"}]}'
    )
    p = parse_output(raw)
    assert p.status == "repaired"
    ex = p.extraction
    assert ex is not None
    assert (ex.diagnoses[0].icd10gm, ex.diagnoses[0].icd10gm_mark) == ("G63.2", "*")
    assert ex.diagnoses[1].icd10gm == "E11.90" and ex.tumors[0].icd10gm == "C50.4"
    assert ex.procedures[1].ops == "5-870.a2" and ex.labs[0].value == 10.2
    assert (
        ex.encounter is not None and ex.encounter.admission == "2025-03-17" and ex.labs[0].date == "2024-03"
    )
    msg = p.message or ""
    for said in ("'G63.2*' -> 'G63.2'", "decimal comma", "date '17.3.2025' -> '2025-03-17'", "'5-870.A2'"):
        assert said in msg


def test_what_the_schema_refuses_is_removed_key_by_key_or_fact_by_fact() -> None:
    raw = (
        '{"diagnoses":[{"text":"A","icd10gm":"XYZ"},{"icd10gm":"C61"},"Hypertonie",{"text":"B","note":1}],'
        '"medications":[{"name":"Pantoprazol","dose":40,"schedule":[1,0,0]}],'
        '"tumors":[{"entity":"Rektumkarzinom","tnm":{"t":{"value":"T9"},"n":{"value":"N1"}}}],'
        '"labs":null,"comment":"frei"}'
    )
    p = parse_output(raw)
    assert p.status == "repaired"
    ex = p.extraction
    assert ex is not None
    assert [d.text for d in ex.diagnoses] == ["A", "B"] and ex.diagnoses[0].icd10gm is None
    assert ex.medications[0].schedule is None and ex.medications[0].dose == 40
    assert ex.tumors[0].tnm is not None and ex.tumors[0].tnm.t is None and ex.tumors[0].tnm.n is not None
    msg = p.message or ""
    for said in (
        "diagnoses[0].icd10gm removed",
        "diagnoses[1] removed (diagnoses[1].text: Field required",
        "note removed",
        "medications[0].schedule removed",
        "tumors[0].tnm.t removed",
        "labs null -> []",
        "comment removed",
    ):
        assert said in msg, said


def test_a_cut_answer_is_closed_and_truncated_only_at_the_token_limit() -> None:
    cut = '{"diagnoses":[{"text":"Mammakarzinom","icd10gm":"C50.4"},{"text":"Hyperto'
    at_limit = parse_output(cut, finish_reason="length")
    assert at_limit.status == "truncated" and at_limit.extraction is not None
    assert [d.text for d in at_limit.extraction.diagnoses] == ["Mammakarzinom"]
    assert "cut answer closed" in (at_limit.message or "")
    stopped = parse_output(cut, finish_reason="stop")  # the model stopped mid-object itself
    assert stopped.status == "repaired"
    nothing = parse_output('{"diag', finish_reason="length")
    assert nothing.status == "invalid" and "no complete value before the cut" in (nothing.message or "")
    broken = parse_output('{"diagnoses":[{"text":"A"}, }, "labs": []}')  # a syntax error mid-answer
    assert broken.status == "repaired" and broken.extraction is not None
    assert [d.text for d in broken.extraction.diagnoses] == ["A"]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty answer"),
        ("Der Patient hat Krebs.", "no JSON object"),
        ("[1, 2]", "no JSON object"),
        ('{"diagnoses": [}', "no complete value before the cut or error"),
        ("{Diagnosen: Krebs}", "not valid JSON"),
        ('{"diagnoses": "C50"}', "diagnoses: Input should be a valid list"),
    ],
)
def test_nothing_usable_is_invalid_with_the_reason(raw: str, why: str) -> None:
    p = parse_output(raw)
    if why.startswith("diagnoses"):  # an invalid list is removed like any other key: an empty extraction
        assert p.status == "repaired" and p.extraction == ClinicalExtraction()
        assert "diagnoses removed" in (p.message or "")
        return
    assert p.status == "invalid" and p.extraction is None and p.extraction_dict() is None
    assert why in (p.message or "")


def test_an_unparsed_answer_at_the_token_limit_says_so() -> None:
    p = parse_output("Ich denke nach " * 20, finish_reason="length")
    assert p.status == "invalid" and (p.message or "").startswith("truncated at the token limit")


def test_control_characters_inside_strings_are_a_repair() -> None:
    value, repairs, cut, error = load_object('{"diagnoses":[{"text":"a\x05b"}]}')
    assert value == {"diagnoses": [{"text": "a\x05b"}]} and repairs == ["control characters inside strings"]
    assert not cut and error is None
    assert parse_output('{"diagnoses":[{"text":"a\x05b"}]}').status == "repaired"


def test_unwrap_takes_the_first_fenced_object() -> None:
    assert unwrap('```\nnot json\n```\n```json\n{"a": 1}\n```') == '{"a": 1}'
    assert unwrap('```json\n{"a": [1') == '{"a": [1'  # a fence the model never closed
