"""Where FHIR resources come from: bulk-export NDJSON, Bundle files, or a FHIR REST server.

Every source yields `Item`s in an order that puts Patients, Medications and Encounters
first, so references to them can be checked as the stream goes by (bounded memory).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from clinsynth.ingest.extract import REFERENCE_TARGETS


@dataclass
class Item:
    source: str  # file name or URL
    line: int | None  # 1-based line in an NDJSON file; None for Bundle entries and pages
    raw: bytes | None = None  # an NDJSON line, parsed by the worker
    resource: dict[str, Any] | None = None  # an already parsed Bundle entry / page entry
    location: str | None = None  # entry[3], page 2 entry 7, ...
    error: str | None = None  # the source could not even produce a resource (malformed file)


class SourceError(RuntimeError):
    """The source as a whole cannot be read (missing folder, server unreachable after retries)."""


def _priority(resource_type: str) -> tuple[int, str]:
    return (
        REFERENCE_TARGETS.index(resource_type) if resource_type in REFERENCE_TARGETS else 9,
        resource_type,
    )


_TYPE_RE = re.compile(r"^([A-Z][A-Za-z]+)")


def ndjson_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(f"NDJSON source {path} does not exist: point source.path at a bulk-export folder")
    files = [p for p in path.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz"))]
    if not files:
        raise SourceError(f"no *.ndjson files in {path}")

    def key(p: Path) -> tuple[tuple[int, str], str]:
        m = _TYPE_RE.match(p.name)
        return _priority(m.group(1) if m else "~"), p.name

    return sorted(files, key=key)


@dataclass
class NdjsonSource:
    """A bulk-export folder (or one file). Iterating yields one Item per non-blank line; `ranges()`
    lets worker processes read byte ranges themselves instead of the main process shipping lines."""

    path: Path

    def __iter__(self) -> Iterator[Item]:
        for f in ndjson_files(self.path):
            opener = gzip.open if f.name.endswith(".gz") else open
            with opener(f, "rb") as fh:
                for i, line in enumerate(fh, 1):
                    line = line.strip()
                    if line:
                        yield Item(source=f.name, line=i, raw=line)

    def ranges(self, target_bytes: int) -> Iterator[tuple[tuple[Path, int, int, int], int] | list[Item]]:
        """((file, start, end, first line number), lines in it), ranges ending on line boundaries,
        in file order; gzip files cannot be seeked and come as lists of Items."""
        for f in ndjson_files(self.path):
            if f.name.endswith(".gz"):
                yield from batched(NdjsonSource(f), 10_000)
                continue
            line = 1
            with open(f, "rb") as fh:
                start = 0
                while True:
                    block = fh.read(target_bytes)
                    if not block:
                        break
                    rest = fh.readline()  # finish the last line of the block
                    block += rest
                    end = start + len(block)
                    n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
                    yield (f, start, end, line), n_lines
                    line += n_lines
                    start = end


def read_range(path: Path, start: int, end: int, first_line: int) -> list[Item]:
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    return [Item(source=path.name, line=first_line + i, raw=ln.strip())
            for i, ln in enumerate(data.split(b"\n")) if ln.strip()]  # fmt: skip


def batched(items: Iterable[Item], n: int) -> Iterator[list[Item]]:
    buf: list[Item] = []
    for it in items:
        buf.append(it)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def read_ndjson(path: Path) -> NdjsonSource:
    """One Item per non-blank line, in file order; malformed lines are the worker's to report."""
    return NdjsonSource(path)


def _bundle_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(
            f"Bundle source {path} does not exist: point source.path at a folder of Bundle files"
        )
    files = sorted(p for p in path.rglob("*.json") if p.is_file())
    if not files:
        raise SourceError(f"no *.json files in {path}")
    return files


def _entries(doc: Any) -> Iterator[tuple[str | None, Any]]:
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc.get("entry") or []):
            yield f"entry[{i}]", (entry or {}).get("resource") if isinstance(entry, dict) else entry
    else:
        yield None, doc


def read_bundles(path: Path) -> Iterator[Item]:
    """Two passes over the files: reference targets first, then everything else."""
    files = _bundle_files(path)
    for first_pass in (True, False):
        for f in files:
            try:
                doc = orjson.loads(f.read_bytes())
            except orjson.JSONDecodeError as exc:
                if first_pass:
                    yield Item(source=f.name, line=None, error=f"malformed JSON file: {exc}")
                continue
            for loc, res in _entries(doc):
                rt = res.get("resourceType") if isinstance(res, dict) else None
                is_target = rt in REFERENCE_TARGETS
                if is_target == first_pass or (rt is None and first_pass):
                    yield Item(source=f.name, line=None, resource=res, location=loc)


def open_source(kind: str, cfg: dict[str, Any], cohort_dir: Path | None = None) -> Iterable[Item]:
    if kind == "synthetic":
        if cohort_dir is None:
            raise SourceError("source.kind=synthetic needs the cohort stage's output")
        return read_ndjson(cohort_dir / "fhir")
    if kind == "ndjson":
        return read_ndjson(Path(_required(cfg, "path")))
    if kind == "bundles":
        return read_bundles(Path(_required(cfg, "path")))
    if kind == "server":
        from clinsynth.ingest.server import ServerSource

        return ServerSource(
            base_url=_required(cfg, "url"),
            token_env=cfg.get("token_env"),
            page_size=int(cfg.get("page_size", 500)),
            timeout_s=float(cfg.get("timeout_s", 30)),
            retries=int(cfg.get("retries", 5)),
            backoff_s=float(cfg.get("backoff_s", 0.5)),
            types=tuple(cfg.get("types") or ()),
        )
    raise SourceError(f"unknown source.kind {kind!r}: use synthetic, ndjson, bundles or server")


def _required(cfg: dict[str, Any], key: str) -> str:
    value = cfg.get(key)
    if not value:
        raise SourceError(f"source.{key} is required for source.kind={cfg.get('kind')}")
    return str(value)
