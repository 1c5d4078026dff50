"""A document set to score: per document its gold, its prediction, the prediction's status, its source
and (where available) its letter text.

Two ways in: `from_records` (the evaluate stage: prediction records plus gold and letters looked up by
doc id) and `read_pair` (`python -m launch score gold=... pred=...`: two JSONL files). Every extraction
is validated against schema v2 on the way in, so the scorer can trust types:
- a gold extraction that does not validate is an error naming its file:line (or spec);
- a predicted extraction that parses (any JSON object) but does not validate is repaired as the extract
  stage repairs a model's answer (clinsynth.extraction.parse.repair: refused fields or facts dropped,
  code forms mended) and scored with status `repaired` (`truncated` stays `truncated`), what was dropped
  listed in `problems` — the study scores any prediction that parses, so pigeon_compat must not skip
  it; only a prediction with nothing usable (null, not an object, not repairable) is `invalid`
  (strict: empty; pigeon_compat: skipped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from clinsynth.artifacts.predictions import (
    DEV_PREFIX,
    FILE_PREFIX,
    KEYS,
    STATUSES,
    PredictionError,
    check_record,
)
from clinsynth.schema import ClinicalExtraction

#: statuses of a document in scoring: the prediction statuses, plus "missing" (no prediction at all)
DOC_STATUSES: tuple[str, ...] = ("ok", "repaired", "truncated", "invalid", "missing")


class EvaluationInputError(ValueError):
    """Gold or prediction input that cannot be scored; names the file:line (or doc) and the fix."""


@dataclass
class DocSet:
    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    gold: list[dict[str, Any] | None] = field(default_factory=list)  # None: no gold (external letters)
    pred: list[dict[str, Any] | None] = field(default_factory=list)  # None: empty (invalid or missing)
    status: list[str] = field(default_factory=list)
    letters: list[str | None] = field(default_factory=list)
    #: doc -> why its prediction is invalid or missing, or what was repaired (file:line, schema errors)
    problems: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def add(
        self,
        doc: str,
        source: str,
        gold: dict[str, Any] | None,
        pred: dict[str, Any] | None,
        status: str,
        letter: str | None = None,
    ) -> None:
        self.ids.append(doc)
        self.sources.append(source)
        self.gold.append(gold)
        self.pred.append(pred)
        self.status.append(status)
        self.letters.append(letter)

    def subset(self, rows: Iterable[int]) -> DocSet:
        rows = list(rows)
        ids = [self.ids[i] for i in rows]
        return DocSet(
            ids=ids,
            sources=[self.sources[i] for i in rows],
            gold=[self.gold[i] for i in rows],
            pred=[self.pred[i] for i in rows],
            status=[self.status[i] for i in rows],
            letters=[self.letters[i] for i in rows],
            problems={d: self.problems[d] for d in ids if d in self.problems},
        )

    def by_source(self) -> dict[str, DocSet]:
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.sources):
            out.setdefault(s, []).append(i)
        return {s: self.subset(rows) for s, rows in out.items()}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return f"{exc.error_count()} schema error(s), first: {loc}: {err.get('msg')}"


def validated(extraction: Any) -> dict[str, Any]:
    """The extraction as schema v2 holds it (defaults filled, whitespace stripped); raises ValidationError."""
    return ClinicalExtraction.model_validate(extraction).model_dump(mode="json", exclude_none=True)


def gold_extraction(extraction: Any, where: str) -> dict[str, Any]:
    try:
        return validated(extraction)
    except ValidationError as exc:
        raise EvaluationInputError(
            f"{where}: gold does not fit schema v2 ({_first_error(exc)}); fix it"
        ) from exc


def pred_extraction(
    rec: Mapping[str, Any], where: str, problems: dict[str, str]
) -> tuple[dict[str, Any] | None, str]:
    """(validated extraction or None, status) of one prediction record. A status outside the prediction
    statuses (a plain line's "OK", "valid") is an error naming the line: it would be scored as usable."""
    status = rec.get("status", "ok")
    if status not in STATUSES:
        raise EvaluationInputError(
            f"{where}: status {status!r} is not one of {', '.join(STATUSES)}; fix the line "
            "(or leave status out: ok is assumed)"
        )
    extraction = rec.get("extraction")
    doc = str(rec["doc"])
    if status == "invalid" or extraction is None:
        problems[doc] = f"{where}: status invalid" + (f" ({rec.get('error')})" if rec.get("error") else "")
        return None, "invalid"
    try:
        return validated(extraction), status
    except ValidationError as exc:
        first = _first_error(exc)
    from clinsynth.extraction.parse import repair

    bad = f"{where}: status {status} but the extraction does not fit schema v2 ({first})"
    if not isinstance(extraction, dict):
        problems[doc] = f"{bad}; not a JSON object: nothing to repair"
        return None, "invalid"
    model, repairs, error = repair(extraction)
    if model is None:
        problems[doc] = f"{bad}; not repairable: {error}"
        return None, "invalid"
    problems[doc] = f"{bad}; repaired: " + "; ".join(repairs)
    new_status = "truncated" if status == "truncated" else "repaired"
    return model.model_dump(mode="json", exclude_none=True), new_status


def source_of(doc: str, default: str) -> str:
    if doc.startswith(DEV_PREFIX):
        return "dev"
    if doc.startswith(FILE_PREFIX):
        return "external"
    return default


# ---- the score command: two JSONL files
def _lines(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise EvaluationInputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EvaluationInputError(f"{where}: not JSON ({exc}); one JSON object per line") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("doc"), str) or not rec["doc"]:
                raise EvaluationInputError(f'{where}: expected {{"doc": "<id>", "extraction": {{...}}}}')
            if "extraction" not in rec:
                raise EvaluationInputError(
                    f"{where}: no 'extraction' key (null is allowed for an invalid one)"
                )
            yield where, rec


def read_gold_file(path: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """doc -> (file:line, validated gold). Duplicate docs and invalid gold are errors (all listed)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    bad: list[str] = []
    for where, rec in _lines(Path(path)):
        doc = rec["doc"]
        if doc in out:
            bad.append(f"{where}: doc {doc!r} again (first at {out[doc][0]})")
            continue
        try:
            out[doc] = (where, gold_extraction(rec["extraction"], where))
        except EvaluationInputError as exc:
            bad.append(str(exc))
    if bad:
        more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise EvaluationInputError("bad gold lines:\n" + "\n".join(bad[:20]) + more)
    if not out:
        raise EvaluationInputError(f"{path}: no gold lines")
    return out


def read_pair(
    gold_path: Path, pred_path: Path, letters: Mapping[str, str] | None = None
) -> tuple[DocSet, list[str]]:
    """The document set of two files, and the predicted docs that have no gold (listed, not scored).

    PRED lines are prediction records (clinsynth.artifacts.predictions) or {"doc", "extraction"} lines
    (status ok assumed). Gold docs without a prediction are scored as empty predictions (status missing).
    """
    gold = read_gold_file(Path(gold_path))
    problems: dict[str, str] = {}
    preds: dict[str, tuple[str, dict[str, Any] | None, str, str | None]] = {}
    for where, rec in _lines(Path(pred_path)):
        doc = rec["doc"]
        if doc in preds:
            raise EvaluationInputError(f"{where}: doc {doc!r} predicted twice (first at {preds[doc][0]})")
        if all(k in rec for k in KEYS):
            try:
                check_record(rec, where)
            except PredictionError as exc:
                raise EvaluationInputError(str(exc)) from exc
        extraction, status = pred_extraction(rec, where, problems)
        preds[doc] = (where, extraction, status, rec.get("source"))
    plain = Counter(s for _, _, _, s in preds.values() if s)
    default = plain.most_common(1)[0][0] if len(plain) == 1 else "all"
    docs = DocSet(problems=problems)
    for doc, (_where, g) in gold.items():
        letter = (letters or {}).get(doc)
        if doc in preds:
            _, extraction, status, source = preds[doc]
            docs.add(doc, source or source_of(doc, default), g, extraction, status, letter)
        else:
            docs.problems[doc] = f"{pred_path}: no prediction for gold doc {doc!r}"
            docs.add(doc, source_of(doc, default), g, None, "missing", letter)
    unknown = [doc for doc in preds if doc not in gold]
    return docs, unknown
