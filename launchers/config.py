"""Compose the Hydra config and split it into what changes results and what does not."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from clinsynth.core.secrets import Scrubber

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: Top-level keys that say where and how a run executes, never what it computes (`compare` launches
#: other runs beside this one: launchers/compare.py).
OPERATIONAL_KEYS = frozenset(
    {"cluster", "resources", "tracking", "paths", "wait", "dry_run", "stage_modules", "compare", "estimate",
     "hydra"}
)

# whole words at the end of a key: hf_token, password, api_key — not max_tokens
_SECRET_RE = re.compile(r"(?:^|[_.-])(?:token|secret|password|passwd|api_?key|credentials?)$", re.IGNORECASE)
REDACTED = "***redacted***"


def conf_dir() -> Path:
    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"config folder {CONF_DIR} not found: install clinsynth from a checkout "
            "(pip install -e .) so that conf/ ships beside launchers/"
        )
    return CONF_DIR


_NOT_IN_CONFIG = re.compile(r"Could not override '([^']+)'")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with command-line style overrides.

    `key=value` for a key the config lacks is composed as `+key=value`, so the plan-time
    validation names it ("unknown key cohort.patiens (did you mean cohort.patients?)") instead
    of Hydra's advice to append it, which would hide the typo.
    """
    todo = list(overrides)
    for _ in range(len(todo) + 1):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="launch"):
                cfg = compose(config_name="config", overrides=todo)
            break
        except ConfigCompositionException as exc:
            m = _NOT_IN_CONFIG.search(str(exc))
            hits = [i for i, o in enumerate(todo) if m and o.partition("=")[0] == m.group(1)]
            if not hits:
                raise
            todo[hits[0]] = "+" + todo[hits[0]]
    OmegaConf.set_struct(cfg, False)
    return cfg


def to_plain(cfg: DictConfig | Any) -> Any:
    """Resolved plain containers without Hydra's own node."""
    # a mandatory value left as ??? (e.g. source.path) is an error now, not in a job an hour later
    data = (
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        if isinstance(cfg, DictConfig)
        else cfg
    )
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "hydra"}
    return data


def semantic(plain: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in plain.items() if k not in OPERATIONAL_KEYS}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not data and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: data}


def delta(plain: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Flattened keys whose value differs from the defaults (removed keys map to None)."""
    a, b = flatten(plain), flatten(base)
    out = {k: v for k, v in a.items() if b.get(k, _MISSING) != v}
    out.update({k: None for k in b if k not in a})
    return dict(sorted(out.items()))


_MISSING = object()


#: `scheme://user:password@host` -> `scheme://user:***@host`
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+@")


def redact(data: Any, scrubber: Scrubber | None = None) -> Any:
    """Replace values of secret-looking keys, passwords in URLs and the values of secret environment
    variables (wherever they were pasted), so saved configs hold no credentials."""
    scrubber = Scrubber.from_env() if scrubber is None else scrubber
    return scrubber.data(_redact(data))


def _redact(data: Any) -> Any:
    if isinstance(data, str):
        return _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}{REDACTED}@", data)
    if isinstance(data, dict):
        secret = {
            k for k, v in data.items() if isinstance(k, str) and _SECRET_RE.search(k) and v not in (None, "")
        }
        return {k: REDACTED if k in secret else _redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact(v) for v in data]
    return data


def resources_for(plain: dict[str, Any], stage: str) -> dict[str, Any]:
    """resources.default overlaid with resources.<stage>."""
    res = plain.get("resources") or {}
    merged = dict(res.get("default") or {})
    merged.update(res.get(stage) or {})
    return merged
