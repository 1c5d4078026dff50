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
class Confusions:
    """Pairs of items with the same key and different assertions: parallel arrays."""

    doc: np.ndarray
    cat: np.ndarray
    key: np.ndarray
    gold: np.ndarray  # assertion index
    pred: np.ndarray
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
    #: assertion mismatches among items whose keys match
    confusions: Confusions
    #: (doc, cat, gold key index, predicted key index, score) of fuzzy matches that were not exact
    fuzzy_pairs: list[tuple[int, int, int, int, float]] = field(default_factory=list)
    keys: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))


def unique_sorted(x: np.ndarray) -> np.ndarray:
    """np.unique(x) by sorting: numpy 2.3's default (hash-based) unique is ~50x slower on int64 ids."""
    s = np.sort(x)
    if len(s) == 0:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def member(x: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """np.isin(x, sorted_unique) by binary search."""
    if len(sorted_unique) == 0:
        return np.zeros(len(x), dtype=bool)
    i = np.searchsorted(sorted_unique, x)
    i[i == len(sorted_unique)] = 0
    return np.asarray(sorted_unique[i] == x)


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

    confusion, confusions = _confusion(ug, cg, mg, up, cp, mp, K)  # on exact keys: before the fuzzy pass
    fuzzy_pairs = _fuzzy(ug, cg, mg, up, cp, mp, K, keys.dictionary, text_threshold)

    size = n_docs * C
    tp = np.bincount(ug // (K * A), weights=mg, minlength=size).astype(np.int64).reshape(n_docs, C)
    n_g = np.bincount(cell_g, minlength=size).reshape(n_docs, C)
    n_p = np.bincount(cell_p, minlength=size).reshape(n_docs, C)
    fp, fn = n_p - tp, n_g - tp
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
    og, op = np.argsort(grp_g, kind="stable"), np.argsort(grp_p, kind="stable")
    sg, grp_g, sp, grp_p = sg[og], grp_g[og], sp[op], grp_p[op]
    common = np.intersect1d(unique_sorted(grp_g), unique_sorted(grp_p), assume_unique=True)
    if len(common) == 0:
        return pairs
    # every (gold, predicted) pair within a group, built without a Python loop
    start_g = np.searchsorted(grp_g, common)
    n_g = np.searchsorted(grp_g, common, side="right") - start_g
    start_p = np.searchsorted(grp_p, common)
    n_p = np.searchsorted(grp_p, common, side="right") - start_p
    per = n_g * n_p
    group = np.repeat(np.arange(len(common)), per)
    within = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    rg = sg[start_g[group] + within // n_p[group]]
    rp = sp[start_p[group] + within % n_p[group]]
    tg = dictionary.take(pa.array((ug[rg] // A) % K)).to_pylist()
    tpred = dictionary.take(pa.array((up[rp] // A) % K)).to_pylist()
    scores = process.cpdist(tg, tpred, scorer=fuzz.token_sort_ratio, score_cutoff=threshold)
    hits = np.nonzero(scores >= threshold)[0].tolist()
    # greedy per group, best score first, ties broken by the texts (order-independent)
    cand = sorted((int(group[i]), -float(scores[i]), tg[i], tpred[i], int(rg[i]), int(rp[i])) for i in hits)
    for _grp, neg, _t1, _t2, r_g, r_p in cand:
        while mg[r_g] < cg[r_g] and mp[r_p] < cp[r_p]:  # duplicates of one text pair up one by one
            mg[r_g] += 1
            mp[r_p] += 1
            cell = int(ug[r_g] // (K * A))
            pairs.append((cell // C, cell % C, int((ug[r_g] // A) % K), int((up[r_p] // A) % K), -neg))
    return pairs


def _rows(u: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique (cell, key, assertion) ids -> distinct (cell, key) ids, a (rows, A) count matrix."""
    h = u // A
    start = np.ones(len(h), dtype=bool)
    np.not_equal(h[1:], h[:-1], out=start[1:])
    row = np.cumsum(start) - 1
    m = np.zeros((int(start.sum()), A), dtype=np.int64)
    m[row, u % A] = counts
    return h[start], m


def _confusion(
    ug: np.ndarray, cg: np.ndarray, mg: np.ndarray, up: np.ndarray, cp: np.ndarray, mp: np.ndarray, K: int
) -> tuple[np.ndarray, Confusions]:
    """Pair items on (cell, key) ignoring the assertion; count gold x predicted assertions.

    Same-assertion pairs are the exact pass's matches (the diagonal); only the items it left over can
    form off-diagonal pairs, so only those are grouped."""
    C = len(CATEGORIES)
    confusion = np.zeros((C, A, A), dtype=np.int64)
    diag = np.bincount(((ug // A) // K % C) * A + ug % A, weights=mg, minlength=C * A).astype(np.int64)
    confusion[:, np.arange(A), np.arange(A)] = diag.reshape(C, A)
    lg_ = cg > mg
    lp_ = cp > mp
    hg, LG = _rows(ug[lg_], (cg - mg)[lg_])
    hp, LP = _rows(up[lp_], (cp - mp)[lp_])
    common, ig, ip = np.intersect1d(hg, hp, assume_unique=True, return_indices=True)
    LG, LP = LG[ig], LP[ip]
    cat = (common // K) % C
    # the usual case: one left-over assertion on each side (the two sides' assertions differ)
    one = ((LG > 0).sum(axis=1) == 1) & ((LP > 0).sum(axis=1) == 1)
    simple = np.nonzero(one)[0]
    gi, pj = LG[simple].argmax(axis=1), LP[simple].argmax(axis=1)
    k = np.minimum(LG[simple, gi], LP[simple, pj])
    rows, ga, pa_, cnt = [simple], [gi], [pj], [k]
    for r in np.nonzero(~one)[0].tolist():
        lg, lp = LG[r].tolist(), LP[r].tolist()
        i = j = 0
        while i < A and j < A:  # pair the left-overs in assertion order
            if lg[i] == 0:
                i += 1
            elif lp[j] == 0:
                j += 1
            else:
                n = min(lg[i], lp[j])
                rows.append(np.array([r]))
                ga.append(np.array([i]))
                pa_.append(np.array([j]))
                cnt.append(np.array([n]))
                lg[i] -= n
                lp[j] -= n
    r_all = np.concatenate(rows).astype(np.int64)
    g_all, p_all, n_all = (np.concatenate(x).astype(np.int64) for x in (ga, pa_, cnt))
    np.add.at(confusion, (cat[r_all], g_all, p_all), n_all)
    h = common[r_all]
    return confusion, Confusions(h // K // C, cat[r_all], h % K, g_all, p_all, n_all)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (NaN where undefined: no predictions / no gold / neither)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = tp / (tp + fp)
        r = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return p, r, f1
