"""Test-only stage for tests/unit/test_signals.py: a task with a child process of its own.

Registered through `stage_modules=[tests.unit.signal_stages]`; nothing in the product uses it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from clinsynth.core.atomic import write_json
from clinsynth.core.config import StageConfig, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage


class ParentSection(StageConfig):
    seconds: float = operational(600.0, why="test pacing: how long the child sleeps")


class ParentConfig(StageConfig):
    parent: ParentSection = ParentSection()


@stage("with_child", config=ParentConfig)
def with_child(cfg: ParentConfig, ctx: StageContext) -> dict[str, Any]:
    """Starts `sleep` (no death signal: only the launcher's stop can end it), notes its pid, waits."""
    child = subprocess.Popen(["sleep", str(cfg.parent.seconds)])
    write_json(ctx.stage_dir / "child.json", {"pid": child.pid})
    while child.poll() is None:
        time.sleep(0.1)
    return {"child_exit": child.returncode}


class DeafConfig(StageConfig):
    pass


@stage("deaf", config=DeafConfig, array=True)
def deaf(cfg: DeafConfig, ctx: StageContext) -> dict[str, Any]:
    """Ignores SIGTERM and SIGINT (as a stage stuck in C code would), says so, and sleeps."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    write_json(ctx.shard_path("deaf", ".json"), {"deaf": True})
    time.sleep(3600)
    return {}
