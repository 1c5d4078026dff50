"""canonical_answer / expand_answer: the drop rule, key order, and the exact round trip on real gold."""

from __future__ import annotations

import orjson
import pytest

from clinsynth.artifacts.specs import read_specs
from clinsynth.sampling.recipe import Recipe
from clinsynth.schema import (
    TNM,
    ClinicalExtraction,
    Encounter,
    Lab,
    Marker,
    MAxis,
    Medication,
    NAxis,
    RiskFactor,
    Stage,
    TAxis,
    Tumor,
)
from clinsynth.training.answer import canonical_answer, expand_answer
from launchers.submit import launch


@pytest.fixture(scope="module")
def gold(tmp_path_factory):
    """Gold of every letter recipe of a small smoke run (sample stage only)."""
    runs = tmp_path_factory.mktemp("runs")
    result = launch(
        ["+experiment=smoke", "pipeline=[sample]", "cluster=debug", "tracking=disabled", "cohort.patients=12",
         f"paths.runs={runs}"]
    )  # fmt: skip
    rows = read_specs(result.plan.stage("sample").folder.path).to_pylist()
    assert len(rows) >= 12
    return [(Recipe.from_json(r["recipe"]).gold(), r["gold"]) for r in rows]


def test_round_trip_on_real_gold(gold):
    kinds = set()
    for extraction, stored in gold:
        text = canonical_answer(extraction)
        assert expand_answer(text) == extraction
        # from the model or from its stored JSON: the same bytes
        assert canonical_answer(orjson.loads(stored)) == text
        assert text == orjson.dumps(orjson.loads(text)).decode()  # compact: orjson's form, no spaces
        kinds |= {k for k, v in orjson.loads(text).items() if v}
    assert {"encounter", "diagnoses", "tumors", "medications", "labs"} <= kinds  # a real mix was tested


def test_rule_keeps_falsy_values_and_drops_only_none_and_empties():
    x = ClinicalExtraction(
        labs=[Lab(name="CRP", value=0.0, unit="", flag=None)],
        medications=[Medication(name="Ondansetron", as_needed=False, dose=0, schedule=[0, 0, 0, 1])],
        risk_factors=[RiskFactor(kind="smoking", text="Nichtraucher", assertion="negated", pack_years=0)],
        tumors=[Tumor(entity="Mammakarzinom", ecog=0, markers=[], stages=[])],
    )
    data = orjson.loads(canonical_answer(x))
    assert data["labs"] == [{"assertion": "present", "name": "CRP", "value": 0.0, "unit": ""}]
    assert data["medications"][0]["as_needed"] is False
    assert data["medications"][0]["dose"] == 0.0
    assert data["medications"][0]["schedule"] == [0.0, 0.0, 0.0, 1.0]
    assert data["risk_factors"][0]["pack_years"] == 0.0
    assert data["tumors"] == [{"assertion": "present", "entity": "Mammakarzinom", "ecog": 0}]
    assert set(data) == {"labs", "medications", "risk_factors", "tumors"}  # empty lists, None: gone
    assert expand_answer(canonical_answer(x)) == x


def test_nested_tumour_keeps_schema_order_and_round_trips():
    t = Tumor(
        entity="Rektumkarzinom",
        assertion="historical",
        icd10gm="C20",
        tnm=TNM(
            t=TAxis(prefix="yp", value="T2"), n=NAxis(value="N0", nodes="0/14"), m=MAxis(value="M0"), r="R0"
        ),
        stages=[Stage(system="UICC", value="I")],
        markers=[Marker(name="CEA", value=3.1, unit="ng/ml"), Marker(name="KRAS", result="wildtype")],
        laterality=None,
    )
    x = ClinicalExtraction(tumors=[t], encounter=Encounter(admission="2024-03-01"))
    text = canonical_answer(x)
    assert text.index('"encounter"') < text.index('"tumors"')  # schema order, not construction order
    tumour = orjson.loads(text)["tumors"][0]
    assert list(tumour) == ["assertion", "entity", "icd10gm", "tnm", "stages", "markers"]
    assert tumour["tnm"] == {
        "t": {"prefix": "yp", "value": "T2"},
        "n": {"value": "N0", "nodes": "0/14"},
        "m": {"value": "M0"},
        "r": "R0",
    }
    assert tumour["markers"][1] == {"name": "KRAS", "result": "wildtype"}
    assert expand_answer(text) == x
    # a dict in another key order gives the same bytes (deterministic)
    shuffled = dict(reversed(list(x.model_dump().items())))
    assert canonical_answer(shuffled) == text


def test_empty_extraction_and_empty_objects():
    assert canonical_answer(ClinicalExtraction()) == "{}"
    assert expand_answer("{}") == ClinicalExtraction()
    # the documented exception: an object with no values is dropped and comes back as None
    text = canonical_answer(ClinicalExtraction(encounter=Encounter()))
    assert text == "{}"
    assert expand_answer(text).encounter is None


def test_expand_rejects_what_the_schema_rejects():
    with pytest.raises(ValueError):
        expand_answer("[]")
    with pytest.raises(ValueError):
        expand_answer('{"tumors":[{"entity":"X","grading":"G9"}]}')
    with pytest.raises(ValueError):
        expand_answer('{"labs":[{"name":"Hb","colour":"red"}]}')  # unknown key
    with pytest.raises(ValueError):
        expand_answer('{"labs":[')
