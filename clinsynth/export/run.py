"""Prediction records -> validated Bundles on disk + validation_report.json + issues.jsonl.

Each record is built, validated (fhir.resources and the profile checks) and written only when
it has no error; a record that fails is reported with its errors and skipped, the run goes on.
Bundles go to bundles/<doc>-<hash>.json (each written atomically), the NDJSON layout to
fhir_out/<Type>.ndjson (each file written whole, atomically, at the end of the run), with
references rewritten from `urn:uuid:<id>` to `<Type>/<id>`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from clinsynth.core.atomic import atomic_open, write_bytes, write_json
from clinsynth.export.bundle import Built, build_bundle, bundle_file_name
from clinsynth.export.config import ExportSection
from clinsynth.export.profiles import BundleValidator, Issue
from clinsynth.export.report import ISSUES, ExportReport, bundles_dir, ndjson_dir, report_path
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import Catalog, load_catalog

PROGRESS_EVERY = 1000


def _relative(value: Any, names: dict[str, str]) -> Any:
    """A copy whose `reference` values name `Type/id` instead of the Bundle's `urn:uuid:` names."""
    if isinstance(value, dict):
        return {
            k: names.get(v, v) if k == "reference" and isinstance(v, str) else _relative(v, names)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_relative(v, names) for v in value]
    return value


def ndjson_lines(bundle: dict[str, Any]) -> Iterable[tuple[str, bytes]]:
    """(resource type, NDJSON line) of every entry, references made relative."""
    names = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    for e in bundle["entry"]:
        res = _relative(e["resource"], names)
        yield res["resourceType"], orjson.dumps(res) + b"\n"


#: keys of the returned report that are timings, left out of validation_report.json
TIMING_KEYS = ("seconds", "records_per_s")


def export_records(
    records: Iterable[dict[str, Any]],
    out_dir: Path,
    cfg: ExportSection,
    *,
    catalog: Catalog | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Export every record of the predictions format (`clinsynth.artifacts.predictions`)."""
    catalog = catalog or load_catalog()
    validator = BundleValidator(catalog)
    report = ExportReport()
    seen: set[str] = set()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if "bundles" in cfg.formats:
        bundles_dir(out_dir).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        ndjson: dict[str, IO[bytes]] = {}

        def sink(rt: str) -> IO[bytes]:
            if rt not in ndjson:
                ndjson[rt] = stack.enter_context(atomic_open(ndjson_dir(out_dir) / f"{rt}.ndjson", "wb"))
            return ndjson[rt]

        issues_out = stack.enter_context(atomic_open(out_dir / ISSUES, "wb"))
        for rec in records:
            report.records += 1
            report.by_status[rec["status"]] += 1
            doc = rec["doc"]
            if progress is not None and report.records % PROGRESS_EVERY == 0:
                progress(report.records)
            if doc in seen:
                report.skip(doc, "duplicate document id (the first record of it was exported)")
                continue
            seen.add(doc)
            if rec["status"] == "invalid":
                report.skip(doc, "status invalid: no extraction to export")
                continue
            if rec["status"] not in cfg.statuses:
                report.skip(doc, f"status {rec['status']} not in export.statuses")
                continue
            built, issues = _build(doc, rec["extraction"], cfg, catalog, validator)
            if built is None:
                report.skip(doc, "extraction is not schema v2")
                issues_out.write(orjson.dumps({"doc": doc, "exported": False, "errors": issues}) + b"\n")
                continue
            line = report.add(built, issues)
            if line is not None:
                issues_out.write(orjson.dumps(line) + b"\n")
            if any(i.severity == "error" for i in issues):
                continue
            if "bundles" in cfg.formats:
                write_bytes(bundles_dir(out_dir) / bundle_file_name(doc), orjson.dumps(built.bundle))
            if "ndjson" in cfg.formats:
                for rt, data in ndjson_lines(built.bundle):
                    sink(rt).write(data)
    seconds = time.perf_counter() - t0
    out = report.as_dict(seconds, list(cfg.formats))
    # the timings go to the task record (the stage's ctx.timing): a rerun's report is byte-identical
    write_json(report_path(out_dir), {k: v for k, v in out.items() if k not in TIMING_KEYS})
    return out


def _build(
    doc: str, data: dict[str, Any], cfg: ExportSection, catalog: Catalog, validator: BundleValidator
) -> tuple[Built | None, list[Any]]:
    """The validated Bundle of one record, or (None, [schema errors]) for an extraction that is not v2."""
    try:
        extraction = ClinicalExtraction.model_validate(data)
    except ValidationError as exc:
        return None, [
            {"kind": "schema", "path": ".".join(map(str, e["loc"])), "message": e["msg"]}
            for e in exc.errors()
        ]
    built = build_bundle(doc, extraction, cfg, catalog)
    issues: list[Issue] = validator.validate(built.bundle)
    return built, issues


def bundle_paths(out_dir: Path) -> list[Path]:
    return sorted(bundles_dir(out_dir).glob("*.json"))
