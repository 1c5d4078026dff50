"""How far a long stage is: a log line now and then, and a tiny JSON file `launch status` reads.

A stage calls `ctx.progress(done, total, "letters")` as often as it likes (once per item is
fine: most calls only read the clock). A line goes to the stage's log on the first call, at
most every `LOG_EVERY_S` seconds after that and when `done` reaches `total`:

    extract: 120/430 letters (28%), 3.1 letters/s, ~1 min 40 s left

and `<stage_dir>/progress/<unit>.json` (done, total, unit, rate, eta_s, updated_at, ...) is
replaced atomically at most every `WRITE_EVERY_S` seconds. Only rank 0 reports: one file per
array shard, one for a multi-rank job (unit 0). The rate counts only what this attempt did
(a resumed unit's earlier work does not inflate it). The file holds counts only, never data.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinsynth.core.atomic import read_json, write_json

#: the folder of the per-unit progress files inside a stage folder
PROGRESS_DIR = "progress"
#: at most one log line per this many seconds (plus the first and the last)
LOG_EVERY_S = 10.0
#: at most one file write per this many seconds (plus the first and the last)
WRITE_EVERY_S = 2.0


def progress_path(stage_dir: Path, unit: int) -> Path:
    """`<stage_dir>/progress/00007.json`: the progress of array shard 7 (or of a job's unit)."""
    return Path(stage_dir) / PROGRESS_DIR / f"{unit:05d}.json"


def read_progress(stage_dir: Path, unit: int) -> dict[str, Any] | None:
    """The unit's last progress record, or None when there is none (or it cannot be read)."""
    try:
        data = read_json(progress_path(stage_dir, unit))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("done"), int) else None


class ProgressReporter:
    """Rate-limited progress of one unit of one stage (see the module docstring)."""

    def __init__(
        self,
        stage: str,
        path: Path | None,
        logger: logging.Logger,
        *,
        attempt: int = 1,
        log_every_s: float = LOG_EVERY_S,
        write_every_s: float = WRITE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stage, self.path, self.logger, self.attempt = stage, path, logger, attempt
        self.log_every_s, self.write_every_s = log_every_s, write_every_s
        self.clock, self.wall = clock, wall
        self._key: tuple[str, int | None] | None = None
        self._start_t = self._start_done = 0.0
        self._started_at = 0.0
        self._last_log = self._last_write = -math.inf
        self._last_done = -1
        self._finished = False

    def update(self, done: int, total: int | None, unit: str = "items") -> None:
        """`done` of `total` `unit`s so far (total None: not known in advance)."""
        now = self.clock()
        key = (unit, total)
        if key != self._key or done < self._last_done:  # a new phase: its own rate and first line
            self._key, self._start_t, self._start_done = key, now, float(done)
            self._started_at = self.wall()
            self._last_log = self._last_write = -math.inf
            self._finished = False
        self._last_done = done
        final = total is not None and done >= total
        if final and self._finished:
            return
        log = final or now - self._last_log >= self.log_every_s
        write = self.path is not None and (final or now - self._last_write >= self.write_every_s)
        if not (log or write):
            return
        rate = self._rate(done, now)
        eta = (total - done) / rate if total is not None and rate and done < total else None
        if log:
            self._last_log = now
            self.logger.info("%s", progress_line(self.stage, done, total, unit, rate, eta))
        if write and self.path is not None:
            self._last_write = now
            self._write(done, total, unit, rate, eta)
        self._finished = final

    def _rate(self, done: int, now: float) -> float | None:
        dt = now - self._start_t
        return (done - self._start_done) / dt if dt > 0 and done > self._start_done else None

    def _write(self, done: int, total: int | None, unit: str, rate: float | None, eta: float | None) -> None:
        assert self.path is not None
        record = {
            "stage": self.stage,
            "done": done,
            "total": total,
            "unit": unit,
            "rate": rate,
            "eta_s": eta,
            "started_at": self._started_at,
            "updated_at": self.wall(),
            "attempt": self.attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            write_json(self.path, record)
        except OSError as exc:  # progress is a courtesy: a full or read-only disk must not fail the stage
            self.logger.warning("could not write progress to %s: %s", self.path, exc)
            self.path = None


def progress_line(
    stage: str | None, done: int, total: int | None, unit: str, rate: float | None, eta_s: float | None
) -> str:
    """`extract: 120/430 letters (28%), 3.1 letters/s, ~1 min 40 s left` (stage None: no prefix)."""
    if total is not None:
        pct = f" ({100 * done / total:.0f}%)" if total > 0 else ""
        text = f"{done}/{total} {unit}{pct}"
    else:
        text = f"{done} {unit}"
    if rate:
        text += f", {format_rate(rate)} {unit}/s"
    if eta_s is not None:
        text += f", ~{format_duration(eta_s)} left"
    return f"{stage}: {text}" if stage else text


def format_rate(rate: float) -> str:
    """3 significant-ish digits without exponents: 1234, 31.2, 3.1, 0.052."""
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


def format_duration(seconds: float) -> str:
    """12 s, 1 min 40 s, 2 h 5 min, 3 d 4 h."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"
