"""`python -m launch score gold=GOLD.jsonl pred=PRED.jsonl [out=DIR] [KEY=VALUE ...]`: score any two
JSONL files of schema-v2 extractions the way the evaluate stage does.

GOLD lines: {"doc": ..., "extraction": {...}}. PRED lines: prediction records (the extract stage's
predictions/shard-*.jsonl) or the same {"doc", "extraction"} shape (status ok assumed). Writes
metrics.json, report.md, errors.jsonl and plots/ to `out` (default ./score-<timestamp>/; a folder this
command creates is made private, as it holds extracted values; an existing one keeps its mode), and
prints the study categories. Settings default to conf/config.yaml's
`evaluate:` section and the shared `seed`: text_threshold=, bootstrap=, interval=, plots=, seed=.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

USAGE = (
    "usage: python -m launch score gold=GOLD.jsonl pred=PRED.jsonl [out=DIR] "
    "[text_threshold=85] [bootstrap=1000] [interval=0.95] [plots=true] [seed=0]"
)
KEYS = ("gold", "pred", "out", "text_threshold", "bootstrap", "interval", "plots", "seed")


class ScoreUsageError(ValueError):
    pass


def parse_args(args: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or not value:
            raise ScoreUsageError(f"expected KEY=VALUE, got {a!r}")
        if key not in KEYS:
            raise ScoreUsageError(f"unknown key {key!r}; keys: {', '.join(KEYS)}")
        out[key] = value
    for key in ("gold", "pred"):
        if key not in out:
            raise ScoreUsageError(f"missing {key}=FILE.jsonl")
    return out


def settings_from(args: dict[str, str]) -> tuple[Any, bool]:
    """ScoreSettings and plots: the conf defaults, overridden by the command line (validated by the
    evaluate stage's config model)."""
    from clinsynth.evaluation.config import EvaluateConfig
    from clinsynth.evaluation.scorer import ScoreSettings
    from launchers.config import conf_dir

    conf = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    section = dict(conf["evaluate"])
    for key in ("text_threshold", "bootstrap", "interval", "plots"):
        if key in args:
            section[key] = yaml.safe_load(args[key])
    seed = yaml.safe_load(args["seed"]) if "seed" in args else conf.get("seed", 0)
    try:
        cfg = EvaluateConfig.model_validate({"seed": seed, "evaluate": section})
    except ValueError as exc:
        raise ScoreUsageError(str(exc)) from exc
    ev = cfg.evaluate
    st = ScoreSettings(
        text_threshold=ev.text_threshold, resamples=ev.bootstrap, level=ev.interval, seed=cfg.seed
    )
    return st, ev.plots


def main(args: Sequence[str], console: Console | None = None) -> int:
    from clinsynth.evaluation.docs import EvaluationInputError, read_pair
    from clinsynth.evaluation.report import evaluate

    console = console or Console()
    try:
        opts = parse_args(args)
        settings, plots = settings_from(opts)
    except ScoreUsageError as exc:
        print(f"error: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    out = Path(opts.get("out") or f"score-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        docs, unknown = read_pair(Path(opts["gold"]), Path(opts["pred"]), letters=_dev_letters(opts))
    except EvaluationInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from clinsynth.terminology import load_catalog

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if created:  # private: it holds extracted values; a folder the user named keeps its mode
        os.chmod(out, 0o700)
    extra = {"gold": str(opts["gold"]), "pred": str(opts["pred"]), "unknown_docs": unknown}
    metrics = evaluate(docs, out, settings, load_catalog(), extra=extra, plots=plots)
    print_table(metrics, console)
    missing = [d for d, s in zip(docs.ids, docs.status, strict=True) if s == "missing"]
    if missing:
        console.print(
            f"{len(missing)} gold doc(s) without a prediction, scored as empty: {_some(missing)}",
            markup=False,
        )
    if unknown:
        console.print(
            f"{len(unknown)} predicted doc(s) without gold, not scored: {_some(unknown)}", markup=False
        )
    console.print(
        f"wrote {out}/metrics.json, report.md, errors.jsonl" + (", plots/" if plots else ""), markup=False
    )
    return 0


def _some(docs: list[str]) -> str:
    return ", ".join(docs[:10]) + (" ..." if len(docs) > 10 else "")


def _dev_letters(opts: dict[str, str]) -> dict[str, str]:
    """Letter texts of dev docs ("grascco:<Name>") where the corpus copy is here (support check)."""
    from clinsynth.artifacts.predictions import DEV_PREFIX
    from clinsynth.letters.devset import DEV_LETTERS, dev_letter_text

    out = {}
    for name in DEV_LETTERS:
        text = dev_letter_text(name)
        if text:
            out[f"{DEV_PREFIX}{name}"] = text
    return out


def print_table(metrics: dict[str, Any], console: Console) -> None:
    from clinsynth.evaluation.items import CATEGORIES
    from clinsynth.evaluation.report import STUDY_F1

    for source, m in metrics["sources"].items():
        st = m["status"]
        t = Table(
            title=f"{source}: {m['documents']} documents (invalid {st['invalid']}, missing {st['missing']})"
        )
        for col in ("category", "strict F1 [95% CI]", "pigeon_compat F1", "study (published)"):
            t.add_column(col, justify="left" if col == "category" else "right")
        for c in CATEGORIES:
            if c.group != "study":
                continue
            s = m["strict"][c.name]
            pg = m["pigeon_compat"]
            p = pg.get(c.name, {}).get("f1")
            if c.name in ("encounter", "patient"):
                p = pg.get("introduction", {}).get("accuracy")  # the study's field accuracy
            ci = s["f1_ci"]
            cell = "n/a" if s["f1"] is None else f"{s['f1']:.3f}"
            if s["f1"] is not None and ci[0] is not None:
                cell += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            study = STUDY_F1.get(c.name)
            t.add_row(
                c.label, cell, "—" if p is None else f"{p:.3f}", "—" if study is None else f"{study:.2f}"
            )
        console.print(t)
