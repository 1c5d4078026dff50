"""Everything under runs/ is private to its owner: dirs 0700, files 0600 (run folders hold patient data)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from launchers.folders import make_private_dir, private_files
from launchers.submit import launch
from tests.helpers import toy_overrides


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual login umask (022): without the launcher's care, dirs would be 0755, files 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def not_private(root: Path) -> list[str]:
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue  # a link's own mode means nothing; its target is checked where it lives
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{oct(stat.S_IMODE(st.st_mode))} {p.relative_to(root)}")
    return bad


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("executor", ["local", "debug"])
def test_a_finished_run_is_private(tmp_path, executor):
    runs = tmp_path / "runs"
    result = launch(toy_overrides(runs, executor, n_items=8, shards=2, nodes=1))
    assert all(a.status == "ran" for a in result.actions)
    rows = result.plan.stage("toy_rows").folder
    # the walk covers the launcher's files, submitit's logs and pickles, and the tasks' outputs
    assert (rows.path / "jobs.jsonl").is_file() and list(rows.logs.iterdir())
    assert (rows.path / "rows" / "shard-00001.jsonl").is_file() and (result.run_dir / "delta.yaml").is_file()
    assert not_private(runs) == []
    assert stat.S_IMODE(runs.stat().st_mode) == 0o700
    assert os.umask(0o022) == 0o022  # the launcher gave the caller its umask back


@pytest.mark.usefixtures("open_umask")
def test_private_dirs_have_private_parents_and_the_umask_comes_back(tmp_path):
    make_private_dir(tmp_path / "a" / "b" / "c")
    assert not_private(tmp_path / "a") == []
    with private_files():
        (tmp_path / "a" / "f").write_text("x")
        (tmp_path / "a" / "d").mkdir()
    assert not_private(tmp_path / "a") == []
    assert os.umask(0o022) == 0o022
