"""Rebuild the mechanically derived tables from the RKI classification snapshot.

Run ``python -m clinsynth.terminology.build --reference ../shared/reference`` from the checkout.
Only tables that are pure selections of source rows are generated here (ICD-10-GM,
ICD-O-3 topography/morphology, oBDS value sets, ATC); the curated tables
(entities, regimens, labs, OPS, comorbidities, supportive drugs) are edited by
hand. Keeping the selection in code makes it auditable that no code or official
title was altered, which the BfArM terms require, and lets a newer source
release be pulled in with one command.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Iterable
from pathlib import Path

from clinsynth.terminology._io import data_dir, load_manifest, render_csv

RKI = Path("rki") / "Klassifikationen"
DRAFTS = Path("drafts")

# Roots of the non-neoplasm ICD-10-GM codes a discharge letter needs (comorbidities,
# treatment complications, Z codes). Each root is taken with its whole GM 2022
# subtree, so a non-terminal root like E11.9 brings its codable children E11.90/E11.91.
SECONDARY_ICD_ROOTS: tuple[str, ...] = (
    # comorbidities
    "I10",
    "I11.9",
    "I25.1",
    "I48",
    "I50.9",
    "E03.9",
    "E10.9",
    "E11.9",
    "E66.0",
    "E78.0",
    "N18.3",
    "N18.4",
    "J44.9",
    "J45.9",
    "F32.9",
    "F17.1",
    "K21.9",
    "M81.9",
    # complications and symptoms during tumour therapy
    "G62.0",
    "D63.0",
    "D64.9",
    "D70",
    "D69.5",
    "D61.1",
    "R50.9",
    "R11",
    "R53",
    "R63.4",
    "R18",
    "K59.0",
    "A09.9",
    "K12.3",
    "E86",
    "E87.1",
    "E87.6",
    "E83.5",
    "N17.9",
    "J18.9",
    "A41.9",
    "I26.9",
    "I80.2",
    "T45.1",
    "T80.8",
    # encounter and status codes
    "Z51.0",
    "Z51.1",
    "Z51.5",
    "Z92.6",
    "Z93.2",
    "Z93.3",
    "Z85.0",
    "Z90.1",
    "Z08.0",
    "Z08.1",
    "Z08.2",
)

# Project wording for fuzzy search (what clinicians write); never shown as the official title.
ICD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "C15": ("Ösophaguskarzinom", "Speiseröhrenkrebs"),
    "C16": ("Magenkarzinom", "Magenkrebs"),
    "C18": ("Kolonkarzinom", "Dickdarmkrebs"),
    "C18.7": ("Sigmakarzinom",),
    "C20": ("Rektumkarzinom", "Mastdarmkrebs"),
    "C22.0": ("HCC", "hepatozelluläres Karzinom"),
    "C25": ("Pankreaskarzinom", "Bauchspeicheldrüsenkrebs"),
    "C25.0": ("Pankreaskopfkarzinom",),
    "C32": ("Larynxkarzinom", "Kehlkopfkrebs"),
    "C34": ("Bronchialkarzinom", "Lungenkarzinom", "NSCLC", "SCLC"),
    "C43": ("Melanom", "malignes Melanom"),
    "C50": ("Mammakarzinom", "Brustkrebs"),
    "C54.1": ("Endometriumkarzinom",),
    "C56": ("Ovarialkarzinom", "Eierstockkrebs"),
    "C61": ("Prostatakarzinom", "Prostatakrebs"),
    "C64": ("Nierenzellkarzinom", "Nierenkrebs"),
    "C67": ("Harnblasenkarzinom", "Urothelkarzinom der Harnblase"),
    "C81": ("Morbus Hodgkin",),
    "C83.3": ("DLBCL",),
    "C90.0": ("Plasmozytom", "Myelom"),
    "C91.1": ("CLL",),
    "C92.0": ("AML",),
    "C78.7": ("Lebermetastasen",),
    "C78.0": ("Lungenmetastasen",),
    "C79.5": ("Knochenmetastasen", "ossäre Metastasen"),
    "C79.3": ("Hirnmetastasen",),
    "I10": ("arterielle Hypertonie",),
    "E11": ("Typ-2-Diabetes",),
    "I48": ("VHF",),
    "I25.1": ("KHK",),
    "J44": ("COPD",),
}

# Groups for the non-L ATC rows: what the cohort generator draws them for.
SUPPORTIVE_USES = (
    "Antiemese",
    "Kortikoid",
    "G-CSF",
    "Folinsäure",
    "Uroprotektion",
    "Tumorlyse",
    "Knochenmetastasen",
    "PPI",
    "Thromboseprophylaxe",
    "Analgesie",
    "Opioid",
    "Laxans",
    "Antidiarrhoikum",
    "Anxiolytikum",
    "Hypnotikum",
    "PJP",
    "antiviral",
    "Antibiose",
)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


def _is_neoplasm(code: str) -> bool:
    return "C00" <= code[:3] <= "D48"


def icd10gm_rows(reference: Path) -> list[dict[str, object]]:
    """Chapter II plus secondary subtrees; terminality judged against the full GM 2022."""
    source = _read(reference / RKI / "icd10_todesursache.csv")
    codes = [r["code"] for r in source]
    by_code = {r["code"]: r for r in source}
    if len(by_code) != len(source):
        raise ValueError("duplicate codes in icd10_todesursache.csv")

    def terminal(code: str) -> bool:
        return not any(other != code and other.startswith(code) for other in codes)

    wanted: set[str] = {c for c in codes if _is_neoplasm(c)}
    for root in SECONDARY_ICD_ROOTS:
        if root not in by_code:
            raise ValueError(f"{root} is not an ICD-10-GM 2022 code")
        wanted.update(c for c in codes if c.startswith(root))
    for code in list(wanted):  # parents, so that every display can be composed from the table
        wanted.add(code[:3])
        if len(code) > 5:
            wanted.add(code[:5])
    for syn in ICD_SYNONYMS:
        if syn not in wanted:
            raise ValueError(f"synonym for {syn}, which is not in the table")
    rows = []
    for code in sorted(wanted):
        src = by_code[code]
        rows.append(
            {
                "code": code,
                "title": src["name"].strip(),
                "chapter": src["chapter"],
                "terminal": terminal(code),
                "synonyms": list(ICD_SYNONYMS.get(code, ())),
            }
        )
    return rows


def topography_rows(reference: Path) -> list[dict[str, object]]:
    source = _read(reference / RKI / "topographie.csv")
    return [
        {"code": r["code"], "title": r["name"].strip(), "paired": r["istPaarig"] == "1"}
        for r in sorted(source, key=lambda r: r["code"])
    ]


def morphology_rows(reference: Path) -> list[dict[str, object]]:
    """In situ and malignant codes with a term: what a tumour diagnosis can carry."""
    source = _read(reference / RKI / "morphologie.csv")
    rows: list[dict[str, object]] = []
    for r in source:
        if r["dignität"] in ("2", "3") and r["name"].strip():
            rows.append(
                {
                    "code": r["code"],
                    "title": r["name"].strip(),
                    "behaviour": r["dignität"],
                    "group": r["group"],
                }
            )
    return sorted(rows, key=lambda r: str(r["code"]))


def value_set_rows(reference: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for value_set, name in (
        ("T", "tnm_t"),
        ("N", "tnm_n"),
        ("M", "tnm_m"),
        ("UICC", "tnm_uicc"),
        ("G", "grading"),
    ):
        rows.extend(
            {"value_set": value_set, "code": r["code"], "display": r["name"].strip()}
            for r in _read(reference / RKI / f"{name}.csv")
        )
    return rows


def _draft_status(reference: Path, file: str) -> dict[int, str]:
    rows = _read(reference / DRAFTS / "verification_status.csv")
    return {int(r["row"]): r["status"] for r in rows if r["file"] == file}


def atc_rows(reference: Path) -> list[dict[str, object]]:
    """Chapter L from the RKI substance list, other chapters from the draft with its check status."""
    draft_file = "atc_supportive_comorbidity_draft.csv"
    draft = _read(reference / DRAFTS / draft_file)
    status = _draft_status(reference, draft_file)
    uses = {r["atc"]: r["use"] for r in draft}
    rows: dict[str, dict[str, object]] = {}
    for r in _read(reference / RKI / "substanz.csv"):
        code = r["Code"].strip()
        if not code:
            continue
        use = _clean_use(uses.get(code, ""))
        rows[code] = {
            "code": code,
            "display": r["Substanz"].strip(),
            "group": _group(use) if use else "tumour_therapy",
            "therapy_type": r["Therapieart"],
            "use": use,
            "verified": True,
            "evidence": "RKI substanz.csv (WIdO GKV-ATC 04/2023)",
        }
    for i, r in enumerate(draft, start=1):
        code = r["atc"]
        if code in rows:
            continue
        st = status[i]
        if st == "ATC_SEEN_IN_MII_TESTDATA":
            verified, evidence = True, "code and name as displayed in MII kds-testdata (secondary evidence)"
        elif st.startswith("VERIFIED"):
            verified, evidence = True, "RKI substanz.csv"
        else:
            verified, evidence = False, "project draft, from knowledge; not checked against BfArM/WIdO ATC"
        use = _clean_use(r["use"])
        rows[code] = {
            "code": code,
            "display": r["substance_de"],
            "group": _group(use),
            "therapy_type": "",
            "use": use,
            "verified": verified,
            "evidence": evidence,
        }
    return [rows[c] for c in sorted(rows)]


def _clean_use(use: str) -> str:
    """The draft's use label without its evidence remark (evidence has its own column)."""
    return re.sub(r"\s*\((MII testdata|RKI substanz\.csv)\)", "", use)


def _group(use: str) -> str:
    return "supportive" if any(use.startswith(u) for u in SUPPORTIVE_USES) else "comorbidity"


GENERATED: dict[str, tuple[tuple[str, ...], object]] = {
    "icd10gm": (("code", "title", "chapter", "terminal", "synonyms"), icd10gm_rows),
    "icdo3_topography": (("code", "title", "paired"), topography_rows),
    "icdo3_morphology": (("code", "title", "behaviour", "group"), morphology_rows),
    "value_sets": (("value_set", "code", "display"), value_set_rows),
    "atc": (("code", "display", "group", "therapy_type", "use", "verified", "evidence"), atc_rows),
}


def render_all(reference: Path) -> dict[str, str]:
    """File name -> CSV text of every generated table."""
    manifest = load_manifest()
    out = {}
    for table, (fields, make) in GENERATED.items():
        rows: Iterable[dict[str, object]] = make(reference)  # type: ignore[operator]
        out[manifest["tables"][table]["file"]] = render_csv(manifest, table, fields, rows)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "reference"
    )
    parser.add_argument("--out", type=Path, default=data_dir())
    args = parser.parse_args(argv)
    for name, text in render_all(args.reference).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name} ({len(text.encode()):,} bytes)")


if __name__ == "__main__":
    main()
