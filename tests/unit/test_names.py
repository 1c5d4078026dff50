"""The clinical-name lexicon: a name pins a code only at the level it expresses (gold follows the text)."""

from __future__ import annotations

import pytest

from clinsynth.terminology import load_catalog
from clinsynth.terminology._io import data_text, read_csv
from clinsynth.terminology.names import SYSTEMS, covers, lexicon, names_for, pinned_code


@pytest.mark.parametrize(
    ("system", "text", "code"),
    [
        ("icd10gm", "Harnblasenkarzinom", "C67"),  # the name does not say which wall
        ("icd10gm", "Bronchialkarzinom links", "C34"),  # laterality is no ICD axis
        ("icd10gm", "Bronchial-CA li.", "C34"),
        ("icd10gm", "Rektum-CA", "C20"),
        ("icd10gm", "Karzinom des Colon ascendens", "C18.2"),
        ("icd10gm", "Diabetes mellitus Typ 2", "E11"),
        ("icd10gm", "arterielle Hypertonie", "I10"),
        ("icd10gm", "Sepsis", "A41"),  # no ".9 nicht näher bezeichnet" from silence
        ("icd10gm", "C18.2", "C18.2"),  # a written code pins itself
        ("ops", "Hemikolektomie rechts", "5-455.4"),  # the name pins 5-455.4, which the catalogue holds
        ("ops", "Port-Implantation", "5-399.5"),
        ("ops", "laparoskopische Sigmaresektion mit Anastomose", "5-455.75"),
        ("morphology", "Adenokarzinom", "8140/3"),
        ("atc", "Pantozol", "A02BC02"),  # brand
        ("atc", "Pantoprazol", "A02BC02"),  # INN
        ("loinc", "Hb", "718-7"),
        ("loinc", "Kreatinin", "2160-0"),
        ("loinc", "RR systolisch", "8480-6"),  # vital signs: table `vitals`, short forms in clinical names
        ("loinc", "Puls", "8867-4"),
        ("loinc", "SpO2", "59408-5"),
    ],
)
def test_a_name_pins_the_code_it_expresses(system: str, text: str, code: str) -> None:
    assert pinned_code(system, text) == code


def test_what_a_name_does_not_pin() -> None:
    assert pinned_code("topography", "Rektum") is None  # topography only when written
    assert pinned_code("topography", "C20.9") == "C20.9"
    assert pinned_code("icd10gm", "Bösartige Neubildung: Colon ascendens") is None  # no catalogue titles
    assert pinned_code("ops", "Retropubisch") is None  # no OPS fragments
    assert pinned_code("ops", "tiefe anteriore Rektumresektion") == "5-484.5"  # parent level held
    # an ICD category title names its category (a fallback for codes without a clinical name)
    assert pinned_code("icd10gm", "Bösartige Neubildung des Gehirns") == "C71"
    assert pinned_code("icd10gm", "Sonstige Sepsis") is None  # a qualifier, not a name
    assert lexicon().fallback_name("icd10gm", "C71.9") == ("Bösartige Neubildung des Gehirns", "C71")
    with pytest.raises(ValueError, match="unknown code system"):
        pinned_code("snomed", "Appendektomie")


def test_names_for_lists_names_whose_code_covers_the_fact_most_specific_first() -> None:
    names = names_for("icd10gm", "C34.1")
    assert names[0][1] == "C34.1" and ("Bronchialkarzinom", "C34") in names
    assert all(covers("icd10gm", pinned, "C34.1") for _, pinned in names)
    assert all(pinned_code("icd10gm", n) == c for n, c in names)
    assert ("Hemikolektomie rechts", "5-455.4") in names_for("ops", "5-455.45")
    assert names_for("icd10gm", "E11.90")[0] == ("Diabetes mellitus Typ 2", "E11")


def test_every_row_is_a_clinical_name_with_a_well_formed_code() -> None:
    cat = load_catalog()
    tables = {
        "icd10gm": cat.icd10gm,
        "ops": cat.ops,
        "morphology": cat.icdo3_morphology,
        "atc": cat.atc,
        "loinc": cat.loinc,
    }
    lex = lexicon()
    rows = read_csv(data_text("clinical_names.csv"))
    assert len(rows) > 450
    for r in rows:
        assert r["system"] in SYSTEMS, r
        assert tables[r["system"]].pattern.fullmatch(r["code"]), r
        name = r["name"]
        assert ": " not in name and not name.startswith(("Ohne ", "Nicht ", "Sonstige ")), r
        held = lex.in_catalogue(r["system"], r["code"])
        # only OPS levels may be missing from the catalogue (its table lacks some parents)
        assert held is not None or r["system"] == "ops", r
        assert held is None or covers(r["system"], held, r["code"])
        assert pinned_code(r["system"], name) == held, r


def test_every_code_the_cohort_draws_has_a_clinical_name() -> None:
    cat = load_catalog()
    icd = {i for e in cat.entities for i, _ in e.icd} | {c.icd for c in cat.comorbidities}
    icd |= {m for e in cat.entities for m, _ in e.metastasis_sites}
    assert [c for c in icd if not names_for("icd10gm", c)] == []
    assert [m for e in cat.entities for m, _ in e.morphology if not names_for("morphology", m)] == []
    atc = {d.atc for r in cat.regimens.values() for d in r.drugs} | {s.atc for s in cat.supportive}
    atc |= {d.atc for c in cat.comorbidities for d in c.drugs}
    assert [a for a in atc if not names_for("atc", a)] == []
    assert [c.code for c in cat.ops if not lexicon().names_with_codes("ops", c.code)] == []
    assert {lab.name_de for code, lab in cat.labs.items() if not names_for("loinc", code)} <= {"Leukozyten"}
    vitals = [c.code for c in cat.loinc if c.extra.get("vital")]
    assert len(vitals) >= 8 and not set(vitals) & set(cat.labs)  # vitals never join lab sampling
    assert [v for v in vitals if not names_for("loinc", v)] == []
