"""Block until a launched run is done or stuck, with one progress bar per stage."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launchers import slurm_state
from launchers.folders import StageFolder
from launchers.states import StageState
from launchers.status import print_status, stage_status
from launchers.submit import LaunchResult
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
    ok = _wait(result, console, poll_s, out)
    _settle(result)
    if out is not None:
        print_summary(out, result.plan, result.actions, str(result.plan.plain["cluster"]["executor"]))
    return ok


def _settle(result: LaunchResult) -> None:
    """What became of the stages this launch submitted or found running: ran, failed, or still so."""
    for a in result.actions:
        if a.status in (StageState.SUBMITTED, StageState.RUNNING):
            state = stage_status(StageFolder(a.folder)).state
            if state == StageState.DONE:
                a.status = StageState.RAN
            elif state == StageState.FAILED:
                a.status = StageState.FAILED


def _wait(result: LaunchResult, console: Console, poll_s: float, out: Console | None) -> bool:
    stages = [(a.stage, StageFolder(a.folder), a.n_units) for a in result.actions]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars = {name: progress.add_task(name, total=n) for name, _, n in stages}
        idle_polls = 0
        while True:
            states = {}
            for name, folder, _ in stages:
                st = stage_status(folder)
                states[name] = st.state
                progress.update(bars[name], completed=len(st.complete))
            if all(s == StageState.DONE for s in states.values()):
                return True
            failed = [n for n, s in states.items() if s == StageState.FAILED]
            live = _anything_live(result)
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


def _anything_live(result: LaunchResult) -> bool:
    ids = {i for a in result.actions for i in (*a.job_ids, *a.live_ids)}
    if not ids:
        return False
    live = slurm_state.live_slurm_tasks()
    bases = {k.split("_")[0] for k in live}
    return any(i in live or i.split("_")[0] in bases for i in ids)
