"""The curated terminology: lookups, codability, hierarchy, search, entity consistency, notices."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from clinsynth.terminology import Concept, Entity, load_catalog
from clinsynth.terminology._io import data_dir, data_text, header_comments, load_manifest, notice_lines

BFARM = (
    "„Die Erstellung erfolgt unter Verwendung der maschinenlesbaren Fassung des Bundesinstituts "
    "für Arzneimittel und Medizinprodukte (BfArM).“"
)
LOINC_NOTICE = "This material contains content from LOINC (http://loinc.org)."
RKI_CITATION = "DOI: 10.5281/zenodo.10022040"
ICDO3_NOTICE = "ICD-O-3-Kodes, -Begriffe und -Texte © Bundesinstitut für Arzneimittel und Medizinprodukte"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"  # ../shared beside the checkout


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def tnm_entities() -> list[Entity]:
    return [e for e in load_catalog().entities if e.has_tnm]


# ---------------------------------------------------------------- loading, systems


def test_catalog_is_cached_and_consistent(cat) -> None:
    assert load_catalog() is cat
    assert cat.problems() == []


def test_systems_and_versions(cat) -> None:
    assert cat.icd10gm.system == "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
    assert cat.icd10gm.version == "2022"
    assert cat.icdo3_topography.system == cat.icdo3_morphology.system == "urn:oid:2.16.840.1.113883.6.43.1"
    assert cat.ops.system == "http://fhir.de/CodeSystem/bfarm/ops"
    assert cat.atc.system == "http://fhir.de/CodeSystem/bfarm/atc"
    assert cat.loinc.system == "http://loinc.org"
    for table in (cat.icd10gm, cat.icdo3_topography, cat.icdo3_morphology, cat.ops, cat.atc, cat.loinc):
        assert len(table) == len(list(table)) > 0
        assert all(c.system == table.system for c in table)


# ---------------------------------------------------------------- lookup and validation


def test_lookup(cat) -> None:
    c = cat.icd10gm.lookup("C34.1")
    assert c is not None and c.code == "C34.1"
    assert c.display == "Bösartige Neubildung der Bronchien und der Lunge: Oberlappen (-Bronchus)"
    assert c.extra["title"] == "Oberlappen (-Bronchus)"  # the official level title, unchanged
    assert cat.icd10gm.lookup(" c20 ").display == "Bösartige Neubildung des Rektums"
    e1190 = cat.icd10gm.lookup("E11.90").display
    assert e1190 == "Diabetes mellitus, Typ 2: Ohne Komplikationen: Nicht als entgleist bezeichnet"
    assert cat.icd10gm.lookup("X99.9") is None
    assert cat.atc.lookup("L01XA03").display == "Oxaliplatin"
    assert cat.loinc.lookup("2039-6").display == "CEA"
    assert cat.icdo3_morphology.lookup("8140/3").display == "Adenokarzinom o.n.A."
    assert cat.icdo3_topography.lookup("C50.4").extra["paired"] is True
    assert cat.ops.lookup("5-484.52").verified is True
    assert "C20" in cat.icd10gm and "X99" not in cat.icd10gm and 42 not in cat.icd10gm


def test_concept_is_frozen_and_hashable(cat) -> None:
    c = cat.icd10gm.lookup("C20")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.code = "C21"  # type: ignore[misc]
    assert {c, cat.icd10gm.lookup("C20")} == {c}
    assert Concept("A", "a", "s") == Concept("A", "a", "s")


def test_validate_icd_requires_terminal_codes(cat) -> None:
    icd = cat.icd10gm
    assert "E11.9" in icd and icd.pattern.fullmatch("E11.9")
    assert not icd.validate("E11.9")  # exists, but has children E11.90/E11.91: not codable in GM
    assert icd.validate("E11.90") and icd.validate("E11.91")
    assert not icd.validate("E11.99")  # well formed, not in the catalogue
    assert not icd.validate("E1190") and not icd.pattern.fullmatch("E1190")
    assert not icd.validate("C34") and icd.validate("C34.1") and icd.validate("C20")
    for code in ("I10", "I25.1", "J44.9", "D70", "C90.0", "C92.0", "C91.1", "C79.8"):
        assert not icd.validate(code), code
    for code in ("I10.00", "I48.9", "C90.00", "C92.00", "C91.10", "C79.5", "Z51.1"):
        assert icd.validate(code), code


def test_icd_terminal_flag_matches_the_definition(cat) -> None:
    """Every subtree is complete, so 'no longer code starts with it' can be checked inside the table."""
    codes = cat.icd10gm.codes()
    for c in cat.icd10gm:
        has_child = any(other != c.code and other.startswith(c.code) for other in codes)
        assert c.extra["terminal"] is (not has_child), c.code


def test_validate_other_tables(cat) -> None:
    assert cat.icdo3_topography.validate("C34.1") and not cat.icdo3_topography.validate("C34")
    assert cat.icdo3_morphology.validate("8140/3") and not cat.icdo3_morphology.validate("8140-3")
    assert not cat.icdo3_morphology.validate("8140/0")  # benign codes are not in the subset
    assert cat.ops.validate("5-484.55") and not cat.ops.validate("5-484.99")
    assert cat.ops.pattern.fullmatch("5-484.99") and not cat.ops.pattern.fullmatch("5484.55")
    assert cat.atc.validate("L01XA03") and not cat.atc.validate("L01XA")
    assert cat.atc.pattern.fullmatch("L01XA") and not cat.atc.pattern.fullmatch("L1XA03")
    assert cat.loinc.validate("2039-6") and not cat.loinc.validate("2039-7")
    assert not cat.loinc.pattern.fullmatch("2039")


# ---------------------------------------------------------------- hierarchy


def test_levels(cat) -> None:
    assert cat.icd10gm.level("C34.1", 3) == "C34"
    assert cat.icd10gm.level("C34.1", 4) == "C34.1"
    assert cat.icd10gm.level("E11.90", 4) == "E11.9"
    assert cat.icd10gm.level("E11.90", 5) == "E11.90"
    assert cat.ops.level("5-484.55", 1) == "5"
    assert cat.ops.level("5-484.55", 3) == "5-48"
    assert cat.ops.level("5-484.55", 4) == "5-484"
    assert cat.ops.level("5-484.55", 5) == "5-484.5"
    assert cat.ops.level("5-484.55", 6) == "5-484.55"
    assert cat.ops.level("8-98e", 4) == "8-98e"
    assert [cat.atc.level("L01XA03", n) for n in range(1, 6)] == ["L", "L01", "L01X", "L01XA", "L01XA03"]
    assert cat.icdo3_topography.level("C34.1", 3) == "C34"
    assert cat.icdo3_morphology.level("8140/3", 4) == "8140"
    with pytest.raises(ValueError):
        cat.icd10gm.level("C34", 4)
    with pytest.raises(ValueError):
        cat.ops.level("5-484", 5)
    with pytest.raises(ValueError):
        cat.atc.level("L01XA03", 6)
    with pytest.raises(ValueError):
        cat.loinc.level("2039-6", 1)
    with pytest.raises(ValueError):
        cat.icd10gm.level("not a code", 3)


# ---------------------------------------------------------------- search


def test_search_finds_german_titles(cat) -> None:
    hits = cat.icd10gm.search("Rektumkarzinom")
    assert hits[0][0].code == "C20"
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(hits) == 5 and len({c.code for c, _ in hits}) == 5
    assert "C20" in [c.code for c, _ in cat.icd10gm.search("Karzinom des Rektums", limit=3)]
    assert cat.icd10gm.search("Bösartige Neubildung des Rektums", limit=1)[0][0].code == "C20"
    assert cat.icd10gm.search("Neubildung Lunge Oberlappen", limit=1)[0][0].code == "C34.1"
    assert cat.atc.search("Oxaliplatin", limit=1)[0] == (cat.atc.lookup("L01XA03"), 100.0)
    assert cat.ops.search("tiefe anteriore Rektumresektion laparoskopisch", limit=1)[0][0].code == "5-484.55"
    assert cat.icdo3_morphology.search("Adenokarzinom", limit=1)[0][0].code == "8140/3"
    assert len(cat.loinc.search("Hämoglobin", limit=2)) == 2


# ---------------------------------------------------------------- entities


def test_entity_set(cat) -> None:
    keys = [e.key for e in cat.entities]
    assert 15 <= len(keys) <= 25 and len(set(keys)) == len(keys)
    for key in (
        "lung",
        "colon",
        "rectum",
        "breast",
        "prostate",
        "pancreas",
        "stomach",
        "bladder",
        "dlbcl",
        "aml",
        "head_neck",
        "kidney",
        "ovary",
        "oesophagus",
        "liver",
        "melanoma",
    ):
        assert key in keys
    assert cat.entity("lung").weight == max(e.weight for e in cat.entities)  # inpatient mix, not incidence
    with pytest.raises(KeyError):
        cat.entity("nope")


@pytest.mark.parametrize("entity", load_catalog().entities, ids=lambda e: e.key)
def test_every_entity_code_validates(cat, entity: Entity) -> None:
    for pairs in (entity.icd, entity.topography, entity.morphology, entity.grading):
        assert pairs and all(w > 0 for _, w in pairs)
    assert all(w > 0 for _, w in entity.stage_weights) and bool(entity.stage_weights) == bool(entity.staging)
    for code, _ in entity.icd:
        assert cat.icd10gm.validate(code) and "C00" <= code[:3] <= "D48", code
        assert cat.icd10gm.lookup(code).extra["terminal"]
    for code, _ in entity.topography:
        assert cat.icdo3_topography.validate(code), code
    for code, _ in entity.morphology:
        assert cat.icdo3_morphology.validate(code) and code.endswith("/3"), code
    for value, _ in entity.grading:
        assert value in cat.value_sets["G"]
    for code, _ in entity.metastasis_sites:
        assert cat.icd10gm.validate(code) and "C77" <= code[:3] <= "C79", code
    for code, _ in entity.surgeries:
        assert cat.ops.validate(code) and cat.ops.lookup(code).extra["kind"] == "surgery", code
    for key in entity.regimens:
        for drug in cat.regimens[key].drugs:
            assert cat.atc.validate(drug.atc), (key, drug.atc)
    for loinc in entity.markers:
        assert cat.loinc.validate(loinc) and loinc in cat.labs
    assert entity.age_min <= entity.age_mean <= entity.age_max and entity.age_sd > 0


def test_sex_restrictions(cat) -> None:
    assert cat.entity("prostate").sex == "male"
    for key in ("breast", "ovary", "endometrium"):
        assert cat.entity(key).sex == "female"
    for e in cat.entities:
        blocks = {code[:3] for code, _ in e.icd}
        if blocks & {"C51", "C52", "C53", "C54", "C55", "C56", "C57", "C58"}:
            assert e.sex == "female", e.key
        if blocks & {"C60", "C61", "C62", "C63"}:
            assert e.sex == "male", e.key
        assert e.male_share == {"female": 0.0, "male": 1.0}.get(e.sex, e.male_share)
        assert 0.0 < e.male_share < 1.0 or e.sex != "any"


# ICD-O-3 terms name a typical site ("C50.-"); these uses elsewhere are standard (ductal adenocarcinoma
# of pancreas and prostate, serous carcinoma of the endometrium).
SITE_HINT_EXCEPTIONS = {("pancreas", "8500/3"), ("prostate", "8500/3"), ("endometrium", "8441/3")}


@pytest.mark.parametrize("entity", load_catalog().entities, ids=lambda e: e.key)
def test_morphology_fits_the_site(cat, entity: Entity) -> None:
    sites = {code[:3] for code, _ in entity.topography}
    for code, _ in entity.morphology:
        hinted = set(re.findall(r"\b(C\d\d)\.", cat.icdo3_morphology.lookup(code).display))
        if hinted and (entity.key, code) not in SITE_HINT_EXCEPTIONS:
            assert hinted & sites, (entity.key, code, hinted, sites)
    breast = {code for code, _ in cat.entity("breast").morphology}
    assert breast >= {"8500/3", "8520/3"} and not breast & {"8070/3", "9680/3", "8720/3"}


def test_paired_organs_and_consistent_topography(cat) -> None:
    for key in ("lung", "breast", "kidney", "ovary"):
        assert cat.entity(key).paired_organ, key
    for key in ("colon", "rectum", "prostate", "pancreas", "bladder", "dlbcl"):
        assert not cat.entity(key).paired_organ, key
    rng = random.Random(0)
    for e in cat.entities:
        for icd, _ in e.icd:
            topo = e.topography_for(icd, rng)
            assert topo in dict(e.topography)
            if e.has_tnm:  # haematological: node region / bone marrow is drawn, not implied by the ICD
                assert topo[:3] == icd[:3] or e.icd_topography, (e.key, icd, topo)
            assert e.morphology_for(icd, rng) in dict(e.morphology)
    assert cat.entity("rectum").topography_for("C20", rng) == "C20.9"
    assert cat.entity("melanoma").topography_for("C43.6", rng) == "C44.6"
    assert cat.entity("hodgkin").morphology_for("C81.1", rng) == "9663/3"


# ---------------------------------------------------------------- staging


@pytest.mark.parametrize("entity", tnm_entities(), ids=lambda e: e.key)
def test_tnm_for_stage_round_trips(cat, entity: Entity) -> None:
    rng = random.Random(entity.key)
    for stage, _ in entity.stage_weights:
        assert stage in cat.value_sets["UICC"]
        for _ in range(30):
            t, n, m = entity.tnm_for_stage(stage, rng)
            assert t.startswith("T") and n.startswith("N") and m.startswith("M")
            for value, axis in ((t, "T"), (n, "N"), (m, "M")):
                assert value[1:] in cat.value_sets[axis]
            assert cat.stage_group(entity.key, t, n, m) == stage
            assert entity.stage_group("p" + t, "c" + n, m[1:]) == stage  # written forms are accepted
        assert all(entity.stage_group(*tnm) == stage for tnm in entity.tnm_combinations(stage))


@pytest.mark.parametrize("entity", tnm_entities(), ids=lambda e: e.key)
def test_stage_rules_cover_every_tnm(entity: Entity) -> None:
    """Every combination of the entity's T, N, M values has exactly one stage; M1 is always stage IV."""
    for t in entity.tnm_values["T"]:
        for n in entity.tnm_values["N"]:
            for m in entity.tnm_values["M"]:
                stage = entity.stage_group(t, n, m)
                assert stage.startswith("IV") == m.startswith("1") or stage.startswith("IV"), (t, n, m, stage)


def test_stage_group_examples(cat) -> None:
    assert cat.stage_group("colon", "T3", "N0", "M0") == "IIA"
    assert cat.stage_group("colon", "pT4b", "pN1a", "cM0") == "IIIC"
    assert cat.stage_group("rectum", "T2", "N2b", "M0") == "IIIB"
    assert cat.stage_group("lung", "T1c", "N0", "M0") == "IA3"
    assert cat.stage_group("lung", "T2a", "N2", "M0") == "IIIA"
    assert cat.stage_group("lung", "T1a", "N0", "M1c") == "IVB"
    assert cat.stage_group("breast", "T2", "N1", "M0") == "IIB"
    assert cat.stage_group("prostate", "T3a", "N1", "M0") == "IVA"
    with pytest.raises(ValueError):
        cat.stage_group("colon", "T9", "N0", "M0")
    with pytest.raises(ValueError):
        cat.entity("lung").tnm_for_stage("IIC", random.Random(0))


def test_entities_without_tnm(cat) -> None:
    non_tnm = [e for e in cat.entities if not e.has_tnm]
    assert {e.key for e in non_tnm} == {"dlbcl", "hodgkin", "myeloma", "aml", "cll"}
    for e in non_tnm:
        assert e.staging in ("Ann Arbor", "ISS", "Binet", "")
        assert not e.metastasis_sites and not e.surgeries
        with pytest.raises(ValueError, match="not staged by TNM"):
            e.tnm_for_stage(e.stage_weights[0][0] if e.stage_weights else "I", random.Random(0))
        with pytest.raises(ValueError, match="not staged by TNM"):
            cat.stage_group(e.key, "T1", "N0", "M0")


# ---------------------------------------------------------------- regimens


def test_regimen_doses(cat) -> None:
    folfox = cat.regimens["mfolfox6"]
    assert folfox.cycle_days == 14
    doses = {(d.atc, d.note): mg for d, mg in folfox.absolute_doses(bsa_m2=1.8, weight_kg=70, gfr_ml_min=80)}
    assert doses[("L01XA03", "")] == pytest.approx(85 * 1.8)
    assert doses[("L01BC02", "Bolus")] == pytest.approx(400 * 1.8)
    assert doses[("L01BC02", "46-h-Dauerinfusion ab Tag 1")] == pytest.approx(2400 * 1.8)
    carbo = dict((d.atc, mg) for d, mg in cat.regimens["carboplatin_paclitaxel"].absolute_doses(1.7, 65, 80))
    assert carbo["L01XA02"] == pytest.approx(5 * (80 + 25))  # Calvert
    assert carbo["L01CD01"] == pytest.approx(175 * 1.7)
    bev = dict((d.atc, mg) for d, mg in cat.regimens["mfolfox6_bevacizumab"].absolute_doses(1.8, 70, 90))
    assert bev["L01FG01"] == pytest.approx(5 * 70)  # mg/kg
    regimen = cat.regimens["carboplatin_pemetrexed_pembrolizumab"]
    pembro = dict((d.atc, mg) for d, mg in regimen.absolute_doses(2.0, 80, 100))
    assert pembro["L01FF02"] == 200  # fixed dose
    assert pembro["L01XA02"] == pytest.approx(5 * 125)
    r_chop = cat.regimens["r_chop_21"].absolute_doses(2.1, 90, 90)
    vincristine = [mg for d, mg in r_chop if d.atc == "L01CA02"]
    assert vincristine == [2.0]  # 1.4 mg/m2 capped at 2 mg


def test_regimen_fields(cat) -> None:
    assert len(cat.regimens) >= 30
    for r in cat.regimens.values():
        assert r.drugs and r.cycle_days >= 1
        for d in r.drugs:
            assert d.unit in {"mg/m2", "mg/kg", "AUC", "mg", "IE/m2"} and d.route in {"i.v.", "p.o.", "s.c."}
            assert d.days and all(1 <= day <= r.cycle_days for day in d.days), (r.key, d)
            assert d.verified is False  # no dose is clinically verified
            assert d.atc_verified == d.atc.startswith("L"), (r.key, d.atc)
            assert d.name_de


# ---------------------------------------------------------------- labs, comorbidities, supportive drugs


def test_reference_ranges_by_sex(cat) -> None:
    hb = cat.labs["718-7"]
    assert hb.unit == "g/dL" and hb.ref["female"] == (12.0, 16.0) and hb.ref["male"] == (13.5, 17.5)
    assert hb.range_for("male") == (13.5, 17.5)
    assert cat.labs["2160-0"].ref["female"] != cat.labs["2160-0"].ref["male"]
    assert cat.labs["2039-6"].marker and cat.labs["2039-6"].ref["female"] == (0.0, 5.0)
    assert cat.labs["62238-1"].ref["male"] == (90.0, None)  # eGFR > 90: open upper bound
    assert cat.labs["24108-3"].unit == "[arb'U]/mL"
    for loinc in ("2039-6", "24108-3", "2857-1", "10334-1", "1834-1"):
        assert cat.labs[loinc].marker
    for lab in cat.labs.values():
        assert lab.verified is False  # no reference range is verified
        assert set(lab.ref) == {"female", "male"} and lab.decimals >= 0
        assert " " not in lab.unit
        for low, high in lab.ref.values():
            assert low is None or high is None or low < high
    assert not cat.labs["1834-1"].code_verified and not cat.loinc.lookup("1834-1").verified  # AFP
    assert sum(lab.code_verified for lab in cat.labs.values()) == 45


def test_comorbidities(cat) -> None:
    codes = {c.icd for c in cat.comorbidities}
    assert {"I10.00", "E11.90"} <= codes and not codes & {"I10", "E11.9", "I25.1", "J44.9"}
    for c in cat.comorbidities:
        assert cat.icd10gm.validate(c.icd), c.icd
        assert c.title == cat.icd10gm.lookup(c.icd).display
        ages = [a for a, _ in c.prevalence_by_age]
        assert ages == sorted(ages) and all(0 <= p <= 1 for _, p in c.prevalence_by_age)
        for d in c.drugs:
            assert cat.atc.validate(d.atc) and len(d.schedule) == 4 and d.dose > 0
    hypertension = next(c for c in cat.comorbidities if c.icd == "I10.00")
    assert hypertension.prevalence(30) < hypertension.prevalence(75)
    assert hypertension.prevalence(10) == 0.0


def test_supportive_drugs(cat) -> None:
    atcs = {d.atc for d in cat.supportive}
    assert {"A04AA01", "L03AA13", "A02BC02", "H02AB02"} <= atcs  # antiemetic, G-CSF, PPI, dexamethasone
    for d in cat.supportive:
        assert cat.atc.validate(d.atc) and d.name_de == cat.atc.lookup(d.atc).display
        assert len(d.schedule) == 4 and d.verified is False


def test_verification_flags(cat) -> None:
    assert sum(c.verified for c in cat.ops) == 9  # the rows confirmed in MII kds-testdata
    assert cat.ops.lookup("8-522.d1") is None  # conflicting titles in public sources: left out
    assert all(c.verified for c in cat.atc if c.code.startswith("L"))
    assert not cat.atc.lookup("A04AA01").verified and cat.atc.lookup("A02BC02").verified
    assert all(c.verified for c in cat.icd10gm) and all(c.verified for c in cat.icdo3_morphology)


# ---------------------------------------------------------------- licence notices and package data


def test_notices_in_every_data_file(cat) -> None:
    manifest = load_manifest()
    for table, spec in manifest["tables"].items():
        text = data_text(spec["file"])
        if spec["file"].endswith(".csv"):
            present = "\n".join(header_comments(text))
        else:
            present = "\n".join(json.loads(text)["notice"])
        for notice in notice_lines(manifest, table):
            assert notice in present, (table, notice[:40])
        assert cat.notices[table] == "\n".join(notice_lines(manifest, table))
        for key in ("file", "description", "source", "version", "licence", "notices"):
            assert key in spec, (table, key)
    bfarm_tables = ("icd10gm", "icdo3_topography", "icdo3_morphology", "ops", "entities", "comorbidities")
    for table in bfarm_tables:
        assert BFARM in cat.notices[table], table
    for table in ("icdo3_topography", "icdo3_morphology"):
        assert ICDO3_NOTICE in cat.notices[table]
    for table in ("icd10gm", "icdo3_topography", "icdo3_morphology", "value_sets", "atc", "regimens"):
        assert RKI_CITATION in cat.notices[table] and "Changed by clinsynth" in cat.notices[table]
    assert LOINC_NOTICE in cat.notices["labs"]
    assert BFARM in header_comments(data_text("icd10gm.csv"))


def test_reader_skips_notice_lines() -> None:
    from clinsynth.terminology._io import read_csv

    rows = read_csv("# a notice; with a semicolon\n# another\ncode;title\nA;a title\n")
    assert rows == [{"code": "A", "title": "a title"}]


def test_manifest_covers_every_data_file_and_size_limit() -> None:
    manifest = load_manifest()
    listed = {spec["file"] for spec in manifest["tables"].values()}
    files = {p.name for p in data_dir().iterdir() if p.is_file() and p.suffix in (".csv", ".json")}
    assert files - {"manifest.json"} == listed
    total = sum(p.stat().st_size for p in data_dir().iterdir() if p.is_file())
    assert total < 3 * 1024 * 1024


@pytest.mark.skipif(not (REFERENCE / "rki").is_dir(), reason="RKI reference snapshot not available")
def test_generated_tables_match_the_source_snapshot() -> None:
    """Codes and official titles are exactly the source's: rebuilding gives the shipped files."""
    from clinsynth.terminology.build import render_all

    for name, text in render_all(REFERENCE).items():
        assert data_text(name) == text, name
