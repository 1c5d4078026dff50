"""The words for a stage's (or a unit's) state, shared by the launcher (decide, submit,
summary) and `status`.

A `str` Enum: members compare equal to their value (`StageState.DONE == "done"`) and print
as it, so tables, JSON and older callers that compare with strings keep working.
"""

from __future__ import annotations

from enum import Enum


class StageState(str, Enum):
    #: every unit complete (status), or complete before this launch and reused (launch)
    DONE = "done"
    #: a live job runs the stage's missing units (status: a unit started and did not end)
    RUNNING = "running"
    #: a unit failed (status), or the stage failed while this launch ran it (local/debug)
    FAILED = "failed"
    #: a submitted job waits in Slurm's queue (dependency, resources, begin time)
    QUEUED = "queued"
    #: the job was requeued (time limit, preemption) and waits to resume from its checkpoint
    REQUEUED = "requeued"
    #: a unit stopped on request and saved a checkpoint, with no job left to resume it; or
    #: (local/debug) a unit stopped because its launcher was stopped (SIGINT/SIGTERM)
    STOPPED = "stopped"
    #: status: a unit whose record says running, but whose process or Slurm job is gone
    #: (kill -9, out of memory, node loss); the reason is shown when it is known
    DIED = "died"
    #: some units complete, none running or failed (status)
    INCOMPLETE = "incomplete"
    #: nothing ran yet (status), or the launch stopped before it (an upstream stage failed)
    NOT_STARTED = "not started"
    #: decided: units to submit now; a dry run stops here
    PLANNED = "planned"
    #: sbatch accepted: the units are queued or running on Slurm
    SUBMITTED = "submitted"
    #: local/debug: the units ran to completion in this launch
    RAN = "ran"
    #: waits for an upstream stage that another launch is still running (local/debug)
    BLOCKED = "blocked"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)
