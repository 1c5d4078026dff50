"""Prompts for LLM-written sections (hybrid) and whole letters (llm), from `conf/generate/prompts/`.

The recipe decides what a letter says; the prompt hands the model each fact of its section as the
strings it must write verbatim (the recipe's `say`: names, values with units, doses, dates, codes)
plus the assertion it must carry, and asks for everything else in the model's own, varied words.
So the verifier can hold an LLM section to the same recipe as a template section, while the
prose around the facts does not become one more template. A section's prompt holds only its own
facts: what another section states is never asked for twice.

The prompt templates (Jinja2, sandboxed) receive structured facts (`PromptFact.as_context`), not
finished German lines, so a prompt set in another language needs no code.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from clinsynth.sampling.recipe import Recipe, RecipeFact

#: say keys that label a fact rather than being written (recipe v2): never asked for verbatim
LABEL_KEYS = frozenset({"role", "staging"})
#: head keys that describe the patient rather than being written
HEADER_LABELS = frozenset({"sex"})
#: the order in which a fact's verbatim strings are listed (its name first); other keys follow
ORDER = (
    "name", "phrase", "entity", "histology", "morphology", "grading", "tnm", "stage", "laterality",
    "markers", "ecog", "status", "code", "mark", "dose", "value", "total", "fraction", "fractions",
    "schedule", "frequency", "as_needed", "route", "regimen", "cycle", "day", "flag", "pack_years",
    "intent", "start", "end", "date",
)  # fmt: skip
#: a number and its unit are one verbatim string: the verifier binds the value to its own unit
UNIT_OF = {"dose": "unit", "value": "unit"}


@dataclass(frozen=True)
class PromptFact:
    """One fact as a prompt lists it: what it is, its verbatim strings and its assertion."""

    kind: str
    assertion: str
    #: (say key, the exact string) in listing order; the first is the fact's name
    parts: tuple[tuple[str, str], ...]
    #: labels that are not written verbatim: the diagnosis role, the staging kind
    labels: tuple[tuple[str, str], ...]

    @property
    def verbatim(self) -> list[str]:
        return [text for _, text in self.parts]

    def as_context(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "assertion": self.assertion,
            "parts": [{"key": k, "text": t} for k, t in self.parts],
            "verbatim": self.verbatim,
            "labels": dict(self.labels),
        }


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    text = str(value).strip() if value is not None and not isinstance(value, bool) else ""
    return [text] if text else []


def prompt_fact(f: RecipeFact) -> PromptFact:
    """The fact's verbatim strings from `say` (v2 keys; unknown keys are verbatim too, by contract)."""
    say = dict(f.say)
    if not (say.get("name") or say.get("phrase") or say.get("entity")):  # a fact always has a name
        say["name"] = f.gold.get("text") or f.gold.get("name") or f.gold.get("entity") or f.gold.get("target")
    keys = [k for k in ORDER if k in say] + sorted(k for k in say if k not in ORDER)
    parts: list[tuple[str, str]] = []
    units = {unit for key, unit in UNIT_OF.items() if _strings(say.get(key))}  # written with their number
    for key in keys:
        if key in LABEL_KEYS or key in units:
            continue
        if key in UNIT_OF:  # "85" + "mg/m²" -> "85 mg/m²" (a unit may be "": the block omits it)
            parts += [(key, f"{v} {say.get(UNIT_OF[key]) or ''}".strip()) for v in _strings(say[key])]
            continue
        parts += [(key, v) for v in _strings(say[key])]
    labels = tuple((k, str(say[k])) for k in sorted(LABEL_KEYS) if say.get(k))
    return PromptFact(f.kind, f.assertion, tuple(parts), labels)


def variant(recipe: Recipe, part: str) -> int:
    """A stable number per letter and section: the prompt picks its style hints with it, so
    letters differ in how they are asked while one spec always gets the same prompt."""
    return int.from_bytes(hashlib.blake2b(f"{recipe.spec_id}|{part}".encode(), digest_size=4).digest(), "big")


@functools.lru_cache(maxsize=32)
def _template(source: str) -> Any:
    # prompts come from config files: a sandbox keeps a template from reaching Python internals
    return SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)


def _render(source: str, **ctx: Any) -> str:
    return _template(source).render(**ctx).strip()


def _common(recipe: Recipe) -> dict[str, Any]:
    return {
        "letter_type": recipe.letter_type,
        "patient": "die Patientin" if recipe.header.get("sex", recipe.patient.get("sex")) == "female"
        else "den Patienten",
        "abbreviations": bool(recipe.style.get("abbreviations")),
    }  # fmt: skip


def section_messages(
    recipe: Recipe, section: Mapping[str, Any], prompts: Mapping[str, str]
) -> list[dict[str, str]]:
    """System + user message for one narrative section: only this section's facts."""
    facts = [prompt_fact(f).as_context() for f in recipe.section_facts(section["key"])]
    words = max(60, int(recipe.style.get("target_words", 400)) // max(1, len(recipe.sections)))
    ctx = {
        **_common(recipe),
        "heading": section["heading"],
        "section": section["key"],
        "facts": facts,
        "assertions": sorted({f["assertion"] for f in facts}),
        "words": words,
        "variant": variant(recipe, section["key"]),
    }
    return [
        {"role": "system", "content": _render(prompts["system"], **ctx)},
        {"role": "user", "content": _render(prompts["section"], **ctx)},
    ]


def letter_messages(recipe: Recipe, prompts: Mapping[str, str]) -> list[dict[str, str]]:
    """System + user message for a whole letter: every section with its facts, and the head."""
    sections = [
        {
            "key": s["key"],
            "heading": s["heading"],
            "facts": [prompt_fact(f).as_context() for f in recipe.section_facts(s["key"])],
        }
        for s in recipe.sections
    ]
    header = [
        (k, v)
        for k, v in recipe.header.items()
        if k not in HEADER_LABELS and isinstance(v, str) and v.strip()
    ]
    ctx = {
        **_common(recipe),
        "sections": sections,
        "assertions": sorted({f["assertion"] for s in sections for f in s["facts"]}),
        "header": header,
        "words": int(recipe.style.get("target_words", 400)),
        "variant": variant(recipe, "letter"),
    }
    return [
        {"role": "system", "content": _render(prompts["system"], **ctx)},
        {"role": "user", "content": _render(prompts["letter"], **ctx)},
    ]
