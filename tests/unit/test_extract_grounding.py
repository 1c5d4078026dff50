"""Code grounding: a missing, malformed or category-less code is mapped from its text when one catalogue
concept (or, for a missing code, one parent of several) clearly wins; catalogue codes and well-formed
codes of a known category are never touched; every decision is recorded; only changes are counted."""

from __future__ import annotations

import pytest

from clinsynth.extraction.documents import Doc
from clinsynth.extraction.grounding import (
    DEFAULT_THRESHOLD,
    TIE,
    TfidfIndex,
    best_code,
    ground,
    search_index,
    why_ground,
)
from clinsynth.extraction.llm import RunStats, finish_outcome
from clinsynth.extraction.parse import Parsed
from clinsynth.schema import ClinicalExtraction
from clinsynth.terminology import load_catalog


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def test_missing_and_invented_codes_are_mapped_from_their_text(cat) -> None:
    ex = ClinicalExtraction.model_validate(
        {
            "diagnoses": [
                {"text": "Mammakarzinom links", "icd10gm": "X50.49"},  # a category the catalogue lacks
                {"text": "Rektumkarzinom", "icd10gm": "C18.7"},  # in the catalogue: kept, even if odd
                {"text": "Arterielle Hypertonie"},
            ],
            "tumors": [{"entity": "Adenokarzinom", "histology": "Adenokarzinom"}],
            "procedures": [{"text": "Sigmaresektion"}],
            "medications": [{"name": "Pantoprazol", "atc": "Q02BC99"}],  # no ATC group Q
            "labs": [{"name": "Hämoglobin"}],
        }
    )
    out, corrections = ground(ex, cat, threshold=90)
    assert [d.icd10gm for d in out.diagnoses] == ["C50", "C18.7", "I10"]  # C50: the text's level, not C50.4
    assert out.tumors[0].morphology == "8140/3"
    assert out.procedures[0].ops == "5-455.7"  # a missing code: the parent of the tied 5-455.7x
    assert out.medications[0].atc == "A02BC02" and out.labs[0].loinc == "718-7"
    by_path = {c.path: c for c in corrections}
    assert "diagnoses[1].icd10gm" not in by_path
    assert by_path["diagnoses[0].icd10gm"].as_dict() == {
        "path": "diagnoses[0].icd10gm",
        "text": "Mammakarzinom links",
        "before": "X50.49",
        "after": "C50",
        "score": 97.5,
        "reason": "category X50 unknown to the catalogue; mapped",
    }
    assert (by_path["medications[0].atc"].before, by_path["medications[0].atc"].after) == (
        "Q02BC99",
        "A02BC02",
    )
    assert by_path["procedures[0].ops"].reason.startswith("parent of tied: 5-455.7")
    assert ex.diagnoses[0].icd10gm == "X50.49"  # the input is not changed


def test_well_formed_codes_of_a_known_category_are_kept_and_said(cat) -> None:
    """The catalogue is a subset: J44.19, C50.41, 5-484.57, A02BC99 and 2093-3 are not in it, but each
    is well formed with a category (or check digit) it knows; grounding once turned them into parents."""
    assert "J44.19" not in cat.icd10gm and "C50.41" not in cat.icd10gm
    ex = ClinicalExtraction.model_validate(
        {
            "diagnoses": [{"text": "COPD", "icd10gm": "J44.19"}],
            "tumors": [
                {"entity": "Mammakarzinom", "icd10gm": "C50.41", "histology": "x", "morphology": "8140/6"}
            ],
            "procedures": [{"text": "Rektumresektion", "ops": "5-484.57"}],
            "medications": [{"name": "Pantoprazol", "atc": "A02BC99"}],
            "labs": [{"name": "Cholesterin", "loinc": "2093-3"}, {"name": "Hämoglobin", "loinc": "2093-4"}],
        }
    )
    out, corrections = ground(ex, cat, threshold=90)
    assert out.diagnoses[0].icd10gm == "J44.19" and out.tumors[0].icd10gm == "C50.41"
    assert out.tumors[0].morphology == "8140/6" and out.procedures[0].ops == "5-484.57"
    assert out.medications[0].atc == "A02BC99"
    assert out.labs[0].loinc == "2093-3"
    assert out.labs[1].loinc == "718-7"  # 2093-4: the check digit is wrong (2093-3)
    by_path = {c.path: c for c in corrections}
    kept = [p for p, c in by_path.items() if c.after is None]
    assert sorted(kept) == sorted(
        [
            "diagnoses[0].icd10gm",
            "tumors[0].icd10gm",
            "tumors[0].morphology",
            "procedures[0].ops",
            "medications[0].atc",
            "labs[0].loinc",
        ]
    )
    assert all(by_path[p].reason.startswith("kept: ") and by_path[p].before for p in kept)
    assert by_path["labs[1].loinc"].reason.startswith("LOINC check digit does not hold; ")
    assert why_ground(cat.ops, "ops", "5-48") is None and why_ground(cat.ops, "ops", "9-99") is not None


def test_a_code_is_never_replaced_by_a_parent_picked_from_ties(cat) -> None:
    code, _, reason = best_code(cat.ops, "Sigmaresektion", 90)
    assert code == "5-455.7" and reason.startswith("parent of tied: ")
    ex = ClinicalExtraction.model_validate({"procedures": [{"text": "Sigmaresektion", "ops": "9-999.9"}]})
    out, (c,) = ground(ex, cat, threshold=90)
    assert out.procedures[0].ops == "9-999.9" and c.after is None and c.before == "9-999.9"
    assert c.reason.startswith("category 9-999 unknown to the catalogue; parent of tied: ")
    assert c.reason.endswith("the parent 5-455.7 would be less specific, kept")


def test_weak_and_ambiguous_matches_are_left_alone_and_said(cat) -> None:
    code, score, reason = best_code(cat.loinc, "Leukozyten", 90)
    assert code is None and score == 100 and reason.startswith("ambiguous: ") and "6690-2" in reason
    code, score, reason = best_code(cat.icd10gm, "Kopfschmerz", 90)
    assert code is None and score is not None and score < 90 and reason.startswith("no match above 90")
    ex = ClinicalExtraction.model_validate({"diagnoses": [{"text": "Kopfschmerz", "icd10gm": "R51.9"}]})
    assert why_ground(cat.icd10gm, "icd10gm", "R51.9") == "category R51 unknown to the catalogue"
    out, corrections = ground(ex, cat, threshold=90)
    assert out.diagnoses[0].icd10gm == "R51.9" and corrections[0].after is None


def test_only_corrections_that_changed_a_code_are_counted(cat) -> None:
    ex = ClinicalExtraction.model_validate(
        {"diagnoses": [{"text": "COPD", "icd10gm": "J44.19"}, {"text": "Arterielle Hypertonie"}]}
    )
    doc = Doc("d1", "external", "letter")
    outcome = finish_outcome(doc, "rules", Parsed("ok", ex), "{}", tokens=None, seconds=0.0, catalog=cat)
    assert [c["after"] for c in outcome["corrections"]] == [None, "I10"]  # J44.19 kept, recorded
    stats = RunStats()
    stats.add(outcome["prediction"], outcome["corrections"])
    assert stats.summary()["grounding_corrections"] == 1


def test_nothing_to_ground_returns_the_same_extraction(cat) -> None:
    ex = ClinicalExtraction.model_validate({"diagnoses": [{"text": "Prostatakarzinom", "icd10gm": "C61"}]})
    out, corrections = ground(ex, cat)
    assert out is ex and corrections == []


TEXTS = {
    "icd10gm": ["Mammakarzinom links", "COPD", "Kopfschmerz", "Arterielle Hypertonie", "Rektumkarzinom",
                "Lebermetastasen", "Diabetes mellitus Typ 2", "Bösartige Neubildung", "xyz"],
    "ops": ["Sigmaresektion", "Portimplantation", "Chemotherapie", "Bestrahlung"],
    "atc": ["Pantoprazol", "Oxaliplatin", "Ondansetron", "Metformin", "Ramipril"],
    "loinc": ["Leukozyten", "Hämoglobin", "CEA", "Kreatinin"],
    "icdo3_morphology": ["Adenokarzinom", "Plattenepithelkarzinom", "Diffuses malignes"],
}  # fmt: skip


@pytest.mark.parametrize("table_name", sorted(TEXTS))
def test_the_index_ranks_the_top_as_the_catalogue_search_does(cat, table_name: str) -> None:
    """Pre-normalised names scored in rapidfuzz's C loops give the catalogue search's own scores for the
    best concept and its ties (the old 8-hit list could cut a tie group short: compared within it)."""
    table = getattr(cat, table_name)
    for text in TEXTS[table_name]:
        old = table.search(text, limit=8)
        new = search_index(table).search(text)
        top = old[0][1]
        assert new[0][1] == top, text
        old_tied = {c.code for c, s in old if s >= top - TIE}
        new_tied = {c.code for c, s in new if s >= top - TIE}
        assert old_tied <= new_tied and (len(old_tied) == len(new_tied) or len(old) == 8), text


def test_a_repeated_text_is_searched_once(cat) -> None:
    index = search_index(cat.atc)
    index.cache.clear()
    before = index.computed
    first = best_code(cat.atc, "Pantoprazol", 90)
    # the same text after normalisation (case, punctuation, blanks): answered from the cache
    assert best_code(cat.atc, "  PANTOPRAZOL. ", 90) == first == best_code(cat.atc, "pantoprazol", 90)
    assert index.computed == before + 1 and first[0] == "A02BC02"
    assert search_index(cat.atc) is index  # one index per table


def test_tfidf_maps_what_rapidfuzz_cannot_and_keeps_the_same_rules(cat) -> None:
    """extract.ground_method=tfidf: character n-grams meet an abbreviation or a shuffled title that
    rapidfuzz's token scores miss or tie; threshold, ties and the keep rules are grounding's own."""
    # a shuffled child title: rapidfuzz ties it with its parent (token sets), tfidf finds the child
    title = cat.icd10gm.lookup("C17.0").display
    shuffled = " ".join(reversed(title.split()))
    assert best_code(cat.icd10gm, shuffled, 90)[0] != "C17.0"
    assert best_code(cat.icd10gm, shuffled, DEFAULT_THRESHOLD["tfidf"], "tfidf")[:1] == ("C17.0",)
    ex = ClinicalExtraction.model_validate(
        {
            "diagnoses": [
                {"text": "art. Hypertonie"},  # abbreviated
                {"text": "COPD", "icd10gm": "J44.19"},  # a well-formed code of a known category: kept
                {"text": "Kopfschmerz"},  # nothing in the catalogue: below the threshold, left alone
            ],
            "medications": [{"name": "Pantoprazol", "atc": "Q02BC99"}],
        }
    )
    out, corrections = ground(ex, cat, method="tfidf")  # threshold None: the method's default
    assert [d.icd10gm for d in out.diagnoses] == ["I10", "J44.19", None]
    assert out.medications[0].atc == "A02BC02"
    by_path = {c.path: c for c in corrections}
    assert by_path["diagnoses[2].icd10gm"].reason.startswith(f"no match above {DEFAULT_THRESHOLD['tfidf']:g}")
    assert by_path["diagnoses[1].icd10gm"].reason.startswith("kept")
    assert search_index(cat.atc, "tfidf") is search_index(cat.atc, "tfidf")  # built once
    assert isinstance(search_index(cat.atc, "tfidf"), TfidfIndex)


def test_tfidf_scores_are_cosines_on_a_0_to_100_scale(cat) -> None:
    index = search_index(cat.atc, "tfidf")
    hits = index.search("Pantoprazol")
    assert hits[0][0].code == "A02BC02" and hits[0][1] == pytest.approx(100.0)  # the name itself
    assert all(0 < s <= 100 for _, s in hits) and [s for _, s in hits] == sorted(
        (s for _, s in hits), reverse=True
    )
    assert index.search("§§ §") == []  # no n-gram of any name: no evidence at all
    with pytest.raises(ValueError, match="unknown grounding method"):
        search_index(cat.atc, "embedding")  # type: ignore[arg-type]
