"""Aggregate statistics of the six GraSCCo development letters, for the letters data report.

    python benchmarks/dev_letter_stats.py [--grascco ../shared/external/grascco] [--out FILE]

Counts words, text features and written codes with the same counters the report uses on
synthetic letters (clinsynth.letters.report.TextStats) and writes only numbers: no sentence,
no frame, no text of the letters leaves this script. The report reads the committed file, so
it works where ../shared is absent; tests/unit/test_letters_report.py checks that the file still
equals a fresh computation where the letters are present.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clinsynth.core.atomic import write_json
from clinsynth.letters.report import DEV_STATS, TextStats

#: the development set named in ../shared/external/grascco/README.md (the other letters are never read)
DEV_LETTERS = ("Meyr", "Clausthal", "Ehrenberger", "Schnitzler", "Rieser", "Baastrup")
GRASCCO = Path(__file__).resolve().parents[2] / "shared" / "external" / "grascco"


def compute(folder: Path = GRASCCO) -> dict[str, Any]:
    """The aggregates of the development letters in `folder` (a clear error when one is missing)."""
    stats = TextStats()
    digests = {}
    for name in DEV_LETTERS:
        path = folder / f"{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: development letter missing; pass --grascco FOLDER")
        data = path.read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        stats.add(data.decode("utf-8-sig"))
    return {
        **stats.summary(),
        "source": "GraSCCo development letters (CC BY 4.0; Modersohn et al. 2022, doi:10.3233/SHTI220805)",
        "sha256": digests,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grascco", type=Path, default=GRASCCO)
    ap.add_argument("--out", type=Path, default=DEV_STATS)
    args = ap.parse_args()
    out = compute(args.grascco)
    write_json(args.out, out)
    w = out["words"]
    print(f"{out['letters']} letters, median {w['median']} words (IQR {w['q1']}-{w['q3']}) -> {args.out}")


if __name__ == "__main__":
    main()
