"""The extraction schema v2 (design §4): the one contract for gold labels, prompts, guided decoding,
parsing, scoring and FHIR export.

Codes are checked by pattern here (so the JSON Schema can steer guided decoding without a
14,000-value enum) and by catalogue on request: `model_validate(data, context={"catalog": cat})`
or `catalogue_issues(extraction, cat)`. A code may sit at any level the catalogue holds: gold
carries a code only at the specificity the letter supports ("Harnblasenkarzinom" → C67, not
C67.2). Codes are stored bare; the ICD dagger/asterisk/exclamation mark has its own field.
Every fact carries an assertion, so "kein Hinweis auf Lebermetastasen" is a negated fact,
never a present one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

Assertion = Literal["present", "negated", "historical", "suspected"]
DiagnosisRole = Literal["main", "secondary"]
TNMPrefix = Literal["c", "p", "yp", "r", "a", "u"]
Laterality = Literal["L", "R", "B", "M", "U"]
MedicationContext = Literal["discharge", "inpatient", "admission", "therapy", "allergy"]
StayType = Literal["inpatient", "day_case", "transfer", "outpatient"]
Sex = Literal["female", "male", "diverse", "unknown"]
#: which staging a tumour record states: at first diagnosis or now (after therapy, at relapse)
StagingKind = Literal["initial", "current"]
TumorStatus = Literal[
    "new", "complete_remission", "partial_remission", "stable", "progression", "recurrence", "mixed"
]
StageSystem = Literal[
    "UICC",
    "Ann Arbor",
    "ISS",
    "R-ISS",
    "Binet",
    "Rai",
    "FIGO",
    "Gleason",
    "ISUP",
    "ELN",
    "Durie-Salmon",
    "other",
]
MarkerResult = Literal["positive", "negative", "equivocal", "mutated", "wildtype", "amplified"]
LabFlag = Literal["high", "low", "critical_high", "critical_low", "abnormal"]
RiskKind = Literal["smoking", "alcohol", "obesity", "family_history", "occupational", "other"]
TherapyIntent = Literal["curative", "palliative", "neoadjuvant", "adjuvant", "consolidation", "maintenance"]

# the labels of a letter recipe (clinsynth.sampling.recipe) and of its dataset rows
#: the kind of a fact: one per list of ClinicalExtraction
FactKind = Literal[
    "diagnosis", "tumor", "procedure", "radiotherapy", "medication", "lab", "vital", "risk_factor"
]
#: patient-level dataset split
Split = Literal["train", "val", "test"]
LetterType = Literal["Entlassungsbrief", "Arztbrief", "Kurzarztbrief", "Verlegungsbrief"]
#: the section keys a letter can have, in their usual order (a letter may reorder or merge them)
LetterSection = Literal[
    "diagnosen",
    "tumor",
    "anamnese",
    "aufnahmebefund",
    "befunde",
    "verlauf",
    "medikation",
    "epikrise",
    "procedere",
]

# patterns as in the terminology tables (JSON Schema dialect: no look-arounds)
ICD10GM = r"^[A-Z][0-9]{2}(\.[0-9]{1,2})?$"
OPS = r"^[1-9]-[0-9]{2}([0-9a-z](\.[0-9a-z]{1,2})?)?$"
ATC = r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$"
LOINC = r"^[0-9]{1,7}-[0-9]$"
ICDO3_MORPHOLOGY = r"^[89][0-9]{3}/[0-9]$"
ICDO3_TOPOGRAPHY = r"^C[0-9]{2}(\.[0-9])?$"
ISO_DATE = r"^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$"
T_VALUE = r"^T([0-4][a-d]?[0-9]?|is|X|a)(\(m\)|\(\d+\))?$"
N_VALUE = r"^N([0-3][a-c]?|X)(mi)?$"
M_VALUE = r"^M([01][a-d]?|X)$"

Code = Annotated[str, Field(max_length=16)]
Date = Annotated[str, Field(pattern=ISO_DATE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Fact(_Model):
    assertion: Assertion = "present"


class Encounter(_Model):
    admission: Date | None = None
    discharge: Date | None = None
    type: StayType | None = None
    department: str | None = None
    letter_type: LetterType | None = None


class Patient(_Model):
    """PHI: synthetic in training letters; in real use it never leaves the run folder (design §10)."""

    sex: Sex | None = None
    birth_date: Date | None = None
    name: str | None = None


class Diagnosis(Fact):
    text: str = Field(min_length=1)
    icd10gm: Code | None = Field(default=None, pattern=ICD10GM)
    #: the ICD-10-GM mark written after the code: † (aetiology), * (manifestation), ! (additional)
    icd10gm_mark: Literal["†", "*", "!"] | None = None
    role: DiagnosisRole | None = None
    #: first-diagnosis date ("ED 03/2024")
    date: Date | None = None


class TAxis(_Model):
    prefix: TNMPrefix | None = None
    value: str = Field(pattern=T_VALUE)


class NAxis(_Model):
    prefix: TNMPrefix | None = None
    value: str = Field(pattern=N_VALUE)
    #: positive/examined lymph nodes as written: "2/18"
    nodes: str | None = Field(default=None, pattern=r"^[0-9]{1,3}/[0-9]{1,3}$")


class MAxis(_Model):
    prefix: TNMPrefix | None = None
    value: str = Field(pattern=M_VALUE)


class TNM(_Model):
    t: TAxis | None = None
    n: NAxis | None = None
    m: MAxis | None = None
    l: Literal["L0", "L1", "LX"] | None = None  # noqa: E741 - the TNM suffix is called L
    v: Literal["V0", "V1", "V2", "VX"] | None = None
    pn: Literal["Pn0", "Pn1", "PnX"] | None = None
    r: Literal["R0", "R1", "R2", "RX"] | None = None


class Stage(_Model):
    """An entity-specific stage: Ann Arbor IIIB, ISS II, Binet A, FIGO IIIC1, Gleason 3+4=7, ISUP 2."""

    system: StageSystem
    value: str = Field(min_length=1, max_length=16)


class Marker(_Model):
    """A tumour marker value (CEA 3.1 ng/mL) or a receptor/mutation status (ER positive 90 %, EGFR del19)."""

    name: str = Field(min_length=1)
    loinc: Code | None = Field(default=None, pattern=LOINC)
    value: float | None = None
    unit: str | None = None
    result: MarkerResult | None = None
    #: the finding as written when it is not a number: "Exon-19-Deletion", "3+", "IRS 12"
    text: str | None = None


class Tumor(Fact):
    entity: str = Field(min_length=1)
    icd10gm: Code | None = Field(default=None, pattern=ICD10GM)
    topography: Code | None = Field(default=None, pattern=ICDO3_TOPOGRAPHY)
    morphology: Code | None = Field(default=None, pattern=ICDO3_MORPHOLOGY)
    histology: str | None = None
    grading: str | None = Field(default=None, pattern=r"^(G[1-4X]|GB|L|M|H|B)$")
    tnm: TNM | None = None
    #: the date the staging refers to, and whether it is the staging at first diagnosis or now
    staging: StagingKind | None = None
    date: Date | None = None
    uicc_stage: str | None = Field(default=None, pattern=r"^(0|0a|0is|I{1,3}[ABC]?[1-3]?|IV[ABC]?)$")
    stages: list[Stage] = Field(default_factory=list)
    laterality: Laterality | None = None
    markers: list[Marker] = Field(default_factory=list)
    ecog: int | None = Field(default=None, ge=0, le=5)
    karnofsky: int | None = Field(default=None, ge=0, le=100)
    status: TumorStatus | None = None


class Procedure(Fact):
    text: str = Field(min_length=1)
    ops: Code | None = Field(default=None, pattern=OPS)
    date: Date | None = None


class Radiotherapy(Fact):
    target: str = Field(min_length=1)
    total_gy: float | None = Field(default=None, gt=0)
    fraction_gy: float | None = Field(default=None, gt=0)
    fractions: int | None = Field(default=None, ge=1)
    start: Date | None = None
    end: Date | None = None
    intent: TherapyIntent | None = None


class Medication(Fact):
    name: str = Field(min_length=1)
    atc: Code | None = Field(default=None, pattern=ATC)
    dose: float | None = Field(default=None, ge=0)
    #: as UCUM-like text: mg, mg/m2, mg/kg, AUC, IE, µg, g, ml
    unit: str | None = None
    #: morning, noon, evening, night (1-0-1-0); halves allowed
    schedule: list[float] | None = Field(default=None, min_length=4, max_length=4)
    #: when no 4-slot scheme fits: "alle 3 Wochen", "über 46 h", "3x wöchentlich"
    frequency: str | None = None
    as_needed: bool | None = None
    route: str | None = None
    context: MedicationContext | None = None
    regimen: str | None = None
    cycle: int | None = Field(default=None, ge=1)
    day: int | None = Field(default=None, ge=1)
    intent: TherapyIntent | None = None


class _Measurement(Fact):
    """A named measured value: labs and vitals share it (one list each in the extraction)."""

    name: str = Field(min_length=1)
    loinc: Code | None = Field(default=None, pattern=LOINC)
    value: float | None = None
    value_text: str | None = None
    unit: str | None = None
    date: Date | None = None


class Lab(_Measurement):
    flag: LabFlag | None = None


class Vital(_Measurement):
    """Blood pressure is two facts (systolic, diastolic) so that each value is a number."""


class RiskFactor(Fact):
    """negated: "Nichtraucher"; historical: "Ex-Raucher, 30 py, Nikotinkarenz seit 2015"."""

    kind: RiskKind
    text: str = Field(min_length=1)
    pack_years: float | None = Field(default=None, ge=0)


class ClinicalExtraction(_Model):
    encounter: Encounter | None = None
    patient: Patient | None = None
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    tumors: list[Tumor] = Field(default_factory=list)
    procedures: list[Procedure] = Field(default_factory=list)
    radiotherapy: list[Radiotherapy] = Field(default_factory=list)
    medications: list[Medication] = Field(default_factory=list)
    labs: list[Lab] = Field(default_factory=list)
    vitals: list[Vital] = Field(default_factory=list)
    risk_factors: list[RiskFactor] = Field(default_factory=list)

    @model_validator(mode="after")
    def _in_catalogue(self, info: ValidationInfo) -> ClinicalExtraction:
        """With context={"catalog": ...}: every code must be a code the catalogue holds (any level)."""
        cat = (info.context or {}).get("catalog")
        if cat is not None:
            problems = catalogue_issues(self, cat)
            if problems:
                raise ValueError("; ".join(problems))
        return self


#: the lists of ClinicalExtraction by fact kind, in schema order
LISTS: dict[FactKind, str] = {
    "diagnosis": "diagnoses",
    "tumor": "tumors",
    "procedure": "procedures",
    "radiotherapy": "radiotherapy",
    "medication": "medications",
    "lab": "labs",
    "vital": "vitals",
    "risk_factor": "risk_factors",
}


def _code_tables(cat: Any) -> tuple[tuple[str, Any], ...]:
    return (
        ("icd10gm", cat.icd10gm),
        ("ops", cat.ops),
        ("atc", cat.atc),
        ("loinc", cat.loinc),
        ("topography", cat.icdo3_topography),
        ("morphology", cat.icdo3_morphology),
    )


def _fact_issues(fact: Any, cat: Any) -> list[str]:
    out = []
    for attr, table in _code_tables(cat):
        code = getattr(fact, attr, None)
        if code and table.lookup(code) is None:
            out.append(f"{attr} {code!r} is not a {table.system.rsplit('/', 1)[-1]} code")
    for i, marker in enumerate(getattr(fact, "markers", None) or ()):
        if marker.loinc and cat.loinc.lookup(marker.loinc) is None:
            out.append(f"markers[{i}].loinc {marker.loinc!r} is not a loinc code")
    return out


def catalogue_issues(extraction: ClinicalExtraction, cat: Any) -> list[str]:
    """Codes the catalogue does not hold (for reports; model outputs are scored, not rejected)."""
    out = []
    for field in LISTS.values():
        for i, fact in enumerate(getattr(extraction, field)):
            out += [f"{field}[{i}]: {p}" for p in _fact_issues(fact, cat)]
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema for prompts and guided decoding (vLLM `guided_json`, OpenAI `response_format`)."""
    return ClinicalExtraction.model_json_schema()
