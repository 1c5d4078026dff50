"""Extractors over documents: prompts -> one backend call per chunk -> parse -> (ground) -> records.

`LLMRunner` drives the finetuned and oneshot extractors through any generation backend
(clinsynth.llm.backends: vllm, openai, hf): one request per letter with its own seed, the bounded
decoding schema where guided decoding is on (hf has none: its answers are parsed with repair), and
the LoRA adapter for the fine-tuned model. `RulesRunner` wraps the dictionary/pattern baseline.
Both return one outcome per document: the prediction record (clinsynth.artifacts.predictions), the
record before grounding, and the grounding corrections.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from clinsynth.artifacts.predictions import prediction
from clinsynth.extraction.config import GroundMethod
from clinsynth.extraction.documents import Doc
from clinsynth.extraction.grounding import ground
from clinsynth.extraction.parse import Parsed, parse_output
from clinsynth.llm.backends import Adapter, GenRequest, GenResult
from clinsynth.schema import ClinicalExtraction

log = logging.getLogger("clinsynth.extract")

Messages = Callable[[str], list[dict[str, str]]]


@dataclass
class RunStats:
    """What one task measured: documents, statuses, tokens and the seconds spent generating."""

    documents: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_s: float = 0.0
    corrections: int = 0

    def add(self, rec: dict[str, Any], corrections: Sequence[dict[str, Any]] = ()) -> None:
        """Count one record; of its grounding decisions only those that changed a code."""
        self.documents += 1
        self.statuses[rec["status"]] = self.statuses.get(rec["status"], 0) + 1
        tokens = rec.get("tokens") or {}
        self.prompt_tokens += int(tokens.get("prompt") or 0)
        self.completion_tokens += int(tokens.get("completion") or 0)
        self.corrections += sum(1 for c in corrections if c.get("after") is not None)

    def summary(self) -> dict[str, Any]:
        s = self.generate_s
        return {
            "documents": self.documents,
            "statuses": dict(sorted(self.statuses.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generate_s": round(s, 3),
            # inside the backend calls only; the stage adds the rate over all its work
            "backend_tokens_per_s": round(self.completion_tokens / s, 2) if s > 0 else None,
            "grounding_corrections": self.corrections,  # codes grounding changed (kept ones not counted)
        }


def doc_seed(seed: int, doc: str) -> int:
    """A letter's own seed: the same for the letter in any shard, chunk or batch."""
    return (zlib.crc32(doc.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


def finish_outcome(
    doc: Doc,
    extractor: str,
    parsed: Parsed,
    raw: str,
    *,
    tokens: dict[str, int] | None,
    seconds: float,
    catalog: Any = None,
    threshold: float | None = None,
    method: GroundMethod = "rapidfuzz",
) -> dict[str, Any]:
    """The chunk line of one document: prediction (grounded when a catalogue is given), the record
    as extracted, and the corrections."""
    before = prediction(
        doc.doc, doc.source, extractor, parsed.status, parsed.extraction_dict(), raw,
        error=parsed.message, tokens=tokens, seconds=seconds,
    )  # fmt: skip
    if catalog is None or parsed.extraction is None:
        return {
            "prediction": before,
            "ungrounded": before if catalog is not None else None,
            "corrections": [],
        }
    grounded, corrections = ground(parsed.extraction, catalog, threshold=threshold, method=method)
    after = {**before, "extraction": grounded.model_dump(mode="json")}
    return {"prediction": after, "ungrounded": before, "corrections": [c.as_dict() for c in corrections]}


def unreadable(doc: Doc, extractor: str, catalog: Any) -> dict[str, Any]:
    """A letter that could not be read: an invalid prediction naming the file and what to do."""
    rec = prediction(doc.doc, doc.source, extractor, "invalid", None, "", error=doc.error)
    return {"prediction": rec, "ungrounded": rec if catalog is not None else None, "corrections": []}


class LLMRunner:
    """One generation backend, one prompt builder, one parse; a chunk of letters per call."""

    def __init__(
        self,
        backend: Any,
        extractor: str,
        messages: Messages,
        *,
        max_tokens: int,
        seed: int,
        json_schema: dict[str, Any] | None,
        adapter: Adapter | None = None,
        catalog: Any = None,
        threshold: float | None = None,
        method: GroundMethod = "rapidfuzz",
        logger: logging.Logger = log,
    ) -> None:
        self.backend = backend
        self.extractor = extractor
        self.messages = messages
        self.max_tokens = max_tokens
        self.seed = seed
        # the hf backend has no guided decoding: its answers are parsed with repair
        self.json_schema = json_schema if getattr(backend, "name", "") != "hf" else None
        self.adapter = adapter
        self.catalog = catalog
        self.threshold = threshold
        self.method: GroundMethod = method
        self.logger = logger
        self.stats = RunStats()

    def requests(self, docs: Sequence[Doc]) -> list[GenRequest]:
        return [
            GenRequest(
                key=d.doc,
                messages=self.messages(d.text),
                seed=doc_seed(self.seed, d.doc),
                max_tokens=self.max_tokens,
                json_schema=self.json_schema,
                lora=self.adapter,
            )
            for d in docs
        ]

    def run(self, docs: Sequence[Doc]) -> list[dict[str, Any]]:
        readable = [d for d in docs if d.error is None]
        t0 = time.perf_counter()
        results: dict[str, GenResult] = {}
        if readable:
            for res in self.backend.generate(self.requests(readable)):
                results[res.key] = res
        self.stats.generate_s += time.perf_counter() - t0
        out = []
        for d in docs:
            if d.error is not None:
                outcome = unreadable(d, self.extractor, self.catalog)
            else:
                outcome = self._outcome(d, results[d.doc])
            self.stats.add(outcome["prediction"], outcome["corrections"])
            out.append(outcome)
        return out

    def _outcome(self, d: Doc, res: GenResult) -> dict[str, Any]:
        tokens = {"prompt": res.tokens_in, "completion": res.tokens_out}
        if res.finish_reason == "error":
            self.logger.warning("%s: no answer (%s)", d.doc, res.error)
            parsed = Parsed("invalid", None, error=f"backend error: {res.error}")
        else:
            parsed = parse_output(res.text, finish_reason=res.finish_reason)
        return finish_outcome(
            d, self.extractor, parsed, res.text, tokens=tokens, seconds=res.latency_s,
            catalog=self.catalog, threshold=self.threshold, method=self.method,
        )  # fmt: skip


class RulesRunner:
    """The dictionary/pattern baseline (clinsynth.extraction.rules), imported when first used."""

    def __init__(
        self,
        *,
        catalog: Any = None,
        threshold: float | None = None,
        method: GroundMethod = "rapidfuzz",
        logger: logging.Logger = log,
    ) -> None:
        from clinsynth.terminology import load_catalog

        try:
            from clinsynth.extraction.rules import RulesExtractor
        except ImportError as exc:
            raise ImportError(
                "extractor rules needs clinsynth.extraction.rules.RulesExtractor, which does not "
                f"import ({exc})"
            ) from exc
        self._rules = RulesExtractor(catalog=load_catalog())
        self.catalog = catalog
        self.threshold = threshold
        self.method: GroundMethod = method
        self.logger = logger
        self.stats = RunStats()

    def run(self, docs: Sequence[Doc]) -> list[dict[str, Any]]:
        out = []
        for d in docs:
            if d.error is not None:
                outcome = unreadable(d, "rules", self.catalog)
            else:
                t0 = time.perf_counter()
                try:
                    ex = self._rules.extract(d.text)
                    if not isinstance(ex, ClinicalExtraction):
                        ex = ClinicalExtraction.model_validate(ex)
                    # facts the rules' own validation dropped are named, as a parse repair would be
                    problems = list(getattr(self._rules, "problems", None) or [])
                    parsed = Parsed("repaired" if problems else "ok", ex, problems)
                    raw = orjson.dumps(ex.model_dump(mode="json")).decode()
                except Exception as exc:  # one letter that trips a rule does not stop the run
                    self.logger.warning("%s: rules failed: %s: %s", d.doc, type(exc).__name__, exc)
                    parsed, raw = (
                        Parsed("invalid", None, error=f"rules failed: {type(exc).__name__}: {exc}"),
                        "",
                    )
                # the time goes to stats/ (a timing record) only: rules predictions are deterministic
                # and a rerun's compare byte for byte
                self.stats.generate_s += time.perf_counter() - t0
                outcome = finish_outcome(
                    d, "rules", parsed, raw, tokens=None, seconds=0.0,
                    catalog=self.catalog, threshold=self.threshold, method=self.method,
                )  # fmt: skip
            self.stats.add(outcome["prediction"], outcome["corrections"])
            out.append(outcome)
        return out


__all__ = ["LLMRunner", "RulesRunner", "RunStats", "doc_seed", "finish_outcome"]
