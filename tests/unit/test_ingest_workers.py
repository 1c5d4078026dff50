"""Ingest's worker processes own their state and their GC settings; the calling process keeps its own.

Under `cluster=debug` the ingest stage runs inside the launcher's process, so anything ingest
tuned there (gc.freeze, thresholds) or left in module globals would outlive the stage.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil

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
