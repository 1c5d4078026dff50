"""Stage and run folders: the only state there is (datatrove-style markers).

runs/stages/<stage>/<stage_id>/   config.yaml meta.json jobs.jsonl logs/ tasks/ completions/ manifest.json
                                  DONE
runs/<experiment>/<run_id>/       config.yaml overrides.yaml stages/<stage> -> ../../../stages/...

A unit is an array shard or, for multi-rank stages, a rank. A unit is complete when
`completions/<unit:05d>` exists; the stage is complete when `DONE` exists, written
once all units are.

Everything under runs/ is private to its owner (dirs 0700, files 0600): run folders hold
patient data. The launcher writes the tree under `private_files()`, so that what submitit
writes (pickles, sbatch files, local logs) and what Slurm writes for the job (sbatch passes
the umask on) is private too; tasks set the same umask (launchers.job).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from clinsynth.core.atomic import read_json, touch_marker, write_bytes, write_json

PRIVATE = 0o700
PRIVATE_FILE = 0o600
#: the umask under which dirs are 0700 and files 0600
PRIVATE_UMASK = 0o077


def make_private_dir(path: Path) -> Path:
    """Create `path` and every missing parent readable by the owner only.

    (`Path.mkdir(parents=True, mode=...)` gives the parents the default 0755.)
    """
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=PRIVATE, exist_ok=True)
        os.chmod(d, PRIVATE)  # mkdir's mode is masked by the umask; never wider than 0700 here
    return path


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Run the block under umask 077 (dirs 0700, files 0600), then restore the caller's umask."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


@dataclass(frozen=True)
class StageFolder:
    path: Path

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def stage_id(self) -> str:
        return self.path.name

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def completions(self) -> Path:
        return self.path / "completions"

    @property
    def tasks(self) -> Path:
        return self.path / "tasks"

    @property
    def done_marker(self) -> Path:
        return self.path / "DONE"

    def create(self) -> StageFolder:
        for p in (self.path, self.logs, self.completions, self.tasks):
            make_private_dir(p)
        return self

    def is_done(self) -> bool:
        return self.done_marker.exists()

    def unit_complete(self, unit: int) -> bool:
        return (self.completions / f"{unit:05d}").exists()

    def completed_units(self) -> set[int]:
        if not self.completions.is_dir():
            return set()
        return {int(p.name) for p in self.completions.iterdir() if p.name.isdigit()}

    def missing_units(self, n_units: int) -> list[int]:
        done = self.completed_units()
        return [u for u in range(n_units) if u not in done]

    def mark_unit_complete(self, unit: int) -> None:
        touch_marker(self.completions / f"{unit:05d}")

    def clear_completions(self) -> None:
        for p in self.completions.glob("[0-9]*"):
            p.unlink(missing_ok=True)

    def try_mark_done(self, n_units: int) -> bool:
        """Write manifest.json (sha256 of every artifact, launchers/manifest.py), then DONE, if every
        unit is complete; safe to call from every task at once (the same manifest, written atomically)."""
        if self.is_done():
            return True
        if self.missing_units(n_units):
            return False
        from launchers.manifest import write_manifest

        write_manifest(self.path)
        touch_marker(self.done_marker, f"{n_units} units\n")
        return True

    # ---- config, meta and job records
    def write_config(self, stage_cfg: dict[str, Any]) -> None:
        write_bytes(self.path / "config.yaml", yaml.safe_dump(stage_cfg, sort_keys=True).encode())

    def read_meta(self) -> dict[str, Any]:
        p = self.path / "meta.json"
        return read_json(p) if p.exists() else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json(self.path / "meta.json", meta)

    def append_job(self, record: dict[str, Any]) -> None:
        """One line per submission: launcher-side, so a relaunch knows which jobs may be live."""
        fd = os.open(self.path / "jobs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        with os.fdopen(fd, "ab") as fh:
            fh.write(orjson.dumps(record) + b"\n")

    def jobs(self) -> list[dict[str, Any]]:
        p = self.path / "jobs.jsonl"
        if not p.exists():
            return []
        return [orjson.loads(line) for line in p.read_bytes().splitlines() if line.strip()]

    def task_record_path(self, unit: int) -> Path:
        return self.tasks / f"{unit:05d}.json"

    def task_records(self) -> dict[int, dict[str, Any]]:
        out = {}
        if self.tasks.is_dir():
            for p in sorted(self.tasks.glob("[0-9]*.json")):
                try:
                    out[int(p.stem)] = read_json(p)
                except (ValueError, orjson.JSONDecodeError):
                    continue
        return out


def stage_folder(runs_root: Path, stage: str, stage_id: str) -> StageFolder:
    return StageFolder(runs_root / "stages" / stage / stage_id)


def link_stage(run_dir: Path, stage: str, folder: StageFolder) -> None:
    """runs/<exp>/<run_id>/stages/<stage> -> the shared stage folder (relative link)."""
    links = make_private_dir(run_dir / "stages")
    link = links / stage
    target = os.path.relpath(folder.path, links)
    if link.is_symlink() and os.readlink(link) == target:
        return
    tmp = links / f".{stage}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
