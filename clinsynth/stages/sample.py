"""`sample`: the record set -> one letter recipe + gold extraction per inpatient stay (specs/*.parquet)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson

from clinsynth.artifacts.specs import write_specs
from clinsynth.core.atomic import write_json
from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.records import iter_patients
from clinsynth.sampling.sampler import Sampler, SamplerConfig


class SampleSection(StageConfig):
    strict: bool = operational(why="a strict run that succeeds writes the same specs; it only stops sooner")
    sampler: SamplerConfig


class SampleConfig(StageConfig):
    seed: int = identity()
    sample: SampleSection


@stage("sample", needs=("ingest",), config=SampleConfig, version=1)
def run(cfg: SampleConfig, ctx: StageContext) -> dict[str, Any]:
    """Draw a recipe per stay; a patient whose record cannot be sampled is reported, not fatal."""
    strict = cfg.sample.strict
    sampler = Sampler(cfg.sample.sampler, seed=cfg.seed)
    records = ctx.input_dir("ingest") / "records"
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
