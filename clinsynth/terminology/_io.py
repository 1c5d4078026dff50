"""Reading and writing the package's CSV tables.

The tables carry their licence notices as leading ``#`` lines, because a CSV that
is copied on its own must still say where it came from (BfArM terms require the
notice in every machine-readable copy). Readers skip those lines; writers put
them back from the manifest, so the two can never drift apart.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

DATA_PACKAGE = "clinsynth.terminology.data"
DELIMITER = ";"


def data_text(name: str) -> str:
    """Text of a packaged data file; importlib.resources keeps this working from a wheel or zip."""
    return resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def data_dir() -> Path:
    """Folder of the packaged data on disk (for size checks and the builder)."""
    return Path(str(resources.files(DATA_PACKAGE)))


def load_manifest(text: str | None = None) -> dict[str, Any]:
    return json.loads(text if text is not None else data_text("manifest.json"))


def notice_lines(manifest: Mapping[str, Any], table: str) -> list[str]:
    """The notice texts of one table, in manifest order."""
    spec = manifest["tables"][table]
    return [manifest["notices"][key] for key in spec["notices"]]


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of a semicolon CSV whose leading ``#`` lines are notices, not data."""
    lines = text.splitlines()
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])), delimiter=DELIMITER)
    return [dict(row) for row in reader]


def header_comments(text: str) -> list[str]:
    """The leading ``#`` lines without the marker, to check notices are in place."""
    out = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        out.append(line[1:].strip())
    return out


def render_csv(
    manifest: Mapping[str, Any], table: str, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> str:
    """A table as CSV text, its notices and description first."""
    spec = manifest["tables"][table]
    buf = io.StringIO()
    buf.write(f"# clinsynth terminology table '{table}': {spec['description']}\n")
    buf.write(f"# source: {spec['source']}\n")
    if spec.get("version"):
        buf.write(f"# version: {spec['version']}\n")
    buf.write(f"# licence: {spec['licence']}\n")
    for notice in notice_lines(manifest, table):
        buf.write(f"# {notice}\n")
    writer = csv.DictWriter(
        buf, fieldnames=list(fields), delimiter=DELIMITER, lineterminator="\n", extrasaction="raise"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "|".join(str(v) for v in value)
    return str(value)


def parse_bool(value: str) -> bool:
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_optional_float(value: str) -> float | None:
    return float(value) if value.strip() else None
