"""Ingest's worker processes own their state and their GC settings; the calling process keeps its own.

Under `cluster=debug` the ingest stage runs inside the launcher's process, so anything ingest
tuned there (gc.freeze, thresholds) or left in module globals would outlive the stage.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import clinsynth.ingest
from clinsynth.fhir.validation import FastValidator
from clinsynth.ingest import worker as worker_module
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.plans import Planner
from clinsynth.ingest.process import Processor
from clinsynth.ingest.sources import Item, read_bundles, read_ndjson
from tests import fhir_samples as fs

OPTS = Options(as_of="2026-01-01")
REPO = Path(__file__).resolve().parents[2]


def _folder(tmp_path, n: int = 30):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [orjson.dumps(r) for i in range(n) for r in (fs.patient(f"p{i}"), fs.encounter(f"e{i}", f"p{i}"))]
    (folder / "Patient.ndjson").write_bytes(b"\n".join(lines[0::2]) + b"\n")
    (folder / "Encounter.ndjson").write_bytes(b"\n".join(lines[1::2]) + b"\n")
    return folder


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_the_calling_process_keeps_its_gc_settings(tmp_path, workers):
    threshold, frozen, enabled = gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()
    report = ingest(read_ndjson(_folder(tmp_path)), tmp_path / "out", OPTS, workers=workers, chunk=8)
    assert report["rows"]["patients"] == 30
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == (threshold, frozen, enabled)


def test_no_worker_state_in_module_globals():
    """Validators, plans and processors live in per-process objects, never in an ingest module."""
    state = (FastValidator, Planner, Processor, worker_module.Worker)
    for mod in pkgutil.iter_modules(clinsynth.ingest.__path__):
        module = importlib.import_module(f"clinsynth.ingest.{mod.name}")
        held = [name for name, v in vars(module).items() if isinstance(v, state)]
        assert not held, f"clinsynth.ingest.{mod.name} holds worker state in globals: {held}"


def test_a_worker_that_dies_fails_the_run_instead_of_losing_its_chunks(tmp_path, monkeypatch):
    def die(self, seq0, items):
        os._exit(3)  # as if killed by the OOM killer: no error message, no goodbye

    monkeypatch.setattr(worker_module.Worker, "chunk", die)  # forked workers inherit the patch
    with pytest.raises(RuntimeError, match="died without finishing"):
        ingest(read_ndjson(_folder(tmp_path)), tmp_path / "out", OPTS, workers=2, chunk=8)


def test_a_worker_killed_by_a_signal_names_the_file_and_lines_of_its_block(tmp_path, monkeypatch):
    real = worker_module.Worker.chunk

    def chunk(self, seq0, items):
        if any(it.line == 20 and it.source == "Patient.ndjson" for it in items):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
        return real(self, seq0, items)

    monkeypatch.setattr(worker_module.Worker, "chunk", chunk)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        # byte ranges of ~64 KiB: a block is the whole small file; lines 1–30
        ingest(read_ndjson(_folder(tmp_path)), tmp_path / "out", OPTS, workers=2, chunk=8)
    msg = str(err.value)
    assert re.search(
        r"ingest worker [01] killed by signal 9 \(SIGKILL\) while reading Patient\.ndjson lines 1–30", msg
    ), msg
    assert "died without finishing" in msg
    assert time.monotonic() - t0 < 60  # no hang
    assert not list((tmp_path / "out").glob("_parts*")), "the attempt's parts must be removed"


@pytest.mark.parametrize("source", ["items", "bundles"])
def test_a_killed_worker_is_named_for_items_and_bundle_entries_too(tmp_path, monkeypatch, source):
    def chunk(self, seq0, items):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(worker_module.Worker, "chunk", chunk)
    if source == "items":
        src: object = [
            Item(source="mem", line=None, resource=fs.patient(f"p{i}"), location=f"#{i}") for i in range(5)
        ]
        want = r"while reading mem #0–#4"
    else:
        folder = tmp_path / "in"
        folder.mkdir()
        entries = [{"resource": fs.patient(f"p{i}")} for i in range(5)]
        (folder / "b.json").write_bytes(
            orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})
        )
        src = read_bundles(folder)
        want = r"while reading b\.json entry\[0\]–entry\[4\]"
    with pytest.raises(RuntimeError, match=r"killed by signal 9 \(SIGKILL\) " + want):
        ingest(src, tmp_path / "out", OPTS, workers=1, chunk=100)  # type: ignore[arg-type]


def test_all_workers_dead_while_the_parent_feeds_them_is_an_error_not_a_hang(tmp_path, monkeypatch):
    def chunk(self, seq0, items):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(worker_module.Worker, "chunk", chunk)
    items = (Item(source="mem", line=i + 1, raw=orjson.dumps(fs.patient(f"p{i}"))) for i in range(400))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"killed by signal 9 \(SIGKILL\) while reading mem lines"):
        ingest(items, tmp_path / "out", OPTS, workers=2, chunk=5)  # 80 chunks, a queue of 4
    assert time.monotonic() - t0 < 60


SLOW_PARENT = """
import sys, time
from pathlib import Path
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.sources import Item
from tests import fhir_samples as fs

def items():
    for i in range(10_000):
        yield Item(source="slow", line=None, resource=fs.patient(f"p{i}"))
        time.sleep(0.01)  # the parent feeds slowly: the workers wait on its queue

ingest(items(), Path(sys.argv[1]), Options(as_of="2026-01-01"), workers=2, chunk=5)
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_killing_the_ingest_process_kills_its_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PARENT, str(tmp_path / "out")], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "ingest did not start its workers"
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their ingest process"
            time.sleep(0.1)
    finally:
        proc.kill()


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return text[text.rindex(")") + 2 :].split()[0]


TWO_AT_ONCE = """
import sys
from pathlib import Path
from clinsynth.ingest.pipeline import Options, ingest
from clinsynth.ingest.sources import read_ndjson
report = ingest(read_ndjson(Path(sys.argv[1])), Path(sys.argv[2]), Options(as_of="2026-01-01"),
                workers=int(sys.argv[3]), chunk=50, buckets=4)
assert report["rows"]["patients"] == int(sys.argv[4]), report
"""


def test_two_attempts_into_one_folder_at_once_do_not_corrupt_each_other(tmp_path):
    """A zombie attempt and its relaunch: each keeps its own parts and temp files."""
    n = 400
    src, out = _folder(tmp_path, n), tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_AT_ONCE, str(src), str(out), w, str(n)],
            cwd=REPO,
            stderr=subprocess.PIPE,
        )
        for w in ("1", "0")
    ]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    from clinsynth.records import iter_patients

    recs = list(iter_patients(out / "records"))
    assert sorted(r.patient["patient_id"] for r in recs) == sorted(f"p{i}" for i in range(n))
    assert all(len(r.encounters) == 1 for r in recs)
    assert not list(out.glob("_parts*")) and not list((out / "records").glob(".*.tmp"))


def test_stale_temp_files_of_dead_attempts_on_this_host_are_removed_live_ones_kept(tmp_path):
    from clinsynth.ingest.pipeline import PARTS_PREFIX, _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    stale = out / f"{PARTS_PREFIX}{_host()}-{dead.pid}-1"
    live = out / f"{PARTS_PREFIX}{_host()}-{os.getpid()}-2"  # this test's process: alive
    other = out / f"{PARTS_PREFIX}otherhost-{dead.pid}-3"  # another host: not ours to judge
    for d in (stale, live, other):
        d.mkdir()
        (d / "w0-patients.parquet").write_bytes(b"half")
    stale_tmp = out / "records" / f".patients-0000.parquet.{_host()}-{dead.pid}-1.tmp"
    live_tmp = out / "records" / f".patients-0000.parquet.{_host()}-{os.getpid()}-2.tmp"
    stale_tmp.write_bytes(b"half")
    live_tmp.write_bytes(b"half")
    report = ingest(read_ndjson(_folder(tmp_path)), out, OPTS, workers=1)
    assert report["rows"]["patients"] == 30
    assert not stale.exists() and not stale_tmp.exists()
    assert live.exists() and other.exists() and live_tmp.exists()
