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
    #: FHIR Condition.verificationStatus: provisional on a diagnostic stay before histology ("V.a.")
    verification: str = "confirmed"  # confirmed | provisional | refuted
    #: the tumour (Tumor.key) this diagnosis belongs to, for metastases and second primaries
    tumor_key: str | None = None


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
    as_needed: bool = False
    #: when no 4-slot scheme fits ("über 46 h", "alle 3 Wochen")
    frequency: str | None = None
    regimen: str | None = None  # regimen key of the catalogue (therapy drugs)
    cycle: int | None = None
    day: int | None = None
    intent: str | None = None  # curative | palliative | neoadjuvant | adjuvant | induction
    #: the prescribed dose per body measure behind `dose` (85 with per_unit "mg/m2": dose = 85 x BSA mg;
    #: "AUC": Calvert with the stay's Cockcroft-Gault GFR; "mg/kg"; "IE/m2": `unit` is then IE)
    per_dose: float | None = None
    per_unit: str | None = None


@dataclass
class Radiotherapy:
    target: str  # German target text ("Rektum", "Mamma links", "LWK 3")
    total_gy: float
    fraction_gy: float
    fractions: int
    start: date
    end: date
    intent: str | None = None
    ops: str | None = None
    #: a drug given alongside (radiochemotherapy: "Capecitabin", "Cisplatin")
    concurrent: str | None = None


@dataclass
class Vital:
    loinc: str
    name: str
    value: float
    unit: str
    when: date


@dataclass
class Marker:
    """A receptor / mutation status or IHC result (ER 90 % positive, HER2 negative, EGFR del19)."""

    name: str
    #: positive | negative | equivocal | mutated | wildtype | amplified; Ki-67: high | low
    result: str
    loinc: str | None = None
    value: float | None = None
    unit: str | None = None
    text: str | None = None  # "Exon-19-Deletion", "3+", "IRS 12"


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
    prefix: str  # c | p | yp | r (recurrence)
    t: str | None  # None: not staged by TNM (haematological entities)
    n: str | None
    m: str | None
    uicc: str | None  # UICC stage (clinical group for cTNM); None for C81-C96: their stage is in `stages`
    when: date
    staging: str = "UICC"
    key: str = "t1"
    #: per-axis prefixes where they differ from `prefix` (e.g. pT2 pN1 cM0)
    n_prefix: str | None = None
    m_prefix: str | None = None
    nodes: str | None = None  # "2/18" positive/examined
    l: str | None = None  # noqa: E741 - the TNM suffix is called L
    v: str | None = None
    pn: str | None = None
    r: str | None = None
    #: initial | current: the staging at first diagnosis (c, or p at primary surgery) or a later one
    #: (yp after neoadjuvant therapy, r at a recurrence)
    kind: str = "initial"
    #: entity-specific stages: ("Ann Arbor", "IIB"), ("Gleason", "3+4=7"), ("ISUP", "2"), ("FIGO", "IIIC"),
    #: ("ISS", "II"), ("Binet", "B"), ("ELN 2022", "günstig" | "intermediär" | "ungünstig")
    stages: list[tuple[str, str]] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    ecog: int | None = None
    status: str | None = (
        None  # new | complete_remission | partial_remission | stable | progression | recurrence
    )
    metastasis_sites: list[str] = field(default_factory=list)  # ICD C77-C79 codes
    #: False on a diagnostic stay before histology ("V.a."): morphology/grading are not known yet
    confirmed: bool = True


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
    #: further tumours known at this stay (an earlier second primary), besides `tumor`
    other_tumors: list[Tumor] = field(default_factory=list)
    radiotherapy: list[Radiotherapy] = field(default_factory=list)
    vitals: list[Vital] = field(default_factory=list)
    kind: str = "therapy"  # diagnostic | surgery | therapy | complication | palliative
    #: admitted for a cycle that was not given (counts too low): no therapy, `postpone_reason` says why
    postponed: bool = False
    postpone_reason: str | None = None  # leukocytes | neutrophils | platelets


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
    smoking: str | None = None  # never | former | current
    pack_years: float | None = None
    stays: list[Stay] = field(default_factory=list)

    @property
    def bsa(self) -> float:
        """Mosteller body surface area in m²."""
        return round((self.height_cm * self.weight_kg / 3600) ** 0.5, 2)
