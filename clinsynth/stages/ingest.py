"""`ingest`: any FHIR source -> the typed record set (Parquet) + quarantine + report."""

from __future__ import annotations

import os
from typing import Any

from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.ingest.pipeline import Options, default_as_of, ingest
from clinsynth.ingest.sources import open_source


def _needs(plain: dict[str, Any]) -> tuple[str, ...]:
    return ("cohort",) if (plain.get("source") or {}).get("kind", "synthetic") == "synthetic" else ()


@stage("ingest", needs=_needs, reads=("source", "ingest"), version=1)
def run(cfg: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Validate and flatten every resource; bad ones go to quarantine.ndjson with file, line and reason."""
    src, opts = cfg["source"], cfg.get("ingest") or {}
    kind = src.get("kind", "synthetic")
    items = open_source(kind, src, ctx.inputs.get("cohort"))
    workers = int(opts.get("workers") or len(os.sched_getaffinity(0)))
    options = Options(
        as_of=str(opts.get("as_of") or default_as_of()),
        extra_code_systems=frozenset(opts.get("extra_code_systems") or ()),
        strict=bool(opts.get("strict", False)),
    )
    ctx.logger.info("ingest from %s source with %d worker(s)", kind, workers)
    report = ingest(
        items,
        ctx.stage_dir,
        options,
        workers=workers,
        chunk=int(opts.get("chunk", 10000)),
        buckets=int(opts.get("buckets", 16)),
        progress=lambda n: ctx.logger.info("%d resources", n),
    )
    ctx.logger.info(
        "read %d, ok %d, quarantined %d %s, ignored %d; %.0f resources/s",
        report["resources_read"],
        report["resources_ok"],
        report["resources_quarantined"],
        report["quarantined_by_reason"],
        report["resources_ignored"],
        report["resources_per_s"] or 0,
    )
    ctx.tracker.log({f"ingest/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
    return {k: v for k, v in report.items() if not isinstance(v, dict)}
