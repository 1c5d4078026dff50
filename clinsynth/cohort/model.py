"""A patient's course before it becomes FHIR: the facts the cohort guarantees (and the round trip checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass
class Dx:
    icd: str
    display: str
    role: str  # main | secondary
    onset: date
    primary_tumor: bool = False
    topography: str | None = None
    laterality: str | None = None


@dataclass
class Proc:
    ops: str
    display: str
    when: date
    kind: str = "other"  # operation | chemotherapy | radiotherapy | diagnostic | port | other


@dataclass
class Med:
    atc: str
    name: str
    dose: float
    unit: str
    route: str
    start: date
    end: date | None = None
    context: str = "inpatient"  # inpatient (given during the stay) | discharge (continue at home)
    #: morning-noon-evening-night; whole tablets for discharge drugs, the catalogue's for supportive ones
    schedule: tuple[float, float, float, float] | None = None
    therapy: bool = False  # part of the systemic tumour therapy


@dataclass
class Lab:
    loinc: str
    name: str
    value: float
    unit: str
    when: date
    low: float | None = None
    high: float | None = None
    marker: bool = False


@dataclass
class Tumor:
    entity: str
    morphology: str
    morphology_display: str
    topography: str
    grading: str
    prefix: str  # c | p | yp
    t: str | None  # None: not staged by TNM (haematological entities)
    n: str | None
    m: str | None
    uicc: str | None  # UICC stage; for other systems see `staging`
    when: date
    staging: str = "UICC"


@dataclass
class Stay:
    key: str
    start: date
    end: date
    department_code: str
    department: str
    diagnoses: list[Dx] = field(default_factory=list)
    procedures: list[Proc] = field(default_factory=list)
    medications: list[Med] = field(default_factory=list)
    labs: list[Lab] = field(default_factory=list)
    tumor: Tumor | None = None


@dataclass
class Person:
    key: str
    sex: str  # female | male
    birth: date
    family: str
    given: str
    city: str
    postal_code: str
    height_cm: float
    weight_kg: float
    stays: list[Stay] = field(default_factory=list)

    @property
    def bsa(self) -> float:
        """Mosteller body surface area in m²."""
        return round((self.height_cm * self.weight_kg / 3600) ** 0.5, 2)
