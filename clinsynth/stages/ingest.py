"""`ingest`: any FHIR source -> the typed record set (Parquet) + quarantine + report."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from clinsynth.core.config import StageConfig, identity, operational, secret_env
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage
from clinsynth.ingest.pipeline import TIMING_KEYS, Options, ingest
from clinsynth.ingest.sources import fingerprint, open_source


def _needs(plain: dict[str, Any]) -> tuple[str, ...]:
    return ("cohort",) if (plain.get("source") or {}).get("kind", "synthetic") == "synthetic" else ()


class SyntheticSource(StageConfig):
    kind: Literal["synthetic"] = identity(why="the cohort stage's folder; its id enters ingest's id")


class NdjsonSource(StageConfig):
    kind: Literal["ndjson"] = identity()
    path: str = identity(why="a bulk-export folder")


class BundlesSource(StageConfig):
    kind: Literal["bundles"] = identity()
    path: str = identity(why="a folder (searched recursively) or a file of Bundles")


class ServerSource(StageConfig):
    kind: Literal["server"] = identity()
    url: str = identity(why="the server is the data; label its state with snapshot")
    token_env: str | None = secret_env(why="NAME of the variable with the token; its value is never saved")
    page_size: int = operational(ge=1, why="_count per page: the same resources in other pages")
    timeout_s: float = operational(gt=0, why="total per request (connect + body)")
    retries: int = operational(ge=0, why="on 429/5xx/timeouts")
    backoff_s: float = operational(ge=0, why="retry pacing")
    max_pages: int = operational(ge=1, why="endless-paging guard: a walk it cuts stops with an error")
    types: list[str] = identity(why="[] = every type ingest understands")
    snapshot: str | None = identity(why="change it to re-ingest a server whose data changed")

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        # a password in the URL would be pickled into the job and written to every saved config
        if urlsplit(url).password is not None:
            raise ValueError(
                "source.url must not hold credentials (user:password@): export the token in the "
                "variable named by source.token_env instead"
            )
        return url


Source = Annotated[
    SyntheticSource | NdjsonSource | BundlesSource | ServerSource, Field(discriminator="kind")
]


class IngestSection(StageConfig):
    strict: bool = operational(why="a strict run that succeeds writes the same records; it only stops sooner")
    as_of: date = identity(why="nothing may happen after this day")
    workers: int | None = operational(ge=1, why="records are byte-identical for any worker count")
    buckets: int = identity(ge=1, why="records/*-NNNN.parquet files, grouped by patient")
    chunk: int = operational(ge=1, why="resources per worker task; the records are the same")
    extra_code_systems: list[str] = identity()
    allow_empty: bool = operational(
        why="whether a source without any resource fails the stage; the records are the same"
    )


class IngestConfig(StageConfig):
    source: Source
    ingest: IngestSection


def _inputs(cfg: IngestConfig) -> Any:
    """File sources: what they would read (names, sizes, mtimes) enters the stage id."""
    src = cfg.source
    if isinstance(src, (NdjsonSource, BundlesSource)):
        return fingerprint(Path(src.path))
    return None  # the cohort stage's id, or a server's url + snapshot, already say it


@stage("ingest", needs=_needs, config=IngestConfig, version=1, fingerprint=_inputs)
def run(cfg: IngestConfig, ctx: StageContext) -> dict[str, Any]:
    """Validate and flatten every resource; bad ones go to quarantine.ndjson with file, line and reason."""
    src, opts = cfg.source, cfg.ingest
    kind = src.kind
    items = open_source(kind, src.model_dump(), ctx.inputs.get("cohort"))
    workers = opts.workers or len(os.sched_getaffinity(0))
    options = Options(
        as_of=opts.as_of.isoformat(),
        extra_code_systems=frozenset(opts.extra_code_systems),
        strict=opts.strict,
        allow_empty=opts.allow_empty,
    )
    ctx.logger.info("ingest from %s source with %d worker(s)", kind, workers)
    report = ingest(
        items,
        ctx.stage_dir,
        options,
        workers=workers,
        chunk=opts.chunk,
        buckets=opts.buckets,
        progress=lambda n: ctx.progress(n, None, "resources"),
    )
    ctx.logger.info(
        "read %d, ok %d, quarantined %d %s, ignored %d; %.0f resources/s",
        report["resources_read"],
        report["resources_ok"],
        report["resources_quarantined"],
        report["quarantined_by_reason"],
        report["resources_ignored"],
        report["resources_per_s"] or 0,
    )
    ctx.timing(**{k: report[k] for k in TIMING_KEYS if k in report})
    ctx.tracker.log({f"ingest/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
    return {k: v for k, v in report.items() if not isinstance(v, dict)}
