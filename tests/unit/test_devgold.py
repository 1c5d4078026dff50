"""The development gold (benchmarks/data/grascco_dev): it fits schema v2, every name in it is the
letter's own wording, and every code is documented with the words that pin it (ANNOTATION.md)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from clinsynth.letters import devset
from clinsynth.schema import LISTS, ClinicalExtraction, catalogue_issues
from clinsynth.terminology import load_catalog

RULES = devset.GOLD_DIR / "ANNOTATION.md"
CODE_FIELDS = ("icd10gm", "ops", "atc", "loinc", "morphology", "topography")
#: names the gold writes in full where the letter elides a compound part (ANNOTATION.md, Assertions)
ELIDED = {("Clausthal", "Hautmetastasen"): "Haut- oder Lymphknotenmetastasen"}


def _norm(s: str) -> str:
    """Case, whitespace, hyphens and the soft hyphen of the OCR text do not count."""
    s = unicodedata.normalize("NFC", s).casefold()
    return re.sub(r"[\s\-\u00ad]+", "", s)


def _table(heading: str) -> list[list[str]]:
    """The rows of the markdown table under `heading` in ANNOTATION.md (without header rows)."""
    text = RULES.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r] for r in rows[2:]]


def _codes(ex: ClinicalExtraction) -> set[tuple[str, str]]:
    out = set()
    for field in LISTS.values():
        for fact in getattr(ex, field):
            for attr in CODE_FIELDS:
                code = getattr(fact, attr, None)
                if code:
                    out.add((attr, code))
            for marker in getattr(fact, "markers", None) or ():
                if marker.loinc:
                    out.add(("loinc", marker.loinc))
    return out


def _names(ex: ClinicalExtraction) -> list[str]:
    out = [ex.patient.name if ex.patient else None, ex.encounter.department if ex.encounter else None]
    out += [d.text for d in ex.diagnoses] + [p.text for p in ex.procedures]
    out += [t.entity for t in ex.tumors] + [t.histology for t in ex.tumors]
    out += [r.target for r in ex.radiotherapy] + [m.name for m in ex.medications]
    out += [x.name for x in ex.labs] + [x.name for x in ex.vitals] + [r.text for r in ex.risk_factors]
    return [s for s in out if s]


@pytest.fixture(scope="module")
def gold() -> dict[str, ClinicalExtraction]:
    return devset.load_dev_gold()


def test_all_six_letters_have_gold_that_fits_schema_v2(gold: dict[str, ClinicalExtraction]) -> None:
    assert list(gold) == list(devset.DEV_LETTERS)
    for name, ex in gold.items():
        assert ex.diagnoses and ex.patient and ex.encounter, name
        # each letter's main tumour is a tumour record, and every fact has an assertion
        assert ex.tumors, name
        assert sum(d.role == "main" for d in ex.diagnoses) == 1, name


def test_gold_uses_every_assertion(gold: dict[str, ClinicalExtraction]) -> None:
    seen = {f.assertion for ex in gold.values() for field in LISTS.values() for f in getattr(ex, field)}
    assert seen == {"present", "negated", "historical", "suspected"}


def test_names_are_the_letters_own_words(gold: dict[str, ClinicalExtraction]) -> None:
    for name, ex in gold.items():
        text = devset.dev_letter_text(name)
        if text is None:
            pytest.skip("GraSCCo development letters not present (set CLINSYNTH_GRASCCO)")
        letter = _norm(text)
        for s in _names(ex):
            assert _norm(ELIDED.get((name, s), s)) in letter, f"{name}: {s!r} is not written in the letter"


def test_every_code_is_documented_with_the_words_that_pin_it(gold: dict[str, ClinicalExtraction]) -> None:
    documented: dict[str, set[tuple[str, str]]] = {}
    for letter, system, code, words in _table("## Codes per letter and the words that pin them"):
        documented.setdefault(letter, set()).add((system, code))
        text = devset.dev_letter_text(letter)
        if text is not None:
            assert _norm(words) in _norm(text), f"{letter}: {words!r} (pins {code}) is not in the letter"
    for name, ex in gold.items():
        assert _codes(ex) == documented.get(name, set()), f"{name}: gold codes differ from ANNOTATION.md"


def test_codes_outside_the_catalogue_are_listed(gold: dict[str, ClinicalExtraction]) -> None:
    listed: dict[str, set[str]] = {}
    for letters, _field, codes, _meaning in _table("## Codes outside the shipped catalogue"):
        for letter in letters.split(","):
            listed.setdefault(letter.strip(), set()).update(c.strip() for c in codes.split(","))
    cat = load_catalog()
    for name, ex in gold.items():
        issues = "; ".join(catalogue_issues(ex, cat))
        missing = {m.group(1) for m in re.finditer(r"'([^']+)' is not a", issues)}
        assert missing == listed.get(name, set()), f"{name}: catalogue gaps differ from ANNOTATION.md"


def test_only_development_letters_can_be_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="kept-back"):
        devset.dev_letter_path("Albers")
    monkeypatch.setenv("CLINSYNTH_GRASCCO", str(tmp_path))
    assert devset.dev_letter_path("Meyr") is None
    (tmp_path / "Meyr.txt").write_bytes("\ufeffBrief".encode())
    assert devset.dev_letter_text("Meyr") == "Brief"


def test_a_broken_gold_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "Meyr.json").write_text('{"diagnoses": [{"text": "X", "assertion": "maybe"}]}')
    with pytest.raises(devset.DevGoldError, match=r"Meyr\.json.*schema v2"):
        devset.load_gold("Meyr", tmp_path)
    with pytest.raises(devset.DevGoldError, match="missing"):
        devset.load_gold("Rieser", tmp_path)


def test_agreement_table_counts_the_committed_gold(gold: dict[str, ClinicalExtraction]) -> None:
    """The second annotator's counts must describe the files as they are, not an earlier state."""
    rows = {r[0]: r for r in _table("## Agreement (second annotator)")}
    assert set(rows) == {*devset.DEV_LETTERS, "all"}
    total = 0
    for name, ex in gold.items():
        n = sum(len(getattr(ex, field)) for field in LISTS.values())
        total += n
        facts_2nd, facts_1st, changed, added, removed = (int(c) for c in rows[name][1:6])
        assert facts_2nd == n, f"{name}: ANNOTATION.md says {facts_2nd} facts, gold has {n}"
        assert facts_2nd == facts_1st + added - removed, name
        agreed, union = (int(x) for x in re.findall(r"\d+", rows[name][6])[:2])
        assert union == facts_2nd + removed and agreed == facts_1st - changed - removed, name
    assert int(rows["all"][1]) == total
