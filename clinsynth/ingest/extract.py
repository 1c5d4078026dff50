"""From one valid FHIR resource to record rows, plus what the caller must still check.

Pure functions of the resource: references are returned unresolved (the ingest loop
holds the id sets), so this runs in worker processes.

Each extractor declares the fields that *steer* it (`STEERING`): leaves whose values are
compared, looked up, matched or combined rather than copied into the result, and the code
systems the caller checks. Extraction plans (`plans.py`) pin exactly these leaves, so a
new check on a field must be declared beside it; `tests/unit/test_plans.py` feeds random
and declared values into every leaf and compares plans with this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clinsynth.fhir import conventions as fc

Extractor = Callable[[dict[str, Any]], "Extracted"]
#: resource type -> its extractor
_EXTRACTORS: dict[str, Extractor] = {}
#: resource type -> {dotted key path (list indices dropped): values that steer it differently}
STEERING: dict[str, dict[str, tuple[Any, ...]]] = {}
#: every resource: the type picks the extractor
_ALWAYS: dict[str, tuple[Any, ...]] = {"resourceType": ()}


def steering(resource_type: str) -> dict[str, tuple[Any, ...]]:
    """The steering fields of a resource type (types without an extractor: only resourceType)."""
    return STEERING.get(resource_type, _ALWAYS)


def _extractor(*types: str, steers: dict[str, tuple[Any, ...]]) -> Callable[[Extractor], Extractor]:
    """Register an extractor with the fields that steer it (see the module docstring)."""

    def register(fn: Extractor) -> Extractor:
        for rt in types:
            _EXTRACTORS[rt] = fn
            STEERING[rt] = {**_ALWAYS, **steers}
        return fn

    return register


@dataclass
class Extracted:
    kind: str  # patient | encounter | medication | facts | ignored
    resource_type: str | None = None
    resource_id: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    patient_ref: str | None = None
    encounter_ref: str | None = None
    medication_ref: str | None = None
    #: (element path, system) of every coding that ingest interprets
    systems: list[tuple[str, str | None]] = field(default_factory=list)
    #: (element path, iso date) pairs to check against birth/death and the reference date
    dates: list[tuple[str, str]] = field(default_factory=list)
    #: encounter diagnoses: (condition id, role)
    diagnosis_roles: list[tuple[str, str]] = field(default_factory=list)
    #: Medication resources: id -> (system, code, display)
    medication: tuple[str | None, str | None, str | None] | None = None
    #: set by an extraction plan: its pinned code systems need checking only once
    plan: Any = field(default=None, repr=False, compare=False)


_REF_RE = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/.*)?$")


def ref_id(ref: dict[str, Any] | None, expected_type: str) -> str | None:
    """'Patient/123' -> '123'; urn:uuid refs -> the full urn.

    An absolute URL (`https://other.example/fhir/Patient/123`) names a resource on another
    server: it is never linked to a local Patient/123, and so reported as dangling with the URL.
    """
    if not ref or not isinstance(ref, dict):
        return None
    value = ref.get("reference")
    if not isinstance(value, str):
        return None
    if value.startswith("urn:uuid:"):
        return value
    if "://" in value:
        return f"!{value}"  # external: dangling by construction, the detail names the URL
    m = _REF_RE.match(value)
    if not m or m.group(1) != expected_type:
        return f"!{value}"  # wrong type or unparseable: dangling by construction
    return m.group(2)


def _strs(values: list[Any] | None) -> list[str]:
    """A primitive list without its nulls (FHIR keeps them as placeholders for `_element` extensions)."""
    return [v for v in values or () if isinstance(v, str)]


def _first_coding(cc: dict[str, Any] | None, systems: tuple[str, ...]) -> dict[str, Any] | None:
    if not cc:
        return None
    codings = cc.get("coding") or []
    for system in systems:
        for c in codings:
            if c.get("system") == system and c.get("code"):
                return c
    return None


def _any_coding(cc: dict[str, Any] | None) -> dict[str, Any] | None:
    codings = (cc or {}).get("coding") or []
    return codings[0] if codings else None


def _codings(cc: dict[str, Any] | None, path: str, out: list[tuple[str, str | None]]) -> None:
    for c in (cc or {}).get("coding") or []:
        out.append((path, c.get("system")))


def _period(res: dict[str, Any], prefix: str) -> tuple[str | None, str | None]:
    if prefix + "DateTime" in res:
        return res[prefix + "DateTime"], None
    if prefix + "Period" in res:
        p = res[prefix + "Period"]
        return p.get("start"), p.get("end")
    if prefix + "Instant" in res:
        return res[prefix + "Instant"], None
    return None, None


def _fact(res: dict[str, Any], category: str, **kw: Any) -> dict[str, Any]:
    extra = kw.pop("extra", None)
    row = {
        "resource_type": res["resourceType"],
        "resource_id": res.get("id"),
        "category": category,
        "system": None,
        "code": None,
        "display": None,
        "text": None,
        "value_num": None,
        "value_str": None,
        "unit": None,
        "date": None,
        "end_date": None,
        "status": res.get("status"),
        "assertion": "present",
        "role": None,
        "extra": extra or None,  # a dict here; the writer serialises it
    }
    row.update(kw)
    v = row["value_num"]
    if isinstance(v, int) and not isinstance(v, bool):
        # a float column: an integer beyond 2**53 is kept as the nearest float (Arrow refuses it
        # as an int), as a decimal with a fraction is
        row["value_num"] = float(v)
    return row


_ASSERTION: dict[Any, str] = {
    "confirmed": "present",
    "unconfirmed": "suspected",
    "provisional": "suspected",
    "differential": "suspected",
    "refuted": "negated",
    "entered-in-error": "entered-in-error",
}


def extract(res: dict[str, Any]) -> Extracted:
    rt = res["resourceType"]
    fn = _EXTRACTORS.get(rt)
    ex = Extracted("ignored") if fn is None else fn(res)
    ex.resource_type, ex.resource_id = rt, res.get("id")
    return ex


@_extractor("Patient", steers={})
def _patient(res: dict[str, Any]) -> Extracted:
    name = (res.get("name") or [{}])[0]
    addr = (res.get("address") or [{}])[0]
    deceased = res.get("deceasedDateTime")
    row = {
        "patient_id": res.get("id"),
        "sex": res.get("gender"),
        "birth_date": res.get("birthDate"),
        "deceased": bool(res.get("deceasedBoolean") or deceased),
        "deceased_date": deceased,
        "family": name.get("family"),
        "given": " ".join(_strs(name.get("given"))) or None,
        "city": addr.get("city"),
        "postal_code": addr.get("postalCode"),
    }
    ex = Extracted("patient", rows=[row])
    if res.get("birthDate"):
        ex.dates.append(("birthDate", res["birthDate"]))
    if deceased:
        ex.dates.append(("deceasedDateTime", deceased))
    return ex


@_extractor(
    "Encounter",
    steers={
        "type.coding.system": (fc.KONTAKTART, fc.KONTAKTEBENE),
        "diagnosis.use.coding.code": ("CC", "AD", "DD"),
        "diagnosis.rank": (1, 2),
        "extension.url": (fc.EXT_STAY_KIND, fc.EXT_POSTPONED, f"{fc.ONKO}/other"),
    },
)
def _encounter(res: dict[str, Any]) -> Extracted:
    period = res.get("period") or {}
    svc = _any_coding(res.get("serviceType"))
    kontaktart = None
    for t in res.get("type") or []:
        c = _first_coding(t, (fc.KONTAKTART,))
        if c:
            kontaktart = c["code"]
    row = {
        "encounter_id": res.get("id"),
        "start": period.get("start"),
        "end": period.get("end"),
        "status": res.get("status"),
        "class_code": (res.get("class") or {}).get("code"),
        "kontaktart": kontaktart,
        "department_code": svc.get("code") if svc else None,
        "department": (svc.get("display") if svc else None),
        "stay_kind": next(
            (e.get("valueCode") for e in res.get("extension") or () if e.get("url") == fc.EXT_STAY_KIND), None
        ),
        "postponed_reason": next(
            (e.get("valueCode") for e in res.get("extension") or () if e.get("url") == fc.EXT_POSTPONED), None
        ),
    }
    ex = Extracted("encounter", rows=[row], patient_ref=ref_id(res.get("subject"), "Patient"))
    for key in ("start", "end"):
        if period.get(key):
            ex.dates.append((f"period.{key}", period[key]))
    for d in res.get("diagnosis") or []:
        cid = ref_id(d.get("condition"), "Condition")
        use = _any_coding(d.get("use"))
        role = "main" if d.get("rank") == 1 else "secondary"
        if use and use.get("code") in ("CC",):
            role = "main"
        if cid and not cid.startswith("!"):
            ex.diagnosis_roles.append((cid, role))
    return ex


@_extractor(
    "Condition",
    steers={
        "code.coding.system": (*fc.DIAGNOSIS_SYSTEMS, fc.SNOMED),
        "verificationStatus.coding.code": tuple(_ASSERTION),
        "clinicalStatus.coding.code": ("active", "recurrence", "inactive", "resolved", "remission"),
        "meta.profile": (fc.PROFILE["Condition"], fc.PROFILE["Condition.primary_tumor"]),
        "bodySite.coding.system": (*fc.ICDO3_SYSTEMS, fc.LATERALITY, fc.SNOMED),
        "extension.url": (fc.CONDITION_RELATED, f"{fc.ONKO}/other"),
    },
)
def _condition(res: dict[str, Any]) -> Extracted:
    code = res.get("code") or {}
    c = _first_coding(code, fc.DIAGNOSIS_SYSTEMS) or _any_coding(code)
    ver = _any_coding(res.get("verificationStatus"))
    clin = _any_coding(res.get("clinicalStatus"))
    profiles = _strs((res.get("meta") or {}).get("profile"))
    date = res.get("onsetDateTime") or res.get("recordedDate") or (res.get("onsetPeriod") or {}).get("start")
    extra: dict[str, Any] = {}
    for site in res.get("bodySite") or []:
        topo = _first_coding(site, fc.ICDO3_SYSTEMS)
        lat = _first_coding(site, (fc.LATERALITY,))
        if topo:
            extra["topography"] = topo["code"]
        if lat:
            extra["laterality"] = lat["code"]
    if any(p.endswith("mii-pr-onko-diagnose-primaertumor") for p in profiles):
        extra["primary_tumor"] = True
        if isinstance(res.get("id"), str):
            extra["tumor"] = res["id"]  # a primary tumour is its own group
    for e in res.get("extension") or []:
        if e.get("url") == fc.CONDITION_RELATED:
            related = ref_id(e.get("valueReference"), "Condition")
            if related and not related.startswith("!"):
                extra["tumor"] = related  # a metastasis (or other finding) of this primary tumour
    clinical = clin.get("code") if clin else None
    assertion = _ASSERTION.get(ver.get("code"), "present") if ver else "present"
    if clinical in ("inactive", "resolved", "remission") and assertion == "present":
        assertion = "historical"
    row = _fact(
        res,
        "diagnosis",
        system=c.get("system") if c else None,
        code=c.get("code") if c else None,
        display=c.get("display") if c else None,
        text=code.get("text"),
        date=date,
        status=clinical,
        assertion=assertion,
        extra=extra or None,
    )
    ex = Extracted(
        "facts",
        rows=[row],
        patient_ref=ref_id(res.get("subject"), "Patient"),
        encounter_ref=ref_id(res.get("encounter"), "Encounter") if res.get("encounter") else None,
    )
    _codings(code, "code", ex.systems)
    if date:
        ex.dates.append(("onset", date))
    return ex


#: profiles of a radiotherapy course and of its single irradiations (both become `radiotherapy` facts)
_RADIOTHERAPY_PROFILES = (
    fc.PROFILE["Procedure.radiotherapy"],
    f"{fc.ONKO}/mii-pr-onko-strahlentherapie-bestrahlung-strahlentherapie",
    f"{fc.ONKO}/mii-pr-onko-strahlentherapie-bestrahlung-nuklearmedizin",
)


@_extractor(
    "Procedure",
    steers={
        "code.coding.system": (*fc.PROCEDURE_SYSTEMS, fc.ICD10GM),
        "bodySite.coding.system": (fc.LATERALITY, fc.SNOMED),
        "extension.url": (
            fc.MII_SYSTEMIC_INTENTION,
            fc.MII_RADIOTHERAPY_INTENTION,
            fc.MII_RADIOTHERAPY_TOTAL,
            fc.MII_RADIOTHERAPY_FRACTION,
            fc.EXT_FRACTIONS,
            fc.EXT_CONCURRENT,
            fc.EXT_INTENT,
            f"{fc.ONKO}/other",
        ),
        "meta.profile": (fc.PROFILE["Procedure"], *_RADIOTHERAPY_PROFILES),
        "extension.valueQuantity.code": ("Gy", "MBq"),
        "extension.valueQuantity.unit": ("Gy", "MBq"),
    },
)
def _procedure(res: dict[str, Any]) -> Extracted:
    code = res.get("code") or {}
    c = _first_coding(code, fc.PROCEDURE_SYSTEMS) or _any_coding(code)
    start, end = _period(res, "performed")
    profiles = _strs((res.get("meta") or {}).get("profile"))
    category = "radiotherapy" if any(p in _RADIOTHERAPY_PROFILES for p in profiles) else "procedure"
    extra: dict[str, Any] = {}
    value_num = unit = None
    for site in res.get("bodySite") or []:
        lat = _first_coding(site, (fc.LATERALITY,))
        if lat:
            extra["laterality"] = lat["code"]
        if category == "radiotherapy":
            target = site.get("text") or (_any_coding(site) or {}).get("display")
            if target:
                extra["target"] = target
    for e in res.get("extension") or []:
        url = e.get("url", "")
        if url.endswith("intention"):
            intent = _any_coding(e.get("valueCodeableConcept"))
            if intent:
                extra["intention"] = intent.get("code")
        elif url == fc.EXT_INTENT:
            extra["intent"] = e.get("valueCode")
        elif url == fc.EXT_FRACTIONS:
            extra["fractions"] = e.get("valuePositiveInt")
        elif url == fc.EXT_CONCURRENT:
            extra["concurrent"] = e.get("valueString")
        elif url in (fc.MII_RADIOTHERAPY_TOTAL, fc.MII_RADIOTHERAPY_FRACTION):
            q = e.get("valueQuantity") or {}
            total = url == fc.MII_RADIOTHERAPY_TOTAL
            dose_unit = q.get("code") or q.get("unit")
            if dose_unit in ("Gy", None):
                extra["total_gy" if total else "fraction_gy"] = q.get("value")
            else:  # nuclear medicine: activity (MBq), not a dose in Gy
                extra["total_dose" if total else "fraction_dose"] = q.get("value")
                extra["dose_unit"] = dose_unit
            if total:
                value_num, unit = q.get("value"), dose_unit or "Gy"
    if category == "radiotherapy":
        if end:
            extra["end_date"] = end
        reasons = res.get("reasonReference") or []
        tumor = ref_id(reasons[0], "Condition") if reasons else None
        if tumor and not tumor.startswith("!"):
            extra["tumor"] = tumor
    row = _fact(
        res,
        category,
        value_num=value_num,
        unit=unit,
        system=c.get("system") if c else None,
        code=c.get("code") if c else None,
        display=c.get("display") if c else None,
        text=code.get("text"),
        date=start,
        end_date=end,
        extra=extra or None,
    )
    ex = Extracted(
        "facts",
        rows=[row],
        patient_ref=ref_id(res.get("subject"), "Patient"),
        encounter_ref=ref_id(res.get("encounter"), "Encounter") if res.get("encounter") else None,
    )
    _codings(code, "code", ex.systems)
    ex.dates += [(k, v) for k, v in (("performed.start", start), ("performed.end", end)) if v]
    return ex


@_extractor(
    "Medication",
    steers={"code.coding.system": (fc.ATC, *fc.MEDICATION_SYSTEMS, fc.EDQM)},
)
def _medication(res: dict[str, Any]) -> Extracted:
    code = res.get("code") or {}
    c = _first_coding(code, (fc.ATC,)) or _first_coding(code, fc.MEDICATION_SYSTEMS) or _any_coding(code)
    ex = Extracted("medication")
    ex.medication = (
        (c.get("system"), c.get("code"), c.get("display") or code.get("text"))
        if c
        else (None, None, code.get("text"))
    )
    _codings(code, "code", ex.systems)
    return ex


_WHEN = {
    "MORN": 0,
    "NOON": 1,
    "EVE": 2,
    "NIGHT": 3,
    "CM": 0,
    "CD": 1,
    "CV": 2,
    "HS": 3,
    "ACM": 0,
    "ACD": 1,
    "ACV": 2,
    "PCM": 0,
    "PCD": 1,
    "PCV": 2,
}


def _dosage(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rates = d.get("doseAndRate") or []
    for dr in rates:
        q = dr.get("doseQuantity")
        if q and q.get("value") is not None:
            if len(rates) > 1 and (_any_coding(dr.get("type")) or {}).get("code") == "ordered":
                # the prescription per body measure (85 mg/m2) beside the calculated dose
                out["per_dose"] = q["value"]
                out["per_unit"] = q.get("code") or q.get("unit")
            else:
                out["dose"] = q["value"]
                out["dose_unit"] = q.get("code") or q.get("unit")
    route = _any_coding(d.get("route"))
    if route:
        out["route"] = route.get("display") or route.get("code")
    repeat = (d.get("timing") or {}).get("repeat") or {}
    if repeat.get("when"):
        sched = [0, 0, 0, 0]
        for w in _strs(repeat["when"]):
            if w in _WHEN:
                sched[_WHEN[w]] = 1
        out["schedule"] = sched
    if repeat.get("frequency") is not None:
        out["frequency"] = f"{repeat['frequency']}/{repeat.get('period', 1)}{repeat.get('periodUnit', 'd')}"
    timing_text = ((d.get("timing") or {}).get("code") or {}).get("text")
    if timing_text:
        out["frequency"] = timing_text  # as written ("über 46 h", "alle 3 Wochen")
    if d.get("asNeededBoolean") is True or d.get("asNeededCodeableConcept"):
        out["as_needed"] = True
    if d.get("text"):
        out["dosage_text"] = d["text"]
    return out


#: the project's medication extensions -> the `extra` key each fills
_MED_EXTENSIONS = {
    fc.EXT_REGIMEN: "regimen",
    fc.EXT_CYCLE: "cycle",
    fc.EXT_DAY: "day",
    fc.EXT_INTENT: "intent",
}


@_extractor(
    "MedicationStatement",
    "MedicationRequest",
    "MedicationAdministration",
    steers={
        "medicationCodeableConcept.coding.system": (fc.ATC, *fc.MEDICATION_SYSTEMS, fc.EDQM),
        "meta.profile": (
            fc.PROFILE["MedicationStatement"],
            fc.PROFILE["MedicationStatement.systemic_therapy"],
        ),
        **{
            f"{d}.timing.repeat.{k}": v
            for d in ("dosage", "dosageInstruction")
            for k, v in (
                ("when", (*_WHEN, "WAKE")),
                ("frequency", (1, 2, 3)),
                ("period", (1, 2, 0.5)),
                ("periodUnit", ("d", "h", "wk")),
            )
        },
        "dosage.doseAndRate.type.coding.code": ("ordered", "calculated"),
        "dosageInstruction.doseAndRate.type.coding.code": ("ordered", "calculated"),
        "extension.url": (fc.EXT_REGIMEN, fc.EXT_CYCLE, fc.EXT_DAY, fc.EXT_INTENT, f"{fc.ONKO}/other"),
    },
)
def _medication_use(res: dict[str, Any]) -> Extracted:
    rt = res["resourceType"]
    cc = res.get("medicationCodeableConcept")
    c = (
        (_first_coding(cc, (fc.ATC,)) or _first_coding(cc, fc.MEDICATION_SYSTEMS) or _any_coding(cc))
        if cc
        else None
    )
    dosages = res.get("dosage") or res.get("dosageInstruction") or []
    if rt == "MedicationAdministration":
        dosages = [res["dosage"]] if res.get("dosage") else []
    extra = _dosage(dosages[0]) if dosages else {}
    cat = res.get("category")
    cats = cat if isinstance(cat, list) else [cat] if cat else []
    context = None
    for cc_ in cats:
        k = _any_coding(cc_)
        if k:
            context = k.get("code")
            break
    start, end = _period(res, "effective")
    if rt == "MedicationRequest":
        start = res.get("authoredOn")
    profiles = _strs((res.get("meta") or {}).get("profile"))
    if any("systemische-therapie" in p for p in profiles):
        extra["therapy"] = "systemic"
    for e in res.get("extension") or []:
        key = _MED_EXTENSIONS.get(e.get("url"))
        if key:
            extra[key] = next(
                (e[k] for k in ("valueString", "valuePositiveInt", "valueCode") if k in e), None
            )
    row = _fact(
        res,
        "medication",
        system=c.get("system") if c else None,
        code=c.get("code") if c else None,
        display=(c.get("display") if c else None) or (cc or {}).get("text"),
        date=start,
        end_date=end,
        value_num=float(extra["dose"]) if "dose" in extra else None,
        unit=extra.get("dose_unit"),
        role=context,
        extra=extra or None,
    )
    enc = res.get("context") or res.get("encounter")
    ex = Extracted(
        "facts",
        rows=[row],
        patient_ref=ref_id(res.get("subject"), "Patient"),
        encounter_ref=ref_id(enc, "Encounter") if enc else None,
        medication_ref=ref_id(res.get("medicationReference"), "Medication")
        if res.get("medicationReference")
        else None,
    )
    if cc:
        _codings(cc, "medicationCodeableConcept", ex.systems)
    ex.dates += [(k, v) for k, v in (("effective.start", start), ("effective.end", end)) if v]
    return ex


#: categories whose value is the fact's code (T3c, 8140/3, G2, R0, IIB, the ECOG grade, a site ...)
_VALUE_IS_CODE = frozenset(
    {
        "tnm_t",
        "tnm_n",
        "tnm_m",
        "tnm_l",
        "tnm_v",
        "tnm_pn",
        "tnm_r",
        "uicc_stage",
        "grading",
        "histology",
        "stage_other",
        "ecog",
        "tumor_status",
        "metastasis",
    }
)
#: per category: the value systems preferred when a value has several codings
_VALUE_SYSTEMS: dict[str, tuple[str, ...]] = {
    "tumor_status": (fc.TUMOR_STATUS,),
    "metastasis": (fc.ICD10GM, *fc.ICDO3_SYSTEMS, fc.MII_METASTASIS),
    "stage_other": tuple(fc.STAGE_SYSTEMS.values()),
}
_ONKO_PROFILES = tuple(f"{fc.ONKO}/mii-pr-onko-{suffix}" for suffix in fc.ONKO_CATEGORIES)


@_extractor(
    "Observation",
    steers={
        "meta.profile": (fc.PROFILE["Observation.lab"], fc.PROFILE["Observation.vital"], *_ONKO_PROFILES),
        "category.coding.code": ("laboratory", "vital-signs", "exam", "social-history"),
        "code.coding.system": (*fc.LAB_SYSTEMS, fc.UICC, fc.MARKER_CS),
        "component.code.coding.system": fc.LAB_SYSTEMS,
        "code.extension.url": (f"{fc.ONKO}/mii-ex-onko-tnm-cp-praefix", f"{fc.ONKO}/other"),
        "valueCodeableConcept.coding.system": (
            fc.UICC,
            fc.GRADING,
            *fc.ICDO3_SYSTEMS,
            fc.SNOMED,
            fc.MARKER_RESULT,
            fc.SMOKING_CS,
            fc.TUMOR_STATUS,
            fc.ICD10GM,
            fc.MII_METASTASIS,
            *fc.STAGE_SYSTEMS.values(),
        ),
        "bodySite.coding.system": (*fc.ICDO3_SYSTEMS, fc.SNOMED),
        "extension.url": (fc.EXT_STAGING_KIND, f"{fc.ONKO}/other"),
        "dataAbsentReason.coding.code": ("as-text",),
        # an as-text value: a number + unit word or text (pinned: a plan never copies it blindly)
        "note.text": ("5.2 Mio/µl", "negativ", "-3e-05"),
    },
)
def _observation(res: dict[str, Any]) -> Extracted:
    profiles = _strs((res.get("meta") or {}).get("profile"))
    category = "observation"
    for p in profiles:
        if p.startswith(f"{fc.ONKO}/mii-pr-onko-"):
            category = fc.ONKO_CATEGORIES.get(p.removeprefix(f"{fc.ONKO}/mii-pr-onko-"), category)
    code = res.get("code") or {}
    cats = [(_any_coding(c) or {}).get("code") for c in res.get("category") or []]
    vcc = res.get("valueCodeableConcept")
    value_systems = {c.get("system") for c in (vcc or {}).get("coding") or []}
    if category == "observation":
        if fc.MARKER_RESULT in value_systems:
            category = "marker_status"
        elif fc.SMOKING_CS in value_systems:
            category = "smoking"
        elif "laboratory" in cats or any(p.endswith("ObservationLab") for p in profiles):
            category = "lab"
        elif "vital-signs" in cats:
            category = "vital"
    c = _first_coding(code, fc.LAB_SYSTEMS) or _any_coding(code)
    date, end = _period(res, "effective")
    extra: dict[str, Any] = {}
    value_num = value_str = unit = None
    vq = res.get("valueQuantity")
    if vq:
        value_num = vq.get("value")
        unit = vq.get("code") or vq.get("unit")
    vc = (_first_coding(vcc, _VALUE_SYSTEMS.get(category, ())) or _any_coding(vcc)) if vcc else None
    if category in _VALUE_IS_CODE and (vc or (vcc and vcc.get("text"))):
        # the category's value is the code (T3c, 8140/3, G2 ...); a stage may be text only
        c = vc or {"code": vcc.get("text") if vcc else None}
        for e in code.get("extension") or []:
            if e.get("url", "").endswith("cp-praefix"):
                extra["prefix"] = (_any_coding(e.get("valueCodeableConcept")) or {}).get("code")
        if category == "stage_other":
            extra["system"] = fc.STAGE_SYSTEM_OF.get(c.get("system") or "", "other")
    elif category == "smoking" and vc:
        c = _first_coding(vcc, (fc.SNOMED,)) or vc
        value_str = (_first_coding(vcc, (fc.SMOKING_CS,)) or {}).get("code")
    elif category == "marker_status" and vcc:
        result = _first_coding(vcc, (fc.MARKER_RESULT,))
        if result:
            extra["result"] = result.get("code")
        elif vc:
            value_str = vc.get("code")
            if vc.get("display"):
                extra["value_display"] = vc["display"]
        if vcc.get("text"):
            extra["text"] = vcc["text"]
    elif vc:
        value_str = vc.get("code")
    if category in ("marker_status", "smoking") and value_num is None:
        # a stated number beside the status: ER 90 %, 30 pack-years
        comp = next((x for x in res.get("component") or [] if x.get("valueQuantity")), None)
        if comp:
            q = comp["valueQuantity"]
            if category == "smoking":
                extra["pack_years"] = q.get("value")
            else:
                value_num, unit = q.get("value"), q.get("code") or q.get("unit")
    if res.get("valueString") is not None:
        value_str = res["valueString"]
    elif value_num is None and value_str is None and _as_text(res):
        value_num, unit, value_str = _note_value(res)
    for rr in res.get("referenceRange") or []:
        lo, hi = (rr.get("low") or {}).get("value"), (rr.get("high") or {}).get("value")
        extra["ref_low"], extra["ref_high"] = lo, hi
    interp = _any_coding((res.get("interpretation") or [None])[0])
    if interp:
        extra["interpretation"] = interp.get("code")
    site = res.get("bodySite")
    topo = _first_coding(site, fc.ICDO3_SYSTEMS) if site else None
    if topo:
        extra["topography"] = topo["code"]
    if category == "histology" and vcc and vcc.get("text"):
        extra["histology_text"] = vcc["text"]
    if category == "lymph_nodes":
        extra["nodes"] = (
            "positive" if any(p.endswith("befallene-lymphknoten") for p in profiles) else "examined"
        )
    for e in res.get("extension") or []:
        if e.get("url") == fc.EXT_STAGING_KIND:
            extra["staging"] = e.get("valueCode")
    focus = res.get("focus") or []
    tumor = ref_id(focus[0], "Condition") if focus else None
    if tumor and not tumor.startswith("!"):
        extra["tumor"] = tumor
    row = _fact(
        res,
        category,
        system=c.get("system") if c else None,
        code=c.get("code") if c else None,
        display=c.get("display") if c else None,
        text=code.get("text"),
        value_num=value_num,
        value_str=value_str,
        unit=unit,
        date=date,
        end_date=end,
        extra=extra or None,
    )
    rows = [row]
    parts = [x for x in res.get("component") or [] if (x.get("valueQuantity") or {}).get("value") is not None]
    if category == "vital" and value_num is None and parts:
        # a panel (blood pressure 85354-9): one vital per measured component (systolic, diastolic)
        rows = []
        for x in parts:
            cc = _first_coding(x.get("code"), fc.LAB_SYSTEMS) or _any_coding(x.get("code")) or {}
            q = x["valueQuantity"]
            rows.append(
                _fact(
                    res,
                    "vital",
                    system=cc.get("system"),
                    code=cc.get("code"),
                    display=cc.get("display"),
                    text=code.get("text"),
                    value_num=q["value"],
                    unit=q.get("code") or q.get("unit"),
                    date=date,
                    end_date=end,
                    extra={**extra, "panel": c.get("code")} if c else extra or None,
                )
            )
    ex = Extracted(
        "facts",
        rows=rows,
        patient_ref=ref_id(res.get("subject"), "Patient"),
        encounter_ref=ref_id(res.get("encounter"), "Encounter") if res.get("encounter") else None,
    )
    _codings(code, "code", ex.systems)
    if vcc:
        _codings(vcc, "valueCodeableConcept", ex.systems)
    if len(rows) > 1 or rows[0] is not row:
        for x in parts:
            _codings(x.get("code"), "component.code", ex.systems)
    if date:
        ex.dates.append(("effective", date))
    return ex


#: a note that is a number and at most one unit word: what the export writes for a value whose unit
#: is not UCUM ("5.2 Mio/µl"; `clinsynth.export.clinical.number_text`)
_NUMBER_UNIT = re.compile(r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(?: (\S+))?")


def _as_text(res: dict[str, Any]) -> bool:
    """dataAbsentReason as-text: the value is given as text (MII Laborbefund: in `note`)."""
    return any(c.get("code") == "as-text" for c in (res.get("dataAbsentReason") or {}).get("coding") or [])


def _note_value(res: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """(value_num, unit, value_str) of an as-text Observation's notes: a number with at most one unit
    word becomes the number and its unit, any other text is the text value (notes joined by lines)."""
    texts = [n["text"] for n in res.get("note") or [] if isinstance(n.get("text"), str) and n["text"].strip()]
    if not texts:
        return None, None, None
    text = "\n".join(texts)
    m = _NUMBER_UNIT.fullmatch(text.strip())
    if m:
        return float(m.group(1)), m.group(2), None
    return None, None, text


#: resource types ingest turns into records; the rest are counted as ignored
SUPPORTED = frozenset(_EXTRACTORS)
#: read first, so that references to them can be checked on the fly
REFERENCE_TARGETS = ("Patient", "Medication", "Encounter")
