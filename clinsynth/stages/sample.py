"""`sample`: the record set -> one letter recipe + gold extraction per inpatient stay (specs/*.parquet)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson

from clinsynth.artifacts.checks import UpstreamError, upstream_error
from clinsynth.artifacts.specs import write_sample_report, write_specs
from clinsynth.core.atomic import write_bytes
from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.records import INGEST_REPORT, check_records, iter_patients, records_dir
from clinsynth.sampling.sampler import Sampler, SamplerConfig


class SampleSection(StageConfig):
    strict: bool = operational(why="a strict run that succeeds writes the same specs; it only stops sooner")
    allow_empty: bool = operational(
        why="whether a record set without patients fails the stage; the specs are the same"
    )
    sampler: SamplerConfig


class SampleConfig(StageConfig):
    seed: int = identity()
    sample: SampleSection


@stage("sample", needs=("ingest",), config=SampleConfig, version=1)
def run(cfg: SampleConfig, ctx: StageContext) -> dict[str, Any]:
    """Draw a recipe per stay; a patient whose record cannot be sampled is reported, not fatal.

    First the record set is held against the ingest report (bucket files, rows per table);
    a mismatch or 0 patients (unless sample.allow_empty) stops the stage before it writes.
    """
    strict = cfg.sample.strict
    ingest_dir = ctx.input_dir("ingest")
    rows = check_records(ingest_dir, stage="sample")
    if rows["patients"] == 0 and not cfg.sample.allow_empty:
        raise UpstreamError(
            f"sample: the ingest stage in {ingest_dir} has 0 patients (its {INGEST_REPORT} and "
            "records/ agree): there is nothing to sample. Check the source (and the ingest "
            "report's quarantine counts), or set sample.allow_empty=true if an empty record set "
            "is expected."
        )
    sampler = Sampler(cfg.sample.sampler, seed=cfg.seed)
    records = records_dir(ingest_dir)
    counts: Counter[str] = Counter()
    errors: list[dict[str, str]] = []
    t0 = time.perf_counter()
    n_patients = 0
    with write_specs(ctx.stage_dir) as writer:
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
                writer.write(
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
            if n_patients % 1000 == 0:
                ctx.logger.info(
                    "%d patients, %d specs",
                    n_patients,
                    sum(v for k, v in counts.items() if k.startswith("split/")),
                )
        if n_patients != rows["patients"]:  # inside the block: the specs file never appears
            raise upstream_error(
                "sample",
                "ingest",
                ingest_dir,
                f"patients read from {records} (one per patient id)",
                f"{rows['patients']} (rows of the patients table)",
                n_patients,
            )
    seconds = time.perf_counter() - t0
    n_specs = sum(v for k, v in counts.items() if k.startswith("split/"))
    report = {
        "patients": n_patients,
        "ingest_rows": rows,
        "specs": n_specs,
        "patients_failed": len(errors),
        "errors": errors[:100],
        "counts": dict(sorted(counts.items())),
        "future_facts_dropped": sampler.stats["future_facts_dropped"],
        "seconds": round(seconds, 3),
        "specs_per_s": round(n_specs / seconds, 1) if seconds else None,
    }
    write_sample_report(ctx.stage_dir, report)
    if errors:
        write_bytes(ctx.stage_dir / "errors.jsonl", b"".join(orjson.dumps(e) + b"\n" for e in errors))
        ctx.logger.warning("%d patient(s) could not be sampled; see errors.jsonl", len(errors))
    ctx.tracker.log({"sample/specs": n_specs, "sample/specs_per_s": report["specs_per_s"] or 0})
    ctx.logger.info("%d specs from %d patients in %.1f s", n_specs, n_patients, seconds)
    return {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
