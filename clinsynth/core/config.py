"""Typed stage configuration: every field is identity (it changes the stage's output) or operational.

A stage declares one `StageConfig` model whose fields are the top-level config keys it reads
(its own namespace, e.g. `generate`, plus shared keys such as `seed`). The task receives the
whole validated model; the stage id hashes only `identity_view(model)`, so flipping a worker
count, a timeout or a server URL never regenerates anything. Defaults live in `conf/` only:
the models declare types and roles, not values (a field missing from the YAML is an error).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Role = Literal["identity", "operational"]
_ROLE = "role"
_WHY = "why"


class StageConfig(BaseModel):
    """Base of every stage config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def identity(default: Any = ..., *, why: str | None = None, **kwargs: Any) -> Any:
    """A field whose value changes the stage's output: it enters the stage id."""
    return Field(default, json_schema_extra={_ROLE: "identity", _WHY: why or ""}, **kwargs)


def operational(default: Any = ..., *, why: str, **kwargs: Any) -> Any:
    """A field that says how or where a stage runs, never what it computes: not in the stage id."""
    if not why:
        raise ValueError("an operational field needs a reason (why=...)")
    return Field(default, json_schema_extra={_ROLE: "operational", _WHY: why}, **kwargs)


_SECRET_ENV = "secret_env"
#: what a secret_env field holds: the NAME of an environment variable, never the secret itself
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


def secret_env(default: Any = ..., *, why: str, **kwargs: Any) -> Any:
    """An operational field naming the environment variable that holds a secret (token, API key).

    The secret's value is read from the environment in the task, never enters a config, and is
    scrubbed by value from everything written (`clinsynth.core.secrets`). A value that is not a
    variable name (a token pasted by mistake) is refused without being echoed.
    """
    extra: dict[str, Any] = {_ROLE: "operational", _WHY: why, _SECRET_ENV: True}
    return Field(default, json_schema_extra=extra, pattern=ENV_NAME_PATTERN, **kwargs)


def role_of(model: type[BaseModel], name: str) -> Role | None:
    """A field's role; a nested config model without a role of its own is a plain container (None)."""
    extra = model.model_fields[name].json_schema_extra
    role = extra.get(_ROLE) if isinstance(extra, dict) else None
    return role  # type: ignore[return-value]


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field's annotation can hold (through Optional, Union, Annotated, list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return nested_models(get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, tuple, dict):
        out: list[type[BaseModel]] = []
        for arg in get_args(annotation):
            out += [m for m in nested_models(arg) if m not in out]
        return out
    return []


def walk_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel], str]]:
    """(dotted key, owning model, field name) of every field, depth first, through nested models."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, model, name
        for sub in nested_models(info.annotation):
            yield from walk_fields(sub, f"{key}.")


def identity_view(value: Any) -> Any:
    """The identity fields of a validated config (recursively); what a stage id hashes."""
    if isinstance(value, BaseModel):
        cls = type(value)
        out: dict[str, Any] = {}
        for name in cls.model_fields:
            role = role_of(cls, name)
            if role == "operational":
                continue
            out[name] = identity_view(getattr(value, name))
        return out
    if isinstance(value, (list, tuple)):
        return [identity_view(v) for v in value]
    if isinstance(value, dict):
        return {k: identity_view(v) for k, v in value.items()}
    return value


def dump(value: BaseModel) -> dict[str, Any]:
    """Plain JSON-able dict of a validated config (what a task receives and a folder records)."""
    return value.model_dump(mode="json")


#: inputs never echoed in an error: a password in a URL, the value of a secret-looking key
_URL_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
_SECRET_KEY = re.compile(r"(?:^|[_.-])(?:token|secret|password|passwd|api_?key|credentials?)$", re.I)


class ConfigError(ValueError):
    """One message per bad key: `stage generate: unknown key generate.backend.tp (did you mean ...?)`."""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that owns the last element of `loc` (union tags and list indices are stepped over)."""
    current: list[type[BaseModel]] = [model]
    for part in loc[:-1]:
        nxt: list[type[BaseModel]] = []
        for m in current:
            if isinstance(part, str) and part in m.model_fields:
                nxt += nested_models(m.model_fields[part].annotation)
        if not nxt:
            # a discriminated-union tag ('vllm') or a list index: keep the candidates whose tag matches
            tagged = [m for m in current if _tag(m) == part]
            nxt = tagged or current if not isinstance(part, int) else current
        current = nxt
    return current[0] if current else None


def _tag(model: type[BaseModel]) -> Any:
    """The value of a union member's discriminator (a field typed as a one-value Literal)."""
    for info in model.model_fields.values():
        args = get_args(info.annotation)
        if get_origin(info.annotation) is Literal and len(args) == 1:
            return args[0]
    return None


def _dotted(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """Dotted config key of an error location, without union tags."""
    keys: list[str] = []
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            keys.append(f"[{part}]")
            continue
        owners = [m for m in current if isinstance(part, str) and part in m.model_fields]
        if owners:
            keys.append(str(part))
            current = [n for m in owners for n in nested_models(m.model_fields[part].annotation)] or current
        elif any(_tag(m) == part for m in current):
            current = [m for m in current if _tag(m) == part]
        else:
            keys.append(str(part))
    return ".".join(keys).replace(".[", "[")


def _is_secret_env(model: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    owner = _model_at(model, loc)
    name = loc[-1] if loc else None
    if owner is None or not isinstance(name, str) or name not in owner.model_fields:
        return False
    extra = owner.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(_SECRET_ENV))


def explain(exc: ValidationError, model: type[BaseModel], stage: str, prefix: str = "") -> ConfigError:
    """A launch error that names every bad key, suggests the closest valid key and says what to do.

    `prefix` is the dotted path of the validated node (`resources.generate.`); empty for a stage.
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = prefix + _dotted(loc, model)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc)
            valid = sorted(owner.model_fields) if owner else []
            name = str(loc[-1])
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6) or [
                v for v in valid if v.startswith(name) or name in v
            ][:1]
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
            lines.append(f"unknown key {key}{hint}; valid keys here: {', '.join(valid)}")
        elif kind == "missing":
            lines.append(f"missing value for {key}: set {key}=... on the command line or in conf/")
        elif kind == "string_pattern_mismatch" and _is_secret_env(model, loc):
            lines.append(
                f"bad value for {key}: give the NAME of an environment variable that holds the secret "
                f"(e.g. {key}=MY_TOKEN, then export MY_TOKEN=...), not the secret itself (not shown)"
            )
        elif kind == "union_tag_invalid":
            lines.append(f"{key}: {err['msg']}")
        else:
            got = err.get("input")
            secret = isinstance(got, str) and (
                _URL_PASSWORD.search(got) or _SECRET_KEY.search(key) or _is_secret_env(model, loc)
            )
            shown = "" if isinstance(got, (dict, list)) or secret else f" (got {got!r})"
            lines.append(f"bad value for {key}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return ConfigError((f"{stage}: " if stage else "") + "; ".join(lines))
