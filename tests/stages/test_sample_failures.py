"""The sample stage skips and reports a patient that fails at any step (draw, gold, serialise).

The sampler is replaced by a stand-in that breaks chosen patients on purpose, so these tests hold
the stage's isolation rule independent of what the real sampler draws.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
import pytest

from clinsynth.artifacts.specs import read_specs
from clinsynth.core.atomic import read_json, read_jsonl
from clinsynth.sampling.recipe import Recipe, RecipeFact
from launchers.submit import LaunchError, launch
from tests import fhir_samples as fs


def _recipe(patient_id: str, **facts_gold: dict) -> Recipe:
    facts = [
        RecipeFact("f1", "diagnosis", "diagnosen", "present", {"text": "Rektumkarzinom", "icd10gm": "C20"},
                   {"name": "Rektumkarzinom", "code": "C20"}),
    ]  # fmt: skip
    if "procedure" in facts_gold:  # a SNOMED CT code in the OPS slot, as the MII bundles once made it
        facts.append(
            RecipeFact("f2", "procedure", "verlauf", "present", facts_gold["procedure"], {"name": "Test"})
        )
    return Recipe(
        spec_id=f"{patient_id}-e1",
        patient_id=patient_id,
        encounter_id=f"{patient_id}-e1",
        split="train",
        letter_type="Arztbrief",
        header={},
        sections=[{"key": "diagnosen", "heading": "Diagnosen"}],
        facts=facts,
        style={},
    )


class BreakingSampler:
    """Patients by position (sorted ids): 0 fails drawing, 1 fails gold, 2 fails serialising,
    3 has no stay; the rest get one good recipe each."""

    plan: ClassVar[dict[int, str]] = {0: "draw", 1: "gold", 2: "serialise", 3: "no_stay"}

    def __init__(self, cfg, seed: int) -> None:
        self.stats = {"future_facts_dropped": 0}
        self.seen: list[str] = []

    def recipes(self, rec):
        self.seen.append(rec.patient_id)
        what = self.plan.get(len(self.seen) - 1, "ok")
        if what == "draw":
            raise ValueError("Invalid isoformat string: '1962'")
        if what == "no_stay":
            return
        if what == "gold":
            bad = _recipe(rec.patient_id, procedure={"text": "Molekulargenetik", "ops": "405825005"})
            yield _recipe(rec.patient_id)  # a good stay first: the patient is still skipped whole
            yield bad
            return
        r = _recipe(rec.patient_id)
        if what == "serialise":
            r.split = None  # type: ignore[assignment]
        yield r


def _overrides(tmp_path, *extra):
    """Six tiny patients as an NDJSON export (no cohort stage): ingest -> sample, in this process."""
    src = tmp_path / "export"
    src.mkdir(exist_ok=True)
    patients = [fs.patient(f"p{i}") for i in range(6)]
    (src / "Patient.ndjson").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in patients))
    return ["+experiment=smoke", "source=ndjson", f"source.path={src}", "pipeline=[sample]",
            "cluster=debug", "tracking=disabled", f"paths.runs={tmp_path / 'runs'}", *extra]  # fmt: skip


def test_a_patient_failing_at_any_step_is_skipped_whole_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("clinsynth.stages.sample.Sampler", BreakingSampler)
    result = launch(_overrides(tmp_path))
    folder = result.plan.stage("sample").folder.path
    report = read_json(folder / "sample_report.json")
    errors = list(read_jsonl(folder / "errors.jsonl"))
    assert [e["step"] for e in errors] == ["draw", "gold", "serialise"]
    assert report["patients"] == 6 and report["patients_failed"] == 3
    assert report["patients_without_stays"] == 1 and report["patients_with_specs"] == 2
    assert report["specs"] == 2 and report["errors"] == errors
    assert report["counts"]["failed/gold/ValidationError"] == 1
    rows = read_specs(folder).to_pylist()
    failed = {e["patient_id"] for e in errors}
    assert len(rows) == 2 and not failed & {r["patient_id"] for r in rows}  # not even the good stay
    for r in rows:
        assert orjson.loads(r["gold"])["diagnoses"][0]["icd10gm"] == "C20"
    gold = errors[1]
    assert "405825005" in gold["error"] and "errors.pydantic.dev" not in gold["error"]
    [fact] = gold["facts"]  # the schema field traced back to the recipe fact it came from
    assert fact["field"] == "procedures.0.ops" and fact["fact"] == "procedure 'Test'"
    assert fact["encounter_id"].startswith(gold["patient_id"])
    assert all("sample.strict=true" in e["what_to_do"] for e in errors)
    assert "code of one system in another system's slot" in gold["what_to_do"]


@pytest.fixture
def no_pdb(monkeypatch):
    """The debug executor hands a failing task to pdb, which cannot read stdin under pytest."""
    monkeypatch.setattr("pdb.post_mortem", lambda *a, **k: None)


def test_a_strict_run_stops_at_the_first_failing_patient_naming_it(tmp_path, monkeypatch, no_pdb):
    monkeypatch.setattr("clinsynth.stages.sample.Sampler", BreakingSampler)
    monkeypatch.setattr(BreakingSampler, "plan", {1: "gold"})
    with pytest.raises(LaunchError, match=r"sample\.strict=true.*could not be sampled \(gold\)") as err:
        launch(_overrides(tmp_path, "sample.strict=true"))
    assert "procedures.0.ops" in str(err.value) and "what to do" in str(err.value)


def test_a_run_where_every_patient_fails_is_an_error_not_an_empty_success(tmp_path, monkeypatch, no_pdb):
    monkeypatch.setattr("clinsynth.stages.sample.Sampler", BreakingSampler)
    monkeypatch.setattr(BreakingSampler, "plan", dict.fromkeys(range(6), "draw"))
    with pytest.raises(LaunchError, match=r"all 6 patient\(s\) failed \(\{'draw': 6\}\)"):
        launch(_overrides(tmp_path))
