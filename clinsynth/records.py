"""The typed record set that ingest writes and the sampler reads (Parquet, bucketed by patient).

records/patients-0003.parquet, encounters-0003.parquet, facts-0003.parquet hold every
patient whose id hashes to bucket 3, so a reader can walk patients bucket by bucket
with bounded memory.

Facts (one row per FHIR resource, a vital-signs panel one per component; `category` says what)
-----------------------------------------------------------------------------------------------
Columns every fact has: `system` + `code` are the code ingest took, *with its own system*:
ingest prefers the schema's system (ICD-10-GM for diagnoses, OPS for procedures, ATC for
medications, LOINC for labs and vitals) and otherwise keeps the resource's first coding
with that coding's system (SNOMED CT, PZN, ...). A reader must check `system` before it
puts a code into a schema slot (`icd10gm`, `ops`, `atc`, `loinc`): a SNOMED code is not
an OPS code. `date`/`end_date` are ISO dates, `assertion` is present | negated |
historical | suspected (| entered-in-error), `extra` is a JSON object (`PatientRecord.extra`).

Tumour facts (every category from `histology` to `metastasis` below, and diagnoses that
belong to a tumour) carry `extra.tumor`: the id of the primary-tumour Condition they
describe (FHIR Observation.focus / the condition-related extension), so the facts of two
tumours of one patient stay apart; it may name a Condition of an earlier encounter when
the tumour has no diagnosis row in this one. On the primary-tumour Condition itself
`extra.tumor` is its own resource id. Foreign sources: only where their resource names the
tumour (Observation.focus, Procedure.reasonReference); MII ECOG and genetic variants often don't.
Staging facts (tnm_*, uicc_stage, stage_other, lymph_nodes) carry
`extra.staging` = initial | current where the source says which, and `date` = the date
the staging refers to.

category      code / value columns                           extra keys
------------  ---------------------------------------------  --------------------------------------
diagnosis     code = ICD-10-GM (else the source's system);    topography (ICD-O-3), laterality,
              date = onset; status = clinical status;         primary_tumor (bool), tumor;
              assertion: provisional/unconfirmed/differential
              -> suspected, refuted -> negated, clinical
              status inactive/resolved/remission -> historical
procedure     code = OPS (else e.g. SNOMED, system says so)    laterality, intention
radiotherapy  code = OPS 8-52x, else SNOMED (33195004 for a      total_gy, fraction_gy, fractions,
              course without OPS): check `system`;            target (text as written), intent
              value_num = total dose, unit = Gy;              (curative | palliative | adjuvant ...),
              date = start, end_date = end                    intention (MII K | P ...), end_date,
                                                              concurrent (drug given alongside), tumor
medication    code = ATC (else PZN/SNOMED/ASK with system);   dose, dose_unit, route, schedule
              value_num/unit = dose; role = MedicationState-  ([m, n, e, night]), frequency (text),
              ment category (inpatient | community ...)       dosage_text, therapy ("systemic"),
                                                              as_needed (bool), regimen, cycle (int),
                                                              day (int), intent, per_dose + per_unit
                                                              (the prescription per body measure:
                                                              85 mg/m2, AUC 5; dose is then the
                                                              calculated absolute dose)
lab           code = LOINC (else the source's system);        ref_low, ref_high, interpretation
              value_num/unit or value_str
vital         code = LOINC (8480-6 systolic, 8462-4
              diastolic, 8867-4 pulse, 8310-5 temperature,
              29463-7 weight, 8302-2 height, 59408-5 SpO2,
              9279-1 respiratory rate); value_num, unit;      panel (a panel's code: its components,
              a panel (BP 85354-9) gives one row per           e.g. 8480-6 and 8462-4, share one
              measured component                               resource_id)
smoking       code = SNOMED status code; value_str = never |  pack_years
              former | current (None when not one of these)
histology     code = ICD-O-3 morphology (8140/3)              histology_text, topography, tumor
grading       code = grade (1, 2, 3, 4, X, L, M, H, B)        tumor
              (neither exists for a tumour before histology: the "V.a." diagnostic stay)
tnm_t/n/m     code = T3c / N1 / M1b (UICC)                    prefix (c/p/yp/r/a/u: per axis), staging,
                                                              tumor
tnm_l/v/pn    code = L1 / V0 / Pn0                            tumor, staging
tnm_r         code = R0 / R1 / R2 / RX (residual status)      tumor, staging
lymph_nodes   value_num = count; code = LOINC 21893-3         nodes = positive | examined, tumor,
              (positive) or 21894-1 (examined)                staging
uicc_stage    code = IIA (UICC)                               prefix, tumor, staging
stage_other   code = the stage as written (IIB, 3+4=7, 2, A);  system (Ann Arbor | ISS | R-ISS | Binet |
              system column: one code system per staging      Rai | FIGO | Gleason | ISUP | ELN |
              system (conventions.STAGE_SYSTEMS), or None      Durie-Salmon | other), tumor, staging
marker_status code = LOINC; without one: system = clinsynth's    result (positive | negative | equivocal |
              marker code system and code = the name (Ki-67);   mutated | wildtype | amplified; Ki-67:
                                                                high | low), text
              text = marker name; value_num/unit = a number     ("Exon-19-Deletion", "3+"), tumor;
              if stated (ER 90 %); value_str = the value code   foreign sources: value_display
              of foreign sources (LA6576-8)
ecog          code = the grade 0-5                            tumor
tumor_status  code = new | complete_remission |               tumor
              partial_remission | stable | progression |
              recurrence | mixed (foreign sources: their
              code, with their system)
metastasis    code = the site: ICD-O-3 topography or          tumor
              ICD-10-GM C77-C79 (system says which), else
              the MII site code (HEP, PUL, OSS ...)
observation   any other Observation: code/value as given      -

Encounters keep their rows as before (`kontaktart`, `class_code`, department) plus
`stay_kind` (diagnostic | surgery | therapy | complication | palliative, None for foreign
sources) and `postponed_reason` (a stay whose cycle was not given: leukocytes | neutrophils |
platelets). Smoking is a patient-level fact written once, in the patient's first encounter.

Radiotherapy in nuclear medicine (radioiodine) states an activity, not a dose: there
`total_gy`/`fraction_gy` are absent and `total_dose`/`fraction_dose` + `dose_unit` (MBq)
hold it. Legacy system URLs (http://fhir.de/CodeSystem/dimdi/...) are kept as written.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from clinsynth.artifacts.checks import parquet_rows, read_report, upstream_error

_PATIENTS_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("patient_id", pa.string()),
    ("sex", pa.string()),
    ("birth_date", pa.string()),
    ("deceased", pa.bool_()),
    ("deceased_date", pa.string()),
    ("family", pa.string()),
    ("given", pa.string()),
    ("city", pa.string()),
    ("postal_code", pa.string()),
    ("source", pa.string()),
]
PATIENTS = pa.schema(_PATIENTS_COLUMNS)
_ENCOUNTERS_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("encounter_id", pa.string()),
    ("patient_id", pa.string()),
    ("start", pa.string()),
    ("end", pa.string()),
    ("status", pa.string()),
    ("class_code", pa.string()),
    ("kontaktart", pa.string()),
    ("department_code", pa.string()),
    ("department", pa.string()),
    #: the stay's kind where the source says it (clinsynth's stay-kind extension): diagnostic |
    #: surgery | therapy | complication | palliative
    ("stay_kind", pa.string()),
    #: admitted for a cycle that was not given: why (leukocytes | neutrophils | platelets); else None
    ("postponed_reason", pa.string()),
    ("source", pa.string()),
]
ENCOUNTERS = pa.schema(_ENCOUNTERS_COLUMNS)
_FACTS_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("patient_id", pa.string()),
    ("encounter_id", pa.string()),
    ("resource_type", pa.string()),
    ("resource_id", pa.string()),
    ("category", pa.string()),
    ("system", pa.string()),
    ("code", pa.string()),
    ("display", pa.string()),
    ("text", pa.string()),
    ("value_num", pa.float64()),
    ("value_str", pa.string()),
    ("unit", pa.string()),
    ("date", pa.string()),
    ("end_date", pa.string()),
    ("status", pa.string()),
    ("assertion", pa.string()),
    ("role", pa.string()),
    ("extra", pa.string()),
    ("source", pa.string()),
]
FACTS = pa.schema(_FACTS_COLUMNS)
TABLES = {"patients": PATIENTS, "encounters": ENCOUNTERS, "facts": FACTS}

#: fact categories (see the module docstring for their columns and `extra` keys)
CATEGORIES = (
    "diagnosis",
    "procedure",
    "radiotherapy",
    "medication",
    "lab",
    "vital",
    "smoking",
    "histology",
    "grading",
    "tnm_t",
    "tnm_n",
    "tnm_m",
    "tnm_l",
    "tnm_v",
    "tnm_pn",
    "tnm_r",
    "lymph_nodes",
    "uicc_stage",
    "stage_other",
    "marker_status",
    "ecog",
    "tumor_status",
    "metastasis",
    "observation",
)
#: categories that describe one tumour: they carry `extra.tumor`
TUMOR_CATEGORIES = frozenset(CATEGORIES[CATEGORIES.index("histology") : CATEGORIES.index("observation")])


def bucket_of(patient_id: str, n_buckets: int) -> int:
    """Stable across processes and runs (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(patient_id.encode(), digest_size=4).digest(), "big") % n_buckets


@dataclass
class Encounter:
    row: dict[str, Any]
    facts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PatientRecord:
    """One patient: demographics, encounters with their facts, and facts without encounter."""

    patient: dict[str, Any]
    encounters: dict[str, Encounter] = field(default_factory=dict)
    unlinked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        return self.patient["patient_id"]

    def all_facts(self) -> list[dict[str, Any]]:
        return [f for e in self.encounters.values() for f in e.facts] + self.unlinked

    @staticmethod
    def extra(fact: dict[str, Any]) -> dict[str, Any]:
        return orjson.loads(fact["extra"]) if fact.get("extra") else {}


#: ingest's report, next to records/: rows per table (`rows`), resources read/ok/quarantined
INGEST_REPORT = "ingest_report.json"


def records_dir(ingest_dir: Path) -> Path:
    return Path(ingest_dir) / "records"


def read_ingest_report(ingest_dir: Path, *, stage: str = "sample") -> dict[str, Any]:
    """The ingest stage's report; missing, unreadable or without `rows` is an UpstreamError."""
    path = Path(ingest_dir) / INGEST_REPORT
    report = read_report(path, stage=stage, upstream="ingest", folder=ingest_dir, what="the ingest report")
    rows = report.get("rows") if isinstance(report, dict) else None
    if not isinstance(rows, dict) or any(not isinstance(rows.get(t), int) for t in TABLES):
        raise upstream_error(
            stage, "ingest", ingest_dir, f"{path}", f"rows per table for {', '.join(TABLES)}", rows
        )
    return dict(report)


def check_records(ingest_dir: Path, *, stage: str = "sample") -> dict[str, int]:
    """Hold records/ against the ingest report before reading it; return rows per table.

    Every table has one file per bucket (the same buckets for every table), and the rows in
    each table's files (Parquet footers: cheap) add up to the report's `rows`. A deleted,
    truncated or extra bucket file is an UpstreamError naming it.
    """
    report = read_ingest_report(ingest_dir, stage=stage)
    expected: dict[str, int] = {t: int(report["rows"][t]) for t in TABLES}
    folder = records_dir(ingest_dir)
    per_table = {
        t: sorted(int(p.name[len(t) + 1 : -len(".parquet")]) for p in folder.glob(f"{t}-*.parquet"))
        for t in TABLES
    }
    n_buckets = max((len(b) for b in per_table.values()), default=0)
    want = list(range(n_buckets))
    for table, got in per_table.items():
        if got != want:
            missing = sorted(set(want) - set(got))
            raise upstream_error(
                stage,
                "ingest",
                ingest_dir,
                f"{folder}/{table}-NNNN.parquet",
                f"{n_buckets} bucket file(s) like the other tables",
                f"{len(got)}"
                + (f", missing {', '.join(f'{table}-{b:04d}.parquet' for b in missing)}" if missing else ""),
            )
    found: dict[str, int] = {}
    for table in TABLES:
        found[table] = sum(
            parquet_rows(
                folder / f"{table}-{b:04d}.parquet",
                stage=stage,
                upstream="ingest",
                folder=ingest_dir,
                what=f"{table} records",
            )
            for b in want
        )
    if found != expected:
        diff = {t: (expected[t], found[t]) for t in TABLES if expected[t] != found[t]}
        raise upstream_error(
            stage,
            "ingest",
            ingest_dir,
            f"rows in {folder} vs {Path(ingest_dir) / INGEST_REPORT}",
            {t: e for t, (e, _) in diff.items()},
            {t: f for t, (_, f) in diff.items()},
        )
    return found


def buckets(records_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in records_dir.glob("patients-*.parquet"))


def iter_patients(records_dir: Path) -> Iterator[PatientRecord]:
    """Every patient with encounters and facts, one bucket in memory at a time."""
    for b in buckets(records_dir):
        tables = {
            name: pq.read_table(records_dir / f"{name}-{b:04d}.parquet").to_pylist()
            if (records_dir / f"{name}-{b:04d}.parquet").exists()
            else []
            for name in TABLES
        }
        patients = {p["patient_id"]: PatientRecord(p) for p in tables["patients"]}
        for e in tables["encounters"]:
            if e["patient_id"] in patients:
                patients[e["patient_id"]].encounters[e["encounter_id"]] = Encounter(e)
        for f in tables["facts"]:
            rec = patients.get(f["patient_id"])
            if rec is None:
                continue
            enc = rec.encounters.get(f["encounter_id"]) if f["encounter_id"] else None
            (enc.facts if enc else rec.unlinked).append(f)
        yield from sorted(patients.values(), key=lambda r: r.patient_id)


class BucketWriter:
    """Rows in, Parquet row groups out: memory stays bounded by `flush_rows` per open bucket."""

    def __init__(self, out_dir: Path, n_buckets: int, flush_rows: int = 20_000) -> None:
        self.out_dir, self.n_buckets, self.flush_rows = out_dir, n_buckets, flush_rows
        # temp names unique to this writer: two attempts writing one folder never share a file
        self._tmp_tag = f"{os.getpid()}.{secrets.token_hex(4)}"
        out_dir.mkdir(parents=True, exist_ok=True)
        self._buf: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._writers: dict[tuple[str, int], pq.ParquetWriter] = {}
        self.counts: dict[str, int] = dict.fromkeys(TABLES, 0)

    def add(self, table: str, row: dict[str, Any]) -> None:
        key = (table, bucket_of(row["patient_id"], self.n_buckets))
        buf = self._buf.setdefault(key, [])
        buf.append(row)
        self.counts[table] += 1
        if len(buf) >= self.flush_rows:
            self._flush(key)

    def _tmp(self, table: str, b: int) -> Path:
        return self.out_dir / f".{table}-{b:04d}.parquet.{self._tmp_tag}.tmp"

    def _flush(self, key: tuple[str, int]) -> None:
        rows = self._buf.get(key)
        if not rows:
            return
        table, b = key
        schema = TABLES[table]
        batch = pa.Table.from_pylist(rows, schema=schema)
        w = self._writers.get(key)
        if w is None:
            w = pq.ParquetWriter(self._tmp(table, b), schema, compression="zstd")
            self._writers[key] = w
        w.write_table(batch)
        self._buf[key] = []

    def close(self) -> None:
        """Flush, then rename every part into place; buckets without rows get empty files."""
        for key in list(self._buf):
            self._flush(key)
        for table, schema in TABLES.items():
            for b in range(self.n_buckets):
                key = (table, b)
                tmp = self._tmp(table, b)
                w = self._writers.pop(key, None)
                if w is None:
                    pq.write_table(pa.Table.from_pylist([], schema=schema), tmp)
                else:
                    w.close()
                tmp.replace(self.out_dir / f"{table}-{b:04d}.parquet")
