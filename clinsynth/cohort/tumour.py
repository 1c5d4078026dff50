"""What the work-up finds about a tumour: metastasis sites that make its M category, receptor and
mutation markers, entity-specific stages (Gleason/ISUP, FIGO, Ann Arbor, ISS, Binet, ELN), lymph nodes.

Project content from UICC 8 and German practice; for synthetic data only.
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

from clinsynth.cohort import clinic
from clinsynth.cohort.model import Marker

T = TypeVar("T")

#: LOINC of the receptor results that have MII profiles (ER, PR, HER2 status)
LOINC_ER, LOINC_PR, LOINC_HER2 = "40556-3", "85339-0", "48676-1"


def weighted(rng: random.Random, pairs: list[tuple[T, float]]) -> T:
    """One item by weight (the draws of random.choices with weights)."""
    items, weights = zip(*pairs, strict=True)
    return rng.choices(items, weights=weights, k=1)[0]


def stage_rank(stage: str) -> int:
    """I -> 1, II -> 2, III -> 3, IV -> 4 (the roman numeral of a UICC/FIGO stage)."""
    for roman, rank in (("IV", 4), ("III", 3), ("II", 2), ("I", 1)):
        if stage.startswith(roman):
            return rank
    return 0


def examined_nodes(rng: random.Random, entity: str, positive: int) -> int:
    """Lymph nodes examined: sentinel/axillary few in breast and melanoma, >= 12 in a GI resection."""
    if entity in ("breast", "melanoma"):
        return positive + rng.randint(1, 12)
    return max(positive + rng.randint(3, 12), rng.randint(12, 26))


def positive_nodes(rng: random.Random, n: str) -> int:
    v = n.removeprefix("N")
    if v.startswith("0") or v.startswith("X"):
        return 0
    if v.startswith("1"):
        return rng.randint(1, 3)
    if v.startswith("2"):
        return rng.randint(4, 9)
    return rng.randint(10, 16)


def entity_stages(rng: random.Random, entity: str, stage: str | None) -> list[tuple[str, str]]:
    """Entity-specific stages beside UICC: Gleason/ISUP, FIGO, Ann Arbor, ISS, Binet, ELN risk."""
    if entity == "prostate":
        isup = weighted(
            rng,
            [(1, 2), (2, 4), (3, 3), (4, 2), (5, 2)]
            if stage_rank(stage or "") >= 3
            else [(1, 5), (2, 5), (3, 2), (4, 1)],
        )
        gleason = {
            1: "3+3=6",
            2: "3+4=7",
            3: "4+3=7",
            4: rng.choice(("4+4=8", "3+5=8")),
            5: rng.choice(("4+5=9", "5+4=9")),
        }
        return [("Gleason", gleason[isup]), ("ISUP", str(isup))]
    if entity in ("ovary", "endometrium") and stage:
        return [("FIGO", stage)]
    if entity in ("dlbcl", "hodgkin") and stage:
        return [("Ann Arbor", stage + rng.choice("AAB"))]
    if entity == "myeloma" and stage:
        return [("ISS", stage)]
    if entity == "cll" and stage:
        return [("Binet", stage)]
    if entity == "aml":
        return [("ELN 2022", weighted(rng, [("günstig", 3), ("intermediär", 3), ("ungünstig", 4)]))]
    return []


def tumour_markers(
    rng: random.Random, entity: str, morph: str, stage: str | None, m: str | None
) -> list[Marker]:
    """Receptor, mutation and IHC status the entity's work-up reports."""
    out: list[Marker] = []
    m1 = (m or "").startswith("M1")
    if entity == "breast":
        subtype = weighted(rng, [("luminal", 70), ("her2", 15), ("tnbc", 15)])
        hr = subtype == "luminal" or (subtype == "her2" and rng.random() < 0.6)
        er = rng.choice((60, 70, 80, 90, 95, 100)) if hr else 0
        pr = rng.choice((0, 10, 30, 50, 70, 90)) if hr else 0
        out.append(Marker("ER", "positive" if er >= 1 else "negative", LOINC_ER, float(er), "%"))
        out.append(Marker("PR", "positive" if pr >= 1 else "negative", LOINC_PR, float(pr), "%"))
        if subtype == "her2":
            out.append(
                Marker("HER2", "positive", LOINC_HER2, None, None, rng.choice(("3+", "2+, ISH positiv")))
            )
        else:
            out.append(
                Marker("HER2", "negative", LOINC_HER2, None, None, rng.choice(("0", "1+", "2+, ISH negativ")))
            )
        ki = rng.choice((5, 10, 15, 20, 30, 40, 60)) if subtype == "luminal" else rng.choice((30, 40, 60, 80))
        out.append(Marker("Ki-67", "high" if ki >= 20 else "low", None, float(ki), "%"))
    elif entity == "lung" and clinic.is_sclc(entity, morph):
        pass  # small-cell: no driver panel, no PD-L1-driven therapy
    elif entity == "lung":
        adeno = not morph.startswith(("807", "805", "804"))
        if adeno:
            egfr = rng.random() < 0.15
            out.append(
                Marker(
                    "EGFR",
                    "mutated" if egfr else "wildtype",
                    None,
                    None,
                    None,
                    rng.choice(("Exon-19-Deletion", "L858R")) if egfr else None,
                )
            )
            alk = not egfr and rng.random() < 0.05
            out.append(Marker("ALK", "positive" if alk else "negative"))
            kras = not egfr and not alk and rng.random() < 0.3
            out.append(
                Marker(
                    "KRAS",
                    "mutated" if kras else "wildtype",
                    None,
                    None,
                    None,
                    rng.choice(("G12C", "G12V", "G12D")) if kras else None,
                )
            )
        tps = float(weighted(rng, [(0, 3), (5, 2), (20, 2), (40, 1), (60, 2), (80, 1)]))
        out.append(Marker("PD-L1", "positive" if tps >= 1 else "negative", None, tps, "%", f"TPS {tps:g} %"))
    elif entity in ("colon", "rectum"):
        msi = rng.random() < 0.12 and not m1
        out.append(
            Marker("MSI", "positive" if msi else "negative", None, None, None, "MSI-H" if msi else "MSS")
        )
        if m1:
            ras = rng.random() < 0.45
            out.append(
                Marker(
                    "RAS",
                    "mutated" if ras else "wildtype",
                    None,
                    None,
                    None,
                    rng.choice(("KRAS G12D", "KRAS G12V", "NRAS Q61K")) if ras else None,
                )
            )
            braf = not ras and rng.random() < 0.12
            out.append(
                Marker("BRAF", "mutated" if braf else "wildtype", None, None, None, "V600E" if braf else None)
            )
    elif entity == "melanoma" and stage_rank(stage or "") >= 3:
        braf = rng.random() < 0.45
        out.append(
            Marker("BRAF", "mutated" if braf else "wildtype", None, None, None, "V600E" if braf else None)
        )
    elif entity in ("stomach", "oesophagus") and m1:
        her2 = rng.random() < 0.15
        out.append(
            Marker("HER2", "positive" if her2 else "negative", LOINC_HER2, None, None, "3+" if her2 else "1+")
        )
    elif entity == "dlbcl":
        out.append(Marker("CD20", "positive"))
    elif entity == "hodgkin":
        out.append(Marker("CD30", "positive"))
    elif entity == "aml":
        npm1 = rng.random() < 0.3
        out.append(Marker("NPM1", "mutated" if npm1 else "wildtype"))
        flt3 = rng.random() < 0.25
        out.append(Marker("FLT3-ITD", "mutated" if flt3 else "wildtype"))
    return out


def metastasis_sites(rng: random.Random, entity: Any, m: str) -> list[str]:
    """Metastasis sites (ICD C77-C79) that make exactly the drawn M category."""
    if m == "0":
        return []
    sites = dict(entity.metastasis_sites)

    def pick(allowed: set[str] | None = None, exclude: set[str] | frozenset[str] = frozenset()) -> str:
        pool = [(c, w) for c, w in sites.items() if (allowed is None or c in allowed) and c not in exclude]
        return weighted(rng, pool)

    e = entity.key
    out: list[str] = []
    if e == "lung":
        thoracic = set(clinic.PLEURA_CONTRALATERAL)
        if m == "1a":
            out = [pick(thoracic)]
        elif m == "1b":
            out = [pick(exclude=thoracic)]
        else:
            first = pick(exclude=thoracic)
            out = [first, pick(exclude=thoracic | {first})]
    elif e in ("colon", "rectum"):
        peri = {clinic.PERITONEUM}
        if m == "1a":
            out = [pick(exclude=peri)]
        elif m == "1b":
            first = pick(exclude=peri)
            out = [first, pick(exclude=peri | {first})]
        else:
            out = [clinic.PERITONEUM] + ([pick(exclude=peri)] if rng.random() < 0.4 else [])
    elif e == "prostate":
        lymph = {c for c in sites if c.startswith("C77")}
        if m == "1a":
            out = [pick(lymph)]
        elif m == "1b":
            out = [clinic.BONE] + ([pick(lymph)] if rng.random() < 0.3 else [])
        else:
            out = [pick(exclude=lymph | {clinic.BONE})] + ([clinic.BONE] if rng.random() < 0.6 else [])
    elif e == "bladder":
        lymph = {c for c in sites if c.startswith("C77")}
        out = [pick(lymph)] if m == "1a" else [pick(exclude=lymph)]
    elif e == "melanoma":
        soft = {c for c in sites if c.startswith("C77")} | {"C79.2"}
        if m == "1a":
            out = [pick(soft & set(sites))]
        elif m == "1b":
            out = [clinic.LUNG]
        elif m == "1c":
            out = [pick(exclude=soft | {clinic.LUNG, clinic.BRAIN})]
        else:
            out = [clinic.BRAIN] + ([pick(exclude={clinic.BRAIN})] if rng.random() < 0.5 else [])
    else:
        first = pick()
        out = [first] + ([pick(exclude={first})] if len(sites) > 1 and rng.random() < 0.35 else [])
    return out
