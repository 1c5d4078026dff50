"""Command line: `python -m launch [+experiment=NAME] [key=value ...]`, `status RUN`, `-m` sweeps."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from launchers.compare import CompareError, base_label, variant_overrides, variants
from launchers.compare import report as compare_report
from launchers.status import print_status
from launchers.summary import console_for

USAGE = """\
usage: python -m launch [+experiment=NAME] [KEY=VALUE ...]   compose, plan and submit
       python -m launch -m [+experiment=NAME] KEY=A,B ...       one launch per sweep point
       python -m launch --cfg [overrides ...]                  print the composed config
       python -m launch status RUN_FOLDER                      stage and shard state
       python -m launch score gold=GOLD.jsonl pred=PRED.jsonl  score extractions (launchers/score.py)
       python -m launch rerun=RUN_FOLDER [cluster=...]         rerun into fresh folders, compare sha256s
       python -m launch summary FOLDER... [out=DIR]            runs side by side: summary.csv, .png

Operational keys: cluster=local|debug|slurm, resources/<stage>=..., resources.<stage>.KEY=...,
tracking=offline|wandb|disabled, wait=true, dry_run=true. See README.md and conf/.
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    console = console_for(stderr=True)  # errors and progress; results go to stdout
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args and args[0] == "status":
        from launchers.status import StatusError

        status_usage = "usage: python -m launch status RUN_FOLDER"
        if len(args) != 2:
            got = "no RUN_FOLDER" if len(args) < 2 else f"{len(args) - 1} arguments"
            print(f"error: status takes one RUN_FOLDER, got {got}\n{status_usage}", file=sys.stderr)
            return 2
        try:
            statuses = print_status(Path(args[1]), Console())
        except StatusError as exc:
            print(f"error: {exc}\n{status_usage}", file=sys.stderr)
            return 2
        return 0 if all(s.state == "done" for s in statuses) else 1
    if args and args[0] == "score":
        from launchers.score import main as score

        return score(args[1:])
    if args and args[0].startswith("rerun="):
        from launchers.rerun import cli as rerun

        return rerun(args)
    if args and args[0] == "summary":
        from launchers.results import main as summary

        return summary(args[1:])
    if args and args[0] == "--cfg":
        from omegaconf import OmegaConf

        from launchers.config import compose_config, redact, to_plain

        print(OmegaConf.to_yaml(OmegaConf.create(redact(to_plain(compose_config(args[1:]))))))
        return 0
    from launchers.wandb_sweep import SweepRun

    sweep = SweepRun.take_from_env()  # under `wandb agent`: no stage task may log into the sweep's run
    multirun = bool(args) and args[0] in ("-m", "--multirun")
    if multirun:
        args = args[1:]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from submitit.core.utils import FailedJobError

    from launchers.plan import PlanError
    from launchers.slurm_state import SlurmUnavailable
    from launchers.submit import LaunchError, LaunchStopped, launch, storage_error
    from launchers.waiting import WaitStopped, wait_for

    user_errors = (
        PlanError,
        LaunchError,
        HydraException,
        OmegaConfBaseException,
        FailedJobError,
        SlurmUnavailable,
        ImportError,
        CompareError,
    )

    if multirun:
        parsed = OverridesParser.create().parse_overrides(args)
        points = [list(p) for batch in BasicSweeper.split_arguments(parsed, None) for p in batch]
    else:
        points = [args]
    out = console_for()
    ok = True
    run_dirs: list[Path] = []
    for point in points:
        if multirun:
            console.rule(" ".join(point))
        try:
            result = launch(point, console=out, err=console)
            plain = result.plan.plain
            run_dirs.append(result.plan.run_dir)
            if plain.get("wait") and not plain.get("dry_run") and plain["cluster"]["executor"] == "slurm":
                ok &= wait_for(result, console, out=out)
            named = [(base_label(plain), result.plan.run_dir)]
            # comparisons are of scores: a launch that stops before evaluate (pipeline=[verify]) has none
            scored = any(s.name == "evaluate" for s in result.plan.stages)
            for variant in variants(plain) if scored else []:
                # `compare:` (launchers/compare.py): the same launch with the variant's overrides
                console.rule(f"compare: {variant.name} ({' '.join(variant.overrides)})")
                other = launch(variant_overrides(point, variant), console=out, err=console)
                if plain.get("wait") and not plain.get("dry_run") and plain["cluster"]["executor"] == "slurm":
                    ok &= wait_for(other, console, out=out)
                named.append((variant.name, other.plan.run_dir))
            if len(named) > 1 and not plain.get("dry_run"):
                compare_report(out, result.plan.run_dir, named)
        except (LaunchStopped, WaitStopped) as exc:
            # one line: what was stopped (or what keeps running on Slurm) and how to go on
            console.print(str(exc), style="yellow", markup=False, highlight=False, soft_wrap=True)
            return 128 + exc.signum
        except KeyboardInterrupt:
            msg = "interrupted (SIGINT); relaunch the same command to resume (finished work is kept)"
            console.print(msg, style="yellow", markup=False, highlight=False, soft_wrap=True)
            return 130
        except (*user_errors, FileNotFoundError) as exc:
            console.print(f"error: {type(exc).__name__}: {exc}", style="red", markup=False, highlight=False)
            return 1
        except OSError as exc:
            why = storage_error(exc)
            if why is None:
                raise
            console.print(f"error: {why}", style="red", markup=False, highlight=False, soft_wrap=True)
            return 1
    if sweep is not None:  # the sweep's run gets the point's metrics (launchers/wandb_sweep.py)
        ok = sweep.report(run_dirs, console) and ok
    return 0 if ok else 1
