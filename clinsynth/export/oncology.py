"""Tumours as resources of the MII oncology module: the primary-tumour Condition and its observations.

A tumour's Condition is the diagnosis of the same ICD-10-GM code (or, for a tumour without a
code, of the same entity text) when the letter lists one, so one disease is one Condition;
otherwise the tumour's own. Every observation points to it (`focus`), so two tumours of one
letter stay apart, and carries the staging kind (initial/current) as the cohort writes it
(`conventions.EXT_STAGING_KIND`). The TNM prefix goes into the MII cp-praefix extension as the
cohort writes it (c, p, yp, r, a, u: the y/r/a symbols folded into the prefix code).

What newer onko versions require of the tumour's Condition (read off the profiles' FSH sources in
medizininformatik-initiative/kerndatensatzmodul-onkologie after 2026.0.3; the 2026.0.3 test data in
mii-testdata/kds-testdata writes condition-assertedDate on the primary tumour and 394593009 on the
earlier one, not yet 55342001):
- primaertumor: `extension[Feststellungsdatum]` 1..1, the HL7 condition-assertedDate extension
  (oBDS 5.6 "Diagnosedatum"; 2026.0.3 maps it to recordedDate and has the slice 0..1, from MII
  Diagnose), and `category[onkologie]` 1..1 = SNOMED CT 55342001 "Neoplastic disease".
- fruehere-tumorerkrankung: `category[oncology]` 1..1 = SNOMED CT 394593009 "Medical oncology" and
  `category[onkologie]` 1..1 = 55342001 (one CodeableConcept each, so that each matches one slice);
  assertedDate 0..1.
The Feststellungsdatum is the first-diagnosis date of the letter's diagnosis that the tumour shares
its Condition with (`Diagnosis.date`, "ED 03/2024"): the schema's only diagnosis date. A tumour's own
`date` is its staging date, not the diagnosis date, and is never used for it. Without a diagnosis
date the extension is left out and the profile checks count the primary tumour as a warning
`no_diagnosis_date`: no date is made up. A data-absent-reason cannot stand in: the HL7 extension
allows no nested extension, and fhir.resources' R4B Extension has no `_valueDateTime` to carry one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clinsynth.export.bundle import EARLIER_TUMOR_PROFILE, Doc, coding, display, resource
from clinsynth.export.clinical import (
    LAB_CATEGORY,
    OBSERVATION_STATUS,
    as_text,
    condition_status,
    icd_coding,
    lab_identifier,
    number_text,
    quantity,
)
from clinsynth.fhir import conventions as fc
from clinsynth.schema import Tumor

LATERALITY = {"L": "Links", "R": "Rechts", "B": "Beidseitig", "M": "Mittellinie", "U": "Unbekannt"}
PRAEFIX_EXT = f"{fc.ONKO}/mii-ex-onko-tnm-cp-praefix"
#: the MII Diagnose slice Feststellungsdatum (1..1 in the newer onko primaertumor)
FESTSTELLUNGSDATUM_EXT = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"
#: category[onkologie] (primaertumor, fruehere-tumorerkrankung) and category[oncology] (fruehere only)
ONKO_CATEGORY = (fc.SNOMED, "55342001", "Neoplastic disease")
ONCOLOGY_CATEGORY = (fc.SNOMED, "394593009", "Medical oncology (qualifier value)")

Obs = Callable[..., dict[str, Any]]


def _body_site(doc: Doc, t: Tumor) -> list[dict[str, Any]] | None:
    site = []
    if t.laterality:
        site.append(coding(fc.LATERALITY, t.laterality, LATERALITY[t.laterality]))
    if t.topography:
        site.append(coding(fc.ICDO3, t.topography, display(doc.catalog.icdo3_topography, t.topography)))
    return [{"coding": site}] if site else None


def _profile(assertion: str) -> str:
    return EARLIER_TUMOR_PROFILE if assertion == "historical" else fc.PROFILE["Condition.primary_tumor"]


def onko_condition_fields(profile: str, diagnosed: str | None) -> dict[str, Any]:
    """Feststellungsdatum and category of a tumour Condition (see the module docstring)."""
    earlier = profile == EARLIER_TUMOR_PROFILE
    cats = [ONCOLOGY_CATEGORY, ONKO_CATEGORY] if earlier else [ONKO_CATEGORY]
    out: dict[str, Any] = {"category": [{"coding": [coding(*c)]} for c in cats]}
    if diagnosed:
        out["extension"] = [{"url": FESTSTELLUNGSDATUM_EXT, "valueDateTime": diagnosed}]
    return out


def _mark_onko(cond: dict[str, Any], profile: str, diagnosed: str | None) -> None:
    """Re-profile a diagnosis's Condition as its tumour's."""
    cond["meta"] = {"profile": [profile]}
    cond.update(onko_condition_fields(profile, diagnosed))


def _condition(doc: Doc, i: int, t: Tumor, claimed: set[int]) -> dict[str, Any] | None:
    """The tumour's Condition: its diagnosis's (re-profiled) or its own; None without an ICD-10-GM code."""
    for j, d in enumerate(doc.extraction.diagnoses):
        cond = doc.conditions.get(("diagnoses", j))
        if cond is None or j in claimed:
            continue
        same = d.icd10gm == t.icd10gm if t.icd10gm else d.text.casefold() == t.entity.casefold()
        if same:
            claimed.add(j)
            _mark_onko(cond, _profile(d.assertion), d.date)
            if d.assertion == "historical":
                cond.update(condition_status("historical", "remission"))
            if site := _body_site(doc, t):
                cond["bodySite"] = site
            return cond
    if not t.icd10gm:
        return None
    profile = _profile(t.assertion)
    fields = onko_condition_fields(profile, None)  # no diagnosis of its own: no diagnosis date
    cond = resource(
        doc,
        "Condition",
        f"Condition/tumors/{i}",
        profile,
        extension=fields.get("extension"),
        **condition_status(t.assertion, "remission"),
        category=fields["category"],
        code={"coding": [icd_coding(doc, t.icd10gm)], "text": t.entity},
        bodySite=_body_site(doc, t),
        subject=doc.patient,
        encounter=doc.encounter,
        **doc.recorded(),
    )
    doc.conditions[("tumors", i)] = doc.add(cond)
    return cond


def _has_findings(t: Tumor) -> bool:
    return bool(
        t.morphology or t.histology or t.grading or t.tnm or t.uicc_stage or t.stages or t.markers
    ) or any(x is not None for x in (t.ecog, t.karnofsky, t.status))


def tumors(doc: Doc) -> None:
    claimed: set[int] = set()
    for i, t in enumerate(doc.extraction.tumors):
        cond = _condition(doc, i, t, claimed)
        if cond is None:
            doc.omit(
                "tumors",
                i,
                "no ICD-10-GM code, neither its own nor a diagnosis's of the same entity (the MII "
                "oncology resources hang on a coded primary-tumour Condition)",
            )
            continue
        if t.assertion == "negated":
            if _has_findings(t):
                doc.omit(
                    "tumors", i, "negated tumour: its findings are not exported (refuted Condition only)"
                )
            continue
        _findings(doc, i, t, cond)


def _findings(doc: Doc, i: int, t: Tumor, cond: dict[str, Any]) -> None:
    base = f"Observation/tumors/{i}"
    staged = [{"url": fc.EXT_STAGING_KIND, "valueCode": t.staging}] if t.staging else None

    def obs(
        kind: str, key: str, code: dict[str, Any], value: dict[str, Any] | None, **kw: Any
    ) -> dict[str, Any]:
        res = resource(
            doc,
            "Observation",
            f"{base}/{key}",
            kind,
            identifier=lab_identifier(doc, f"tumors/{i}/{key}") if kind == "Observation.lab" else None,
            extension=kw.pop("extension", None),
            status=OBSERVATION_STATUS[t.assertion],
            category=kw.pop("category", None),
            code=code,
            subject=doc.patient,
            encounter=doc.encounter,
            focus=[doc.ref(cond)],
            **doc.effective(  # a Laborbefund's effective[x] is a dateTime only: no stay period
                t.date,
                during_stay=t.assertion != "historical" and kind != "Observation.lab",
                required=kind == "Observation.lab",
            ),
            **kw,
        )
        if value is not None:
            res["valueCodeableConcept"] = value
        return doc.add(res)

    if t.morphology:
        morph = coding(fc.ICDO3, t.morphology, display(doc.catalog.icdo3_morphology, t.morphology))
        value = {"coding": [morph], **({"text": t.histology} if t.histology else {})}
        topo = _body_site(doc, t.model_copy(update={"laterality": None}))
        obs(
            "Observation.histology",
            "histology",
            {"coding": [coding(*fc.HISTOLOGY_CODE)]},
            value,
            bodySite=topo[0] if topo else None,
        )
    elif t.histology:
        doc.omit(
            "tumors", i, "histology without an ICD-O-3 morphology code (the MII histology profile codes it)"
        )
    if t.grading:
        grade = fc.GRADING_OF.get(t.grading, t.grading.removeprefix("G"))
        obs(
            "Observation.grading",
            "grading",
            {"coding": [coding(*fc.GRADING_CODE)]},
            {"coding": [coding(fc.GRADING, grade)]},
        )
    _staging(doc, i, t, obs, staged)
    for j, mk in enumerate(t.markers):
        _marker(doc, i, j, mk, obs)
    if t.ecog is not None:
        obs(
            "Observation.ecog",
            "ecog",
            {"coding": [coding(*c) for c in fc.ECOG_CODES]},
            {"coding": [coding(fc.ECOG, str(t.ecog))]},
        )
    if t.karnofsky is not None:
        doc.omit("tumors", i, "Karnofsky index: no MII oncology profile (ECOG has one)")
    if t.status is not None:
        codings = [coding(fc.TUMOR_STATUS, t.status)]
        if t.status in fc.MII_STATUS_OF:
            codings.append(coding(fc.MII_STATUS, *fc.MII_STATUS_OF[t.status]))
        obs("Observation.status", "status", {"coding": [coding(*fc.TUMOR_STATUS_CODE)]}, {"coding": codings})


def _staging(doc: Doc, i: int, t: Tumor, obs: Obs, staged: list[dict[str, Any]] | None) -> None:
    members: list[dict[str, str]] = []
    tnm = t.tnm
    if tnm is not None:
        for axis, value in (("t", tnm.t), ("n", tnm.n), ("m", tnm.m)):
            if value is None:
                continue
            code: dict[str, Any] = {"coding": [coding(*fc.TNM_CATEGORY_CODE[axis])]}
            if value.prefix:
                prefix = {"coding": [coding(fc.UICC, value.prefix, value.prefix)]}
                code["extension"] = [{"url": PRAEFIX_EXT, "valueCodeableConcept": prefix}]
            nodes = _lymph_nodes(t, obs, staged) if axis == "n" else []
            res = obs(
                f"Observation.tnm_{axis}",
                f"tnm_{axis}",
                code,
                {"coding": [coding(fc.UICC, value.value)]},
                extension=staged,
                hasMember=nodes or None,
            )
            members.append(doc.ref(res))
        for axis in ("l", "v", "pn"):
            suffix = getattr(tnm, axis)
            if suffix is not None:
                res = obs(
                    f"Observation.tnm_{axis}",
                    f"tnm_{axis}",
                    {"coding": [coding(*fc.TNM_CATEGORY_CODE[axis])]},
                    {"coding": [coding(fc.UICC, suffix)]},
                    extension=staged,
                )
                members.append(doc.ref(res))
        if tnm.r is not None:
            obs(
                "Observation.residual",
                "residual",
                {"coding": [coding(*fc.RESIDUAL_CODE)]},
                {"coding": [coding(fc.RESIDUAL, tnm.r)]},
                extension=staged,
            )
    clinical = tnm is not None and tnm.t is not None and tnm.t.prefix == "c"
    grouping = fc.TNM_GROUPING_CODE["clinical" if clinical else "pathological"]
    groups: list[tuple[int | None, str]] = [(None, t.uicc_stage)] if t.uicc_stage else []
    groups += [(j, s.value) for j, s in enumerate(t.stages) if s.system == "UICC" and s.value != t.uicc_stage]
    for j, stage in groups:
        obs(
            "Observation.tnm",
            "uicc" if j is None else f"stages/{j}",
            {"coding": [coding(*grouping)]},
            {"coding": [coding(fc.UICC, stage, f"Stadium {stage}")]},
            extension=staged,
            hasMember=members or None,
        )
    for j, s in enumerate(t.stages):
        if s.system == "UICC":
            continue
        name = fc.stage_system_name(s.system)
        text = "weitere Klassifikation" if s.system == "other" else f"{s.system}-Klassifikation"
        code = {"coding": [coding(f"{fc.CLINSYNTH_CS}/staging-system", name)], "text": text}
        obs(
            "Observation.other_stage",
            f"stages/{j}",
            code,
            {"coding": [coding(fc.STAGE_SYSTEMS[name], s.value)], "text": s.value},
            extension=staged,
        )


def _lymph_nodes(t: Tumor, obs: Obs, staged: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """The N category's "2/18": positive and examined node counts, members of the N observation."""
    nodes = t.tnm.n.nodes if t.tnm and t.tnm.n else None
    if not nodes:
        return []
    out = []
    for role, count in zip(("positive", "examined"), nodes.split("/"), strict=True):
        loinc, text = fc.LYMPH_NODES_LOINC[role]
        res = obs(
            f"Observation.nodes_{role}",
            f"nodes_{role}",
            {"coding": [coding(fc.LOINC, loinc, text)]},
            None,
            category=LAB_CATEGORY,
            valueQuantity={"value": int(count), "unit": "1", "system": fc.UCUM, "code": "1"},
            extension=staged,
        )
        out.append({"reference": f"urn:uuid:{res['id']}"})
    return out


def _marker(doc: Doc, i: int, j: int, mk: Any, obs: Obs) -> None:
    """A receptor or mutation status (ER/PR/HER2 profiles, else Laborbefund) or a marker value."""
    if not mk.loinc:
        doc.omit("tumors", i, f"marker {j} ({mk.name}): no LOINC code (the MII profiles code it)")
        return
    code = {"coding": [coding(fc.LOINC, mk.loinc, display(doc.catalog.loinc, mk.loinc))], "text": mk.name}
    q = quantity(mk.value, mk.unit) if mk.value is not None else None
    key = f"markers/{j}"
    if mk.result:
        value = {"coding": [coding(fc.MARKER_RESULT, mk.result)], **({"text": mk.text} if mk.text else {})}
        res = obs(
            fc.MARKER_PROFILE_OF.get(mk.loinc, "Observation.lab"),
            key,
            code,
            value,
            category=LAB_CATEGORY,
            component=[{"code": code, "valueQuantity": q}] if q else None,
        )
    elif q is not None:
        res = obs("Observation.lab", key, code, None, category=LAB_CATEGORY, valueQuantity=q)
    else:
        text = mk.text or (
            f"{number_text(mk.value)}{' ' + mk.unit if mk.unit else ''}" if mk.value is not None else None
        )
        if text is None:
            doc.omit("tumors", i, f"marker {j} ({mk.name}): neither a result nor a value")
            return
        res = obs("Observation.lab", key, code, None, category=LAB_CATEGORY, **as_text(text))
    if mk.value is not None and q is None:
        doc.note(
            "unit_not_ucum", res, f"marker value {mk.value:g} {mk.unit or '(no unit)'}: not a UCUM quantity"
        )
