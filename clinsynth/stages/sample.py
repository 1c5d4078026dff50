"""`sample`: the record set -> one letter recipe + gold extraction per inpatient stay (specs/*.parquet)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clinsynth.core.atomic import atomic_path, write_json
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.records import iter_patients
from clinsynth.sampling.sampler import Sampler, SamplerConfig

SPECS = pa.schema(
    [
        ("spec_id", pa.string()),
        ("patient_id", pa.string()),
        ("encounter_id", pa.string()),
        ("split", pa.string()),
        ("letter_type", pa.string()),
        ("n_facts", pa.int32()),
        ("recipe", pa.string()),  # JSON: clinsynth.sampling.recipe.Recipe
        ("gold", pa.string()),  # JSON: clinsynth.schema.ClinicalExtraction
    ]
)


def read_specs(stage_dir: Any, columns: list[str] | None = None) -> pa.Table:
    """All specs of a sample stage folder, in spec order (patients sorted, stays by date)."""
    return pq.read_table(stage_dir / "specs" / "specs.parquet", columns=columns)


@stage("sample", needs=("ingest",), reads=("sampler", "seed"), version=1)
def run(cfg: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Draw a recipe per stay; a patient whose record cannot be sampled is reported, not fatal."""
    scfg = SamplerConfig.from_dict(dict(cfg.get("sampler") or {}, seed=int(cfg.get("seed", 0))))
    strict = bool((cfg.get("sample") or {}).get("strict", False))
    sampler = Sampler(scfg)
    records = ctx.input_dir("ingest") / "records"
    out = ctx.stage_dir / "specs" / "specs.parquet"
    counts: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    n_patients = 0
    with atomic_path(out) as tmp:
        writer = pq.ParquetWriter(tmp, SPECS, compression="zstd")
        try:
            for rec in iter_patients(records):
                n_patients += 1
                try:
                    recipes = list(sampler.recipes(rec))
                except Exception as exc:  # one bad record must not stop 40k patients
                    if strict:
                        raise RuntimeError(f"sample: patient {rec.patient_id}: {exc}") from exc
                    errors.append({"patient_id": rec.patient_id, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                for r in recipes:
                    gold = r.gold()
                    rows.append(
                        {
                            "spec_id": r.spec_id,
                            "patient_id": r.patient_id,
                            "encounter_id": r.encounter_id,
                            "split": r.split,
                            "letter_type": r.letter_type,
                            "n_facts": len(r.facts),
                            "recipe": r.to_json().decode(),
                            "gold": gold.model_dump_json(exclude_none=True),
                        }
                    )
                    counts[f"split/{r.split}"] += 1
                    for f in r.facts:
                        counts[f"facts/{f.kind}/{f.assertion}"] += 1
                        if f.say.get("code") or f.say.get("morphology_code"):
                            counts[f"codes_written/{f.kind}"] += 1
                    for s in r.sections:
                        counts[f"sections/{s['key']}"] += 1
                if len(rows) >= 2000:
                    writer.write_table(pa.Table.from_pylist(rows, schema=SPECS))
                    rows = []
                if n_patients % 1000 == 0:
                    ctx.logger.info(
                        "%d patients, %d specs",
                        n_patients,
                        sum(v for k, v in counts.items() if k.startswith("split/")),
                    )
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=SPECS))
        finally:
            writer.close()
    seconds = time.perf_counter() - t0
    n_specs = sum(v for k, v in counts.items() if k.startswith("split/"))
    report = {
        "patients": n_patients,
        "specs": n_specs,
        "patients_failed": len(errors),
        "errors": errors[:100],
        "counts": dict(sorted(counts.items())),
        "future_facts_dropped": sampler.stats["future_facts_dropped"],
        "seconds": round(seconds, 3),
        "specs_per_s": round(n_specs / seconds, 1) if seconds else None,
    }
    write_json(ctx.stage_dir / "sample_report.json", report)
    if errors:
        (ctx.stage_dir / "errors.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in errors))
        ctx.logger.warning("%d patient(s) could not be sampled; see errors.jsonl", len(errors))
    ctx.tracker.log({"sample/specs": n_specs, "sample/specs_per_s": report["specs_per_s"] or 0})
    ctx.logger.info("%d specs from %d patients in %.1f s", n_specs, n_patients, seconds)
    return {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
