"""Secrets are named in the config and live in the environment; their values are scrubbed by value.

Design §10: a token, key or password never appears in a saved config, a log, a task record, a
pickle or W&B. Key names alone cannot promise that (a token pasted into an unrelated field, a
server that echoes our Authorization header into an error message), so every text a task or
the launcher writes passes `Scrubber.text`, which replaces the *values* of secret environment
variables: the ones a stage config names through a `secret_env` field (`source.token_env`,
`generate.backend.api_key_env`), well-known ones (`WANDB_API_KEY`, `HF_TOKEN`, …) and any
variable whose name ends in TOKEN, SECRET, PASSWORD, API_KEY or CREDENTIALS.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from pydantic import BaseModel

from clinsynth.core.config import _SECRET_ENV, nested_models

SCRUBBED = "***"
#: a value shorter than this is not a credential worth replacing everywhere ("1", "true", "dev")
MIN_SECRET_LEN = 6
#: variables that hold credentials whatever a config says
KNOWN_SECRET_ENV = (
    "WANDB_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "FHIR_TOKEN",
    "OPENAI_API_KEY",
    "MUNGE_KEY",
)
_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIALS?)$", re.IGNORECASE)


def is_secret_env_field(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(_SECRET_ENV))


def secret_env_names(config: BaseModel | None) -> set[str]:
    """The variable names a validated stage config points at through its `secret_env` fields."""
    out: set[str] = set()
    if config is None:
        return out
    for name in type(config).model_fields:
        value = getattr(config, name)
        if is_secret_env_field(type(config), name) and isinstance(value, str) and value:
            out.add(value)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, BaseModel) and nested_models(type(item)):
                out |= secret_env_names(item)
    return out


def secret_env(names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{variable: value} of the secret variables set in `environ` (values long enough to matter)."""
    env = os.environ if environ is None else environ
    wanted = set(names) | set(KNOWN_SECRET_ENV) | {k for k in env if _SECRET_NAME.search(k)}
    return {k: env[k] for k in sorted(wanted) if k in env and len(env[k]) >= MIN_SECRET_LEN}


def secret_values(names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret variables set in `environ`, longest first (so a prefix never wins)."""
    return sorted(set(secret_env(names, environ).values()), key=len, reverse=True)


def pasted_secrets(
    data: Any, environ: Mapping[str, str] | None = None, path: str = "", names: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """(config key, variable) for every config string that contains a secret variable's value.

    A launch refuses these: the config is pickled into jobs and saved beside the results, so a
    secret belongs in the environment, named by a `*_env` key."""
    found: list[tuple[str, str]] = []
    secrets = secret_env(names, environ)
    if not secrets:
        return found

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, str):
            found.extend((key, name) for name, value in secrets.items() if value in obj)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{key}[{i}]")

    walk(data, path)
    return found


class Scrubber:
    """Replaces secret values in text and in nested data; a no-op when there are none."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = sorted({v for v in values if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(v) for v in self.values)) if self.values else None

    @classmethod
    def from_env(cls, names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> Scrubber:
        return cls(secret_values(names, environ))

    def __bool__(self) -> bool:
        return self._re is not None

    def text(self, s: str) -> str:
        return self._re.sub(SCRUBBED, s) if self._re is not None else s

    def data(self, obj: Any) -> Any:
        """Strings anywhere in dicts, lists and tuples (keys included); other values as they are."""
        if self._re is None:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.data(k): self.data(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.data(v) for v in obj)
        return obj

    def exception(self, exc: BaseException) -> BaseException:
        """Scrub the arguments of an exception and of its causes in place (pickled and recorded)."""
        seen: set[int] = set()
        cur: BaseException | None = exc
        while self._re is not None and cur is not None and id(cur) not in seen:
            seen.add(id(cur))
            with contextlib.suppress(Exception):  # a type whose args cannot be set
                cur.args = tuple(self.data(a) for a in cur.args)
            cur = cur.__cause__ or cur.__context__
        return exc

    def stream(self, raw: TextIO) -> TextIO:
        return raw if self._re is None else ScrubbedStream(raw, self)  # type: ignore[return-value]


@contextlib.contextmanager
def scrubbed_output(scrubber: Scrubber) -> Iterator[Scrubber]:
    """Inside: stdout and stderr (so logging's stream handlers and tracebacks printed by submitit)
    are scrubbed, and an exception that leaves has its arguments scrubbed before it is pickled."""
    if not scrubber:
        yield scrubber
        return
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = scrubber.stream(old_out), scrubber.stream(old_err)
    try:
        yield scrubber
    except Exception as exc:
        scrubber.exception(exc)
        text = "".join(traceback.format_exception(exc))
        if scrubber.text(text) != text:
            # still in the text after its args were scrubbed (a message built from other fields,
            # e.g. CalledProcessError.cmd, pydantic's input_value, notes, sub-exceptions): what
            # submitit pickles and logs is a scrubbed copy of the whole formatted traceback
            raise ScrubbedError(scrubber.text(text)) from None
        raise
    finally:
        sys.stdout, sys.stderr = old_out, old_err


class ScrubbedError(RuntimeError):
    """An error whose own text held a secret: its formatted traceback, secret values replaced."""


class ScrubbedStream(io.TextIOBase):
    """A text stream that scrubs each write (stdout/stderr of a task: submitit's .out/.err logs).

    A secret split across two writes is not caught; print and logging write whole messages.
    """

    def __init__(self, raw: TextIO, scrubber: Scrubber) -> None:
        self.raw = raw
        self.scrubber = scrubber

    def write(self, s: str) -> int:
        self.raw.write(self.scrubber.text(s))
        return len(s)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")


def walk_text_files(root: os.PathLike[str] | str) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file under root: what a leak check greps."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    yield p, fh.read()
