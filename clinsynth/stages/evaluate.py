"""`evaluate`: the extract stage's predictions against gold, both scoring modes (design §6).

Gold: synthetic test letters -> the sample stage's spec gold (doc = spec_id; every test-split spec is
expected, a test letter without a prediction is scored as an empty prediction and listed). A synthetic
letter that failed verification (the verify stage's verdict) is left out unless evaluate.include_failed:
its gold does not match its text; such letters are counted in metrics.json and report.md ("excluded:
failed verification"). Development
letters ("grascco:<Name>") -> the hand-made gold of clinsynth.letters.devset; external letters have no
gold: counted, not scored. Synthetic and development letters are reported separately. With
extract.ground the predictions as extracted (ungrounded/) are scored too, into ungrounded/.

Writes metrics.json, report.md, errors.jsonl, plots/ (clinsynth.evaluation.report). The tracker gets
a summary and a per-category metrics table, numbers only; the errors table (extracted values, never
letter text) only with tracking.log_samples (clinsynth.evaluation.tables).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from clinsynth.artifacts.letters import letter_shards, read_letters
from clinsynth.artifacts.predictions import DEV_PREFIX, read_predictions
from clinsynth.artifacts.specs import check_specs, iter_specs
from clinsynth.artifacts.verdicts import read_verdicts, verdicts_path
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.evaluation.config import EvaluateConfig
from clinsynth.evaluation.docs import DocSet, EvaluationInputError, gold_extraction, pred_extraction
from clinsynth.evaluation.items import CATEGORIES
from clinsynth.evaluation.pigeon import PIGEON_REPORT
from clinsynth.evaluation.report import ERRORS, evaluate
from clinsynth.evaluation.scorer import ScoreSettings
from clinsynth.evaluation.tables import log_tables

UNGROUNDED = "ungrounded"


def _needs(plain: dict[str, Any]) -> tuple[str, ...]:
    """The test letters' gold and text come from sample and generate, as for extract; their verdicts
    from verify (unless evaluate.include_failed: then every letter is scored)."""
    ex = plain.get("extract") or {}
    if not ex.get("test_letters", True):
        return ("extract",)
    if (plain.get("evaluate") or {}).get("include_failed", False):
        return ("extract", "sample", "generate")
    return ("extract", "sample", "generate", "verify")


def _requires(cfg: EvaluateConfig) -> list[tuple[str, str]]:
    return [("matplotlib", "train")] if cfg.evaluate.plots else []


@stage("evaluate", needs=_needs, config=EvaluateConfig, version=1, requires=_requires)
def run(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    """metrics.json, report.md, errors.jsonl, plots/ (and ungrounded/ with extract.ground)."""
    from clinsynth.terminology import load_catalog

    t0 = time.perf_counter()
    ev = cfg.evaluate
    settings = ScoreSettings(
        text_threshold=ev.text_threshold, resamples=ev.bootstrap, level=ev.interval, seed=cfg.seed
    )
    extract_dir = ctx.input_dir("extract")
    sample_dir = ctx.inputs.get("sample")
    gen_dir = ctx.inputs.get("generate")
    records = [_slim(r) for r in read_predictions(extract_dir)]
    predicted = {r["doc"] for r in records if r["source"] == "synthetic"}
    failed = _failed_verification(ctx.inputs.get("verify"), sample_dir, predicted, ev.include_failed)
    records = [r for r in records if r["doc"] not in failed]
    gold = _synthetic_gold(sample_dir, records, failed)
    letters = _letters(gen_dir, {r["doc"] for r in records} | set(gold or ()))
    catalog = load_catalog()

    excluded = {"failed_verification": _excluded(failed, ev.include_failed)}
    docs = build_docs(records, gold, letters, where=str(extract_dir))
    metrics = evaluate(docs, ctx.stage_dir, settings, catalog, plots=ev.plots, extra={"excluded": excluded})
    ungrounded = [r for r in _ungrounded(extract_dir) if r["doc"] not in failed]
    if ungrounded:
        udocs = build_docs(ungrounded, gold, letters, where=f"{extract_dir}/{UNGROUNDED}")
        umetrics = evaluate(
            udocs, ctx.stage_dir / UNGROUNDED, settings, catalog, plots=ev.plots, extra={"excluded": excluded}
        )
        _grounding_table(ctx.stage_dir, metrics, umetrics)
    summary = tracker_summary(metrics)
    ctx.tracker.summary(summary)
    log_tables(ctx.tracker, metrics, ctx.stage_dir / ERRORS, ctx.logger)
    for source, m in metrics["sources"].items():
        icd = m["strict"].get("icd10gm", {})
        ctx.logger.info(
            "evaluate %s: %d documents, strict ICD F1 %s, schema-valid rate %s",
            source,
            m["documents"],
            icd.get("f1"),
            m["status"]["schema_valid_rate"],
        )
    ctx.timing(seconds=round(time.perf_counter() - t0, 3))
    return {
        "documents": len(docs),
        "sources": {s: m["documents"] for s, m in metrics["sources"].items()},
        "not_scored": {s: m["documents"] for s, m in metrics["not_scored"].items()},
        "excluded_failed_verification": len(failed),
        "ungrounded_scored": bool(ungrounded),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _slim(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without the raw model text (the largest field; scoring does not read it)."""
    rec.pop("raw", None)
    return rec


def _ungrounded(extract_dir: Path) -> list[dict[str, Any]]:
    from clinsynth.extraction.store import read_ungrounded

    return [_slim(r) for r in read_ungrounded(extract_dir)]


def _letters(gen_dir: Path | None, docs: set[str]) -> dict[str, str]:
    """doc -> letter text of the wanted docs, for the support check: test letters from the generate
    stage, dev letters from the corpus copy where present (absent: the check reports why)."""
    from clinsynth.letters.devset import dev_letter_text

    out: dict[str, str] = {}
    if gen_dir is not None:
        for _shard, _n, path in letter_shards(gen_dir, stage="evaluate"):
            for letter in read_letters(path):
                sid = letter.get("spec_id")
                if sid in docs and letter.get("text"):
                    out[sid] = str(letter["text"])
    for doc in docs:
        if doc.startswith(DEV_PREFIX):
            text = dev_letter_text(doc[len(DEV_PREFIX) :])
            if text:
                out[doc] = text
    return out


def _failed_verification(
    verify_dir: Path | None, sample_dir: Path | None, predicted: set[str], include_failed: bool
) -> set[str]:
    """Test letters (and any other predicted spec) whose verification failed: left out of scoring.

    Every test-split spec needs a verdict: a missing one means the verify and sample folders come from
    different runs, which would let an unverified letter in silently."""
    if include_failed or sample_dir is None:
        return set()
    if verify_dir is None:
        raise EvaluationInputError(
            "evaluate: no verify stage output to read verdicts from; add verify to the run "
            "or set evaluate.include_failed=true to score every test letter"
        )
    verdicts = {v["spec_id"]: bool(v["ok"]) for v in read_verdicts(verify_dir)}
    tests = [r["spec_id"] for r in iter_specs(sample_dir, ["spec_id", "split"]) if r["split"] == "test"]
    lacking = [sid for sid in tests if sid not in verdicts]
    if lacking:
        raise EvaluationInputError(
            f"{verdicts_path(verify_dir)}: no verdict for {len(lacking)} test letter(s) "
            f"(first: {lacking[0]!r}); the verify and sample folders come from different runs: "
            "delete the verify stage folder and relaunch"
        )
    lacking = sorted(predicted - verdicts.keys())
    if lacking:
        raise EvaluationInputError(
            f"{verdicts_path(verify_dir)}: no verdict for predicted spec(s) {lacking[:5]}: the predictions "
            "and the verify folder come from different runs: relaunch so extract reruns"
        )
    return {sid for sid in {*tests, *predicted} if not verdicts[sid]}


def _excluded(failed: set[str], include_failed: bool) -> dict[str, Any]:
    """metrics.json's account of the letters left out for failing verification (spec ids, no text)."""
    if include_failed:
        return {"documents": 0, "include_failed": True, "note": "evaluate.include_failed: all scored"}
    return {"documents": len(failed), "include_failed": False, "docs": sorted(failed)}


def _synthetic_gold(
    sample_dir: Path | None, records: list[dict[str, Any]], failed: set[str]
) -> dict[str, dict[str, Any]] | None:
    """spec_id -> gold of every test-split spec and of every other spec that was predicted, less
    those that failed verification."""
    if sample_dir is None:
        return None
    check_specs(sample_dir, stage="evaluate")
    predicted = {r["doc"] for r in records if r["source"] == "synthetic"}
    out: dict[str, dict[str, Any]] = {}
    for row in iter_specs(sample_dir, ["spec_id", "split", "gold"]):
        sid = row["spec_id"]
        if sid in failed:
            continue
        if row["split"] == "test" or sid in predicted:
            out[sid] = gold_extraction(orjson.loads(row["gold"]), f"{sample_dir} spec {sid}")
    return out


def build_docs(
    records: list[dict[str, Any]],
    synthetic_gold: dict[str, dict[str, Any]] | None,
    letters: dict[str, str],
    *,
    where: str,
    dev_gold_dir: Path | None = None,
) -> DocSet:
    """The document set: every prediction record with its gold (or none: external), plus the test letters
    that have no prediction (status missing)."""
    from clinsynth.letters.devset import GOLD_DIR, load_gold

    docs = DocSet()
    seen: set[str] = set()
    for rec in records:
        doc, source = rec["doc"], rec["source"]
        if doc in seen:
            raise EvaluationInputError(
                f"{where}: doc {doc!r} predicted twice; delete the extract stage folder"
            )
        seen.add(doc)
        extraction, status = pred_extraction(rec, f"{where} doc {doc}", docs.problems)
        gold: dict[str, Any] | None = None
        if source == "synthetic":
            if synthetic_gold is None or doc not in synthetic_gold:
                raise EvaluationInputError(
                    f"{where}: synthetic doc {doc!r} is not a spec of the sample stage this run reads; "
                    "the predictions come from another run: relaunch so extract reruns"
                )
            gold = synthetic_gold[doc]
        elif source == "dev":
            name = doc[len(DEV_PREFIX) :]
            gold = load_gold(name, dev_gold_dir or GOLD_DIR).model_dump(mode="json", exclude_none=True)
        docs.add(doc, source, gold, extraction, status, letters.get(doc))
    for sid, g in (synthetic_gold or {}).items():
        if sid not in seen:
            docs.problems[sid] = f"{where}: no prediction for test letter {sid!r}"
            docs.add(sid, "synthetic", g, None, "missing", letters.get(sid))
    return docs


def tracker_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers only: F1 (and P/R for strict) per source, mode and category; statuses; code rates."""
    out: dict[str, float] = {}
    for source, m in metrics["sources"].items():
        p = f"evaluate/{source}"
        out[f"{p}/documents"] = m["documents"]
        for c in CATEGORIES:
            r = m["strict"].get(c.name) or {}
            for k in ("precision", "recall", "f1", "macro_f1"):
                if r.get(k) is not None:
                    out[f"{p}/strict/{c.name}/{k}"] = r[k]
        for name in PIGEON_REPORT:
            r = m["pigeon_compat"].get(name) or {}
            v = r.get("f1", r.get("accuracy"))
            if v is not None:
                out[f"{p}/pigeon_compat/{name}/f1"] = v
        st = m["status"]
        for k in ("schema_valid_rate", "ok_rate"):
            if st.get(k) is not None:
                out[f"{p}/{k}"] = st[k]
        for k in ("not_in_catalogue_rate", "not_supported_rate"):
            if m["codes"].get(k) is not None:
                out[f"{p}/{k}"] = m["codes"][k]
        out[f"{p}/negated_as_present"] = m["assertion_confusion"]["negated_as_present"]
    failed = (metrics.get("excluded") or {}).get("failed_verification")
    if failed is not None:
        out["evaluate/synthetic/excluded_failed_verification"] = failed["documents"]
    return out


def _grounding_table(stage_dir: Path, grounded: dict[str, Any], ungrounded: dict[str, Any]) -> None:
    """Strict F1 of the code categories with and without grounding, appended to report.md and
    metrics.json (the full ungrounded outputs are in ungrounded/)."""
    from clinsynth.core.atomic import atomic_open, write_json

    cats = ("icd10gm", "atc", "ops", "icd10gm@3", "lab_loinc", "morphology")
    table: dict[str, Any] = {}
    lines = ["", "## With and without grounding (strict micro F1)", "",
             "| source | category | as extracted | grounded |", "|---|---|---:|---:|"]  # fmt: skip
    for source, m in grounded["sources"].items():
        u = ungrounded["sources"].get(source)
        if u is None:
            continue
        for c in cats:
            a, b = u["strict"][c]["f1"], m["strict"][c]["f1"]
            table.setdefault(source, {})[c] = {"ungrounded": a, "grounded": b}
            lines.append(f"| {source} | {c} | {_fmt(a)} | {_fmt(b)} |")
    grounded["grounding"] = {"ungrounded_outputs": UNGROUNDED, "strict_f1": table}
    write_json(stage_dir / "metrics.json", grounded)
    report = (stage_dir / "report.md").read_text(encoding="utf-8")
    with atomic_open(stage_dir / "report.md", "w", encoding="utf-8") as fh:
        fh.write(report + "\n".join(lines) + "\n")


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
