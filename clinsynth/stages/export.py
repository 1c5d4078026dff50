"""`export`: the extract stage's predictions -> validated FHIR R4 transaction Bundles in MII profiles.

Every record (one document) becomes one Bundle (`clinsynth.export.bundle` has the mapping and the
assertion table), validated with fhir.resources and clinsynth's profile checks
(`clinsynth.export.profiles`); a record that fails is reported and skipped, never fatal. Writes
bundles/*.json (ingest back with `source=bundles source.path=<stage folder>/bundles`),
fhir_out/<Type>.ndjson, validation_report.json and issues.jsonl.
"""

from __future__ import annotations

from typing import Any

from clinsynth.artifacts.predictions import read_predictions
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.export.config import ExportConfig
from clinsynth.export.run import TIMING_KEYS, export_records


@stage("export", needs=("extract",), config=ExportConfig, version=1)
def run(cfg: ExportConfig, ctx: StageContext) -> dict[str, Any]:
    """One transaction Bundle per prediction record; validation_report.json counts everything."""
    records = read_predictions(ctx.input_dir("extract"))
    report = export_records(
        records,
        ctx.stage_dir,
        cfg.export,
        progress=lambda n: ctx.progress(n, None, "records"),
    )
    ctx.logger.info(
        "export: %d records, %d exported, %d rejected, skipped %s; %d resources, %d errors %s, "
        "%d warnings, %d facts omitted; %.0f records/s",
        report["records"],
        report["exported"],
        report["rejected"],
        report["skipped"],
        report["resources_written"],
        report["errors"],
        report["errors_by_kind"],
        report["warnings"],
        report["facts_omitted"],
        report["records_per_s"] or 0,
    )
    ctx.timing(**{k: report[k] for k in TIMING_KEYS})
    keys = ("records", "exported", "rejected", "resources_written", "errors", "warnings", "facts_omitted")
    ctx.tracker.log({f"export/{k}": report[k] for k in keys})
    return {k: report[k] for k in (*keys, "records_per_s")}
