"""`compare:` — one launch runs its run and named variants of it, then tables their scores side by side.

An experiment says `compare: {oneshot: [extract/extractor=oneshot, extract/model=smollm2_135m], rules:
[extract/extractor=rules]}`. Each variant is an ordinary launch of the same overrides plus its own: its
own run id, content-addressed stages, so everything upstream of the swapped key is shared (the one-shot
and rules extractions reuse the letters; only the fine-tuned run trains). `compare` itself is a launcher
key (launchers/config.py OPERATIONAL_KEYS): adding a comparison never changes the base run's id.

The table reads each run's evaluate/metrics.json only: strict micro F1 and pigeon_compat F1 per category,
per letter set (synthetic test, development), per extractor. It is printed and written beside the base
run's config as comparison.md / comparison.json (numbers only: no letter text). A launch whose pipeline
stops before evaluate (`pipeline=[verify]`) launches no variants: there would be nothing to compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from clinsynth.core.atomic import write_bytes

COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"

#: the study's categories, in its table's order, then the overall line
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("icd10gm", "ICD-10-GM code"),
    ("tumor", "tumour information"),
    ("lab", "lab values"),
    ("medication", "medication name + dose"),
    ("atc", "ATC code"),
    ("ops", "OPS code"),
    ("procedure_text", "procedure descriptions"),
)
OVERALL = "micro over these 7"
SOURCES: tuple[tuple[str, str], ...] = (("synthetic", "synthetic test"), ("dev", "development (GraSCCo)"))


class CompareError(ValueError):
    """A `compare:` entry that is not a list of KEY=VALUE overrides (a plan-time error)."""


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


def variants(plain: Mapping[str, Any]) -> list[Variant]:
    """The `compare:` entries of a composed config, in their order; each must be a list of overrides."""
    raw = plain.get("compare") or {}
    if not isinstance(raw, Mapping):
        raise CompareError(f"compare must map a name to a list of overrides, got {type(raw).__name__}")
    out = []
    for name, overrides in raw.items():
        if isinstance(overrides, str) or not isinstance(overrides, Sequence):
            raise CompareError(
                f"compare.{name} must be a list of overrides like [extract/extractor=rules], "
                f"got {overrides!r}"
            )
        bad = [o for o in overrides if not isinstance(o, str) or "=" not in o]
        if bad:
            raise CompareError(f"compare.{name}: {bad[0]!r} is not an override KEY=VALUE")
        if any(o.split("=", 1)[0].lstrip("+~") == "compare" for o in overrides):
            raise CompareError(f"compare.{name} may not set compare itself")
        out.append(Variant(str(name), tuple(overrides)))
    return out


def variant_overrides(point: Sequence[str], variant: Variant) -> list[str]:
    """The variant's launch: the user's overrides, then the variant's (they win), with no comparisons
    of its own."""
    return [*point, *variant.overrides, "compare=null"]


def base_label(plain: Mapping[str, Any]) -> str:
    """What the base run is called in the table: its extractor (finetuned for smoke)."""
    ex = (plain.get("extract") or {}).get("extractor") or {}
    return str(ex.get("kind") or plain.get("name") or "base")


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "stages" / "evaluate" / "metrics.json"
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def overall_f1(strict: Mapping[str, Any]) -> float | None:
    """Micro F1 pooled over the study's categories (tp = gold - fn; predicted = tp + fp)."""
    tp = fp = fn = 0
    seen = False
    for key, _ in CATEGORIES:
        c = strict.get(key)
        if not isinstance(c, Mapping) or "gold" not in c:
            continue
        seen = True
        g, f_n, f_p = int(c["gold"]), int(c["fn"]), int(c["fp"])
        tp, fn, fp = tp + g - f_n, fn + f_n, fp + f_p
    if not seen:
        return None
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def collect(runs: Sequence[tuple[str, Path]]) -> dict[str, Any]:
    """{label: {source: {"strict": {cat: f1}, "pigeon_compat": {cat: f1}, "documents": n, "run": dir}}}."""
    out: dict[str, Any] = {}
    for label, run_dir in runs:
        m = _metrics(run_dir)
        entry: dict[str, Any] = {"run": str(run_dir), "evaluated": m is not None}
        for source, _ in SOURCES:
            s = (m or {}).get("sources", {}).get(source)
            if not s:
                continue
            strict, pigeon = s.get("strict", {}), s.get("pigeon_compat", {})
            entry[source] = {
                "documents": s.get("documents"),
                "schema_valid_rate": (s.get("status") or {}).get("schema_valid_rate"),
                "strict": {k: (strict.get(k) or {}).get("f1") for k, _ in CATEGORIES} | {
                    OVERALL: overall_f1(strict)
                },
                "pigeon_compat": {k: (pigeon.get(k) or {}).get("f1") for k, _ in CATEGORIES},
            }
        out[label] = entry
    return out


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{float(v):.3f}"


def _columns(data: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, source, header) for every run x letter set that has scores."""
    cols = []
    for source, title in SOURCES:
        for label, entry in data.items():
            if source in entry:
                n = entry[source].get("documents")
                cols.append((label, source, f"{label}\n{title} (n={n})"))
    return cols


def tables(data: Mapping[str, Any]) -> list[Table]:
    """One table per scoring mode: categories x (extractor, letter set)."""
    cols = _columns(data)
    out = []
    for mode, title in (("strict", "strict micro F1"), ("pigeon_compat", "pigeon_compat F1 (study's rules)")):
        table = Table(title=title, title_justify="left")
        table.add_column("category")
        for *_, header in cols:
            table.add_column(header, justify="right")
        rows = [*CATEGORIES, (OVERALL, OVERALL)] if mode == "strict" else list(CATEGORIES)
        for key, name in rows:
            table.add_row(name, *(_fmt(data[label][source][mode].get(key)) for label, source, _ in cols))
        out.append(table)
    return out


GAP_WHY = (
    "The development letters are real (GraSCCo): wording, layout and facts that no template writes. "
    "What a model learnt from synthetic letters, and what rules written for them find, carries over only "
    "partly; that gap, not the synthetic score, is what more realistic training letters "
    "(generate/letters=hybrid or llm) and larger models have to close. Six letters: dev numbers are rough."
)


def gap_lines(data: Mapping[str, Any]) -> list[str]:
    """One line per extractor scored on both letter sets: strict micro F1 synthetic vs development."""
    lines = []
    for label, entry in data.items():
        syn, dev = entry.get("synthetic"), entry.get("dev")
        if not syn or not dev:
            continue
        a, b = syn["strict"].get(OVERALL), dev["strict"].get(OVERALL)
        if a is None or b is None:
            continue
        lines.append(
            f"{label}: strict micro F1 {a:.3f} on the synthetic test letters, {b:.3f} on the development "
            f"letters ({b - a:+.3f})"
        )
    return lines + [GAP_WHY] if lines else []


def markdown(data: Mapping[str, Any], base: str) -> str:
    cols = _columns(data)
    lines = [
        f"# Extractors compared ({', '.join(data)}; base run: {base})",
        "",
        "Each column is its own run (runs/<experiment>/<run_id>/stages/evaluate/report.md holds the full",
        "report with intervals). Synthetic test letters have gold from their recipes; the development",
        "letters are six real GraSCCo letters annotated by hand — they measure transfer to real wording.",
        "",
    ]
    for mode, title in (("strict", "strict micro F1"), ("pigeon_compat", "pigeon_compat F1")):
        rows = [*CATEGORIES, (OVERALL, OVERALL)] if mode == "strict" else list(CATEGORIES)
        heads = " | ".join(h.replace("\n", " ") for *_, h in cols)
        lines += [f"## {title}", "", f"| category | {heads} |"]
        lines.append("|---|" + "---:|" * len(cols))
        for key, name in rows:
            cells = [_fmt(data[label][source][mode].get(key)) for label, source, _ in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    gap = gap_lines(data)
    if gap:
        lines += ["## synthetic vs development letters", ""]
        lines += [f"- {g}" for g in gap[:-1]] + ["", gap[-1], ""]
    lines += ["## runs", ""] + [f"- {label}: {entry['run']}" for label, entry in data.items()]
    return "\n".join(lines) + "\n"


def report(console: Console, base_run: Path, runs: Sequence[tuple[str, Path]]) -> dict[str, Any]:
    """Print the comparison and write comparison.md/.json into the base run folder."""
    data = collect(runs)
    missing = [label for label, entry in data.items() if not entry["evaluated"]]
    for table in tables({k: v for k, v in data.items() if v["evaluated"]}):
        console.print(table)
    for line in gap_lines(data):
        console.out(line, highlight=False)
    if missing:
        console.out(
            f"not evaluated (yet): {', '.join(missing)} — the table fills in when their evaluate stage is "
            "done; "
            f"`python -m launch summary {base_run.parent}` tabulates them later",
            highlight=False,
        )
    write_bytes(base_run / COMPARISON_JSON, orjson.dumps(data, option=orjson.OPT_INDENT_2))
    write_bytes(base_run / COMPARISON_MD, markdown(data, str(base_run)).encode())
    console.out(f"comparison: {base_run / COMPARISON_MD}", highlight=False)
    return data


__all__ = [
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "CompareError",
    "Variant",
    "base_label",
    "collect",
    "gap_lines",
    "overall_f1",
    "report",
    "variant_overrides",
    "variants",
]
