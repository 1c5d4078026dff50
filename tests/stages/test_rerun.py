"""Reproducibility and privacy acceptance (issue 13) on one cheap smoke run and its `rerun`.

The run: smoke with the rules extractor, 40 patients, pipeline evaluate + export + dataset, W&B offline,
local executor; then `python -m launch rerun=RUN`. Every stage of this run is deterministic, so every
manifest must match byte for byte. The same run is searched for patient data where none may be: W&B's
offline files, the logs and task records, the launcher's stdout/stderr and `launch status`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from clinsynth.core.atomic import read_json, read_jsonl
from launchers.manifest import MANIFEST, compare_manifests, compute_manifest, read_manifest
from launchers.rerun import RerunError, compare_stages, original_stages, plan_rerun
from tests.conftest import model_cache_root

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "+experiment=smoke",
    # pinned: smoke's extractor and its compare: variants may change; this test needs the rules path
    "extract/extractor=rules",
    "compare=null",
    "cohort.patients=40",
    "pipeline=[evaluate,export,dataset]",
    "tracking=offline",
    "cluster=local",
]
DETERMINISTIC = {
    "cohort",
    "ingest",
    "sample",
    "generate",
    "verify",
    "dataset",
    "extract",
    "evaluate",
    "export",
}


@dataclass
class Run:
    runs: Path
    run_dir: Path
    launch: subprocess.CompletedProcess[str]
    status: subprocess.CompletedProcess[str]
    rerun: subprocess.CompletedProcess[str]

    @property
    def rerun_report(self) -> dict:
        (path,) = sorted((self.runs / "reruns").glob("*/rerun.json"))
        return read_json(path)

    def outputs(self) -> str:
        return "\n".join(p.stdout + p.stderr for p in (self.launch, self.status, self.rerun))


def _launch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # W&B stays in the folders
    # converted SmolLM2 (the dataset stage's tokenizer) from the session-wide model cache (tests/conftest.py)
    env.update(HF_HUB_OFFLINE="1", COLUMNS="200", CLINSYNTH_MODEL_CACHE=str(model_cache_root()))
    env.pop("CLINSYNTH_RUNS", None)
    return subprocess.run(
        [sys.executable, "-m", "launch", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    runs = tmp_path_factory.mktemp("rerun") / "runs"
    first = _launch(*OVERRIDES, f"paths.runs={runs}")
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = sorted((runs / "smoke").iterdir())
    status = _launch("status", str(run_dir))
    again = _launch(f"rerun={run_dir}", "cluster=local")
    return Run(runs, run_dir, first, status, again)


# ---------------------------------------------------------------- reproducibility


def test_a_rerun_reproduces_every_deterministic_stage_byte_for_byte(run: Run) -> None:
    assert run.rerun.returncode == 0, run.rerun.stdout[-4000:] + run.rerun.stderr[-2000:]
    assert "fresh stage folders" in run.rerun.stderr and "byte-identical" in run.rerun.stdout
    report = run.rerun_report
    old = original_stages(run.run_dir)
    new = original_stages(Path(report["rerun"]))
    assert set(old) == set(new) == DETERMINISTIC
    for stage in sorted(DETERMINISTIC):
        a, b = read_json(old[stage] / MANIFEST), read_json(new[stage] / MANIFEST)
        assert old[stage] != new[stage] and old[stage].name == new[stage].name  # fresh folder, same id
        assert a["deterministic"] and b["deterministic"] and a["files"], stage
        assert a["files"] == b["files"], (stage, compare_manifests(stage, a, b).paths())
    assert not report["failed"] and all(s["identical"] for s in report["stages"])
    # the timings moved out of the artifacts are kept in the task records
    sample_task = read_json(old["sample"] / "tasks" / "00000.json")
    assert sample_task["timing"]["seconds"] > 0 and "seconds" not in read_json(
        old["sample"] / "sample_report.json"
    )


def test_a_changed_artifact_is_reported_and_records_are_not(run: Run, tmp_path: Path) -> None:
    src = original_stages(run.run_dir)["verify"]
    copy = tmp_path / "stages" / "verify" / src.name
    shutil.copytree(src, copy)
    saved = read_json(src / MANIFEST)
    assert compute_manifest(copy)["files"] == saved["files"]
    assert "stats.json" in saved["records"] and "stats.json" not in saved["files"]  # a timing record
    verdicts = copy / "verification.jsonl"
    verdicts.write_bytes(verdicts.read_bytes().replace(b"{", b"{ ", 1))  # one byte more, same size + 1
    (copy / "letters_report.md").unlink()
    (copy / "new.txt").write_text("x")
    (copy / "meta.json").write_text("{}")  # records: never compared
    (copy / "logs" / "extra.log").write_text("x")
    (copy / "stats.json").write_text("{}")
    (copy / MANIFEST).unlink()  # like an older DONE folder: the manifest is computed on the fly
    after, was_saved = read_manifest(copy)
    assert not was_saved
    diff = compare_manifests("verify", saved, after)
    assert (diff.changed, diff.missing, diff.extra) == (
        ["verification.jsonl"],
        ["letters_report.md"],
        ["new.txt"],
    )
    (result,) = compare_stages({"verify": src}, {"verify": copy})
    assert result.failed and result.new_id == src.name
    # the same change in a stage that declared itself nondeterministic is listed, and expected
    nondet = tmp_path / "nondet" / "verify" / src.name
    nondet.mkdir(parents=True)
    (nondet / MANIFEST).write_bytes(
        orjson.dumps(saved | {"deterministic": False, "nondeterminism": {"why": "x"}})
    )
    (result,) = compare_stages({"verify": nondet}, {"verify": copy})
    assert result.diff.changed == ["verification.jsonl"] and not result.failed


def test_rerun_takes_operational_overrides_only(run: Run) -> None:
    with pytest.raises(RerunError, match=r"cohort\.patients changes results"):
        plan_rerun(run.run_dir, ["cohort.patients=10"])
    with pytest.raises(RerunError, match=r"paths\.runs is set by rerun itself"):
        plan_rerun(run.run_dir, ["paths.runs=/tmp/elsewhere"])
    with pytest.raises(RerunError, match="not a run folder"):
        plan_rerun(run.runs, [])
    plan = plan_rerun(run.run_dir, ["cluster=debug"], now=0)
    assert plan.fresh_root == run.runs / "reruns" / f"{run.run_dir.name}-19700101T000000Z"
    assert "cluster=debug" in plan.overrides and "cluster=local" not in plan.overrides
    assert plan.overrides[-4:] == [
        f"paths.runs={plan.fresh_root}",
        "compare=null",
        "dry_run=false",
        "wait=true",
    ]


# ---------------------------------------------------------------- patient data stays home


def _forms(text: str) -> set[bytes]:
    """The bytes a string becomes in the files searched: UTF-8, JSON (with and without ASCII escapes),
    Python's unicode_escape (repr in logs) and a pickle (submitit's task and result pickles)."""
    return {
        text.encode(),
        json.dumps(text)[1:-1].encode(),
        json.dumps(text, ensure_ascii=False)[1:-1].encode(),
        text.encode("unicode_escape"),
        pickle.dumps(text)[2:-1],
    }


def _split(text: str) -> set[str]:
    return {p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text) if len(p.strip()) >= 30}


def _sentences(letters: Iterable[dict]) -> list[str]:
    """Sentences (30+ characters) that only one letter has: the patient's own, not the templates'
    boilerplate (which the generate config's prompts may share)."""
    counts = Counter(s for letter in letters for s in _split(letter["text"]))
    return sorted(s for s, n in counts.items() if n == 1)


def _patients(cohort: Path) -> tuple[list[str], list[str]]:
    names, dates = [], []
    for path in sorted((cohort / "fhir").glob("Patient-*.ndjson")):
        for line in path.read_bytes().splitlines():
            patient = orjson.loads(line)
            for name in patient.get("name", []):
                given = " ".join(name.get("given", []))
                names += [f"{given} {name['family']}", f"{name['family']}, {given}"]
            y, m, d = patient["birthDate"].split("-")
            dates += [patient["birthDate"], f"{int(d)}.{int(m)}.{y}", f"{d}.{m}.{y}"]
    return names, dates


def _needles(run: Run) -> dict[str, set[bytes]]:
    stages = original_stages(run.run_dir)
    letters = [
        r for p in sorted((stages["generate"] / "letters").glob("shard-*.jsonl")) for r in read_jsonl(p)
    ]
    names, dates = _patients(stages["cohort"])
    sentences = _sentences(letters)
    assert len(sentences) > 200 and len(names) == 80 and len(dates) == 120
    return {s: _forms(s) for s in [*sentences, *names, *dates]}


def _hits(data: bytes, needles: dict[str, set[bytes]]) -> list[str]:
    return [text for text, forms in needles.items() if any(f in data for f in forms)]


def _record_files(runs: Path) -> list[Path]:
    """W&B's offline files, the logs and the launcher's records of every stage folder (original and rerun)."""
    out = []
    for folder in sorted(p for p in runs.rglob("stages/*/*") if p.is_dir() and (p / "DONE").exists()):
        for sub in ("wandb", "logs", "tasks", "progress"):
            out += [p for p in sorted((folder / sub).rglob("*")) if p.is_file()]
        out += [
            folder / n for n in ("meta.json", "jobs.jsonl", "config.yaml", MANIFEST) if (folder / n).is_file()
        ]
    return out


def test_no_letter_sentence_name_or_birth_date_leaves_the_outputs(run: Run) -> None:
    needles = _needles(run)
    files = _record_files(run.runs)
    wandb = [p for p in files if "wandb" in p.parts]
    # W&B wrote offline runs for every stage of both runs (else this search would prove nothing)
    assert len([p for p in wandb if p.suffix == ".wandb"]) >= 2 * len(DETERMINISTIC)
    assert any(p.parent.name == "logs" and p.name.endswith("_log.err") for p in files)
    leaks = {str(p.relative_to(run.runs)): _hits(p.read_bytes(), needles)[:3] for p in files}
    assert {k: v for k, v in leaks.items() if v} == {}
    assert _hits(run.outputs().encode(), needles) == []
    assert "done" in run.status.stdout and run.status.returncode == 0


def test_the_search_finds_patient_data_where_it_is(run: Run) -> None:
    """Positive control: the needles are found in the letters and the cohort's Patient resources, and
    in a JSON line and a pickle that hold one."""
    needles = _needles(run)
    stages = original_stages(run.run_dir)
    letters = b"".join(p.read_bytes() for p in (stages["generate"] / "letters").glob("shard-*.jsonl"))
    found = set(_hits(letters, needles))
    sentences = _sentences(
        r for p in sorted((stages["generate"] / "letters").glob("shard-*.jsonl")) for r in read_jsonl(p)
    )
    assert set(sentences) <= found
    names, dates = _patients(stages["cohort"])
    assert len(found & set(names)) >= 0.4 * len(names)  # "Given Family" in the letters
    patients = b"".join(p.read_bytes() for p in (stages["cohort"] / "fhir").glob("Patient-*.ndjson"))
    assert set(dates[::3]) <= set(_hits(patients, needles))  # birthDate as FHIR writes it
    name = next((n for n in names if not n.isascii()), names[0])
    assert _hits(orjson.dumps({"n": name}) + json.dumps({"n": name}).encode(), {name: needles[name]}) == [
        name
    ]
    assert _hits(b"\x0a\x12" + pickle.dumps({"n": name}), {name: needles[name]}) == [name]
