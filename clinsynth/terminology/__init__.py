"""Curated terminology of clinsynth: code systems, tumour entities, regimens, labs.

``load_catalog()`` returns everything the cohort generator samples from and the
extractor evaluation validates against; see README.md in this folder for sources,
licences and what is verified.
"""

from clinsynth.terminology.catalog import (
    Catalog,
    Comorbidity,
    DrugUse,
    Entity,
    LabTest,
    Regimen,
    RegimenDrug,
    StageRule,
    load_catalog,
    tnm_value,
)
from clinsynth.terminology.tables import CodeTable, Concept

__all__ = [
    "Catalog",
    "CodeTable",
    "Comorbidity",
    "Concept",
    "DrugUse",
    "Entity",
    "LabTest",
    "Regimen",
    "RegimenDrug",
    "StageRule",
    "load_catalog",
    "tnm_value",
]
