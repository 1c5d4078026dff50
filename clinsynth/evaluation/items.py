"""Schema-v2 extractions -> the comparable items of every category, columnar (one Arrow pass per field).

`strict` compares *items*: one normalised key per fact and category, with the fact's assertion.
`pigeon_compat` compares per-document *sets* of values, as the study did. Both are built here for
many documents at once, so no Python code runs per fact: the extractions become one Arrow struct
array, each list (diagnoses, tumours, ...) is flattened with its document index, and keys are built
with Arrow string kernels (`clinsynth.evaluation.normalize`).

Strict categories and their keys (assertion always beside the key; `|` joins parts; a part that is
absent is empty):

| category | one item per | key |
|---|---|---|
| icd10gm | diagnosis with a code | code |
| lab, vital | measurement | name, value (or value text), unit |
| medication | medication | name, dose, unit |
| medication_name | medication | name |
| atc | medication with a code | code |
| ops | procedure with a code | code |
| procedure_text | procedure | text, matched fuzzily (rapidfuzz, `evaluate.text_threshold`) |
| encounter, patient | field that is set | `field=value` (assertion: present) |
| radiotherapy | course | total Gy, fractions (the target is free text and not part of the key) |
| risk_factor | risk factor | kind, pack years |
| tnm_t, tnm_n, tnm_m | tumour axis | prefix + value ("pT2") |
| tnm_suffix | L/V/Pn/R value set | value ("R0") |
| grading, morphology, topography, tumor_status | tumour with the field | value |
| tumor_stage | UICC stage, entity-specific stage | "UICC IIA", "Ann Arbor IIIB" |
| marker | tumour marker | name, value, unit, result, text |
| performance | ECOG / Karnofsky | "ECOG 1", "KPS 80" |
| tumor (pooled) | the sum of the tumour categories above | - |
| icd10gm@3, ops@4, ops@5, atc@1..5 | code, hierarchical levels | code cut to the level (shorter: as is) |

Tumour sub-items carry their tumour's assertion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _pc

from clinsynth.evaluation import normalize as nz

#: untyped: pyarrow-stubs lack kernels used here (utf8_normalize) and scalar/array overloads
pc: Any = _pc

ASSERTIONS: tuple[str, ...] = ("present", "negated", "historical", "suspected")


@dataclass(frozen=True)
class Category:
    name: str
    label: str
    #: study (the study's table), schema (v2 extras), tumour (pooled into "tumor"), level (hierarchy)
    group: str
    fuzzy: bool = False


CATEGORIES: tuple[Category, ...] = (
    Category("icd10gm", "ICD-10-GM code", "study"),
    Category("tumor", "tumour information (pooled)", "study"),
    Category("lab", "lab values (name, value, unit)", "study"),
    Category("medication", "medication (name, dose, unit)", "study"),
    Category("atc", "ATC code", "study"),
    Category("ops", "OPS code", "study"),
    Category("procedure_text", "procedure description (fuzzy)", "study", fuzzy=True),
    Category("encounter", "encounter fields", "study"),
    Category("patient", "patient fields", "study"),
    Category("medication_name", "medication name", "schema"),
    Category("lab_loinc", "lab LOINC code", "schema"),
    Category("vital", "vital signs (name, value, unit)", "schema"),
    Category("radiotherapy", "radiotherapy (Gy, fractions)", "schema"),
    Category("risk_factor", "risk factors", "schema"),
    Category("tnm_t", "TNM T", "tumour"),
    Category("tnm_n", "TNM N", "tumour"),
    Category("tnm_m", "TNM M", "tumour"),
    Category("tnm_suffix", "TNM L/V/Pn/R", "tumour"),
    Category("grading", "grading", "tumour"),
    Category("tumor_stage", "UICC / entity stage", "tumour"),
    Category("morphology", "ICD-O-3 morphology", "tumour"),
    Category("topography", "ICD-O-3 topography", "tumour"),
    Category("marker", "tumour markers", "tumour"),
    Category("tumor_status", "tumour status", "tumour"),
    Category("performance", "ECOG / Karnofsky", "tumour"),
    Category("icd10gm@3", "ICD-10-GM, 3 characters", "level"),
    Category("ops@4", "OPS, 4 characters (5-484)", "level"),
    Category("ops@5", "OPS, 5 characters (5-484.5)", "level"),
    Category("atc@1", "ATC level 1", "level"),
    Category("atc@2", "ATC level 2", "level"),
    Category("atc@3", "ATC level 3", "level"),
    Category("atc@4", "ATC level 4", "level"),
    Category("atc@5", "ATC level 5", "level"),
)
CAT_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CATEGORIES)}
#: categories whose counts are the sum of others (no items of their own)
POOLED: dict[str, tuple[str, ...]] = {"tumor": tuple(c.name for c in CATEGORIES if c.group == "tumour")}
#: categories with items of their own (errors.jsonl and the assertion table use these)
BASE: tuple[str, ...] = tuple(c.name for c in CATEGORIES if c.name not in POOLED and c.group != "level")

#: ATC level -> characters (WHO: L, L01, L01X, L01XA, L01XA03)
ATC_LEVELS = {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}
#: OPS level (characters without separators) -> characters with them: 5-484 and 5-484.5
OPS_LEVELS = {4: 5, 5: 7}

# ---- the Arrow type of the fields scoring reads (other fields of the schema are ignored)
_S = pa.string()
_F = pa.float64()
_AXIS = pa.struct([("prefix", _S), ("value", _S)])
_MEAS = pa.struct(
    [("assertion", _S), ("name", _S), ("loinc", _S), ("value", _F), ("value_text", _S), ("unit", _S)]
)
EXTRACTION_TYPE = pa.struct(
    [
        (
            "encounter",
            pa.struct([(k, _S) for k in ("admission", "discharge", "type", "department", "letter_type")]),
        ),
        ("patient", pa.struct([("sex", _S), ("birth_date", _S), ("name", _S)])),
        ("diagnoses", pa.list_(pa.struct([("assertion", _S), ("icd10gm", _S)]))),
        (
            "tumors",
            pa.list_(
                pa.struct(
                    [
                        ("assertion", _S),
                        ("topography", _S),
                        ("morphology", _S),
                        ("histology", _S),
                        ("grading", _S),
                        (
                            "tnm",
                            pa.struct(
                                [("t", _AXIS), ("n", _AXIS), ("m", _AXIS)]
                                + [(k, _S) for k in ("l", "v", "pn", "r")]
                            ),
                        ),
                        ("uicc_stage", _S),
                        ("stages", pa.list_(pa.struct([("system", _S), ("value", _S)]))),
                        (
                            "markers",
                            pa.list_(
                                pa.struct(
                                    [("name", _S), ("value", _F), ("unit", _S), ("result", _S), ("text", _S)]
                                )
                            ),
                        ),
                        ("ecog", pa.int64()),
                        ("karnofsky", pa.int64()),
                        ("status", _S),
                    ]
                )
            ),
        ),
        ("procedures", pa.list_(pa.struct([("assertion", _S), ("text", _S), ("ops", _S)]))),
        (
            "radiotherapy",
            pa.list_(
                pa.struct([("assertion", _S), ("target", _S), ("total_gy", _F), ("fractions", pa.int64())])
            ),
        ),
        (
            "medications",
            pa.list_(pa.struct([("assertion", _S), ("name", _S), ("atc", _S), ("dose", _F), ("unit", _S)])),
        ),
        ("labs", pa.list_(_MEAS)),
        ("vitals", pa.list_(pa.struct([(f.name, f.type) for f in _MEAS if f.name != "loinc"]))),
        (
            "risk_factors",
            pa.list_(pa.struct([("assertion", _S), ("kind", _S), ("text", _S), ("pack_years", _F)])),
        ),
    ]
)


def to_arrow(extractions: Sequence[Mapping[str, Any] | None]) -> pa.StructArray:
    """One struct array for many extractions (None: an empty prediction). Fields scoring does not read
    are ignored; a value of the wrong type raises (validate extractions against the schema first)."""
    arr = pa.array(extractions, type=EXTRACTION_TYPE)
    assert isinstance(arr, pa.StructArray)
    return arr


# ---- helpers
def _f(arr: Any, name: str) -> Any:
    return pc.struct_field(arr, name)


def _flat(parent: Any, field: str, doc: np.ndarray) -> tuple[np.ndarray, Any]:
    """The elements of list `field` of every row of `parent`, and the document each belongs to."""
    lists = _f(parent, field)
    rows = pc.list_parent_indices(lists).to_numpy()
    return doc[rows], pc.list_flatten(lists)


def _assertions(arr: Any) -> np.ndarray:
    idx = pc.index_in(arr, value_set=pa.array(ASSERTIONS))
    return np.asarray(pc.fill_null(idx, 0).to_numpy(zero_copy_only=False), dtype=np.int8)


def _join(*parts: Any) -> Any:
    return pc.binary_join_element_wise(*parts, "|", null_handling="replace", null_replacement="")


def _concat(*parts: Any) -> Any:
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")


def _prefixed(prefix: str, arr: Any) -> Any:
    """`prefix` + value, null where the value is null."""
    return pc.if_else(pc.is_valid(arr), pc.binary_join_element_wise(prefix, arr, ""), _NULL)


_NULL = pa.scalar(None, _S)


def _cut(arr: Any, n: int) -> Any:
    return pc.utf8_slice_codeunits(arr, 0, n)


@dataclass
class Items:
    """The items of many documents: parallel arrays, one row per item."""

    doc: np.ndarray  # int64, document index
    cat: np.ndarray  # int16, index into CATEGORIES
    key: pa.Array  # string, the normalised key
    assertion: np.ndarray  # int8, index into ASSERTIONS

    def __len__(self) -> int:
        return len(self.doc)


class _Sink:
    def __init__(self, names: Mapping[str, int]) -> None:
        self.names = names
        self.docs: list[np.ndarray] = []
        self.cats: list[np.ndarray] = []
        self.keys: list[pa.Array] = []
        self.asserts: list[np.ndarray] = []

    def add(self, cat: str, doc: np.ndarray, key: Any, assertion: np.ndarray | None = None) -> None:
        key = key.combine_chunks() if isinstance(key, pa.ChunkedArray) else key
        keep = pc.and_(pc.is_valid(key), pc.not_equal(key, "")).fill_null(False)
        mask = keep.to_numpy(zero_copy_only=False)
        if not mask.any():
            return
        self.docs.append(doc[mask])
        self.cats.append(np.full(int(mask.sum()), self.names[cat], dtype=np.int16))
        self.keys.append(pc.filter(key, keep))
        a = assertion if assertion is not None else np.zeros(len(doc), dtype=np.int8)
        self.asserts.append(a[mask])

    def items(self) -> Items:
        if not self.docs:
            return Items(np.zeros(0, np.int64), np.zeros(0, np.int16), pa.array([], _S), np.zeros(0, np.int8))
        return Items(
            np.concatenate(self.docs).astype(np.int64),
            np.concatenate(self.cats),
            pa.concat_arrays(self.keys),
            np.concatenate(self.asserts),
        )


def _level_items(
    sink: _Sink, name: str, doc: np.ndarray, codes: Any, a: np.ndarray, levels: Mapping[int, int]
) -> None:
    for level, n in levels.items():
        sink.add(f"{name}@{level}", doc, _cut(codes, n), a)


# ---- strict
def strict_items(arr: pa.StructArray) -> Items:
    """Every strict category's items of every document (row i of `arr` is document i)."""
    sink = _Sink(CAT_INDEX)
    doc = np.arange(len(arr), dtype=np.int64)

    enc, pat = _f(arr, "encounter"), _f(arr, "patient")
    for key in ("admission", "discharge", "type", "department", "letter_type"):
        v = _f(enc, key)
        sink.add("encounter", doc, _prefixed(f"{key}=", nz.a_text(v) if key == "department" else v))
    for key in ("sex", "birth_date", "name"):
        v = _f(pat, key)
        sink.add("patient", doc, _prefixed(f"{key}=", nz.a_text(v) if key == "name" else v))

    d, dx = _flat(arr, "diagnoses", doc)
    a = _assertions(_f(dx, "assertion"))
    icd = nz.a_code(_f(dx, "icd10gm"))
    sink.add("icd10gm", d, icd, a)
    _level_items(sink, "icd10gm", d, icd, a, {3: 3})

    d, pr = _flat(arr, "procedures", doc)
    a = _assertions(_f(pr, "assertion"))
    ops = nz.a_ops(_f(pr, "ops"))
    sink.add("ops", d, ops, a)
    _level_items(sink, "ops", d, ops, a, OPS_LEVELS)
    sink.add("procedure_text", d, nz.a_text(_f(pr, "text")), a)

    d, rt = _flat(arr, "radiotherapy", doc)
    sink.add(
        "radiotherapy",
        d,
        _join(nz.a_number(_f(rt, "total_gy")), nz.a_number(_f(rt, "fractions"))),
        _assertions(_f(rt, "assertion")),
    )

    d, md = _flat(arr, "medications", doc)
    a = _assertions(_f(md, "assertion"))
    name = nz.a_text(_f(md, "name"))
    sink.add("medication", d, _join(name, nz.a_number(_f(md, "dose")), nz.a_unit(_f(md, "unit"))), a)
    sink.add("medication_name", d, name, a)
    atc = nz.a_code(_f(md, "atc"))
    sink.add("atc", d, atc, a)
    _level_items(sink, "atc", d, atc, a, ATC_LEVELS)

    for field, cat in (("labs", "lab"), ("vitals", "vital")):
        d, ms = _flat(arr, field, doc)
        a = _assertions(_f(ms, "assertion"))
        value = pc.coalesce(nz.a_number(_f(ms, "value")), nz.a_text(_f(ms, "value_text")))
        sink.add(cat, d, _join(nz.a_text(_f(ms, "name")), value, nz.a_unit(_f(ms, "unit"))), a)
        if cat == "lab":
            sink.add("lab_loinc", d, nz.a_code(_f(ms, "loinc")), a)

    d, rf = _flat(arr, "risk_factors", doc)
    sink.add(
        "risk_factor",
        d,
        _join(_f(rf, "kind"), nz.a_number(_f(rf, "pack_years"))),
        _assertions(_f(rf, "assertion")),
    )

    _tumour_items(sink, arr, doc)
    return sink.items()


def _tumour_items(sink: _Sink, arr: pa.StructArray, doc: np.ndarray) -> None:
    d, tu = _flat(arr, "tumors", doc)
    a = _assertions(_f(tu, "assertion"))
    tnm = _f(tu, "tnm")
    for axis in ("t", "n", "m"):
        ax = _f(tnm, axis)
        value = _f(ax, "value")
        sink.add(f"tnm_{axis}", d, pc.if_else(pc.is_valid(value), _concat(_f(ax, "prefix"), value), value), a)
    for suffix in ("l", "v", "pn", "r"):
        sink.add("tnm_suffix", d, _f(tnm, suffix), a)
    sink.add("grading", d, _f(tu, "grading"), a)
    sink.add("morphology", d, nz.a_code(_f(tu, "morphology")), a)
    sink.add("topography", d, nz.a_code(_f(tu, "topography")), a)
    sink.add("tumor_status", d, _f(tu, "status"), a)
    sink.add("tumor_stage", d, _prefixed("UICC ", _f(tu, "uicc_stage")), a)
    sink.add("performance", d, _prefixed("ECOG ", pc.cast(_f(tu, "ecog"), _S)), a)
    sink.add("performance", d, _prefixed("KPS ", pc.cast(_f(tu, "karnofsky"), _S)), a)
    # nested lists of a tumour: the tumour's row index first, then its document and assertion
    t_idx = np.arange(len(tu), dtype=np.int64)
    rows, st = _flat(tu, "stages", t_idx)
    sink.add("tumor_stage", d[rows], _join(_f(st, "system"), _f(st, "value")), a[rows])
    rows, mk = _flat(tu, "markers", t_idx)
    key = _join(
        nz.a_text(_f(mk, "name")),
        nz.a_number(_f(mk, "value")),
        nz.a_unit(_f(mk, "unit")),
        _f(mk, "result"),
        nz.a_text(_f(mk, "text")),
    )
    sink.add("marker", d[rows], key, a[rows])


# ---- pigeon_compat sets
#: the study's fields, as sets per document; a pigeon category is the mean of its sets' scores
PIGEON_SETS: tuple[str, ...] = (
    "icd",
    "icd@3",
    "icd@1",
    "tnm_t",
    "tnm_n",
    "tnm_m",
    "tumor_stage",
    "histology",
    "tumor_status",
    "marker",
    "marker_value",
    "smoking",
    "ecog",
    "radiotherapy",
    "lab_name",
    "lab_value",
    "medication_name",
    "medication_dosage",
    "atc",
    "ops",
    "ops_category",
    "procedure_text",
)
SET_INDEX: dict[str, int] = {s: i for i, s in enumerate(PIGEON_SETS)}
#: pigeon category -> its sets (the study's table: ICD, tumour, labs, medications, ATC, OPS, procedures)
PIGEON_CATEGORIES: dict[str, tuple[str, ...]] = {
    "icd10gm": ("icd",),
    "tumor": (
        "tnm_t",
        "tnm_n",
        "tnm_m",
        "tumor_stage",
        "histology",
        "tumor_status",
        "marker",
        "marker_value",
        "smoking",
        "ecog",
        "radiotherapy",
    ),
    "lab": ("lab_name", "lab_value"),
    "medication": ("medication_name", "medication_dosage"),
    "atc": ("atc",),
    "ops": ("ops",),
    "procedure_text": ("procedure_text",),
    "icd10gm@3": ("icd@3",),
    "icd10gm@1": ("icd@1",),
    "ops_category": ("ops_category",),
}
#: the study's "introduction" fields, compared by exact match (both absent counts as equal)
INTRO_FIELDS: tuple[tuple[str, str], ...] = (
    ("encounter", "admission"),
    ("encounter", "discharge"),
    ("encounter", "type"),
    ("encounter", "department"),
    ("encounter", "letter_type"),
    ("patient", "sex"),
    ("patient", "birth_date"),
    ("patient", "name"),
)


def pigeon_sets(arr: pa.StructArray, *, gold: bool) -> Items:
    """The study's per-document value sets (`cat` indexes PIGEON_SETS; assertions are ignored, as the
    study ignored them). Codes use the study's normalisation, texts are as written. For the gold side,
    B99 codes leave the ICD sets before the 3-/1-character cut (the scorer drops B99 values elsewhere)."""
    sink = _Sink(SET_INDEX)
    doc = np.arange(len(arr), dtype=np.int64)

    d, dx = _flat(arr, "diagnoses", doc)
    icd = nz.a_pigeon_code(_f(dx, "icd10gm"))
    sink.add("icd", d, icd)
    if gold:
        icd = pc.if_else(pc.starts_with(pc.utf8_upper(icd), "B99"), _NULL, icd)
    # the study takes c[:3] of codes with >= 3 characters and c[:1]
    sink.add("icd@3", d, pc.if_else(pc.greater_equal(pc.utf8_length(icd), 3), _cut(icd, 3), _NULL))
    sink.add("icd@1", d, _cut(icd, 1))

    d, tu = _flat(arr, "tumors", doc)
    tnm = _f(tu, "tnm")
    for axis in ("t", "n", "m"):
        ax = _f(tnm, axis)
        value = _f(ax, "value")
        sink.add(f"tnm_{axis}", d, pc.if_else(pc.is_valid(value), _concat(_f(ax, "prefix"), value), value))
    sink.add("tumor_stage", d, _f(tu, "uicc_stage"))
    sink.add("histology", d, _f(tu, "histology"))
    sink.add("tumor_status", d, _f(tu, "status"))
    sink.add("ecog", d, pc.cast(_f(tu, "ecog"), _S))
    t_idx = np.arange(len(tu), dtype=np.int64)
    rows, st = _flat(tu, "stages", t_idx)
    sink.add("tumor_stage", d[rows], _f(st, "value"))
    rows, mk = _flat(tu, "markers", t_idx)
    sink.add("marker", d[rows], _f(mk, "name"))
    sink.add(
        "marker_value",
        d[rows],
        pc.coalesce(nz.a_number(_f(mk, "value")), _f(mk, "text"), _f(mk, "result")),
    )

    d, rf = _flat(arr, "risk_factors", doc)
    sink.add("smoking", d, pc.if_else(pc.equal(_f(rf, "kind"), "smoking"), _f(rf, "text"), _NULL))
    d, rt = _flat(arr, "radiotherapy", doc)
    sink.add("radiotherapy", d, _f(rt, "target"))

    d, lb = _flat(arr, "labs", doc)
    sink.add("lab_name", d, _f(lb, "name"))
    sink.add("lab_value", d, pc.coalesce(nz.a_number(_f(lb, "value")), _f(lb, "value_text")))

    d, md = _flat(arr, "medications", doc)
    sink.add("medication_name", d, _f(md, "name"))
    # (not null_handling="skip": in pyarrow 26 it drops rows where every part is null)
    dosage = pc.utf8_trim_whitespace(
        pc.binary_join_element_wise(
            nz.a_number(_f(md, "dose")), _f(md, "unit"), " ", null_handling="replace", null_replacement=""
        )
    )
    sink.add("medication_dosage", d, dosage)
    sink.add("atc", d, nz.a_pigeon_code(_f(md, "atc")))

    d, pr = _flat(arr, "procedures", doc)
    ops = nz.a_pigeon_code(_f(pr, "ops"))
    sink.add("ops", d, ops)
    # the study: the part before the first "-" of codes that have one
    before_dash = pc.list_element(pc.split_pattern(ops, "-", max_splits=1), 0)
    sink.add("ops_category", d, pc.if_else(pc.match_substring(ops, "-"), before_dash, _NULL))
    sink.add("procedure_text", d, _f(pr, "text"))
    return sink.items()


def intro_values(arr: pa.StructArray) -> list[np.ndarray]:
    """Per intro field: every document's value as an object array ("" where absent)."""
    out = []
    for section, key in INTRO_FIELDS:
        v = pc.fill_null(_f(_f(arr, section), key), "")
        out.append(np.asarray(v.to_numpy(zero_copy_only=False), dtype=object))
    return out
