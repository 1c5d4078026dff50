"""Small hand-written MII-style resources for ingest tests (valid unless a test breaks them)."""

from __future__ import annotations

import copy
from typing import Any

from clinsynth.fhir import conventions as fc


def patient(pid: str = "p1", birth: str = "1950-04-02", gender: str = "female", **kw: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"profile": [fc.PROFILE["Patient"]]},
        "gender": gender,
        "birthDate": birth,
        "name": [{"family": "Muster", "given": ["Erika"]}],
        **kw,
    }


def encounter(
    eid: str = "e1", pid: str = "p1", start: str = "2024-03-01", end: str = "2024-03-09"
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "meta": {"profile": [fc.PROFILE["Encounter"]]},
        "status": "finished",
        "class": {"system": fc.ENCOUNTER_CLASS, "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start, "end": end},
        "diagnosis": [{"condition": {"reference": "Condition/c1"}, "rank": 1}],
    }


def condition(
    cid: str = "c1",
    pid: str = "p1",
    eid: str | None = "e1",
    code: str = "C20",
    system: str = fc.ICD10GM,
    onset: str = "2024-03-02",
) -> dict[str, Any]:
    r = {
        "resourceType": "Condition",
        "id": cid,
        "meta": {"profile": [fc.PROFILE["Condition"]]},
        "code": {"coding": [{"system": system, "code": code, "display": "Bösartige Neubildung des Rektums"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
        "verificationStatus": {"coding": [{"system": fc.CONDITION_VERIFICATION, "code": "confirmed"}]},
    }
    if eid:
        r["encounter"] = {"reference": f"Encounter/{eid}"}
    return r


def lab(
    oid: str = "o1", pid: str = "p1", eid: str = "e1", value: float = 10.2, when: str = "2024-03-03"
) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"profile": [fc.PROFILE["Observation.lab"]]},
        "status": "final",
        "category": [{"coding": [{"system": fc.OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": fc.LOINC, "code": "718-7", "display": "Hemoglobin"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "g/dL", "system": fc.UCUM, "code": "g/dL"},
    }


def procedure(rid: str = "pr1", pid: str = "p1", eid: str = "e1", when: str = "2024-03-04") -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "meta": {"profile": [fc.PROFILE["Procedure"]]},
        "status": "completed",
        "code": {"coding": [{"system": fc.OPS, "code": "5-484.55", "version": "2024"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{eid}"},
        "performedDateTime": when,
    }


def medication_statement(rid: str = "ms1", pid: str = "p1", eid: str = "e1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "id": rid,
        "meta": {"profile": [fc.PROFILE["MedicationStatement"]]},
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [{"system": fc.ATC, "code": "A02BC02", "display": "Pantoprazol"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "context": {"reference": f"Encounter/{eid}"},
        "effectivePeriod": {"start": "2024-03-09"},
        "dosage": [
            {
                "timing": {"repeat": {"when": ["MORN"]}},
                "doseAndRate": [
                    {"doseQuantity": {"value": 40, "unit": "mg", "system": fc.UCUM, "code": "mg"}}
                ],
            }
        ],
    }


def one_patient() -> list[dict[str, Any]]:
    return [patient(), encounter(), condition(), lab(), procedure(), medication_statement()]


def mutations(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Invalid (and a few valid) variants: what each breaks, and the broken resource."""
    out = []

    def variant(name: str, fn) -> None:
        r = copy.deepcopy(res)
        fn(r)
        out.append((name, r))

    variant("unknown element", lambda r: r.update(colour="blue"))
    variant("id with a space", lambda r: r.update(id="a b"))
    variant("number for id", lambda r: r.update(id=12))
    variant("empty meta.profile entry", lambda r: r["meta"].update(profile=[""]))
    variant("null in a list", lambda r: r["meta"].update(profile=[None]))
    variant("list for a single element", lambda r: r.update(meta=[r["meta"]]))
    variant("object for a string", lambda r: r.update(id={"x": 1}))
    variant("wrong resourceType", lambda r: r.update(resourceType="Patientx"))
    if res["resourceType"] == "Patient":
        variant("impossible month", lambda r: r.update(birthDate="1950-13-02"))
        variant("gender code with space", lambda r: r.update(gender="fe male"))
        variant("birthDate as number", lambda r: r.update(birthDate=1950))
        variant("valid: other birth date", lambda r: r.update(birthDate="1961-07-30"))
    if res["resourceType"] == "Observation":
        variant("missing status", lambda r: r.pop("status"))
        variant("missing code", lambda r: r.pop("code"))
        variant("two value[x]", lambda r: r.update(valueString="x"))
        variant("value as string", lambda r: r["valueQuantity"].update(value="ten"))
        variant("bad dateTime", lambda r: r.update(effectiveDateTime="2024-03-03T25:00:00Z"))
        variant("valid: other value", lambda r: r["valueQuantity"].update(value=7.9))
        variant("valid: integer value", lambda r: r["valueQuantity"].update(value=8))
        # the fast path's value slots must never be more lenient than fhir.resources
        for when in (
            "2024-02-29",
            "2023-02-29",
            "2024-02-30",
            "2024-04-31",
            "2024-12-31",
            "2024-03-03T10:00:00",
            "2024-03-03T10:00:00+01:00",
            "2024-03-03T10:00:00.123Z",
            "2024-03-03T24:00:00Z",
            "2024-03-03T10:00:60Z",
            "2024",
            "2024-03",
            "0000-01-01",
            "2024-3-3",
            "1899-12-31",
            "2024-03-03T10:00:00+14:00",
            "2024-03-03T10:00:00+15:00",
            "2024-03-03T10:00Z",
        ):
            variant(f"effective {when}", lambda r, w=when: r.update(effectiveDateTime=w))
        for value in (1e5, -0.0, 0.1, 1.0, 123456789012345678, 12345678901234567890.5, 1e-7, -3):
            variant(f"value {value!r}", lambda r, v=value: r["valueQuantity"].update(value=v))
        for code in ("final", "fi nal", "fi  nal", "fïnal", "", " final", "amended"):
            variant(f"status {code!r}", lambda r, c=code: r.update(status=c))
        for rid in ("a" * 64, "a" * 65, "a" * 255, "a" * 256, "a_b", "A-1.2"):
            variant(f"id of {len(rid)} chars {rid[:4]!r}", lambda r, i=rid: r.update(id=i))
        for text in (" ", "\u00a0", "\u000b", 'a"b', "Hämoglobin", "x\ty", "\\"):
            variant(f"code.text {text!r}", lambda r, t=text: r["code"].update(text=t))
        variant("system with space", lambda r: r["code"]["coding"][0].update(system="http://loinc.org x"))
        variant("empty system", lambda r: r["code"]["coding"][0].update(system=""))
    if res["resourceType"] == "Condition":
        variant("missing subject", lambda r: r.pop("subject"))
        variant("code with trailing space", lambda r: r["code"]["coding"][0].update(code="C20 "))
        variant("onset as bool", lambda r: r.update(onsetDateTime=True))
    return out
