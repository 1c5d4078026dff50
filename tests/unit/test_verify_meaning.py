"""Verifier fixes of the fix round: false alarms found at scale stay away, and the meaning-level checks
(a drug of this stay under an admission heading; a drug given this stay called finished) fail with
their reason. Each case edits a passing hand-written letter (tests/unit/verify_cases.py)."""

from __future__ import annotations

from typing import Any

from clinsynth.letters.verify import verify
from clinsynth.sampling.recipe import Recipe, RecipeFact
from tests.unit.verify_cases import colorectal, fact

DIAG_LINE = "- Rektumkarzinom (C20), ED 01/2025"
VERLAUF_END = "Die tiefe anteriore Rektumresektion war am 20.02.2025 erfolgt."


def _add(recipe: Recipe, *facts: RecipeFact) -> None:
    recipe.facts.extend(facts)


def _med(fid: str, name: str, assertion: str, **gold: Any) -> RecipeFact:
    say = {"name": name}
    return RecipeFact(fid, "medication", "verlauf", assertion, {"name": name, **gold}, say)  # type: ignore[arg-type]


def _reasons(recipe: Recipe, text: str) -> list[str]:
    return verify(recipe, text).reasons


def test_case_passes_unchanged() -> None:
    assert _reasons(*colorectal()) == []


def test_side_word_of_an_unpaired_organ_is_no_laterality() -> None:
    recipe, text = colorectal()
    text = text.replace(DIAG_LINE, "- Rektumkarzinom (C20) der linken Kolonflexur, ED 01/2025")
    assert _reasons(recipe, text) == []
    # a side word of the tumour itself still fails without gold laterality
    recipe, text = colorectal()
    text = text.replace(DIAG_LINE, "- Rektumkarzinom (C20) links, ED 01/2025")
    assert any(r.startswith("tumour laterality: tumor 'Rektumkarzinom'") for r in _reasons(recipe, text))


def test_labelled_topography_is_the_tumours_topography() -> None:
    recipe, text = colorectal()
    text = text.replace(
        "Histologie: Adenokarzinom (8140/3)", "Histologie: Adenokarzinom (8140/3), Topographie C20.9"
    )
    fact(recipe, "t1").gold["topography"] = "C20.9"
    assert _reasons(recipe, text) == []
    fact(recipe, "t1").gold["topography"] = "C19.9"
    assert any(
        "code mismatch: tumor 'Rektumkarzinom'" in r and "topography" in r for r in _reasons(recipe, text)
    )


def test_post_cue_belongs_to_the_nearer_name() -> None:
    recipe, text = colorectal()
    _add(
        recipe,
        _med(
            "m7",
            "Dexamethason",
            "present",
            atc="H02AB02",
            dose=8,
            unit="mg",
            route="i.v.",
            context="inpatient",
        ),
        _med("m8", "Aprepitant", "historical", atc="A04AD12", context="inpatient"),
    )
    text = text.replace(VERLAUF_END, VERLAUF_END + " Gabe von Dexamethason 8 mg i.v. Aprepitant abgesetzt.")
    assert _reasons(recipe, text) == []
    # the cue right after a present drug still fails it
    fact(recipe, "m8").assertion = "present"
    assert any(r.startswith("written as historical: medication 'Aprepitant'") for r in _reasons(recipe, text))


def test_drug_of_this_stay_under_an_admission_heading_fails() -> None:
    recipe, text = colorectal()
    text = text.replace("Medikation bei Entlassung:", "Hausmedikation:")
    reasons = _reasons(recipe, text)
    assert (
        "context mismatch: medication 'Pantoprazol': gold context discharge, "
        "written under an admission heading" in reasons
    )
    for fid in ("m4", "m5", "m6"):
        fact(recipe, fid).gold["context"] = "admission"
    assert _reasons(recipe, text) == []


def test_drug_given_this_stay_and_called_finished_fails() -> None:
    recipe, text = colorectal()
    _add(
        recipe,
        _med("m9", "Oxaliplatin", "historical", atc="L01XA03", context="therapy", regimen="FOLFOX", cycle=2),
    )
    finished = text.replace(
        VERLAUF_END, VERLAUF_END + " Die Therapie mit Oxaliplatin (FOLFOX, Zyklus 2) ist abgeschlossen."
    )
    assert any(
        r.startswith("contradiction: medication 'Oxaliplatin': given this stay and called finished")
        for r in _reasons(recipe, finished)
    )
    earlier = text.replace(VERLAUF_END, VERLAUF_END + " Vormals Oxaliplatin (FOLFOX, Zyklus 2).")
    assert _reasons(recipe, earlier) == []


def test_cue_reaches_a_list_whose_first_name_holds_another_name() -> None:
    recipe, text = colorectal()
    _add(
        recipe,
        RecipeFact(
            "d9",
            "diagnosis",
            "diagnosen",
            "negated",
            {"text": "Thrombozytopenie nach Chemotherapie"},
            {"name": "Thrombozytopenie nach Chemotherapie"},
        ),
        RecipeFact(
            "p3", "procedure", "anamnese", "present", {"text": "Chemotherapie"}, {"name": "Chemotherapie"}
        ),
    )
    text = text.replace(
        "- Kein Hinweis auf Lebermetastasen oder Peritonealkarzinose",
        "- Kein Hinweis auf Thrombozytopenie nach Chemotherapie oder Lebermetastasen "
        "oder Peritonealkarzinose",
    )
    assert _reasons(recipe, text) == []
    fact(recipe, "d5").assertion = "present"  # the shared cue still governs the list's later names
    assert any(
        r.startswith("written as negated: diagnosis 'Lebermetastasen'") for r in _reasons(recipe, text)
    )
