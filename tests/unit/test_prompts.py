"""The hybrid/llm prompts: every fact of the section with its verbatim strings and assertion, the
model told to vary its wording, and nothing from another section (conf/generate/prompts/de.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clinsynth.letters.prompts import letter_messages, prompt_fact, section_messages
from clinsynth.sampling.recipe import Recipe, RecipeFact
from launchers.config import compose_config

F = RecipeFact
ASSERTION_WORD = {
    "present": "zutreffend",
    "negated": "verneint",
    "suspected": "Verdacht",
    "historical": "Vorgeschichte",
}
CUE_EXAMPLE = {"negated": "ausgeschlossen", "suspected": "V.a.", "historical": "Z.n."}

# recipe v2 facts (sampling/recipe.py): each section's strings are its own, so a leak is visible
FACTS = [
    F(
        "f1",
        "diagnosis",
        "diagnosen",
        "present",
        {"text": "Sigmakarzinom", "icd10gm": "C18.7", "role": "main"},
        {"name": "Sigmakarzinom", "code": "C18.7", "role": "main", "date": "04/2025"},
    ),
    F(
        "f2",
        "tumor",
        "diagnosen",
        "present",
        {"entity": "Sigmakarzinom"},
        {
            "entity": "Sigmakarzinom",
            "histology": "Adenokarzinom",
            "tnm": "pT3 pN1a (1/16) cM0 L1 V0",
            "stage": "UICC IIIB",
            "markers": ["CEA 7,4 ng/ml", "KRAS Exon 2 mutiert"],
            "staging": "current",
        },
    ),
    F(
        "f3",
        "diagnosis",
        "anamnese",
        "negated",
        {"text": "Peritonealkarzinose", "icd10gm": "C78.6"},
        {"name": "Peritonealkarzinose"},
    ),
    F(
        "f4",
        "procedure",
        "anamnese",
        "historical",
        {"text": "Hemikolektomie links", "ops": "5-455.6"},
        {"name": "Hemikolektomie links", "date": "12.05.2025"},
    ),
    F(
        "f5",
        "risk_factor",
        "anamnese",
        "present",
        {"kind": "smoking", "text": "Nikotinabusus", "pack_years": 25},
        {"name": "Nikotinabusus", "pack_years": "25"},
    ),
    F(
        "f6",
        "medication",
        "anamnese",
        "present",
        {"name": "Capecitabin", "dose": 1000, "unit": "mg/m2"},
        {"name": "Capecitabin", "dose": "1000", "unit": "mg/m²", "schedule": "1-0-1", "cycle": "2"},
    ),
    F(
        "f7",
        "diagnosis",
        "anamnese",
        "suspected",
        {"text": "Lungenembolie", "icd10gm": "I26.9"},
        {"name": "Lungenembolie"},
    ),
    F(
        "f8",
        "lab",
        "befunde",
        "present",
        {"name": "Leukozyten", "value": 2.9, "unit": "10*9/L"},
        {"name": "Leukozyten", "value": "2,9", "unit": "G/l", "flag": "↓", "date": "18.06.2025"},
    ),
    F(
        "f9",
        "radiotherapy",
        "epikrise",
        "historical",
        {"target": "Becken", "total_gy": 50.4},
        {"name": "Becken", "total": "50,4 Gy", "fraction": "1,8 Gy", "fractions": "28"},
    ),
    F("f10", "medication", "epikrise", "negated", {"name": "Enoxaparin"}, {"name": "Enoxaparin"}),
]
SECTIONS = [
    ("diagnosen", "Diagnosen"),
    ("anamnese", "Anamnese"),
    ("befunde", "Labor"),
    ("epikrise", "Epikrise"),
]


def _recipe(spec_id: str = "s-1", **style) -> Recipe:
    return Recipe(
        spec_id,
        "p-1",
        "e-1",
        "train",
        "Entlassungsbrief",
        {"clinic": "Medizinische Klinik II", "patient": "Max Beispiel, geb. 03.04.1951", "sex": "male"},
        [{"key": k, "heading": h} for k, h in SECTIONS],
        FACTS,
        {"target_words": 420, **style},
    )


@pytest.fixture(scope="module")
def prompts():
    return dict(compose_config(["+experiment=smoke_hybrid"])["generate"]["prompts"])


def _section(recipe: Recipe, key: str, prompts) -> tuple[str, str]:
    section = next(s for s in recipe.sections if s["key"] == key)
    system, user = section_messages(recipe, section, prompts)
    assert (system["role"], user["role"]) == ("system", "user")
    return system["content"], user["content"]


def test_verbatim_strings_of_a_fact_keep_number_and_unit_together():
    assert prompt_fact(FACTS[5]).verbatim == ["Capecitabin", "1000 mg/m²", "1-0-1", "2"]
    assert prompt_fact(FACTS[7]).verbatim == ["Leukozyten", "2,9 G/l", "↓", "18.06.2025"]
    assert prompt_fact(FACTS[1]).verbatim[-2:] == ["CEA 7,4 ng/ml", "KRAS Exon 2 mutiert"]
    assert dict(prompt_fact(FACTS[1]).labels) == {"staging": "current"}  # a label, never written
    # a fact whose say lacks a name is still named (from its gold)
    assert prompt_fact(F("x", "diagnosis", "anamnese", "present", {"text": "Anämie"}, {})).verbatim == [
        "Anämie"
    ]


@pytest.mark.parametrize("key", ["anamnese", "epikrise"])
def test_a_section_prompt_lists_each_of_its_facts_verbatim_with_its_assertion(prompts, key):
    recipe = _recipe()
    system, user = _section(recipe, key, prompts)
    lines = user.splitlines()
    for f in recipe.section_facts(key):
        pf = prompt_fact(f)
        [line] = [x for x in lines if f"„{pf.verbatim[0]}“" in x]  # one line per fact
        for text in pf.verbatim:
            assert f"„{text}“" in line, (text, line)
        assert line.endswith(f": {ASSERTION_WORD[f.assertion]}")
    # the legend says how each assertion used here is written, and only those
    legend = {x.split(":")[0][2:]: x for x in lines if x.startswith("- ")}
    used = {f.assertion for f in recipe.section_facts(key)}
    assert set(legend) == {ASSERTION_WORD[a] for a in used}
    for a in used:
        rule = legend[ASSERTION_WORD[a]]
        if a == "present":  # a present fact must carry no cue
            assert "ohne Verneinung, Verdachts- oder Vorgeschichte-Hinweis" in rule
        else:  # the others must, in the fact's own sentence, and the prompt says which kind
            assert CUE_EXAMPLE[a] in rule and "im selben Satz" in rule
    assert f"{len(recipe.section_facts(key))} Fakten" in user and "„" + dict(SECTIONS)[key] + "“" in user
    # own words, varied, no copied phrases; nothing added
    assert "selbst und abwechslungsreich" in user and "keine\nWendungen aus dieser Anweisung" in user
    assert "Füge keine weiteren" in user and "exakt so" in system


def test_a_section_prompt_never_holds_another_sections_facts(prompts):
    recipe = _recipe()
    for key, _ in SECTIONS:
        system, user = _section(recipe, key, prompts)
        for f in recipe.facts:
            if f.section == key:
                continue
            for text in prompt_fact(f).verbatim:
                if any(text == t for g in recipe.section_facts(key) for t in prompt_fact(g).verbatim):
                    continue  # the same string in this section too ("2" as a cycle and a count)
                assert f"„{text}“" not in user and text not in system, (key, f.id, text)
        other = [f for f in recipe.facts if f.section != key and len(prompt_fact(f).verbatim[0]) > 4]
        assert not [f.id for f in other if prompt_fact(f).verbatim[0] in user]


def test_prompts_vary_by_letter_and_stay_fixed_per_letter(prompts):
    users = {_section(_recipe(f"s-{i}"), "anamnese", prompts)[1] for i in range(40)}
    assert len(users) >= 8  # the style hints differ between letters
    assert _section(_recipe("s-3"), "anamnese", prompts) == _section(_recipe("s-3"), "anamnese", prompts)
    short = _section(_recipe(abbreviations=True), "anamnese", prompts)[1]
    assert "Abkürzungen" in short and "Schreibe Fachbegriffe aus" not in short


def test_a_section_without_facts_is_told_to_state_none(prompts):
    recipe = _recipe()
    recipe.sections.append({"key": "procedere", "heading": "Procedere"})
    _, user = _section(recipe, "procedere", prompts)
    assert "keine Fakten vorgegeben" in user and user.count("„") == 1  # only the heading is quoted


def test_a_whole_letter_prompt_puts_each_fact_under_its_own_heading(prompts):
    recipe = _recipe()
    user = letter_messages(recipe, prompts)[1]["content"]
    blocks = re.split(r"^(Diagnosen|Anamnese|Labor|Epikrise):$", user, flags=re.M)
    by_heading = dict(zip(blocks[1::2], blocks[2::2], strict=True))
    for f in recipe.facts:
        block = by_heading[dict(SECTIONS)[f.section]]
        assert all(f"„{t}“" in block for t in prompt_fact(f).verbatim)
        assert ASSERTION_WORD[f.assertion] in next(
            x for x in block.splitlines() if prompt_fact(f).verbatim[0] in x
        )
    assert "„Max Beispiel, geb. 03.04.1951“" in user and "male" not in user.replace("Max", "")


GRASCCO = Path(__file__).resolve().parents[3] / "shared" / "external" / "grascco"
DEV = ("Meyr", "Clausthal", "Ehrenberger", "Schnitzler", "Rieser", "Baastrup")


@pytest.mark.skipif(not GRASCCO.is_dir(), reason=f"{GRASCCO} absent (../shared)")
def test_the_prompts_copy_no_wording_from_the_development_letters(prompts):
    """No run of 5 words of a development letter appears in a prompt (written fresh)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}

    ours = grams(" ".join(prompts.values()))
    for name in DEV:
        shared = ours & grams((GRASCCO / f"{name}.txt").read_text(encoding="utf-8", errors="replace"))
        assert not shared, (name, sorted(shared)[:5])
