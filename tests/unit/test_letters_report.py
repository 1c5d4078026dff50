"""The letters data report: every number checked against a value counted by hand on small
hand-written letters (our own sentences), and the development-letter aggregates against a fresh
count where ../shared is present."""

from __future__ import annotations

import importlib.util
import pickle
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from clinsynth.letters import features as feat
from clinsynth.letters import report as rep
from clinsynth.sampling.recipe import Recipe, RecipeFact

REPO = Path(__file__).resolve().parents[2]
GRASCCO = REPO.parent / "shared" / "external" / "grascco"

SECTIONS = [{"key": "diagnosen", "heading": "Diagnosen"}, {"key": "verlauf", "heading": "Verlauf"}]
#: a stand-in for the sampler's name -> code pinning, so the counts do not depend on its tables
PINS = {
    "Lebermetastasen": "C78.7",
    "Lungenmetastasen": "C78.0",
    "Lungenembolie": "I26.9",
    "Pneumonie": "J18.9",
    "Harnblasenkarzinom": "C67",
}


def fact(
    fid: str, kind: str, section: str, assertion: str, name: str, gold_code: str | None = None, **say: Any
):
    """A recipe fact: `gold_code` is gold's code, `say` what the letter writes (code=... as written)."""
    gold: dict[str, Any] = {"text" if kind in ("diagnosis", "procedure") else "name": name}
    if gold_code:
        gold["ops" if kind == "procedure" else "icd10gm"] = gold_code
    return RecipeFact(fid, kind, section, assertion, gold, {"name": name, **say})  # type: ignore[arg-type]


def recipe(sid: str, letter_type: str, facts: list[RecipeFact]) -> Recipe:
    return Recipe(
        spec_id=sid,
        patient_id="p-" + sid,
        encounter_id="e-" + sid,
        split="train",
        letter_type=letter_type,  # type: ignore[arg-type]
        header={"patient": "Erika Beispiel"},
        sections=SECTIONS,
        facts=facts,
        style={},
    )


# three letters; words counted by hand: 15, 12 and 12
L1 = (
    "Diagnosen\nMammakarzinom links (C50.4)\nArterielle Hypertonie (I10)\nVerlauf\n"
    "Kein Hinweis auf Lebermetastasen. Entlassung am 03.04.2024.\n"
)
L2 = (
    "Diagnosen\nHarnblasenkarzinom\nV.a. Pneumonie\nVerlauf\n"
    "Kein Hinweis auf Lungenmetastasen. Lungenembolie sonographisch ausgeschlossen.\n"
)
L3 = (
    "Diagnosen\nProstatakarzinom (C61)\nVerlauf\n"
    "Z.n. Hemikolektomie rechts. Bicalutamid 50 mg 1-0-0 (L02BB03).\n"
)


def letters() -> list[tuple[Recipe, str, dict[str, Any]]]:
    r1 = recipe(
        "s1",
        "Entlassungsbrief",
        [
            fact("d1", "diagnosis", "diagnosen", "present", "Mammakarzinom links", "C50.4", code="C50.4"),
            fact("d2", "diagnosis", "diagnosen", "present", "Arterielle Hypertonie", "I10", code="I10"),
            fact("d3", "diagnosis", "verlauf", "negated", "Lebermetastasen", "C78.7"),
        ],
    )
    r2 = recipe(
        "s2",
        "Entlassungsbrief",
        [
            fact("d4", "diagnosis", "diagnosen", "present", "Harnblasenkarzinom", "C67.2"),
            fact("d5", "diagnosis", "diagnosen", "suspected", "Pneumonie", "J18.9"),
            fact("d6", "diagnosis", "verlauf", "negated", "Lungenmetastasen", "C78.0"),
            fact("d7", "diagnosis", "verlauf", "negated", "Lungenembolie", "I26.9"),
        ],
    )
    r3 = recipe(
        "s3",
        "Kurzarztbrief",
        [
            fact("d8", "diagnosis", "diagnosen", "present", "Prostatakarzinom", "C61", code="C61"),
            fact("p1", "procedure", "verlauf", "historical", "Hemikolektomie rechts"),
            fact(
                "m1",
                "medication",
                "verlauf",
                "present",
                "Bicalutamid",
                dose="50",
                unit="mg",
                schedule="1-0-0",
            ),
        ],
    )
    return [(r1, L1, {"ok": True}), (r2, L2, {"ok": True}), (r3, L3, {"ok": False})]


@pytest.fixture(scope="module")
def counted() -> dict[str, Any]:
    """The report over the three letters, with the stand-in pinning and a development median of 12."""
    saved = rep.PINNED
    rep.PINNED = lambda system, name: PINS.get(name)
    try:
        acc = rep.LettersReport()
        for r, text, verdict in letters():
            acc.add(r, text, verdict)
        return acc.to_dict(
            {"letters": 6, "words": {"median": 12.0}, "feature_shares": {}, "written_codes": {}}
        )
    finally:
        rep.PINNED = saved


def _row(report: dict[str, Any], check: str) -> dict[str, Any]:
    return next(r for r in report["acceptance"] if r["check"] == check)


def test_quantiles_over_a_histogram_match_statistics_inclusive():
    values = [100, 200, 200, 300, 420, 420, 421]
    hist: dict[int, int] = {}
    for v in values:
        hist[v] = hist.get(v, 0) + 1
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    assert rep.quantile(hist, 0.25) == pytest.approx(q1)
    assert rep.quantile(hist, 0.5) == 300 == q2
    assert rep.quantile(hist, 0.75) == pytest.approx(q3)
    # by hand: 100, 200, 200, 300 -> median 200, q1 = 100 + 0.75 * 100, q3 = 200 + 0.25 * 100
    d = rep.distribution({100: 1, 200: 2, 300: 1})
    assert (d["median"], d["q1"], d["q3"], d["min"], d["max"], d["n"]) == (200, 175, 225, 100, 300, 4)
    assert rep.distribution({})["median"] is None


def test_text_features_and_written_codes_on_a_hand_written_letter():
    text = (
        "DIAGNOSEN\nMamma-CA li. ED 03/2024, pT2 pN1a (2/18) cM0 (C50.4) 8500/3\n"
        "Pat. in gutem AZ und EZ. V.a. Lebermetastasen, Sono-Abdomen o.B.\n"
        "Hb 10,2 g/dl\nLeukozyten 5,4 /nl\nKrea 1,1 mg/dl\n"
        "Letrozol 2,5 mg 1-0-0. CA 19-9 35 U/ml, Vitamin B12 normal, Tag 1-14, CTX geplant, v.a. abends.\n"
    )
    f = feat.features(text)
    for name in (
        "suspicion",
        "imaging",
        "tnm",
        "medication_schedule",
        "lab_values",
        "lab_table",
        "drug_dose",
        "first_diagnosis_ED",
        "abbr_AZ_EZ",
        "abbr_Pat",
        "abbr_Va",
        "abbr_oB",
        "abbr_side",
        "abbr_CA",
        "abbr_CTX_RTX",
        "uppercase_heading",
        "abbreviation_any",
        "code_icd10gm",
        "code_icdo3_morphology",
    ):
        assert f[name], name
    for name in ("negation", "history", "abbr_LK", "abbr_Zn", "radiotherapy_dose", "code_loinc", "code_ops"):
        assert not f[name], name
    # CA 19-9 is no LOINC code, Vitamin B12 no ICD code, "Tag 1-14" no OPS code
    assert feat.written_codes(text) == {"icd10gm": 1, "ops": 0, "atc": 0, "loinc": 0, "icdo3_morphology": 1}
    assert feat.written_codes("OPS 5-870.a2, L01XA03, LOINC 2160-0.") == {
        "icd10gm": 0,
        "ops": 1,
        "atc": 1,
        "loinc": 1,
        "icdo3_morphology": 0,
    }
    assert feat.word_count("Hb 10,2 g/dl - • Kein Fieber.") == 5
    assert list(f) == feat.feature_names()


def test_a_frame_masks_the_fact_other_facts_dates_and_digits():
    own = {"name": ["Lebermetastasen"], "date": ["03.04.2024"]}
    sentence = "  Kein Hinweis auf  Lebermetastasen oder Aszites (CT vom 03.04.2024, 2 Herde)."
    assert (
        rep.frame(sentence, own, ["Aszites"]) == "kein hinweis auf §name§ oder §f§ (ct vom §date§, 0 herde)."
    )
    assert rep.frame("2. Lebermetastasen (ED 7.6.23)", own) == "§name§ (ed §date§)"  # list number dropped
    # the fact's own name inside another fact's longer name stays the fact's
    assert rep.frame(
        "Mammakarzinom links, ED 2023", {"entity": ["Mammakarzinom"]}, ["Mammakarzinom links"]
    ) == ("§entity§ links, ed 0")
    # a string that is both the fact's and another's counts as the fact's; other dates -> §date§
    assert rep.frame("Hb 10,2 g/dl am 7. Juni 2023", {"name": ["Hb"], "unit": ["g/dl"]}, ["g/dl"]) == (
        "§name§ 0 §unit§ am §date§"
    )


def test_a_list_frame_is_the_item_with_its_neighbours_collapsed():
    text = "Befunde\nLabor: Hb 10,2 g/dl · Kalium 4,1 mmol/l · Natrium 140 mmol/l\n"
    labs = [
        fact("hb", "lab", "befunde", "present", "Hb", value="10,2", unit="g/dl"),
        fact("k", "lab", "befunde", "present", "Kalium", value="4,1", unit="mmol/l"),
        fact("na", "lab", "befunde", "present", "Natrium", value="140", unit="mmol/l"),
    ]
    acc = rep.LettersReport()
    acc.add(recipe("s", "Arztbrief", labs), text)
    frames = acc.to_dict()["frames"]["lab"]["present"]["top"]
    # Natrium's "mmol/l" is not Kalium's unit: its own values count only in its own list item
    assert sorted(f["frame"] for f in frames) == [
        "labor: §f§… · §name§ 0 §unit§",
        "labor: §f§… · §name§ 0 §unit§ · §f§…",
        "labor: §name§ 0 §unit§ · §f§…",
    ]
    assert (
        rep._collapse_others("vp: §f§ 0 §f§, §f§ 0 §f§, §name§ 0 °c, §f§: 0 kg")
        == "vp: §f§…, §name§ 0 °c, §f§…"
    )


def test_words_per_letter_type(counted):
    ent = counted["words_by_letter_type"]["Entlassungsbrief"]
    assert (ent["n"], ent["median"], ent["q1"], ent["q3"]) == (2, 13.5, 12.75, 14.25)
    assert counted["words_by_letter_type"]["Kurzarztbrief"]["median"] == 12
    assert counted["text"]["words"]["median"] == 12  # 15, 12, 12
    row = _row(counted, "median words, Entlassungsbrief vs development letters")
    assert row["ratio"] == 1.125 and row["met"] is True  # 13.5 / 12 within ± 25 %
    assert not any("Arztbrief," in r["check"] for r in counted["acceptance"])  # no such letters


def test_facts_per_kind_and_assertion_and_missing_cells(counted):
    assert counted["facts"]["diagnosis"] == {"present": 4, "negated": 3, "historical": 0, "suspected": 1}
    assert counted["facts"]["procedure"]["historical"] == 1
    assert counted["facts"]["medication"]["present"] == 1
    row = _row(counted, "every fact kind with every assertion that applies")
    assert row["met"] is False and "diagnosis/historical" in row["value"]
    # diagnosis present/negated/suspected, procedure/historical, medication/present of 4+4+3+3+3+2+1+3
    assert row["value"].startswith("5 of 23 cells")


def test_distinct_frames_per_kind_and_assertion(counted):
    neg = counted["frames"]["diagnosis"]["negated"]
    # "Kein Hinweis auf <X>." twice, "<X> sonographisch ausgeschlossen." once
    assert (neg["facts"], neg["distinct"], neg["top_share"]) == (3, 2, 0.6667)
    assert neg["top"][0] == {"frame": "kein hinweis auf §name§", "facts": 2}
    present = counted["frames"]["diagnosis"]["present"]
    assert (present["distinct"], present["top"][0]) == (2, {"frame": "§name§ (§code§)", "facts": 3})
    assert counted["frames"]["diagnosis"]["suspected"]["top"][0]["frame"] == "v.a. §name§"
    med = counted["frames"]["medication"]["present"]["top"][0]["frame"]
    assert med == "§name§ 0 mg 0-0-0 (l0bb0)"  # numbers, "mg" and the scheme are left to the digit rule
    row = _row(counted, "distinct frames of negated diagnoses")
    assert (row["value"], row["met"]) == (2, False)


def test_section_alone_predicts_assertion_against_the_majority_class(counted):
    spa = counted["section_predicts_assertion"]
    diag = spa["by_kind"]["diagnosis"]
    # Diagnosen: 4 present + 1 suspected -> 4 right; Verlauf: 3 negated -> 3 right; 7 of 8
    assert (diag["section_rule_accuracy"], diag["majority_rate"], diag["majority"]) == (0.875, 0.5, "present")
    assert diag["rule"] == {"diagnosen": "present", "verlauf": "negated"}
    # all 10 facts: Diagnosen 4 of 5, Verlauf 3 of 5 (negated 3, historical 1, present 1); majority 5 of 10
    assert (spa["overall"]["section_rule_accuracy"], spa["overall"]["majority_rate"]) == (0.7, 0.5)
    assert _row(counted, "section alone predicts assertion (diagnosis)")["met"] is False
    assert _row(counted, "section alone predicts assertion (overall)")["met"] is False
    assert _row(counted, "section alone predicts assertion (medication)")["met"] is True  # 1 of 1 both ways
    assert rep.section_rule({("a", "present"): 6, ("b", "negated"): 1, ("b", "present"): 3})[
        "section_rule_accuracy"
    ] == pytest.approx(0.9)


def test_gold_codes_against_the_written_or_pinned_code(counted):
    by = counted["gold_code_specificity"]["by_field"]
    # written: C50.4, I10, C61 (ok); pinned: C78.7, J18.9, C78.0, I26.9 (ok);
    # pinned C67 for gold C67.2 (more specific)
    assert by == {"diagnosis.icd10gm": {"ok": 7, "more_specific": 1}}
    ex = counted["gold_code_specificity"]["examples"]
    assert [(e["fact"], e["gold"], e["supported"], e["source"]) for e in ex] == [
        ("d4", "C67.2", "C67", "pinned")
    ]
    row = _row(counted, "gold codes more specific than their text")
    assert (row["value"], row["met"]) == (1, False)


def test_without_pinning_unwritten_codes_are_unchecked_not_passed(monkeypatch):
    monkeypatch.setattr(rep, "PINNED", None)
    acc = rep.LettersReport()
    for r, text, verdict in letters():
        acc.add(r, text, verdict)
    out = acc.to_dict()
    assert out["gold_code_specificity"]["by_field"] == {"diagnosis.icd10gm": {"ok": 3, "unchecked": 5}}
    row = _row(out, "gold codes more specific than their text")
    assert (row["value"], row["unchecked"], row["met"]) == (0, 5, None)
    assert out["dev_letters"] is None
    assert not any(r["check"].startswith("median words") and r["met"] for r in out["acceptance"])
    # a written code more specific than gold's is less specific gold (allowed), another code differs
    f = fact("x", "diagnosis", "diagnosen", "present", "Hypertonie", "I10", code="I10.90")
    assert rep.code_support(f, "Hypertonie (I10.90)")[0]["outcome"] == "less_specific"
    f = fact("x", "diagnosis", "diagnosen", "present", "Hypertonie", "I11", code="I10")
    assert rep.code_support(f, "Hypertonie (I10)")[0]["outcome"] == "differs"
    monkeypatch.setattr(rep, "PINNED", lambda system, name: PINS.get(name))
    f = fact("x", "procedure", "verlauf", "present", "nicht komplexe Chemotherapie", "8-54")
    assert rep.code_support(f, "nicht komplexe Chemotherapie")[0]["outcome"] == "unpinned"


@pytest.mark.skipif(rep._load_pinning() is None, reason="clinsynth.terminology.names.pinned_code absent")
def test_gold_codes_against_the_sampler_pinning(monkeypatch):
    monkeypatch.setattr(rep, "PINNED", rep._load_pinning())
    f = fact("b", "diagnosis", "diagnosen", "present", "Harnblasenkarzinom", "C67.2")
    assert rep.code_support(f, "Harnblasenkarzinom")[0] == {
        "field": "icd10gm",
        "gold": "C67.2",
        "supported": "C67",
        "source": "pinned",
        "outcome": "more_specific",
    }
    tumor = RecipeFact(
        "t",
        "tumor",
        "diagnosen",
        "present",
        {"entity": "Lungenkrebs", "icd10gm": "C34", "topography": "C34.1", "morphology": "8140/3"},
        {"entity": "Lungenkrebs", "laterality": "links", "histology": "Adenokarzinom"},
    )
    checks = {c["field"]: c["outcome"] for c in rep.code_support(tumor, "Lungenkrebs links, Adenokarzinom")}
    # the topography is never pinned by a name: gold holds it though the letter does not write it
    assert checks == {"icd10gm": "ok", "topography": "unpinned", "morphology": "ok"}
    written = rep.code_support(tumor, "Lungenkrebs links (C34.1), Adenokarzinom")
    assert {c["field"]: c["outcome"] for c in written}["topography"] == "ok"  # written, if not said so


def test_written_codes_atc_loinc_and_verdicts(counted):
    assert counted["text"]["written_codes"] == {
        "icd10gm": 3,
        "ops": 0,
        "atc": 1,
        "loinc": 0,
        "icdo3_morphology": 0,
    }
    assert (
        counted["text"]["feature_letters"]["negation"] == 2
        and counted["text"]["feature_shares"]["negation"] == 0.6667
    )
    assert counted["text"]["feature_letters"]["abbr_Zn"] == 1
    row = _row(counted, "ATC/LOINC codes in letter text")
    assert (row["value"], row["met"]) == (1, False)
    assert counted["verified"] == {"letters": 3, "passed": 2}
    assert counted["letters"] == 3 and counted["letters_not_counted"]["letters"] == 0


def test_facts_sit_where_the_verifier_bound_them():
    text = (
        "Diagnosen\nLebermetastasen (C78.7)\nVerlauf\n"
        "Sonographisch keine Lebermetastasen.\nLebermetastasen stabil.\n"
    )
    neg = fact("n", "diagnosis", "verlauf", "negated", "Lebermetastasen")
    missing = fact("m", "lab", "verlauf", "present", "Kreatinin")
    r = recipe("s", "Arztbrief", [neg, missing])
    # without spans in the verdict the verifier's binder places them: the negated fact on its cue
    spans = rep.bindings(r, text)
    s, e = spans["n"][2], spans["n"][3]
    assert text[s:e].strip() == "Sonographisch keine Lebermetastasen" and spans["n"][4] == "verlauf"
    assert spans["m"][0] == -1
    acc = rep.LettersReport()
    acc.add(r, text)
    out = acc.to_dict()
    assert out["facts_not_located"] == {"lab": 1} and out["facts"]["lab"]["present"] == 1
    assert out["frames"]["diagnosis"]["negated"]["top"][0]["frame"] == "sonographisch keine §name§"
    assert out["verified"] == {"letters": 0, "passed": 0}
    # spans stored in the verdict are used as they are (here: the list line, found in "diagnosen")
    line = text.index("Lebermetastasen (C78.7)")
    stored = {"n": [line, line + 15, line, line + 23, "diagnosen", None], "m": [-1, -1, -1, -1, None, None]}
    acc = rep.LettersReport()
    acc.add(r, text, {"ok": False, "spans": stored})
    out = acc.to_dict()
    assert out["frames"]["diagnosis"]["negated"]["top"][0]["frame"] == "§name§ (c0)"
    assert out["section_predicts_assertion"]["by_kind"]["diagnosis"]["rule"] == {"diagnosen": "negated"}
    assert out["verified"] == {"letters": 1, "passed": 0}


def test_frames_are_capped_and_a_bad_record_is_reported_not_fatal():
    fc = rep.FrameCounter(cap=3)
    for fr in ["a", "b", "a", "c", "d", "e", "a"]:
        fc.add(fr)
    s = fc.summary()
    assert (s["facts"], s["distinct"], s["at_least"], s["top"][0]) == (7, 3, True, {"frame": "a", "facts": 3})
    acc = rep.LettersReport()
    broken = recipe("bad", "Arztbrief", [fact("x", "diagnosis", "diagnosen", "present", "X")])
    broken.facts[0].say = None
    acc.add(broken, "Diagnosen\nX\n")
    r, text, verdict = letters()[0]
    acc.add(r, text, verdict)
    out = acc.to_dict()
    assert out["letters_not_counted"]["letters"] == 1
    assert out["letters_not_counted"]["errors"][0].startswith("bad: ")
    assert out["facts"]["diagnosis"]["present"] == 2  # the good letter still counts


def test_frames_come_from_the_first_letters_then_every_nth():
    acc = rep.LettersReport(frames_all=1, frames_stride=2)
    for r, text, verdict in letters():
        acc.add(r, text, verdict)
    out = acc.to_dict()
    # letter 0 (the first 1), then letters 1, 3, 5 ... (every 2nd after them): s3 is not framed
    assert out["frames_counted_on_letters"] == 2
    assert out["frames"]["diagnosis"]["negated"]["facts"] == 3 and out["frames"]["medication"] == {}
    assert out["facts"]["medication"]["present"] == 1  # counts and codes come from every letter
    assert out["text"]["written_codes"]["atc"] == 1 and out["text"]["words"]["n"] == 3
    # style features like frames: s1 (negation, no suspicion) and s2 (negation, suspicion)
    assert out["text"]["features_counted_on_letters"] == 2
    assert (
        out["text"]["feature_letters"]["negation"] == 2 and out["text"]["feature_shares"]["suspicion"] == 0.5
    )


def test_letters_measured_elsewhere_count_the_same(counted):
    """A verifier worker may measure a letter (plain, picklable data) and the stage count it."""
    saved = rep.PINNED
    rep.PINNED = lambda system, name: PINS.get(name)
    try:
        acc = rep.LettersReport()
        for i, (r, text, verdict) in enumerate(letters()):
            m = pickle.loads(pickle.dumps(rep.measure_letter(r, text, verdict, framed=acc.framed(i))))
            acc.add_measured(m)
        out = acc.to_dict(
            {"letters": 6, "words": {"median": 12.0}, "feature_shares": {}, "written_codes": {}}
        )
    finally:
        rep.PINNED = saved
    assert out == counted


def test_write_report_writes_json_and_a_readable_summary(tmp_path, counted):
    acc = rep.LettersReport()
    for r, text, verdict in letters():
        acc.add(r, text, verdict)
    out = rep.write_report(tmp_path, acc)
    assert orjson.loads((tmp_path / rep.REPORT_JSON).read_bytes()) == orjson.loads(orjson.dumps(out))
    md = (tmp_path / rep.REPORT_MD).read_text()
    assert "| distinct frames of negated diagnoses | 2 | ≥ 50 | **no** |" in md
    assert "| ATC/LOINC codes in letter text | 1 | 0 | **no** |" in md
    assert "| diagnosis | 4 (2; 75.0 %) | 3 (2; 66.7 %) | – | 1 (1; 100.0 %) |" in md
    assert "| diagnosis | 8 | 87.5 % | 50.0 % (present) | +37.5 pt |" in md
    dev = rep.load_dev_stats()
    assert dev is not None and out["dev_letters"] == dev  # the committed development aggregates
    assert f"| development letters ({dev['letters']}) |" in md
    share = dev["feature_shares"]["abbreviation_any"]
    assert f"| abbreviation_any | 66.7 % | {100 * share:.1f} % |" in md


def test_committed_dev_letter_stats_are_aggregates_only():
    dev = rep.load_dev_stats()
    assert dev is not None, f"{rep.DEV_STATS} missing: run benchmarks/dev_letter_stats.py"
    assert dev["letters"] == 6 and dev["words"]["n"] == 6
    assert set(dev["feature_shares"]) == set(feat.feature_names())
    assert set(dev) == {
        "letters",
        "words",
        "features_counted_on_letters",
        "feature_letters",
        "feature_shares",
        "written_codes",
        "source",
        "sha256",
    }
    # nothing but numbers, names and hashes: no string longer than a citation, no text of a letter
    strings = [v for v in orjson.loads(rep.DEV_STATS.read_bytes())["sha256"].values()]
    assert all(len(s) == 64 for s in strings)


@pytest.mark.skipif(not (GRASCCO / "Meyr.txt").is_file(), reason=f"development letters not at {GRASCCO}")
def test_committed_dev_letter_stats_equal_a_fresh_count():
    spec = importlib.util.spec_from_file_location(
        "dev_letter_stats", REPO / "benchmarks" / "dev_letter_stats.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["dev_letter_stats"] = module
    spec.loader.exec_module(module)
    fresh = orjson.loads(orjson.dumps(module.compute(GRASCCO)))
    assert fresh == rep.load_dev_stats(), "re-run: python benchmarks/dev_letter_stats.py"


def test_position_in_the_diagnosis_list_against_the_majority_class():
    one = recipe(
        "p1",
        "Entlassungsbrief",
        [
            fact("a", "diagnosis", "diagnosen", "present", "Kolonkarzinom", "C18.7", code="C18.7"),
            fact("b", "diagnosis", "diagnosen", "present", "Arterielle Hypertonie", "I10", code="I10"),
            fact("c", "diagnosis", "diagnosen", "suspected", "Pneumonie", "J18.9"),
            fact("d", "diagnosis", "verlauf", "negated", "Lungenembolie", "I26.9"),
        ],
    )
    two = recipe(
        "p2",
        "Entlassungsbrief",
        [
            fact("a", "diagnosis", "diagnosen", "present", "Mammakarzinom", "C50.4", code="C50.4"),
            fact("b", "procedure", "diagnosen", "historical", "Appendektomie"),
            fact("c", "diagnosis", "diagnosen", "present", "Diabetes mellitus Typ 2", "E11.9", code="E11.9"),
        ],
    )
    t1 = (
        "Diagnosen:\n1. Kolonkarzinom (C18.7)\n2. Arterielle Hypertonie (I10)\n3. V.a. Pneumonie\n\n"
        "Verlauf:\nKein Hinweis auf Lungenembolie.\n"
    )
    t2 = "Diagnosen:\n1. Mammakarzinom (C50.4)\n2. Z.n. Appendektomie\n3. Diabetes mellitus Typ 2 (E11.9)\n"
    acc = rep.LettersReport()
    acc.add(one, t1)
    acc.add(two, t2)
    out = acc.to_dict()
    pos = out["position_predicts_assertion"]
    # first: present 2; middle: present 1, historical 1; last: suspected 1, present 1 -> 4 of 6 right,
    # the same as always "present" (4 of 6): no shortcut here
    assert pos["by_position"] == {
        "first": {"present": 2},
        "middle": {"historical": 1, "present": 1},
        "last": {"present": 1, "suspected": 1},
    }
    assert (pos["facts"], pos["position_rule_accuracy"], pos["majority_rate"]) == (6, 0.6667, 0.6667)
    # both lists mix assertions; only the first puts its non-present item after every present one
    assert (pos["mixed_lists"], pos["non_present_all_after_present"], pos["non_present_last_rate"]) == (
        2,
        1,
        0.5,
    )
    assert _row(out, "position in the diagnosis list predicts assertion")["met"] is True
    md = rep.render_markdown(out)
    assert "## Does the position in the diagnosis list predict the assertion?" in md
    assert "every non-present item after every present one in 1 (50.0 %)" in md
    # a list where position decides: non-present always last
    skewed = rep.position_rule({("first", "present"): 10, ("last", "negated"): 10}, 10, 10)
    assert (skewed["position_rule_accuracy"], skewed["majority_rate"]) == (1.0, 0.5)
    assert [rep.position_bucket(i, 3) for i in range(3)] == ["first", "middle", "last"]
    assert rep.position_bucket(0, 1) == "first"
