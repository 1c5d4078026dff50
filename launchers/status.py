"""`python -m launch status RUN_FOLDER`: stage and shard state read from the folders alone."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from launchers.folders import StageFolder


@dataclass
class StageStatus:
    stage: str
    stage_id: str
    path: Path
    state: str  # done | running | failed | incomplete | not started
    n_units: int
    complete: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)


def tail(path: str | Path | None, lines: int = 20) -> str:
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return f"(no log at {p})"
    with open(p, errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines))


def stage_status(folder: StageFolder) -> StageStatus:
    meta = folder.read_meta()
    n_units = int(meta.get("n_units", 1))
    complete = sorted(folder.completed_units())
    records = folder.task_records()
    failed = {u: r for u, r in records.items() if r.get("status") == "failed" and u not in complete}
    # started, not complete, not failed: running, or killed without a word (scancel -9, node loss)
    running = sorted(u for u, r in records.items() if r.get("status") == "running" and u not in complete)
    if folder.is_done():
        state = "done"
    elif failed:
        state = "failed"
    elif running:
        state = "running"
    elif complete:
        state = "incomplete"
    else:
        state = "not started"
    return StageStatus(folder.name, folder.stage_id, folder.path, state, n_units, complete, running, failed)


def run_status(run_dir: Path) -> list[StageStatus]:
    links = run_dir / "stages"
    if not links.is_dir():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no stages/ inside); pass runs/<experiment>/<run_id>"
        )
    names = sorted(p.name for p in links.iterdir() if not p.name.startswith("."))
    return [stage_status(StageFolder((links / n).resolve())) for n in _topo(names, links)]


def _topo(names: list[str], links: Path) -> list[str]:
    """Upstream stages first, from the `needs` each stage folder's config.yaml records."""
    needs: dict[str, list[str]] = {}
    for n in names:
        cfg = (links / n).resolve() / "config.yaml"
        data = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        needs[n] = [d for d in (data or {}).get("needs", {}) if d in names]
    out: list[str] = []

    def visit(n: str) -> None:
        if n not in out:
            for d in needs.get(n, []):
                visit(d)
            out.append(n)

    for n in names:
        visit(n)
    return out


def print_status(run_dir: Path, console: Console | None = None, log_lines: int = 15) -> list[StageStatus]:
    console = console or Console()
    statuses = run_status(run_dir)
    table = Table(title=f"run {run_dir}")
    for col in ("stage", "stage id", "state", "units done", "running", "failed"):
        table.add_column(col)
    for s in statuses:
        table.add_row(
            s.stage,
            s.stage_id,
            s.state,
            f"{len(s.complete)}/{s.n_units}",
            _ranges(s.running) or "-",
            _ranges(sorted(s.failed)) or "-",
        )
    console.print(table)
    for s in statuses:
        for unit, rec in s.failed.items():
            console.rule(f"{s.stage} unit {unit} failed on {rec.get('host')} (job {rec.get('job_id')})")
            console.print(rec.get("error", ""), markup=False)
            console.print(
                tail(rec.get("log_err"), log_lines) or tail(rec.get("log_out"), log_lines), markup=False
            )
    return statuses


def _ranges(units: list[int]) -> str:
    if not units:
        return ""
    out, start, prev = [], units[0], units[0]
    for u in units[1:] + [None]:  # type: ignore[list-item]
        if u is not None and u == prev + 1:
            prev = u
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if u is not None:
            start = prev = u
    return ",".join(out)
