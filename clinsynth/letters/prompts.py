"""Prompts for LLM-written letters and sections, from the templates in `conf/prompts/`.

The recipe decides what a letter says; the prompt tells the model each fact and how to say it
(negated, historical, suspected), so a verifier can hold the letter to the recipe afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from clinsynth.letters.render import coded, medline
from clinsynth.sampling.recipe import Recipe, RecipeFact

HOW = {
    "present": "",
    "negated": " — ausdrücklich verneint (z. B. „kein Hinweis auf …“, „… ausgeschlossen“)",
    "historical": " — als frühere Erkrankung/Maßnahme (z. B. „Z.n. …“)",
    "suspected": " — als Verdacht (z. B. „V.a. …“)",
}


def instruction(f: RecipeFact, style: Mapping[str, Any]) -> str:
    """One line of the fact list: the exact words (and code, value, dose) plus how to assert it."""
    say = f.say
    if f.kind == "tumor":
        parts = [say.get(k, "") for k in ("histology", "grading", "tnm", "uicc", "laterality")]
        text = ", ".join(p for p in parts if p)
        if say.get("morphology_code"):
            text += f" (ICD-O-3 {say['morphology_code']})"
        if say.get("markers"):
            text += f"; Tumormarker: {say['markers']}"
        return text
    if f.kind == "medication":
        return medline(f)
    if f.kind == "lab":
        value = f"{say.get('value', '')} {say.get('unit', '')}".strip()
        return f"{say['phrase']} {value}".strip() + (f" ({say['date']})" if say.get("date") else "")
    text = f.gold.get("text") or say.get("phrase", "")
    base = coded({"say": {**say, "phrase": text}, "kind": f.kind}, style)
    date = f" ({say['date']})" if say.get("date") else ""
    return f"{base}{date}{HOW[f.assertion]}"


@functools.lru_cache(maxsize=32)
def _template(source: str) -> Any:
    # prompts come from config files: a sandbox keeps a template from reaching Python internals
    return SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)


def _render(source: str, **ctx: Any) -> str:
    return _template(source).render(**ctx).strip()


def section_messages(
    recipe: Recipe, section: Mapping[str, Any], prompts: Mapping[str, str]
) -> list[dict[str, str]]:
    facts = [instruction(f, recipe.style) for f in recipe.section_facts(section["key"])]
    words = max(60, int(recipe.style.get("target_words", 400)) // max(1, len(recipe.sections)))
    ctx = {
        "letter_type": recipe.letter_type,
        "heading": section["heading"],
        "section": section["key"],
        "facts": facts,
        "words": words,
        "header": recipe.header,
        "patient": "die Patientin" if recipe.header.get("sex") == "female" else "der Patient",
    }
    return [
        {"role": "system", "content": _render(prompts["system"], **ctx)},
        {"role": "user", "content": _render(prompts["section"], **ctx)},
    ]


def letter_messages(recipe: Recipe, prompts: Mapping[str, str]) -> list[dict[str, str]]:
    sections = [
        {
            "heading": s["heading"],
            "facts": [instruction(f, recipe.style) for f in recipe.section_facts(s["key"])],
        }
        for s in recipe.sections
    ]
    ctx = {
        "letter_type": recipe.letter_type,
        "sections": sections,
        "words": int(recipe.style.get("target_words", 400)),
        "header": recipe.header,
        "patient": "die Patientin" if recipe.header.get("sex") == "female" else "der Patient",
    }
    return [
        {"role": "system", "content": _render(prompts["system"], **ctx)},
        {"role": "user", "content": _render(prompts["letter"], **ctx)},
    ]
