"""Issue 12 acceptance: `rules` over every GraSCCo letter, each extraction exported; every Bundle validates.

Every `*.txt` of the corpus ($CLINSYNTH_GRASCCO or the shared copy beside the checkout; skipped where
absent) goes through the real RulesExtractor, becomes a prediction record (doc `file:<name>`, source
external, as the extract stage writes external letters) and through the export's own path
(`export_records`: build, fhir.resources + profile checks, write). Each written Bundle is then checked
again by fhir.resources' full Bundle model and the profile checks. The corpus beyond the six
development letters is the kept-back evaluation set: nothing of a letter or of its extraction is
printed, compared or kept; a failure names the file and the error's kind and path only.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
import yaml

from clinsynth.artifacts.predictions import prediction
from clinsynth.core.atomic import read_jsonl
from clinsynth.export.bundle import bundle_file_name
from clinsynth.export.config import ExportConfig
from clinsynth.export.profiles import BundleValidator
from clinsynth.export.report import ISSUES, bundles_dir
from clinsynth.export.run import export_records
from clinsynth.extraction.rules import RulesExtractor
from clinsynth.letters.devset import DEFAULT_GRASCCO
from clinsynth.terminology import load_catalog

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("CLINSYNTH_GRASCCO") or DEFAULT_GRASCCO)
LETTERS = sorted(ROOT.glob("*.txt")) if ROOT.is_dir() else []

pytestmark = pytest.mark.skipif(not LETTERS, reason=f"no GraSCCo letters under {ROOT}")


def _section():
    conf = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    return ExportConfig.model_validate({"export": conf["export"]}).export


def test_every_grascco_letter_exports_to_a_valid_bundle(tmp_path: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle

    catalog = load_catalog()
    ex = RulesExtractor(catalog)
    records, failed = [], []
    for path in LETTERS:
        try:
            out = ex.extract(path.read_text(encoding="utf-8-sig"))  # some corpus files carry a BOM
        except Exception as e:  # the file and the error type only, never the text
            failed.append(f"{path.name}: extract {type(e).__name__}")
            continue
        data = out.model_dump(mode="json", exclude_none=True)
        records.append(
            prediction(f"file:{path.name}", "external", "rules", "ok", data, orjson.dumps(data).decode())
        )
    assert not failed, failed

    report = export_records(records, tmp_path, _section(), catalog=catalog)
    errors = [
        f"{line['doc']}: {e.get('kind')} {e.get('resource', '').split('/')[0]} {e.get('path')}"
        for line in read_jsonl(tmp_path / ISSUES)
        for e in line.get("errors") or []
    ]
    assert not errors, errors
    n = len(LETTERS)
    assert report["records"] == report["exported"] == n and report["rejected"] == 0, "records lost"
    assert report["errors"] == 0 and report["skipped"] == {}
    assert report["resources_written"] > 2 * n  # more than each letter's Patient and Encounter

    validator = BundleValidator(catalog)
    for path in LETTERS:
        file = bundles_dir(tmp_path) / bundle_file_name(f"file:{path.name}")
        try:
            Bundle.model_validate_json(file.read_bytes())  # the full model, beside the export's validator
        except Exception as e:
            failed.append(f"{path.name}: fhir.resources {type(e).__name__}")
            continue
        issues = validator.validate(orjson.loads(file.read_bytes()))
        failed += [
            f"{path.name}: {i.kind} {i.resource.split('/')[0]} {i.path}"
            for i in issues
            if i.severity == "error"
        ]
    assert not failed, failed
