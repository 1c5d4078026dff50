"""The compact index workers hand back, and the schemas of the row parts they write.

Workers keep the (large) rows on disk in their own Parquet parts and send the main process
only this index: ids, references and date bounds per resource, enough for the global
checks to run on integers and dictionary-encoded strings instead of Python objects.
`seq` (the resource's position in the source) ties index, parts and quarantine together.
"""

from __future__ import annotations

import pyarrow as pa

from clinsynth.records import ENCOUNTERS, FACTS, PATIENTS

INDEX = pa.schema(
    [
        ("seq", pa.int64()),
        ("rt", pa.dictionary(pa.int32(), pa.string())),
        ("rid", pa.string()),
        ("key", pa.int64()),  # hash of type/id: duplicates are found on integers, not strings
        ("digest", pa.int64()),
        ("kind", pa.int8()),  # index into KINDS
        ("patient_ref", pa.string()),
        ("encounter_ref", pa.string()),
        ("med_ref", pa.string()),
        ("first_day", pa.int32()),  # yyyymmdd, partial dates padded to their latest day
        ("last_day", pa.int32()),  # ... to their earliest day
        ("birth", pa.int32()),  # patients: earliest possible birth day
        ("death", pa.int32()),  # patients: latest possible death day
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("line", pa.int64()),
        ("location", pa.string()),
    ]
)

#: small tables the main process needs whole: encounter diagnosis roles, Medication codes
SIDE = {
    "roles": pa.schema([("cond_id", pa.string()), ("role", pa.string())]),
    "meds": pa.schema(
        [
            ("med_id", pa.string()),
            ("m_system", pa.string()),
            ("m_code", pa.string()),
            ("m_display", pa.string()),
        ]
    ),
}

#: the record tables as workers write them: with `seq`, and facts with their unresolved Medication
PART_SCHEMAS = {
    "patients": PATIENTS.append(pa.field("seq", pa.int64())),
    "encounters": ENCOUNTERS.append(pa.field("seq", pa.int64())),
    "facts": FACTS.append(pa.field("seq", pa.int64())).append(pa.field("med_ref", pa.string())),
}

KINDS = ("patient", "encounter", "medication", "facts", "ignored")
KIND = {k: i for i, k in enumerate(KINDS)}


def ymd(day: str, high: bool) -> int:
    """'2024-03-05...' -> 20240305; partial dates padded to their latest (high) or earliest day."""
    if len(day) >= 10:
        return int(day[:4]) * 10000 + int(day[5:7]) * 100 + int(day[8:10])
    if len(day) == 7:
        day += "-31" if high else "-01"
    else:
        day = day[:4] + ("-12-31" if high else "-01-01")
    return int(day.replace("-", ""))


def iso(day: int | None) -> str:
    """20240305 -> '2024-03-05' (for messages)."""
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}" if day else "?"
