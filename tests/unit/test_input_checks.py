"""Every stage holds its inputs against its upstream stage's report before it writes anything.

One small smoke pipeline runs once (in this process); each test copies the upstream folders it
needs, damages one file (or the report), runs the stage function directly and expects an
UpstreamError that names the file, the upstream folder, what was expected and found, and says
to relaunch -- and that nothing was written. The untouched copies still pass.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinsynth.artifacts.checks import UpstreamError
from clinsynth.artifacts.letters import LetterShard
from clinsynth.artifacts.specs import SAMPLE_REPORT, read_specs, specs_path
from clinsynth.core.atomic import atomic_open, read_json, read_jsonl
from clinsynth.core.context import StageContext
from clinsynth.records import INGEST_REPORT, TABLES
from clinsynth.stages import cohort as cohort_stage
from clinsynth.stages import generate as generate_stage
from clinsynth.stages import sample as sample_stage
from clinsynth.stages import verify as verify_stage
from launchers.plan import stage_config
from launchers.submit import launch
from tests.helpers import DEFAULT_LETTERS

OVERRIDES = ["+experiment=smoke",
    "pipeline=[verify]", "cluster=debug", "tracking=disabled", "cohort.patients=24", *DEFAULT_LETTERS]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = launch([*OVERRIDES, f"paths.runs={runs}"])
    out = {name: result.plan.stage(name).folder.path for name in ("ingest", "sample", "generate")}
    return {**out, "runs": runs}


@pytest.fixture
def up(done, tmp_path):
    """Fresh copies of the upstream folders (outputs only) for one test to damage."""
    out = {}
    for name in ("ingest", "sample", "generate"):
        src = done[name]
        dst = tmp_path / "up" / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs", "tasks", "meta.json"))
        out[name] = dst
    return out


def _ctx(tmp_path: Path, stage: str, inputs: dict[str, Path], shard: int = 0, num_shards: int = 1):
    return StageContext(
        stage=stage,
        stage_id="test",
        stage_dir=tmp_path / "out" / stage,
        inputs=inputs,
        shard=shard,
        num_shards=num_shards,
        cache_dir=tmp_path / "cache",
    )


def _fails(fn, *names: str) -> str:
    with pytest.raises(UpstreamError) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert name in msg, msg
    assert "expected" in msg and "found" in msg and "Relaunch" in msg, msg
    return msg


def _written(folder: Path) -> list[str]:
    """Outputs a stage wrote (its progress/ file is bookkeeping, as logs/ and tasks/ are)."""
    if not folder.exists():
        return []
    files = (p for p in folder.rglob("*") if p.is_file() and p.parent.name != "progress")
    return sorted(str(p.relative_to(folder)) for p in files)


# ---- sample <- ingest


def _sample(tmp_path, up, **section):
    cfg = stage_config("sample", OVERRIDES)
    if section:
        cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update=section)})
    ctx = _ctx(tmp_path, "sample", {"ingest": up["ingest"]})
    return lambda: sample_stage.run(cfg, ctx), ctx.stage_dir


def test_sample_normal_path_records_the_ingest_rows(tmp_path, up):
    run, out = _sample(tmp_path, up)
    result = run()
    report = read_json(out / SAMPLE_REPORT)
    assert result["patients"] == 24 and report["ingest_rows"]["patients"] == 24
    assert read_specs(out).num_rows == report["specs"] > 0


def test_sample_without_the_ingest_report_fails_naming_it(tmp_path, up):
    (up["ingest"] / INGEST_REPORT).unlink()
    run, out = _sample(tmp_path, up)
    _fails(run, INGEST_REPORT, str(up["ingest"]), "no such file")
    assert _written(out) == []


@pytest.mark.parametrize("table", list(TABLES))
def test_sample_with_a_deleted_bucket_file_fails_naming_it(tmp_path, up, table):
    victim = up["ingest"] / "records" / f"{table}-0003.parquet"
    victim.unlink()
    run, out = _sample(tmp_path, up)
    _fails(run, f"{table}-0003.parquet", str(up["ingest"]))
    assert _written(out) == []


def test_sample_with_a_truncated_records_file_fails_naming_it(tmp_path, up):
    records = up["ingest"] / "records"
    victim = max(records.glob("facts-*.parquet"), key=lambda p: p.stat().st_size)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    run, out = _sample(tmp_path, up)
    _fails(run, victim.name, "facts records")
    assert _written(out) == []


def test_sample_with_records_that_disagree_with_the_report_fails(tmp_path, up):
    path = up["ingest"] / INGEST_REPORT
    report = read_json(path)
    report["rows"]["encounters"] += 3
    path.write_bytes(orjson.dumps(report))
    run, out = _sample(tmp_path, up)
    msg = _fails(run, "encounters", INGEST_REPORT)
    assert str(report["rows"]["encounters"]) in msg
    assert _written(out) == []


def test_sample_refuses_zero_patients_unless_allowed(tmp_path, up):
    records = up["ingest"] / "records"
    shutil.rmtree(records)
    records.mkdir()
    for table, schema in TABLES.items():
        pq.write_table(pa.Table.from_pylist([], schema=schema), records / f"{table}-0000.parquet")
    path = up["ingest"] / INGEST_REPORT
    report = read_json(path)
    report["rows"] = dict.fromkeys(TABLES, 0)
    path.write_bytes(orjson.dumps(report))
    run, out = _sample(tmp_path, up)
    with pytest.raises(UpstreamError, match=r"0 patients.*sample\.allow_empty=true"):
        run()
    assert _written(out) == []
    run, out = _sample(tmp_path, up, allow_empty=True)
    assert run()["specs"] == 0 and read_specs(out).num_rows == 0


# ---- generate <- sample


def _generate(tmp_path, up, shard=1, num_shards=2):
    cfg = stage_config("generate", OVERRIDES)
    ctx = _ctx(tmp_path, "generate", {"sample": up["sample"]}, shard, num_shards)
    return lambda: generate_stage.run(cfg, ctx), ctx.stage_dir


def test_generate_normal_path_writes_its_share(tmp_path, up):
    total = read_json(up["sample"] / SAMPLE_REPORT)["specs"]
    run, out = _generate(tmp_path, up)
    stats = run()
    assert stats["specs"] == len(range(1, total, 2))
    assert len(list(read_jsonl(out / "letters" / "shard-00001.jsonl"))) == stats["specs"]


def test_generate_without_the_sample_report_fails_naming_it(tmp_path, up):
    (up["sample"] / SAMPLE_REPORT).unlink()
    run, out = _generate(tmp_path, up)
    _fails(run, SAMPLE_REPORT, str(up["sample"]), "no such file")
    assert not (out / "letters" / "shard-00001.jsonl").exists()
    assert not list((out / "letters").rglob("chunk-*")) if (out / "letters").exists() else True


def test_generate_with_deleted_or_truncated_specs_fails_naming_them(tmp_path, up):
    path = specs_path(up["sample"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    run, out = _generate(tmp_path, up)
    _fails(run, "specs.parquet", str(up["sample"]))
    path.unlink()
    _fails(run, "specs.parquet", "no such file")
    assert _written(out) == []


def test_generate_with_specs_that_disagree_with_the_report_fails(tmp_path, up):
    path = up["sample"] / SAMPLE_REPORT
    report = read_json(path)
    report["specs"] += 1
    path.write_bytes(orjson.dumps(report))
    run, out = _generate(tmp_path, up, shard=0, num_shards=1)
    msg = _fails(run, "specs.parquet", SAMPLE_REPORT)
    assert f"expected {report['specs']} spec(s), found {report['specs'] - 1}" in msg
    assert _written(out) == []


# ---- verify <- generate + sample


def _verify(tmp_path, up):
    cfg = stage_config("verify", OVERRIDES)
    ctx = _ctx(tmp_path, "verify", {"generate": up["generate"], "sample": up["sample"]})
    return lambda: verify_stage.run(cfg, ctx), ctx.stage_dir


def test_verify_normal_path_passes(tmp_path, up):
    run, out = _verify(tmp_path, up)
    result = run()
    assert result["letters"] == read_json(up["sample"] / SAMPLE_REPORT)["specs"]
    assert len(list(read_jsonl(out / "verification.jsonl"))) == result["letters"]


def test_verify_with_a_missing_shard_fails_naming_it(tmp_path, up):
    (up["generate"] / "stats" / "shard-00001.json").unlink()
    run, out = _verify(tmp_path, up)
    _fails(run, "missing [1]", str(up["generate"]), "shards 0..1 of 2")
    assert _written(out) == []


def test_verify_with_no_shard_stats_fails(tmp_path, up):
    shutil.rmtree(up["generate"] / "stats")
    run, out = _verify(tmp_path, up)
    _fails(run, "stats/shard-*.json", "none")
    assert _written(out) == []


def test_verify_with_stats_without_the_shard_count_fails(tmp_path, up):
    path = up["generate"] / "stats" / "shard-00000.json"
    stats = read_json(path)
    del stats["num_shards"]
    path.write_bytes(orjson.dumps(stats))
    run, out = _verify(tmp_path, up)
    _fails(run, "shard-00000.json", "num_shards")
    assert _written(out) == []


def test_verify_with_a_truncated_or_missing_letters_file_fails_naming_it(tmp_path, up):
    path = up["generate"] / "letters" / "shard-00000.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    run, out = _verify(tmp_path, up)
    _fails(run, "shard-00000.jsonl", f"expected {len(lines)} (one per spec), found {len(lines) - 1}")
    path.unlink()
    _fails(run, "shard-00000.jsonl", "no such file")
    assert _written(out) == []


def test_verify_with_a_duplicated_letter_fails(tmp_path, up):
    path = up["generate"] / "letters" / "shard-00001.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:-1], lines[0]]))  # same count, one spec twice, one missing
    run, out = _verify(tmp_path, up)
    with pytest.raises(RuntimeError, match=r"shard-00001\.jsonl"):
        run()
    assert _written(out) == []


def test_verify_with_specs_that_disagree_with_the_report_fails(tmp_path, up):
    (up["sample"] / SAMPLE_REPORT).unlink()
    run, out = _verify(tmp_path, up)
    _fails(run, SAMPLE_REPORT, str(up["sample"]))
    assert _written(out) == []


# ---- through the launcher: the message reaches the user, and its advice works


def test_a_damaged_done_upstream_stops_the_launch_and_deleting_it_repairs(done, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(done["runs"], runs, symlinks=True)
    ingest = runs / "stages" / "ingest" / done["ingest"].name
    (ingest / "records" / "facts-0003.parquet").unlink()
    # a new sample id; local processes (the debug executor stops in pdb on an error)
    overrides = [*OVERRIDES, "cluster=local", f"paths.runs={runs}", "sample.sampler.stays_per_patient=1"]
    with pytest.raises(Exception, match=r"facts-0003\.parquet") as info:
        launch(overrides)
    msg = str(info.value)
    assert "stage sample" in msg and str(ingest) in msg and f"delete {ingest} and relaunch" in msg
    shutil.rmtree(ingest)  # what the message says to do
    result = launch(overrides)
    assert "ingest" in result.submitted and "cohort" not in result.submitted
    assert read_json(result.plan.stage("verify").folder.path / "verification_report.json")["letters"] > 0


# ---- temp files: unique per attempt, so two attempts of one shard never share one


def test_cohort_temp_files_are_unique_per_attempt_and_never_left_behind(tmp_path, monkeypatch):
    a = cohort_stage._temp(tmp_path, "Patient-00000.ndjson")
    b = cohort_stage._temp(tmp_path, "Patient-00000.ndjson")
    assert (
        a != b and a.name.startswith(f".Patient-00000.ndjson.{cohort_stage._owner()}.") and a.suffix == ".tmp"
    )
    a.unlink()
    b.unlink()
    cfg = stage_config("cohort", OVERRIDES)
    ctx = _ctx(tmp_path, "cohort", {}, shard=1, num_shards=2)
    # left by an attempt killed on this host (its pid is gone), and by a live one (a zombie)
    fhir = ctx.stage_dir / "fhir"
    fhir.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = cohort_stage._owner().rpartition("-")[0]
    stale = fhir / f".Patient-00001.ndjson.{host}-{gone.pid}.abc123.tmp"
    live = fhir / f".Patient-00001.ndjson.{cohort_stage._owner()}.def456.tmp"
    other_shard = fhir / f".Patient-00000.ndjson.{host}-{gone.pid}.abc123.tmp"
    for f in (stale, live, other_shard):
        f.write_bytes(b"half")
    cohort_stage.run(cfg, ctx)
    assert not stale.exists() and live.exists() and other_shard.exists()
    for f in (live, other_shard):
        f.unlink()
    first = {p: p.read_bytes() for p in sorted(ctx.stage_dir.rglob("*")) if p.is_file()}
    assert first and not [p for p in first if p.name.startswith(".")]
    # an attempt that dies mid-shard leaves nothing behind; a second attempt writes the same files
    calls = 0
    real = cohort_stage.truth

    def dies(person):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt("killed")
        return real(person)

    monkeypatch.setattr(cohort_stage, "truth", dies)
    with pytest.raises(KeyboardInterrupt):
        cohort_stage.run(cfg, ctx)
    monkeypatch.setattr(cohort_stage, "truth", real)
    cohort_stage.run(cfg, ctx)
    again = {p: p.read_bytes() for p in sorted(ctx.stage_dir.rglob("*")) if p.is_file()}
    assert again == first


def test_generate_chunks_are_written_through_unique_temp_names(tmp_path):
    shard = LetterShard(tmp_path, 0, 1, chunk_size=1)
    assert shard.missing_chunks(2) == [0, 1]
    # two attempts writing the same chunk at once: each has its own temp file, the rename wins
    with atomic_open(shard.chunk_path(0), "wb") as one, atomic_open(shard.chunk_path(0), "wb") as two:
        assert one.name != two.name
        one.write(b'{"spec_id": "a"}\n')
        two.write(b'{"spec_id": "a"}\n')
    shard.write_chunk(1, [{"spec_id": "b"}])
    assert shard.missing_chunks(2) == []
    assert sorted(p.name for p in shard.parts.iterdir()) == [
        "chunk-000000.size1.jsonl",
        "chunk-000001.size1.jsonl",
    ]
    # a relaunch with another (operational) chunk size does not take these chunks for its own
    assert LetterShard(tmp_path, 0, 1, chunk_size=2).missing_chunks(1) == [0]
    assert shard.finish(2, 2, {"shard": 0}) == 2
    assert [r["spec_id"] for r in read_jsonl(shard.path)] == ["a", "b"]
    assert not shard.parts.exists()
    # a second attempt that finishes after the first removed the parts keeps the first's shard
    assert shard.finish(2, 2, {"shard": 0}) == 2


def test_generate_finish_with_a_wrong_count_leaves_no_shard_file(tmp_path):
    shard = LetterShard(tmp_path, 0, 1, chunk_size=2)
    shard.write_chunk(0, [{"spec_id": "a"}])
    with pytest.raises(RuntimeError, match="1 letters for 2 specs"):
        shard.finish(1, 2, {"shard": 0})
    assert not shard.path.exists()
