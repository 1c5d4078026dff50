"""The course a case gets: regimen by entity, stage, intent and receptor/mutation status.

Neoadjuvant therapy before surgery, adjuvant or definitive therapy after it, palliative
therapy for metastatic disease, and oral/hormonal therapy taken at home (never an inpatient
chemotherapy stay). Project content after German S3 guidelines; for synthetic data only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from clinsynth.cohort import clinic
from clinsynth.cohort.model import Tumor
from clinsynth.cohort.tumour import stage_rank, weighted


@dataclass
class Plan:
    """The course a case gets: what happens before and after surgery, and what is taken at home."""

    intent: str = "palliative"
    neo: str | None = None  # inpatient neoadjuvant regimen
    neo_cycles: int = 4
    neo_rt: tuple[str, float, int] | None = None
    neo_rt_drug: str | None = None
    surgery: bool = False
    surgery_code: str | None = None
    systemic: str | None = None  # inpatient regimen after surgery / without surgery
    systemic_intent: str = "palliative"
    rt: tuple[str, float, int] | None = None  # definitive / adjuvant RT (outpatient or with systemic)
    rt_drug: str | None = None
    home: list[tuple[str, str]] = field(default_factory=list)  # (outpatient regimen, intent)


def plan_course(rng: random.Random, entity: Any, tumor: Tumor, age: int, egfr: float) -> Plan:
    """Regimen by entity, stage, intent and receptor/mutation status (clinic's rules, written out)."""
    e, t = entity.key, tumor
    stage = t.uicc or ""
    m1 = (t.m or "M0").startswith("M1")
    mk = {x.name: x for x in t.markers}
    low_gfr = egfr < 60
    pl = Plan()

    def nocis(reg: str) -> str:
        return clinic.CISPLATIN_FREE.get(reg, reg) if low_gfr else reg

    stage_num = stage_rank(stage)
    if e in ("colon", "rectum"):
        if m1:
            ras_wt = mk.get("RAS") is not None and mk["RAS"].result == "wildtype"
            pl.systemic = (
                weighted(rng, [("folfiri_cetuximab", 6), ("mfolfox6", 4)])
                if ras_wt
                else weighted(rng, [("mfolfox6_bevacizumab", 6), ("folfiri", 2), ("mfolfox6", 2)])
            )
        else:
            pl.surgery = rng.random() < 0.92
            if e == "rectum" and stage_num >= 2 and pl.surgery:
                pl.neo_rt, pl.neo_rt_drug = clinic.RT_RECTUM, "Capecitabin"
            if stage_num == 3 and pl.surgery and (e == "colon" or rng.random() < 0.5):
                pl.systemic, pl.systemic_intent = (
                    weighted(rng, [("capox", 4), ("mfolfox6", 6)]),
                    "adjuvant",
                )
            elif e == "colon" and stage in ("IIB", "IIC") and rng.random() < 0.4:
                pl.systemic, pl.systemic_intent = "capox", "adjuvant"
    elif e == "breast":
        hr = any(mk[k].result == "positive" for k in ("ER", "PR") if k in mk)
        her2 = "HER2" in mk and mk["HER2"].result == "positive"
        endocrine = "tamoxifen" if age < 52 else "letrozol"
        if m1:
            if her2:
                pl.systemic = "trastuzumab_pertuzumab"
            elif hr:
                pl.home.append((weighted(rng, [("palbociclib_letrozol", 7), ("letrozol", 3)]), "palliative"))
            else:
                pl.systemic = "paclitaxel_weekly"
        else:
            pl.surgery = True
            if (her2 or not hr) and stage_num >= 2:
                pl.neo = "ec" if her2 else weighted(rng, [("ec", 5), ("ec_dd", 5)])
                if her2:
                    pl.systemic, pl.systemic_intent = "trastuzumab_pertuzumab", "adjuvant"
            elif her2:
                pl.systemic, pl.systemic_intent = "paclitaxel_trastuzumab", "adjuvant"
            elif stage_num >= 2 and rng.random() < 0.6:
                pl.systemic = weighted(rng, [("ec", 4), ("tac", 3), ("ec_dd", 3)])
                pl.systemic_intent = "adjuvant"
            if hr:
                pl.home.append((endocrine, "adjuvant"))
    elif clinic.is_sclc(e, t.morphology):
        # small-cell: platinum/etoposide (+ PD-L1 antibody in extensive disease), no resection at N2
        if m1:
            pl.systemic = weighted(
                rng, [("carboplatin_etoposid_atezolizumab", 5), ("carboplatin_etoposid_durvalumab", 3),
                      ("carboplatin_etoposid", 2)]
            )  # fmt: skip
        else:
            pl.systemic, pl.systemic_intent = nocis("cisplatin_etoposid"), "curative"
            pl.rt, pl.rt_drug = (
                clinic.RT_LUNG,
                "Cisplatin/Etoposid" if not low_gfr else "Carboplatin/Etoposid",
            )
    elif e == "lung":
        egfr_mut = "EGFR" in mk and mk["EGFR"].result == "mutated"
        alk = "ALK" in mk and mk["ALK"].result == "positive"
        pdl1 = mk["PD-L1"].value if "PD-L1" in mk and mk["PD-L1"].value is not None else 0.0
        if m1:
            if egfr_mut:
                pl.home.append(("osimertinib", "palliative"))
            elif alk:
                pl.home.append(("alectinib", "palliative"))
            elif pdl1 >= 50 and rng.random() < 0.6:
                pl.systemic = "pembrolizumab"
            elif t.morphology.startswith(("807", "805")):
                pl.systemic = "carboplatin_paclitaxel_pembrolizumab"
            else:
                pl.systemic = "carboplatin_pemetrexed_pembrolizumab"
        elif stage_num <= 2 or (stage == "IIIA" and rng.random() < 0.5):
            pl.surgery = True
            if stage != "IA1" and stage_num >= 2:
                if egfr_mut:
                    pl.home.append(("osimertinib", "adjuvant"))
                else:
                    pl.systemic, pl.systemic_intent = nocis("cisplatin_vinorelbin"), "adjuvant"
        else:
            pl.systemic, pl.systemic_intent = "carboplatin_paclitaxel", "curative"
            pl.rt, pl.rt_drug = clinic.RT_LUNG, "Carboplatin/Paclitaxel"
    elif e == "prostate":
        if m1:
            pl.home.append(("leuprorelin", "palliative"))
            choice = weighted(
                rng, [("enzalutamid", 35), ("abirateron_prednison", 35), ("docetaxel_prednison", 30)]
            )
            if choice == "docetaxel_prednison":
                pl.systemic = choice
            else:
                pl.home.append((choice, "palliative"))
        elif stage_num <= 2 and rng.random() < 0.65:
            pl.surgery = True
        else:
            pl.rt = clinic.RT_PROSTATE
            pl.home.append(("leuprorelin", "curative"))
    elif e == "pancreas":
        if not m1 and stage_num <= 2:
            pl.surgery = True
            if age < 76:
                pl.systemic, pl.systemic_intent = "mfolfirinox", "adjuvant"
        else:
            pl.systemic = "mfolfirinox" if age < 70 else "gemcitabin_nab_paclitaxel"
    elif e == "oesophagus" and t.morphology in clinic.SQUAMOUS_MORPHOLOGY:
        # squamous: neoadjuvant radiochemotherapy (CROSS), never FLOT
        if m1:
            pl.systemic = weighted(rng, [("carboplatin_paclitaxel", 6), ("nivolumab", 4)])
        else:
            pl.surgery = True
            if stage not in ("I", "IA"):
                pl.neo_rt, pl.neo_rt_drug = clinic.RT_OESOPHAGUS, "Carboplatin/Paclitaxel wöchentlich"
    elif e in ("stomach", "oesophagus"):
        if m1:
            pl.systemic = "nivolumab" if e == "oesophagus" and rng.random() < 0.4 else "flot"
        else:
            pl.surgery = True
            if stage not in ("I", "IA"):
                pl.neo = "flot"
    elif e == "bladder":
        if m1:
            pl.systemic = nocis("gemcitabin_cisplatin")
        else:
            pl.surgery = True
            pl.surgery_code = "5-573.4" if stage == "I" else "5-576"
            if stage_num >= 2 and not low_gfr:
                pl.neo = "gemcitabin_cisplatin"
    elif e == "kidney":
        if m1:  # RCC dosing: nivolumab 3 mg/kg + ipilimumab 1 mg/kg (melanoma: 1 + 3)
            pl.systemic = weighted(rng, [("nivolumab_ipilimumab_rcc", 6), ("nivolumab", 4)])
        else:
            pl.surgery = True
    elif e == "liver":
        if not m1 and stage_num <= 2:
            pl.surgery = True
        else:
            pl.systemic = "atezolizumab_bevacizumab"
    elif e == "melanoma":
        braf = "BRAF" in mk and mk["BRAF"].result == "mutated"
        if m1:
            if braf and rng.random() < 0.5:
                pl.home.append(("dabrafenib_trametinib", "palliative"))
            else:
                pl.systemic = weighted(rng, [("nivolumab_ipilimumab", 6), ("nivolumab", 4)])
        else:
            pl.surgery = True
            if stage_num >= 3:
                if braf and rng.random() < 0.4:
                    pl.home.append(("dabrafenib_trametinib", "adjuvant"))
                else:
                    pl.systemic, pl.systemic_intent = "nivolumab", "adjuvant"
    elif e == "head_neck":
        if m1:
            pl.systemic = "nivolumab"
        else:
            pl.systemic, pl.systemic_intent = nocis("cisplatin_weekly_rt"), "curative"
            pl.rt = clinic.RT_HEAD_NECK
            pl.rt_drug = "Cisplatin" if pl.systemic == "cisplatin_weekly_rt" else "Cetuximab"
    elif e in ("ovary", "endometrium"):
        if m1:
            pl.systemic = "carboplatin_paclitaxel"
        else:
            pl.surgery = True
            if (e == "ovary" and stage not in ("IA", "IB")) or (e == "endometrium" and stage_num >= 3):
                pl.systemic, pl.systemic_intent = "carboplatin_paclitaxel", "adjuvant"
    elif e == "dlbcl":
        pl.systemic, pl.systemic_intent = "r_chop_21", "curative"
    elif e == "hodgkin":
        pl.systemic, pl.systemic_intent = "abvd", "curative"
    elif e == "myeloma":
        pl.systemic, pl.systemic_intent = "vrd", "induction"
    elif e == "aml":
        pl.systemic, pl.systemic_intent = "aml_7plus3", "induction"
    elif e == "cll" and dict(t.stages).get("Binet") in ("B", "C"):
        pl.home.append(("ibrutinib", "palliative"))
    if pl.surgery and pl.surgery_code is None and entity.surgeries:
        # the resection itself; an axillary lymph node excision only goes with a breast operation
        pl.surgery_code = weighted(rng, [(code, w) for code, w in entity.surgeries if code != clinic.AXILLA])
    if not entity.surgeries:
        pl.surgery = False
    if e == "breast" and pl.surgery_code == "5-870.0":
        pl.rt = clinic.RT_BREAST
    pl.intent = "curative" if not m1 and e not in ("cll",) else "palliative"
    if pl.systemic and m1:
        pl.systemic_intent = "palliative"
    return pl
