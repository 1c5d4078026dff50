"""docs/configuration.md is generated from the typed configs: it must equal what the generator prints now."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from clinsynth.core.config import walk_fields
from clinsynth.core.registry import BUILTIN_STAGE_MODULES, registered
from launchers import docs_config
from launchers.validate import Launcher, Resources

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def _generated() -> str:
    return docs_config.render()


def test_the_committed_reference_is_the_generated_one():
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == _generated(), (
        "docs/configuration.md is stale (a config model, a default or a conf/ comment changed): "
        f"run `{docs_config.COMMAND}` and commit the result"
    )


def _documented_keys(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def test_every_field_of_every_config_model_is_in_the_reference():
    keys = _documented_keys(_generated())
    wildcards = [k[: -len("*")] for k in keys if k.endswith(".*")]
    builtin = [s for s in registered().values() if s.module in BUILTIN_STAGE_MODULES]  # not test stages
    models = [spec.config for spec in builtin if spec.config is not None] + [Launcher]
    missing = []
    for model in models:
        for key, _, _ in walk_fields(model):
            covered = key in keys or any(key.startswith(w) for w in wildcards)
            # a plain container (no role of its own) is covered by the rows of its fields
            if not covered and not any(k.startswith(key + ".") for k in keys):
                missing.append(key)
    resources = [f"resources.<stage>.{k}" for k in Resources.model_fields]
    missing += [k for k in resources if k not in keys]
    assert not missing, f"fields missing from docs/configuration.md: {missing}"


def test_defaults_come_from_conf_and_roles_from_the_models():
    rows = {
        m.group(1): m.group(2).split(" | ")
        for m in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", _generated(), re.M)
    }
    # cells: when, type, default, role, why
    assert rows["cohort.patients"][2:4] == ["`200`", "identity"]
    assert rows["ingest.workers"][3] == "operational"
    assert rows["train.lora.r"][2] == "`16`"
    assert rows["dataset.model"][2] == "`${train.model}`"  # interpolations stay unresolved
    assert rows["source.path"][2] == "**required**"  # ??? in conf/source/ndjson.yaml
    assert "generate/backend=vllm" in rows["generate.backend.tensor_parallel_size"][0]
    assert rows["resources.<stage>.shards"][3] == "identity"
    assert rows["cluster.signal_delay_s"][2] == "`120`"


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(docs_config, "OUTPUT", stale)
    monkeypatch.setattr(docs_config, "render", _generated)
    assert docs_config.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    stale.write_text(_generated(), encoding="utf-8")
    assert docs_config.main(["--check"]) == 0


def test_stages_are_listed_in_pipeline_order_whatever_was_imported_first():
    # the registry fills in import order, which differs per pytest worker; the file must not
    listed = re.findall(r"^## `([a-z_]+)`$", _generated(), re.M)
    by_module = {s.name: s.module for s in registered().values()}
    modules = [by_module[name] for name in listed if name in by_module]
    assert modules == sorted(modules, key=BUILTIN_STAGE_MODULES.index)
    assert len(modules) == len(BUILTIN_STAGE_MODULES)
