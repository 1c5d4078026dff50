"""Composition, run/stage identity and secret handling, without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launchers.config import REDACTED, compose_config, redact, to_plain
from launchers.plan import PlanError, build_plan
from tests.helpers import toy_overrides

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "experiment").glob("*.yaml"))


def plan_for(overrides):
    return build_plan(to_plain(compose_config(overrides)), to_plain(compose_config([])), check_packages=False)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_plans(name):
    text = (Path(__file__).parents[2] / "conf" / "experiment" / f"{name}.yaml").read_text()
    head = [line for line in text.split("\n", 3)[1:3] if line.startswith("# python -m launch ")]
    assert head, f"conf/experiment/{name}.yaml must start with the command that runs it"
    args = head[0].removeprefix("# python -m launch ").split()
    assert f"+experiment={name}" in args
    plan = plan_for(args)  # the command as written (own_fhir names its source.path there)
    assert plan.stages, f"experiment {name} plans no stage"
    assert plan.experiment == name


@pytest.mark.parametrize(
    "operational",
    [
        ["cluster=debug"],
        ["cluster=slurm", "cluster.partition=gpu", "cluster.account=proj"],
        ["tracking=disabled"],
        ["tracking=wandb"],
        ["resources.toy_rows.mem_gb=64", "resources.toy_sum.nodes=4", "+resources.toy_rows.partition=big"],
        ["wait=true", "dry_run=true"],
        ["paths.runs=/elsewhere"],
    ],
)
def test_ids_are_stable_under_operational_overrides(tmp_path, operational):
    base = plan_for(toy_overrides(tmp_path))
    other = plan_for(toy_overrides(tmp_path) + operational)
    assert other.run_id == base.run_id
    assert [s.stage_id for s in other.stages] == [s.stage_id for s in base.stages]


@pytest.mark.parametrize("semantic", [["+toy.n_items=41"], ["seed=1"], ["+toy_sum.scale=2.0"]])
def test_run_id_changes_under_semantic_overrides(tmp_path, semantic):
    base = plan_for(toy_overrides(tmp_path))
    other = plan_for(toy_overrides(tmp_path) + [o.replace("+", "", 1) if "toy" in o else o for o in semantic])
    assert other.run_id != base.run_id


def test_downstream_change_keeps_upstream_stage_ids(tmp_path):
    base = plan_for(toy_overrides(tmp_path))
    other = plan_for(toy_overrides(tmp_path) + ["toy_sum.scale=3.0"])
    assert other.stage("toy_rows").stage_id == base.stage("toy_rows").stage_id
    assert other.stage("toy_rows").folder == base.stage("toy_rows").folder
    assert other.stage("toy_sum").stage_id != base.stage("toy_sum").stage_id


def test_upstream_change_propagates_downstream(tmp_path):
    base = plan_for(toy_overrides(tmp_path))
    other = plan_for(toy_overrides(tmp_path) + ["toy.n_items=41"])
    assert other.stage("toy_rows").stage_id != base.stage("toy_rows").stage_id
    # toy_sum reads nothing that changed, but it needs a different toy_rows
    assert other.stage("toy_sum").stage_id != base.stage("toy_sum").stage_id


def test_shard_count_is_part_of_the_stage_id(tmp_path):
    assert (
        plan_for(toy_overrides(tmp_path, shards=4)).stage("toy_rows").stage_id
        != plan_for(toy_overrides(tmp_path, shards=8)).stage("toy_rows").stage_id
    )


def test_plan_errors_name_the_fix(tmp_path):
    with pytest.raises(PlanError, match="pipeline is empty"):
        plan_for([])
    with pytest.raises(PlanError, match="unknown stage 'nope'"):
        plan_for(["pipeline=[nope]"])
    with pytest.raises(PlanError, match="not an array stage"):
        plan_for(["+experiment=doctor", "resources.doctor.shards=3"])
    with pytest.raises(PlanError, match="not both"):
        plan_for(toy_overrides(tmp_path) + ["+resources.toy_rows.nodes=2"])


def test_secrets_never_reach_saved_configs(tmp_path, monkeypatch):
    from launchers.submit import launch

    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-value")
    # an interpolated secret would be pickled into the jobs: the launch refuses it, unechoed
    with pytest.raises(PlanError, match=r"toy\.server_token holds the value of the secret variable") as info:
        launch(toy_overrides(tmp_path, "debug") + ["+toy.server_token=${oc.env:MY_SECRET_TOKEN}"])
    assert "s3cr3t-value" not in str(info.value)
    result = launch(
        toy_overrides(tmp_path, "debug", n_items=4, shards=1, nodes=1)
        + ["+toy.api_key=abc123", "+toy.server_token=plain-token-xyz"]
    )
    texts = [p.read_text() for p in result.run_dir.rglob("*.yaml")]
    texts += [p.read_text() for p in result.plan.stage("toy_rows").folder.path.glob("*.yaml")]
    texts += [p.read_text() for p in result.plan.stage("toy_rows").folder.path.glob("*.json")]
    assert texts
    for t in texts:
        assert "abc123" not in t and "s3cr3t-value" not in t and "plain-token-xyz" not in t
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["toy"]["api_key"] == REDACTED and saved["toy"]["server_token"] == REDACTED


def test_redact_keeps_env_var_names_and_token_counts():
    data = {"server": {"token_env": "FHIR_TOKEN", "password": "x", "api_key": None, "hf_token": "t"}}
    assert redact(data) == {
        "server": {"token_env": "FHIR_TOKEN", "password": REDACTED, "api_key": None, "hf_token": REDACTED}
    }
    assert redact({"max_tokens": 48}) == {"max_tokens": 48}  # a length, not a credential


def test_run_folders_are_private(tmp_path):
    from launchers.submit import launch

    result = launch(toy_overrides(tmp_path / "runs", "debug", n_items=4, shards=1, nodes=1))
    for p in (tmp_path / "runs", result.run_dir, result.plan.stage("toy_rows").folder.path):
        assert p.stat().st_mode & 0o077 == 0, f"{p} is readable by others"


def test_redact_hides_passwords_in_urls():
    data = {"source": {"url": "https://bob:s3cr3t@fhir.example/fhir"}, "urls": ["http://a:pw@h/x", "plain"]}
    out = redact(data)
    assert "s3cr3t" not in str(out) and "pw@" not in str(out)
    assert out["source"]["url"] == f"https://bob:{REDACTED}@fhir.example/fhir"
    assert out["urls"][1] == "plain"
