"""What a stage sees of where it runs: its rank, its shard, its folder, its inputs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from clinsynth.core.tracking import NullTracker, Tracker

T = TypeVar("T")


@dataclass
class StageContext:
    stage: str
    stage_id: str
    stage_dir: Path
    #: upstream stage name -> its stage folder (read-only for this stage)
    inputs: dict[str, Path] = field(default_factory=dict)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    #: array stages: this task's shard and the shard count; else 0 and 1
    shard: int = 0
    num_shards: int = 1
    run_id: str = ""
    #: shared cache of the runs folder (built tiny models, tokenizers): reused across stages and runs
    cache_dir: Path | None = None
    #: where a stage saves state when asked to stop; the requeued attempt resumes from it
    checkpoint_dir: Path | None = None
    #: 1 for the first attempt of this unit, 2 after one requeue, ...
    attempt: int = 1
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("clinsynth"))
    tracker: Tracker = field(default_factory=NullTracker)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def items(self, seq: Sequence[T]) -> Sequence[T]:
        """This shard's share of `seq`: items shard, shard+N, shard+2N, ..."""
        return seq[self.shard :: self.num_shards]

    def shard_path(self, subdir: str, suffix: str) -> Path:
        """`<stage_dir>/<subdir>/shard-00007<suffix>`; the folder is created."""
        folder = self.stage_dir / subdir
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"shard-{self.shard:05d}{suffix}"

    def input_dir(self, stage: str) -> Path:
        try:
            return self.inputs[stage]
        except KeyError:
            raise KeyError(
                f"stage {self.stage!r} asked for the output of {stage!r}, which it does not "
                f"declare in needs=...; declared: {sorted(self.inputs)}"
            ) from None

    def init_distributed(self, backend: str = "gloo") -> None:
        """Join the stage's process group (MASTER_ADDR/PORT, RANK, WORLD_SIZE are set by the launcher)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            for key in ("MASTER_ADDR", "MASTER_PORT"):
                if key not in os.environ:
                    raise RuntimeError(f"{key} is not set: run this stage through the launcher")
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)
