"""What the user sees at the end of a launch: per stage what happened and its key result.

Each stage may register a one-line summary read from its folder's JSON reports:

    @summarizer("dataset")
    def _dataset(folder: Path) -> KeyResult | None:
        report = read_json(folder / "dataset_report.json")
        return KeyResult(f"{report['train']} train / {report['val']} val examples", ("data/",))

A summarizer reads files only (the stage never imports the launcher); a missing or odd
report shows as a note, never as a failed launch. Results and tables go to stdout, progress
and logs to stderr; when a stream is not a terminal nothing is wrapped or folded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from clinsynth.artifacts.verdicts import REPORT, VERDICTS, read_report
from clinsynth.core.atomic import read_json
from clinsynth.letters.report import REPORT_MD as LETTERS_REPORT
from launchers.states import StageState

if TYPE_CHECKING:
    from launchers.decide import Reuse
    from launchers.plan import Plan
    from launchers.submit import StageAction

#: console width when the stream is a pipe or file: nothing is wrapped or folded
UNWRAPPED_WIDTH = 100_000


class _PipeConsole(Console):
    """A console for pipes and files: no wrapping, and rules stay short instead of 100k wide."""

    def rule(
        self, title: Any = "", *, characters: str = "─", style: Any = "rule.line", align: Any = "center"
    ) -> None:
        line = f"{characters * 3} {title} {characters * 3}" if title else characters * 40
        self.out(line, highlight=False)


def console_for(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A rich console on `file` (default stdout/stderr) that never wraps when it is not a terminal."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=stream)
    return _PipeConsole(file=stream, width=UNWRAPPED_WIDTH, soft_wrap=True)


@dataclass(frozen=True)
class KeyResult:
    """A stage's result in one line, and its main outputs relative to the stage folder."""

    line: str
    outputs: tuple[str, ...] = ()


Summarizer = Callable[[Path], "KeyResult | None"]
_SUMMARIZERS: dict[str, Summarizer] = {}


def summarizer(stage: str) -> Callable[[Summarizer], Summarizer]:
    """Register `fn(stage_folder) -> KeyResult | None` as the summary line of `stage`."""

    def deco(fn: Summarizer) -> Summarizer:
        _SUMMARIZERS[stage] = fn
        return fn

    return deco


def key_result(stage: str, folder: Path) -> KeyResult | None:
    """The stage's summary, or a note saying why there is none; never raises."""
    fn = _SUMMARIZERS.get(stage)
    if fn is None or not folder.is_dir():
        return None
    try:
        return fn(folder)
    except Exception as exc:  # a summary must never fail a launch that worked
        return KeyResult(f"(no summary: {type(exc).__name__}: {exc})")


def _top(counts: dict[str, Any], n: int = 3) -> str:
    items = sorted(((k, v.get("letters", 0) if isinstance(v, dict) else v) for k, v in counts.items()),
                   key=lambda kv: -kv[1])  # fmt: skip
    shown = ", ".join(f"{k} {v}" for k, v in items[:n])
    return shown + (f", +{len(items) - n} more" if len(items) > n else "")


def _count_lines(paths: Sequence[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                n += block.count(b"\n")
    return n


@summarizer("cohort")
def _cohort(folder: Path) -> KeyResult:
    patients = _count_lines(sorted((folder / "fhir").glob("Patient-*.ndjson")))
    shards = len(list((folder / "truth").glob("shard-*.jsonl")))
    return KeyResult(f"{patients} patients as FHIR NDJSON ({shards} shard(s))", ("fhir/", "truth/"))


@summarizer("ingest")
def _ingest(folder: Path) -> KeyResult:
    r = read_json(folder / "ingest_report.json")
    line = (
        f"{r['resources_ok']} of {r['resources_read']} resources ingested, "
        f"{r['resources_quarantined']} quarantined"
    )
    if r.get("quarantined_by_reason"):
        line += f" ({_top(r['quarantined_by_reason'])})"
    return KeyResult(line, ("records/", "quarantine.ndjson", "ingest_report.json"))


@summarizer("sample")
def _sample(folder: Path) -> KeyResult:
    r = read_json(folder / "sample_report.json")
    splits = {k.split("/", 1)[1]: v for k, v in (r.get("counts") or {}).items() if k.startswith("split/")}
    line = f"{r['specs']} specs from {r['patients']} patients"
    if splits:
        line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) + ")"
    if r.get("patients_failed"):
        line += f"; {r['patients_failed']} patients failed (errors.jsonl)"
    return KeyResult(line, ("specs/specs.parquet", "sample_report.json"))


@summarizer("generate")
def _generate(folder: Path) -> KeyResult:
    stats = [read_json(p) for p in sorted((folder / "stats").glob("shard-*.json"))]
    letters = sum(int(s.get("specs", 0)) for s in stats)
    written = sum(int(s.get("letters_generated", 0)) for s in stats)
    seconds = sum(float(s.get("seconds", 0)) for s in stats)
    backends = sorted({str(s.get("backend")) for s in stats if s.get("backend")})
    line = f"{letters} letters in {len(stats)} shard(s)"
    if written != letters:
        line += f" ({written} written now, {letters - written} resumed)"
    if backends:
        line += f", {'/'.join(backends)}"
    if seconds and written:
        line += f", {written / seconds:.1f} letters/s per task"
    return KeyResult(line, ("letters/", "stats/"))


@summarizer("verify")
def _verify(folder: Path) -> KeyResult:
    r = read_report(folder)
    rate = r.get("pass_rate")
    line = f"{r['passed']} of {r['letters']} letters pass"
    if rate is not None:
        line += f" ({100 * rate:.1f}%)"
    if r.get("failing_by_reason"):
        line += f"; failing: {_top(r['failing_by_reason'])}"
    return KeyResult(line, (VERDICTS, REPORT, LETTERS_REPORT))


@summarizer("dataset")
def _dataset(folder: Path) -> KeyResult:
    r = read_json(folder / "stats.json")
    splits = r.get("splits") or {}
    line = f"{r['examples']} chat examples from {r['letters']} letters"
    if splits:
        line += " (" + ", ".join(f"{k} {v.get('examples', 0)}" for k, v in sorted(splits.items())) + ")"
    out = [
        f"{r[k]} {what}"
        for k, what in (
            ("excluded_failed", "failed letters left out"),
            ("dropped_too_long", "too long dropped"),
        )
        if r.get(k)
    ]
    if out:
        line += "; " + ", ".join(out)
    return KeyResult(line, ("sft/", "stats.json", "lengths.png"))


@summarizer("train")
def _train(folder: Path) -> KeyResult:
    r = read_json(folder / "train_report.json")
    losses = [
        m.get("train/loss") for m in _jsonl(folder / "metrics.jsonl") if m.get("train/loss") is not None
    ]
    line = f"{r['method']} {r['model']}: {r['steps']} steps, {r['examples_seen']} examples seen"
    if losses:
        line += f", loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    if r.get("tokens_per_s_useful"):
        line += f", {r['tokens_per_s_useful']:,.0f} useful tokens/s on {r.get('world_size', 1)} rank(s)"
    if r.get("resumed_from"):
        line += " (resumed)"
    outputs = ["adapter/"] if (folder / "adapter").is_dir() else []
    outputs += ["merged/"] if (folder / "merged").is_dir() else []
    return KeyResult(line, (*outputs, "train_report.json", "metrics.jsonl"))


@summarizer("extract")
def _extract(folder: Path) -> KeyResult:
    stats = [read_json(p) for p in sorted((folder / "stats").glob("shard-*.json"))]
    statuses: dict[str, int] = {}
    for s in stats:
        for k, v in (s.get("statuses") or {}).items():
            statuses[k] = statuses.get(k, 0) + int(v)
    names = sorted({f"{s.get('extractor')} {s.get('model') or ''}".strip() for s in stats})
    line = f"{sum(statuses.values())} letters, {', '.join(names)}"
    if statuses:
        line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) + ")"
    tokens = sum(int(s.get("completion_tokens") or 0) for s in stats)
    seconds = sum(float(s.get("generate_s") or 0) for s in stats)
    if tokens and seconds:
        line += f", {tokens / seconds:.0f} completion tokens/s"
    return KeyResult(line, ("predictions/", "stats/"))


@summarizer("evaluate")
def _evaluate(folder: Path) -> KeyResult:
    from launchers.compare import SOURCES, overall_f1

    sources = read_json(folder / "metrics.json").get("sources") or {}
    parts = []
    for key, title in SOURCES:
        s = sources.get(key) or {}
        f1 = overall_f1(s.get("strict") or {})
        if f1 is not None:
            parts.append(f"{title} (n={s.get('documents')}) {f1:.3f}")
    line = "strict micro F1 over the study's 7 categories: " + ("; ".join(parts) or "nothing scored")
    return KeyResult(line, ("report.md", "metrics.json", "errors.jsonl", "plots/"))


@summarizer("export")
def _export(folder: Path) -> KeyResult:
    r = read_json(folder / "validation_report.json")
    line = (
        f"{r['exported']} of {r['records']} predictions as Bundles, {r['resources_written']} resources, "
        f"{r['errors']} validation errors, {r['rejected']} rejected"
    )
    return KeyResult(line, ("bundles/", "fhir_out/", "validation_report.json", "issues.jsonl"))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    import orjson

    if not path.is_file():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@summarizer("doctor")
def _doctor(folder: Path) -> KeyResult:
    reports = [read_json(p) for p in sorted((folder / "reports").glob("rank-*.json"))]
    hosts = sorted({str(r.get("host")) for r in reports})
    problems = [p for r in reports for p in r.get("problems") or []]
    verdict = f"{len(problems)} problem(s)" if problems else "ok"
    line = f"{len(reports)} rank(s) on {', '.join(hosts)}: {verdict}"
    return KeyResult(line, ("reports/",))


# ---- the end-of-launch summary

_LABELS = {
    StageState.DONE: "reused",
    StageState.RAN: "ran",
    StageState.SUBMITTED: "submitted",
    StageState.RUNNING: "running",
    StageState.FAILED: "failed",
    StageState.NOT_STARTED: "not started",
    StageState.PLANNED: "planned",
    StageState.BLOCKED: "blocked",
}


def label(action: StageAction) -> str:
    """What happened to a stage in this launch, in a word or two."""
    if action.status is StageState.DONE and action.reuse is not None and action.reuse.this_run:
        return "done"  # a relaunch of the same run: nothing to point at
    if action.status is StageState.SUBMITTED and action.live_units:
        return "submitted + running"
    return _LABELS.get(action.status, str(action.status))


def reuse_note(reuse: Reuse) -> str:
    """Where a reused stage came from, and what differs from this launch."""
    if reuse.this_run:
        where = "done earlier by this run"
    elif reuse.runs:
        where = f"from run {', '.join(reuse.runs)}"
    else:
        where = "from an earlier run (no record of which)"
    if reuse.differences:
        where += f"; differs from this launch: {'; '.join(reuse.differences)}"
    return where


def _units(a: StageAction) -> str:
    if a.units and a.status not in (StageState.NOT_STARTED, StageState.BLOCKED):
        return f"{len(a.units)} of {a.n_units}"
    if a.status is StageState.RUNNING:
        return f"{len(a.live_units)} live"
    return "all" if a.status in (StageState.DONE, StageState.RAN) else "-"


def compact_ids(ids: Sequence[str]) -> list[str]:
    """123_0 123_1 123_2 -> 123_[0-2]."""
    groups: dict[str, list[str]] = {}
    for i in ids:
        base, _, idx = str(i).partition("_")
        groups.setdefault(base, []).append(idx)
    out = []
    for base, idxs in groups.items():
        idxs = [x for x in idxs if x]
        if len(idxs) > 1:
            out.append(f"{base}_[{idxs[0]}-{idxs[-1]}]")
        else:
            out.append(f"{base}_{idxs[0]}" if idxs else base)
    return out


def print_summary(console: Console, plan: Plan, actions: Sequence[StageAction], executor: str, *,
                  dry_run: bool = False) -> None:  # fmt: skip
    """The table of stages (what happened, units, jobs, key result), then reuse notes and paths."""
    title = f"{'DRY RUN ' if dry_run else ''}{plan.experiment} run {plan.run_id} on {executor}"
    table = Table(title=title, title_justify="left")
    for col in ("stage", "stage id", "status", "units", "job id(s)", "result"):
        table.add_column(col, overflow="fold" if col == "result" else "ellipsis", no_wrap=col != "result")
    results: dict[str, KeyResult | None] = {}
    for a in actions:
        complete = a.status in (StageState.DONE, StageState.RAN)
        results[a.stage] = key_result(a.stage, a.folder) if complete and not dry_run else None
        jobs = ", ".join(compact_ids([*a.job_ids, *a.live_ids])) or "-"
        if a.cancelled:
            jobs += f" (cancelled {', '.join(compact_ids(a.cancelled))})"
        res = results[a.stage]
        result = res.line if res is not None else (a.reason or "-")
        table.add_row(a.stage, a.stage_id, label(a), _units(a), jobs, Text(result))
    console.print(table)
    width = max(len(a.stage) for a in actions) if actions else 0
    notes = [
        (a.stage, a.reuse)
        for a in actions
        if a.status is StageState.DONE and a.reuse and (a.reuse.differences or not a.reuse.this_run)
    ]
    if notes:
        console.out("reused:", highlight=False)
        for stage, reuse in notes:
            console.out(f"  {stage:<{width}}  {reuse_note(reuse)}", highlight=False)
    console.out("folders:" if dry_run else "outputs:", highlight=False)
    for a in actions:
        res = results.get(a.stage)
        outputs = "  ".join(res.outputs) if res and res.outputs else ""
        console.out(f"  {a.stage:<{width}}  {a.folder}/  {outputs}".rstrip(), highlight=False)
    if not dry_run:
        console.out(f"run folder: {plan.run_dir}", highlight=False)
