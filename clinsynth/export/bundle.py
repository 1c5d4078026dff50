"""One extraction -> one FHIR R4 transaction Bundle in MII core data set profiles.

Identity: a letter is one document about one patient and one stay, and nothing in it links it
to another letter, so every document gets its own Patient and Encounter; their identifiers
(types MR and VN) hold the document id. Every resource id is uuid5(document id, role), so a
rerun writes the same Bundles, and their PUT entries leave a FHIR server in the same state.
Entries are named `urn:uuid:<id>` and references use those names (resolvable in the Bundle;
the NDJSON writer turns them into `Type/id`).

What becomes what (profiles: `conventions.PROFILE`; vocabulary: `conventions`, shared with
the synthetic cohort, so an exported Bundle ingests like the cohort's own FHIR):

- patient -> Patient (MII Person): sex -> gender (diverse: other + gender-amtlich-de D); the
  name split into family/given; an unknown name or birth date -> data-absent-reason.
- encounter -> Encounter (MII Fall, KontaktGesundheitseinrichtung): class from the stay type
  (IMP when the letter does not say), period admission-discharge (unknown start:
  data-absent-reason), department as serviceType text; diagnosis: main CC rank 1, others CM.
- diagnoses -> Condition (MII Diagnose): ICD-10-GM coding with version and the †/*/! mark
  extension, the text as written, onset = first-diagnosis date.
- tumors -> Condition (onko primaertumor; fruehere-tumorerkrankung when historical): the
  diagnosis with the tumour's ICD-10-GM code (or entity text) when there is one, else its own;
  ICD-O-3 topography and laterality; category SNOMED CT 55342001 (earlier: also 394593009) and
  Feststellungsdatum = the diagnosis's first-diagnosis date, when the letter gives one (`oncology.py`).
  Observations point to it (focus): histology (ICD-O-3
  morphology), grading, TNM T/N/M each with its prefix, L/V/Pn, residual R, lymph nodes, UICC
  stage grouping, other staging systems, markers (ER/PR/HER2 profiles, else Laborbefund),
  ECOG, Verlauf.
- diagnoses and tumours: recordedDate = the letter's discharge (else admission) date, else
  data-absent-reason (`_recordedDate`): MII Diagnose requires it.
- procedures -> Procedure (MII Prozedur): OPS coding with version; performed[x] (required):
  the procedure's date, else the stay's period for a present or suspected one, else
  data-absent-reason (`_performedDateTime`; not-applicable for a procedure not done).
- radiotherapy -> Procedure (onko Strahlentherapie) with total/fraction dose extensions;
  performedPeriod from its start/end, else data-absent-reason.
- medications -> Medication (MII Medikation: ATC coding, else the name as text) +
  MedicationStatement (onko systemische-therapie-medikation for context therapy) with one
  Dosage: doseAndRate.doseQuantity (UCUM), timing.repeat.when from the 1-0-1-0 slots,
  timing.code.text for other frequencies, route (EDQM), asNeeded. Context allergy ->
  AllergyIntolerance (the MII core data set has no allergy profile: base R4, none claimed).
- labs -> Observation (MII Laborbefund): identifier (the profile's 1..1 OBI slice: a clinsynth
  system, value `<doc>/labs/<index>`, a clinsynth assigner), LOINC, UCUM valueQuantity;
  a value the profile's value[x] (Quantity, CodeableConcept, Range, Ratio) cannot hold (text,
  or a unit absent or not UCUM): dataAbsentReason as-text with the value as written in note;
  dataAbsentReason unknown without a value; interpretation from the flag; effectiveDateTime
  (the profile allows no Period): the lab's date, else data-absent-reason.
- vitals -> Observation (HL7 vital signs): LOINC, UCUM valueQuantity.
- risk_factors: smoking -> Observation (LOINC 72166-2, SNOMED CT answer: negated = never,
  historical = former, present = current) with pack-years.

Assertions:

| assertion  | Condition                   | Procedure | MedicationStatement     | Observation |
|------------|-----------------------------|-----------|-------------------------|-------------|
| present    | clinical active, confirmed  | completed | active (admission,      | final       |
|            |                             |           | discharge, none),       |             |
|            |                             |           | completed (inpatient,   |             |
|            |                             |           | therapy)                |             |
| negated    | refuted, no clinicalStatus  | not-done  | not-taken               | omitted (*) |
| historical | clinical inactive (tumour:  | completed | completed               | final       |
|            | remission), confirmed       |           |                         |             |
| suspected  | clinical active, provisional| unknown   | unknown                 | preliminary |

(*) no Observation says "absent": a negated measurement is omitted and counted.
AllergyIntolerance: present confirmed, suspected unconfirmed, negated refuted; historical
clinicalStatus inactive. Tumour observations take their tumour's assertion; a negated
tumour is a refuted Condition without observations.

Effective times: a fact's own date; else, for what happened during the stay (vitals,
inpatient and therapy drugs, staging; not labs: see above), the stay's period (true, if
coarse); else data-absent-reason where the profile needs the element.

A fact that its profile cannot hold is not exported and is counted in the report with its
reason (`Omission`): a diagnosis without ICD-10-GM code, a procedure without OPS, a lab,
vital or marker without LOINC, a vital without a UCUM value, a tumour without an ICD-10-GM
code of its own or of a diagnosis of the same entity, histology without a morphology code,
Karnofsky (no MII profile), a risk factor other than smoking, a negated measurement. Every
resource written claims exactly one profile, except AllergyIntolerance (see above).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from clinsynth.export.config import ExportSection
from clinsynth.fhir import conventions as fc
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import Catalog

#: uuid5 namespace of every exported resource id
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://clinsynth.invalid/export")
#: identifier systems: the document id names the letter's patient and stay
LETTER_PATIENT_SYSTEM = "https://clinsynth.invalid/sid/letter-patient"
LETTER_ENCOUNTER_SYSTEM = "https://clinsynth.invalid/sid/letter-encounter"
LETTER_SYSTEM = "https://clinsynth.invalid/sid/letter"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
DATA_ABSENT_REASON_CS = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDER_AMTLICH_EXT = "http://fhir.de/StructureDefinition/gender-amtlich-de"
GENDER_AMTLICH_CS = "http://fhir.de/CodeSystem/gender-amtlich-de"
ICD_MARK_EXT = "http://fhir.de/StructureDefinition/icd-10-gm-mehrfachcodierungs-kennzeichen"
ICD_MARK_CS = "http://fhir.de/CodeSystem/icd-10-gm-mehrfachcodierungs-kennzeichen"
EARLIER_TUMOR_PROFILE = f"{fc.ONKO}/mii-pr-onko-fruehere-tumorerkrankung"
#: stay type -> v3 ActCode encounter class; kontaktart-de where one fits
ENCOUNTER_CLASS = {
    "inpatient": ("IMP", "inpatient encounter"),
    "transfer": ("IMP", "inpatient encounter"),
    "day_case": ("SS", "short stay"),
    "outpatient": ("AMB", "ambulatory"),
}
KONTAKTART = {"inpatient": "normalstationaer", "transfer": "normalstationaer"}
#: salutations and titles that are not part of a name
_TITLES = frozenset(
    ["frau", "herr", "fr.", "hr.", "dr.", "dr", "prof.", "prof", "med.", "med", "dipl.-med.", "pd"]
)


def resource_id(doc: str, key: str) -> str:
    """The id of one resource of one document: the same document and role give the same id."""
    return str(uuid.uuid5(NAMESPACE, f"{doc}\x1f{key}"))


def data_absent(code: str = "unknown") -> dict[str, Any]:
    return {"extension": [{"url": DATA_ABSENT, "valueCode": code}]}


def coding(system: str, code: str, display: str | None = None, version: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if version:
        c["version"] = version
    if display:
        c["display"] = display
    return c


@dataclass(frozen=True)
class Omission:
    """A fact the profiles cannot hold: not exported, counted with its reason."""

    kind: str  # the extraction list: diagnoses, tumors, labs ...
    index: int
    reason: str


@dataclass(frozen=True)
class Note:
    """A warning about a written resource (a unit written as text, a code the catalogue lacks)."""

    kind: str
    resource: str
    message: str


@dataclass
class Doc:
    """What the builders of one document share: ids, the Patient and Encounter, what was omitted."""

    doc: str
    extraction: ClinicalExtraction
    cfg: ExportSection
    catalog: Catalog
    resources: list[dict[str, Any]] = field(default_factory=list)
    omitted: list[Omission] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    patient: dict[str, str] = field(default_factory=dict)
    encounter: dict[str, str] = field(default_factory=dict)
    #: the stay: {"start": ..., "end": ...} as far as the letter says
    period: dict[str, str] = field(default_factory=dict)
    #: Conditions by extraction position: ("diagnoses", 3) -> Condition resource
    conditions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def rid(self, key: str) -> str:
        return resource_id(self.doc, key)

    def ref(self, res: dict[str, Any]) -> dict[str, str]:
        return {"reference": f"urn:uuid:{res['id']}"}

    def add(self, res: dict[str, Any]) -> dict[str, Any]:
        self.resources.append(res)
        return res

    def omit(self, kind: str, index: int, reason: str) -> None:
        self.omitted.append(Omission(kind, index, reason))

    def note(self, kind: str, res: dict[str, Any], message: str) -> None:
        self.notes.append(Note(kind, f"{res['resourceType']}/{res['id']}", message))

    def stay_period(self) -> dict[str, Any]:
        """effectivePeriod for something that happened during the stay, when the letter dates it."""
        return {"effectivePeriod": dict(self.period)} if self.period.get("start") else {}

    def recorded(self) -> dict[str, Any]:
        """recordedDate (1..1 in MII Diagnose): the letter's discharge, else admission date; a letter
        without either says nothing of when the diagnosis was recorded: data-absent-reason."""
        e = self.extraction.encounter
        date = (e.discharge or e.admission) if e else None
        return {"recordedDate": date} if date else {"_recordedDate": data_absent()}

    def performed(self, date: str | None, *, during_stay: bool, absent: str = "unknown") -> dict[str, Any]:
        """performed[x] (1..1 in MII Prozedur): the fact's own date; else, for what happened during the
        stay, the stay's period (true, if coarse); else data-absent-reason `absent`."""
        if date:
            return {"performedDateTime": date}
        if during_stay and self.period.get("start"):
            return {"performedPeriod": dict(self.period)}
        return {"_performedDateTime": data_absent(absent)}

    def effective(
        self, date: str | None, *, during_stay: bool = True, required: bool = True
    ) -> dict[str, Any]:
        if date:
            return {"effectiveDateTime": date}
        if during_stay and self.period.get("start"):
            return self.stay_period()
        return {"_effectiveDateTime": data_absent()} if required else {}


def resource(doc: Doc, rt: str, key: str, profile: str | None, **body: Any) -> dict[str, Any]:
    """A resource with its id and (unless None) its one profile, in FHIR's usual key order."""
    res: dict[str, Any] = {"resourceType": rt, "id": doc.rid(key)}
    if profile is not None:
        res["meta"] = {"profile": [fc.PROFILE.get(profile, profile)]}
    res.update({k: v for k, v in body.items() if v is not None})
    return res


def display(table: Any, code: str | None) -> str | None:
    concept = table.lookup(code) if code else None
    return concept.display if concept is not None else None


def split_name(name: str) -> tuple[str | None, list[str], list[str]]:
    """(family, given names, prefixes) of a name as written: "Müller, Anna", "Frau Dr. Anna Müller"."""
    if "," in name:
        family, _, given = name.partition(",")
        return family.strip() or None, given.split(), []
    tokens = name.split()
    prefix = [
        t for t in tokens if t.lower() in _TITLES and t.lower().startswith(("dr", "prof", "pd", "dipl"))
    ]
    words = [t for t in tokens if t.lower() not in _TITLES]
    if not words:
        return None, [], prefix
    return words[-1], words[:-1], prefix


def _patient(doc: Doc) -> dict[str, Any]:
    p = doc.extraction.patient
    body: dict[str, Any] = {
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [coding(IDENTIFIER_TYPE, "MR")]},
                "system": LETTER_PATIENT_SYSTEM,
                "value": doc.doc,
            }
        ]
    }
    family, given, prefix = split_name(p.name) if p and p.name else (None, [], [])
    if family:
        name: dict[str, Any] = {"use": "official", "text": p.name if p else None, "family": family}
        if given:
            name["given"] = given
        if prefix:
            name["prefix"] = prefix
        body["name"] = [name]
    else:
        body["name"] = [data_absent()]
    sex = p.sex if p else None
    if sex == "diverse":
        body["gender"] = "other"
        body["_gender"] = {
            "extension": [
                {"url": GENDER_AMTLICH_EXT, "valueCoding": coding(GENDER_AMTLICH_CS, "D", "divers")}
            ]
        }
    else:
        body["gender"] = sex if sex in ("female", "male") else "unknown"
    if p and p.birth_date:
        body["birthDate"] = p.birth_date
    else:
        body["_birthDate"] = data_absent()
    return resource(doc, "Patient", "Patient", "Patient", **body)


def _encounter(doc: Doc, diagnoses: list[dict[str, Any]]) -> dict[str, Any]:
    e = doc.extraction.encounter
    stay = e.type if e else None
    cls, cls_display = ENCOUNTER_CLASS.get(stay or "inpatient", ENCOUNTER_CLASS["inpatient"])
    types = [{"coding": [coding(fc.KONTAKTEBENE, "einrichtungskontakt", "Einrichtungskontakt")]}]
    if stay in KONTAKTART:
        types.append({"coding": [coding(fc.KONTAKTART, KONTAKTART[stay], "Normalstationär")]})
    period: dict[str, Any] = dict(doc.period) if doc.period.get("start") else {"_start": data_absent()}
    if not doc.period.get("start") and e and e.discharge:
        period["end"] = e.discharge
    return resource(
        doc,
        "Encounter",
        "Encounter",
        "Encounter",
        identifier=[
            {
                "type": {"coding": [coding(IDENTIFIER_TYPE, "VN")]},
                "system": LETTER_ENCOUNTER_SYSTEM,
                "value": doc.doc,
            }
        ],
        status="finished" if e and e.discharge else "unknown",
        **{"class": coding(fc.ENCOUNTER_CLASS, cls, cls_display)},
        type=types,
        serviceType={"text": e.department} if e and e.department else None,
        subject=doc.patient,
        period=period,
        diagnosis=diagnoses or None,
    )


def encounter_diagnoses(doc: Doc) -> list[dict[str, Any]]:
    """The stay's diagnoses (present and suspected ones): main CC rank 1, secondary CM."""
    out = []
    for (kind, i), cond in doc.conditions.items():
        fact = getattr(doc.extraction, kind)[i]
        if fact.assertion not in ("present", "suspected"):
            continue
        main = kind == "diagnoses" and fact.role == "main"
        use = coding(
            fc.DIAGNOSIS_ROLE, "CC" if main else "CM", "Chief complaint" if main else "Comorbidity diagnosis"
        )
        entry: dict[str, Any] = {"condition": doc.ref(cond), "use": {"coding": [use]}}
        if main:
            entry["rank"] = 1
        out.append(entry)
    return out


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def bundle_file_name(doc: str) -> str:
    """A file name per document: readable, and distinct for distinct ids (a hash of the id)."""
    stem = _SAFE.sub("_", doc).strip("._")[:80] or "doc"
    return f"{stem}-{resource_id(doc, 'file')[:8]}.json"


@dataclass
class Built:
    doc: str
    bundle: dict[str, Any]
    omitted: list[Omission]
    notes: list[Note]

    def resources(self) -> Iterator[dict[str, Any]]:
        for entry in self.bundle["entry"]:
            yield entry["resource"]


def build_bundle(doc_id: str, extraction: ClinicalExtraction, cfg: ExportSection, catalog: Catalog) -> Built:
    """The transaction Bundle of one document's extraction (not yet validated: see profiles.py)."""
    from clinsynth.export import clinical, oncology

    doc = Doc(doc_id, extraction, cfg, catalog)
    e = extraction.encounter
    if e and e.admission:
        doc.period = {"start": e.admission, **({"end": e.discharge} if e.discharge else {})}
    patient = _patient(doc)
    doc.patient = doc.ref(patient)
    enc_id = doc.rid("Encounter")
    doc.encounter = {"reference": f"urn:uuid:{enc_id}"}
    clinical.diagnoses(doc)
    oncology.tumors(doc)  # after the diagnoses: a tumour reuses the Condition of its diagnosis
    clinical.procedures(doc)
    clinical.radiotherapy(doc)
    clinical.medications(doc)
    clinical.measurements(doc)
    clinical.risk_factors(doc)
    encounter = _encounter(doc, encounter_diagnoses(doc))
    assert encounter["id"] == enc_id
    ordered = [patient, encounter] + [r for r in doc.resources if r["resourceType"] == "Medication"]
    ordered += [r for r in doc.resources if r["resourceType"] != "Medication"]
    bundle = {
        "resourceType": "Bundle",
        "id": doc.rid("Bundle"),
        "identifier": {"system": LETTER_SYSTEM, "value": doc_id},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in ordered
        ],
    }
    return Built(doc_id, bundle, doc.omitted, doc.notes)
