"""Ingest's worker processes own their state and their GC settings; the calling process keeps its own.

Under `cluster=debug` the ingest stage runs inside the launcher's process, so anything ingest
tuned there (gc.freeze, thresholds) or left in module globals would outlive the stage.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
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
from clinsynth.ingest.sources import read_ndjson
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
