"""A `Person` as MII-profiled FHIR R4 resources (dicts), with resolvable references."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from clinsynth.cohort.model import Dx, Lab, Med, Person, Proc, Stay, Tumor
from clinsynth.fhir import conventions as fc
from clinsynth.records import CATEGORIES

_ROUTE = {
    "i.v.": ("20045000", "Intravenous use"),
    "p.o.": ("20053000", "Oral use"),
    "s.c.": ("20066000", "Subcutaneous use"),
}
_WHEN = ("MORN", "NOON", "EVE", "NIGHT")
#: German dose units -> UCUM codes
_UCUM = {
    "µg": "ug",
    "mcg": "ug",
    "IE": "[IU]",
    "I.E.": "[IU]",
    "ml": "mL",
    "Hub": "{Hub}",
    "Tbl": "{Tbl}",
    "Stück": "{Stück}",
    "Tropfen": "[drp]",
    "mg/m2": "mg/m2",
    "mg/kg": "mg/kg",
}
_GRADING = {"G1": "1", "G2": "2", "G3": "3", "G4": "4", "GX": "X", "GB": "B", "L": "L", "M": "M", "H": "H"}


def _meta(key: str) -> dict[str, Any]:
    return {"profile": [fc.PROFILE[key]]}


def _coding(system: str, code: str, display: str | None = None, version: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if version:
        c["version"] = version
    if display:
        c["display"] = display
    return c


def _ref(rt: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rt}/{rid}"}


def _d(x: date) -> str:
    return x.isoformat()


def resources(p: Person, shard: int, med_ids: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Patient first, then per stay: Encounter, Conditions, Procedures, Medications, Observations.

    `med_ids` maps ATC -> Medication id already emitted by this shard (one Medication per drug per shard).
    """
    pid = f"pat-{p.key}"
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "meta": _meta("Patient"),
        "identifier": [{"use": "usual", "system": fc.PATIENT_ID_SYSTEM, "value": p.key}],
        "name": [{"use": "official", "family": p.family, "given": p.given.split()}],
        "gender": p.sex,
        "birthDate": _d(p.birth),
        "address": [{"type": "both", "city": p.city, "postalCode": p.postal_code, "country": "DE"}],
    }
    yield patient
    for stay in p.stays:
        yield from _stay(p, pid, stay, shard, med_ids)


def _stay(p: Person, pid: str, st: Stay, shard: int, med_ids: dict[str, str]) -> Iterator[dict[str, Any]]:
    eid = f"enc-{st.key}"
    subject, enc = _ref("Patient", pid), _ref("Encounter", eid)
    cond_ids = [f"cond-{st.key}-{i}" for i in range(len(st.diagnoses))]
    yield {
        "resourceType": "Encounter",
        "id": eid,
        "meta": _meta("Encounter"),
        "status": "finished",
        "class": _coding(fc.ENCOUNTER_CLASS, "IMP", "inpatient encounter"),
        "type": [
            {"coding": [_coding(fc.KONTAKTEBENE, "einrichtungskontakt", "Einrichtungskontakt")]},
            {"coding": [_coding(fc.KONTAKTART, "normalstationaer", "Normalstationär")]},
        ],
        "serviceType": {"coding": [_coding(fc.FACHABTEILUNG, st.department_code, st.department)]},
        "subject": subject,
        "period": {"start": _d(st.start), "end": _d(st.end)},
        "diagnosis": [
            {
                "condition": _ref("Condition", cid),
                "use": {
                    "coding": [
                        _coding(
                            fc.DIAGNOSIS_ROLE,
                            "CC" if dx.role == "main" else "CM",
                            "Chief complaint" if dx.role == "main" else "Comorbidity diagnosis",
                        )
                    ]
                },
                "rank": i + 1,
            }
            for i, (cid, dx) in enumerate(zip(cond_ids, st.diagnoses, strict=True))
        ],
    }
    for cid, dx in zip(cond_ids, st.diagnoses, strict=True):
        yield _condition(cid, dx, subject, enc, st)
    for i, pr in enumerate(st.procedures):
        yield _procedure(f"proc-{st.key}-{i}", pr, subject, enc)
    for i, med in enumerate(st.medications):
        if med.therapy and med.atc not in med_ids:
            med_ids[med.atc] = f"med-s{shard}-{med.atc}"
            yield {
                "resourceType": "Medication",
                "id": med_ids[med.atc],
                "meta": _meta("Medication"),
                "code": {"coding": [_coding(fc.ATC, med.atc, med.name)], "text": med.name},
            }
        yield _medication_statement(
            f"medst-{st.key}-{i}", med, subject, enc, med_ids.get(med.atc) if med.therapy else None
        )
    for i, lab in enumerate(st.labs):
        yield _lab(f"lab-{st.key}-{i}", lab, subject, enc)
    if st.tumor is not None:
        yield from _tumor(st, st.tumor, subject, enc, cond_ids[0])


def _condition(cid: str, dx: Dx, subject: dict, enc: dict, st: Stay) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "meta": _meta("Condition.primary_tumor" if dx.primary_tumor else "Condition"),
        "clinicalStatus": {"coding": [_coding(fc.CONDITION_CLINICAL, "active")]},
        "verificationStatus": {"coding": [_coding(fc.CONDITION_VERIFICATION, "confirmed")]},
        "code": {"coding": [_coding(fc.ICD10GM, dx.icd, dx.display, "2025")]},
        "subject": subject,
        "encounter": enc,
        "onsetDateTime": _d(dx.onset),
        "recordedDate": _d(st.start),
    }
    site = []
    if dx.laterality:
        site.append(_coding(fc.LATERALITY, dx.laterality, {"L": "Links", "R": "Rechts"}[dx.laterality]))
    if dx.topography:
        site.append(_coding(fc.ICDO3, dx.topography))
    if site:
        res["bodySite"] = [{"coding": site}]
    return res


def _procedure(rid: str, pr: Proc, subject: dict, enc: dict) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "meta": _meta("Procedure.operation" if pr.kind == "operation" else "Procedure"),
        "status": "completed",
        "code": {"coding": [_coding(fc.OPS, pr.ops, pr.display, "2025")]},
        "subject": subject,
        "encounter": enc,
        "performedDateTime": _d(pr.when),
    }


def _medication_statement(rid: str, med: Med, subject: dict, enc: dict, med_id: str | None) -> dict[str, Any]:
    route = _ROUTE.get(med.route)
    dosage: dict[str, Any] = {
        "text": f"{med.name} {med.dose:g} {med.unit} {med.route}",
        "doseAndRate": [
            {
                "doseQuantity": {
                    "value": med.dose,
                    "unit": med.unit,
                    "system": fc.UCUM,
                    "code": _UCUM.get(med.unit, med.unit),
                }
            }
        ],
    }
    if route:
        dosage["route"] = {"coding": [_coding(fc.EDQM, route[0], route[1])]}
    if med.schedule:
        when = [w for w, n in zip(_WHEN, med.schedule, strict=True) if n]
        if when:
            dosage["timing"] = {"repeat": {"when": when}}
    res: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": rid,
        "meta": _meta("MedicationStatement.systemic_therapy" if med.therapy else "MedicationStatement"),
        "status": "completed" if med.context == "inpatient" else "active",
        "category": {
            "coding": [
                _coding(fc.MED_STATEMENT_CATEGORY, "inpatient" if med.context == "inpatient" else "community")
            ]
        },
        "subject": subject,
        "context": enc,
        "effectivePeriod": {"start": _d(med.start)},
        "dosage": [dosage],
    }
    if med_id:
        res["medicationReference"] = _ref("Medication", med_id)
    else:
        res["medicationCodeableConcept"] = {"coding": [_coding(fc.ATC, med.atc, med.name)]}
    return res


def _lab(rid: str, lab: Lab, subject: dict, enc: dict) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "meta": _meta("Observation.lab"),
        "status": "final",
        "category": [{"coding": [_coding(fc.OBSERVATION_CATEGORY, "laboratory")]}],
        "code": {"coding": [_coding(fc.LOINC, lab.loinc, lab.name)], "text": lab.name},
        "subject": subject,
        "encounter": enc,
        "effectiveDateTime": _d(lab.when),
        "valueQuantity": {"value": lab.value, "unit": lab.unit, "system": fc.UCUM, "code": lab.unit},
    }
    if lab.low is not None and lab.high is not None:
        res["referenceRange"] = [
            {
                "low": {"value": lab.low, "unit": lab.unit, "system": fc.UCUM, "code": lab.unit},
                "high": {"value": lab.high, "unit": lab.unit, "system": fc.UCUM, "code": lab.unit},
            }
        ]
    return res


def _tumor(st: Stay, t: Tumor, subject: dict, enc: dict, cond_id: str) -> Iterator[dict[str, Any]]:
    focus = [_ref("Condition", cond_id)]
    when = _d(t.when)

    def obs(kind: str, rid: str, code: dict, value: dict, **kw: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": rid,
            "meta": _meta(kind),
            "status": "final",
            "code": code,
            "subject": subject,
            "encounter": enc,
            "focus": focus,
            "effectiveDateTime": when,
            "valueCodeableConcept": value,
            **kw,
        }

    base = f"{st.key}"
    yield obs(
        "Observation.histology",
        f"histo-{base}",
        {"coding": [_coding(fc.LOINC, "59847-4", "Histology and Behavior ICD-O-3 Cancer")]},
        {"coding": [_coding(fc.ICDO3, t.morphology, t.morphology_display)], "text": t.morphology_display},
        bodySite={"coding": [_coding(fc.ICDO3, t.topography)]},
    )
    grade = _GRADING.get(t.grading, t.grading.removeprefix("G"))
    yield obs(
        "Observation.grading",
        f"grading-{base}",
        {"coding": [_coding(fc.LOINC, "33732-9", "Histology grade [Identifier] in Cancer specimen")]},
        {"coding": [_coding(fc.GRADING, grade)]},
    )
    if t.t is None or t.n is None or t.m is None or t.uicc is None:
        return  # haematological entities: no TNM
    prefix = {"coding": [_coding(fc.UICC, t.prefix, t.prefix)]}
    members = []
    for axis, value, snomed in (("t", t.t, "399504009"), ("n", t.n, "399534004"), ("m", t.m, "399387003")):
        rid = f"tnm{axis}-{base}"
        members.append(_ref("Observation", rid))
        yield obs(
            f"Observation.tnm_{axis}",
            rid,
            {
                "coding": [_coding(fc.SNOMED, snomed, f"{axis.upper()} category")],
                "extension": [
                    {
                        "url": f"{fc.ONKO}/mii-ex-onko-tnm-cp-praefix",
                        "valueCodeableConcept": prefix,
                    }
                ],
            },
            {"coding": [_coding(fc.UICC, value)]},
            method={"coding": [_coding(fc.TNM_VERSION, "8", "8. Auflage")]},
        )
    yield obs(
        "Observation.tnm",
        f"tnm-{base}",
        {
            "coding": [
                _coding(fc.SNOMED, "399588009" if t.prefix != "c" else "399537006", "TNM stage grouping")
            ]
        },
        {"coding": [_coding(fc.UICC, t.uicc, f"Stadium {t.uicc}")]},
        hasMember=members,
        method={"coding": [_coding(fc.TNM_VERSION, "8", "8. Auflage")]},
    )


def truth(p: Person) -> dict[str, Any]:
    """What ingest must recover for this patient: codes per category (the round-trip oracle)."""
    cats: dict[str, list[str]] = {k: [] for k in CATEGORIES if k != "observation"}
    for st in p.stays:
        cats["diagnosis"] += [d.icd for d in st.diagnoses]
        cats["procedure"] += [x.ops for x in st.procedures]
        cats["medication"] += [m.atc for m in st.medications]
        cats["lab"] += [x.loinc for x in st.labs]
        if st.tumor:
            t = st.tumor
            if t.t is not None:
                # the generator stages T, N, M and UICC together
                assert t.n is not None and t.m is not None and t.uicc is not None
                cats["tnm_t"].append(t.t)
                cats["tnm_n"].append(t.n)
                cats["tnm_m"].append(t.m)
                cats["uicc_stage"].append(t.uicc)
            cats["grading"].append(_GRADING.get(t.grading, t.grading.removeprefix("G")))
            cats["histology"].append(t.morphology)
    return {
        "patient_id": f"pat-{p.key}",
        "encounters": len(p.stays),
        "sex": p.sex,
        "birth_date": _d(p.birth),
        "facts": {k: sorted(v) for k, v in cats.items()},
    }
