"""Template letters: a recipe rendered by Jinja2 templates, deterministic and fast (the CPU default).

The templates only place the strings the recipe already chose (`fact.say`), so a template letter
states exactly the recipe's facts; layouts vary by the section's `layout` and `variant`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from clinsynth.sampling.recipe import Recipe, RecipeFact

TEMPLATES = Path(__file__).with_name("templates")

CODE_LABEL = {
    "diagnosis": ("", "ICD-10: "),
    "procedure": ("OPS ", "OPS: "),
    "medication": ("ATC ", "ATC: "),
    "lab": ("LOINC ", "LOINC: "),
}

#: neutral sentences that lengthen a section without stating a fact (no diagnoses, codes or cues)
FILLER: dict[str, tuple[str, ...]] = {
    "anamnese": (
        "Bei Aufnahme präsentierte sich der Allgemeinzustand reduziert, der Ernährungszustand normal.",
        "Die vegetative Anamnese war bis auf eine leichte Abgeschlagenheit unauffällig.",
        "Eine Gewichtsabnahme in den letzten Monaten wurde verneint.",
        "Die Familienanamnese ist hinsichtlich maligner Erkrankungen leer.",
        "Nikotin- und Alkoholkonsum wurden erfragt und dokumentiert.",
    ),
    "verlauf": (
        "Der stationäre Aufenthalt verlief insgesamt komplikationslos.",
        "Die Mobilisation gelang zügig, die Schmerzen waren unter der Basismedikation gut kontrolliert.",
        "Die Vitalparameter waren während des gesamten Aufenthaltes stabil.",
        "Über Nebenwirkungen und Verhaltensmaßnahmen wurde ausführlich aufgeklärt.",
    ),
    "epikrise": (
        "Eine Wiedervorstellung in unserer Ambulanz ist zum nächsten Zyklus geplant.",
        "Der Fall wird in der interdisziplinären Tumorkonferenz erneut besprochen.",
        "Wir bitten um regelmäßige Blutbildkontrollen durch die weiterbehandelnden Kolleginnen und Kollegen.",
        "Bei Fieber über 38 °C ist eine umgehende Vorstellung erforderlich.",
        "Für Rückfragen stehen wir jederzeit gern zur Verfügung.",
    ),
}


def coded(f: RecipeFact | Mapping[str, Any], style: Mapping[str, Any]) -> str:
    """The fact's phrase with its code where the recipe writes one: "Text (C34.1)", "C34.1 Text"..."""
    say, kind = _say(f), _get(f, "kind")
    phrase, code = say.get("phrase", ""), say.get("code", "")
    if not code:
        return phrase
    short, long = CODE_LABEL.get(kind, ("", ""))
    cs = style.get("code_style", "paren")
    if cs == "prefix" and kind == "diagnosis":
        return f"{code} {phrase}"
    if cs == "bracket":
        return f"{phrase} [{long}{code}]"
    return f"{phrase} ({short}{code})"


def when(f: RecipeFact | Mapping[str, Any], before: str = " ", after: str = "") -> str:
    date = _say(f).get("date", "")
    return f"{before}{date}{after}" if date else ""


def medline(f: RecipeFact | Mapping[str, Any]) -> str:
    say = _say(f)
    parts = [
        drugname(f),
        f"{say.get('dose', '')} {say.get('unit', '')}".strip(),
        say.get("route", ""),
        say.get("schedule", ""),
    ]
    return " ".join(p for p in parts if p)


def drugname(f: RecipeFact | Mapping[str, Any]) -> str:
    say = _say(f)
    return (
        f"{say['phrase']} ({CODE_LABEL['medication'][0]}{say['code']})" if say.get("code") else say["phrase"]
    )


def labname(f: RecipeFact | Mapping[str, Any]) -> str:
    say = _say(f)
    return f"{say['phrase']} (LOINC {say['code']})" if say.get("code") else say["phrase"]


def period(s: str) -> str:
    """End a sentence once: "i.v." stays "i.v.", "Text" becomes "Text."."""
    s = str(s).rstrip()
    return s if s.endswith((".", "!", "?")) else s + "."


def capfirst(s: str) -> str:
    return s[:1].upper() + s[1:]


def _say(f: Any) -> Mapping[str, str]:
    return f.say if isinstance(f, RecipeFact) else f["say"]


def _get(f: Any, key: str) -> Any:
    return getattr(f, key) if isinstance(f, RecipeFact) else f[key]


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,  # a template asking for a missing key is a bug, not a blank
        autoescape=False,  # plain text letters, not HTML
    )
    env.filters.update(
        coded=coded,
        when=when,
        medline=medline,
        drugname=drugname,
        labname=labname,
        capfirst=capfirst,
        period=period,
    )
    return env


def templates_version() -> str:
    """Hash of every template file: recorded per letter, part of what a template letter depends on."""
    h = hashlib.blake2b(digest_size=6)
    for p in sorted(TEMPLATES.rglob("*.j2")):
        h.update(p.relative_to(TEMPLATES).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _filler(recipe: Recipe, section: str) -> str:
    options = FILLER.get(section, ())
    if not options:
        return ""
    seed = int.from_bytes(
        hashlib.blake2b(f"{recipe.spec_id}|{section}".encode(), digest_size=4).digest(), "big"
    )
    # longer target letters get more filler: 0-3 sentences
    n = min(len(options), max(0, (int(recipe.style.get("target_words", 400)) - 250) // 150))
    start = seed % len(options)
    return " ".join(options[(start + k) % len(options)] for k in range(n))


def section_context(recipe: Recipe, section: dict[str, Any]) -> dict[str, Any]:
    return {
        "facts": recipe.section_facts(section["key"]),
        "section": section,
        "style": recipe.style,
        "h": recipe.header,
        "therapy": any(f.kind == "medication" and f.gold.get("context") == "therapy" for f in recipe.facts),
        "filler": functools.partial(_filler, recipe),
    }


def render_section(recipe: Recipe, section: dict[str, Any]) -> str:
    tpl = environment().get_template(f"sections/{section['key']}.j2")
    return tpl.render(section_context(recipe, section)).strip()


def render_letter(recipe: Recipe, bodies: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(letter text, section bodies); `bodies` replaces template sections (LLM-written narrative)."""
    rendered = {
        s["key"]: (bodies[s["key"]] if bodies and s["key"] in bodies else render_section(recipe, s)).strip()
        for s in recipe.sections
    }
    text = (
        environment()
        .get_template("letter.j2")
        .render(h=recipe.header, letter_type=recipe.letter_type, sections=recipe.sections, rendered=rendered)
    )
    return text.strip() + "\n", rendered
