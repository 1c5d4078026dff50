"""Renal function as labs report it: creatinine and CKD-EPI eGFR that agree; Cockcroft-Gault for AUC."""

from __future__ import annotations

from datetime import date

from clinsynth.cohort.model import Person


def ckd_epi(creatinine: float, age: int, sex: str) -> float:
    """eGFR (ml/min/1.73 m²) by CKD-EPI 2021 from serum creatinine in mg/dl."""
    k, a = (0.7, -0.241) if sex == "female" else (0.9, -0.302)
    x = creatinine / k
    return 142 * min(x, 1) ** a * max(x, 1) ** -1.2 * 0.9938**age * (1.012 if sex == "female" else 1.0)


def creatinine_for_egfr(egfr: float, age: int, sex: str) -> float:
    """The creatinine (mg/dl, 2 decimals) that CKD-EPI 2021 turns into this eGFR."""
    k, a = (0.7, -0.241) if sex == "female" else (0.9, -0.302)
    base = 142 * 0.9938**age * (1.012 if sex == "female" else 1.0)
    r = egfr / base
    x = r ** (1 / a) if r >= 1 else r ** (1 / -1.2)
    return round(max(0.3, x * k), 2)


def cockcroft_gault(p: Person, when: date, creatinine: float) -> float:
    """Creatinine clearance (ml/min) for the Calvert formula, capped at 125 as usual."""
    age = (when - p.birth).days // 365
    gfr = (140 - age) * p.weight_kg / (72 * creatinine) * (0.85 if p.sex == "female" else 1.0)
    return round(min(gfr, 125.0), 1)
