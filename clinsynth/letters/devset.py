"""The development set: six GraSCCo letters and their hand-written schema-v2 gold.

The extraction issue scores against this gold, so it lives in the repository
(`benchmarks/data/grascco_dev/<Name>.json`, rules in `ANNOTATION.md` there). The letters themselves
are not in the repository (public corpus, CC BY 4.0): they are read from `$CLINSYNTH_GRASCCO` or the
shared copy, and are simply absent elsewhere. Only these six names can be opened here: the other
GraSCCo letters are a kept-back evaluation set.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from pydantic import ValidationError

from clinsynth.schema import ClinicalExtraction

#: the development letters (corpus file names without ".txt"); Schnitzler is a near-duplicate of Ehrenberger
DEV_LETTERS: tuple[str, ...] = ("Meyr", "Clausthal", "Ehrenberger", "Schnitzler", "Rieser", "Baastrup")
_REPO = Path(__file__).resolve().parents[2]
#: where the letters are when $CLINSYNTH_GRASCCO is not set: the shared folder beside the checkout
DEFAULT_GRASCCO = _REPO.parent / "shared" / "external" / "grascco"
GOLD_DIR = _REPO / "benchmarks" / "data" / "grascco_dev"


class DevGoldError(ValueError):
    """A gold file that is missing or does not validate against the schema."""


def _check_name(name: str) -> None:
    if name not in DEV_LETTERS:
        raise ValueError(
            f"{name!r} is not a development letter; use one of {', '.join(DEV_LETTERS)} "
            "(the other GraSCCo letters are the kept-back evaluation set)"
        )


def dev_letter_path(name: str) -> Path | None:
    """The letter's file, or None where the corpus copy is absent ($CLINSYNTH_GRASCCO or the shared copy)."""
    _check_name(name)
    root = Path(os.environ.get("CLINSYNTH_GRASCCO") or DEFAULT_GRASCCO)
    path = root / f"{name}.txt"
    return path if path.is_file() else None


def dev_letter_text(name: str) -> str | None:
    """The letter's text without the UTF-8 BOM some corpus files carry, or None where absent."""
    path = dev_letter_path(name)
    return None if path is None else path.read_text(encoding="utf-8-sig")


def load_gold(name: str, gold_dir: Path = GOLD_DIR) -> ClinicalExtraction:
    """One letter's gold; a broken file raises DevGoldError naming the file and the problem."""
    _check_name(name)
    path = gold_dir / f"{name}.json"
    try:
        return ClinicalExtraction.model_validate(orjson.loads(path.read_bytes()))
    except FileNotFoundError as e:
        raise DevGoldError(f"{path}: gold file missing; restore it from git") from e
    except orjson.JSONDecodeError as e:
        raise DevGoldError(f"{path}: not valid JSON ({e}); fix the file") from e
    except ValidationError as e:
        raise DevGoldError(f"{path}: does not fit schema v2; fix the fields named here:\n{e}") from e


def load_dev_gold(gold_dir: Path = GOLD_DIR) -> dict[str, ClinicalExtraction]:
    """The gold of all six development letters, by letter name, in DEV_LETTERS order."""
    return {name: load_gold(name, gold_dir) for name in DEV_LETTERS}
