"""The end-of-launch summary: one line per stage read from its reports, reuse notes, unwrapped paths."""

from __future__ import annotations

import io
from pathlib import Path

from clinsynth.core.atomic import write_json
from launchers.decide import Reuse
from launchers.plan import Plan
from launchers.states import StageState
from launchers.submit import StageAction
from launchers.summary import KeyResult, console_for, key_result, print_summary, summarizer


def test_builtin_stage_summaries_read_their_reports(tmp_path):
    cohort = tmp_path / "cohort"
    (cohort / "fhir").mkdir(parents=True)
    (cohort / "fhir" / "Patient-00000.ndjson").write_text('{"id": "a"}\n{"id": "b"}\n')
    (cohort / "fhir" / "Patient-00001.ndjson").write_text('{"id": "c"}\n')
    (cohort / "fhir" / "Condition-00000.ndjson").write_text('{"id": "x"}\n')
    (cohort / "truth").mkdir()
    (cohort / "truth" / "shard-00000.jsonl").touch()
    (cohort / "truth" / "shard-00001.jsonl").touch()
    assert key_result("cohort", cohort).line == "3 patients as FHIR NDJSON (2 shard(s))"

    ingest = tmp_path / "ingest"
    write_json(
        ingest / "ingest_report.json",
        {"resources_read": 10, "resources_ok": 8, "resources_quarantined": 2,
         "quarantined_by_reason": {"dangling reference": 1, "invalid": 1}},
    )  # fmt: skip
    res = key_result("ingest", ingest)
    assert "8 of 10 resources ingested, 2 quarantined" in res.line and "dangling reference 1" in res.line
    assert "records/" in res.outputs

    sample = tmp_path / "sample"
    write_json(
        sample / "sample_report.json",
        {"specs": 6, "patients": 3, "patients_failed": 0, "counts": {"split/train": 4, "split/test": 2}},
    )
    assert key_result("sample", sample).line == "6 specs from 3 patients (test 2, train 4)"

    generate = tmp_path / "generate"
    for shard, n in ((0, 4), (1, 2)):
        write_json(
            generate / "stats" / f"shard-{shard:05d}.json",
            {"shard": shard, "specs": n, "letters_generated": n, "seconds": 1.0, "backend": "template"},
        )
    assert key_result("generate", generate).line.startswith("6 letters in 2 shard(s), template")

    verify = tmp_path / "verify"
    write_json(
        verify / "verification_report.json",
        {"letters": 6, "passed": 5, "pass_rate": 0.8333,
         "failing_by_reason": {"omitted": {"letters": 1, "rate": 0.1667}}},
    )  # fmt: skip
    assert key_result("verify", verify).line == "5 of 6 letters pass (83.3%); failing: omitted 1"


def test_extract_evaluate_and_export_say_what_came_out_and_where_the_report_is(tmp_path):
    extract = tmp_path / "extract"
    for shard, statuses in ((0, {"ok": 3, "truncated": 1}), (1, {"ok": 2})):
        write_json(
            extract / "stats" / f"shard-{shard:05d}.json",
            {"extractor": "finetuned", "model": "smollm2_135m", "statuses": statuses,
             "completion_tokens": 300, "generate_s": 3.0},
        )  # fmt: skip
    res = key_result("extract", extract)
    assert res.line == "6 letters, finetuned smollm2_135m (ok 5, truncated 1), 100 completion tokens/s"

    evaluate = tmp_path / "evaluate"
    icd = {"f1": 0.5, "gold": 4, "fn": 2, "fp": 2}  # tp 2: micro F1 = 4 / 8
    scored = {"synthetic": {"documents": 3, "strict": {"icd10gm": icd}}}
    write_json(evaluate / "metrics.json", {"sources": scored})
    res = key_result("evaluate", evaluate)
    assert res.line == "strict micro F1 over the study's 7 categories: synthetic test (n=3) 0.500"
    assert res.outputs[0] == "report.md"

    export = tmp_path / "export"
    write_json(
        export / "validation_report.json",
        {"exported": 4, "records": 5, "resources_written": 40, "errors": 2, "rejected": 1},
    )
    res = key_result("export", export)
    assert res.line == "4 of 5 predictions as Bundles, 40 resources, 2 validation errors, 1 rejected"


def test_later_stages_register_their_own_line_and_a_broken_report_never_fails(tmp_path):
    @summarizer("toy_dataset")
    def _toy(folder: Path) -> KeyResult:
        return KeyResult(f"{len(list(folder.iterdir()))} files", ("data/",))

    (tmp_path / "a").touch()
    assert key_result("toy_dataset", tmp_path) == KeyResult("1 files", ("data/",))
    assert key_result("no_such_stage", tmp_path) is None
    bad = key_result("ingest", tmp_path)  # no ingest_report.json
    assert bad is not None and bad.line.startswith("(no summary: FileNotFoundError")


def _plan(tmp_path: Path) -> Plan:
    return Plan("toy", "r1", tmp_path, tmp_path / "toy" / "r1", {}, {}, [])


def test_summary_says_what_happened_and_is_not_wrapped_in_a_pipe(tmp_path):
    deep = tmp_path / ("x" * 120) / "stages"
    verify = deep / "verify" / "abc"
    write_json(verify / "verification_report.json", {"letters": 2, "passed": 2, "pass_rate": 1.0})
    actions = [
        StageAction("ingest", "i1", deep / "ingest" / "i1", StageState.DONE, 1,
                    reuse=Reuse(("smoke/r0",), False, ("ran on slurm (this launch: local)",))),
        StageAction("verify", "abc", verify, StageState.RAN, 1, units=[0], job_ids=["123"]),
        StageAction("train", "t1", deep / "train" / "t1", StageState.SUBMITTED, 2, units=[0, 1],
                    job_ids=["77"]),
        StageAction("extract", "e1", deep / "extract" / "e1", StageState.NOT_STARTED, 1, units=[0]),
    ]  # fmt: skip
    buf = io.StringIO()
    print_summary(console_for(buf), _plan(tmp_path), actions, "local")
    out = buf.getvalue()
    lines = out.splitlines()
    assert any("ingest" in ln and "reused" in ln for ln in lines)
    assert any("verify" in ln and "ran" in ln and "2 of 2 letters pass (100.0%)" in ln for ln in lines)
    assert any("train" in ln and "submitted" in ln and "77" in ln for ln in lines)
    assert any("extract" in ln and "not started" in ln for ln in lines)
    assert any("from run smoke/r0" in ln and "ran on slurm (this launch: local)" in ln for ln in lines)
    # every path on one line, whole, though far wider than a terminal
    for a in actions:
        assert any(f"{a.folder}/" in ln for ln in lines), a.folder
    assert any(f"{verify}/  verification.jsonl  verification_report.json" in ln for ln in lines)
    assert f"run folder: {tmp_path / 'toy' / 'r1'}" in out


def test_pipe_console_rules_stay_short():
    buf = io.StringIO()
    console_for(buf).rule("sweep point")
    assert buf.getvalue().strip() == "─── sweep point ───"
