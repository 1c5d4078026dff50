"""The typed stage contract: every field is identity or operational, validated at plan time."""

from __future__ import annotations

import ast
import copy
import functools
import re
import shlex
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from clinsynth.core.config import nested_models, role_of, walk_fields
from clinsynth.core.registry import registered
from launchers.config import compose_config, to_plain
from launchers.plan import PlanError, build_plan

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def _base() -> dict[str, Any]:
    return to_plain(compose_config([]))


@functools.cache
def _plain(overrides: tuple[str, ...]) -> dict[str, Any]:
    return to_plain(compose_config(list(overrides)))


def plan_for(overrides: list[str]):
    # config checks: whether vllm/torch are installed here is another test's business
    return build_plan(copy.deepcopy(_plain(tuple(overrides))), _base(), check_packages=False)


def plan_with(overrides: list[str], dotted: str, value: Any):
    """The plan of `overrides` with one key set directly (no Hydra compose: fast)."""
    plain = copy.deepcopy(_plain(tuple(overrides)))
    node = plain
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return build_plan(plain, _base(), check_packages=False)


def ids(plan) -> dict[str, str]:
    return {s.name: s.stage_id for s in plan.stages}


def test_every_config_field_is_identity_or_operational():
    unmarked = []
    for name, spec in registered().items():
        if spec.config is None:
            continue
        for key, owner, field in walk_fields(spec.config):
            info = owner.model_fields[field]
            is_container = bool(nested_models(info.annotation))
            if role_of(owner, field) is None and not is_container:
                unmarked.append(f"{name}: {key}")
    assert not unmarked, f"fields without identity(...) or operational(why=...): {unmarked}"


# every planned variant reaches each stage's union members (backends, models, sources)
VARIANTS = [
    ["+experiment=smoke"],
    ["+experiment=smoke_hybrid"],
    ["+experiment=smoke_hybrid", "generate/backend=openai"],
    ["+experiment=smoke_hybrid", "generate/backend=hf"],
    ["+experiment=smoke_hybrid", "generate/model=qwen3_235b", "generate.model.path=/models/q"],
    ["+experiment=smoke", "source=server", "source.url=http://fhir.example/fhir"],
    ["+experiment=smoke", "source=ndjson", "source.path=/data/export"],
    ["+experiment=doctor"],
]


def _flipped(value: Any, annotation: Any) -> Any:
    """A different valid value of the same type."""
    types = {a for a in get_args(annotation)} or {annotation}
    if isinstance(value, bool):
        return not value
    if value is None:
        if int in types:
            return 3
        if float in types:
            return 2.5
        if bool in types:
            return True
        return "CHANGED"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "_changed"  # still a valid variable name for secret_env fields
    raise AssertionError(f"no flip for {value!r}")


def _operational_fields(plan) -> list[tuple[str, str, Any]]:
    """(stage, dotted key, a new value) for every operational field of every planned stage."""
    out: list[tuple[str, str, Any]] = []

    def visit(stage: str, model: BaseModel, prefix: str) -> None:
        for field, info in type(model).model_fields.items():
            value = getattr(model, field)
            if isinstance(value, BaseModel):
                visit(stage, value, f"{prefix}{field}.")
            elif role_of(type(model), field) == "operational":
                out.append((stage, f"{prefix}{field}", _flipped(value, info.annotation)))

    for st in plan.stages:
        if st.model is not None:
            visit(st.name, st.model, "")
    return out


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: " ".join(v))
def test_flipping_any_operational_field_keeps_every_stage_id(variant):
    base = plan_for(variant)
    flips = _operational_fields(base)
    assert flips or variant == ["+experiment=doctor"]
    for stage, key, value in flips:
        other = plan_with(variant, key, value)
        assert ids(other) == ids(base), f"{key}={value} (operational, stage {stage}) changed a stage id"
        assert other.run_id == base.run_id, f"{key}={value} changed the run id"
        assert _lookup(other.stage(stage).config, key) == value  # ...but the task receives it
    # and through the command line too, for one field per stage
    for stage, key, value in {s: (s, k, v) for s, k, v in flips}.values():
        other = plan_for([*variant, f"{key}={'null' if value is None else value}"])
        assert ids(other) == ids(base), f"{key}={value} (operational, stage {stage}) changed a stage id"


def _lookup(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def test_include_failed_changes_only_dataset_and_train():
    """What is trained on is the dataset stage's choice: verification and the letters never rerun."""
    base = plan_for(["+experiment=smoke", "pipeline=[train]"])
    other = plan_for(["+experiment=smoke", "pipeline=[train]", "dataset.include_failed=true"])
    changed = {s.name for s in base.stages if other.stage(s.name).stage_id != s.stage_id}
    assert changed == {"dataset", "train"}
    with pytest.raises(PlanError, match="unknown key verify"):  # the old key is gone, not ignored
        plan_for(["+experiment=smoke", "+verify.include_failed=true"])


def test_identity_fields_change_their_stage_and_what_follows():
    base = plan_for(["+experiment=smoke_hybrid"])
    other = plan_for(["+experiment=smoke_hybrid", "generate.sampling.temperature=0.3"])
    assert other.stage("sample").stage_id == base.stage("sample").stage_id
    assert other.stage("generate").stage_id != base.stage("generate").stage_id
    assert other.stage("verify").stage_id != base.stage("verify").stage_id


def test_the_doctor_id_follows_its_resources():
    base = plan_for(["+experiment=doctor"])
    for change in (["resources/doctor=gpu_2x8"], ["resources/doctor=multinode"], ["cluster=slurm"]):
        assert plan_for(["+experiment=doctor", *change]).stage("doctor").stage_id != base.stage(
            "doctor"
        ).stage_id, change


def test_the_task_receives_its_whole_stage_config():
    """The qwen3 preset's command plans tensor parallelism 8 and the engine limits into the task."""
    header = (REPO / "conf/generate/model/qwen3_235b.yaml").read_text().splitlines()[0]
    plan = plan_for(_overrides(header))
    backend = plan.stage("generate").config["generate"]["backend"]
    assert backend["kind"] == "vllm" and backend["tensor_parallel_size"] == 8
    assert backend["max_model_len"] == 8192 and backend["max_num_seqs"] == 256
    sample = plan_for(["+experiment=smoke", "sample.strict=true"]).stage("sample").config
    assert sample["sample"]["strict"] is True


@pytest.mark.parametrize("override", ["+cohort.patiens=50", "cohort.patiens=50"])
def test_a_typo_is_a_launch_error_with_the_closest_key(override):
    expected = "unknown key cohort.patiens (did you mean cohort.patients?)"
    with pytest.raises(PlanError, match=re.escape(expected)):
        plan_for(["+experiment=smoke", override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generate.backend.tensor_parallel_sise=8", "did you mean generate.backend.tensor_parallel_size?"),
        ("resources.generate.gpu=8", "did you mean resources.generate.gpus_per_node?"),
        ("cluster.partiton=gpu", "did you mean cluster.partition?"),
        ("seeds=1", "unknown key seeds (did you mean seed?)"),
        ("cohort.patients=many", "bad value for cohort.patients"),
        ("cohort.patients=0", "bad value for cohort.patients"),
        ("generate/backend=hf", "backend=hf needs a model"),
        ("generate/letters=hybrid", "letters=hybrid needs an LLM"),
        ("source=ndjson", "source.path"),
    ],
)
def test_bad_config_is_a_launch_error_naming_the_key(override, message):
    variant = "+experiment=smoke_hybrid" if "tensor" in override else "+experiment=smoke"
    with pytest.raises((PlanError, Exception), match=re.escape(message)):
        plan_for([variant, override])


def test_a_missing_optional_dependency_fails_at_plan_time(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    plain = _plain(("+experiment=smoke_hybrid",))
    with pytest.raises(PlanError, match=re.escape("pip install -e '.[gen-cpu]'")):
        build_plan(copy.deepcopy(plain), _base())
    # a dry run (a login node without the GPU extras) warns instead
    dry = build_plan({**copy.deepcopy(plain), "dry_run": True}, _base())
    assert any("vllm" in w and "gen-cpu" in w for w in dry.warnings)


def test_no_stage_module_imports_another():
    stages = REPO / "clinsynth" / "stages"
    for path in stages.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.startswith("clinsynth.stages")]
            assert not bad, f"{path.name} imports {bad}: read artifacts through clinsynth.artifacts"


def test_clinsynth_never_imports_hydra_or_submitit():
    for path in (REPO / "clinsynth").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(hydra|submitit|omegaconf)\b", text, re.M), path


# --- every command the docs and conf/ headers show plans the stage it is about ---------------


def _overrides(command: str) -> list[str]:
    words = shlex.split(command.split("#")[0] if " #" in command else command)
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # FHIR_TOKEN=... env prefixes
    i = words.index("launch")
    return [w for w in words[i + 1 :] if w not in ("-m", "--multirun", "\\")]


def _about(path: Path) -> str | None:
    rel = path.relative_to(REPO / "conf").parts
    if rel[0] in ("generate", "sample"):
        return rel[0]
    if rel[0] == "resources" and len(rel) == 3:
        return rel[1]
    if rel[0] == "source":
        return "ingest"
    return None


def _conf_commands() -> list[tuple[str, str, str | None]]:
    out = []
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        for line in path.read_text().splitlines()[:3]:
            m = re.search(r"(python -m launch .*)$", line)
            if m:
                out.append((str(path.relative_to(REPO)), m.group(1).split("   ")[0].strip(), _about(path)))
                break
    return out


def _readme_commands() -> list[tuple[str, str, str | None]]:
    """Every `python -m launch` line of the bash blocks in README.md and docs/*.md."""
    cmds = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
        where = str(path.relative_to(REPO))
        for block in blocks:
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split("  #")[0].strip()
                subcommand = re.search(r"launch (status|summary|score|rerun=|--cfg|-h)", line)
                if "python -m launch" in line and not subcommand:
                    cmds.append((where, line[line.index("python -m launch") :] if "=" not in line.split()[0]
                                 else line, None))
    return cmds


def _sweep_points(overrides: list[str]) -> list[str]:
    """The first point of a `-m` sweep (KEY=A,B,C -> KEY=A)."""
    return [o.split(",")[0] if "=" in o and "[" not in o else o for o in overrides]


@pytest.mark.parametrize("where,command,stage", _conf_commands() + _readme_commands(), ids=lambda x: str(x))
def test_every_documented_command_plans_its_stage(where, command, stage):
    overrides = _sweep_points(_overrides(command))
    plan = plan_for(overrides)
    assert plan.stages, f"{where}: `{command}` plans nothing"
    if stage is not None:
        assert stage in {s.name for s in plan.stages}, f"{where}: `{command}` does not plan {stage}"
    if where.startswith("conf/resources/") or where.startswith("conf/generate/"):
        # the command selects this very file
        path = Path(where)
        group = "/".join(path.parts[1:-1])
        assert _choices(overrides).get(group) == path.stem, (
            f"{where}: its command does not select {group}={path.stem}"
        )


def _choices(overrides: list[str]) -> dict[str, str]:
    """Hydra's record of which option each config group got."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


def test_a_password_in_a_source_url_is_refused_and_never_echoed():
    with pytest.raises(PlanError) as exc:
        plan_for(["+experiment=smoke", "source=server", "source.url=https://bob:s3cr3t@fhir.example/fhir"])
    assert "must not hold credentials" in str(exc.value) and "s3cr3t" not in str(exc.value)


def test_a_file_source_is_identified_by_what_it_reads(tmp_path, monkeypatch):
    export = tmp_path / "export"
    (export / "sub").mkdir(parents=True)
    (export / "Patient.ndjson").write_bytes(b"{}\n")
    args = ["+experiment=smoke", "source=ndjson", f"source.path={export}"]
    first = build_plan(copy.deepcopy(_plain(tuple(args))), _base())
    assert first.stage("ingest").stage_id == build_plan(copy.deepcopy(_plain(tuple(args))), _base()).stage(
        "ingest"
    ).stage_id
    (export / "sub" / "Encounter.ndjson").write_bytes(b"{}\n")  # a re-export into the same folder
    second = build_plan(copy.deepcopy(_plain(tuple(args))), _base())
    assert second.stage("ingest").stage_id != first.stage("ingest").stage_id
    assert second.stage("sample").stage_id != first.stage("sample").stage_id  # and what follows
    # the same relative path from two folders names two different exports
    for where in ("a", "b"):
        (tmp_path / where / "export").mkdir(parents=True)
        (tmp_path / where / "export" / "Patient.ndjson").write_bytes(b"{}\n")
    rel = ["+experiment=smoke", "source=ndjson", "source.path=export"]
    ids = set()
    for where in ("a", "b"):
        monkeypatch.chdir(tmp_path / where)
        ids.add(build_plan(copy.deepcopy(_plain(tuple(rel))), _base()).stage("ingest").stage_id)
    assert len(ids) == 2
    # a path that is not there stops a launch, and only warns in a dry run
    missing = ["+experiment=smoke", "source=ndjson", f"source.path={tmp_path / 'nope'}"]
    with pytest.raises(PlanError, match="does not exist"):
        build_plan(copy.deepcopy(_plain(tuple(missing))), _base())
    dry = build_plan({**copy.deepcopy(_plain(tuple(missing))), "dry_run": True}, _base())
    assert any("does not exist" in w for w in dry.warnings)
