"""Score one document set in both modes: strict (micro + document-macro, bootstrap intervals) and
pigeon_compat (mean over documents, bootstrap intervals), plus statuses, assertion confusion and the
code checks. The numbers come out as a JSON-able dict (NaN -> null)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from clinsynth.evaluation import pigeon, strict
from clinsynth.evaluation.bootstrap import mean_intervals, micro_intervals, resample_weights
from clinsynth.evaluation.docs import DOC_STATUSES, DocSet
from clinsynth.evaluation.items import (
    ASSERTIONS,
    BASE,
    CAT_INDEX,
    CATEGORIES,
    intro_values,
    pigeon_sets,
    strict_items,
    to_arrow,
)
from clinsynth.evaluation.support import code_checks

#: one category per fact kind (a fact is in several categories): the "all facts" confusion sums these
FACT_CATEGORIES = ("icd10gm", "ops", "medication", "lab", "vital", "radiotherapy", "risk_factor")


@dataclass(frozen=True)
class ScoreSettings:
    text_threshold: float = 85.0
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0


@dataclass
class SourceResult:
    source: str
    docs: DocSet
    strict: strict.StrictResult
    pigeon: pigeon.PigeonResult
    metrics: dict[str, Any]


def _num(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def score_both(docs: DocSet, settings: ScoreSettings) -> tuple[strict.StrictResult, pigeon.PigeonResult]:
    """The two modes' per-document results (no intervals): what the benchmark times."""
    n = len(docs)
    gold = to_arrow(docs.gold)
    pred = to_arrow(docs.pred)
    s = strict.match(strict_items(gold), strict_items(pred), n, text_threshold=settings.text_threshold)
    scored = np.array([st not in ("invalid", "missing") for st in docs.status], dtype=bool)
    p = pigeon.match(
        pigeon_sets(gold, gold=True),
        pigeon_sets(pred, gold=False),
        scored,
        intro_values(gold),
        intro_values(pred),
    )
    return s, p


def score_source(source: str, docs: DocSet, settings: ScoreSettings, catalog: Any) -> SourceResult:
    """Both modes with intervals, for documents that all have gold."""
    if any(g is None for g in docs.gold):
        raise ValueError(f"source {source!r}: every document scored needs gold")
    n = len(docs)
    s, p = score_both(docs, settings)
    w = resample_weights(n, settings.resamples, settings.seed) if n else np.zeros((0, 0), np.float32)
    metrics: dict[str, Any] = {
        "documents": n,
        "status": status_counts(docs.status),
        "strict": _strict_metrics(s, w, settings) if n else {},
        "pigeon_compat": _pigeon_metrics(p, w, settings) if n else {},
        "assertion_confusion": _confusion(s),
        "codes": code_checks(docs.pred, docs.letters, catalog),
        "problems": dict(sorted(docs.problems.items())),
    }
    return SourceResult(source, docs, s, p, metrics)


def status_counts(status: list[str]) -> dict[str, Any]:
    c = Counter(status)
    n = len(status)
    out: dict[str, Any] = {k: c.get(k, 0) for k in DOC_STATUSES}
    valid = n - out["invalid"] - out["missing"]
    out["schema_valid_rate"] = valid / n if n else None
    out["ok_rate"] = out["ok"] / n if n else None
    return out


def _strict_metrics(s: strict.StrictResult, w: np.ndarray, st: ScoreSettings) -> dict[str, Any]:
    tp, fp, fn = s.tp.sum(axis=0), s.fp.sum(axis=0), s.fn.sum(axis=0)
    p, r, f1 = strict.prf(tp, fp, fn)
    ci = micro_intervals(s.tp, s.fp, s.fn, w, st.level)
    _, _, doc_f1 = strict.prf(s.tp, s.fp, s.fn)
    has = (s.tp + s.fp + s.fn) > 0
    with np.errstate(invalid="ignore"):
        macro = np.where(has, doc_f1, 0).sum(axis=0) / has.sum(axis=0)
    macro_lo, macro_hi = mean_intervals(np.nan_to_num(doc_f1), has, w, st.level)
    out: dict[str, Any] = {}
    for j, cat in enumerate(CATEGORIES):
        out[cat.name] = {
            "label": cat.label,
            "group": cat.group,
            "gold": int(tp[j] + fn[j]),
            "pred": int(tp[j] + fp[j]),
            "tp": int(tp[j]),
            "fp": int(fp[j]),
            "fn": int(fn[j]),
            "precision": _num(p[j]),
            "recall": _num(r[j]),
            "f1": _num(f1[j]),
            "precision_ci": [_num(ci["p"][0][j]), _num(ci["p"][1][j])],
            "recall_ci": [_num(ci["r"][0][j]), _num(ci["r"][1][j])],
            "f1_ci": [_num(ci["f1"][0][j]), _num(ci["f1"][1][j])],
            "macro_f1": _num(macro[j]),
            "macro_f1_ci": [_num(macro_lo[j]), _num(macro_hi[j])],
            "macro_docs": int(has[:, j].sum()),
        }
    return out


def _pigeon_metrics(p: pigeon.PigeonResult, w: np.ndarray, st: ScoreSettings) -> dict[str, Any]:
    names = pigeon.PIGEON_REPORT
    valid = np.repeat(p.scored[:, None], len(names), axis=1)
    out: dict[str, Any] = {
        "_documents_scored": int(p.scored.sum()),
        "_documents_skipped": int((~p.scored).sum()),
    }
    per = {
        m: np.stack([p.category(c, m) if c != "introduction" else p.intro for c in names], axis=1)
        for m in ("p", "r", "f1")
    }
    lo, hi = mean_intervals(per["f1"], valid, w, st.level)
    k = int(p.scored.sum())
    for j, name in enumerate(names):
        mean = {m: (float(per[m][p.scored, j].mean()) if k else math.nan) for m in per}
        out[name] = {
            "precision": _num(mean["p"]),
            "recall": _num(mean["r"]),
            "f1": _num(mean["f1"]),
            "f1_ci": [_num(lo[j]), _num(hi[j])],
        }
        if name == "introduction":
            out[name] = {"accuracy": out[name]["f1"], "accuracy_ci": out[name]["f1_ci"]}
    return out


def _confusion(s: strict.StrictResult) -> dict[str, Any]:
    out: dict[str, Any] = {"assertions": list(ASSERTIONS), "rows": "gold", "columns": "predicted"}
    total = np.zeros((len(ASSERTIONS), len(ASSERTIONS)), dtype=np.int64)
    per: dict[str, Any] = {}
    for name in (*BASE, "tumor"):
        m = s.confusion[CAT_INDEX[name]]
        if m.sum():
            per[name] = m.tolist()
    for name in FACT_CATEGORIES:
        total += s.confusion[CAT_INDEX[name]]
    out["all_facts"] = total.tolist()
    out["by_category"] = per
    out["negated_as_present"] = int(total[ASSERTIONS.index("negated"), ASSERTIONS.index("present")])
    return out
