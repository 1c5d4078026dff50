"""sweeps/*.yaml are W&B sweep specs whose command is `python -m launch`: their structure, and every
parameter is a real config key that composes and plans with each of its values (no network: W&B's
server, which validates specs, is not asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from launchers.config import compose_config, to_plain
from launchers.identity import pick
from launchers.plan import build_plan

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SPECS = sorted(SWEEPS.glob("*.yaml"))
#: what each spec must optimise: a metric `python -m launch summary` tables (launchers/results.py)
EXPECTED: dict[str, tuple[str, list[Any], str, str]] = {
    "lora_rank.yaml": ("train.lora.r", [8, 16, 32, 64], "evaluate/synthetic/strict_f1", "maximize"),
    "temperature.yaml": ("generate.sampling.temperature", [0.3, 0.7, 1.0], "verify/pass_rate", "maximize"),
}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return to_plain(compose_config([]))


def test_every_spec_is_expected_and_opens_with_its_commands() -> None:
    assert {p.name for p in SPECS} == set(EXPECTED)
    for path in SPECS:
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith(f"# wandb sweep sweeps/{path.name} ")
        assert (
            head[1].startswith("# sbatch --array=")
            and "sweeps/wandb_agent.sbatch ENTITY/PROJECT/SWEEP_ID" in head[1]
        )


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_runs_python_m_launch_with_composing_parameters(path: Path, base: dict[str, Any]) -> None:
    spec = yaml.safe_load(path.read_text())
    key, values, metric, goal = EXPECTED[path.name]
    assert spec["method"] == "grid" and spec["metric"] == {"name": metric, "goal": goal}
    assert spec["parameters"] == {key: {"values": values}}
    command = spec["command"]
    # the agent substitutes ${env} and ${args_no_hyphens} (KEY=VALUE, Hydra's override syntax)
    assert command[:4] == ["${env}", "python", "-m", "launch"] and command[-1] == "${args_no_hyphens}"
    fixed = command[4:-1]
    assert "wait=true" in fixed and "cluster=slurm" in fixed  # the metric exists once the launch has waited
    assert not any(a.startswith("${") for a in fixed)
    default = pick(base, key)
    assert default is not None, f"{key} is not a key of conf/config.yaml"
    for v in values:
        assert type(v) is type(default) or (isinstance(default, float) and isinstance(v, int)), (key, v)
    # compose and plan (typed stage configs validated) at the first point; the stage the metric is read
    # from must be part of the plan, and the swept key must reach the stage config that reads it
    plain = to_plain(compose_config([*fixed, f"{key}={values[0]}"]))
    assert pick(plain, key) == values[0]
    plan = build_plan(plain, base, check_packages=False)
    assert metric.split("/", 1)[0] in {s.name for s in plan.stages}
    assert any(pick(s.config, key) == values[0] for s in plan.stages), f"no planned stage reads {key}"
