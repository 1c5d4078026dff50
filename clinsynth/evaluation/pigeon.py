"""`pigeon_compat`: the study's scoring rules, so our numbers can stand beside its published table.

The rules, as facts taken from the study's public code (UMEssen/PIGEON, `src/7_evaluation/evaluate.py`
at commit 164c0451: `normalize_code`, `_codes_match_first4`, `precision_recall_f1`, `_filter_invalid`,
`_f3_f1`, `_category_f1`, `_ops_category_f1`, `evaluate_dataset`) and design §6:

- per document, each field is a *set* of values (duplicates collapse; assertions are ignored);
- codes are normalised: lower-case, `!+*` stripped, a trailing ".0"/".00" dropped; texts as written.
  Here OPS codes are normalised like ICD and ATC codes, while the study compares OPS codes raw: the
  4-character prefix match hides this almost always (case and ".0" sit after the 4th character); it
  shows only where normalising merges two raw values of one document ("5-470.0" and "5-470": one set
  member here, two in the study, so P and R differ) or on a code shorter than 4 characters;
- a predicted value is a true positive if it equals, or shares its first 4 characters with, any gold
  value (`c[:4]`: a shorter value must be equal);
- that count is reused for recall: P = tp/|pred|, R = tp/|gold|, so recall can exceed 1
  (pred {C34.1, C34.9} vs gold {C34.1}: both share "c34." -> tp 2, P 1.0, R 2.0, F1 1.333);
- both sets empty -> P = R = F1 = 1.0; exactly one empty -> 0.0;
- gold values starting with "B99" are removed (placeholders in the study's labels; for ICD before the
  3-/1-character cut);
- ICD also at 3 characters (codes of >= 3 characters) and at 1 character; OPS also by category
  (the part before the first "-");
- a document whose prediction did not parse is skipped (left out of every mean) — here: status invalid,
  or a prediction missing altogether;
- the dataset score is the mean over documents;
- the "introduction" fields are compared by exact match, a document's score being the share of equal
  fields (both absent counts as equal).

Where the study's table pools several fields into one number (tumour, labs, medications), the
document's category score is the mean of its fields' scores (the study's code does not say how its
table pooled them). What we do not copy: the study adds an empty string to a set when a value is
missing (so two documents without ATC codes "match" on ""); here absent values are simply absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _pc

from clinsynth.evaluation.items import PIGEON_CATEGORIES, PIGEON_SETS, SET_INDEX, Items
from clinsynth.evaluation.strict import member, unique_sorted

#: untyped: pyarrow-stubs lack kernels used here (utf8_normalize) and scalar/array overloads
pc: Any = _pc


@dataclass
class PigeonResult:
    #: documents left in (prediction parsed); the others are skipped, as the study did
    scored: np.ndarray  # (n_docs,) bool
    p: np.ndarray  # (n_docs, n_sets)
    r: np.ndarray
    f1: np.ndarray
    intro: np.ndarray  # (n_docs,) share of equal introduction fields

    def category(self, name: str, metric: str = "f1") -> np.ndarray:
        """A category's per-document score: the mean of its sets (introduction: the field share)."""
        if name == "introduction":
            return self.intro
        arr = getattr(self, metric)
        cols = [SET_INDEX[s] for s in PIGEON_CATEGORIES[name]]
        return np.asarray(arr[:, cols].mean(axis=1))


PIGEON_REPORT: tuple[str, ...] = (*PIGEON_CATEGORIES, "introduction")


def match(
    gold: Items, pred: Items, scored: np.ndarray, intro_gold: list[np.ndarray], intro_pred: list[np.ndarray]
) -> PigeonResult:
    n = len(scored)
    S = len(PIGEON_SETS)
    enc = pc.dictionary_encode(pa.concat_arrays([gold.key, pred.key]))
    vid = enc.indices.to_numpy().astype(np.int64)
    values = enc.dictionary
    V = len(values) + 1
    # first 4 characters of each distinct value (computed once per value, not per item)
    pfx = pc.dictionary_encode(pc.utf8_slice_codeunits(values, 0, 4))
    pid_of = pfx.indices.to_numpy().astype(np.int64)
    PV = len(pfx.dictionary) + 1
    b99 = pc.starts_with(pc.utf8_upper(values), "B99").to_numpy(zero_copy_only=False)

    vg, vp = vid[: len(gold)], vid[len(gold) :]
    keep_g = ~b99[vg]
    ug = unique_sorted(((gold.doc * S + gold.cat) * V + vg)[keep_g])
    up = unique_sorted((pred.doc * S + pred.cat) * V + vp)
    cell_g, cell_p = ug // V, up // V
    size = n * S
    n_g = np.bincount(cell_g, minlength=size).astype(np.float64)
    n_p = np.bincount(cell_p, minlength=size).astype(np.float64)
    gold_prefixes = unique_sorted(cell_g * PV + pid_of[ug % V])
    pred_prefixes = np.sort(cell_p * PV + pid_of[up % V])  # sorted needles: a cache-friendly search
    hit = member(pred_prefixes, gold_prefixes)
    tp = np.bincount(pred_prefixes // PV, weights=hit, minlength=size).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n_p > 0, tp / n_p, 0.0)
        r = np.where(n_g > 0, tp / n_g, 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    empty_both = (n_g == 0) & (n_p == 0)
    for arr in (p, r, f1):
        arr[empty_both] = 1.0
    intro = (
        np.mean([g == q for g, q in zip(intro_gold, intro_pred, strict=True)], axis=0) if n else np.zeros(0)
    )
    shape = (n, S)
    return PigeonResult(
        scored, p.reshape(shape), r.reshape(shape), f1.reshape(shape), np.asarray(intro, float)
    )
