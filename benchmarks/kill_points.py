"""Kill -9 the smoke pipeline at random points, relaunch it, and count lost and duplicated data.

    python benchmarks/kill_points.py [--points 20] [--seed 0] [--patients 200] [--dir DIR]

First one clean run (the baseline: what every artifact must hold, and how long a run takes).
Then for each point, in a fresh runs folder: start

    python -m launch +experiment=smoke cluster=local tracking=disabled paths.runs=DIR cohort.patients=N

and at a random moment (seeded) SIGKILL one of
  - launcher       the launch process itself (its local jobs live on, in their own sessions:
                   a relaunch meets them as "zombies" still writing);
  - task           a stage task that is running then (a `submitit.core._submit` child of a
                   local job's controller), whichever stage that is;
  - ingest-worker  a validation worker process of the ingest task;
wait for the launch to end, relaunch the same command until it succeeds (at most 3 times,
waiting for leftover processes between tries), and compare every artifact with the
baseline as multisets: cohort FHIR resources and truth, ingest records (rows per table, and
the ingest report's counts), specs, letters (one per spec across all shards) and verdicts
(one per letter). `lost` counts rows of the baseline that are missing, `duplicated` rows
there more often than in the baseline. Between points every process of the point (the
launcher's process group and every local job's group) is killed.

Prints a table (point, what was killed, at what stage, relaunch outcome, lost, duplicated)
and a last line "N/N points: 0 lost, 0 duplicated" or the failures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KINDS = ("launcher", "task", "ingest-worker")
STAGES = ("cohort", "ingest", "sample", "generate", "verify")


def command(runs: Path, patients: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch",
        "+experiment=smoke",
        "cluster=local",
        "tracking=disabled",
        f"paths.runs={runs}",
        f"cohort.patients={patients}",
        "generate.letters.chunk=8",  # operational: many atomic chunks to be killed between
    ]


# ---- processes


@dataclass
class Proc:
    pid: int
    ppid: int
    pgid: int
    args: str


def processes() -> dict[int, Proc]:
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        if rest[0] == "Z":  # already dead, not reaped yet
            continue
        out[int(entry)] = Proc(int(entry), int(rest[1]), int(rest[2]), args)
    return out


def stage_of(args: str) -> str | None:
    for st in STAGES:
        if f"/stages/{st}/" in args:
            return st
    return None


def point_processes(runs: Path) -> tuple[list[Proc], list[Proc], dict[int, Proc]]:
    """(tasks, ingest workers, all processes of this runs folder) right now."""
    procs = processes()
    mine = {p.pid: p for p in procs.values() if f"{runs}/" in p.args or f"paths.runs={runs} " in f"{p.args} "}
    tasks = [
        p
        for p in mine.values()
        if "submitit.core._submit" in p.args
        and "launchers.executors" in procs.get(p.ppid, Proc(0, 0, 0, "")).args
    ]
    task_pids = {t.pid for t in tasks if stage_of(t.args) == "ingest"}
    # workers: children of the ingest task (multiprocessing re-runs the task's command line,
    # or a spawn/forkserver child: anything whose parent is the ingest task)
    workers = [p for p in procs.values() if p.ppid in task_pids]
    return tasks, workers, mine


def kill_everything(runs: Path, *groups: int) -> None:
    """SIGKILL the given process groups and the group of every process of this runs folder."""
    for _ in range(3):
        pgids = set(groups) | {p.pgid for p in point_processes(runs)[2].values()}
        pgids.discard(os.getpgrp())
        if not pgids:
            return
        for g in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, signal.SIGKILL)
        time.sleep(0.3)


def wait_quiet(runs: Path, timeout: float) -> bool:
    """Wait until no process of this runs folder is left (orphaned jobs finish on their own)."""
    end = time.time() + timeout
    while time.time() < end:
        if not point_processes(runs)[2]:
            return True
        time.sleep(0.5)
    return False


# ---- artifacts


def stage_dirs(runs: Path) -> dict[str, Path]:
    out = {}
    for st in STAGES:
        found = sorted(glob.glob(str(runs / "smoke" / "*" / "stages" / st)))
        if found:
            out[st] = Path(found[0]).resolve()
    return out


def _h(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _jsonl(paths: Iterable[Path]) -> Iterable[dict[str, Any]]:
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def snapshot(runs: Path) -> dict[str, Counter[str]]:
    """Every artifact as a multiset of row keys (ids plus a content hash)."""
    d = stage_dirs(runs)
    snap: dict[str, Counter[str]] = {}
    if "cohort" in d:
        fhir = sorted((d["cohort"] / "fhir").glob("*.ndjson"))
        snap["cohort/fhir"] = Counter(
            f"{r['resourceType']}/{r['id']}:{_h(orjson.dumps(r, option=orjson.OPT_SORT_KEYS))}"
            for r in _jsonl(fhir)
        )
        snap["cohort/truth"] = Counter(
            r["patient_id"] for r in _jsonl(sorted((d["cohort"] / "truth").glob("*.jsonl")))
        )
    if "ingest" in d:
        from clinsynth.records import TABLES

        for table in TABLES:
            rows: Counter[str] = Counter()
            for path in sorted((d["ingest"] / "records").glob(f"{table}-*.parquet")):
                for row in pq.read_table(path).to_pylist():
                    rows[_h(orjson.dumps(row, option=orjson.OPT_SORT_KEYS))] += 1
            snap[f"ingest/{table}"] = rows
        report = orjson.loads((d["ingest"] / "ingest_report.json").read_bytes())
        snap["ingest/report"] = Counter(
            {f"rows/{t}={n}": 1 for t, n in report["rows"].items()}
            | {f"ok={report['resources_ok']}": 1, f"quarantined={report['resources_quarantined']}": 1}
        )
    if "sample" in d:
        t = pq.read_table(d["sample"] / "specs" / "specs.parquet", columns=["spec_id", "recipe"])
        snap["sample/specs"] = Counter(
            f"{s}:{_h(r.encode())}"
            for s, r in zip(t.column("spec_id").to_pylist(), t.column("recipe").to_pylist(), strict=True)
        )
    if "generate" in d:
        snap["generate/letters"] = Counter(
            f"{r['spec_id']}:{_h(r['text'].encode())}"
            for r in _jsonl(sorted((d["generate"] / "letters").glob("shard-*.jsonl")))
        )
    if "verify" in d:
        snap["verify/verdicts"] = Counter(
            f"{r['spec_id']}:{r['ok']}" for r in _jsonl([d["verify"] / "verification.jsonl"])
        )
    return snap


def compare(
    base: dict[str, Counter[str]], got: dict[str, Counter[str]]
) -> tuple[dict[str, int], dict[str, int]]:
    lost: dict[str, int] = {}
    dup: dict[str, int] = {}
    for key, want in base.items():
        have = got.get(key, Counter())
        n_lost = sum((want - have).values())
        n_dup = sum((have - want).values())
        if n_lost:
            lost[key] = n_lost
        if n_dup:
            dup[key] = n_dup
    return lost, dup


def consistency(runs: Path) -> list[str]:
    """Within-run checks that need no baseline: report counts vs files, one verdict per letter."""
    problems = []
    d = stage_dirs(runs)
    try:
        from clinsynth.artifacts.letters import check_letters
        from clinsynth.artifacts.specs import check_specs
        from clinsynth.records import check_records

        check_records(d["ingest"], stage="kill_points")
        total = check_specs(d["sample"], stage="kill_points")
        check_letters(d["generate"], total, stage="kill_points")
        truth = Counter(r["patient_id"] for r in _jsonl(sorted((d["cohort"] / "truth").glob("*.jsonl"))))
        records = Counter(
            pid
            for path in sorted((d["ingest"] / "records").glob("patients-*.parquet"))
            for pid in pq.read_table(path, columns=["patient_id"]).column("patient_id").to_pylist()
        )
        if records != truth:
            problems.append(
                f"ingest: {sum((truth - records).values())} cohort patient(s) lost in records, "
                f"{sum((records - truth).values())} duplicated or unknown"
            )
        verdicts = Counter(r["spec_id"] for r in _jsonl([d["verify"] / "verification.jsonl"]))
        if len(verdicts) != total or any(n != 1 for n in verdicts.values()):
            problems.append(f"verify: {sum(verdicts.values())} verdicts for {total} specs")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


# ---- one point


@dataclass
class Point:
    n: int
    kind: str
    at_s: float
    killed: str = "-"
    stage: str = "-"
    outcome: str = "-"
    lost: dict[str, int] = field(default_factory=dict)
    dup: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def complete(runs: Path) -> bool:
    """Every stage of the pipeline is done (a launch can end with rc 0 while stages were
    blocked by another launch's live jobs: that is not completion)."""
    d = stage_dirs(runs)
    return all(st in d and (d[st] / "DONE").exists() for st in STAGES)


def run_to_completion(cmd: list[str], runs: Path, log: Path, tries: int = 4) -> tuple[str, list[int]]:
    """Relaunch until the pipeline is complete; between tries wait for leftover jobs to finish."""
    groups = []
    notes = []
    for k in range(1, tries + 1):
        with open(log, "ab") as fh:
            p = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=fh, stderr=fh)
            groups.append(p.pid)
            try:
                rc = p.wait(timeout=900)
            except subprocess.TimeoutExpired:
                kill_everything(runs, p.pid)
                return f"timeout (try {k})", groups
        if rc == 0 and complete(runs):
            return ("ok" if k == 1 else f"ok (try {k}: {', '.join(notes)})"), groups
        notes.append(f"rc={rc}" if rc else "rc=0 but blocked")
        wait_quiet(runs, 300)
    return f"failed x{tries} ({', '.join(notes)})", groups


def run_point(
    pt: Point, runs: Path, patients: int, base: dict[str, Counter[str]], rng: random.Random
) -> Point:
    cmd = command(runs, patients)
    log = runs.parent / f"{runs.name}.log"
    t0 = time.time()
    with open(log, "wb") as fh:
        launcher = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=fh, stderr=fh)
    groups = [launcher.pid]
    try:
        target: Proc | None = None
        while launcher.poll() is None and target is None:
            elapsed = time.time() - t0
            tasks, workers, _ = point_processes(runs)
            if pt.kind == "launcher" and elapsed >= pt.at_s:
                target = Proc(launcher.pid, 0, launcher.pid, "launcher")
                pt.stage = ",".join(sorted({s for t in tasks if (s := stage_of(t.args))})) or "between stages"
            elif pt.kind == "task" and elapsed >= pt.at_s and tasks:
                target = rng.choice(sorted(tasks, key=lambda p: p.pid))
                pt.stage = stage_of(target.args) or "?"
            elif pt.kind == "ingest-worker" and workers:
                if pt.at_s > 0:  # a random moment within the workers' lifetime
                    time.sleep(pt.at_s)
                    pt.at_s = 0
                    continue
                target = rng.choice(sorted(workers, key=lambda p: p.pid))
                pt.stage = "ingest"
            else:
                time.sleep(0.02)
        if target is None:
            pt.killed = f"{pt.kind}: none (launch ended first)"
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target.pid, signal.SIGKILL)
            pt.killed = f"{pt.kind} pid {target.pid} at {time.time() - t0:.1f}s"
        try:
            launcher.wait(timeout=600)
        except subprocess.TimeoutExpired:
            kill_everything(runs, launcher.pid)
        first_rc = launcher.returncode
        outcome, more = run_to_completion(cmd, runs, log)
        groups += more
        pt.outcome = f"{outcome} (killed launch rc={first_rc})"
        try:
            pt.lost, pt.dup = compare(base, snapshot(runs))
        except Exception as exc:  # a file missing: counted as a problem, never a crash
            pt.problems.append(f"snapshot: {type(exc).__name__}: {exc}")
        pt.problems += consistency(runs)
    finally:
        kill_everything(runs, *groups)
    pt.seconds = time.time() - t0
    return pt


def _fmt(d: dict[str, int]) -> str:
    return "0" if not d else ", ".join(f"{k}:{v}" for k, v in sorted(d.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the runs folders go (default: a temp folder)"
    )
    args = ap.parse_args()
    root = (args.dir or Path(tempfile.mkdtemp(prefix="kill_points-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    print(f"runs under {root}; baseline run ...", flush=True)
    t0 = time.time()
    base_runs = root / "baseline"
    outcome, groups = run_to_completion(
        command(base_runs, args.patients), base_runs, root / "baseline.log", tries=1
    )
    kill_everything(base_runs, *groups)
    duration = time.time() - t0
    if not outcome.startswith("ok"):
        print(f"the baseline run failed ({outcome}); see {root / 'baseline.log'}")
        return 2
    base = snapshot(base_runs)
    problems = consistency(base_runs)
    print(
        f"baseline: {duration:.0f}s, "
        + ", ".join(f"{k} {sum(v.values())}" for k, v in base.items() if k != "ingest/report")
        + (f"; PROBLEMS {problems}" if problems else ""),
        flush=True,
    )
    points = []
    offset = rng.randrange(len(KINDS))
    for n in range(args.points):
        kind = KINDS[(n + offset) % len(KINDS)]  # every kind comes round; the moment is random
        at = rng.uniform(0.0, 0.8) if kind == "ingest-worker" else rng.uniform(0.5, 0.95 * duration)
        pt = run_point(Point(n, kind, round(at, 2)), root / f"point-{n:02d}", args.patients, base, rng)
        points.append(pt)
        bad = pt.lost or pt.dup or pt.problems
        print(
            f"point {n:2d}: {pt.killed} [{pt.stage}] -> {pt.outcome}; lost {_fmt(pt.lost)}, "
            f"duplicated {_fmt(pt.dup)}{'; ' + '; '.join(pt.problems) if pt.problems else ''} "
            f"({pt.seconds:.0f}s){'  <-- FAIL' if bad else ''}",
            flush=True,
        )
    print()
    header = f"{'point':>5}  {'killed':<40} {'stage':<16} {'relaunch':<36} {'lost':<10} {'duplicated':<10}"
    print(header)
    print("-" * len(header))
    for pt in points:
        print(
            f"{pt.n:>5}  {pt.killed:<40} {pt.stage:<16} {pt.outcome:<36} "
            f"{_fmt(pt.lost):<10} {_fmt(pt.dup):<10}"
        )
    failed = [pt for pt in points if pt.lost or pt.dup or pt.problems or not pt.outcome.startswith("ok")]
    print()
    if not failed:
        print(f"{len(points)}/{len(points)} points: 0 lost, 0 duplicated")
        return 0
    for pt in failed:
        print(
            f"point {pt.n} FAILED: killed {pt.killed} [{pt.stage}], relaunch {pt.outcome}, "
            f"lost {_fmt(pt.lost)}, duplicated {_fmt(pt.dup)}, problems {pt.problems}; "
            f"runs {root / f'point-{pt.n:02d}'}"
        )
    print(f"{len(points) - len(failed)}/{len(points)} points: 0 lost, 0 duplicated; {len(failed)} failed")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
