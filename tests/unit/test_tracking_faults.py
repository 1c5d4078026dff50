"""A tracking failure never fails a stage's work (issue 9): retried once, then tracking is off."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from clinsynth.core.tracking import GuardedTracker, NullTracker, start_tracker


class Flaky:
    log_samples = False

    def __init__(self, failures: int) -> None:
        self.failures, self.logged = failures, []

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("wandb service gone")
        self.logged.append(dict(metrics))

    def summary(self, values: Mapping[str, Any]) -> None:
        raise RuntimeError("broken pipe")

    def finish(self, exit_code: int = 0) -> None:
        raise RuntimeError("broken pipe")


def test_one_failure_is_retried_two_turn_tracking_off(caplog):
    logger = logging.getLogger("test.tracking")
    once = Flaky(failures=1)
    t = GuardedTracker(once, logger)
    t.log({"a": 1})
    assert once.logged == [{"a": 1}]
    always = Flaky(failures=10)
    t = GuardedTracker(always, logger)
    with caplog.at_level(logging.WARNING, logger="test.tracking"):
        t.log({"a": 1})
        t.summary({"b": 2})
        t.finish()
    assert always.failures == 8  # two tries, then no more calls
    assert "tracking log failed twice" in caplog.text


def test_a_tracker_that_cannot_start_leaves_the_stage_running(caplog):
    calls = []

    def factory():
        calls.append(1)
        raise RuntimeError("wandb-core did not start")

    with caplog.at_level(logging.WARNING):
        tracker = start_tracker(factory, logging.getLogger("test.tracking"))
    assert isinstance(tracker, NullTracker) and len(calls) == 2
    assert "tracking could not start" in caplog.text
