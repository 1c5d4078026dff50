"""A `Person` as MII-profiled FHIR R4 resources (dicts), with resolvable references.

The MII core and oncology profiles carry most of the course (TNM with L/V/Pn/R and lymph
nodes, residual status, further classifications, ECOG, Verlauf, distant metastases,
receptor status, radiotherapy doses). What they have no element for (initial vs current
staging, regimen/cycle/day, stay kind, postponed cycles, a marker result code) goes into
clinsynth extensions and code systems (`conventions.CLINSYNTH`), so that every model field
survives ingest: `truth()` states them per field and tests/stages/test_cohort.py checks each.
Tumour observations point to their primary-tumour Condition (`focus`), so two tumours of
one patient stay apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from clinsynth.cohort.model import Dx, Lab, Marker, Med, Person, Proc, Radiotherapy, Stay, Tumor, Vital
from clinsynth.fhir import conventions as fc
from clinsynth.records import CATEGORIES

_ROUTE = fc.ROUTE_EDQM
_WHEN = fc.SCHEDULE_WHEN
_UCUM = fc.UNIT_UCUM
_GRADING = fc.GRADING_OF


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


_SMOKING = fc.SMOKING_SNOMED
_MII_INTENTION = fc.MII_INTENTION_OF
_MII_STATUS = fc.MII_STATUS_OF
#: ICD-10-GM metastasis code -> MII site code (mii-cs-onko-fernmetastasen)
_MII_SITE = {
    "C78.0": ("PUL", "Lunge"),
    "C78.2": ("PLE", "Pleura"),
    "C78.6": ("PER", "Peritoneum"),
    "C78.7": ("HEP", "Leber"),
    "C79.3": ("BRA", "Hirn"),
    "C79.5": ("OSS", "Knochen"),
    "C79.2": ("SKI", "Haut"),
    "C79.7": ("ADR", "Nebennieren"),
    "C77": ("LYM", "Lymphknoten"),
}
_LYMPH_NODES = fc.LYMPH_NODES_LOINC
_MARKER_PROFILE = fc.MARKER_PROFILE_OF


def _tumor_conditions(p: Person) -> dict[tuple[str, str], str]:
    """(stay key, tumour key) -> the primary-tumour Condition id its observations point to.

    A tumour's own diagnosis is the stay's primary-tumour Dx with its `tumor_key`; a Dx marked
    primary without a key belongs to the stay's main tumour. A tumour without a diagnosis in the
    stay points to the latest earlier one (a Condition of the same patient).
    """
    out: dict[tuple[str, str], str] = {}
    latest: dict[str, str] = {}
    for st in p.stays:
        main_key = st.tumor.key if st.tumor is not None else None
        for i, dx in enumerate(st.diagnoses):
            key = dx.tumor_key or main_key
            if dx.primary_tumor and key is not None and (st.key, key) not in out:
                out[(st.key, key)] = latest[key] = f"cond-{st.key}-{i}"
        for t in _tumors(st):
            if (st.key, t.key) not in out:
                if t.key not in latest:
                    raise ValueError(
                        f"patient {p.key}, stay {st.key}: tumour {t.key!r} has no primary-tumour diagnosis "
                        "(a Dx with primary_tumor=True and tumor_key) in this or an earlier stay"
                    )
                out[(st.key, t.key)] = latest[t.key]
    return out


def _tumors(st: Stay) -> list[Tumor]:
    return ([st.tumor] if st.tumor is not None else []) + list(st.other_tumors)


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
    tumor_cond = _tumor_conditions(p)
    for i, stay in enumerate(p.stays):
        yield from _stay(p, pid, stay, shard, med_ids, tumor_cond)
        if i == 0 and p.smoking is not None:
            yield _smoking(p, stay, _ref("Patient", pid), _ref("Encounter", f"enc-{stay.key}"))


def _stay(
    p: Person, pid: str, st: Stay, shard: int, med_ids: dict[str, str], tumor_cond: dict[tuple[str, str], str]
) -> Iterator[dict[str, Any]]:
    eid = f"enc-{st.key}"
    subject, enc = _ref("Patient", pid), _ref("Encounter", eid)
    cond_ids = [f"cond-{st.key}-{i}" for i in range(len(st.diagnoses))]
    yield {
        "resourceType": "Encounter",
        "id": eid,
        "meta": _meta("Encounter"),
        "extension": [{"url": fc.EXT_STAY_KIND, "valueCode": st.kind}]
        + ([{"url": fc.EXT_POSTPONED, "valueCode": st.postpone_reason or "other"}] if st.postponed else []),
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
    main_key = st.tumor.key if st.tumor is not None else None
    for cid, dx in zip(cond_ids, st.diagnoses, strict=True):
        key = dx.tumor_key or (main_key if dx.primary_tumor else None)
        primary = tumor_cond.get((st.key, key)) if key is not None else None
        yield _condition(cid, dx, subject, enc, st, None if primary == cid else primary)
    for i, pr in enumerate(st.procedures):
        yield _procedure(f"proc-{st.key}-{i}", pr, subject, enc)
    main_cond = tumor_cond.get((st.key, main_key)) if main_key is not None else None
    for i, rt in enumerate(st.radiotherapy):
        yield _radiotherapy(f"rt-{st.key}-{i}", rt, subject, enc, main_cond)
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
    for i, vital in enumerate(st.vitals):
        yield _vital(f"vital-{st.key}-{i}", vital, subject, enc)
    for t in _tumors(st):
        yield from _tumor(st, t, subject, enc, tumor_cond[(st.key, t.key)])


def _condition(cid: str, dx: Dx, subject: dict, enc: dict, st: Stay, primary: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "meta": _meta("Condition.primary_tumor" if dx.primary_tumor else "Condition"),
        "clinicalStatus": {"coding": [_coding(fc.CONDITION_CLINICAL, "active")]},
        "verificationStatus": {"coding": [_coding(fc.CONDITION_VERIFICATION, dx.verification)]},
        "code": {"coding": [_coding(fc.ICD10GM, dx.icd, dx.display, "2025")]},
        "subject": subject,
        "encounter": enc,
        "onsetDateTime": _d(dx.onset),
        "recordedDate": _d(st.start),
    }
    if primary is not None:
        # a metastasis or other diagnosis of a tumour: which primary tumour it belongs to
        res["extension"] = [{"url": fc.CONDITION_RELATED, "valueReference": _ref("Condition", primary)}]
    site = []
    if dx.laterality:
        site.append(_coding(fc.LATERALITY, dx.laterality, {"L": "Links", "R": "Rechts"}.get(dx.laterality)))
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


def _gy(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "Gy", "system": fc.UCUM, "code": "Gy"}


def _radiotherapy(rid: str, rt: Radiotherapy, subject: dict, enc: dict, cond: str | None) -> dict[str, Any]:
    """MII Strahlentherapie with the Bestrahlung's dose extensions on the one resource."""
    ext: list[dict[str, Any]] = [
        {"url": fc.MII_RADIOTHERAPY_TOTAL, "valueQuantity": _gy(rt.total_gy)},
        {"url": fc.MII_RADIOTHERAPY_FRACTION, "valueQuantity": _gy(rt.fraction_gy)},
        {"url": fc.EXT_FRACTIONS, "valuePositiveInt": rt.fractions},
    ]
    if rt.concurrent:
        ext.append({"url": fc.EXT_CONCURRENT, "valueString": rt.concurrent})
    if rt.intent:
        if rt.intent in _MII_INTENTION:
            code, display = _MII_INTENTION[rt.intent]
            ext.append(
                {
                    "url": fc.MII_RADIOTHERAPY_INTENTION,
                    "valueCodeableConcept": {"coding": [_coding(fc.MII_INTENTION, code, display)]},
                }
            )
        ext.append({"url": fc.EXT_INTENT, "valueCode": rt.intent})
    coding = _coding(fc.OPS, rt.ops, None, "2025") if rt.ops else _coding(*fc.EXTERNAL_BEAM_CODE)
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": rid,
        "meta": _meta("Procedure.radiotherapy"),
        "extension": ext,
        "status": "completed",
        "code": {"coding": [coding]},
        "subject": subject,
        "encounter": enc,
        "performedPeriod": {"start": _d(rt.start), "end": _d(rt.end)},
        "bodySite": [{"text": rt.target}],
    }
    if cond is not None:
        res["reasonReference"] = [_ref("Condition", cond)]
    return res


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
    if med.per_dose is not None and med.per_unit:
        # the prescription per body measure (85 mg/m2, AUC 5) beside the dose it gave (160 mg)
        dosage["doseAndRate"][0]["type"] = {"coding": [_coding(fc.DOSE_RATE_TYPE, "calculated")]}
        dosage["doseAndRate"].append(
            {
                "type": {"coding": [_coding(fc.DOSE_RATE_TYPE, "ordered")]},
                "doseQuantity": _quantity(med.per_dose, med.per_unit),
            }
        )
    if med.as_needed:
        dosage["asNeededBoolean"] = True
    if route:
        dosage["route"] = {"coding": [_coding(fc.EDQM, route[0], route[1])]}
    timing: dict[str, Any] = {}
    if med.schedule:
        when = [w for w, n in zip(_WHEN, med.schedule, strict=True) if n]
        if when:
            timing["repeat"] = {"when": when}
    if med.frequency:
        timing["code"] = {"text": med.frequency}
    if timing:
        dosage["timing"] = timing
    ext: list[dict[str, Any]] = []
    if med.regimen:
        ext.append({"url": fc.EXT_REGIMEN, "valueString": med.regimen})
    if med.cycle is not None:
        ext.append({"url": fc.EXT_CYCLE, "valuePositiveInt": med.cycle})
    if med.day is not None:
        ext.append({"url": fc.EXT_DAY, "valuePositiveInt": med.day})
    if med.intent:
        ext.append({"url": fc.EXT_INTENT, "valueCode": med.intent})
    period = {"start": _d(med.start)}
    if med.end is not None:
        period["end"] = _d(med.end)
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
        "effectivePeriod": period,
        "dosage": [dosage],
    }
    if ext:
        res["extension"] = ext
    if med_id:
        res["medicationReference"] = _ref("Medication", med_id)
    else:
        res["medicationCodeableConcept"] = {"coding": [_coding(fc.ATC, med.atc, med.name)]}
    return res


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": fc.UCUM, "code": _UCUM.get(unit, unit)}


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


def _vital(rid: str, v: Vital, subject: dict, enc: dict) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": _meta("Observation.vital"),
        "status": "final",
        "category": [{"coding": [_coding(fc.OBSERVATION_CATEGORY, fc.VITAL_CATEGORY_CODE, "Vital Signs")]}],
        "code": {"coding": [_coding(fc.LOINC, v.loinc, v.name)], "text": v.name},
        "subject": subject,
        "encounter": enc,
        "effectiveDateTime": _d(v.when),
        "valueQuantity": _quantity(v.value, v.unit),
    }


def _smoking(p: Person, st: Stay, subject: dict, enc: dict) -> dict[str, Any]:
    assert p.smoking is not None
    snomed, display = _SMOKING[p.smoking]
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"smoking-{p.key}",
        "meta": _meta("Observation.smoking"),
        "status": "final",
        "category": [{"coding": [_coding(fc.OBSERVATION_CATEGORY, "social-history")]}],
        "code": {"coding": [_coding(*fc.SMOKING_CODE)]},
        "subject": subject,
        "encounter": enc,
        "effectiveDateTime": _d(st.start),
        "valueCodeableConcept": {
            "coding": [_coding(fc.SNOMED, snomed, display), _coding(fc.SMOKING_CS, p.smoking)]
        },
    }
    if p.pack_years is not None:
        res["component"] = [
            {
                "code": {"coding": [_coding(*fc.PACK_YEARS_CODE)]},
                "valueQuantity": {
                    "value": p.pack_years,
                    "unit": "pack-years",
                    "system": fc.UCUM,
                    "code": "{PackYears}",
                },
            }
        ]
    return res


def _tumor(st: Stay, t: Tumor, subject: dict, enc: dict, cond_id: str) -> Iterator[dict[str, Any]]:
    """One tumour's observations, each pointing to its primary-tumour Condition (`focus`)."""
    focus = [_ref("Condition", cond_id)]
    when = _d(t.when)
    kind_ext = [{"url": fc.EXT_STAGING_KIND, "valueCode": t.kind}]

    def obs(kind: str, rid: str, code: dict, value: dict | None, **kw: Any) -> dict[str, Any]:
        res = {
            "resourceType": "Observation",
            "id": rid,
            "meta": _meta(kind),
            "status": "final",
            "code": code,
            "subject": subject,
            "encounter": enc,
            "focus": focus,
            "effectiveDateTime": when,
            **kw,
        }
        if value is not None:
            res["valueCodeableConcept"] = value
        return res

    base = f"{st.key}-{t.key}"
    if t.confirmed:  # before histology (a "V.a." stay) neither morphology nor grade is known
        yield from _histology(obs, base, t)
    yield from _staging(obs, base, t, kind_ext)


def _histology(obs: Any, base: str, t: Tumor) -> Iterator[dict[str, Any]]:
    yield obs(
        "Observation.histology",
        f"histo-{base}",
        {"coding": [_coding(*fc.HISTOLOGY_CODE)]},
        {"coding": [_coding(fc.ICDO3, t.morphology, t.morphology_display)], "text": t.morphology_display},
        bodySite={"coding": [_coding(fc.ICDO3, t.topography)]},
    )
    grade = _GRADING.get(t.grading, t.grading.removeprefix("G"))
    yield obs(
        "Observation.grading",
        f"grading-{base}",
        {"coding": [_coding(*fc.GRADING_CODE)]},
        {"coding": [_coding(fc.GRADING, grade)]},
    )


def _staging(obs: Any, base: str, t: Tumor, kind_ext: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """TNM with L/V/Pn/R and lymph nodes, stage groups, markers, ECOG, status, metastasis sites."""
    tnm_method = {"coding": [_coding(fc.TNM_VERSION, "8", "8. Auflage")]}
    members = []
    prefixes = {"t": t.prefix, "n": t.n_prefix or t.prefix, "m": t.m_prefix or t.prefix}
    for axis, value in (("t", t.t), ("n", t.n), ("m", t.m)):
        if value is None:
            continue
        rid = f"tnm{axis}-{base}"
        members.append(_ref("Observation", rid))
        node_members = []
        if axis == "n" and t.nodes:
            positive, examined = (int(x) for x in t.nodes.split("/"))
            for role, count in (("positive", positive), ("examined", examined)):
                loinc, display = _LYMPH_NODES[role]
                nid = f"ln{role[0]}-{base}"
                node_members.append(_ref("Observation", nid))
                yield obs(
                    f"Observation.nodes_{role}",
                    nid,
                    {"coding": [_coding(fc.LOINC, loinc, display)]},
                    None,
                    category=[{"coding": [_coding(fc.OBSERVATION_CATEGORY, "laboratory")]}],
                    valueQuantity={"value": count, "unit": "1", "system": fc.UCUM, "code": "1"},
                    extension=kind_ext,
                )
        prefix = prefixes[axis]
        yield obs(
            f"Observation.tnm_{axis}",
            rid,
            {
                "coding": [_coding(*fc.TNM_CATEGORY_CODE[axis])],
                "extension": [
                    {
                        "url": f"{fc.ONKO}/mii-ex-onko-tnm-cp-praefix",
                        "valueCodeableConcept": {"coding": [_coding(fc.UICC, prefix, prefix)]},
                    }
                ],
            },
            {"coding": [_coding(fc.UICC, value)]},
            method=tnm_method,
            extension=kind_ext,
            **({"hasMember": node_members} if node_members else {}),
        )
    for axis, value in (("l", t.l), ("v", t.v), ("pn", t.pn)):
        if value is None:
            continue
        rid = f"tnm{axis}-{base}"
        members.append(_ref("Observation", rid))
        yield obs(
            f"Observation.tnm_{axis}",
            rid,
            {"coding": [_coding(*fc.TNM_CATEGORY_CODE[axis])]},
            {"coding": [_coding(fc.UICC, value)]},
            method=tnm_method,
            extension=kind_ext,
        )
    if t.r is not None:
        yield obs(
            "Observation.residual",
            f"residual-{base}",
            {"coding": [_coding(*fc.RESIDUAL_CODE)]},
            {"coding": [_coding(fc.RESIDUAL, t.r)]},
            extension=kind_ext,
        )
    if t.uicc is not None:
        yield obs(
            "Observation.tnm",
            f"tnm-{base}",
            {"coding": [_coding(*fc.TNM_GROUPING_CODE["clinical" if t.prefix == "c" else "pathological"])]},
            {"coding": [_coding(fc.UICC, t.uicc, f"Stadium {t.uicc}")]},
            method=tnm_method,
            extension=kind_ext,
            **({"hasMember": members} if members else {}),
        )
    for i, (system, value) in enumerate(t.stages):
        name = fc.stage_system_name(system)
        yield obs(
            "Observation.other_stage",
            f"stage-{base}-{i}",
            {
                "coding": [_coding(f"{fc.CLINSYNTH_CS}/staging-system", name)],
                "text": f"{system}-Klassifikation",
            },
            {"coding": [_coding(fc.STAGE_SYSTEMS[name], value)], "text": value},
            extension=kind_ext,
        )
    for i, mk in enumerate(t.markers):
        yield _marker(obs, f"marker-{base}-{i}", mk)
    if t.ecog is not None:
        yield obs(
            "Observation.ecog",
            f"ecog-{base}",
            {"coding": [_coding(*c) for c in fc.ECOG_CODES]},
            {"coding": [_coding(fc.ECOG, str(t.ecog))]},
        )
    if t.status is not None:
        codings = [_coding(fc.TUMOR_STATUS, t.status)]
        if t.status in _MII_STATUS:
            codings.append(_coding(fc.MII_STATUS, *_MII_STATUS[t.status]))
        yield obs(
            "Observation.status",
            f"status-{base}",
            {"coding": [_coding(*fc.TUMOR_STATUS_CODE)]},
            {"coding": codings},
        )
    for i, site in enumerate(t.metastasis_sites):
        # ICD-10 metastasis codes (C77-C79) or ICD-O-3 topographies (C22.0)
        system = fc.ICD10GM if site[:3] in ("C77", "C78", "C79") else fc.ICDO3
        codings = [_coding(system, site)]
        mii = _MII_SITE.get(site) or _MII_SITE.get(site[:3])
        if mii:
            codings.append(_coding(fc.MII_METASTASIS, *mii))
        yield obs(
            "Observation.metastasis",
            f"meta-{base}-{i}",
            {"coding": [_coding(*fc.METASTASIS_CODE)]},
            {"coding": codings},
        )


def _marker(obs: Any, rid: str, mk: Marker) -> dict[str, Any]:
    """A receptor / mutation status: the result as the value, a stated number as a component."""
    code = (
        {"coding": [_coding(fc.LOINC, mk.loinc, mk.name)], "text": mk.name}
        if mk.loinc
        else {"coding": [_coding(fc.MARKER_CS, mk.name)], "text": mk.name}
    )
    value: dict[str, Any] = {"coding": [_coding(fc.MARKER_RESULT, mk.result)]}
    if mk.text:
        value["text"] = mk.text
    kw: dict[str, Any] = {}
    if mk.value is not None:
        kw["component"] = [{"code": code, "valueQuantity": _quantity(mk.value, mk.unit or "1")}]
    kind = _MARKER_PROFILE.get(mk.loinc or "", "Observation.lab")
    return obs(
        kind, rid, code, value, category=[{"coding": [_coding(fc.OBSERVATION_CATEGORY, "laboratory")]}], **kw
    )


_ASSERTION = {"confirmed": "present", "provisional": "suspected", "refuted": "negated"}


def _g(x: float | int | None) -> str:
    return "-" if x is None else f"{x:g}"


def truth(p: Person) -> dict[str, Any]:
    """What ingest must recover for this patient (the round-trip oracle).

    `facts`: codes per category. `fields`: per v2 field a sorted list of "key:value" strings
    that tie each value to its fact, so a test can name the field that did not survive.
    """
    cats: dict[str, list[str]] = {k: [] for k in CATEGORIES if k != "observation"}
    fields: dict[str, list[str]] = {}

    def put(name: str, value: str) -> None:
        fields.setdefault(name, []).append(value)

    tumor_cond = _tumor_conditions(p)
    cond_icd = {f"cond-{st.key}-{i}": dx.icd for st in p.stays for i, dx in enumerate(st.diagnoses)}
    for st in p.stays:
        put("encounter.stay_kind", f"enc-{st.key}:{st.kind}:{st.postpone_reason if st.postponed else '-'}")
        cats["diagnosis"] += [d.icd for d in st.diagnoses]
        main_key = st.tumor.key if st.tumor is not None else None
        for d in st.diagnoses:
            put("diagnosis.assertion", f"{d.icd}:{_ASSERTION[d.verification]}")
            key = d.tumor_key or (main_key if d.primary_tumor else None)
            if key is not None:
                put("diagnosis.tumor", f"{d.icd}->{cond_icd[tumor_cond[(st.key, key)]]}")
            elif d.primary_tumor:  # a primary tumour without staging in this stay: its own group
                put("diagnosis.tumor", f"{d.icd}->{d.icd}")
        cats["procedure"] += [x.ops for x in st.procedures]
        for m in st.medications:
            cats["medication"].append(m.atc)
            put(
                "medication.v2",
                f"{m.atc}:{'as_needed' if m.as_needed else '-'}:{m.frequency or '-'}:{m.regimen or '-'}:"
                f"{_g(m.cycle)}:{_g(m.day)}:{m.intent or '-'}:{_d(m.start)}:{_d(m.end) if m.end else '-'}",
            )
            per = m.per_dose is not None and m.per_unit
            put(
                "medication.dose",
                f"{m.atc}:{_g(m.dose)}:{_UCUM.get(m.unit, m.unit)}:{_g(m.per_dose) if per else '-'}:"
                f"{_UCUM.get(m.per_unit, m.per_unit) if per and m.per_unit else '-'}",
            )
        cats["lab"] += [x.loinc for x in st.labs]
        for r in st.radiotherapy:
            code = r.ops or fc.EXTERNAL_BEAM_CODE[1]
            cats["radiotherapy"].append(code)
            put(
                "radiotherapy",
                f"{code}:{r.target}:{_g(r.total_gy)}:{_g(r.fraction_gy)}:{r.fractions}:{_d(r.start)}:"
                f"{_d(r.end)}:{r.intent or '-'}:{r.concurrent or '-'}",
            )
        for v in st.vitals:
            cats["vital"].append(v.loinc)
            put("vital", f"{v.loinc}:{_g(v.value)}:{_UCUM.get(v.unit, v.unit)}:{_d(v.when)}")
        for t in _tumors(st):
            primary_icd = cond_icd[tumor_cond[(st.key, t.key)]]
            group: list[str] = []

            def fact(
                cat: str, code: str, staged: bool = False, t: Tumor = t, group: list[str] = group
            ) -> None:
                cats[cat].append(code)
                group.append(f"{cat}={code}")
                if staged:
                    put("staging", f"{cat}={code}:{t.kind}:{_d(t.when)}")

            if t.confirmed:
                fact("histology", t.morphology)
                fact("grading", _GRADING.get(t.grading, t.grading.removeprefix("G")))
            prefixes = {"t": t.prefix, "n": t.n_prefix or t.prefix, "m": t.m_prefix or t.prefix}
            for axis, value in (("t", t.t), ("n", t.n), ("m", t.m)):
                if value is not None:
                    fact(f"tnm_{axis}", value, True)
                    put("tnm.prefix", f"{value}:{prefixes[axis]}")
            for cat, value in (("tnm_l", t.l), ("tnm_v", t.v), ("tnm_pn", t.pn), ("tnm_r", t.r)):
                if value is not None:
                    fact(cat, value, True)
            if t.nodes:
                for role, count in zip(("positive", "examined"), t.nodes.split("/"), strict=True):
                    fact("lymph_nodes", _LYMPH_NODES[role][0], True)
                    put("lymph_nodes", f"{role}:{int(count)}")
            if t.uicc is not None:
                fact("uicc_stage", t.uicc, True)
            for system, value in t.stages:
                fact("stage_other", value, True)
                put("stage_other.system", f"{fc.stage_system_name(system)}:{value}")
            for mk in t.markers:
                fact("marker_status", mk.loinc or mk.name)
                unit = _UCUM.get(mk.unit or "1", mk.unit or "1") if mk.value is not None else "-"
                put(
                    "marker_status",
                    f"{mk.loinc or mk.name}:{mk.result}:{_g(mk.value)}:{unit}:{mk.text or '-'}",
                )
            if t.ecog is not None:
                fact("ecog", str(t.ecog))
            if t.status is not None:
                fact("tumor_status", t.status)
            for site in t.metastasis_sites:
                fact("metastasis", site)
            put("tumor.facts", f"enc-{st.key}|{primary_icd}|" + ",".join(sorted(group)))
    if p.smoking is not None:
        cats["smoking"].append(_SMOKING[p.smoking][0])
        put("smoking", f"{p.smoking}:{_g(p.pack_years)}")
    return {
        "patient_id": f"pat-{p.key}",
        "encounters": len(p.stays),
        "sex": p.sex,
        "birth_date": _d(p.birth),
        "facts": {k: sorted(v) for k, v in cats.items()},
        "fields": {k: sorted(v) for k, v in sorted(fields.items())},
    }
