"""`sample`: the record set -> one letter recipe + gold extraction per inpatient stay (specs/*.parquet)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from pydantic import ValidationError

from clinsynth.artifacts.checks import UpstreamError, upstream_error
from clinsynth.artifacts.specs import write_sample_report, write_specs
from clinsynth.core.atomic import write_bytes
from clinsynth.core.config import StageConfig, identity, operational
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.records import INGEST_REPORT, PatientRecord, check_records, iter_patients, records_dir
from clinsynth.sampling.recipe import Recipe, RecipeFact
from clinsynth.sampling.sampler import Sampler, SamplerConfig
from clinsynth.schema import LISTS


class SampleSection(StageConfig):
    strict: bool = operational(why="a strict run that succeeds writes the same specs; it only stops sooner")
    allow_empty: bool = operational(
        why="whether a record set without patients fails the stage; the specs are the same"
    )
    sampler: SamplerConfig


class SampleConfig(StageConfig):
    seed: int = identity()
    sample: SampleSection


#: one JSON line per patient that could not be sampled: patient, step, error, what to do
ERRORS = "errors.jsonl"

_SPEC_STR_FIELDS = ("spec_id", "patient_id", "encounter_id", "split", "letter_type")

#: what a user can do about a failure, by the step it happened in
_HINTS = {
    "draw": (
        "the sampler could not read this patient's record; check the patient's FHIR resources "
        "(dates, references, codes) in the ingest records, and report it with the error if the "
        "record is valid FHIR"
    ),
    "gold": (
        "a fact drawn from this patient's record does not fit the extraction schema (the fields "
        "are named above, with the fact they came from); usually a code of one system in another "
        "system's slot or a value the schema cannot hold: check that fact's FHIR resource, and "
        "report it as a sampler bug if the resource is valid"
    ),
    "serialise": (
        "a recipe of this patient could not be written to specs.parquet (a value of the wrong "
        "type); report it as a sampler bug with the error"
    ),
}
_ADVICE = "The patient was skipped; sample.strict=true stops the run at the first such patient instead."


class PatientError(Exception):
    """One patient that could not be sampled: which step failed, why, and what to do about it."""

    def __init__(self, patient_id: str, step: str, exc: BaseException, detail: list[dict[str, Any]]):
        super().__init__(patient_id, step)
        self.patient_id, self.step, self.detail = patient_id, step, detail
        self.error_type = type(exc).__name__
        text = str(exc)
        if isinstance(exc, ValidationError):  # without pydantic's "For further information" lines
            text = "\n".join(ln for ln in text.splitlines() if "errors.pydantic.dev" not in ln)
        self.error = f"{self.error_type}: {text}"

    def message(self) -> str:
        where = "; ".join(f"{d['field']} <- {d.get('fact', '?')}" for d in self.detail)
        return (
            f"patient {self.patient_id!r} could not be sampled ({self.step}): {self.error}"
            + (f"\n  facts: {where}" if where else "")
            + f"\n  what to do: {_HINTS[self.step]}"
        )

    def entry(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "step": self.step,
            "error": self.error,
            "facts": self.detail,
            "what_to_do": f"{_HINTS[self.step]}. {_ADVICE}",
        }


def _bad_facts(recipe: Recipe, exc: BaseException) -> list[dict[str, Any]]:
    """The recipe facts behind a gold validation error (`procedures.0.ops` -> that procedure fact)."""
    if not isinstance(exc, ValidationError):
        return []
    by_list: dict[str, list[RecipeFact]] = {}
    for f in recipe.facts:
        by_list.setdefault(LISTS[f.kind], []).append(f)
    out = []
    for err in exc.errors()[:20]:
        loc = err.get("loc", ())
        entry: dict[str, Any] = {"encounter_id": recipe.encounter_id, "field": ".".join(map(str, loc))}
        if len(loc) >= 2 and isinstance(loc[1], int) and loc[1] < len(by_list.get(str(loc[0]), ())):
            f = by_list[str(loc[0])][loc[1]]
            named = f.say.get("name") or f.say.get("phrase") or f.gold.get("text") or f.gold.get("name")
            entry["fact"] = f"{f.kind} {named!r}" if named else f.kind
        entry["problem"] = err.get("msg", "")
        entry["value"] = repr(err.get("input"))[:120]
        out.append(entry)
    return out


def _row(r: Recipe, gold: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: getattr(r, k) for k in _SPEC_STR_FIELDS}
    for k in _SPEC_STR_FIELDS:  # checked here, per patient: a bad row group would fail 2,000 rows
        if not isinstance(row[k], str) or not row[k]:
            raise TypeError(f"recipe {k} must be a non-empty string, got {row[k]!r}")
    row.update(n_facts=len(r.facts), recipe=r.to_json().decode(), gold=gold)
    return row


def _patient_rows(sampler: Sampler, rec: PatientRecord) -> tuple[list[Recipe], list[dict[str, Any]]]:
    """Every spec row of one patient, or a PatientError naming the step that failed."""
    step, recipe = "draw", None
    try:
        recipes = list(sampler.recipes(rec))
        rows = []
        for recipe in recipes:
            step = "gold"
            gold = recipe.gold().model_dump_json(exclude_none=True)
            step = "serialise"
            rows.append(_row(recipe, gold))
    except Exception as exc:
        detail = _bad_facts(recipe, exc) if recipe is not None and step == "gold" else []
        raise PatientError(rec.patient_id, step, exc, detail) from exc
    return recipes, rows


@stage("sample", needs=("ingest",), config=SampleConfig, version=1)
def run(cfg: SampleConfig, ctx: StageContext) -> dict[str, Any]:
    """Draw a recipe per stay; a patient whose record cannot be sampled is reported and skipped.

    Any error while drawing, building the gold or serialising one patient skips that patient
    whole (none of its specs is written) and lands in errors.jsonl with what to do; the report
    counts every patient (with specs, without stays, failed). sample.strict=true stops instead.

    First the record set is held against the ingest report (bucket files, rows per table);
    a mismatch or 0 patients (unless sample.allow_empty) stops the stage before it writes.
    """
    strict = cfg.sample.strict
    ingest_dir = ctx.input_dir("ingest")
    rows_in = check_records(ingest_dir, stage="sample")
    if rows_in["patients"] == 0 and not cfg.sample.allow_empty:
        raise UpstreamError(
            f"sample: the ingest stage in {ingest_dir} has 0 patients (its {INGEST_REPORT} and "
            "records/ agree): there is nothing to sample. Check the source (and the ingest "
            "report's quarantine counts), or set sample.allow_empty=true if an empty record set "
            "is expected."
        )
    sampler = Sampler(cfg.sample.sampler, seed=cfg.seed)
    records = records_dir(ingest_dir)
    counts: Counter[str] = Counter()
    errors: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    n_patients = n_without_stays = 0
    first_error: PatientError | None = None
    with write_specs(ctx.stage_dir) as writer:
        for rec in iter_patients(records):
            n_patients += 1
            try:  # a patient's rows are all built before any is written: a patient is in or out whole
                recipes, rows = _patient_rows(sampler, rec)
            except PatientError as exc:  # one bad record must not stop 40k patients
                if strict:
                    raise RuntimeError(f"sample (sample.strict=true): {exc.message()}") from exc.__cause__
                first_error = first_error or exc
                errors.append(exc.entry())
                counts[f"failed/{exc.step}/{exc.error_type}"] += 1
                continue
            if not rows:
                n_without_stays += 1  # no inpatient stay with a start and an end: nothing to write
            for r, row in zip(recipes, rows, strict=True):
                writer.write(row)
                counts[f"split/{r.split}"] += 1
                for f in r.facts:
                    counts[f"facts/{f.kind}/{f.assertion}"] += 1
                    if f.say.get("code") or f.say.get("morphology") or f.say.get("morphology_code"):
                        counts[f"codes_written/{f.kind}"] += 1
                for s in r.sections:
                    counts[f"sections/{s['key']}"] += 1
            if n_patients % 1000 == 0:
                ctx.logger.info(
                    "%d patients, %d specs",
                    n_patients,
                    sum(v for k, v in counts.items() if k.startswith("split/")),
                )
        if n_patients != rows_in["patients"]:  # inside the block: the specs file never appears
            raise upstream_error(
                "sample",
                "ingest",
                ingest_dir,
                f"patients read from {records} (one per patient id)",
                f"{rows_in['patients']} (rows of the patients table)",
                n_patients,
            )
        if first_error is not None and len(errors) == n_patients:  # not one bad record: a broken run
            steps = Counter(e["step"] for e in errors)
            raise RuntimeError(
                f"sample: all {n_patients} patient(s) failed ({dict(steps)}), so no spec was written; "
                f"the first: {first_error.message()}"
            ) from first_error.__cause__
    seconds = time.perf_counter() - t0
    n_specs = sum(v for k, v in counts.items() if k.startswith("split/"))
    report = {
        "patients": n_patients,
        "ingest_rows": rows_in,
        "specs": n_specs,
        # every patient is counted once: with specs, without a stay to write about, or failed
        "patients_with_specs": n_patients - n_without_stays - len(errors),
        "patients_without_stays": n_without_stays,
        "patients_failed": len(errors),
        "errors": errors[:100],
        "errors_file": ERRORS if errors else None,
        "counts": dict(sorted(counts.items())),
        "future_facts_dropped": int(sampler.stats.get("future_facts_dropped", 0)),
        "sampler_stats": dict(sampler.stats),
    }
    # timings go to the task record, not the report: a rerun's report is byte-identical
    timing = {"seconds": round(seconds, 3), "specs_per_s": round(n_specs / seconds, 1) if seconds else None}
    ctx.timing(**timing)
    write_sample_report(ctx.stage_dir, report)
    if errors:
        write_bytes(ctx.stage_dir / ERRORS, b"".join(orjson.dumps(e) + b"\n" for e in errors))
        ctx.logger.warning(
            "%d of %d patient(s) could not be sampled and were skipped; see %s (first: %s)",
            len(errors),
            n_patients,
            ctx.stage_dir / ERRORS,
            errors[0]["patient_id"],
        )
    ctx.tracker.log({"sample/specs": n_specs, "sample/specs_per_s": timing["specs_per_s"] or 0})
    ctx.logger.info("%d specs from %d patients in %.1f s", n_specs, n_patients, seconds)
    return {**{k: v for k, v in report.items() if not isinstance(v, (dict, list))}, **timing}
