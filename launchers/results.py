"""`python -m launch summary FOLDER... [out=DIR]`: the points of a sweep side by side.

One row per run: the config keys that differ between the runs, then headline metrics read from the
run's stage folders (runs/<exp>/<run_id>/stages/<stage> links) — train (loss, steps, tokens/s),
verify (pass rate), extract (prediction statuses), evaluate (strict micro F1 and pigeon_compat F1 per
letter set). A stage that is missing or not done shows as "—" (an empty cell in the CSV). Writes
summary.csv and summary.png (each metric against the swept key) into `out=` (default: the runs'
common parent folder). Numbers only: no letter text, no patient data.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.table import Table

from clinsynth.core.atomic import atomic_open, read_json
from clinsynth.evaluation.items import CATEGORIES, PIGEON_CATEGORIES
from clinsynth.evaluation.report import METRICS
from launchers.config import flatten, semantic
from launchers.folders import make_private_dir, private_files

CSV_NAME = "summary.csv"
PNG_NAME = "summary.png"
MISSING = "—"
#: the study's table rows (ICD-10-GM, tumour, lab, medication, ATC, OPS, procedure text): strict F1
#: pools their tp/fp/fn (as launchers/compare.py's overall line), pigeon_compat F1 averages them
STUDY_CATEGORIES = tuple(c.name for c in CATEGORIES if c.group == "study" and c.name in PIGEON_CATEGORIES)
#: extract's prediction statuses, in this order (clinsynth.extraction)
EXTRACT_STATUSES = ("ok", "repaired", "truncated", "invalid")
#: how deep under a given folder runs are looked for: runs/ -> runs/<exp>/<run_id>
SEARCH_DEPTH = 3
#: folders of a runs root that hold no run folders
NOT_RUNS = frozenset({"stages", "cache", "logs", "wandb"})

USAGE = "usage: python -m launch summary SWEEP_OR_RUN_FOLDER... [out=DIR]"


class SummaryError(ValueError):
    """Bad arguments or no runs found; the message says what to pass instead."""


@dataclass
class RunRow:
    run_dir: Path
    config: dict[str, Any]  # flattened semantic config of the run
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    stages_done: int = 0
    stages: int = 0

    @property
    def label(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


# ---- finding runs
def is_run(path: Path) -> bool:
    """A run folder has the launch's config.yaml beside delta.yaml or stages/ (a stage folder has
    a config.yaml too, but neither of those)."""
    return (path / "config.yaml").is_file() and (
        (path / "delta.yaml").is_file() or (path / "stages").is_dir()
    )


def find_runs(folders: Sequence[Path]) -> list[Path]:
    """The run folders given, or under the folders given (e.g. runs/<experiment>/), sorted, no duplicates."""
    out: dict[Path, None] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SummaryError(f"{folder}: no such folder")
        found = [folder] if is_run(folder) else _runs_under(folder, SEARCH_DEPTH)
        if not found:
            raise SummaryError(
                f"{folder}: neither a run folder (config.yaml + delta.yaml) nor a folder holding run "
                "folders; pass runs/<experiment>/ or runs/<experiment>/<run_id>/"
            )
        out.update((p.resolve(), None) for p in found)
    return sorted(out)


def _runs_under(folder: Path, depth: int) -> list[Path]:
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        if child.name in NOT_RUNS or child.name.startswith("."):
            continue
        found += [child] if is_run(child) else _runs_under(child, depth - 1)
    return found


# ---- reading one run
def read_run(run_dir: Path) -> RunRow:
    plain = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    row = RunRow(run_dir, flatten(semantic(plain)))
    links = sorted((run_dir / "stages").iterdir()) if (run_dir / "stages").is_dir() else []
    row.stages = len(links)
    for link in links:
        if not (link / "DONE").exists():
            continue  # missing, running or failed: its metrics show as "—"
        row.stages_done += 1
        row.metrics.update(stage_metrics(link.name, link))
    return row


def stage_metrics(stage: str, folder: Path) -> dict[str, float | int | None]:
    """Headline numbers of one done stage folder, from the files it wrote (by what is there, so
    extract/evaluate variants under other stage names are read too)."""
    out: dict[str, float | int | None] = {}
    if (folder / "train_report.json").is_file():
        out.update(_train(stage, folder))
    if (folder / "verification_report.json").is_file():
        out[f"{stage}/pass_rate"] = read_json(folder / "verification_report.json").get("pass_rate")
    if (folder / "stats").is_dir() and (folder / "predictions").is_dir():
        out.update(_extract(stage, folder))
    if (folder / METRICS).is_file():
        out.update(evaluate_metrics(stage, read_json(folder / METRICS)))
    return out


def _train(stage: str, folder: Path) -> dict[str, float | int | None]:
    report = read_json(folder / "train_report.json")
    losses = [
        float(m["train/loss"])
        for m in _jsonl(folder / "metrics.jsonl")
        if isinstance(m.get("train/loss"), (int, float))
    ]
    final = report.get("final_loss")
    return {
        f"{stage}/final_loss": final,
        f"{stage}/min_loss": min(losses) if losses else final,
        f"{stage}/steps": report.get("steps"),
        f"{stage}/tokens_per_s": report.get("tokens_per_s_useful"),
    }


def _extract(stage: str, folder: Path) -> dict[str, float | int | None]:
    counts: dict[str, int] = {}
    for path in sorted((folder / "stats").glob("shard-*.json")):
        for status, n in (read_json(path).get("statuses") or {}).items():
            counts[status] = counts.get(status, 0) + int(n)
    names = [*EXTRACT_STATUSES, *sorted(set(counts) - set(EXTRACT_STATUSES))]
    return {f"{stage}/{s}": counts.get(s, 0) for s in names}


def evaluate_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, float | int | None]:
    """Per letter set (synthetic test, dev, ...): strict micro F1 pooled over the study's seven table
    categories (sums of their tp/fp/fn) and the mean pigeon_compat F1 of those categories."""
    out: dict[str, float | int | None] = {}
    for source, m in sorted((metrics.get("sources") or {}).items(), key=lambda kv: _source_order(kv[0])):
        strict = m.get("strict") or {}
        tp = sum(int((strict.get(c) or {}).get("tp", 0)) for c in STUDY_CATEGORIES)
        fp = sum(int((strict.get(c) or {}).get("fp", 0)) for c in STUDY_CATEGORIES)
        fn = sum(int((strict.get(c) or {}).get("fn", 0)) for c in STUDY_CATEGORIES)
        out[f"{stage}/{source}/strict_f1"] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None
        pigeon = m.get("pigeon_compat") or {}
        f1s = [
            float(pigeon[c]["f1"])
            for c in STUDY_CATEGORIES
            if isinstance((pigeon.get(c) or {}).get("f1"), (int, float)) and math.isfinite(pigeon[c]["f1"])
        ]
        out[f"{stage}/{source}/pigeon_f1"] = sum(f1s) / len(f1s) if f1s else None
        out[f"{stage}/{source}/documents"] = m.get("documents")
    return out


def _source_order(source: str) -> tuple[int, str]:
    return ({"synthetic": 0, "dev": 1}.get(source, 2), source)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ---- the table
@dataclass
class Summary:
    rows: list[RunRow]
    keys: list[str]  # config keys that differ between the runs
    metrics: list[str]  # metric columns with at least one value

    @property
    def columns(self) -> list[str]:
        return ["run", *self.keys, "stages_done", *self.metrics]

    def cells(self, row: RunRow) -> list[Any]:
        cfg = [row.config.get(k, _ABSENT) for k in self.keys]
        return [
            row.label,
            *cfg,
            f"{row.stages_done}/{row.stages}",
            *(row.metrics.get(m) for m in self.metrics),
        ]


_ABSENT = object()


def summarize(runs: Sequence[Path]) -> Summary:
    rows = [read_run(r) for r in runs]
    keys = differing_keys([r.config for r in rows])
    rows.sort(key=lambda r: [_sortable(r.config.get(k, _ABSENT)) for k in keys])  # by the swept values
    metrics: list[str] = []
    for r in rows:
        metrics += [k for k, v in r.metrics.items() if v is not None and k not in metrics]
    return Summary(rows, keys, _metric_order(metrics))


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value (or presence) is not the same in every config, in the first config's order."""
    if len(configs) < 2:
        return []
    seen: dict[str, None] = {}
    for c in configs:
        seen.update(dict.fromkeys(c))
    return [k for k in seen if len({_key(c.get(k, _ABSENT)) for c in configs}) > 1]


def _sortable(value: Any) -> tuple[int, float, str]:
    """Numbers by value, then everything else by its JSON text; absent last."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (2, 0.0, "") if value is _ABSENT else (1, 0.0, _key(value))


def _key(value: Any) -> str:
    return "<absent>" if value is _ABSENT else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


#: metric columns by stage, in pipeline order; other stages after these
_STAGE_ORDER = ("verify", "train", "extract", "evaluate")


def _metric_order(metrics: list[str]) -> list[str]:
    def rank(m: str) -> tuple[int, str, int]:
        stage = m.split("/", 1)[0]
        base = next((i for i, s in enumerate(_STAGE_ORDER) if stage.startswith(s)), len(_STAGE_ORDER))
        return (base, stage, metrics.index(m))

    return sorted(metrics, key=rank)


def fmt(value: Any) -> str:
    if value is _ABSENT or value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1000 or value == 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def print_table(summary: Summary, console: Console) -> None:
    table = Table(title=f"{len(summary.rows)} run(s)", show_lines=False)
    for col in summary.columns:
        table.add_column(col, justify="left" if col == "run" or col in summary.keys else "right")
    for row in summary.rows:
        table.add_row(*(fmt(v) for v in summary.cells(row)))
    console.print(table)


def write_csv(summary: Summary, path: Path) -> None:
    """Missing values are empty cells (numbers stay numbers for pandas and spreadsheets)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(summary.columns)
        for row in summary.rows:
            w.writerow("" if v is _ABSENT or v is None else fmt(v) for v in summary.cells(row))


# ---- the plot
#: panels of summary.png: (title, column suffix)
PANELS = (
    ("F1 (strict micro; pigeon_compat mean)", "_f1"),
    ("training loss", "_loss"),
    ("verification pass rate", "/pass_rate"),
    ("useful tokens/s", "/tokens_per_s"),
)


#: more differing keys than this: the x labels are run ids (the keys are in the table and CSV)
MAX_LABEL_KEYS = 3


def x_axis(summary: Summary) -> tuple[str, list[Any], bool]:
    """The x values: the swept key's values when one key differs and all are numbers, else a label
    per point (the differing keys' values, or the run id)."""
    keys = summary.keys
    if len(keys) > MAX_LABEL_KEYS:
        return f"run ({len(keys)} keys differ: see {CSV_NAME})", [r.run_dir.name for r in summary.rows], False
    if len(keys) == 1:
        values = [r.config.get(keys[0]) for r in summary.rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return keys[0], values, True
    if keys:
        short = [k.rsplit(".", 1)[-1] for k in keys]
        labels = [
            ", ".join(f"{s}={fmt(r.config.get(k, _ABSENT))}" for s, k in zip(short, keys, strict=True))
            for r in summary.rows
        ]
        return ", ".join(keys), labels, False
    return "run", [r.run_dir.name for r in summary.rows], False


def write_png(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlabel, xs, numeric = x_axis(summary)
    panels = [(t, [m for m in summary.metrics if m.endswith(sfx)]) for t, sfx in PANELS]
    panels = [(t, ms) for t, ms in panels if ms]
    fig, axes = plt.subplots(
        max(1, len(panels)),
        1,
        figsize=(max(6.0, 0.9 * len(xs) + 4), 3.0 * max(1, len(panels))),
        squeeze=False,
    )
    if not panels:
        axes[0][0].text(0.5, 0.5, "no finished train/verify/evaluate stage in these runs", ha="center")
        axes[0][0].set_axis_off()
    order = sorted(range(len(xs)), key=lambda i: xs[i]) if numeric else list(range(len(xs)))
    positions = [xs[i] for i in order] if numeric else list(range(len(xs)))
    for ax, (title, columns) in zip((a[0] for a in axes), panels, strict=False):
        for col in columns:
            ys = [summary.rows[i].metrics.get(col) for i in order]
            ax.plot(positions, [math.nan if y is None else y for y in ys], marker="o", label=col)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        if numeric:
            ax.set_xticks(positions)
            ax.set_xticklabels([fmt(x) for x in positions])
        else:
            ax.set_xticks(positions)
            ax.set_xticklabels([str(xs[i]) for i in order], rotation=20, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(xs) - 0.5)  # every point has its place, with or without a value
    axes[-1][0].set_xlabel(xlabel)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


# ---- the command
def default_out(runs: Sequence[Path]) -> Path:
    """The folder the runs share: runs/<exp>/ for one experiment's runs."""
    return Path(os.path.commonpath([str(r.parent) for r in runs]))


def parse_args(args: Sequence[str]) -> tuple[list[Path], Path | None]:
    folders: list[Path] = []
    out: Path | None = None
    for a in args:
        if a.startswith("out="):
            out = Path(a[len("out=") :])
        elif "=" in a and not Path(a).exists():
            raise SummaryError(f"unknown option {a!r} (only out=DIR)")
        else:
            folders.append(Path(a))
    if not folders:
        raise SummaryError("no SWEEP_OR_RUN_FOLDER given")
    return folders, out


def run_summary(folders: Sequence[Path], out: Path | None, console: Console) -> Summary:
    runs = find_runs(folders)
    summary = summarize(runs)
    target = out if out is not None else default_out(runs)
    print_table(summary, console)
    with private_files():  # beside run folders: keep the runs/ tree private
        make_private_dir(target)
        write_csv(summary, target / CSV_NAME)
        write_png(summary, target / PNG_NAME)
    where = "out=" if out is not None else "the runs' common parent; out=DIR to change"
    console.out(f"wrote {target / CSV_NAME} and {target / PNG_NAME} ({where})", highlight=False)
    return summary


def main(args: Sequence[str], console: Console | None = None) -> int:
    import sys

    from launchers.summary import console_for

    try:
        folders, out = parse_args(args)
        run_summary(folders, out, console or console_for())
    except SummaryError as exc:
        print(f"error: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    return 0
