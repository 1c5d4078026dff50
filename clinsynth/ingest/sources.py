"""Where FHIR resources come from: bulk-export NDJSON, Bundle files, or a FHIR REST server.

Every source yields `Item`s in an order that puts Patients, Medications and Encounters
first, so references to them can be checked as the stream goes by (bounded memory).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from clinsynth.fhir.jsonio import (
    PARSE_RECURSION_LIMIT,
    JsonProblem,
    deep_stack,
    find_duplicate,
    loads_document,
    too_deep_detail,
)
from clinsynth.ingest.extract import REFERENCE_TARGETS
from clinsynth.ingest.options import IngestError


@dataclass
class Item:
    source: str  # file name or URL
    line: int | None  # 1-based line in an NDJSON file; None for Bundle entries and pages
    raw: bytes | None = None  # an NDJSON line, parsed by the worker
    resource: dict[str, Any] | None = None  # an already parsed Bundle entry / page entry
    location: str | None = None  # entry[3], page 2 entry 7, ...
    error: str | None = None  # the source could not even produce a resource (malformed file)
    reason: str | None = None  # the quarantine reason of `error` (None: malformed_json)


class SourceError(RuntimeError):
    """The source as a whole cannot be read (missing folder, server unreachable after retries)."""


def _priority(resource_type: str) -> tuple[int, str]:
    return (
        REFERENCE_TARGETS.index(resource_type) if resource_type in REFERENCE_TARGETS else 9,
        resource_type,
    )


_TYPE_RE = re.compile(r"^([A-Z][A-Za-z]+)")

#: file names an NDJSON source reads (case-insensitive), in any sub-folder
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
BOM = b"\xef\xbb\xbf"
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _text(s: str) -> str:
    """JSON-safe text: a file name's non-UTF-8 bytes (surrogate escapes) become \\xNN."""
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return s.encode("utf-8", "backslashreplace").decode()


def _kind_of(mode: int) -> str | None:
    """What a non-regular, non-folder file is; None for a regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


@dataclass
class FileScan:
    """The files of a folder a source reads, and every other entry with the reason it is skipped.

    `problems` marks the skips that a strict run stops at (unreadable or special files), as
    opposed to files that are merely not named like the source's files."""

    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, name in reports)
    skipped: list[dict[str, str]] = field(default_factory=list)
    problems: list[bool] = field(default_factory=list)

    def skip(self, name: str, reason: str, problem: bool) -> None:
        self.skipped.append({"file": name, "reason": _text(reason)})
        self.problems.append(problem)


def scan_files(path: Path, suffixes: tuple[str, ...], what: str) -> FileScan:
    """Every entry under `path`, recursively, without opening any (a FIFO must never block).

    Folders are listed in name order; symbolic links to files are followed, links to folders are
    not (no cycles); special files, dangling links and link loops are skipped with a reason."""
    scan = FileScan()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{what} source {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"{what} source {path} cannot be read: {exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        special = _kind_of(st.st_mode)
        if special:
            scan.skip(_text(path.name), f"{special}, not a file", True)
        else:
            scan.files.append((path, _text(path.name)))
        return scan
    names = " ".join(suffixes)

    def walk(folder: Path, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            scan.skip(rel or ".", f"folder cannot be listed: {exc.strerror or exc}", True)
            return
        for e in entries:
            name = _text(f"{rel}{e.name}")
            matches = e.name.lower().endswith(suffixes)
            try:
                link = e.is_symlink()
                st = os.stat(e.path) if link else e.stat(follow_symlinks=False)
            except FileNotFoundError:
                scan.skip(name, "dangling symbolic link", True)
                continue
            except OSError as exc:
                why = f"cannot be read: {exc.strerror or exc}"
                scan.skip(name, "symbolic link loop" if exc.errno == errno.ELOOP else why, True)
                continue
            special = _kind_of(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                if link:
                    scan.skip(name, "symbolic link to a folder (not followed)", matches)
                    continue
                if matches:
                    scan.skip(name, "a folder, not a file (searched like any sub-folder)", True)
                walk(Path(e.path), f"{rel}{e.name}/")
            elif special:
                scan.skip(name, f"{special}, not a file", True)
            elif matches:
                scan.files.append((Path(e.path), name))
            else:
                scan.skip(name, f"not a {what} file name ({names})", False)

    walk(path, "")
    return scan


def ndjson_files(path: Path) -> list[Path]:
    """The NDJSON files under `path` (recursively), reference targets' types first."""
    return [f for f, _ in _ndjson_scan(path).files]


def _ndjson_scan(path: Path) -> FileScan:
    scan = scan_files(path, NDJSON_SUFFIXES, "NDJSON")

    def key(f: tuple[Path, str]) -> tuple[tuple[int, str], str]:
        m = _TYPE_RE.match(f[0].name)
        return _priority(m.group(1) if m else "~"), f[1]

    scan.files.sort(key=key)
    return scan


def _line_blocks(fh: IO[bytes], block: int = 1 << 20) -> Iterator[list[bytes]]:
    """The file's lines, stripped, a block at a time (consecutive: line numbers are counted by the
    caller): \n, \r\n and a lone \r end a line; a UTF-8 BOM at the start of the file is dropped.
    Memory is bounded by the block and the longest line."""
    pending: list[bytes] = []
    first = True
    while chunk := fh.read(block):
        if first:
            first = False
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
        if pending and b"\n" not in chunk and b"\r" not in chunk:
            pending.append(chunk)  # a long line: join once, when it ends
            continue
        data = b"".join([*pending, chunk]) if pending else chunk
        pending = []
        if not data:
            continue
        lines = data.splitlines(keepends=True)
        if not lines[-1].endswith(b"\n"):  # unfinished, or a \r that may be half of \r\n
            pending.append(lines.pop())
        yield [ln.strip() for ln in lines]
    if pending:
        yield [b"".join(pending).strip()]


def _read_error(exc: BaseException, after: int) -> str:
    what = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        what = exc.strerror
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        what = f"not a valid gzip file: {what}"
    if after:
        return f"{what} (after line {after}; the lines before it were read)"
    return what


@dataclass
class _FileSource:
    """A source of files under a folder: after a pass, `files_read` and `files_skipped` (file,
    reason) account for every entry under it; `strict` stops at the first unreadable file."""

    path: Path
    strict: bool = False
    files_read: list[str] = field(default_factory=list, init=False)
    files_skipped: list[dict[str, str]] = field(default_factory=list, init=False)

    def _start(self, scan: FileScan) -> list[tuple[Path, str]]:
        self.files_read, self.files_skipped = [], []
        for entry, problem in zip(scan.skipped, scan.problems, strict=True):
            self._skip(entry["file"], entry["reason"], problem)
        return scan.files

    def _skip(self, name: str, reason: str, problem: bool = True) -> None:
        self.files_skipped.append({"file": name, "reason": reason})
        if self.strict and problem:
            raise IngestError(
                f"{name}: {reason} (strict=true stops at the first unreadable file; set "
                "ingest.strict=false to skip it and list it under files_skipped in ingest_report.json)"
            )


@dataclass
class NdjsonSource(_FileSource):
    """A bulk-export folder (searched recursively for NDJSON_SUFFIXES, any case) or one file.
    Iterating yields one Item per non-blank line; `ranges()` lets worker processes read byte
    ranges themselves instead of the main process shipping lines."""

    def _scan(self) -> list[tuple[Path, str]]:
        return self._start(_ndjson_scan(self.path))

    def _file_items(self, f: Path, name: str) -> Iterator[Item]:
        """One file's lines, read in this process; a read error ends the file, reported."""
        n = 0
        try:
            gz = name.lower().endswith(".gz")
            opener: Any = gzip.open if gz else open
            with opener(f, "rb") as fh:  # small gzip blocks: a damaged file keeps more of its lines
                for lines in _line_blocks(fh, 1 << 16 if gz else 1 << 20):
                    for line in lines:
                        n += 1
                        if line:
                            yield Item(source=name, line=n, raw=line)
        except (OSError, EOFError, zlib.error) as exc:
            self._skip(name, _read_error(exc, n))
            return
        self.files_read.append(name)

    def __iter__(self) -> Iterator[Item]:
        for f, name in self._scan():
            yield from self._file_items(f, name)

    def ranges(self, target_bytes: int) -> Iterator[tuple[tuple[Path, int, int, int, str], int] | list[Item]]:
        """((file, start, end, first line number, name), lines in it), ranges ending on line
        boundaries, in file order; gzip files cannot be seeked and come as lists of Items, as do
        files whose lines end in a lone CR (rare: old Mac exports)."""
        for f, name in self._scan():
            if name.lower().endswith(".gz"):
                yield from batched(self._file_items(f, name), 10_000)
                continue
            line = 1
            try:
                with open(f, "rb") as fh:
                    head = fh.read(1 << 16)
                    if b"\r" in head and b"\n" not in head:  # CR-only line ends (or a huge CRLF line: same)
                        yield from batched(self._file_items(f, name), 10_000)
                        continue
                    start = len(BOM) if head.startswith(BOM) else 0
                    fh.seek(start)
                    while True:
                        block = fh.read(target_bytes)
                        if not block:
                            break
                        rest = fh.readline()  # finish the last line of the block
                        block += rest
                        end = start + len(block)
                        n_lines = _count_lines(block)
                        yield (f, start, end, line, name), n_lines
                        line += n_lines
                        start = end
            except OSError as exc:
                self._skip(name, _read_error(exc, line - 1))
                continue
            self.files_read.append(name)


def read_range(path: Path, start: int, end: int, first_line: int, name: str | None = None) -> list[Item]:
    source = name if name is not None else _text(path.name)
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
    except OSError as exc:  # gone or failing since the scan: the block is one quarantined record
        detail = (
            f"lines from {first_line} on could not be read: {exc.strerror or exc} (changed after the scan?)"
        )
        return [Item(source=source, line=first_line, error=detail, reason="unreadable")]
    lines = data.splitlines() if b"\r" in data else data.split(b"\n")  # a lone \r ends a line too
    return [Item(source=source, line=first_line + i, raw=ln.strip())
            for i, ln in enumerate(lines) if ln.strip()]  # fmt: skip


def _count_lines(block: bytes) -> int:
    """Lines in a byte range as `read_range` numbers them: \n, \r\n and a lone \r end one."""
    n = block.count(b"\n")
    if b"\r" in block:
        n += block.count(b"\r") - block.count(b"\r\n")
        return n + (0 if block.endswith((b"\n", b"\r")) else 1)
    return n + (0 if block.endswith(b"\n") else 1)


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
    return [f for f, _ in _bundle_scan(path).files]


def _bundle_scan(path: Path) -> FileScan:
    return scan_files(path, (".json",), "Bundle")


@dataclass
class Problem:
    """What `_entries` yields instead of a resource that cannot be read (a duplicate key)."""

    reason: str
    detail: str


#: Bundles inside Bundles inside ...: deeper nests are quarantined (each level is a generator frame)
MAX_BUNDLE_NESTING = 64


def _entries(
    doc: Any, prefix: str = "", dups: bool = False, level: int = 0
) -> Iterator[tuple[str | None, Any]]:
    """(location, resource) of every entry; nested Bundles are unpacked, and references to an
    entry's `urn:uuid:`/`urn:oid:` fullUrl (the normal shape of transaction Bundles) become
    `Type/id` — an entry without an id takes the uuid as its id. `dups`: the document holds
    objects marked by `jsonio.loads_document` as having a duplicate key; those entries (or the
    Bundle's own fields) come as a `Problem`."""
    if not (isinstance(doc, dict) and doc.get("resourceType") == "Bundle"):
        dup = find_duplicate(doc) if dups else None
        yield (prefix.rstrip(".") or None), (Problem("duplicate_key", dup) if dup else doc)
        return
    # a duplicate in the Bundle's own fields: reported once, its entries still count
    if dups and (dup := find_duplicate(doc, shallow=True)):
        yield (prefix.rstrip(".") or "Bundle"), Problem("duplicate_key", f"Bundle: {dup}")
    entries = doc.get("entry")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        yield (prefix.rstrip(".") or None), doc  # not a Bundle's shape: the validator says why
        return
    local = _local_urls(entries)
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else entry
        loc = f"{prefix}entry[{i}]"
        if dups and (dup := find_duplicate(entry, shallow=True)):  # e.g. two fullUrls
            yield loc, Problem("duplicate_key", f"entry: {dup}")
            continue
        if isinstance(entry, dict) and entry.get("resource") is None:
            yield loc, Problem("invalid_resource", "a Bundle entry without a resource")
            continue
        if isinstance(res, dict) and res.get("resourceType") == "Bundle":
            if level >= MAX_BUNDLE_NESTING:
                yield loc, Problem("too_deep", f"a Bundle nested in more than {MAX_BUNDLE_NESTING} Bundles")
                continue
            yield from _entries(res, f"{loc}.resource.", dups, level + 1)
            continue
        if dups and (dup := find_duplicate(res)):
            yield loc, Problem("duplicate_key", dup)
            continue
        if local and isinstance(res, dict):
            full = entry.get("fullUrl") if isinstance(entry, dict) else None
            try:
                with deep_stack(PARSE_RECURSION_LIMIT):
                    res = _resolved(res, local)
            except RecursionError:
                yield loc, Problem("too_deep", too_deep_detail())
                continue
            if "id" not in res and isinstance(full, str) and full in local:
                res["id"] = local[full].split("/", 1)[1]
        yield loc, res


def _local_urls(entries: list[Any]) -> dict[str, str]:
    """fullUrl -> `Type/id` for the entries named by a urn (only they need resolving)."""
    out: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        full, res = entry.get("fullUrl"), entry.get("resource")
        if isinstance(full, str) and full.startswith(("urn:uuid:", "urn:oid:")) and isinstance(res, dict):
            rt, rid = res.get("resourceType"), res.get("id") or full.rsplit(":", 1)[-1]
            if isinstance(rt, str) and isinstance(rid, str):
                out[full] = f"{rt}/{rid}"
    return out


def _resolved(value: Any, local: dict[str, str]) -> Any:
    """A copy of `value` whose `reference` strings that name a local urn point to `Type/id`."""
    if isinstance(value, dict):
        return {
            k: (local.get(v, v) if k == "reference" and isinstance(v, str) else _resolved(v, local))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolved(v, local) for v in value]
    return value


@dataclass
class BundleSource(_FileSource):
    """Bundle (or single-resource) JSON files under a folder, searched recursively. Two passes
    over the files: reference targets first, then everything else. A malformed file is
    quarantined (it was read); an unreadable one is skipped with its reason."""

    def __iter__(self) -> Iterator[Item]:
        files = self._start(_bundle_scan(self.path))
        bad: set[str] = set()
        for first_pass in (True, False):
            for f, name in files:
                if name in bad:
                    continue
                try:
                    doc, dups = loads_document(f.read_bytes())
                except JsonProblem as exc:
                    if first_pass:
                        self.files_read.append(name)
                        what = exc.reason.replace("_", " ")
                        yield Item(name, None, error=f"{what} file: {exc.detail}", reason=exc.reason)
                    continue
                except OSError as exc:
                    bad.add(name)
                    self._skip(name, _read_error(exc, 0))
                    continue
                if first_pass:
                    self.files_read.append(name)
                for loc, res in _entries(doc, dups=dups):
                    if isinstance(res, Problem):
                        if first_pass:
                            yield Item(
                                source=name, line=None, location=loc, error=res.detail, reason=res.reason
                            )
                        continue
                    rt = res.get("resourceType") if isinstance(res, dict) else None
                    is_target = rt in REFERENCE_TARGETS
                    # an entry without a type is read (and quarantined) once, in the first pass
                    if (rt is None and first_pass) or (rt is not None and is_target == first_pass):
                        yield Item(source=name, line=None, resource=res, location=loc)


def read_bundles(path: Path) -> BundleSource:
    """Bundle files under `path`: reference targets first, then everything else."""
    return BundleSource(path)


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
            max_pages=int(cfg.get("max_pages", 100_000)),
        )
    raise SourceError(f"unknown source.kind {kind!r}: use synthetic, ndjson, bundles or server")


def _required(cfg: dict[str, Any], key: str) -> str:
    value = cfg.get(key)
    if not value:
        raise SourceError(f"source.{key} is required for source.kind={cfg.get('kind')}")
    return str(value)


def fingerprint(path: Path) -> dict[str, Any]:
    """What a file source would read, without reading it: the resolved folder and a digest of
    every file's relative name, size and mtime below it (symlinks not followed). Part of the
    ingest stage id, so a re-export into the same folder is read again, and two relative
    `source.path`s from different folders never share records."""
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"source.path {path} does not exist (resolved: {root})")
    h = hashlib.sha256()
    n = 0
    entries: list[tuple[bytes, os.stat_result]] = []
    if root.is_file():
        entries.append((os.fsencode(root.name), root.stat()))
    else:
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder) / name
                try:
                    entries.append((os.fsencode(full.relative_to(root)), full.lstat()))
                except OSError:
                    continue  # vanished while listing: the ingest reports what it finds
    for rel, st in entries:
        h.update(rel + b"\0" + f"{st.st_size}:{st.st_mtime_ns}".encode() + b"\n")
        n += 1
    return {"path": str(root), "files": n, "digest": h.hexdigest()[:16]}
