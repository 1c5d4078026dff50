"""own_fhir: the smoke pipeline planned on a user's FHIR export instead of the synthetic cohort.

The README and conf/experiment/own_fhir.yaml commands are planned by test_stage_config's
test_every_documented_command_plans_its_stage too; tests/stages/test_bundles_e2e.py runs the command
on the MII test bundles through verification.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from launchers.config import compose_config, to_plain
from launchers.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
MII = REPO.parent / "shared" / "external" / "mii-testdata"


@functools.cache
def _base() -> dict[str, Any]:
    return to_plain(compose_config([]))


def _plan(*overrides: str):
    plain = to_plain(compose_config(["+experiment=own_fhir", *overrides]))
    return build_plan(plain, _base(), check_packages=False)


def test_own_fhir_plans_the_smoke_pipeline_from_the_export_not_the_cohort(tmp_path):
    plan = _plan(f"source.path={tmp_path}")
    smoke = to_plain(compose_config(["+experiment=smoke"]))
    names = [s.name for s in plan.stages]
    assert "cohort" not in names and names[0] == "ingest"
    assert names == [
        n for n in (s.name for s in build_plan(smoke, _base(), check_packages=False).stages) if n != "cohort"
    ]
    assert plan.stage("ingest").config["source"] == {"kind": "bundles", "path": str(tmp_path)}
    assert plan.plain["name"] == "own_fhir" and plan.run_dir.parent.name == "own_fhir"
    assert plan.plain["compare"] == smoke["compare"]  # fine-tuned vs one-shot vs rules, as smoke
    assert plan.plain["sample"]["sampler"]["stays_per_patient"] is None  # every stay of a real patient
    assert plan.plain["train"] == smoke["train"]  # smoke's CPU fine-tuning


def test_the_source_can_be_ndjson_or_a_server():
    nd = _plan("source=ndjson", "source.path=/data/export").stage("ingest").config["source"]
    assert nd == {"kind": "ndjson", "path": "/data/export"}
    server = _plan("source=server", "source.url=https://fhir.example/fhir").stage("ingest").config["source"]
    assert server["kind"] == "server" and server["token_env"] == "FHIR_TOKEN"


def test_without_a_path_the_plan_says_what_is_missing():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue, match=r"source\.path"):
        _plan()


@pytest.mark.skipif(not MII.is_dir(), reason=f"MII test data absent ({MII}; ../shared)")
def test_the_documented_example_reads_the_mii_bundles(monkeypatch):
    monkeypatch.chdir(REPO)  # the command's path is relative to the checkout, as a user types it
    plan = _plan("source.path=../shared/external/mii-testdata")
    assert not [w for w in plan.warnings if "ingest" in w], plan.warnings  # the export was found and read
    inputs = plan.stage("ingest").config["source"]
    assert inputs["kind"] == "bundles"
