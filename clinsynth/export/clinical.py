"""Diagnoses, procedures, radiotherapy, medications, labs, vitals and smoking as MII-profiled resources.

The mapping and the assertion table are in `clinsynth.export.bundle`'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clinsynth.export.bundle import (
    DATA_ABSENT_REASON_CS,
    ICD_MARK_CS,
    ICD_MARK_EXT,
    IDENTIFIER_TYPE,
    Doc,
    coding,
    data_absent,
    display,
    resource,
)
from clinsynth.export.ucum import ucum_code
from clinsynth.fhir import conventions as fc
from clinsynth.schema import Diagnosis, Lab, Medication, Vital

CONDITION_STATUS = {  # assertion -> (clinicalStatus or None, verificationStatus)
    "present": ("active", "confirmed"),
    "negated": (None, "refuted"),
    "historical": ("inactive", "confirmed"),
    "suspected": ("active", "provisional"),
}
PROCEDURE_STATUS = {
    "present": "completed",
    "negated": "not-done",
    "historical": "completed",
    "suspected": "unknown",
}
OBSERVATION_STATUS = {"present": "final", "historical": "final", "suspected": "preliminary"}
#: lab flag -> v3 ObservationInterpretation
INTERPRETATION = {"high": "H", "low": "L", "critical_high": "HH", "critical_low": "LL", "abnormal": "A"}
INTERPRETATION_CS = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
ALLERGY_STATUS = {
    "present": "confirmed",
    "suspected": "unconfirmed",
    "negated": "refuted",
    "historical": "confirmed",
}
#: laboratory category of the MII Laborbefund: the HL7 category and LOINC "Laboratory studies"
LAB_CATEGORY = [
    {
        "coding": [
            coding(fc.OBSERVATION_CATEGORY, "laboratory", "Laboratory"),
            coding(fc.LOINC, "26436-6", "Laboratory studies (set)"),
        ]
    }
]
#: the Laborbefund's required OBI identifier: a clinsynth system, assigned by clinsynth's export
LAB_RESULT_SYSTEM = "https://clinsynth.invalid/sid/lab-result"
LAB_ASSIGNER = {
    "identifier": {"system": "https://clinsynth.invalid/sid/organization", "value": "clinsynth-export"},
    "display": "clinsynth export",
}
VITAL_CATEGORY = [{"coding": [coding(fc.OBSERVATION_CATEGORY, fc.VITAL_CATEGORY_CODE, "Vital Signs")]}]


def condition_status(assertion: str, historical: str = "inactive") -> dict[str, Any]:
    clinical, verification = CONDITION_STATUS[assertion]
    if assertion == "historical":
        clinical = historical
    out: dict[str, Any] = {}
    if clinical is not None:
        out["clinicalStatus"] = {"coding": [coding(fc.CONDITION_CLINICAL, clinical)]}
    out["verificationStatus"] = {"coding": [coding(fc.CONDITION_VERIFICATION, verification)]}
    return out


def lab_identifier(doc: Doc, key: str) -> list[dict[str, Any]]:
    """The MII Laborbefund's identifier slice (1..1, type OBI): deterministic, `<doc>/<key>`."""
    return [
        {
            "type": {"coding": [coding(IDENTIFIER_TYPE, "OBI")]},
            "system": LAB_RESULT_SYSTEM,
            "value": f"{doc.doc}/{key}",
            "assigner": LAB_ASSIGNER,
        }
    ]


def icd_coding(doc: Doc, code: str, mark: str | None = None) -> dict[str, Any]:
    c = coding(fc.ICD10GM, code, display(doc.catalog.icd10gm, code), doc.cfg.icd10gm_version)
    if mark:
        c = {"extension": [{"url": ICD_MARK_EXT, "valueCoding": coding(ICD_MARK_CS, mark)}], **c}
    return c


def diagnosis_condition(doc: Doc, key: str, d: Diagnosis, profile: str) -> dict[str, Any]:
    assert d.icd10gm is not None
    return resource(
        doc,
        "Condition",
        key,
        profile,
        **condition_status(d.assertion),
        code={"coding": [icd_coding(doc, d.icd10gm, d.icd10gm_mark)], "text": d.text},
        subject=doc.patient,
        encounter=doc.encounter,
        onsetDateTime=d.date,
        **doc.recorded(),
    )


def diagnoses(doc: Doc) -> None:
    for i, d in enumerate(doc.extraction.diagnoses):
        if not d.icd10gm:
            doc.omit("diagnoses", i, "no ICD-10-GM code (the MII Diagnose profile codes the diagnosis)")
            continue
        cond = doc.add(diagnosis_condition(doc, f"Condition/diagnoses/{i}", d, "Condition"))
        doc.conditions[("diagnoses", i)] = cond


def procedures(doc: Doc) -> None:
    for i, p in enumerate(doc.extraction.procedures):
        if not p.ops:
            doc.omit("procedures", i, "no OPS code (the MII Prozedur profile codes the procedure)")
            continue
        ops = coding(fc.OPS, p.ops, display(doc.catalog.ops, p.ops), doc.cfg.ops_version)
        doc.add(
            resource(
                doc,
                "Procedure",
                f"Procedure/procedures/{i}",
                "Procedure",
                status=PROCEDURE_STATUS[p.assertion],
                code={"coding": [ops], "text": p.text},
                subject=doc.patient,
                encounter=doc.encounter,
                **doc.performed(
                    p.date,
                    during_stay=p.assertion in ("present", "suspected"),
                    absent="not-applicable" if p.assertion == "negated" else "unknown",
                ),
            )
        )


def _gy(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "Gy", "system": fc.UCUM, "code": "Gy"}


def radiotherapy(doc: Doc) -> None:
    """MII Strahlentherapie, the dose extensions of its Bestrahlung on the one resource (as the cohort)."""
    tumour = next((c for c in doc.conditions.values() if _is_tumour(c)), None)
    for i, r in enumerate(doc.extraction.radiotherapy):
        ext: list[dict[str, Any]] = []
        if r.total_gy is not None:
            ext.append({"url": fc.MII_RADIOTHERAPY_TOTAL, "valueQuantity": _gy(r.total_gy)})
        if r.fraction_gy is not None:
            ext.append({"url": fc.MII_RADIOTHERAPY_FRACTION, "valueQuantity": _gy(r.fraction_gy)})
        if r.fractions is not None:
            ext.append({"url": fc.EXT_FRACTIONS, "valuePositiveInt": r.fractions})
        if r.intent:
            if r.intent in fc.MII_INTENTION_OF:
                cs = coding(fc.MII_INTENTION, *fc.MII_INTENTION_OF[r.intent])
                ext.append({"url": fc.MII_RADIOTHERAPY_INTENTION, "valueCodeableConcept": {"coding": [cs]}})
            ext.append({"url": fc.EXT_INTENT, "valueCode": r.intent})
        period = {k: v for k, v in (("start", r.start), ("end", r.end)) if v}
        # performed[x] is required (MII Prozedur): a course without dates says nothing of when
        performed = {"performedPeriod": period} if period else doc.performed(None, during_stay=False)
        doc.add(
            resource(
                doc,
                "Procedure",
                f"Procedure/radiotherapy/{i}",
                "Procedure.radiotherapy",
                extension=ext or None,
                status=PROCEDURE_STATUS[r.assertion],
                code={"coding": [coding(*fc.EXTERNAL_BEAM_CODE)]},
                subject=doc.patient,
                encounter=doc.encounter,
                **performed,
                bodySite=[{"text": r.target}],
                reasonReference=[doc.ref(tumour)] if tumour is not None else None,
            )
        )


def _is_tumour(cond: dict[str, Any]) -> bool:
    profiles = cond.get("meta", {}).get("profile", [])
    return any(p.endswith(("diagnose-primaertumor", "fruehere-tumorerkrankung")) for p in profiles)


# ---- medications


def _medication(doc: Doc, m: Medication, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One Medication per drug of the document (by ATC, else by name)."""
    key = f"atc:{m.atc}" if m.atc else f"name:{m.name.casefold()}"
    if key not in cache:
        code: dict[str, Any] = {"text": m.name}
        if m.atc:
            code = {"coding": [coding(fc.ATC, m.atc, display(doc.catalog.atc, m.atc))], "text": m.name}
        cache[key] = doc.add(resource(doc, "Medication", f"Medication/{key}", "Medication", code=code))
    return cache[key]


def _schedule_text(schedule: list[float]) -> str:
    return "-".join(f"{x:g}" for x in schedule)


def _dosage(doc: Doc, m: Medication, owner: dict[str, Any]) -> dict[str, Any]:
    words = [m.name]
    dosage: dict[str, Any] = {}
    if m.dose is not None:
        words.append(f"{m.dose:g}{' ' + m.unit if m.unit else ''}")
        quantity: dict[str, Any] = {"value": m.dose}
        code = ucum_code(m.unit)
        if m.unit:
            quantity["unit"] = m.unit
        if code:
            quantity.update(system=fc.UCUM, code=code)
        elif m.unit:
            doc.note("unit_not_ucum", owner, f"dose unit {m.unit!r} is not UCUM: written as unit text only")
        dosage["doseAndRate"] = [{"doseQuantity": quantity}]
    timing: dict[str, Any] = {}
    if m.schedule:
        words.append(_schedule_text(m.schedule))
        when = [w for w, n in zip(fc.SCHEDULE_WHEN, m.schedule, strict=True) if n]
        if when:
            timing["repeat"] = {"when": when}
    if m.frequency:
        words.append(m.frequency)
        timing["code"] = {"text": m.frequency}
    if timing:
        dosage["timing"] = timing
    if m.as_needed:
        dosage["asNeededBoolean"] = True
        words.append("bei Bedarf")
    if m.route:
        words.append(m.route)
        route = fc.ROUTE_EDQM.get(m.route)
        dosage["route"] = (
            {"coding": [coding(fc.EDQM, *route)], "text": m.route} if route else {"text": m.route}
        )
    return {"text": " ".join(words), **dosage}


def _med_effective(doc: Doc, m: Medication) -> dict[str, Any]:
    if m.assertion == "present":
        if m.context == "discharge" and doc.period.get("end"):
            return {"effectivePeriod": {"start": doc.period["end"]}}
        if m.context == "admission" and doc.period.get("start"):
            return {"effectiveDateTime": doc.period["start"]}
        if m.context in ("inpatient", "therapy") and doc.period.get("start"):
            return doc.stay_period()
    return {"_effectiveDateTime": data_absent()}


def _med_status(m: Medication) -> str:
    if m.assertion == "present":
        return "completed" if m.context in ("inpatient", "therapy") else "active"
    return {"negated": "not-taken", "historical": "completed", "suspected": "unknown"}[m.assertion]


def medications(doc: Doc) -> None:
    cache: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(doc.extraction.medications):
        if m.context == "allergy":
            doc.add(_allergy(doc, i, m))
            continue
        med = _medication(doc, m, cache)
        ext: list[dict[str, Any]] = []
        if m.regimen:
            ext.append({"url": fc.EXT_REGIMEN, "valueString": m.regimen})
        if m.cycle is not None:
            ext.append({"url": fc.EXT_CYCLE, "valuePositiveInt": m.cycle})
        if m.day is not None:
            ext.append({"url": fc.EXT_DAY, "valuePositiveInt": m.day})
        if m.intent:
            ext.append({"url": fc.EXT_INTENT, "valueCode": m.intent})
        category = None
        if m.context:
            code = "inpatient" if m.context in ("inpatient", "therapy") else "community"
            category = {"coding": [coding(fc.MED_STATEMENT_CATEGORY, code)]}
        res = resource(
            doc,
            "MedicationStatement",
            f"MedicationStatement/medications/{i}",
            "MedicationStatement.systemic_therapy" if m.context == "therapy" else "MedicationStatement",
            extension=ext or None,
            status=_med_status(m),
            category=category,
            medicationReference=doc.ref(med),
            subject=doc.patient,
            context=doc.encounter,
            **_med_effective(doc, m),
        )
        res["dosage"] = [_dosage(doc, m, res)]
        doc.add(res)


def _allergy(doc: Doc, i: int, m: Medication) -> dict[str, Any]:
    code: dict[str, Any] = {"text": m.name}
    if m.atc:
        code = {"coding": [coding(fc.ATC, m.atc, display(doc.catalog.atc, m.atc))], "text": m.name}
    clinical = "inactive" if m.assertion == "historical" else "active"
    return resource(
        doc,
        "AllergyIntolerance",
        f"AllergyIntolerance/medications/{i}",
        None,
        clinicalStatus={"coding": [coding(ALLERGY_CLINICAL, clinical)]},
        verificationStatus={"coding": [coding(ALLERGY_VERIFICATION, ALLERGY_STATUS[m.assertion])]},
        type="allergy",
        category=["medication"],
        code=code,
        patient=doc.patient,
        encounter=doc.encounter,
    )


# ---- measurements


def quantity(value: float, unit: str | None) -> dict[str, Any] | None:
    """A UCUM valueQuantity, or None when the unit is absent or not UCUM."""
    code = ucum_code(unit)
    if code is None or unit is None:
        return None
    return {"value": value, "unit": unit, "system": fc.UCUM, "code": code}


def number_text(value: float) -> str:
    """A number as written into a text value: every digit kept (245000, 5.2, 1e-05), so ingest reads
    the same number back."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def as_text(text: str) -> dict[str, Any]:
    """A value the MII Laborbefund cannot hold (value[x] is Quantity, CodeableConcept, Range or Ratio
    only; a CodeableConcept needs a coding): dataAbsentReason as-text, the value as written in note.
    Ingest reads it back (`ingest.extract._note_value`): "<number> <unit word>" as the number and its
    unit, any other text as the text value."""
    return {
        "dataAbsentReason": {"coding": [coding(DATA_ABSENT_REASON_CS, "as-text", "As Text")]},
        "note": [{"text": text}],
    }


def lab_value(doc: Doc, x: Lab | Vital, res: dict[str, Any]) -> dict[str, Any]:
    """valueQuantity (UCUM); else (text, or a number without UCUM unit) `as_text`; else dataAbsentReason."""
    if x.value is not None:
        q = quantity(x.value, x.unit)
        if q is not None:
            return {"valueQuantity": q}
        text = f"{number_text(x.value)}{' ' + x.unit if x.unit else ''}"
        why = f"unit {x.unit!r} is not UCUM" if x.unit else "no unit"
        doc.note(
            "unit_not_ucum" if x.unit else "no_unit",
            res,
            f"{why}: value kept as written in note {text!r} (dataAbsentReason as-text)",
        )
        return as_text(text)
    if x.value_text:
        return as_text(x.value_text)
    return {"dataAbsentReason": {"coding": [coding(DATA_ABSENT_REASON_CS, "unknown", "Unknown")]}}


def measurements(doc: Doc) -> None:
    facts: list[tuple[str, Sequence[Lab | Vital]]] = [
        ("labs", doc.extraction.labs),
        ("vitals", doc.extraction.vitals),
    ]
    for kind, items in facts:
        for i, x in enumerate(items):
            if x.assertion not in OBSERVATION_STATUS:
                doc.omit(kind, i, f"{x.assertion} measurement (no Observation states an absent value)")
                continue
            if not x.loinc:
                doc.omit(kind, i, "no LOINC code (the MII Laborbefund and vital-signs profiles code it)")
                continue
            if kind == "vitals" and (x.value is None or quantity(x.value, x.unit) is None):
                doc.omit(kind, i, "no value with a UCUM unit (the vital-signs profile needs one)")
                continue
            lab = kind == "labs"
            res = resource(
                doc,
                "Observation",
                f"Observation/{kind}/{i}",
                "Observation.lab" if lab else "Observation.vital",
                identifier=lab_identifier(doc, f"{kind}/{i}") if lab else None,
                status=OBSERVATION_STATUS[x.assertion],
                category=LAB_CATEGORY if lab else VITAL_CATEGORY,
                code={
                    "coding": [coding(fc.LOINC, x.loinc, display(doc.catalog.loinc, x.loinc))],
                    "text": x.name,
                },
                subject=doc.patient,
                encounter=doc.encounter,
                # the Laborbefund's effective[x] is a dateTime only: no stay period for a lab
                **doc.effective(x.date, during_stay=not lab and x.assertion != "historical"),
            )
            res.update(lab_value(doc, x, res))
            flag = getattr(x, "flag", None)
            if flag:
                res["interpretation"] = [{"coding": [coding(INTERPRETATION_CS, INTERPRETATION[flag])]}]
            doc.add(res)


def risk_factors(doc: Doc) -> None:
    answer = {"present": "current", "negated": "never", "historical": "former"}
    for i, r in enumerate(doc.extraction.risk_factors):
        if r.kind != "smoking":
            doc.omit("risk_factors", i, f"{r.kind}: no MII profile for this risk factor")
            continue
        if r.assertion not in answer:
            doc.omit("risk_factors", i, "suspected smoking: no SNOMED CT answer for it")
            continue
        status = answer[r.assertion]
        snomed, text = fc.SMOKING_SNOMED[status]
        res = resource(
            doc,
            "Observation",
            f"Observation/risk_factors/{i}",
            "Observation.smoking",
            status="final",
            category=[{"coding": [coding(fc.OBSERVATION_CATEGORY, "social-history")]}],
            code={"coding": [coding(*fc.SMOKING_CODE)], "text": r.text},
            subject=doc.patient,
            encounter=doc.encounter,
            **doc.effective(None, required=False),
            valueCodeableConcept={"coding": [coding(fc.SNOMED, snomed, text), coding(fc.SMOKING_CS, status)]},
        )
        if r.pack_years is not None:
            q = {"value": r.pack_years, "unit": "pack-years", "system": fc.UCUM, "code": "{PackYears}"}
            res["component"] = [{"code": {"coding": [coding(*fc.PACK_YEARS_CODE)]}, "valueQuantity": q}]
        doc.add(res)
