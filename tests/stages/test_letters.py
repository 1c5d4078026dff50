"""Sample -> generate -> verify on the CPU: recipes, gold, template letters, verification, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest

from clinsynth.artifacts.specs import read_specs, shard_recipes
from clinsynth.core.atomic import read_json, read_jsonl
from clinsynth.letters.verify import bind_facts, verify
from clinsynth.records import iter_patients
from clinsynth.sampling.recipe import Recipe
from clinsynth.sampling.sampler import Sampler, SamplerConfig
from launchers.plan import stage_config
from launchers.submit import launch
from tests.helpers import DEFAULT_LETTERS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SAMPLER = DEFAULT_LETTERS


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = launch(
        [
            "+experiment=smoke",
            "pipeline=[verify]",
            "cluster=debug",
            "tracking=disabled",
            "cohort.patients=60",
            *SAMPLER,
            f"paths.runs={runs}",
        ]
    )
    return result


def _dir(result, stage):
    return result.plan.stage(stage).folder.path


def _specs(result):
    return [
        (row["spec_id"], Recipe.from_json(row["recipe"]), orjson.loads(row["gold"]), row)
        for row in read_specs(_dir(result, "sample")).to_pylist()
    ]


def _letters(result):
    out = {}
    for path in sorted((_dir(result, "generate") / "letters").glob("shard-*.jsonl")):
        for rec in read_jsonl(path):
            out.setdefault(rec["spec_id"], []).append(rec)
    return out


def test_recipes_are_seeded_per_stay_and_split_by_patient(smoke):
    specs = _specs(smoke)
    assert len(specs) > 60
    by_patient: dict[str, set[str]] = {}
    for _, r, _, row in specs:
        by_patient.setdefault(r.patient_id, set()).add(row["split"])
        assert r.split == row["split"]
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits
    assert {s for v in by_patient.values() for s in v} <= {"train", "val", "test"}
    assert all(
        len([1 for _, r, _, _ in specs if r.patient_id == p]) <= 2 for p in by_patient
    )  # 2 stays (SAMPLER)
    # drawing again, patients in reverse order, gives byte-identical recipes
    records = list(iter_patients(_dir(smoke, "ingest") / "records"))
    cfg = stage_config("sample", ["+experiment=smoke", *SAMPLER]).sample.sampler
    assert cfg.stays_per_patient == 2
    again = {r.spec_id: r.to_json() for rec in reversed(records) for r in Sampler(cfg, seed=0).recipes(rec)}
    assert again == {sid: r.to_json() for sid, r, _, _ in specs}
    other = {r.spec_id: r.to_json() for rec in records for r in Sampler(cfg, seed=1).recipes(rec)}
    assert sum(other.get(sid) != r.to_json() for sid, r, _, _ in specs) > len(specs) // 2


def test_split_fractions_follow_the_config():
    from clinsynth.sampling.sampler import split_of

    counts = Counter(split_of(f"pat-{i}", 7, {"train": 0.75, "val": 0.15, "test": 0.1}) for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.75) < 0.015 and abs(counts["test"] / 20000 - 0.1) < 0.01
    good = stage_config("sample").sample.sampler.model_dump()
    with pytest.raises(ValueError, match="summing to 1"):
        SamplerConfig.model_validate({**good, "splits": {"train": 0.9, "test": 0.2}})
    with pytest.raises(ValueError, match="Extra inputs"):
        SamplerConfig.model_validate({**good, "negated": 3})


def test_gold_is_exactly_the_recipe_and_a_negated_fact_is_never_present(smoke):
    n_neg = 0
    ends = {
        e.row["encounter_id"]: e.row["end"]
        for rec in iter_patients(_dir(smoke, "ingest") / "records")
        for e in rec.encounters.values()
    }
    for _, r, gold, _ in _specs(smoke):
        assert gold == orjson.loads(r.gold().model_dump_json(exclude_none=True))
        kinds = Counter(f.kind for f in r.facts)
        assert len(gold["diagnoses"]) == kinds["diagnosis"] and len(gold["labs"]) == kinds["lab"]
        assert len(gold["procedures"]) == kinds["procedure"]
        assert len(gold["medications"]) == kinds["medication"]
        assert len(gold["tumors"]) == kinds["tumor"]
        negated = {d["icd10gm"] for d in gold["diagnoses"] if d["assertion"] == "negated"}
        present = {d["icd10gm"] for d in gold["diagnoses"] if d["assertion"] == "present"}
        assert not negated & present
        recipe_neg = [f for f in r.facts if f.kind == "diagnosis" and f.assertion == "negated"]
        assert len(negated) == len(recipe_neg)
        for f in recipe_neg:
            assert f.say["name"] == f.gold["text"]  # the name as written; the renderer adds the cue
        n_neg += len(negated)
        # only facts known at discharge: nothing dated after the stay
        for d in gold["diagnoses"] + gold["procedures"] + gold["labs"]:
            assert not d.get("date") or d["date"] <= ends[r.encounter_id][: len(d["date"])]
    assert n_neg > 10


def test_template_letters_one_per_spec_with_metadata_and_all_verified(smoke):
    specs = _specs(smoke)
    letters = _letters(smoke)
    assert sorted(letters) == sorted(sid for sid, *_ in specs)
    assert all(len(v) == 1 for v in letters.values())
    rec = next(iter(letters.values()))[0]
    for key in (
        "backend",
        "model",
        "sampling",
        "seed",
        "tokens_in",
        "tokens_out",
        "latency_s",
        "finish_reason",
    ):
        assert key in rec
    assert rec["backend"] == "template" and rec["model"].startswith("jinja2-templates@")
    report = read_json(_dir(smoke, "verify") / "verification_report.json")
    # the data report (issue 10 point 7) beside the verdicts, counting every letter and verdict
    data = read_json(_dir(smoke, "verify") / "letters_report.json")
    assert data["letters"] == data["verified"]["letters"] == len(specs) and data["acceptance"]
    assert data["verified"]["passed"] == report["passed"] and not data["letters_not_counted"]["letters"]
    assert (_dir(smoke, "verify") / "letters_report.md").read_text().startswith("# Letters report")
    assert report["letters"] == len(specs) and report["pass_rate"] == 1.0, report["failing_by_reason"]
    stats = read_json(_dir(smoke, "verify") / "stats.json")
    assert stats["letters"] == len(specs) and stats["letters_per_s"] > 0
    assert len(stats["shards"]) == 2  # generate ran as a 2-task array


def _one(smoke, want):
    """A recipe with the wanted facts whose letter passes verification, its text and its untagged strings."""
    letters = _letters(smoke)
    for sid, r, _, _ in _specs(smoke):
        rec = letters[sid][0]
        if want(r) and verify(r, rec["text"], untagged=rec["untagged"], noise=rec["noise"]).ok:
            return r, rec["text"], rec["untagged"]
    raise AssertionError("no passing letter with the wanted facts in the smoke cohort")


def test_verification_catches_a_planted_omission(smoke):
    r, text, untagged = _one(smoke, lambda r: any(f.kind == "lab" for f in r.facts))
    lab = next(f for f in r.facts if f.kind == "lab")
    planted = re.sub(rf"(?<![\w-]){re.escape(lab.say['name'])}(?![\w])", "", text)
    assert planted != text
    v = verify(r, planted, untagged=untagged)
    assert not v.ok and any(x.startswith(f"omitted: lab {lab.say['name']!r}") for x in v.reasons), v.reasons


def test_verification_catches_a_planted_unnegated_negation(smoke):
    r, text, untagged = _one(smoke, lambda r: any(f.assertion == "negated" for f in r.facts))
    f = next(f for f in r.facts if f.assertion == "negated")
    b = next(b for b in bind_facts(text, r) if b.fact_id == f.id)
    # the fact's clause (cue included) rewritten as a finding
    v = verify(
        r, text[: b.sentence_start] + f" Nachweis von {b.name}" + text[b.sentence_end :], untagged=untagged
    )
    assert not v.ok and any(x.startswith(f"not negated: {f.kind}") for x in v.reasons), v.reasons


def test_verification_catches_a_planted_extra_code_and_truncation(smoke):
    r, text, untagged = _one(
        smoke, lambda r: any(f.kind == "diagnosis" and f.assertion == "present" for f in r.facts)
    )
    foreign = next(c for c in ("C18.7", "C50.4", "E11.90", "I10.00") if c not in r.codes())
    v = verify(r, text.replace("\n\n", f"\n\nNebenbefundlich {foreign}.\n\n", 1), untagged=untagged)
    assert not v.ok and f"foreign code: icd10gm {foreign}" in v.reasons
    v = verify(r, text, finish_reasons={"anamnese": "length"}, untagged=untagged)
    assert v.reasons == ["truncated: anamnese"]
    d = next(f for f in r.facts if f.kind == "diagnosis" and f.assertion == "present")
    b = next(b for b in bind_facts(text, r) if b.fact_id == d.id)
    v = verify(r, text[: b.start] + f"kein Hinweis auf {b.name}" + text[b.end :], untagged=untagged)
    assert not v.ok, "a present diagnosis written as negated must fail"


def test_sigkill_mid_shard_then_relaunch_gives_exactly_one_letter_per_spec(tmp_path):
    overrides = [
        "+experiment=smoke",
        "pipeline=[verify]",
        "cluster=debug",
        "tracking=disabled",
        "cohort.patients=120",
        "sample.sampler.stays_per_patient=null",
        "resources.generate.shards=1",
        "generate.letters.chunk=1",
        f"paths.runs={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", *overrides],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    parts = None
    killed_after = 0
    while proc.poll() is None:
        found = list(tmp_path.glob("stages/generate/*/letters/shard-00000.parts"))
        if found:
            parts = found[0]
            n = len(list(parts.glob("chunk-*.jsonl")))
            if n >= 5:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_after = n
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_after >= 5, f"the launch ended before generate was killed: {proc.stderr.read()[-2000:]!r}"
    assert not (parts.parent / "shard-00000.jsonl").exists()  # killed mid-shard
    result = launch(overrides)
    assert result.submitted.get("generate") == [0] and "sample" not in result.submitted
    specs = read_specs(_dir(result, "sample"), columns=["spec_id"]).column("spec_id").to_pylist()
    letters = _letters(result)
    assert sorted(letters) == sorted(specs) and all(len(v) == 1 for v in letters.values())
    stats = read_json(_dir(result, "generate") / "stats" / "shard-00000.json")
    assert (
        stats["letters_resumed"] >= killed_after
        and stats["letters_generated"] == len(specs) - stats["letters_resumed"]
    )
    assert not parts.exists()
    assert read_json(_dir(result, "verify") / "verification_report.json")["pass_rate"] == 1.0


def test_prompts_list_every_fact_and_say_how_to_assert_it(smoke):
    from launchers.config import compose_config

    prompts = compose_config(["+experiment=smoke_hybrid"])["generate"]["prompts"]
    from clinsynth.letters.prompts import letter_messages, section_messages

    r, _, _ = _one(
        smoke, lambda r: any(f.assertion == "negated" and f.section == "epikrise" for f in r.facts)
    )
    system, user = letter_messages(r, prompts)
    assert system["role"] == "system" and user["role"] == "user"
    for f in r.facts:
        assert (f.gold.get("text") or f.gold.get("name") or f.say.get("histology")) in user["content"]
    neg = next(f for f in r.facts if f.assertion == "negated" and f.section == "epikrise")
    section = next(s for s in r.sections if s["key"] == "epikrise")
    _, user = section_messages(r, section, prompts)
    name = neg.gold.get("text") or neg.gold.get("name")
    line = next(x for x in user["content"].splitlines() if name in x)
    assert "verneint" in line and section["heading"] in user["content"]


def test_a_generate_task_streams_exactly_its_share_of_the_specs(smoke):
    path = _dir(smoke, "sample")
    recipes = read_specs(_dir(smoke, "sample"), columns=["recipe"]).column("recipe").to_pylist()
    for n in (1, 2, 3, 7):
        for shard in range(n):
            assert shard_recipes(path, shard, n, batch_size=5) == recipes[shard::n], (shard, n)
