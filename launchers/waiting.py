"""Block until a launched run is done or stuck, with one progress bar per stage."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from launchers import slurm_state
from launchers.folders import StageFolder
from launchers.status import print_status, stage_status
from launchers.submit import LaunchResult


def wait_for(result: LaunchResult, console: Console | None = None, poll_s: float = 2.0) -> bool:
    """True when every stage is done; False (after printing the status) when one failed or
    when no job is queued or running any more although stages are not done (a job was killed)."""
    console = console or Console(stderr=True)
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
            if all(s == "done" for s in states.values()):
                return True
            failed = [n for n, s in states.items() if s == "failed"]
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
                print_status(result.run_dir, console)
                return False
            time.sleep(poll_s)


def _anything_live(result: LaunchResult) -> bool:
    ids = {i for a in result.actions for i in a.job_ids}
    if not ids:
        return False
    live = slurm_state.live_slurm_tasks()
    bases = {k.split("_")[0] for k in live}
    return any(i in live or i.split("_")[0] in bases for i in ids)
