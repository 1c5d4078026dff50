"""Overrides for the toy pipeline (tests/toy_stages.py) and small result readers."""

from __future__ import annotations

from pathlib import Path

from clinsynth.core.atomic import read_json, read_jsonl

#: smoke draws compact letters, one per patient (conf/experiment/smoke.yaml); tests that need the default
#: sampler's longer letters and 2 stays per patient (more letters from a small cohort) pin these
DEFAULT_LETTERS = ["sample/sampler=default", "sample.sampler.stays_per_patient=2"]

#: the train stage of a 6-patient smoke run on the random tiny model (the Slurm train and sweep tests)
TINY_TRAIN = [
    "+experiment=smoke",
    "pipeline=[train]",
    "tracking=disabled",
    "cohort.patients=6",
    "train/model=tiny",
    "train.model.tiny.max_position_embeddings=8192",  # template letters run ~2-4k tiny-BPE tokens
    "train.max_seq_len=8192",
    "dataset.schema_in_prompt=none",
    "train.gradient_checkpointing=false",
]


def toy_overrides(
    runs: Path,
    cluster: str = "local",
    *,
    n_items: int = 40,
    shards: int = 4,
    nodes: int = 2,
    sleep_s: float = 0.0,
    extra: list[str] | None = None,
) -> list[str]:
    return [
        "name=toy",
        "pipeline=[toy_sum]",
        "stage_modules=[tests.toy_stages]",
        f"cluster={cluster}",
        "tracking=disabled",
        f"paths.runs={runs}",
        f"+toy.n_items={n_items}",
        f"+toy.sleep_s={sleep_s}",
        "+toy_sum.scale=1.0",
        f"+resources.toy_rows.shards={shards}",
        "+resources.toy_rows.mem_gb=1",
        f"+resources.toy_sum.nodes={nodes}",
        "+resources.toy_sum.mem_gb=1",
        *(extra or []),
    ]


def toy_outputs(result) -> tuple[list[dict], dict]:
    folder = result.plan.stage("toy_sum").folder.path
    return list(read_jsonl(folder / "merged.jsonl")), read_json(folder / "summary.json")
