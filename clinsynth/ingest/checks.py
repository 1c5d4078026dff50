"""Phase 2 checks that need every resource: duplicates, dangling references, dates outside a life.

They run on the index (`index.INDEX`) with numpy and pyarrow, never per resource in
Python and never as joins (which would copy millions of strings): at paper scale the
index has millions of rows and these checks take a fraction of a second.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinsynth.ingest.index import KIND, iso


def _flag(idx: pa.Table, mask: pa.Array, reason: str, details: list[str]) -> list[dict[str, Any]]:
    """Quarantine entries for the rows of `idx` under `mask`, one detail each."""
    rows = idx.filter(mask).select(["seq", "source", "line", "location", "rt", "rid"]).to_pylist()
    return [
        {
            "seq": r["seq"],
            "source": r["source"],
            "line": r["line"],
            "location": r["location"],
            "resource_type": r["rt"],
            "id": r["rid"],
            "reason": reason,
            "detail": d,
            "exception": None,
        }
        for r, d in zip(rows, details, strict=True)
    ]


def _np_bool(a: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), dtype=bool)


def _flat(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def global_checks(idx: pa.Table) -> tuple[list[dict[str, Any]], pa.Array, dict[str, int]]:
    """Quarantine entries for duplicates, dangling references and dates outside a life; the seqs
    that survive; and identical repeats by type (counted, not quarantined)."""
    bad: list[dict[str, Any]] = []
    seq = idx["seq"].to_numpy()
    alive = np.ones(idx.num_rows, dtype=bool)

    # 1. duplicates: the first occurrence in source order wins
    has_key = _np_bool(pc.is_valid(idx["key"]))
    key = np.asarray(_flat(idx["key"]).fill_null(pa.scalar(0, pa.int64())).to_numpy(), dtype=np.int64)
    order = np.argsort(seq, kind="stable")
    order = order[has_key[order]]
    _, first_pos, inverse = np.unique(key[order], return_index=True, return_inverse=True)
    first_row = order[first_pos[inverse]]  # for each keyed row (in seq order): its first occurrence
    later = first_row != order
    digest = idx["digest"].to_numpy()
    dup_rows, dup_first = order[later], first_row[later]
    same = digest[dup_rows] == digest[dup_first]
    repeats = Counter(cast("list[str]", idx["rt"].take(dup_rows[same]).to_pylist()))
    alive[dup_rows] = False
    conflict = dup_rows[~same]
    if len(conflict):
        m = np.zeros(idx.num_rows, dtype=bool)
        m[conflict] = True
        sub = idx.filter(pa.array(m))
        details = [
            f"{r}/{i} appears again with different content"
            for r, i in zip(sub["rt"].to_pylist(), sub["rid"].to_pylist(), strict=True)
        ]
        bad += _flag(idx, pa.array(m), "duplicate_id", details)

    kinds = idx["kind"].to_numpy()

    def ids_of(k: str) -> pa.Table:
        return idx.filter(pa.array(alive & (kinds == KIND[k])))

    def dangling(mask: np.ndarray, what: str, refs: pa.ChunkedArray) -> None:
        m = alive & mask
        if m.any():
            marr = pa.array(m)
            details = [
                f"{what}{x}" if x else "no subject reference to a Patient"
                for x in refs.filter(marr).to_pylist()
            ]
            bad.extend(_flag(idx, marr, "dangling_reference", details))
            alive[m] = False

    # 2. references: to a Patient, an Encounter of the same patient, a Medication
    patients = ids_of("patient").select(["rid", "birth", "death"])
    needs_patient = ~np.isin(kinds, [KIND["patient"], KIND["medication"], KIND["ignored"]])
    pref = idx["patient_ref"]
    p_at = _flat(pc.index_in(pref, value_set=_flat(patients["rid"])))
    dangling(needs_patient & ~_np_bool(pc.is_valid(p_at)), "subject -> Patient/", pref)

    encounters = ids_of("encounter").select(["rid", "patient_ref"])
    eref = idx["encounter_ref"]
    has_enc = _np_bool(pc.is_valid(eref))
    e_at = _flat(pc.index_in(eref, value_set=_flat(encounters["rid"])))
    dangling(has_enc & ~_np_bool(pc.is_valid(e_at)), "encounter -> Encounter/", eref)
    owner = _flat(encounters["patient_ref"]).take(e_at)
    dangling(
        has_enc & ~_np_bool(pc.equal(owner, _flat(pref))),
        "encounter belongs to another patient: Encounter/",
        eref,
    )

    meds = _flat(ids_of("medication")["rid"])
    mref = idx["med_ref"]
    dangling(
        _np_bool(pc.is_valid(mref)) & ~_np_bool(pc.is_in(mref, value_set=meds)),
        "medicationReference -> Medication/",
        mref,
    )

    # 3. dates outside the patient's life
    birth = _flat(patients["birth"]).take(p_at)
    death = _flat(patients["death"]).take(p_at)
    for mask, word, bound in (
        (_np_bool(pc.less(_flat(idx["first_day"]), birth)), "before the birth date", birth),
        (_np_bool(pc.greater(_flat(idx["last_day"]), death)), "after the death date", death),
    ):
        m = alive & mask
        if m.any():
            marr = pa.array(m)
            details = [
                f"a date of this resource lies {word} {iso(b)}" for b in bound.filter(marr).to_pylist()
            ]
            bad += _flag(idx, marr, "impossible_date", details)
            alive[m] = False
    return bad, pa.array(seq[alive]), dict(repeats)
