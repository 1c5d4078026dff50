"""Acceptance: after a smoke run from a token-protected FHIR server (token in FHIR_TOKEN, W&B
offline on), and after the two ways a user could hand the token over on the command line
(`+source.token=…`, `user:password@` in the URL), no byte of the token is under runs/."""

from __future__ import annotations

import orjson
import pytest

from launchers.plan import PlanError
from launchers.submit import launch
from tests.fhir_server.fixture import fhir_server  # noqa: F401 - pytest fixture
from tests.unit.test_secrets import leaks


def test_a_smoke_run_from_a_token_protected_server_leaves_no_secret_under_runs(
    tmp_path, fhir_server, monkeypatch  # noqa: F811
):
    runs = tmp_path / "runs"
    small = ["cohort.patients=12", "tracking=disabled", f"paths.runs={runs}"]
    cohort = launch(["+experiment=smoke", "pipeline=[cohort]", "cluster=debug", *small])
    fhir = cohort.plan.stage("cohort").folder.path / "fhir"
    files = sorted(fhir.glob("*.ndjson"))
    resources = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    fhir_server.reset()
    fhir_server.load(resources)
    token = fhir_server.token
    assert len(token) >= 6
    monkeypatch.setenv("FHIR_TOKEN", token)

    server = ["source=server", f"source.url={fhir_server.base_url}", "source.page_size=50"]
    run = launch(["+experiment=smoke",
        "pipeline=[verify]", *server, "cluster=local", *small, "tracking=offline"])
    assert all(a.status == "ran" for a in run.actions if a.stage != "cohort")
    ingest = orjson.loads((run.plan.stage("ingest").folder.path / "ingest_report.json").read_bytes())
    assert ingest["resources_read"] == len(resources) and ingest["resources_quarantined"] == 0
    assert list(run.plan.stage("verify").folder.path.rglob("*")) and list(runs.rglob("wandb/**/*"))
    requests = fhir_server.requests_log()
    assert requests and all(r.get("status") != 401 for r in requests)  # the token was sent and accepted

    with pytest.raises(PlanError, match=r"unknown key source\.token") as info:
        launch(["+experiment=smoke",
            "pipeline=[verify]", *server, f"+source.token={token}", "cluster=local", *small])
    assert token not in str(info.value)
    bad_url = fhir_server.base_url.replace("://", f"://reader:{token}@")
    with pytest.raises(PlanError, match="must not hold credentials") as info:
        launch(["+experiment=smoke",
            "pipeline=[verify]", "source=server", f"source.url={bad_url}", "cluster=local", *small])
    assert token not in str(info.value)

    assert leaks(runs, token) == []
