"""Validation of exported Bundles: fhir.resources (R4B models) and clinsynth's own profile checks.

fhir.resources checks FHIR's structure and datatypes (through `fhir.validation.FastValidator`,
whose verdicts are the full models' own). It knows nothing of profiles, so these checks hold
every resource to what the MII profile it claims requires of the elements clinsynth writes,
as far as this project states them (the MII StructureDefinitions are not run here; the
cardinalities below were read off the MII profiles and their test bundles, kds-testdata):

- every resource: one known profile (AllergyIntolerance: none); every coding's system known
  (`conventions.is_known_system`), its code non-empty; every reference names an entry of the
  Bundle, of the type the element takes.
- Patient: identifier (type MR, system, value); a name with family, or data-absent-reason;
  gender in AdministrativeGender (other: with gender-amtlich-de); birthDate or
  data-absent-reason.
- Encounter (Fall): identifier (type VN); status (EncounterStatus); class (v3 ActCode); one
  Kontaktebene type; period.start or data-absent-reason, start <= end; diagnosis use
  (diagnosis-role), rank 1 only for the main diagnosis (CC).
- Condition (Diagnose, onko): subject; exactly one ICD-10-GM coding, with version, well formed
  (a code the catalogue lacks: a warning); Diagnose and onko primary tumour (a Diagnose too):
  recordedDate (1..1) or its data-absent-reason; clinicalStatus (condition-clinical) absent exactly
  when refuted; verificationStatus (condition-ver-status); the †/*/! mark; onko: ICD-O-3
  topography form and laterality (seitenlokalisation) in bodySite. Newer onko versions (after
  2026.0.3; see `oncology.py`): category SNOMED CT 55342001 (an earlier tumour: 394593009 and
  55342001, one CodeableConcept each); at most one Feststellungsdatum (condition-assertedDate),
  with a valueDateTime; a primaertumor without one: warning no_diagnosis_date (the letter gave
  no diagnosis date; 1..1 in the newer profile, 0..1 in 2026.0.3).
- Procedure (Prozedur, Strahlentherapie): subject; status (EventStatus); performed[x] (1..1) or
  `_performedDateTime`'s data-absent-reason. Prozedur: one OPS coding with version, well formed
  (catalogue: warning). Strahlentherapie: an OPS or SNOMED CT code, doses in UCUM Gy.
- Medication: a well-formed ATC coding or the name as text.
- MedicationStatement: status; category (medication-statement-category); medication[x];
  effective[x] or data-absent-reason; dosage: a coded doseQuantity in UCUM, timing.when in
  EventTiming, route codings from EDQM.
- Observation: status (ObservationStatus); value[x] and dataAbsentReason never both (obs-6).
  Laborbefund: subject; the identifier slice (1..1): type OBI (v2-0203), system, value and
  assigner; category laboratory + LOINC 26436-6; one LOINC code; value[x] only Quantity
  (system UCUM, a UCUM code), CodeableConcept, Range or Ratio, or dataAbsentReason;
  effective[x] only dateTime (or its data-absent-reason); interpretation (v3). Vital signs:
  category vital-signs; one LOINC code; UCUM valueQuantity; effective[x]. Smoking: LOINC
  72166-2 and a SNOMED CT smoking answer.
  Onko: focus on a primary-tumour (or earlier tumour) Condition; the code the cohort writes;
  values: TNM T/N/M forms and prefix, L/V/Pn/R, grading, ICD-O-3 morphology, UICC stage,
  ECOG, Verlauf, staging system, marker result, node counts.
- AllergyIntolerance (base R4): code; clinicalStatus present (ait-1); verificationStatus.
- Bundle: transaction; fullUrl urn:uuid:<id>; request PUT <Type>/<id>; unique entries; one
  Patient and one Encounter.

An issue is an error (the record is not exported) or a warning (exported, counted).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from clinsynth import schema as S
from clinsynth.export.bundle import DATA_ABSENT, EARLIER_TUMOR_PROFILE, GENDER_AMTLICH_EXT, ICD_MARK_EXT
from clinsynth.export.oncology import FESTSTELLUNGSDATUM_EXT, ONCOLOGY_CATEGORY, ONKO_CATEGORY
from clinsynth.export.ucum import is_ucum
from clinsynth.fhir import conventions as fc
from clinsynth.fhir.validation import FastValidator
from clinsynth.terminology import Catalog

Severity = Literal["error", "warning"]

GENDER = {"male", "female", "other", "unknown"}
ENCOUNTER_STATUS = {
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
}
ENCOUNTER_CLASS = {"IMP", "AMB", "SS", "EMER", "HH", "VR", "PRENC", "ACUTE", "NONAC", "OBSENC"}
KONTAKTEBENE = {"einrichtungskontakt", "abteilungskontakt", "versorgungsstellenkontakt"}
DIAGNOSIS_ROLE = {"AD", "DD", "CC", "CM", "pre-op", "post-op", "billing"}
CONDITION_CLINICAL = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
CONDITION_VERIFICATION = {
    "unconfirmed",
    "provisional",
    "differential",
    "confirmed",
    "refuted",
    "entered-in-error",
}
EVENT_STATUS = {
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
}
MED_STATEMENT_STATUS = {
    "active",
    "completed",
    "entered-in-error",
    "intended",
    "stopped",
    "on-hold",
    "unknown",
    "not-taken",
}
MED_STATEMENT_CATEGORY = {"inpatient", "outpatient", "community", "patientspecified"}
OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
EVENT_TIMING = {
    "MORN",
    "MORN.early",
    "MORN.late",
    "NOON",
    "AFT",
    "AFT.early",
    "AFT.late",
    "EVE",
    "EVE.early",
    "EVE.late",
    "NIGHT",
    "PHS",
    "HS",
    "WAKE",
    "C",
    "CM",
    "CD",
    "CV",
    "AC",
    "ACM",
    "ACD",
    "ACV",
    "PC",
    "PCM",
    "PCD",
    "PCV",
}
INTERPRETATION = {"H", "L", "HH", "LL", "A", "N"}
GRADING = {"0", "1", "2", "3", "4", "X", "L", "M", "H", "B", "T"}
RESIDUAL = {"R0", "R1", "R2", "RX", "R1(is)", "R1(cy+)"}
LATERALITY = {"L", "R", "B", "M", "U", "T"}
TNM_SUFFIX = {"l": {"L0", "L1", "LX"}, "v": {"V0", "V1", "V2", "VX"}, "pn": {"Pn0", "Pn1", "PnX"}}
TNM_FORM = {"t": re.compile(S.T_VALUE), "n": re.compile(S.N_VALUE), "m": re.compile(S.M_VALUE)}
UICC_STAGE = re.compile(S.Tumor.model_fields["uicc_stage"].metadata[0].pattern)
MII_VERLAUF = {"V", "T", "K", "P", "D", "B", "R", "Y", "U", "X"}
ALLERGY_CLINICAL = {"active", "inactive", "resolved"}
ALLERGY_VERIFICATION = {"unconfirmed", "confirmed", "refuted", "entered-in-error"}
ICD_MARKS = {"†", "*", "!"}
SMOKING_ANSWERS = {code for code, _ in fc.SMOKING_SNOMED.values()}
CODE_FORM = {
    "icd10gm": re.compile(S.ICD10GM),
    "ops": re.compile(S.OPS),
    "atc": re.compile(S.ATC),
    "loinc": re.compile(S.LOINC),
    "topography": re.compile(S.ICDO3_TOPOGRAPHY),
    "morphology": re.compile(S.ICDO3_MORPHOLOGY),
}
#: profile URL -> its key in conventions.PROFILE
PROFILE_KEY = {url: key for key, url in fc.PROFILE.items()} | {
    EARLIER_TUMOR_PROFILE: "Condition.earlier_tumor"
}
#: the element a reference sits in -> the resource type it must name
REFERENCE_TARGET = {
    "subject": "Patient",
    "patient": "Patient",
    "encounter": "Encounter",
    "context": "Encounter",
    "medicationReference": "Medication",
    "focus": "Condition",
    "condition": "Condition",
    "reasonReference": "Condition",
    "hasMember": "Observation",
}
TUMOR_CONDITIONS = {"Condition.primary_tumor", "Condition.earlier_tumor"}
#: the Observation.code each onko profile carries (as conventions names it)
ONKO_CODE = {
    "Observation.histology": fc.HISTOLOGY_CODE,
    "Observation.grading": fc.GRADING_CODE,
    "Observation.residual": fc.RESIDUAL_CODE,
    "Observation.ecog": fc.ECOG_CODES[0],
    "Observation.status": fc.TUMOR_STATUS_CODE,
    **{f"Observation.tnm_{axis}": spec for axis, spec in fc.TNM_CATEGORY_CODE.items()},
    **{f"Observation.nodes_{role}": (fc.LOINC, *spec) for role, spec in fc.LYMPH_NODES_LOINC.items()},
}


@dataclass(frozen=True)
class Issue:
    """One finding: `kind` names the rule family (fhir, profile, required, type, code_system, value_set,
    reference, invariant, bundle; warnings: not_in_catalogue, unit_not_ucum, no_unit, no_diagnosis_date)."""

    kind: str
    severity: Severity
    resource: str  # "Condition/<id>", or "Bundle"
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "resource": self.resource,
            "path": self.path,
            "message": self.message,
        }


def _codings(cc: Any) -> list[dict[str, Any]]:
    return [c for c in (cc or {}).get("coding") or [] if isinstance(c, dict)] if isinstance(cc, dict) else []


def _codes(cc: Any, system: str) -> list[str]:
    return [c.get("code", "") for c in _codings(cc) if c.get("system") == system]


def _absent(element: Any) -> bool:
    """A primitive's `_x` (or a complex element) that carries a data-absent-reason."""
    return isinstance(element, dict) and any(
        e.get("url") == DATA_ABSENT for e in element.get("extension") or [] if isinstance(e, dict)
    )


@dataclass
class _Res:
    """The checks of one resource: collects its issues."""

    res: dict[str, Any]
    key: str | None
    catalog: Catalog
    issues: list[Issue] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.res.get('resourceType')}/{self.res.get('id')}"

    def add(self, kind: str, path: str, message: str, severity: Severity = "error") -> None:
        self.issues.append(Issue(kind, severity, self.name, path, message))

    def need(self, path: str, ok: bool, what: str) -> bool:
        if not ok:
            self.add("required", path, f"{self.key or self.res.get('resourceType')} requires {what}")
        return ok

    def in_set(self, path: str, code: Any, allowed: set[str], what: str) -> None:
        if code not in allowed:
            self.add("value_set", path, f"{code!r} is not in the {what} value set")

    def one_code(self, path: str, cc: Any, system: str, what: str) -> str | None:
        codes = _codes(cc, system)
        if self.need(path, len(codes) == 1, f"exactly one {what} coding ({system})"):
            return codes[0]
        return None

    def code_form(self, path: str, code: str, kind: str, table: Any = None) -> None:
        if not CODE_FORM[kind].fullmatch(code):
            self.add("code_system", path, f"{code!r} is not a well-formed {kind} code")
        elif table is not None and table.lookup(code) is None:
            self.add("not_in_catalogue", path, f"{kind} {code!r} is not in clinsynth's catalogue", "warning")

    def effective(self) -> None:
        r = self.res
        self.need(
            "effective[x]",
            any(k in r for k in ("effectiveDateTime", "effectivePeriod"))
            or _absent(r.get("_effectiveDateTime")),
            "effective[x] (or its data-absent-reason)",
        )

    def ucum_quantity(self, path: str, q: Any) -> None:
        if not isinstance(q, dict):
            self.add("required", path, "a Quantity")
            return
        if self.need(
            f"{path}.system", q.get("system") == fc.UCUM, "a UCUM quantity (system)"
        ) and not is_ucum(str(q.get("code", ""))):
            self.add("code_system", f"{path}.code", f"{q.get('code')!r} is not a UCUM code")
        self.need(f"{path}.value", isinstance(q.get("value"), (int, float)), "a numeric value")


def _walk(value: Any, path: str = "", key: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every element below `value`, depth first; a list's items carry the
    list's key (`coding[0]` is a `coding`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.{k}" if path else k
            yield p, k, v
            yield from _walk(v, p, k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            p = f"{path}[{i}]"
            if not isinstance(v, list):
                yield p, key, v
            yield from _walk(v, p, key)


def _common(c: _Res) -> None:
    for path, _, v in _walk(c.res):
        if isinstance(v, dict) and "system" in v and "code" in v:
            if not fc.is_known_system(v.get("system")):
                c.add("code_system", path, f"unknown code system {v.get('system')!r}")
            if not str(v.get("code") or "").strip():
                c.add("required", f"{path}.code", "a coding needs a code")


def _patient(c: _Res) -> None:
    r = c.res
    ids = [
        i
        for i in r.get("identifier") or []
        if "MR" in _codes(i.get("type"), "http://terminology.hl7.org/CodeSystem/v2-0203")
    ]
    c.need(
        "identifier",
        bool(ids) and all(i.get("system") and i.get("value") for i in ids),
        "an MR identifier with system and value",
    )
    names = r.get("name") or []
    c.need(
        "name",
        bool(names) and all(n.get("family") or _absent(n) for n in names),
        "a name with family (or data-absent-reason)",
    )
    c.in_set("gender", r.get("gender"), GENDER, "AdministrativeGender")
    if r.get("gender") == "other":
        exts = (r.get("_gender") or {}).get("extension") or []
        c.need(
            "gender",
            any(e.get("url") == GENDER_AMTLICH_EXT for e in exts),
            "gender-amtlich-de with gender other",
        )
    c.need(
        "birthDate",
        bool(r.get("birthDate")) or _absent(r.get("_birthDate")),
        "birthDate (or data-absent-reason)",
    )


def _encounter(c: _Res) -> None:
    r = c.res
    ids = r.get("identifier") or []
    c.need(
        "identifier",
        any(
            "VN" in _codes(i.get("type"), "http://terminology.hl7.org/CodeSystem/v2-0203")
            and i.get("system")
            and i.get("value")
            for i in ids
        ),
        "a VN identifier",
    )
    c.in_set("status", r.get("status"), ENCOUNTER_STATUS, "EncounterStatus")
    cls = r.get("class") or {}
    if c.need("class", cls.get("system") == fc.ENCOUNTER_CLASS, "class from v3 ActCode"):
        c.in_set("class.code", cls.get("code"), ENCOUNTER_CLASS, "v3 ActEncounterCode")
    ebene = [x for t in r.get("type") or [] for x in _codes(t, fc.KONTAKTEBENE)]
    if c.need("type", len(ebene) == 1, "one Kontaktebene type"):
        c.in_set("type.coding.code", ebene[0], KONTAKTEBENE, "Kontaktebene")
    period = r.get("period") or {}
    c.need(
        "period.start",
        bool(period.get("start")) or _absent(period.get("_start")),
        "period.start (or data-absent-reason)",
    )
    if (
        period.get("start")
        and period.get("end")
        and str(period["end"]) < str(period["start"])[: len(period["end"])]
    ):
        c.add("invariant", "period", f"period ends ({period['end']}) before it starts ({period['start']})")
    for i, d in enumerate(r.get("diagnosis") or []):
        uses = [x.get("code") for x in _codings(d.get("use"))]
        for u in uses:
            c.in_set(f"diagnosis[{i}].use", u, DIAGNOSIS_ROLE, "diagnosis-role")
        if d.get("rank") == 1 and "CC" not in uses:
            c.add("invariant", f"diagnosis[{i}].rank", "rank 1 marks the main diagnosis (use CC)")


#: Condition profiles derived from MII Diagnose (recordedDate 1..1); fruehere-tumorerkrankung is not
DIAGNOSE_CONDITIONS = {"Condition", "Condition.primary_tumor"}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _condition(c: _Res) -> None:
    r = c.res
    c.need("subject", bool(r.get("subject")), "a subject")
    if c.key in DIAGNOSE_CONDITIONS:
        c.need(
            "recordedDate",
            bool(r.get("recordedDate")) or _absent(r.get("_recordedDate")),
            "recordedDate (or its data-absent-reason)",
        )
    code = c.one_code("code.coding", r.get("code"), fc.ICD10GM, "ICD-10-GM")
    if code is not None:
        icd = next(x for x in _codings(r["code"]) if x.get("system") == fc.ICD10GM)
        c.need("code.coding.version", bool(icd.get("version")), "the ICD-10-GM version")
        c.code_form("code.coding.code", code, "icd10gm", c.catalog.icd10gm)
        for e in icd.get("extension") or []:
            if e.get("url") == ICD_MARK_EXT:
                c.in_set(
                    "code.coding.extension",
                    (e.get("valueCoding") or {}).get("code"),
                    ICD_MARKS,
                    "Mehrfachcodierungs-Kennzeichen",
                )
    ver = _codes(r.get("verificationStatus"), fc.CONDITION_VERIFICATION)
    if c.need("verificationStatus", len(ver) == 1, "a verificationStatus"):
        c.in_set("verificationStatus", ver[0], CONDITION_VERIFICATION, "condition-ver-status")
    clinical = _codes(r.get("clinicalStatus"), fc.CONDITION_CLINICAL)
    for x in clinical:
        c.in_set("clinicalStatus", x, CONDITION_CLINICAL, "condition-clinical")
    if bool(clinical) == (ver == ["refuted"]):
        c.add(
            "invariant",
            "clinicalStatus",
            "clinicalStatus must be absent exactly when the condition is refuted",
        )
    if c.key in TUMOR_CONDITIONS:
        _tumor_condition(c)
        for site in r.get("bodySite") or []:
            for topo in _codes(site, fc.ICDO3):
                c.code_form("bodySite", topo, "topography", c.catalog.icdo3_topography)
            for lat in _codes(site, fc.LATERALITY):
                c.in_set("bodySite", lat, LATERALITY, "mii-cs-onko-seitenlokalisation")


def _tumor_condition(c: _Res) -> None:
    """Feststellungsdatum and the oncology categories of the newer onko Condition profiles."""
    r = c.res
    primary = c.key == "Condition.primary_tumor"
    dates = [e for e in r.get("extension") or [] if e.get("url") == FESTSTELLUNGSDATUM_EXT]
    if len(dates) > 1:
        c.add("invariant", "extension", "at most one Feststellungsdatum (condition-assertedDate)")
    elif primary and not dates:
        c.add(
            "no_diagnosis_date",
            "extension",
            "no Feststellungsdatum (condition-assertedDate): the letter gives no diagnosis date "
            "(required by onko primaertumor after 2026.0.3)",
            "warning",
        )
    for e in dates:
        c.need(
            "extension.valueDateTime", bool(e.get("valueDateTime")), "the Feststellungsdatum as valueDateTime"
        )
    wanted = [ONKO_CATEGORY] if primary else [ONCOLOGY_CATEGORY, ONKO_CATEGORY]
    for system, code, display in wanted:
        c.need(
            "category",
            any(code in _codes(cc, system) for cc in r.get("category") or []),
            f"category {code} {display!r} ({system})",
        )
    for i, cc in enumerate(r.get("category") or []):
        if len({code for system, code, _ in wanted if code in _codes(cc, system)}) > 1:
            c.add(
                "invariant", f"category[{i}]", "one CodeableConcept per category slice (oncology, onkologie)"
            )


def _procedure(c: _Res) -> None:
    r = c.res
    c.need("subject", bool(r.get("subject")), "a subject")
    c.in_set("status", r.get("status"), EVENT_STATUS, "EventStatus")
    c.need(
        "performed[x]",
        any(k in r for k in ("performedDateTime", "performedPeriod")) or _absent(r.get("_performedDateTime")),
        "performed[x] (or its data-absent-reason)",
    )
    if c.key == "Procedure.radiotherapy":
        c.need(
            "code.coding",
            bool(_codes(r.get("code"), fc.OPS) or _codes(r.get("code"), fc.SNOMED)),
            "an OPS or SNOMED CT code",
        )
        for i, e in enumerate(r.get("extension") or []):
            if e.get("url") in (fc.MII_RADIOTHERAPY_TOTAL, fc.MII_RADIOTHERAPY_FRACTION):
                c.ucum_quantity(f"extension[{i}].valueQuantity", e.get("valueQuantity"))
        return
    code = c.one_code("code.coding", r.get("code"), fc.OPS, "OPS")
    if code is not None:
        ops = next(x for x in _codings(r["code"]) if x.get("system") == fc.OPS)
        c.need("code.coding.version", bool(ops.get("version")), "the OPS version")
        c.code_form("code.coding.code", code, "ops", c.catalog.ops)


def _medication(c: _Res) -> None:
    code = c.res.get("code") or {}
    atc = _codes(code, fc.ATC)
    c.need("code", bool(atc) or bool(code.get("text")), "an ATC coding or the name as text")
    for x in atc:
        c.code_form("code.coding.code", x, "atc", c.catalog.atc)


def _medication_statement(c: _Res) -> None:
    r = c.res
    c.in_set("status", r.get("status"), MED_STATEMENT_STATUS, "MedicationStatement status")
    for x in _codings(r.get("category")):
        c.in_set("category", x.get("code"), MED_STATEMENT_CATEGORY, "medication-statement-category")
    c.need("medication[x]", "medicationReference" in r or "medicationCodeableConcept" in r, "medication[x]")
    c.effective()
    for i, d in enumerate(r.get("dosage") or []):
        for j, dr in enumerate(d.get("doseAndRate") or []):
            q = dr.get("doseQuantity") or {}
            if "code" in q or "system" in q:
                c.ucum_quantity(f"dosage[{i}].doseAndRate[{j}].doseQuantity", q)
            else:
                c.need(f"dosage[{i}].doseAndRate[{j}].doseQuantity", "value" in q, "a dose value")
        for w in ((d.get("timing") or {}).get("repeat") or {}).get("when") or []:
            c.in_set(f"dosage[{i}].timing.repeat.when", w, EVENT_TIMING, "EventTiming")
        for x in _codings(d.get("route")):
            c.need(f"dosage[{i}].route", x.get("system") == fc.EDQM, "an EDQM route")


#: MII Laborbefund: value[x] only Quantity or CodeableConcept or Range or Ratio
LAB_VALUE_TYPES = {"valueQuantity", "valueCodeableConcept", "valueRange", "valueRatio"}
_VALUES = (
    "valueQuantity",
    "valueString",
    "valueCodeableConcept",
    "valueBoolean",
    "valueInteger",
    "valueRange",
)


def _observation(c: _Res) -> None:
    r = c.res
    c.in_set("status", r.get("status"), OBSERVATION_STATUS, "ObservationStatus")
    has_value = any(k in r for k in _VALUES)
    if has_value and "dataAbsentReason" in r:
        c.add("invariant", "dataAbsentReason", "dataAbsentReason only when there is no value (obs-6)")
    key = c.key or ""
    cats = {(x.get("system"), x.get("code")) for cc in r.get("category") or [] for x in _codings(cc)}
    if key in ("Observation.lab", "Observation.vital"):
        lab = key == "Observation.lab"
        if lab:
            _lab_identifier(c)
            c.need("subject", bool(r.get("subject")), "a subject")
            c.need(
                "category",
                {(fc.OBSERVATION_CATEGORY, "laboratory"), (fc.LOINC, "26436-6")} <= cats,
                "category laboratory and LOINC 26436-6",
            )
        else:
            c.need(
                "category", (fc.OBSERVATION_CATEGORY, fc.VITAL_CATEGORY_CODE) in cats, "category vital-signs"
            )
        loinc = c.one_code("code.coding", r.get("code"), fc.LOINC, "LOINC")
        if loinc is not None:
            c.code_form("code.coding.code", loinc, "loinc", c.catalog.loinc)
        if lab:
            for k in r:
                if k.startswith("value") and k not in LAB_VALUE_TYPES:
                    c.add(
                        "type",
                        k,
                        "Observation.lab allows value[x] only as Quantity, CodeableConcept, Range or Ratio",
                    )
            if "effectivePeriod" in r:
                c.add("type", "effectivePeriod", "Observation.lab allows effective[x] only as dateTime")
            if "valueCodeableConcept" in r:
                c.need(
                    "valueCodeableConcept.coding",
                    any(x.get("system") and x.get("code") for x in _codings(r["valueCodeableConcept"])),
                    "a coded valueCodeableConcept (system and code)",
                )
        if "valueQuantity" in r:
            c.ucum_quantity("valueQuantity", r["valueQuantity"])
        elif not lab or not (has_value or "dataAbsentReason" in r):
            c.need("value[x]", False, "a UCUM valueQuantity" if not lab else "value[x] or dataAbsentReason")
        c.effective()
        for x in r.get("interpretation") or []:
            for code in [y.get("code") for y in _codings(x)]:
                c.in_set("interpretation", code, INTERPRETATION, "v3 ObservationInterpretation")
        return
    if key == "Observation.smoking":
        c.need("code", fc.SMOKING_CODE[1] in _codes(r.get("code"), fc.LOINC), "LOINC 72166-2")
        answers = _codes(r.get("valueCodeableConcept"), fc.SNOMED)
        c.need(
            "valueCodeableConcept",
            len(answers) == 1 and answers[0] in SMOKING_ANSWERS,
            "a SNOMED CT smoking status",
        )
        return
    if key.startswith("Observation.") and fc.PROFILE[key].startswith(fc.ONKO):
        _onko(c, key)


def _lab_identifier(c: _Res) -> None:
    """The Laborbefund's identifier slice analyseBefundCode (1..1): type OBI, system, value, assigner."""
    obi = [i for i in c.res.get("identifier") or [] if "OBI" in _codes(i.get("type"), V2_0203)]
    if c.need("identifier", len(obi) == 1, "exactly one identifier of type OBI (v2-0203)"):
        ident = obi[0]
        c.need("identifier.system", bool(ident.get("system")), "the OBI identifier's system")
        c.need("identifier.value", bool(ident.get("value")), "the OBI identifier's value")
        assigner = ident.get("assigner") or {}
        c.need(
            "identifier.assigner",
            bool(assigner.get("reference") or (assigner.get("identifier") or {}).get("value")),
            "the OBI identifier's assigner",
        )


def _value_codes(c: _Res, system: str) -> list[str]:
    codes = _codes(c.res.get("valueCodeableConcept"), system)
    c.need("valueCodeableConcept", len(codes) == 1, f"one value coded in {system}")
    return codes


def _onko(c: _Res, key: str) -> None:
    r = c.res
    c.need("focus", len(r.get("focus") or []) == 1, "focus on the tumour's Condition")
    if key in ONKO_CODE:
        system, code, _ = ONKO_CODE[key]
        c.need("code", code in _codes(r.get("code"), system), f"code {code} ({system})")
    axis = key.removeprefix("Observation.tnm_")
    if axis in TNM_FORM:
        for v in _value_codes(c, fc.UICC):
            if not TNM_FORM[axis].fullmatch(v):
                c.add("value_set", "valueCodeableConcept", f"{v!r} is not a TNM {axis.upper()} category")
        for e in (r.get("code") or {}).get("extension") or []:
            if e.get("url", "").endswith("tnm-cp-praefix"):
                for p in _codes(e.get("valueCodeableConcept"), fc.UICC):
                    c.in_set("code.extension", p, set(get_args(S.TNMPrefix)), "TNM prefix")
    elif axis in TNM_SUFFIX:
        for v in _value_codes(c, fc.UICC):
            c.in_set("valueCodeableConcept", v, TNM_SUFFIX[axis], f"TNM {axis.upper()}")
    elif key == "Observation.tnm":
        for v in _value_codes(c, fc.UICC):
            if not UICC_STAGE.fullmatch(v):
                c.add("value_set", "valueCodeableConcept", f"{v!r} is not a UICC stage")
    elif key == "Observation.residual":
        for v in _value_codes(c, fc.RESIDUAL):
            c.in_set("valueCodeableConcept", v, RESIDUAL, "mii-cs-onko-residualstatus")
    elif key == "Observation.grading":
        for v in _value_codes(c, fc.GRADING):
            c.in_set("valueCodeableConcept", v, GRADING, "mii-cs-onko-grading")
    elif key == "Observation.histology":
        for v in _value_codes(c, fc.ICDO3):
            c.code_form("valueCodeableConcept", v, "morphology", c.catalog.icdo3_morphology)
    elif key == "Observation.ecog":
        for v in _value_codes(c, fc.ECOG):
            c.in_set("valueCodeableConcept", v, {str(i) for i in range(6)}, "ECOG")
    elif key == "Observation.status":
        for v in _value_codes(c, fc.TUMOR_STATUS):
            c.in_set("valueCodeableConcept", v, set(get_args(S.TumorStatus)), "tumour status")
        for v in _codes(r.get("valueCodeableConcept"), fc.MII_STATUS):
            c.in_set("valueCodeableConcept", v, MII_VERLAUF, "mii-cs-onko-verlauf-gesamtbeurteilung")
    elif key == "Observation.other_stage":
        systems = {x.get("system") for x in _codings(r.get("valueCodeableConcept"))}
        c.need(
            "valueCodeableConcept",
            len(systems) == 1 and systems <= set(fc.STAGE_SYSTEMS.values()),
            "a staging-system code",
        )
    elif key.startswith("Observation.nodes_"):
        q = r.get("valueQuantity") or {}
        c.need("valueQuantity", isinstance(q.get("value"), int) and q["value"] >= 0, "a node count")
    elif key in ("Observation.er", "Observation.pr", "Observation.her2"):
        for v in _value_codes(c, fc.MARKER_RESULT):
            c.in_set("valueCodeableConcept", v, set(get_args(S.MarkerResult)), "marker result")


def _allergy(c: _Res) -> None:
    r = c.res
    c.need("code", bool(r.get("code")), "code")
    clinical = _codes(
        r.get("clinicalStatus"), "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
    )
    if c.need("clinicalStatus", len(clinical) == 1, "a clinicalStatus (ait-1)"):
        c.in_set("clinicalStatus", clinical[0], ALLERGY_CLINICAL, "allergyintolerance-clinical")
    ver = _codes(
        r.get("verificationStatus"), "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
    )
    if c.need("verificationStatus", len(ver) == 1, "a verificationStatus"):
        c.in_set("verificationStatus", ver[0], ALLERGY_VERIFICATION, "allergyintolerance-verification")


_RULES = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "Procedure": _procedure,
    "Medication": _medication,
    "MedicationStatement": _medication_statement,
    "Observation": _observation,
    "AllergyIntolerance": _allergy,
}
#: resource types written without a profile claim (no MII profile exists for them)
UNPROFILED = {"AllergyIntolerance"}


def check_resource(res: dict[str, Any], catalog: Catalog) -> list[Issue]:
    """Profile checks of one resource (references are the Bundle's to check)."""
    rt = res.get("resourceType")
    profiles = (res.get("meta") or {}).get("profile") or []
    key = PROFILE_KEY.get(profiles[0]) if len(profiles) == 1 else None
    c = _Res(res, key, catalog)
    if rt in UNPROFILED:
        if profiles:
            c.add("profile", "meta.profile", f"{rt} is written without a profile claim")
    elif key is None or key.split(".")[0] != rt:
        c.add("profile", "meta.profile", f"one known {rt} profile expected, got {profiles}")
        return c.issues
    if rt not in _RULES:
        c.add("profile", "resourceType", f"{rt} is not a resource type the export writes")
        return c.issues
    _common(c)
    _RULES[rt](c)
    return c.issues


def check_bundle(bundle: dict[str, Any], catalog: Catalog) -> list[Issue]:
    """The Bundle's own rules, every reference, and every resource's profile checks."""
    out: list[Issue] = []

    def bad(kind: str, where: str, path: str, message: str) -> None:
        out.append(Issue(kind, "error", where, path, message))

    if bundle.get("type") != "transaction":
        bad("bundle", "Bundle", "type", "an export Bundle is a transaction")
    entries = bundle.get("entry") or []
    by_url: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        res = entry.get("resource") or {}
        rt, rid = res.get("resourceType"), res.get("id")
        full = entry.get("fullUrl")
        if full != f"urn:uuid:{rid}":
            bad("bundle", "Bundle", f"entry[{i}].fullUrl", f"fullUrl {full!r} is not urn:uuid:<id>")
        req = entry.get("request") or {}
        if req.get("method") != "PUT" or req.get("url") != f"{rt}/{rid}":
            bad("bundle", "Bundle", f"entry[{i}].request", f"request {req} is not PUT {rt}/{rid}")
        if isinstance(full, str):
            if full in by_url:
                bad("bundle", "Bundle", f"entry[{i}].fullUrl", f"{full} appears twice")
            by_url[full] = res
    types = [(e.get("resource") or {}).get("resourceType") for e in entries]
    for rt in ("Patient", "Encounter"):
        if types.count(rt) != 1:
            bad("bundle", "Bundle", "entry", f"one {rt} per Bundle, found {types.count(rt)}")
    for res in by_url.values():
        name = f"{res.get('resourceType')}/{res.get('id')}"
        out += check_resource(res, catalog)
        for path, key, value in _walk(res):
            if key != "reference" or not isinstance(value, str):
                continue
            target = by_url.get(value)
            element = re.sub(r"\[\d+\]", "", path).split(".")[-2]
            if target is None:
                bad("reference", name, path, f"{value} names no entry of the Bundle")
                continue
            want = REFERENCE_TARGET.get(element)
            if want and target.get("resourceType") != want:
                bad(
                    "reference",
                    name,
                    path,
                    f"{element} must name a {want}, names a {target.get('resourceType')}",
                )
            if element == "focus":
                profiles = (target.get("meta") or {}).get("profile") or []
                if not any(PROFILE_KEY.get(p) in TUMOR_CONDITIONS for p in profiles):
                    bad("reference", name, path, "focus must name a primary-tumour Condition")
    return out


@dataclass
class BundleValidator:
    """fhir.resources (R4B) on every resource and on the Bundle's shell, then the profile checks."""

    catalog: Catalog
    fhir: FastValidator = field(default_factory=FastValidator)

    def validate(self, bundle: dict[str, Any]) -> list[Issue]:
        out = []
        shell = {
            **bundle,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry") or []],
        }
        if err := self.fhir.validate(shell):
            out.append(Issue("fhir", "error", "Bundle", "", err))
        for e in bundle.get("entry") or []:
            res = e.get("resource") or {}
            if err := self.fhir.validate(res):
                out.append(Issue("fhir", "error", f"{res.get('resourceType')}/{res.get('id')}", "", err))
        return out + check_bundle(bundle, self.catalog)
