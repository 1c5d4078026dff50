"""Typed config of the export stage (conf/config.yaml `export:`)."""

from __future__ import annotations

from typing import Literal

from clinsynth.core.config import StageConfig, identity

Format = Literal["bundles", "ndjson"]
ExportedStatus = Literal["ok", "repaired", "truncated"]


class ExportSection(StageConfig):
    formats: list[Format] = identity(
        min_length=1,
        why="bundles: one transaction Bundle per document (bundles/*.json, what `source=bundles` and a "
        "FHIR server's transaction endpoint read); ndjson: the same resources in bulk-export layout "
        "(fhir_out/<Type>.ndjson, what `source=ndjson` reads)",
    )
    statuses: list[ExportedStatus] = identity(
        min_length=1,
        why="the parse statuses whose extractions are exported; `invalid` has no extraction and is "
        "always skipped (counted in the report)",
    )
    icd10gm_version: str = identity(
        min_length=4, why="Coding.version of every ICD-10-GM code (the MII Diagnose profile wants one)"
    )
    ops_version: str = identity(min_length=4, why="Coding.version of every OPS code")


class ExportConfig(StageConfig):
    export: ExportSection
