"""Secrets are named, never stored: typed `secret_env` fields, and scrubbing by value everywhere a
task or the launcher writes (task records, submitit's logs and pickles, W&B, saved configs)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest

from clinsynth.core.config import walk_fields
from clinsynth.core.registry import registered
from clinsynth.core.secrets import (
    SCRUBBED,
    Scrubber,
    is_secret_env_field,
    pasted_secrets,
    scrubbed_output,
    secret_values,
    walk_text_files,
)
from launchers.plan import PlanError, stage_config
from launchers.submit import LaunchError, launch
from tests.helpers import toy_overrides

SECRET = "tok-7f3a9c21-planted-secret"


def leaks(root: Path, value: str = SECRET) -> list[str]:
    """Every file under root whose bytes hold the value (plain, or as pickles and JSON write it)."""
    forms = {value.encode(), value.encode("unicode_escape"), pickle.dumps(value)[2:-1]}
    return [p for p, data in walk_text_files(root) if any(f in data for f in forms)]


# ----------------------------------------------------------------------------- unit


def test_the_scrubber_replaces_values_longest_first_and_ignores_short_ones():
    s = Scrubber(["abcdef", "abcdefgh", "xy"])
    assert s.text("k=abcdefgh; j=abcdef; xy") == f"k={SCRUBBED}; j={SCRUBBED}; xy"
    data = {"a": ["abcdef", 3, ("zz abcdefgh",)], "abcdef": None}
    assert s.data(data) == {"a": [SCRUBBED, 3, (f"zz {SCRUBBED}",)], SCRUBBED: None}
    assert not Scrubber([]) and Scrubber([]).text("abcdef") == "abcdef"


def test_secret_values_come_from_named_known_and_secret_looking_variables():
    env = {"MY_ACCESS": "value-one-123", "HF_TOKEN": "hf_abcdefgh", "DB_PASSWORD": "pw-123456",
           "MAX_TOKENS": "4096", "PATH": "/usr/bin:/bin", "SHORT_TOKEN": "abc"}
    got = secret_values(["MY_ACCESS"], env)
    assert sorted(got) == sorted(["value-one-123", "hf_abcdefgh", "pw-123456"])


def test_an_exception_and_its_cause_are_scrubbed_in_place():
    s = Scrubber([SECRET])
    try:
        try:
            raise KeyError(f"header {SECRET}")
        except KeyError as inner:
            raise RuntimeError("GET failed", {"auth": f"Bearer {SECRET}"}) from inner
    except RuntimeError as exc:
        s.exception(exc)
        assert SECRET not in repr(exc.args) and SECRET not in repr(exc.__cause__.args)


def test_scrubbed_output_covers_print_logging_and_escaping_errors(capfd):
    logger = logging.getLogger("t.secrets")
    with pytest.raises(ValueError) as info, scrubbed_output(Scrubber([SECRET])):
        handler = logging.StreamHandler()  # made inside, as a task's logger: bound to the scrubbed stderr
        logger.addHandler(handler)
        print(f"out {SECRET}")
        logger.warning("log %s", SECRET)
        raise ValueError(f"bad {SECRET}")
    logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert SECRET not in out + err and f"out {SCRUBBED}" in out and f"log {SCRUBBED}" in err
    assert SECRET not in str(info.value)


# ----------------------------------------------------------------------------- typed config


def test_every_env_field_of_every_stage_is_a_secret_env_field():
    env_fields = []
    for name, spec in registered().items():
        if spec.config is None:
            continue
        for key, owner, field in walk_fields(spec.config):
            if field.endswith("_env"):
                env_fields.append(key)
                assert is_secret_env_field(owner, field), f"stage {name}: {key} is not typed secret_env"
    assert {"source.token_env", "generate.backend.api_key_env"} <= set(env_fields)


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        ("ingest", ["source=server", "source.url=http://h/fhir", f"source.token_env={SECRET}"]),
        ("generate", ["generate/backend=openai", "generate.backend.base_url=http://h/v1",
                      f"generate.backend.api_key_env={SECRET}"]),
    ],
)
def test_a_secret_pasted_into_an_env_field_is_refused_without_being_echoed(stage, overrides):
    with pytest.raises(PlanError, match="NAME of an environment variable") as info:
        stage_config(stage, overrides)
    assert SECRET not in str(info.value)


def test_a_secret_variable_value_anywhere_in_the_config_stops_the_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_TOKEN", SECRET)
    assert pasted_secrets({"a": {"b": [f"x{SECRET}y"]}}) == [("a.b[0]", "FHIR_TOKEN")]
    overrides = toy_overrides(tmp_path, "debug", extra=[f"+toy.fail_while_exists=/tmp/{SECRET}"])
    match = r"toy\.fail_while_exists holds the value of the secret variable FHIR_TOKEN"
    with pytest.raises(PlanError, match=match) as info:
        launch(overrides)
    assert SECRET not in str(info.value) and leaks(tmp_path) == []


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_a_stage_that_prints_logs_and_returns_a_secret_leaves_none_under_runs(
    tmp_path, monkeypatch, executor
):
    monkeypatch.setenv("TOY_SERVICE_ACCESS", SECRET)  # a name no rule would guess: typed by the config
    runs = tmp_path / "runs"
    result = launch(toy_overrides(runs, executor, n_items=6, shards=2, nodes=1,
                                  extra=["+toy.leak_env=TOY_SERVICE_ACCESS"]))
    assert all(a.status == "ran" for a in result.actions)
    if executor == "local":  # debug runs in this process: its prints reach only the console
        logs = [p for p, data in walk_text_files(runs) if b"the token is ***" in data]
        assert logs, "the stage's prints and log lines were written (scrubbed) under runs/"
    assert leaks(runs) == []


def test_a_failure_that_quotes_a_secret_is_recorded_scrubbed(tmp_path, monkeypatch):
    executor = "local"  # debug hands a failure to pdb, which cannot read stdin under pytest
    monkeypatch.setenv("TOY_SERVICE_ACCESS", SECRET)
    runs = tmp_path / "runs"
    overrides = toy_overrides(runs, executor, n_items=6, shards=2, nodes=1,
                              extra=["+toy.leak_env=TOY_SERVICE_ACCESS", "+toy.leak_fail=true"])
    with pytest.raises(LaunchError, match=r"bad token \*\*\*") as info:
        launch(overrides)
    assert SECRET not in str(info.value)
    records = [p for p, data in walk_text_files(runs) if b"bad token ***" in data and p.endswith(".json")]
    assert records, "the task record holds the (scrubbed) error"
    assert leaks(runs) == []


def test_an_error_whose_text_comes_from_other_fields_leaves_as_a_scrubbed_copy():
    import subprocess

    with pytest.raises(Exception) as info, scrubbed_output(Scrubber([SECRET])):
        raise subprocess.CalledProcessError(1, ["curl", "-H", f"Authorization: Bearer {SECRET}"])
    text = "".join(__import__("traceback").format_exception(info.value))
    assert type(info.value).__name__ == "ScrubbedError" and "CalledProcessError" in str(info.value)
    assert SECRET not in text and SCRUBBED in text


def test_a_config_named_secret_pasted_into_another_key_stops_the_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_ACCESS", SECRET)  # a name no rule guesses: secret because token_env names it
    overrides = ["+experiment=smoke", "pipeline=[verify]", "source=server", "source.token_env=FHIR_ACCESS",
                 "source.url=http://127.0.0.1:9/fhir", f"source.snapshot=export-{SECRET}",
                 f"paths.runs={tmp_path}"]
    match = r"source\.snapshot holds the value of the secret variable FHIR_ACCESS"
    with pytest.raises(PlanError, match=match) as info:
        launch(overrides)
    assert SECRET not in str(info.value) and leaks(tmp_path) == []
