"""`manifest.json` of a stage folder: sha256 and size of every artifact, so reruns can be compared.

The job machinery writes it when the stage completes, just before `DONE` (`StageFolder.try_mark_done`),
atomically; `rerun` computes it on the fly for an older DONE folder without one.

What is an artifact: every file under the stage folder, except the records of how the stage ran,
which differ between runs of the same work by design —

- `logs/`, `tasks/`, `progress/`, `completions/`, `checkpoints/`: submitit logs, attempt records,
  progress, unit markers, resumable state;
- `wandb/`: the tracker's local copy (run ids, clocks, host);
- `jobs.jsonl`, `meta.json` (hosts, job ids, times, versions), `config.yaml` (written by the launcher
  before the stage runs: its input, not its output), `DONE` and `manifest.json` itself;
- names starting with "." (atomic writes' temporaries, lock files);
- the paths the stage itself declares as timing records (`StageSpec.timing_records`, e.g. generate's
  `stats/`: letters/s and tokens/s of each task), listed under `records`, hashed but not compared.

A stage is deterministic unless it says otherwise (`StageSpec.nondeterminism(cfg)`: the seeds and
settings that keep its outputs from being byte-identical — LLM sampling, training); those settings are
recorded here and a rerun reports its differing artifacts as expected.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clinsynth.core.atomic import read_json, write_json

MANIFEST = "manifest.json"
#: folders of a stage that record how it ran, never what it computed
RECORD_DIRS = frozenset({"logs", "tasks", "progress", "completions", "checkpoints", "wandb"})
#: files of the same kind at the top of a stage folder
RECORD_FILES = frozenset({"jobs.jsonl", "meta.json", "config.yaml", "DONE", MANIFEST})
MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _walk(stage_dir: Path) -> Iterator[str]:
    """Relative paths of the files under `stage_dir` that are not run records, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(stage_dir):
        rel = Path(dirpath).relative_to(stage_dir)
        top = not rel.parts
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (top and d in RECORD_DIRS))
        for name in filenames:
            if name.startswith(".") or (top and name in RECORD_FILES):
                continue
            out.append((rel / name).as_posix())
    yield from sorted(out)


def _is_record(rel: str, records: tuple[str, ...]) -> bool:
    return any(rel == r.rstrip("/") or (r.endswith("/") and rel.startswith(r)) for r in records)


def _stage_info(stage_dir: Path) -> tuple[str | None, tuple[str, ...], dict[str, Any] | None, bool]:
    """(stage name, its timing records, its nondeterministic settings, whether the stage is known)
    from the folder's config.yaml and the stage registry."""
    from clinsynth.core.registry import get_stage

    cfg_path = stage_dir / "config.yaml"
    saved = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    name = (saved or {}).get("stage") or stage_dir.parent.name
    try:
        spec = get_stage(name)
    except KeyError:
        return name, (), None, False
    nondet = None
    if spec.nondeterminism is not None and saved is not None:
        try:
            nondet = spec.nondeterminism(spec.parse_config(saved.get("config") or {}))
        except Exception as exc:  # never keeps DONE from being written: the manifest says it does not know
            nondet = {"why": f"unknown: the saved config no longer parses ({type(exc).__name__}: {exc})"}
    return name, spec.timing_records, nondet, True


def compute_manifest(stage_dir: Path) -> dict[str, Any]:
    """The manifest of `stage_dir` as it is now (see the module docstring for what counts)."""
    stage_dir = Path(stage_dir)
    name, records, nondet, known = _stage_info(stage_dir)
    files: dict[str, dict[str, Any]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for rel in _walk(stage_dir):
        p = stage_dir / rel
        entry = {"sha256": sha256_file(p), "size": p.stat().st_size}
        (timing if _is_record(rel, records) else files)[rel] = entry
    return {
        "version": MANIFEST_VERSION,
        "stage": name,
        "stage_id": stage_dir.name,
        "deterministic": nondet is None,
        "nondeterminism": nondet,
        "stage_known": known,
        "files": files,
        "records": timing,
    }


def write_manifest(stage_dir: Path) -> dict[str, Any]:
    manifest = compute_manifest(stage_dir)
    write_json(Path(stage_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(stage_dir: Path) -> tuple[dict[str, Any], bool]:
    """(the manifest, whether it was saved): a folder without one gets it computed now."""
    path = Path(stage_dir) / MANIFEST
    if path.is_file():
        return read_json(path), True
    return compute_manifest(Path(stage_dir)), False


@dataclass
class StageDiff:
    """How one stage's artifacts differ between a run and its rerun."""

    stage: str
    deterministic: bool
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the original, not in the rerun
    extra: list[str] = field(default_factory=list)  # in the rerun only
    files: int = 0

    @property
    def identical(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def paths(self) -> list[str]:
        return [*self.changed, *(f"{p} (missing)" for p in self.missing), *(f"{p} (new)" for p in self.extra)]


def compare_manifests(stage: str, old: dict[str, Any], new: dict[str, Any]) -> StageDiff:
    """Artifacts that differ (sha256 or size); a stage is deterministic when both runs say so."""
    a, b = old.get("files") or {}, new.get("files") or {}
    return StageDiff(
        stage=stage,
        deterministic=bool(old.get("deterministic", True)) and bool(new.get("deterministic", True)),
        changed=sorted(p for p in a.keys() & b.keys() if a[p] != b[p]),
        missing=sorted(a.keys() - b.keys()),
        extra=sorted(b.keys() - a.keys()),
        files=len(a.keys() | b.keys()),
    )
