"""Letters from recipes, in batches: template, hybrid (template + LLM narrative) or llm (whole letter).

One batch = one backend call (vLLM schedules the whole batch at once), so the engine stays busy;
every letter records what made it: backend, model, sampling, seed, tokens, latency, finish reason.

Letter record fields added for issue 10 (additive): `untagged` (strings written on purpose without
gold: the recipe's own plus the renderer's follow-up dates and transfer destination/reason) and
`noise` ([fact string as in say, as written] pairs the OCR noise changed); the verifier accepts
exactly these. Template noise: `LetterWriter(noise=...)` overrides the recipe's `style.noise`.
Hybrid letters get no template noise unless `noise` is given: their narrative is the model's own
text, and their `sections` stay exactly as the letter holds them (template letters keep the
recipe's noise; their `sections` are the bodies before it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from clinsynth.letters import prompts as _prompts
from clinsynth.letters.prompts import letter_messages, section_messages
from clinsynth.letters.render import TEMPLATES, environment, render, templates_version
from clinsynth.sampling.recipe import Recipe

MODES = ("template", "hybrid", "llm")


class _Backend(Protocol):
    name: str
    model: str
    sampling: dict[str, Any]

    def generate(self, requests: Sequence[Any]) -> list[Any]: ...


def letter_seed(seed: int, spec_id: str) -> int:
    """Per-letter seed (31 bits: every engine accepts it): same config + spec -> same sampling."""
    return int.from_bytes(hashlib.blake2b(f"{seed}|{spec_id}".encode(), digest_size=4).digest(), "big") >> 1


def compile_templates(prompts: Mapping[str, str] | None = None) -> int:
    """Parse every letter template and the given prompt templates once (jinja and the prompt module
    cache them): ~0.3 s on CPU that otherwise lands in the first chunk, i.e. with the engine idle.
    The generate stage runs this while its engine starts. Returns how many templates it compiled."""
    names = sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.j2"))
    env = environment()
    for name in names:
        env.get_template(name)
    sources = [s for s in (prompts or {}).values() if isinstance(s, str)]
    for source in sources:
        _prompts._template(source)
    return len(names) + len(sources)


class LetterWriter:
    def __init__(
        self,
        mode: str,
        *,
        seed: int = 0,
        backend: _Backend | None = None,
        prompts: Mapping[str, str] | None = None,
        narrative_sections: Sequence[str] = ("anamnese", "epikrise"),
        max_tokens: int = 512,
        noise: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"letters.mode must be one of {MODES}, got {mode!r}")
        if mode != "template" and backend is None:
            raise ValueError(
                f"letters={mode} needs an LLM backend: backend=vllm|openai|hf (backend=template writes "
                "template letters only)"
            )
        if mode != "template" and not prompts:
            raise ValueError(f"letters={mode} needs prompts (config group prompts/, e.g. prompts=de)")
        self.mode, self.seed, self.backend = mode, seed, backend
        self.prompts = dict(prompts or {})
        self.narrative = tuple(narrative_sections)
        self.max_tokens = max_tokens
        #: template noise level (None: the recipe's `style.noise`, else render.DEFAULT_NOISE)
        self.noise = noise
        self.templates = templates_version()

    def write(self, recipes: Sequence[Recipe]) -> list[dict[str, Any]]:
        if self.mode == "template":
            return [self._template(r) for r in recipes]
        from clinsynth.llm.backends import GenRequest

        requests: list[GenRequest] = []
        for r in recipes:
            seed = letter_seed(self.seed, r.spec_id)
            if self.mode == "llm":
                requests.append(
                    GenRequest(f"{r.spec_id}/letter", letter_messages(r, self.prompts), seed, self.max_tokens)
                )
                continue
            for k, s in enumerate(x for x in r.sections if x["key"] in self.narrative):
                requests.append(
                    GenRequest(
                        f"{r.spec_id}/{s['key']}",
                        section_messages(r, s, self.prompts),
                        (seed + k) % 2**31,
                        self.max_tokens,
                    )
                )
        assert self.backend is not None
        results = {res.key: res for res in self.backend.generate(requests)}
        out = []
        for r in recipes:
            keys = [q.key for q in requests if q.key.startswith(f"{r.spec_id}/")]
            parts = [results[k] for k in keys]
            extra: dict[str, Any] = {"untagged": list(r.untagged), "noise": []}
            if self.mode == "llm":
                text = parts[0].text.strip() + "\n" if parts and parts[0].text else ""
                sections: dict[str, str] = {}
            else:
                bodies = {k.rsplit("/", 1)[1]: results[k].text.strip() for k in keys}
                letter = render(r, bodies, noise=0.0 if self.noise is None else self.noise)
                text, sections = letter.text, letter.sections
                extra = {"untagged": letter.untagged, "noise": [list(p) for p in letter.noise]}
            out.append({**self._record(r, text, sections, parts, letter_seed(self.seed, r.spec_id)), **extra})
        return out

    def _template(self, r: Recipe) -> dict[str, Any]:
        out = render(r, noise=self.noise)
        rec = self._record(r, out.text, out.sections, [], letter_seed(self.seed, r.spec_id))
        # additive fields: strings written without gold, fact strings the noise changed
        rec["untagged"] = out.untagged
        rec["noise"] = [list(p) for p in out.noise]
        return rec

    def _record(
        self, r: Recipe, text: str, sections: dict[str, str], parts: Sequence[Any], seed: int
    ) -> dict[str, Any]:
        llm = self.mode != "template"
        finish = {p.key.rsplit("/", 1)[1]: p.finish_reason for p in parts}
        return {
            "spec_id": r.spec_id,
            "patient_id": r.patient_id,
            "encounter_id": r.encounter_id,
            "split": r.split,
            "mode": self.mode,
            "text": text,
            "sections": sections,
            "llm_sections": sorted(finish) if self.mode == "hybrid" else [],
            "backend": self.backend.name if llm and self.backend else "template",
            "model": self.backend.model if llm and self.backend else f"jinja2-templates@{self.templates}",
            "templates": self.templates,
            "sampling": dict(self.backend.sampling, max_tokens=self.max_tokens)
            if llm and self.backend
            else {},
            "seed": seed,
            # the template backend has no tokenizer: token counts are unknown, not zero
            "tokens_in": sum(p.tokens_in for p in parts) if parts else None,
            "tokens_out": sum(p.tokens_out for p in parts) if parts else None,
            # no engine call, no latency (the task's render time is in its stats): template letters
            # stay byte-identical on a rerun
            "latency_s": round(sum(p.latency_s for p in parts), 4) if parts else None,
            "finish_reason": _worst(finish.values()) if parts else "stop",
            "finish_reasons": finish,
            "errors": {p.key.rsplit("/", 1)[1]: p.error for p in parts if p.error},
        }


def _worst(reasons: Any) -> str:
    reasons = list(reasons)
    for r in ("error", "length"):
        if r in reasons:
            return r
    return reasons[0] if reasons else "stop"
