"""The 15 kinds of wrong gold of issue 10 each fail verification, with the right reason.

Each case mutates a passing hand-written letter (tests/unit/verify_cases.py) or its gold, the way
the smoke-run review planted them, and names the reason the verifier must give.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clinsynth.letters.verify import verify
from clinsynth.sampling.recipe import Recipe
from tests.unit.verify_cases import breast, colorectal, fact

Mutation = Callable[[Recipe, str], str]


def _replace(old: str, new: str) -> Mutation:
    def m(recipe: Recipe, text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return m


def _gold(fid: str, **changes: object) -> Mutation:
    def m(recipe: Recipe, text: str) -> str:
        f = fact(recipe, fid)
        for k, v in changes.items():
            if k == "assertion":
                f.assertion = v  # type: ignore[assignment]
            else:
                f.gold[k] = v
        return text

    return m


def _tnm(axis: str, **changes: str) -> Mutation:
    def m(recipe: Recipe, text: str) -> str:
        fact(recipe, "t1").gold["tnm"][axis].update(changes)
        return text

    return m


def _marker(name: str, **changes: object) -> Mutation:
    def m(recipe: Recipe, text: str) -> str:
        marker = next(x for x in fact(recipe, "t1").gold["markers"] if x["name"] == name)
        marker.update(changes)
        return text

    return m


def _both(*ms: Mutation) -> Mutation:
    def m(recipe: Recipe, text: str) -> str:
        for x in ms:
            text = x(recipe, text)
        return text

    return m


# (kind of planted error, case, mutation, reason the verdict must hold)
PLANTED: list[tuple[str, Callable[[], tuple[Recipe, str]], Mutation, str]] = [
    # 1. a lab value or dose swapped with its neighbour's
    (
        "lab value swapped with its neighbour's (text)",
        colorectal,
        _replace("Hb 10,2 g/dl, Leukozyten 5,3 /nl", "Hb 5,3 g/dl, Leukozyten 10,2 /nl"),
        "value mismatch: lab 'Hb'",
    ),
    (
        "dose swapped with its neighbour's (gold)",
        colorectal,
        _both(_gold("m4", dose=5), _gold("m5", dose=40)),
        "dose mismatch: medication 'Pantoprazol'",
    ),
    # 2. a unit changed
    ("unit changed (gold)", colorectal, _gold("l4", unit="mmol/L"), "unit mismatch: lab 'Kreatinin'"),
    (
        "unit changed (text)",
        colorectal,
        _replace("Kreatinin 0,9 mg/dl", "Kreatinin 0,9 mmol/l"),
        "unit mismatch: lab 'Kreatinin'",
    ),
    # 3. a diagnosis date changed
    (
        "diagnosis date changed",
        colorectal,
        _gold("d1", date="2025-02"),
        "date mismatch: diagnosis 'Rektumkarzinom'",
    ),
    # 4. a schedule changed
    (
        "schedule changed",
        colorectal,
        _gold("m5", schedule=[1, 0, 0, 0]),
        "schedule mismatch: medication 'Ramipril'",
    ),
    # 5.-9. the tumour's N / prefix / UICC / laterality / marker changed
    ("tumour N changed", colorectal, _tnm("n", value="N2a"), "tumour N: tumor 'Rektumkarzinom'"),
    ("tumour prefix changed", colorectal, _tnm("t", prefix="p"), "tumour T prefix: tumor 'Rektumkarzinom'"),
    (
        "tumour UICC changed",
        colorectal,
        _gold("t1", uicc_stage="IIIC"),
        "tumour UICC: tumor 'Rektumkarzinom'",
    ),
    (
        "tumour laterality changed",
        breast,
        _gold("t1", laterality="R"),
        "tumour laterality: tumor 'Mammakarzinom'",
    ),
    (
        "tumour marker changed",
        breast,
        _marker("HER2", result="positive"),
        "tumour marker mismatch: tumor 'Mammakarzinom'",
    ),
    # 10. the main code changed to a sibling
    (
        "main code changed to a sibling",
        colorectal,
        _gold("d1", icd10gm="C19"),
        "code mismatch: diagnosis 'Rektumkarzinom'",
    ),
    (
        "unwritten code changed to a sibling",
        colorectal,
        _gold("d5", icd10gm="C78.6"),
        "code mismatch: diagnosis 'Lebermetastasen': gold icd10gm C78.6, the text pins C78.7",
    ),
    (
        "unwritten code more specific than its name",
        colorectal,
        _gold("d3", icd10gm="J18.9"),
        "over-specific code: diagnosis 'Pneumonie': gold icd10gm J18.9, the text pins J18",
    ),
    # 11. a negated fact relabelled present when the cue follows the noun
    (
        "negated fact relabelled present (cue after the noun: nicht nachweisbar)",
        colorectal,
        _gold("d2", assertion="present"),
        "written as negated: diagnosis 'Lungenmetastasen'",
    ),
    (
        "negated fact relabelled present (cue after the noun: ausgeschlossen)",
        colorectal,
        _gold("d8", assertion="present"),
        "written as negated: diagnosis 'Sepsis'",
    ),
    # 12. a suspected fact relabelled present
    (
        "suspected fact relabelled present",
        colorectal,
        _gold("d3", assertion="present"),
        "written as suspected: diagnosis 'Pneumonie'",
    ),
    # 13. a historical fact relabelled present
    (
        "historical fact relabelled present",
        colorectal,
        _gold("p1", assertion="present"),
        "written as historical: procedure 'Appendektomie'",
    ),
    # 14. a written ICD-O code contradicting gold
    (
        "written ICD-O code contradicts gold (gold)",
        colorectal,
        _gold("t1", morphology="9861/3"),
        "foreign code: morphology 8140/3",
    ),
    (
        "written ICD-O code contradicts gold (text: S.a.)",
        colorectal,
        _replace("Adenokarzinom (8140/3)", "Adenokarzinom (S.a. 9930/3)"),
        "code mismatch: tumor 'Rektumkarzinom': morphology gold 8140/3, text 9930/3",
    ),
    # 15. untagged extra facts added to the letter
    (
        "untagged extra finding: Lungenembolie",
        colorectal,
        _replace("Sepsis ausgeschlossen.", "Sepsis ausgeschlossen. Im CT zeigte sich eine Lungenembolie."),
        "untagged: finding 'Lungenembolie'",
    ),
    (
        "untagged extra drug: Enoxaparin",
        colorectal,
        _replace(
            "Ramipril          5 mg    1-0-1-0\n",
            "Ramipril          5 mg    1-0-1-0\nEnoxaparin       40 mg    0-0-1-0\n",
        ),
        "untagged: drug 'Enoxaparin'",
    ),
    (
        "untagged extra finding: new brain metastases",
        colorectal,
        _replace("Leber homogen.", "Leber homogen. Im MRT neu aufgetretene Hirnmetastasen."),
        "untagged: finding 'Hirnmetastasen'",
    ),
    # 16. a present fact rewritten "... sonographisch ausgeschlossen"
    (
        "present fact rewritten as ruled out",
        breast,
        _replace("multiple Lebermetastasen, max. 2,4 cm.", "Lebermetastasen sonographisch ausgeschlossen."),
        "written as negated: diagnosis 'Lebermetastasen'",
    ),
]


@pytest.mark.parametrize("case", [colorectal, breast], ids=["colorectal", "breast"])
def test_the_unmutated_letters_pass(case):
    recipe, text = case()
    v = verify(recipe, text)
    assert v.ok, v.reasons
    assert all(x == "ok" for x in v.facts.values())
    assert all(b.start >= 0 for b in v.bindings)


@pytest.mark.parametrize(("kind", "case", "mutate", "reason"), PLANTED, ids=[p[0] for p in PLANTED])
def test_each_planted_error_fails_verification(kind, case, mutate, reason):
    recipe, text = case()
    text = mutate(recipe, text)
    v = verify(recipe, text)
    assert not v.ok, f"{kind}: passed"
    assert any(r.startswith(reason) for r in v.reasons), (kind, v.reasons)
