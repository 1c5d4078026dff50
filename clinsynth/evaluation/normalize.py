"""What "equal" means for each kind of value, once as plain Python and once over Arrow arrays.

`strict` compares normalised keys; the rules are deliberately few so a reader can predict a match:

| kind | rule | example |
|---|---|---|
| text (names, procedures) | NFC, lower-case, white space -> " ", ``.,;:`` trimmed | " Port. " -> "port" |
| ICD-10-GM, ATC, ICD-O-3, LOINC | white space removed, upper-case, `†*!+` removed | "c78.7*" -> "C78.7" |
| OPS codes | white space removed, lower-case (OPS letters are lower-case) | "5-38A.1" -> "5-38a.1" |
| units | lower-case, white space removed, µ/μ -> u | "mg/m2", "µg" -> "ug" |
| numbers | rounded to 4 decimals, shortest form, no trailing ".0" | 85.0 -> "85", 2.50 -> "2.5" |
| dates, enumerations | as validated by the schema (ISO dates; fixed vocabularies) | "2025-03-20" |

`pigeon_compat` uses the study's own normalisation (`pigeon_code`): lower-case, `!+*` stripped, a
trailing ".0"/".00" dropped, for codes only; texts are compared as written (UMEssen/PIGEON,
src/7_evaluation/evaluate.py, `normalize_code`).

The Arrow versions (`a_*`) must give the same strings as the Python ones; a unit test holds them together.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as _pc

#: untyped: pyarrow-stubs lack kernels used here (utf8_normalize) and scalar/array overloads
pc: Any = _pc

#: white space collapsed in texts (explicit, so Python's re and Arrow's RE2 agree)
_WS_PY = re.compile("[\t\n\x0b\x0c\r \u00a0\u2009\u202f]+")
_WS_RE2 = "[\\t\\n\\x0b\\x0c\\r \\x{00A0}\\x{2009}\\x{202F}]+"
#: trimmed from both ends of a text
TEXT_TRIM = " .,;:"
_ICD_MARKS_PY = re.compile("[†*!+\t\n\x0b\x0c\r \u00a0]")
_ICD_MARKS_RE2 = "[†*!+\\t\\n\\x0b\\x0c\\r \\x{00A0}]"
_SPACE_PY = re.compile("[\t\n\x0b\x0c\r \u00a0]")
_SPACE_RE2 = "[\\t\\n\\x0b\\x0c\\r \\x{00A0}]"
_MICRO_PY = re.compile("[\u00b5\u03bc]")
_MICRO_RE2 = "[\\x{00B5}\\x{03BC}]"
_PIGEON_MARKS_PY = re.compile(r"[!+*]")
_PIGEON_ZERO_PY = re.compile(r"\.00?$")


# ---- plain Python (reference rules; the benchmark's per-document loop uses these)
def text(s: str) -> str:
    return _WS_PY.sub(" ", unicodedata.normalize("NFC", s).lower()).strip(TEXT_TRIM)


def code(s: str) -> str:
    """ICD-10-GM, ATC, ICD-O-3, LOINC."""
    return _ICD_MARKS_PY.sub("", s).upper()


def ops(s: str) -> str:
    return _SPACE_PY.sub("", s).lower()


def unit(s: str) -> str:
    return _MICRO_PY.sub("u", _SPACE_PY.sub("", s.lower()))


def number(x: float) -> str:
    s = repr(round(float(x), 4))
    return s[:-2] if s.endswith(".0") else s


def pigeon_code(s: str) -> str:
    """The study's `normalize_code`: strip `!+*`, white space, lower-case, drop a trailing .0/.00."""
    return _PIGEON_ZERO_PY.sub("", _PIGEON_MARKS_PY.sub("", s).strip().lower())


# ---- the same over Arrow string/float arrays (nulls stay null)
def _on_distinct(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply a string rule to the distinct values only (a column of 100k lab names has ~50): hash the
    column once, normalise its dictionary, take back."""

    def run(arr: Any) -> Any:
        enc = pc.dictionary_encode(arr)
        return pc.take(fn(enc.dictionary), enc.indices)

    run.__doc__ = fn.__doc__
    return run


@_on_distinct
def a_text(arr: Any) -> Any:
    out = pc.utf8_lower(pc.utf8_normalize(arr, "NFC"))
    return pc.utf8_trim(pc.replace_substring_regex(out, _WS_RE2, " "), TEXT_TRIM)


@_on_distinct
def a_code(arr: Any) -> Any:
    return pc.utf8_upper(pc.replace_substring_regex(arr, _ICD_MARKS_RE2, ""))


@_on_distinct
def a_ops(arr: Any) -> Any:
    return pc.utf8_lower(pc.replace_substring_regex(arr, _SPACE_RE2, ""))


@_on_distinct
def a_unit(arr: Any) -> Any:
    out = pc.replace_substring_regex(pc.utf8_lower(arr), _SPACE_RE2, "")
    return pc.replace_substring_regex(out, _MICRO_RE2, "u")


def a_number(arr: Any) -> Any:
    return pc.cast(pc.round(pc.cast(arr, pa.float64()), 4), pa.string())


@_on_distinct
def a_pigeon_code(arr: Any) -> Any:
    out = pc.utf8_lower(pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"[!+*]", "")))
    return pc.replace_substring_regex(out, r"\.00?$", "")
