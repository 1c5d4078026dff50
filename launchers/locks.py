"""One launch at a time per stage folder: an OS file lock held while deciding and carrying out.

Two identical launches started together would otherwise both decide "missing" and both run
(or submit) the same stage, writing the same temp files. The second one waits here, then
decides again from what the first left behind (usually: done, reused). Locks are `flock`s on
`runs/stages/<stage>/.<stage_id>.lock`, released by the kernel when a launcher dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console

from launchers.plan import Plan


def lock_path(stage_dir: Path) -> Path:
    return stage_dir.parent / f".{stage_dir.name}.lock"


@contextmanager
def _flock(path: Path, what: str, err: Console, mkdir: Callable[[Path], Path]) -> Iterator[None]:
    mkdir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            err.print(f"waiting: another launch holds {what} ({path})", markup=False, highlight=False)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def stage_locks(plan: Plan, err: Console, mkdir: Callable[[Path], Path]) -> Iterator[None]:
    """Hold the lock of every stage of the plan, taken in path order (no two launches deadlock).

    `mkdir` creates the lock's folder (the launch's undo log records what it created).
    """
    with ExitStack() as stack:
        for st in sorted(plan.stages, key=lambda s: str(s.folder.path)):
            stack.enter_context(_flock(lock_path(st.folder.path), f"stage {st.name}", err, mkdir))
        yield
