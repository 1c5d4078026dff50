"""`strict` (the headline, design §6): normalised exact match, one-to-one, per document and category.

Rules:
- an item is (document, category, normalised key, assertion) (`clinsynth.evaluation.items`);
- one-to-one: within a document and category, k gold and m predicted copies of the same key and
  assertion give min(k, m) true positives (greedy on exact keys: order does not matter);
- text categories (`procedure_text`): after the exact pass, left-over gold and predicted items of the
  same document, category and assertion are paired greedily by rapidfuzz `token_sort_ratio` on the
  normalised texts, best score first (ties: by the texts), while the score is >= the threshold;
- an invalid prediction is an empty prediction (its gold items are all false negatives);
- assertion confusion: the same matching *without* the assertion; among pairs whose keys match,
  gold assertion x predicted assertion is counted (exact keys; same assertions are paired first, the
  rest in the order present, negated, historical, suspected). A negated gold fact extracted as present
  is one count in row negated, column present (and one FN + one FP in the headline);
- pooled categories (tumour) are the sums of their parts.

Everything is vectorised over documents with numpy (unique/intersect on int64 item ids); only the
fuzzy pairs and the rare assertion mismatches run in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as _pc
from rapidfuzz import fuzz, process

from clinsynth.evaluation.items import ASSERTIONS, CAT_INDEX, CATEGORIES, POOLED, Items

#: untyped: pyarrow-stubs lack kernels used here (utf8_normalize) and scalar/array overloads
pc: Any = _pc

A = len(ASSERTIONS)


@dataclass
class Mismatch:
    """Items left unmatched (missed gold or spurious predictions): parallel arrays."""

    doc: np.ndarray
    cat: np.ndarray
    key: np.ndarray  # key index into StrictResult.keys
    assertion: np.ndarray
    count: np.ndarray


@dataclass
class StrictResult:
    n_docs: int
    tp: np.ndarray  # (n_docs, n_categories) int64
    fp: np.ndarray
    fn: np.ndarray
    #: (n_categories, 4, 4): gold assertion x predicted assertion, key matched ignoring assertion
    confusion: np.ndarray
    missed: Mismatch
    spurious: Mismatch
    #: (doc, cat, key index, gold assertion, predicted assertion, count) of assertion mismatches
    confusions: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    #: (doc, cat, gold key index, predicted key index, score) of fuzzy matches that were not exact
    fuzzy_pairs: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    keys: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))


def match(gold: Items, pred: Items, n_docs: int, *, text_threshold: float) -> StrictResult:
    C = len(CATEGORIES)
    keys = pc.dictionary_encode(pa.concat_arrays([gold.key, pred.key]))
    idx = keys.indices.to_numpy().astype(np.int64)
    K = len(keys.dictionary) + 1
    kg, kp = idx[: len(gold)], idx[len(gold) :]
    cell_g = gold.doc * C + gold.cat
    cell_p = pred.doc * C + pred.cat

    # exact pass: one-to-one on (cell, key, assertion)
    ug, cg = np.unique((cell_g * K + kg) * A + gold.assertion, return_counts=True)
    up, cp = np.unique((cell_p * K + kp) * A + pred.assertion, return_counts=True)
    _, ig, ip = np.intersect1d(ug, up, assume_unique=True, return_indices=True)
    mg = np.zeros_like(cg)
    mp = np.zeros_like(cp)
    both = np.minimum(cg[ig], cp[ip])
    mg[ig] = both
    mp[ip] = both

    fuzzy_pairs = _fuzzy(ug, cg, mg, up, cp, mp, K, keys.dictionary, text_threshold)

    size = n_docs * C
    tp = np.bincount(ug // (K * A), weights=mg, minlength=size).astype(np.int64).reshape(n_docs, C)
    n_g = np.bincount(cell_g, minlength=size).reshape(n_docs, C)
    n_p = np.bincount(cell_p, minlength=size).reshape(n_docs, C)
    fp, fn = n_p - tp, n_g - tp
    confusion, confusions = _confusion(cell_g * K + kg, gold.assertion, cell_p * K + kp, pred.assertion, K)
    for name, parts in POOLED.items():
        cols = [CAT_INDEX[p] for p in parts]
        j = CAT_INDEX[name]
        for arr in (tp, fp, fn):
            arr[:, j] = arr[:, cols].sum(axis=1)
        confusion[j] = confusion[cols].sum(axis=0)
    return StrictResult(
        n_docs=n_docs,
        tp=tp,
        fp=fp,
        fn=fn,
        confusion=confusion,
        missed=_left(ug, cg - mg, K),
        spurious=_left(up, cp - mp, K),
        confusions=confusions,
        fuzzy_pairs=fuzzy_pairs,
        keys=keys.dictionary,
    )


def _left(uid: np.ndarray, left: np.ndarray, K: int) -> Mismatch:
    keep = left > 0
    u = uid[keep]
    cell = u // (K * A)
    C = len(CATEGORIES)
    return Mismatch(cell // C, cell % C, (u // A) % K, u % A, left[keep])


def _fuzzy(
    ug: np.ndarray,
    cg: np.ndarray,
    mg: np.ndarray,
    up: np.ndarray,
    cp: np.ndarray,
    mp: np.ndarray,
    K: int,
    dictionary: pa.Array,
    threshold: float,
) -> list[tuple[int, int, int, int, float]]:
    """Greedy best-score pairing of left-over items of the fuzzy categories (updates mg, mp in place)."""
    C = len(CATEGORIES)
    fuzzy = np.array([c.fuzzy for c in CATEGORIES])
    pairs: list[tuple[int, int, int, int, float]] = []

    def leftovers(u: np.ndarray, c: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cell = u // (K * A)
        sel = np.nonzero(fuzzy[cell % C] & (c > m))[0]
        group = cell[sel] * A + u[sel] % A  # (document, category, assertion)
        return sel, group

    sg, grp_g = leftovers(ug, cg, mg)
    sp, grp_p = leftovers(up, cp, mp)
    common = np.intersect1d(grp_g, grp_p)
    if len(common) == 0:
        return pairs
    texts = dictionary.to_pylist()
    gi = {g: sg[grp_g == g] for g in common} if len(common) < 64 else _group(sg, grp_g, common)
    pi = {g: sp[grp_p == g] for g in common} if len(common) < 64 else _group(sp, grp_p, common)
    for g in common.tolist():
        rows_g, rows_p = gi[g], pi[g]
        tg = [texts[(ug[r] // A) % K] for r in rows_g]
        tpred = [texts[(up[r] // A) % K] for r in rows_p]
        scores = process.cdist(tg, tpred, scorer=fuzz.token_sort_ratio, score_cutoff=threshold)
        cand = [
            (-float(scores[i, j]), tg[i], tpred[j], i, j)
            for i, j in zip(*np.nonzero(scores >= threshold), strict=True)
        ]
        cand.sort()
        for neg, _t1, _t2, i, j in cand:
            r_g, r_p = rows_g[i], rows_p[j]
            while mg[r_g] < cg[r_g] and mp[r_p] < cp[r_p]:  # duplicates of one text pair up one by one
                mg[r_g] += 1
                mp[r_p] += 1
                cell = int(ug[r_g] // (K * A))
                pairs.append((cell // C, cell % C, int((ug[r_g] // A) % K), int((up[r_p] // A) % K), -neg))
    return pairs


def _group(rows: np.ndarray, groups: np.ndarray, wanted: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    starts = np.searchsorted(g_sorted, wanted, side="left")
    ends = np.searchsorted(g_sorted, wanted, side="right")
    return {int(w): rows[order[s:e]] for w, s, e in zip(wanted, starts, ends, strict=True)}


def _confusion(
    hg: np.ndarray, ag: np.ndarray, hp: np.ndarray, ap: np.ndarray, K: int
) -> tuple[np.ndarray, list[tuple[int, int, int, int, int, int]]]:
    """Pair items on (cell, key) ignoring the assertion; count gold x predicted assertions."""
    C = len(CATEGORIES)
    confusion = np.zeros((C, A, A), dtype=np.int64)
    common = np.intersect1d(hg, hp)
    if len(common) == 0:
        return confusion, []
    sel_g = np.isin(hg, common)
    sel_p = np.isin(hp, common)
    ig = np.searchsorted(common, hg[sel_g])
    ip = np.searchsorted(common, hp[sel_p])
    n = len(common)
    G = np.bincount(ig * A + ag[sel_g], minlength=n * A).reshape(n, A)
    P = np.bincount(ip * A + ap[sel_p], minlength=n * A).reshape(n, A)
    D = np.minimum(G, P)
    cat = (common // K) % C
    for a in range(A):
        confusion[:, a, a] = np.bincount(cat, weights=D[:, a], minlength=C).astype(np.int64)
    LG, LP = G - D, P - D
    rows = np.nonzero((LG.sum(axis=1) > 0) & (LP.sum(axis=1) > 0))[0]
    details: list[tuple[int, int, int, int, int, int]] = []
    for r in rows.tolist():
        lg, lp = LG[r].tolist(), LP[r].tolist()
        i = j = 0
        while i < A and j < A:  # pair the left-overs in assertion order
            if lg[i] == 0:
                i += 1
                continue
            if lp[j] == 0:
                j += 1
                continue
            k = min(lg[i], lp[j])
            c = int(cat[r])
            confusion[c, i, j] += k
            details.append((int(common[r] // K // C), c, int(common[r] % K), i, j, k))
            lg[i] -= k
            lp[j] -= k
    return confusion, details


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (NaN where undefined: no predictions / no gold / neither)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = tp / (tp + fp)
        r = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return p, r, f1
