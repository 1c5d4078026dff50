"""Per-category F1 with bootstrap intervals, one PNG per source (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clinsynth.core.atomic import atomic_path
from clinsynth.evaluation.items import CATEGORIES


def f1_plot(metrics: Mapping[str, Any], source: str, path: Path) -> None:
    """Strict micro F1 with its interval for every category that has items; pigeon_compat F1 beside
    the categories the study reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strict, pg = metrics["strict"], metrics["pigeon_compat"]
    rows = [c for c in CATEGORIES if strict[c.name]["f1"] is not None]
    labels = [f"{c.label}" for c in rows]
    f1 = [strict[c.name]["f1"] for c in rows]
    lo = [
        f - (strict[c.name]["f1_ci"][0] if strict[c.name]["f1_ci"][0] is not None else f)
        for c, f in zip(rows, f1, strict=True)
    ]
    hi = [
        (strict[c.name]["f1_ci"][1] if strict[c.name]["f1_ci"][1] is not None else f) - f
        for c, f in zip(rows, f1, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.6))
    y = list(range(len(rows)))
    ax.barh(
        y, f1, xerr=[lo, hi], color="#4477aa", ecolor="#222222", capsize=2, label="strict micro F1 (95% CI)"
    )
    py = [
        (i, pg[c.name]["f1"]) for i, c in enumerate(rows) if c.name in pg and pg[c.name].get("f1") is not None
    ]
    if py:
        ax.plot([v for _, v in py], [i for i, _ in py], "o", color="#ee6677", label="pigeon_compat F1")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, *(v for _, v in py)) if py else 1.0)
    ax.set_xlabel("F1")
    ax.set_title(f"{source}: {metrics['documents']} documents", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
