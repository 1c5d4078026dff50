"""What one ingest run is asked to do, and how a strict run stops.

Kept apart from the pipeline so that the worker-side modules (`process`, `worker`) can
read the options without importing the orchestration that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

#: every quarantine entry carries one of these
REASONS = (
    "extraction_failed",
    "malformed_json",
    "invalid_resource",
    "dangling_reference",
    "unknown_code_system",
    "impossible_date",
    "duplicate_id",
    "duplicate_key",  # one JSON object names a key twice (see fhir/jsonio.py)
    "too_deep",  # objects and arrays nested beyond jsonio.MAX_DEPTH
    "internal_error",  # an exception ingest did not foresee; the detail names step and class
    "unreadable",  # a block of a file that failed to read after the scan (vanished, I/O error)
)


@dataclass
class Options:
    as_of: str  # no fact may lie after this day (ISO date)
    min_year: int = 1890
    extra_code_systems: frozenset[str] = frozenset()
    strict: bool = False
    plans: bool = True  # extraction plans for repeating shapes (see ingest/plans.py)
    allow_empty: bool = False  # a source with no resources at all is an error unless this is set


class IngestError(RuntimeError):
    """strict=true: the first bad record stops the run; the message says where and why."""

    @classmethod
    def at(cls, entry: dict[str, Any]) -> IngestError:
        """The error for one quarantine entry: file and line (or location), reason, detail."""
        where = (
            f"{entry['source']}:{entry['line']}"
            if entry.get("line")
            else f"{entry['source']} {entry.get('location') or ''}".strip()
        )
        return cls(
            f"{where}: {entry['reason']}: {entry['detail']} (strict=true stops at the first bad record; "
            "set ingest.strict=false to quarantine it and go on)"
        )


def default_as_of() -> str:
    """Today: a run without a reference day accepts nothing that lies in the future."""
    return date.today().isoformat()
