"""Block until a launched run is done or stuck, with one progress bar per stage.

Ctrl-C (or SIGTERM, SIGHUP) while waiting stops the waiting only: the Slurm jobs keep
running, and the message says which, how to watch them and how to cancel them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launchers import slurm_state
from launchers.folders import StageFolder
from launchers.states import StageState
from launchers.status import print_status, stage_progress, stage_status
from launchers.submit import STOP_SIGNALS, LaunchResult, slurm_keep_running
from launchers.summary import console_for, print_summary


def wait_for(
    result: LaunchResult, console: Console | None = None, poll_s: float = 2.0, out: Console | None = None
) -> bool:
    """True when every stage is done; False (after printing the status) when one failed or
    when no job is queued or running any more although stages are not done (a job was killed).

    Progress goes to `console` (stderr); with `out` (stdout) the launch summary is printed
    again at the end, now with each stage's result.
    """
    console = console or console_for(stderr=True)
    try:
        with _stop_raises():
            ok = _wait(result, console, poll_s, out)
    except _Signalled as sig:
        ids = [i for a in result.actions for i in (*a.job_ids, *a.live_ids)]
        what = slurm_keep_running(ids, result.run_dir) if ids else "no Slurm job of this run was live"
        name = signal.Signals(sig.signum).name
        raise WaitStopped(f"stopped waiting ({name}): {what}", sig.signum) from None
    _settle(result)
    if out is not None:
        print_summary(out, result.plan, result.actions, str(result.plan.plain["cluster"]["executor"]))
    return ok


class WaitStopped(RuntimeError):
    """A stop signal ended the waiting; the Slurm jobs were left running (the message says so)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        self.signum = signum


@contextmanager
def _stop_raises() -> Iterator[None]:
    """While waiting (reads only), a stop signal ends the wait at once; never scancel."""
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: Any) -> None:
        raise _Signalled(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, handle)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _settle(result: LaunchResult) -> None:
    """What became of the stages this launch submitted or found running: ran, failed, or still so.

    With Slurm's live jobs at hand, a unit whose job is gone while its record says running is
    "died", and its record gets how the job ended (sacct)."""
    live = _live_tasks()
    for a in result.actions:
        if a.status in (StageState.SUBMITTED, StageState.RUNNING):
            state = stage_status(StageFolder(a.folder), live).state
            if state == StageState.DONE:
                a.status = StageState.RAN
            elif state in (StageState.FAILED, StageState.DIED):
                a.status = StageState.FAILED


def _wait(result: LaunchResult, console: Console, poll_s: float, out: Console | None) -> bool:
    stages = [(a.stage, StageFolder(a.folder), a.n_units) for a in result.actions]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),  # the running units' progress (ctx.progress)
        console=console,
    ) as progress:
        bars = {name: progress.add_task(name, total=n, detail="") for name, _, n in stages}
        idle_polls = 0
        while True:
            states = {}
            slurm_live = _live_tasks()
            for name, folder, _ in stages:
                st = stage_status(folder, slurm_live)
                states[name] = st.state
                progress.update(bars[name], completed=len(st.complete), detail=stage_progress(st))
            if all(s == StageState.DONE for s in states.values()):
                return True
            failed = [n for n, s in states.items() if s in (StageState.FAILED, StageState.DIED)]
            live = _anything_live(result, slurm_live)
            idle_polls = 0 if live else idle_polls + 1
            # a failed unit may be requeued by Slurm; give up when nothing of the run is live
            if (failed and not live) or idle_polls >= 2:
                progress.stop()
                what = (
                    f"stage(s) {', '.join(failed)} failed"
                    if failed
                    else ("no job of this run is queued or running, but not every stage is done")
                )
                console.print(f"[red]{what}[/]")
                print_status(result.run_dir, out or console)
                return False
            time.sleep(poll_s)


def _live_tasks() -> dict[str, tuple[str, str]] | None:
    try:
        return slurm_state.live_slurm_tasks()
    except (slurm_state.SlurmUnavailable, OSError):
        return None


def _anything_live(result: LaunchResult, live: dict[str, tuple[str, str]] | None = None) -> bool:
    ids = {i for a in result.actions for i in (*a.job_ids, *a.live_ids)}
    if not ids:
        return False
    if live is None:
        live = slurm_state.live_slurm_tasks()
    bases = {k.split("_")[0] for k in live}
    return any(i in live or i.split("_")[0] in bases for i in ids)
