"""`python -m launch rerun=RUN_FOLDER [operational overrides]`: run a run again and compare its artifacts.

The run's saved overrides (RUN_FOLDER/overrides.yaml) are composed again, with the operational overrides
given here (cluster=..., resources/...=..., tracking=...), into a fresh runs root
`<runs>/reruns/<run_id>-<UTC stamp>/`: no stage folder is reused (the model cache, `<runs>/cache`, is
shared: converted packaged weights and tokenizers, inputs rather than results). Before it runs, the
composed config is checked against the saved RUN_FOLDER/config.yaml, and the git commit (+ dirty flag),
Python and package versions of now against those in each original stage's meta.json: every difference is
a warning. After it ran, each stage's manifest (launchers/manifest.py) is compared with the original
stage's (computed on the fly for an older folder without one): deterministic stages must be
byte-identical; nondeterministic ones (LLM sampling, training: their settings are in the manifest) have
their differing artifacts listed as expected. Exit 1 when a deterministic stage differs or is missing.
The comparison is also written to `<fresh root>/rerun.json`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from clinsynth.core.atomic import read_json, write_json
from launchers.config import OPERATIONAL_KEYS, REDACTED, compose_config, redact, semantic, to_plain
from launchers.folders import make_private_dir
from launchers.manifest import StageDiff, compare_manifests, read_manifest
from launchers.provenance import environment

USAGE = "usage: python -m launch rerun=RUN_FOLDER [cluster=... resources/<stage>=... tracking=... ...]"
#: operational keys a rerun may not be given: it chooses the runs root, runs for real, waits, and
#: reruns this run only (each `compare:` variant is a run of its own)
FIXED_KEYS = frozenset({"paths", "dry_run", "compare", "hydra"})
REPORT = "rerun.json"
#: changed paths listed per stage in the printed table (all of them go to rerun.json)
SHOW = 6


class RerunError(ValueError):
    """The folder or the overrides given to `rerun` cannot be rerun; the message says what to pass."""


def _key(override: str) -> str:
    """`+cluster=slurm` -> `cluster`, `resources/train=gpu` -> `resources/train`."""
    return override.partition("=")[0].lstrip("+~")


def _top(key: str) -> str:
    return key.replace("/", ".").split(".", 1)[0]


@dataclass
class Plan:
    run_dir: Path
    fresh_root: Path
    overrides: list[str]
    saved: dict[str, Any]


def plan_rerun(run_dir: Path, extra: Sequence[str], now: float | None = None) -> Plan:
    """The overrides of the rerun: the saved ones, then the operational ones given, then the fresh root."""
    from launchers.status import StatusError, check_run_folder

    try:
        run_dir = check_run_folder(Path(run_dir)).resolve()
    except StatusError as exc:
        raise RerunError(str(exc)) from None
    saved_path = run_dir / "overrides.yaml"
    if not saved_path.is_file():
        raise RerunError(f"{saved_path} is missing: this run folder was not written by `python -m launch`")
    saved_overrides = [str(o) for o in (yaml.safe_load(saved_path.read_text()) or [])]
    for o in extra:
        if "=" not in o:
            raise RerunError(f"{o!r} is not an override KEY=VALUE\n{USAGE}")
        top = _top(_key(o))
        if top not in OPERATIONAL_KEYS or top in FIXED_KEYS:
            raise RerunError(
                "rerun takes operational overrides only (cluster, resources, tracking, wait, stage_modules); "
                f"{_key(o)} {'is set by rerun itself' if top in FIXED_KEYS else 'changes results'}: "
                "launch it as a new run instead"
            )
    given = {_key(o) for o in extra}
    kept = [o for o in saved_overrides if _key(o) not in given and _top(_key(o)) not in FIXED_KEYS]
    hidden = [_key(o) for o in kept if REDACTED in o]
    if hidden:
        raise RerunError(
            f"the saved override(s) {', '.join(hidden)} of {saved_path} were redacted (secrets are never "
            f"saved): give them again, e.g. rerun={run_dir} {hidden[0]}=..."
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    fresh = run_dir.parent.parent / "reruns" / f"{run_dir.name}-{stamp}"
    if fresh.exists():
        raise RerunError(f"{fresh} exists already: wait a second and rerun")
    overrides = [*kept, *extra, f"paths.runs={fresh}", "compare=null", "dry_run=false"]
    if "wait" not in given:
        overrides.append("wait=true")  # Slurm too: the comparison needs the finished stages
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return Plan(run_dir, fresh, overrides, saved)


def share_cache(plan: Plan) -> Path | None:
    """`<fresh root>/cache` -> the original runs root's cache: it holds inputs derived from packaged
    weights (converted models, tokenizers), never a stage's output, and rebuilding them takes minutes."""
    cache = plan.run_dir.parent.parent / "cache"
    if not cache.is_dir():
        return None
    make_private_dir(plan.fresh_root)
    (plan.fresh_root / "cache").symlink_to(cache.resolve(), target_is_directory=True)
    return cache


def config_differences(saved: dict[str, Any], plain: dict[str, Any]) -> list[str]:
    """Keys (flattened) whose composed value differs from the saved run config, results-relevant only."""
    from launchers.config import flatten

    a, b = flatten(semantic(saved)), flatten(semantic(redact(plain)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def provenance_warnings(stage_dirs: dict[str, Path], now: dict[str, Any]) -> list[str]:
    """One line per difference between now and the environment each original stage was made in."""
    seen: dict[str, list[str]] = {}
    for name, folder in stage_dirs.items():
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            seen.setdefault(f"{folder} has no meta.json: its code version is unknown", []).append(name)
            continue
        meta = read_json(meta_path)
        git, git_now = meta.get("git") or {}, now.get("git") or {}
        if (git.get("commit"), git.get("dirty")) != (git_now.get("commit"), git_now.get("dirty")):
            line = f"git: made at {_commit(git)}, rerun at {_commit(git_now)}"
            seen.setdefault(line, []).append(name)
        if meta.get("python") and meta.get("python") != now.get("python"):
            seen.setdefault(f"python {meta['python']} then, {now.get('python')} now", []).append(name)
        pk, pk_now = meta.get("packages") or {}, now.get("packages") or {}
        for pkg in sorted(pk.keys() | pk_now.keys()):
            if pk.get(pkg) != pk_now.get(pkg):
                seen.setdefault(f"{pkg} {pk.get(pkg)} then, {pk_now.get(pkg)} now", []).append(name)
    return [f"{line} (stage(s) {', '.join(names)})" for line, names in seen.items()]


def _commit(git: dict[str, Any]) -> str:
    commit = git.get("commit") or "unknown commit"
    dirty = git.get("dirty")
    return f"{commit[:12]}{' (dirty)' if dirty else '' if dirty is False else ' (dirty: unknown)'}"


def original_stages(run_dir: Path) -> dict[str, Path]:
    """Stage name -> the stage folder the run links to."""
    links = run_dir / "stages"
    return {p.name: p.resolve() for p in sorted(links.iterdir()) if p.is_symlink() or p.is_dir()}


@dataclass
class StageResult:
    diff: StageDiff
    old_id: str
    new_id: str | None
    saved_manifest: bool
    nondeterminism: dict[str, Any] | None

    @property
    def failed(self) -> bool:
        """A deterministic stage whose artifacts differ, or a stage the rerun did not make."""
        return self.new_id is None or (self.diff.deterministic and not self.diff.identical)

    def as_dict(self) -> dict[str, Any]:
        d = self.diff
        return {
            "stage": d.stage,
            "stage_id": self.old_id,
            "rerun_stage_id": self.new_id,
            "deterministic": d.deterministic,
            "nondeterminism": self.nondeterminism,
            "identical": d.identical and self.new_id is not None,
            "files": d.files,
            "changed": d.changed,
            "missing": d.missing,
            "extra": d.extra,
            "manifest_saved": self.saved_manifest,
        }


def compare_stages(old: dict[str, Path], new: dict[str, Path]) -> list[StageResult]:
    out = []
    for name, folder in old.items():
        before, saved = read_manifest(folder)
        target = new.get(name)
        if target is None or not (target / "DONE").exists():
            diff = compare_manifests(name, before, {"files": {}})
            out.append(StageResult(diff, folder.name, None, saved, before.get("nondeterminism")))
            continue
        after, _ = read_manifest(target)
        diff = compare_manifests(name, before, after)
        nondet = after.get("nondeterminism") or before.get("nondeterminism")
        out.append(StageResult(diff, folder.name, target.name, saved, nondet))
    return out


def print_comparison(console: Console, results: list[StageResult]) -> None:
    table = Table(title="rerun: artifacts compared by sha256 (manifest.json per stage)")
    for col in ("stage", "stage id", "kind", "artifacts", "result"):
        table.add_column(col)
    for r in results:
        d = r.diff
        why = (r.nondeterminism or {}).get("why")
        kind = "deterministic" if d.deterministic else f"nondeterministic ({why})"
        if r.new_id is None:
            verdict = "[red]not made by the rerun[/]"
        elif d.identical:
            verdict = "[green]byte-identical[/]"
        else:
            paths = d.paths()
            shown = ", ".join(paths[:SHOW]) + (f" (+{len(paths) - SHOW} more)" if len(paths) > SHOW else "")
            colour = "red" if d.deterministic else "yellow"
            what = "DIFFER" if d.deterministic else "differ (expected)"
            verdict = f"[{colour}]{len(paths)} {what}:[/] {shown}"
        sid = r.old_id if r.new_id in (None, r.old_id) else f"{r.old_id} -> {r.new_id}"
        note = "" if r.saved_manifest else " (manifest computed now)"
        table.add_row(d.stage, sid + note, kind, str(d.files), verdict)
    console.print(table)


def main(args: Sequence[str], out: Console, err: Console) -> int:
    """`rerun=RUN_FOLDER [overrides]`; 0: every deterministic stage byte-identical."""
    from launchers.plan import build_plan
    from launchers.submit import launch
    from launchers.waiting import wait_for

    run_arg, *extra = list(args)
    run_dir = Path(run_arg.partition("=")[2])
    if not str(run_dir) or run_dir == Path():
        raise RerunError(f"rerun= needs a run folder\n{USAGE}")
    plan = plan_rerun(run_dir, extra)
    plain = to_plain(compose_config(plan.overrides))
    base = to_plain(compose_config([]))
    differs = config_differences(plan.saved, plain)
    warnings: list[str] = []
    if differs:
        warnings.append(
            f"the config composed now differs from {plan.run_dir / 'config.yaml'} at {', '.join(differs[:8])}"
            + (f" (+{len(differs) - 8} more)" if len(differs) > 8 else "")
            + ": conf/ changed since the run"
        )
    new_plan = build_plan(plain, base)
    if new_plan.run_id != plan.run_dir.name:
        warnings.append(
            f"the rerun's run id is {new_plan.run_id}, not {plan.run_dir.name}: its config differs"
        )
    old = original_stages(plan.run_dir)
    warnings += provenance_warnings(old, environment())
    for w in warnings:
        err.print(f"warning: {w}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    shared = share_cache(plan)
    err.print(
        f"rerun of {plan.run_dir} into fresh stage folders under {plan.fresh_root} (no stage is reused"
        + (f"; models built from packaged weights come from the shared cache {shared})" if shared else ")"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    result = launch(plan.overrides, console=out, err=err)
    ok = True
    if result.plan.plain["cluster"]["executor"] == "slurm":
        ok = wait_for(result, err, out=out)
    new = {st.name: st.folder.path for st in result.plan.stages}
    results = compare_stages(old, new)
    print_comparison(out, results)
    failed = [r.diff.stage for r in results if r.failed]
    write_json(
        plan.fresh_root / REPORT,
        {
            "original": str(plan.run_dir),
            "rerun": str(result.run_dir),
            "warnings": warnings,
            "stages": [r.as_dict() for r in results],
            "failed": failed,
        },
    )
    if failed:
        out.print(
            f"deterministic stage(s) differ: {', '.join(failed)} (details: {plan.fresh_root / REPORT})",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(f"every deterministic stage is byte-identical ({plan.fresh_root / REPORT})", markup=False)
    return 0 if ok and not failed else 1


def cli(args: Sequence[str]) -> int:
    """The `rerun=` subcommand of `python -m launch`: errors are one line, exit 1 (2: bad arguments)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from launchers.plan import PlanError
    from launchers.slurm_state import SlurmUnavailable
    from launchers.submit import LaunchError, LaunchStopped
    from launchers.summary import console_for
    from launchers.waiting import WaitStopped

    err = console_for(stderr=True)
    try:
        return main(args, console_for(), err)
    except RerunError as exc:
        err.print(f"error: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (WaitStopped, LaunchStopped) as exc:
        err.print(str(exc), style="yellow", markup=False, highlight=False, soft_wrap=True)
        return 128 + exc.signum
    except (PlanError, LaunchError, HydraException, OmegaConfBaseException, SlurmUnavailable) as exc:
        err.print(f"error: {type(exc).__name__}: {exc}", style="red", markup=False, highlight=False)
        return 1
