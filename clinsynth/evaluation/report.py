"""The outputs of an evaluation: metrics.json, report.md, errors.jsonl, plots/ (one writer for the
evaluate stage and `python -m launch score`).

Nothing here holds letter text: errors.jsonl lists normalised keys of gold and predicted items (the
extraction's values), never the letter. It stays in the output folder like the predictions it explains.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from clinsynth.core.atomic import atomic_open, write_json
from clinsynth.evaluation.docs import DocSet
from clinsynth.evaluation.items import ASSERTIONS, BASE, CAT_INDEX, CATEGORIES
from clinsynth.evaluation.pigeon import PIGEON_REPORT
from clinsynth.evaluation.scorer import ScoreSettings, SourceResult, score_source, status_counts

#: the study's published F1 on its own synthetic test set (Eryılmaz et al., JMIR 2026;28:e92413, n=7,500)
STUDY_F1: dict[str, float] = {
    "icd10gm": 0.84,
    "tumor": 0.99,
    "lab": 0.99,
    "medication": 0.99,
    "atc": 0.94,
    "ops": 0.63,
    "procedure_text": 0.90,
}
STUDY_LABEL = (
    "the study's published F1 (Eryılmaz et al. 2026, their synthetic test set, n=7,500; not computed here)"
)
METRICS = "metrics.json"
REPORT = "report.md"
ERRORS = "errors.jsonl"
PLOTS = "plots"


def evaluate(
    docs: DocSet,
    out_dir: Path,
    settings: ScoreSettings,
    catalog: Any,
    *,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score every source with gold separately, write all outputs to `out_dir`, return metrics.json's content.

    Documents without gold (external letters) are counted, not scored."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, SourceResult] = {}
    unscored: dict[str, Any] = {}
    for source, part in sorted(docs.by_source().items()):
        with_gold = [i for i, g in enumerate(part.gold) if g is not None]
        if len(with_gold) < len(part):
            rest = part.subset(i for i in range(len(part)) if part.gold[i] is None)
            unscored[source] = {
                "documents": len(rest),
                "status": status_counts(rest.status),
                "reason": "no gold",
            }
        if with_gold:
            results[source] = score_source(source, part.subset(with_gold), settings, catalog)
    metrics: dict[str, Any] = {
        "settings": {
            "text_threshold": settings.text_threshold,
            "bootstrap_resamples": settings.resamples,
            "interval_level": settings.level,
            "seed": settings.seed,
            "text_scorer": "rapidfuzz.fuzz.token_sort_ratio on normalised text",
        },
        "sources": {s: r.metrics for s, r in results.items()},
        "not_scored": unscored,
        "study_published_f1": {"note": STUDY_LABEL, "f1": STUDY_F1},
        **dict(extra or {}),
    }
    n_err = write_errors(out_dir / ERRORS, results.values())
    if plots:
        from clinsynth.evaluation.plots import f1_plot

        (out_dir / PLOTS).mkdir(exist_ok=True)
        for source, r in results.items():
            f1_plot(r.metrics, source, out_dir / PLOTS / f"f1_{source}.png")
    # how long scoring took goes to the caller's timing record, never into metrics.json: a rerun's
    # metrics.json compares byte for byte (launchers/manifest.py)
    metrics["error_lines"] = n_err
    write_json(out_dir / METRICS, metrics)
    with atomic_open(out_dir / REPORT, "w", encoding="utf-8") as fh:
        fh.write(render_report(metrics, plots=plots))
    return metrics


# ---- errors.jsonl
def write_errors(path: Path, results: Any) -> int:
    """One line per document and category with a missed gold item, a spurious prediction or an
    assertion confusion; level and pooled categories are left out (they repeat the base ones)."""
    base = {CAT_INDEX[c] for c in BASE}
    n = 0
    with atomic_open(path, "wb") as fh:
        for r in results:
            s = r.strict
            keys = s.keys.to_pylist()
            lines: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
            for what, mm in (("missed", s.missed), ("spurious", s.spurious)):
                for d, c, k, a, cnt in zip(
                    mm.doc.tolist(),
                    mm.cat.tolist(),
                    mm.key.tolist(),
                    mm.assertion.tolist(),
                    mm.count.tolist(),
                    strict=True,
                ):
                    if c in base:
                        item = {"key": keys[k], "assertion": ASSERTIONS[a]}
                        lines[(d, c)].setdefault(what, []).extend([item] * cnt)
            cf = s.confusions
            for d, c, k, ga, pa_, cnt in zip(
                cf.doc.tolist(),
                cf.cat.tolist(),
                cf.key.tolist(),
                cf.gold.tolist(),
                cf.pred.tolist(),
                cf.count.tolist(),
                strict=True,
            ):
                if c in base:
                    item = {"key": keys[k], "gold": ASSERTIONS[ga], "pred": ASSERTIONS[pa_], "count": cnt}
                    lines[(d, c)].setdefault("assertion", []).append(item)
            for d, c, kg, kp, score in s.fuzzy_pairs:
                if (d, c) in lines:  # context for a line that has errors anyway
                    lines[(d, c)].setdefault("fuzzy_matches", []).append(
                        {"gold": keys[kg], "pred": keys[kp], "score": round(score, 1)}
                    )
            for (d, c), body in sorted(lines.items()):
                if not ({"missed", "spurious", "assertion"} & body.keys()):
                    continue
                rec = {
                    "doc": r.docs.ids[d],
                    "source": r.source,
                    "status": r.docs.status[d],
                    "category": CATEGORIES[c].name,
                    **body,
                }
                fh.write(orjson.dumps(rec) + b"\n")
                n += 1
    return n


# ---- report.md
def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(ci: Any) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def render_report(metrics: Mapping[str, Any], *, plots: bool = True) -> str:
    st = metrics["settings"]
    out = [
        "# Extraction scores",
        "",
        "Two modes (design §6). **strict** (the headline): normalised exact match, one-to-one per document "
        "and category, assertion part of the item, invalid predictions count as empty; micro P/R/F1 over "
        "items and macro F1 over documents (documents with items in the category). A prediction that parses "
        "but breaks schema v2 is repaired (refused fields and facts dropped, listed in metrics.json's "
        "problems) and scored in both modes, as the study scores any prediction that parses. "
        "**pigeon_compat**: the "
        "study's rules (per-document sets, 4-character prefix match, recall can exceed 1, both empty = 1.0, "
        "unparseable predictions skipped, mean over documents) — to stand beside the study's table only.",
        "",
        f"Intervals: {int(st['interval_level'] * 100)} % percentile bootstrap over documents, "
        f"{st['bootstrap_resamples']} resamples, seed {st['seed']}. Procedure descriptions: "
        f"{st['text_scorer']} >= {st['text_threshold']:g}.",
        "",
        f"Right-hand column: **{STUDY_LABEL}**. Their test letters are not ours; the column is context, not "
        "a comparison on the same data.",
        "",
    ]
    failed = (metrics.get("excluded") or {}).get("failed_verification")
    if failed is not None:
        out += ["## excluded: failed verification", ""]
        if failed.get("include_failed"):
            out += ["None: evaluate.include_failed=true scores every letter whatever its verdict.", ""]
        else:
            out += [
                f"{failed['documents']} synthetic letter(s) failed verification and are not scored "
                "(evaluate.include_failed=false): their gold does not match their text. Spec ids in "
                "metrics.json (excluded.failed_verification).",
                "",
            ]
    for source, m in metrics["sources"].items():
        out += _source_section(source, m, plots)
    for source, m in metrics.get("not_scored", {}).items():
        out += [
            f"## {source}: not scored",
            "",
            f"{m['documents']} document(s), {m['reason']}; statuses: "
            + ", ".join(f"{k} {v}" for k, v in m["status"].items() if isinstance(v, int) and v),
            "",
        ]
    if metrics.get("unknown_docs"):
        out += [f"Predicted documents without gold (not scored): {len(metrics['unknown_docs'])}", ""]
    return "\n".join(out) + "\n"


def _source_section(source: str, m: Mapping[str, Any], plots: bool) -> list[str]:
    s, pg, stc = m["strict"], m["pigeon_compat"], m["status"]
    title = {"synthetic": "synthetic test letters", "dev": "development letters (GraSCCo, hand-made gold)"}
    out = [
        f"## {source}: {title.get(source, source)} — {m['documents']} documents",
        "",
        "Prediction status: "
        + ", ".join(f"{k} {stc[k]}" for k in ("ok", "repaired", "truncated", "invalid", "missing"))
        + f"; schema-valid rate {_f(stc['schema_valid_rate'])}.",
        "",
    ]
    if not s:
        return out
    if m["documents"] < 30:
        out += [f"Only {m['documents']} documents: intervals are wide and the bootstrap is rough.", ""]
    out += [
        "| category | strict P | strict R | strict F1 [95% CI] | macro F1 "
        "| pigeon_compat F1 [95% CI] | study (published) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CATEGORIES:
        if c.group != "study":
            continue
        r = s[c.name]
        pc_ = pg.get(c.name) if c.name in PIGEON_REPORT else None
        pigeon_cell = f"{_f(pc_['f1'])}{_ci(pc_['f1_ci'])}" if pc_ else "—"
        if c.name in ("encounter", "patient") and "introduction" in pg:
            i = pg["introduction"]
            pigeon_cell = f"{_f(i['accuracy'])} (field accuracy, both)"
        out.append(
            f"| {c.label} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['f1'])}{_ci(r['f1_ci'])} "
            f"| {_f(r['macro_f1'])} | {pigeon_cell} | {STUDY_F1.get(c.name, '—')} |"
        )
    out += [
        "",
        "Schema v2 categories and tumour parts (strict; the tumour row above pools the parts):",
        "",
        "| category | gold | pred | P | R | F1 [95% CI] | macro F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CATEGORIES:
        if c.group in ("schema", "tumour"):
            r = s[c.name]
            out.append(
                f"| {c.label} | {r['gold']} | {r['pred']} | {_f(r['precision'])} | {_f(r['recall'])} "
                f"| {_f(r['f1'])}{_ci(r['f1_ci'])} | {_f(r['macro_f1'])} |"
            )
    out += [
        "",
        "Hierarchical levels:",
        "",
        "| level | strict F1 [95% CI] | pigeon_compat F1 [95% CI] |",
        "|---|---:|---:|",
    ]
    pairs = {"icd10gm@3": "icd10gm@3", "ops@4": None, "ops@5": None}
    for c in CATEGORIES:
        if c.group == "level":
            r = s[c.name]
            p_name = pairs.get(c.name)
            pcell = f"{_f(pg[p_name]['f1'])}{_ci(pg[p_name]['f1_ci'])}" if p_name and p_name in pg else "—"
            out.append(f"| {c.label} | {_f(r['f1'])}{_ci(r['f1_ci'])} | {pcell} |")
    for name, label in (
        ("icd10gm@1", "ICD-10-GM, 1 character (study)"),
        ("ops_category", "OPS category (study)"),
    ):
        if name in pg:
            out.append(f"| {label} | — | {_f(pg[name]['f1'])}{_ci(pg[name]['f1_ci'])} |")
    conf = m["assertion_confusion"]
    A = conf["assertions"]
    out += [
        "",
        "Assertion confusion over matched facts (rows: gold, columns: predicted; one category per fact "
        "kind: diagnoses, procedures, medications, labs, vitals, radiotherapy, risk factors):",
        "",
        "| gold \\ predicted | " + " | ".join(A) + " |",
        "|---|" + "---:|" * len(A),
    ]
    for a, row in zip(A, conf["all_facts"], strict=True):
        out.append(f"| {a} | " + " | ".join(str(v) for v in row) + " |")
    out += ["", f"Negated gold facts extracted as present: {conf['negated_as_present']}.", ""]
    codes = m["codes"]
    out += [
        f"Predicted codes: {codes['codes']}; not in the catalogue: {codes['not_in_catalogue']} "
        f"(rate {_f(codes['not_in_catalogue_rate'])}; the catalogue is clinsynth's curated subset, "
        f"so a correct code outside it counts too); not supported by the letter: {codes['not_supported']} "
        f"(rate {_f(codes['not_supported_rate'])})"
        + (f" — {codes['reason']}" if codes.get("reason") else "")
        + ".",
        "",
        f"pigeon_compat: {pg.get('_documents_scored', 0)} documents scored, "
        f"{pg.get('_documents_skipped', 0)} skipped (prediction invalid or missing), as the study did.",
        "",
    ]
    if plots:
        out += [f"![F1 per category, {source}](plots/f1_{source}.png)", ""]
    return out
