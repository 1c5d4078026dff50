"""Progress of long stages: rate-limited log lines and files, and what `launch status` shows of them."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from rich.console import Console

from clinsynth.core.atomic import read_json, write_json
from clinsynth.core.context import StageContext
from clinsynth.core.progress import (
    ProgressReporter,
    format_duration,
    progress_line,
    progress_path,
    read_progress,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _reporter(tmp_path: Path, clock: Clock, log: logging.Logger) -> ProgressReporter:
    return ProgressReporter(
        "extract", progress_path(tmp_path, 3), log, attempt=2, log_every_s=10, write_every_s=2,
        clock=clock, wall=lambda: 1.7e9 + clock.t,
    )  # fmt: skip


def test_lines_and_writes_are_rate_limited(tmp_path, caplog):
    clock, log = Clock(), logging.getLogger("test.progress")
    rep = _reporter(tmp_path, clock, log)
    writes: list[int] = []
    real_write = rep._write
    rep._write = lambda done, *a: (writes.append(done), real_write(done, *a))
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for done in range(101):  # 100 letters at 4 letters/s: 25 s
            rep.update(done, 100, "letters")
            clock.t += 0.25
    lines = [r.getMessage() for r in caplog.records]
    # the first call, one per 10 s, and the last
    assert lines[0] == "extract: 0/100 letters (0%)"
    assert lines[1] == "extract: 40/100 letters (40%), 4.0 letters/s, ~15 s left"
    assert lines[-1] == "extract: 100/100 letters (100%), 4.0 letters/s"
    assert len(lines) == 4
    # one write per 2 s (every 8th letter) plus the last: not one per call
    assert writes[0] == 0 and writes[-1] == 100 and 12 <= len(writes) <= 15
    data = read_json(progress_path(tmp_path, 3))
    assert data["done"] == data["total"] == 100 and data["unit"] == "letters"
    assert data["rate"] == pytest.approx(4.0) and data["eta_s"] is None and data["attempt"] == 2
    assert data["stage"] == "extract" and data["updated_at"] >= data["started_at"]
    # the end is reported once
    rep.update(100, 100, "letters")
    assert len(caplog.records) == 4


def test_the_rate_counts_only_this_attempts_work_and_a_new_phase_starts_afresh(tmp_path, caplog):
    clock, log = Clock(), logging.getLogger("test.progress")
    rep = _reporter(tmp_path, clock, log)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        rep.update(300, 400, "steps")  # resumed at step 300
        clock.t += 20
        rep.update(310, 400, "steps")
        assert read_progress(tmp_path, 3)["rate"] == pytest.approx(0.5)
        rep.update(0, 6, "letters")  # another count: its own first line and rate
        clock.t += 3
        rep.update(3, 6, "letters")
    assert [r.getMessage() for r in caplog.records] == [
        "extract: 300/400 steps (75%)",
        "extract: 310/400 steps (78%), 0.5 steps/s, ~3 min left",
        "extract: 0/6 letters (0%)",
    ]
    assert read_progress(tmp_path, 3)["done"] == 3


def test_unknown_total_and_formats():
    line = progress_line("ingest", 12000, None, "resources", 3100.4, None)
    assert line == "ingest: 12000 resources, 3100 resources/s"
    assert progress_line(None, 37, 43, "letters", 2.1, 2.9) == "37/43 letters (86%), 2.1 letters/s, ~3 s left"
    assert progress_line("train", 1, 500, "steps", 0.0523, 9540) == (
        "train: 1/500 steps (0%), 0.052 steps/s, ~2 h 39 min left"
    )
    assert [format_duration(s) for s in (0, 59.6, 100, 3600, 86400 * 3 + 3600)] == [
        "0 s", "1 min", "1 min 40 s", "1 h", "3 d 1 h",
    ]  # fmt: skip


def test_only_rank_0_reports_one_file_per_shard(tmp_path):
    for rank in (0, 1):
        ctx = StageContext(
            stage="generate", stage_id="x", stage_dir=tmp_path, shard=7, num_shards=9, rank=rank, world_size=2
        )
        ctx.progress(rank + 1, 10, "letters")
    assert [p.name for p in (tmp_path / "progress").iterdir()] == ["00007.json"]
    assert read_progress(tmp_path, 7)["done"] == 1


def test_a_progress_write_that_fails_does_not_fail_the_stage(tmp_path, caplog):
    (tmp_path / "progress").write_text("a file where the folder should be")
    rep = ProgressReporter("verify", progress_path(tmp_path, 0), logging.getLogger("test.progress"))
    with caplog.at_level(logging.WARNING, logger="test.progress"):
        rep.update(1, 2, "letters")
        rep.update(2, 2, "letters")
    assert sum("could not write progress" in r.getMessage() for r in caplog.records) == 1
    assert read_progress(tmp_path, 0) is None


# ---- launch status


def _stage_with_running_unit(runs: Path, start: float) -> tuple[Path, Path]:
    """A run folder whose extract stage (3 shards) has shard 0 done, shard 1 running, shard 2 not started."""
    from launchers.folders import link_stage, stage_folder

    run_dir = runs / "exp" / "run1"
    folder = stage_folder(runs, "extract", "abc123").create()
    folder.write_config({"needs": {}})
    folder.write_meta({"n_units": 3, "num_shards": 3})
    folder.mark_unit_complete(0)
    # shard 1 runs in a debug task of this very process: its record says so, and it is alive
    rec = {"unit": 1, "status": "running", "executor": "debug", "pid": __import__("os").getpid(),
           "host": socket.gethostname(), "job_id": "debug-1", "start": start}  # fmt: skip
    write_json(folder.task_record_path(1), {**rec, "attempts": [dict(rec)]})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    link_stage(run_dir, "extract", folder)
    return run_dir, folder.path


def _status_text(run_dir: Path) -> str:
    from launchers.status import print_status

    console = Console(width=250, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_status(run_dir, console)
    return console.export_text()


def test_status_shows_a_running_units_progress(tmp_path):
    now = time.time()
    run_dir, stage_dir = _stage_with_running_unit(tmp_path, start=now - 60)
    write_json(progress_path(stage_dir, 1), {"done": 37, "total": 43, "unit": "letters", "rate": 2.1,
                                             "eta_s": 2.9, "updated_at": now - 4, "attempt": 1})  # fmt: skip
    # a done shard's file is history, not progress
    write_json(progress_path(stage_dir, 0), {"done": 5, "total": 43, "unit": "letters", "updated_at": now})
    from launchers.status import run_status

    (st,) = run_status(run_dir)
    assert st.units[1].state == "running" and st.units[1].progress is not None
    assert st.units[0].progress is None
    text = _status_text(run_dir)
    line = next(row for row in text.splitlines() if "37/43" in row)
    assert "running" in line
    assert "37/43 letters (86%), 2.1 letters/s, ~3 s left, updated 4 s ago" in line
    assert "5/43" not in text


def test_status_does_not_show_an_earlier_attempts_progress_as_live(tmp_path):
    now = time.time()
    run_dir, stage_dir = _stage_with_running_unit(tmp_path, start=now - 10)
    # written by the previous attempt, before this one started
    write_json(progress_path(stage_dir, 1), {"done": 20, "total": 43, "unit": "letters", "rate": 2.0,
                                             "eta_s": 11, "updated_at": now - 100})  # fmt: skip
    from launchers.status import run_status

    (st,) = run_status(run_dir)
    assert st.units[1].state == "running" and st.units[1].progress is None
    assert "20/43" not in _status_text(run_dir)


def test_the_wait_display_sums_a_stages_running_tasks(tmp_path):
    from launchers.status import StageStatus, UnitStatus, stage_progress

    def unit(u: int, prog: dict | None) -> UnitStatus:
        return UnitStatus(unit=u, state="running" if prog else "done", progress=prog)  # type: ignore[arg-type]

    st = StageStatus("generate", "abc", tmp_path, "running", 3)
    assert stage_progress(st) == ""
    st.units = {
        0: unit(0, None),
        1: unit(1, {"done": 30, "total": 40, "unit": "letters", "rate": 1.0, "eta_s": 10.0}),
        2: unit(2, {"done": 10, "total": 40, "unit": "letters", "rate": 0.5, "eta_s": 60.0}),
    }
    assert stage_progress(st) == "40/80 letters (50%), 1.5 letters/s, ~1 min left (2 tasks)"
    del st.units[2]
    assert stage_progress(st) == "30/40 letters (75%), 1.0 letters/s, ~10 s left"
