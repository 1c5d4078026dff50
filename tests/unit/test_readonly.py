"""A runs folder that cannot be written is one clear line, never a traceback (issue 9: faults).

Real failures, not mocks: a read-only bind mount (EROFS), a path through a file (ENOTDIR)
and a full tmpfs (ENOSPC). Tests run as root, where chmod does not stop a write, so the
mounts stand in for permissions; they are skipped with the reason where mounting is not
allowed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import toy_overrides

REPO = Path(__file__).resolve().parents[2]


def _launch(overrides: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "launch", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


def _mount(args: list[str], target: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    res = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount here ({res.stderr.strip()})")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount after the test (last first)."""
    points: list[Path] = []
    yield points
    for p in reversed(points):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def _readonly(path: Path, mounts: list[Path]) -> Path:
    """`path` (a folder) bound read-only onto itself: every write under it fails with EROFS."""
    _mount(["--bind", str(path)], path)
    mounts.append(path)
    res = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({res.stderr.strip()})")
    return path


def test_a_runs_folder_on_a_read_only_mount_is_one_line(tmp_path, mounts):
    ro = tmp_path / "ro"
    ro.mkdir()
    _readonly(ro, mounts)
    err = _one_line_error(_launch(toy_overrides(ro / "runs", "local", shards=2, nodes=1)))
    assert f"cannot write {ro / 'runs'}" in err and "read-only file system (EROFS)" in err, err
    assert "point paths.runs at a folder you can write" in err, err


def test_a_runs_path_through_a_file_is_one_line(tmp_path):
    err = _one_line_error(_launch(toy_overrides(Path("/proc/version/runs"), "local", shards=2, nodes=1)))
    assert "cannot write /proc/version/runs" in err and "(ENOTDIR)" in err, err


def test_a_read_only_stage_folder_is_one_line_and_leaves_no_half_run(tmp_path, mounts):
    runs = tmp_path / "runs"
    first = _launch(toy_overrides(runs, "local", shards=2, nodes=1))
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (runs / "toy").iterdir())
    _readonly(runs / "stages" / "toy_sum", mounts)
    # another toy_sum: its new stage folder cannot be made; toy_rows is reused
    other = [
        o.replace("+toy_sum.scale=1.0", "+toy_sum.scale=2.0")
        for o in toy_overrides(runs, "local", shards=2, nodes=1)
    ]
    out = _launch(other)
    err = _one_line_error(out)
    assert f"cannot write {runs / 'stages' / 'toy_sum'}" in err and "(EROFS)" in err, err
    assert sorted(p.name for p in (runs / "toy").iterdir()) == before, "a half run folder was left"


def test_a_full_disk_is_one_line_and_a_relaunch_resumes(tmp_path, mounts):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=4k", "tmpfs"], tiny)
    mounts.append(tiny)
    err = _one_line_error(_launch(toy_overrides(tiny / "runs", "local", shards=2, nodes=1)))
    assert "no space left on device (ENOSPC)" in err and str(tiny / "runs") in err, err
    assert "a relaunch resumes" in err, err
    assert not list((tiny / "runs").glob("toy/*")), "a half run folder was left"
