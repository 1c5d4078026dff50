"""The letters the extract stage reads, in one fixed order: synthetic test letters, dev letters, external.

- synthetic: the test split's letters (specs with split == "test", their letter from the generate
  stage; doc = spec_id);
- dev: the six GraSCCo development letters where the corpus copy is present (doc "grascco:<Name>");
- external: every *.txt below `extract.letters` (UTF-8 with or without BOM; doc "file:<relative path>").

The order is deterministic, so array task i always takes documents i, i+N, ... and a relaunch finds
its chunks again. A letter that cannot be read (not UTF-8, empty) is a document with an `error`: it
becomes an invalid prediction naming the file and what to do, and the run goes on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from clinsynth.artifacts.checks import upstream_error
from clinsynth.artifacts.letters import check_letters, read_letters
from clinsynth.artifacts.predictions import DEV_PREFIX, FILE_PREFIX
from clinsynth.artifacts.specs import check_specs, iter_specs
from clinsynth.letters.devset import DEV_LETTERS, dev_letter_path


@dataclass(frozen=True)
class Doc:
    doc: str
    source: str  # "synthetic" | "dev" | "external"
    text: str
    error: str | None = None  # why the letter could not be read (then text is "")


def _test_letters(sample_dir: Path, gen_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(spec_id, letter text, "file:line") of every test-split spec, in spec order."""
    total = check_specs(sample_dir, stage="extract")
    shards = check_letters(gen_dir, total, stage="extract")
    readers = [read_letters(path) for _, _, path in shards]
    n = len(readers)
    for j, spec in enumerate(iter_specs(sample_dir, ["spec_id", "split"])):
        where = f"{shards[j % n][2]}:{j // n + 1}"
        try:
            letter = next(readers[j % n])
        except StopIteration:
            raise upstream_error(
                "extract", "generate", gen_dir, "letters", f"a line {where}", "none"
            ) from None
        except orjson.JSONDecodeError as exc:
            raise RuntimeError(
                f"{where}: not a JSON letter ({exc}); delete the generate stage folder"
            ) from exc
        if not isinstance(letter, dict) or letter.get("spec_id") != spec["spec_id"]:
            got = letter.get("spec_id") if isinstance(letter, dict) else letter
            raise RuntimeError(
                f"{where}: letter {got!r} where spec {spec['spec_id']!r} was expected; letters and specs "
                "come from different runs: delete the generate stage folder and relaunch"
            )
        if spec["split"] == "test":
            yield spec["spec_id"], str(letter.get("text") or ""), where


def _read_text(path: Path, doc: str, source: str) -> Doc:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Doc(doc, source, "", f"{path}: not UTF-8 ({exc}); convert the file to UTF-8")
    except OSError as exc:
        return Doc(doc, source, "", f"{path}: cannot be read ({exc})")
    if not text.strip():
        return Doc(doc, source, "", f"{path}: empty letter")
    return Doc(doc, source, text)


def external_files(folder: Path) -> list[Path]:
    """Every *.txt below `folder`, sorted by relative path (symlinked folders are not followed)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"extract.letters={folder}: no such folder (resolved: {root.resolve()})")
    out = []
    for base, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        out += [Path(base) / f for f in sorted(files) if f.lower().endswith(".txt")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def dev_files() -> list[tuple[str, Path]]:
    """(name, path) of the development letters present on this machine."""
    return [(name, path) for name in DEV_LETTERS if (path := dev_letter_path(name)) is not None]


def documents(
    *,
    sample_dir: Path | None,
    gen_dir: Path | None,
    dev_letters: bool,
    letters: str | None,
    shard: int = 0,
    num_shards: int = 1,
) -> tuple[int, list[Doc]]:
    """(documents in all shards, this shard's documents i, i+N, ...) in the fixed order."""
    mine: list[Doc] = []
    i = 0

    def take() -> bool:
        nonlocal i
        i += 1
        return (i - 1) % num_shards == shard

    if sample_dir is not None and gen_dir is not None:
        for spec_id, text, where in _test_letters(sample_dir, gen_dir):
            if take():
                error = None if text.strip() else f"{where}: letter {spec_id!r} has no text"
                mine.append(Doc(spec_id, "synthetic", text, error))
    if dev_letters:
        for name, path in dev_files():
            if take():
                mine.append(_read_text(path, f"{DEV_PREFIX}{name}", "dev"))
    if letters:
        root = Path(letters)
        for path in external_files(root):
            if take():
                mine.append(_read_text(path, f"{FILE_PREFIX}{path.relative_to(root).as_posix()}", "external"))
    return i, mine


def _digest(paths: list[Path], root: Path | None) -> dict[str, Any]:
    """Names, sizes and the sha256 of every file's bytes: a copy or a touch (mtime) keeps the id, an
    edited letter changes it (10k letters of ~5 kB: well under a second)."""
    h = hashlib.sha256()
    for p in paths:
        name = p.relative_to(root).as_posix() if root else p.name
        data = p.read_bytes()
        h.update(f"{name}\0{len(data)}:{hashlib.sha256(data).hexdigest()}\n".encode())
    return {"files": len(paths), "digest": h.hexdigest()[:16]}


def fingerprint(letters: str | None, dev_letters: bool) -> dict[str, Any] | None:
    """What the stage reads outside the runs folder (names, sizes, contents), for the stage id."""
    out: dict[str, Any] = {}
    if letters:
        root = Path(letters).resolve()
        out["letters"] = {"path": str(root), **_digest(external_files(root), root)}
    if dev_letters:
        out["dev"] = _digest([p for _, p in dev_files()], None)
    return out or None


__all__ = ["Doc", "dev_files", "documents", "external_files", "fingerprint"]
