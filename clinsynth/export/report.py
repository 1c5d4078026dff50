"""validation_report.json: every record, resource and issue of an export, counted.

Per record the report knows whether it was exported, skipped (parse status invalid, a status
not in export.statuses, an extraction that is not schema v2, a duplicate document id) or
rejected (its Bundle failed validation: every error is listed with the resource, element and
rule). Counts: resources by type and profile (written, and all that were validated), errors
and warnings by kind, omitted facts by list and reason. `issues.jsonl` beside it holds one
line per record with anything to say (errors, warnings, omissions), for error analysis.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinsynth.export.bundle import Built
from clinsynth.export.profiles import Issue

REPORT = "validation_report.json"
ISSUES = "issues.jsonl"
BUNDLES = "bundles"
NDJSON = "fhir_out"
#: records listed by name in the report (all are in issues.jsonl)
MAX_LISTED = 200


def report_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / REPORT


def bundles_dir(stage_dir: Path) -> Path:
    """One transaction Bundle per document: what `source=bundles source.path=...` ingests."""
    return Path(stage_dir) / BUNDLES


def ndjson_dir(stage_dir: Path) -> Path:
    """The same resources in bulk-export layout (<Type>.ndjson): what `source=ndjson` ingests."""
    return Path(stage_dir) / NDJSON


def _profile_of(res: dict[str, Any]) -> str:
    profiles = (res.get("meta") or {}).get("profile") or []
    return (
        f"{res['resourceType']} {profiles[0].rsplit('/', 1)[-1]}"
        if profiles
        else f"{res['resourceType']} (none)"
    )


@dataclass
class ExportReport:
    records: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_docs: dict[str, list[str]] = field(default_factory=dict)
    exported: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    written_by_type: Counter[str] = field(default_factory=Counter)
    written_by_profile: Counter[str] = field(default_factory=Counter)
    validated_by_type: Counter[str] = field(default_factory=Counter)
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    warnings_by_kind: Counter[str] = field(default_factory=Counter)
    omitted: Counter[str] = field(default_factory=Counter)
    omitted_by_list: Counter[str] = field(default_factory=Counter)
    records_with_warnings: int = 0
    records_with_omissions: int = 0

    def skip(self, doc: str, why: str) -> None:
        self.skipped[why] += 1
        listed = self.skipped_docs.setdefault(why, [])
        if len(listed) < MAX_LISTED:
            listed.append(doc)

    def add(self, built: Built, issues: list[Issue]) -> dict[str, Any] | None:
        """Count one validated Bundle; returns its issues.jsonl line (None when there is nothing to say)."""
        errors = [i for i in issues if i.severity == "error"]
        warnings = [i for i in issues if i.severity == "warning"]
        resources = list(built.resources())
        self.validated_by_type.update(r["resourceType"] for r in resources)
        self.errors_by_kind.update(i.kind for i in errors)
        self.warnings_by_kind.update(i.kind for i in warnings)
        self.warnings_by_kind.update(n.kind for n in built.notes)
        self.omitted.update(f"{o.kind}: {o.reason}" for o in built.omitted)
        self.omitted_by_list.update(o.kind for o in built.omitted)
        self.records_with_warnings += bool(warnings or built.notes)
        self.records_with_omissions += bool(built.omitted)
        if errors:
            entry = {"doc": built.doc, "errors": [i.as_dict() for i in errors]}
            if len(self.rejected) < MAX_LISTED:
                self.rejected.append(entry)
        else:
            self.exported += 1
            self.written_by_type.update(r["resourceType"] for r in resources)
            self.written_by_profile.update(_profile_of(r) for r in resources)
        if not (issues or built.notes or built.omitted):
            return None
        return {
            "doc": built.doc,
            "exported": not errors,
            "errors": [i.as_dict() for i in errors],
            "warnings": [i.as_dict() for i in warnings]
            + [
                {"kind": n.kind, "severity": "warning", "resource": n.resource, "message": n.message}
                for n in built.notes
            ],
            "omitted": [{"list": o.kind, "index": o.index, "reason": o.reason} for o in built.omitted],
        }

    def as_dict(self, seconds: float, formats: list[str]) -> dict[str, Any]:
        rejected = self.records - self.exported - sum(self.skipped.values())
        return {
            "records": self.records,
            "by_status": dict(sorted(self.by_status.items())),
            "exported": self.exported,
            "rejected": rejected,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_docs": self.skipped_docs,
            "rejected_records": self.rejected,
            "resources_written": sum(self.written_by_type.values()),
            "resources_written_by_type": dict(sorted(self.written_by_type.items())),
            "resources_written_by_profile": dict(sorted(self.written_by_profile.items())),
            "resources_validated_by_type": dict(sorted(self.validated_by_type.items())),
            "errors": sum(self.errors_by_kind.values()),
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "warnings": sum(self.warnings_by_kind.values()),
            "warnings_by_kind": dict(sorted(self.warnings_by_kind.items())),
            "records_with_warnings": self.records_with_warnings,
            "facts_omitted": sum(self.omitted.values()),
            "facts_omitted_by_list": dict(sorted(self.omitted_by_list.items())),
            "facts_omitted_by_reason": dict(self.omitted.most_common()),
            "records_with_omissions": self.records_with_omissions,
            "formats": formats,
            "issues_file": ISSUES,
            "seconds": round(seconds, 3),
            "records_per_s": round(self.records / seconds, 1) if seconds else None,
        }
