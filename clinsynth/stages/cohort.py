"""`cohort`: N synthetic cancer patients as FHIR bulk-export NDJSON, one file per type and shard."""

from __future__ import annotations

import os
import socket
import tempfile
from datetime import date
from pathlib import Path
from typing import IO, Any

import orjson

from clinsynth.cohort.fhir_build import resources, truth
from clinsynth.cohort.generator import CohortConfig, CohortGenerator
from clinsynth.core.config import StageConfig, identity
from clinsynth.core.context import StageContext
from clinsynth.core.registry import stage


class CohortSection(StageConfig):
    patients: int = identity(ge=1)
    reference_date: date = identity(why="the export day: nothing happens after it")
    max_chemo_cycles: int = identity(ge=0)
    comorbidity_scale: float = identity(ge=0)


class CohortStageConfig(StageConfig):
    seed: int = identity()
    cohort: CohortSection


@stage("cohort", config=CohortStageConfig, array=True, version=1)
def run(cfg: CohortStageConfig, ctx: StageContext) -> dict[str, Any]:
    """Patients i::N of range(cohort.patients); every file appears only when the shard is complete."""
    c = cfg.cohort
    gen = CohortGenerator(
        CohortConfig(
            seed=cfg.seed,
            reference_date=c.reference_date,
            max_chemo_cycles=c.max_chemo_cycles,
            comorbidity_scale=c.comorbidity_scale,
        )
    )
    out = ctx.stage_dir / "fhir"
    truth_dir = ctx.stage_dir / "truth"
    out.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{ctx.shard:05d}"
    for folder in (out, truth_dir):
        _clean_dead_temps(folder, tag)
    # every attempt writes its own temp files (a zombie and a relaunch of the same shard never
    # share one); renaming them onto the final names is the only step attempts share
    files: dict[str, tuple[Path, IO[bytes]]] = {}
    truth_tmp = _temp(truth_dir, f"shard-{tag}.jsonl")
    med_ids: dict[str, str] = {}
    counts: dict[str, int] = {}
    patients = ctx.items(range(c.patients))
    try:
        try:
            with open(truth_tmp, "wb") as tfh:
                for k, index in enumerate(patients, 1):
                    person = gen.person(index)
                    for res in resources(person, ctx.shard, med_ids):
                        rt = res["resourceType"]
                        if rt not in files:
                            tmp = _temp(out, f"{rt}-{tag}.ndjson")
                            files[rt] = (tmp, open(tmp, "wb"))  # noqa: SIM115 - closed below
                        files[rt][1].write(orjson.dumps(res) + b"\n")
                        counts[rt] = counts.get(rt, 0) + 1
                    tfh.write(orjson.dumps(truth(person)) + b"\n")
                    if k % 1000 == 0:
                        ctx.logger.info("shard %d: %d of %d patients", ctx.shard, k, len(patients))
        finally:
            for _, fh in files.values():
                fh.close()
        for rt, (tmp, _) in files.items():
            os.replace(tmp, out / f"{rt}-{tag}.ndjson")
        os.replace(truth_tmp, truth_dir / f"shard-{tag}.jsonl")
    except BaseException:
        for tmp in [truth_tmp, *(t for t, _ in files.values())]:
            tmp.unlink(missing_ok=True)
        raise
    ctx.tracker.log({f"cohort/{rt}": n for rt, n in counts.items()})
    return {"patients": len(patients), "resources": sum(counts.values())}


def _owner() -> str:
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _temp(folder: Path, name: str) -> Path:
    """A fresh temp file for `folder/name`, unique to this attempt: `.name.<host>-<pid>.<random>.tmp`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{_owner()}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


def _clean_dead_temps(folder: Path, tag: str) -> None:
    """Remove this shard's temp files left by attempts killed on this host (SIGKILL skips cleanup).

    A live attempt's files (a zombie still writing) and other hosts' files are left alone.
    """
    host = socket.gethostname().replace(".", "_")
    for f in folder.glob(f".*-{tag}.*.tmp"):
        owner = f.name.split(".")[-3] if f.name.count(".") >= 4 else ""
        owner_host, _, pid = owner.rpartition("-")
        if owner_host != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass
