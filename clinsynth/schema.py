"""The extraction schema (design §4): the one contract for gold labels, prompts, guided decoding,
parsing, scoring and FHIR export.

Codes are checked by pattern here (so the JSON Schema can steer guided decoding without a
14,000-value enum) and by catalogue on request: `model_validate(data, context={"catalog": cat})`
or `catalogue_issues(extraction, cat)`. Every fact carries an assertion, so "kein Hinweis auf
Lebermetastasen" is a negated fact, never a present one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Assertion = Literal["present", "negated", "historical", "suspected"]
DiagnosisRole = Literal["main", "secondary"]
TNMPrefix = Literal["c", "p", "yp", "r", "a"]
Laterality = Literal["L", "R", "B", "M", "U"]
MedicationContext = Literal["discharge", "inpatient", "admission", "therapy"]

# the labels of a letter recipe (clinsynth.sampling.recipe) and of its dataset rows
#: the kind of a fact: one per list of ClinicalExtraction, and its tumour
FactKind = Literal["diagnosis", "procedure", "medication", "lab", "tumor"]
#: patient-level dataset split
Split = Literal["train", "val", "test"]
LetterType = Literal["Entlassungsbrief", "Arztbrief", "Kurzarztbrief", "Verlegungsbrief"]
#: the section keys a letter can have, in letter order
LetterSection = Literal["diagnosen", "tumor", "anamnese", "befunde", "verlauf", "medikation", "epikrise"]

# patterns as in the terminology tables (JSON Schema dialect: no look-arounds)
ICD10GM = r"^[A-Z][0-9]{2}(\.[0-9]{1,2})?$"
OPS = r"^[1-9]-[0-9]{2}([0-9a-z](\.[0-9a-z]{1,2})?)?$"
ATC = r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$"
LOINC = r"^[0-9]{1,7}-[0-9]$"
ICDO3_MORPHOLOGY = r"^[89][0-9]{3}/[0-9]$"
ICDO3_TOPOGRAPHY = r"^C[0-9]{2}(\.[0-9])?$"
ISO_DATE = r"^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?$"

Code = Annotated[str, Field(max_length=16)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Fact(_Model):
    assertion: Assertion = "present"


class Diagnosis(Fact):
    text: str = Field(min_length=1)
    icd10gm: Code | None = Field(default=None, pattern=ICD10GM)
    role: DiagnosisRole | None = None
    date: str | None = Field(default=None, pattern=ISO_DATE)


class TNM(_Model):
    prefix: TNMPrefix | None = None
    t: str | None = Field(default=None, pattern=r"^T([0-4][a-d]?[0-9]?|is|X|a)(\(m\)|\(\d+\))?$")
    n: str | None = Field(default=None, pattern=r"^N([0-3][a-c]?|X)(\(\d+/\d+\))?$")
    m: str | None = Field(default=None, pattern=r"^M([01][a-d]?|X)$")


class Marker(_Model):
    name: str = Field(min_length=1)
    loinc: Code | None = Field(default=None, pattern=LOINC)
    value: float | None = None
    unit: str | None = None


class Tumor(Fact):
    topography: Code | None = Field(default=None, pattern=ICDO3_TOPOGRAPHY)
    morphology: Code | None = Field(default=None, pattern=ICDO3_MORPHOLOGY)
    grading: str | None = Field(default=None, pattern=r"^(G[1-4X]|[1-4X]|L|M|H|B)$")
    tnm: TNM | None = None
    uicc_stage: str | None = Field(default=None, pattern=r"^(0|0a|0is|I{1,3}[ABC]?[1-3]?|IV[ABC]?)$")
    laterality: Laterality | None = None
    markers: list[Marker] = Field(default_factory=list)
    ecog: int | None = Field(default=None, ge=0, le=5)


class Procedure(Fact):
    text: str = Field(min_length=1)
    ops: Code | None = Field(default=None, pattern=OPS)
    date: str | None = Field(default=None, pattern=ISO_DATE)


class Medication(Fact):
    name: str = Field(min_length=1)
    atc: Code | None = Field(default=None, pattern=ATC)
    dose: float | None = Field(default=None, ge=0)
    unit: str | None = None
    #: morning, noon, evening, night (1-0-1-0); halves allowed
    schedule: list[float] | None = Field(default=None, min_length=4, max_length=4)
    frequency: str | None = None
    route: str | None = None
    context: MedicationContext | None = None


class Lab(Fact):
    name: str = Field(min_length=1)
    loinc: Code | None = Field(default=None, pattern=LOINC)
    value: float | None = None
    value_text: str | None = None
    unit: str | None = None
    date: str | None = Field(default=None, pattern=ISO_DATE)


class ClinicalExtraction(_Model):
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    tumor: Tumor | None = None
    procedures: list[Procedure] = Field(default_factory=list)
    medications: list[Medication] = Field(default_factory=list)
    labs: list[Lab] = Field(default_factory=list)

    @field_validator("diagnoses", "procedures", "medications", "labs", mode="after")
    @classmethod
    def _in_catalogue(cls, facts: list[Any], info: ValidationInfo) -> list[Any]:
        """With context={"catalog": ...}: every code must be a valid catalogue code."""
        cat = (info.context or {}).get("catalog")
        if cat is not None:
            problems = [
                f"{info.field_name}[{i}]: {p}" for i, f in enumerate(facts) for p in _fact_issues(f, cat)
            ]
            if problems:
                raise ValueError("; ".join(problems))
        return facts


def _fact_issues(fact: Any, cat: Any) -> list[str]:
    checks = (("icd10gm", cat.icd10gm), ("ops", cat.ops), ("atc", cat.atc), ("loinc", cat.loinc))
    return [
        f"{attr} {getattr(fact, attr)!r} is not a valid {table.system.rsplit('/', 1)[-1]} code"
        for attr, table in checks
        if getattr(fact, attr, None) and not table.validate(getattr(fact, attr))
    ]


def catalogue_issues(extraction: ClinicalExtraction, cat: Any) -> list[str]:
    """Codes the catalogue does not hold (for reports; model outputs are scored, not rejected)."""
    out = []
    for field in ("diagnoses", "procedures", "medications", "labs"):
        for i, fact in enumerate(getattr(extraction, field)):
            out += [f"{field}[{i}]: {p}" for p in _fact_issues(fact, cat)]
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema for prompts and guided decoding (vLLM `guided_json`, OpenAI `response_format`)."""
    return ClinicalExtraction.model_json_schema()
