"""The evaluate stage's typed config (keys under `evaluate:` in conf/config.yaml; shared `seed`)."""

from __future__ import annotations

from clinsynth.core.config import StageConfig, identity


class EvaluateSection(StageConfig):
    text_threshold: float = identity(
        ge=0, le=100, why="rapidfuzz token_sort_ratio a procedure description must reach to match"
    )
    bootstrap: int = identity(ge=1, why="resamples of documents for the percentile intervals")
    interval: float = identity(gt=0, lt=1, why="interval level: 0.95 gives 95 % intervals")
    plots: bool = identity(why="plots/f1_<source>.png (matplotlib)")
    include_failed: bool = identity(
        why="score test letters that failed verification too (default: no, counted apart as excluded): "
        "their gold does not match their text, so a correct extraction would be scored as wrong"
    )


class EvaluateConfig(StageConfig):
    seed: int = identity()
    evaluate: EvaluateSection
