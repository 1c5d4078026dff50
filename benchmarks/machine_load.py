"""CPU taken by processes outside a benchmark's own process tree, per time window.

On a small shared machine (2 cores, several users) another process's test run during one side of
a stage-vs-bare comparison and not the other moves the ratio by 30 % and more; a benchmark prints
this next to its ratio so a reader can tell a slow stage from a busy machine.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any


class MachineLoad:
    """Samples every process's CPU seconds every `every_s` in a thread (`with MachineLoad() as m:`).

    `other_cpu_s(t0, t1)`: CPU seconds used between the samples nearest t0 and t1 by processes that
    were never this process or one of its descendants. A process that started and ended between two
    samples is not seen (an undercount); one started inside the window counts from its start."""

    def __init__(self, every_s: float = 0.5) -> None:
        import psutil  # type: ignore[import-untyped]

        self._psutil = psutil
        self.every_s = every_s
        self.samples: list[tuple[float, dict[int, float]]] = []
        self.ours: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        psutil = self._psutil
        me = psutil.Process()
        with contextlib.suppress(psutil.Error):
            self.ours.update(p.pid for p in me.children(recursive=True))
        self.ours.add(os.getpid())
        cpu: dict[int, float] = {}
        for p in psutil.process_iter(["cpu_times"]):
            times: Any = p.info["cpu_times"]
            if times is not None:
                cpu[p.pid] = float(times.user + times.system)
        self.samples.append((time.time(), cpu))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> MachineLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def other_cpu_s(self, t0: float, t1: float) -> float:
        if not self.samples:
            return 0.0
        start = min(self.samples, key=lambda s: abs(s[0] - t0))[1]
        end = min(self.samples, key=lambda s: abs(s[0] - t1))[1]
        return sum(max(0.0, c - start.get(pid, 0.0)) for pid, c in end.items() if pid not in self.ours)
