"""Hand-written letters with their v2 recipes and gold, for the verifier's tests.

Written for these tests (no corpus sentences): a colorectal Entlassungsbrief with a lab block, a
medication table, a TNM line, negated findings with the cue after the noun, a suspected and a
historical fact; a breast-cancer Kurzarztbrief with laterality, receptors and a present finding.
Each builder returns a fresh (recipe, text) pair, so a test may mutate it.
"""

from __future__ import annotations

from typing import Any

from clinsynth.sampling.recipe import Recipe, RecipeFact

COLORECTAL = """\
Universitätsklinikum Musterstadt
Klinik für Innere Medizin III - Hämatologie und Onkologie
Musterstadt, 28.03.2025

Entlassungsbrief

Sehr geehrte Frau Kollegin, sehr geehrter Herr Kollege,
wir berichten über Herrn Max Mustermann, geb. 04.05.1958, der sich vom 17.03.2025 bis 28.03.2025 \
in unserer stationären Behandlung befand.

Diagnosen:
- Rektumkarzinom (C20), ED 01/2025
  ypT3c ypN1a (1/14) cM0 L0 V0 Pn0 R0, G2, UICC IIIB
  Histologie: Adenokarzinom (8140/3), KRAS Wildtyp, CEA 4,1 ng/ml
- Lungenmetastasen CT-morphologisch nicht nachweisbar
- V.a. Pneumonie
- Z.n. Appendektomie (1998)
- Arterielle Hypertonie (I10.90)
- Kein Hinweis auf Lebermetastasen oder Peritonealkarzinose

Anamnese:
Der Pat. stellte sich zur Fortführung der adjuvanten Chemotherapie vor. Nikotinabusus mit 30 py.

Befunde:
Labor vom 18.03.2025: Hb 10,2 g/dl, Leukozyten 5,3 /nl, Thrombozyten 231 /nl, Kreatinin 0,9 mg/dl, \
CRP 12 mg/l.
Sonographie Abdomen: Aszites sonographisch ausgeschlossen, Leber homogen.

Therapie und Verlauf:
Am 19.03.2025 erfolgte der 3. Zyklus FOLFOX mit Oxaliplatin 85 mg/m², Calciumfolinat 400 mg/m² und \
Fluorouracil 400 mg/m² als Bolus. Bei Fieber am 21.03.2025 wurde eine Sepsis ausgeschlossen. Die tiefe \
anteriore Rektumresektion war am 20.02.2025 erfolgt.

Medikation bei Entlassung:
Pantoprazol      40 mg    1-0-0-0
Ramipril          5 mg    1-0-1-0
Metoclopramid    10 mg    bei Bedarf

Procedere:
Wiedervorstellung am 09.04.2025 zum 4. Zyklus.

Mit freundlichen Grüßen
Dr. med. A. Beispiel
"""

BREAST = """\
Kurzarztbrief

Patientin: Erika Beispiel, geb. 12.08.1961; ambulante Vorstellung am 04.03.2025

Diagnosen:
1. Mammakarzinom links (C50.9), ED 11/2024
   cT2 cN1 cM1, G3, UICC IV
   Invasiv-duktales Karzinom (8500/3), ER 90 %, PR 20 %, HER2 negativ, Ki-67 30 %
2. Lebermetastasen (C78.7)
3. Z.n. Cholezystektomie 2015

Befunde:
Sonographie Abdomen vom 03.03.2025: multiple Lebermetastasen, max. 2,4 cm.

Medikation:
Letrozol       2,5 mg   1-0-0
Palbociclib    125 mg   1-0-0
"""


def _fact(
    fid: str, kind: str, section: str, gold: dict[str, Any], say: dict[str, Any], assertion: str = "present"
) -> RecipeFact:
    return RecipeFact(fid, kind, section, assertion, gold, say)  # type: ignore[arg-type]


def _med(fid: str, name: str, dose: float, unit: str, shown_unit: str, atc: str, **gold: Any) -> RecipeFact:
    say = {"name": name, "dose": f"{dose:g}".replace(".", ","), "unit": shown_unit}
    return _fact(
        fid,
        "medication",
        gold.pop("section", "medikation"),
        {"name": name, "atc": atc, "dose": dose, "unit": unit, **gold},
        say,
    )


def _lab(fid: str, name: str, value: float, unit: str, shown: str, loinc: str) -> RecipeFact:
    gold = {"name": name, "loinc": loinc, "value": value, "unit": unit, "date": "2025-03-18"}
    say = {"name": name, "value": f"{value:g}".replace(".", ","), "unit": shown, "date": "18.03.2025"}
    return _fact(fid, "lab", "befunde", gold, say)


def _sections(*keys: str) -> list[dict[str, Any]]:
    headings = {
        "diagnosen": "Diagnosen",
        "anamnese": "Anamnese",
        "befunde": "Befunde",
        "verlauf": "Therapie und Verlauf",
        "medikation": "Medikation bei Entlassung",
        "procedere": "Procedere",
    }
    return [{"key": k, "heading": headings[k], "layout": "text"} for k in keys]


def colorectal() -> tuple[Recipe, str]:
    dx = "diagnosen"
    facts = [
        _fact(
            "d1",
            "diagnosis",
            dx,
            {"text": "Rektumkarzinom", "icd10gm": "C20", "role": "main", "date": "2025-01"},
            {"name": "Rektumkarzinom", "code": "C20", "date": "01/2025", "role": "main"},
        ),
        _fact(
            "t1",
            "tumor",
            dx,
            {
                "entity": "Rektumkarzinom",
                "icd10gm": "C20",
                "morphology": "8140/3",
                "histology": "Adenokarzinom",
                "grading": "G2",
                "tnm": {
                    "t": {"prefix": "yp", "value": "T3c"},
                    "n": {"prefix": "yp", "value": "N1a", "nodes": "1/14"},
                    "m": {"prefix": "c", "value": "M0"},
                    "l": "L0",
                    "v": "V0",
                    "pn": "Pn0",
                    "r": "R0",
                },
                "staging": "current",
                "uicc_stage": "IIIB",
                "markers": [
                    {"name": "KRAS", "result": "wildtype"},
                    {"name": "CEA", "loinc": "2039-6", "value": 4.1, "unit": "ng/mL"},
                ],
            },
            {
                "entity": "Rektumkarzinom",
                "tnm": "ypT3c ypN1a (1/14) cM0 L0 V0 Pn0 R0",
                "grading": "G2",
                "stage": "UICC IIIB",
                "histology": "Adenokarzinom",
                "morphology": "8140/3",
                "markers": ["KRAS Wildtyp", "CEA 4,1 ng/ml"],
            },
        ),
        _fact(
            "d2",
            "diagnosis",
            dx,
            {"text": "Lungenmetastasen", "icd10gm": "C78.0", "role": "secondary"},
            {"name": "Lungenmetastasen"},
            "negated",
        ),
        _fact(
            "d3",
            "diagnosis",
            dx,
            {"text": "Pneumonie", "icd10gm": "J18"},
            {"name": "Pneumonie"},
            "suspected",
        ),
        _fact(
            "p1",
            "procedure",
            dx,
            {"text": "Appendektomie", "date": "1998"},
            {"name": "Appendektomie", "date": "1998"},
            "historical",
        ),
        _fact(
            "d4",
            "diagnosis",
            dx,
            {"text": "Arterielle Hypertonie", "icd10gm": "I10.90", "role": "secondary"},
            {"name": "Arterielle Hypertonie", "code": "I10.90"},
        ),
        _fact(
            "d5",
            "diagnosis",
            dx,
            {"text": "Lebermetastasen", "icd10gm": "C78.7"},
            {"name": "Lebermetastasen"},
            "negated",
        ),
        _fact(
            "d6",
            "diagnosis",
            dx,
            {"text": "Peritonealkarzinose", "icd10gm": "C78.6"},
            {"name": "Peritonealkarzinose"},
            "negated",
        ),
        _fact(
            "r1",
            "risk_factor",
            "anamnese",
            {"kind": "smoking", "text": "Nikotinabusus", "pack_years": 30},
            {"name": "Nikotinabusus", "pack_years": "30"},
        ),
        _lab("l1", "Hb", 10.2, "g/dL", "g/dl", "718-7"),
        _lab("l2", "Leukozyten", 5.3, "10*3/uL", "/nl", "6690-2"),
        _lab("l3", "Thrombozyten", 231, "10*3/uL", "/nl", "777-3"),
        _lab("l4", "Kreatinin", 0.9, "mg/dL", "mg/dl", "2160-0"),
        _lab("l5", "CRP", 12, "mg/L", "mg/l", "1988-5"),
        _fact(
            "d7",
            "diagnosis",
            "befunde",
            {"text": "Aszites", "icd10gm": "R18"},
            {"name": "Aszites"},
            "negated",
        ),
        _med(
            "m1",
            "Oxaliplatin",
            85,
            "mg/m2",
            "mg/m²",
            "L01XA03",
            context="therapy",
            regimen="FOLFOX",
            cycle=3,
            section="verlauf",
        ),
        _med(
            "m2",
            "Calciumfolinat",
            400,
            "mg/m2",
            "mg/m²",
            "V03AF03",
            context="therapy",
            regimen="FOLFOX",
            cycle=3,
            section="verlauf",
        ),
        _med(
            "m3",
            "Fluorouracil",
            400,
            "mg/m2",
            "mg/m²",
            "L01BC02",
            context="therapy",
            regimen="FOLFOX",
            cycle=3,
            section="verlauf",
        ),
        _fact(
            "d8",
            "diagnosis",
            "verlauf",
            {"text": "Sepsis", "icd10gm": "A41"},
            {"name": "Sepsis"},
            "negated",
        ),
        _fact(
            "p2",
            "procedure",
            "verlauf",
            {"text": "tiefe anteriore Rektumresektion", "date": "2025-02-20"},
            {"name": "tiefe anteriore Rektumresektion", "date": "20.02.2025"},
        ),
        _med("m4", "Pantoprazol", 40, "mg", "mg", "A02BC02", schedule=[1, 0, 0, 0], context="discharge"),
        _med("m5", "Ramipril", 5, "mg", "mg", "C09AA05", schedule=[1, 0, 1, 0], context="discharge"),
        _med("m6", "Metoclopramid", 10, "mg", "mg", "A03FA01", as_needed=True, context="discharge"),
    ]
    for f in facts:  # codes are stored bare in gold; ATC/LOINC are gold but not written
        f.gold = {k: v for k, v in f.gold.items() if v is not None}
    recipe = Recipe(
        spec_id="case-colorectal",
        patient_id="p1",
        encounter_id="e1",
        split="train",
        letter_type="Entlassungsbrief",
        header={
            "clinic": "Universitätsklinikum Musterstadt",
            "department": "Klinik für Innere Medizin III - Hämatologie und Onkologie",
            "patient": "Herrn Max Mustermann, geb. 04.05.1958",
            "stay": "vom 17.03.2025 bis 28.03.2025",
            "signature": "Dr. med. A. Beispiel",
        },
        sections=_sections("diagnosen", "anamnese", "befunde", "verlauf", "medikation", "procedere"),
        facts=facts,
        style={"date_style": "dmy"},
        encounter={"admission": "2025-03-17", "discharge": "2025-03-28", "type": "inpatient"},
        patient={"sex": "male", "birth_date": "1958-05-04", "name": "Max Mustermann"},
        untagged=["Musterstadt, 28.03.2025", "Wiedervorstellung am 09.04.2025"],
    )
    return recipe, COLORECTAL


def breast() -> tuple[Recipe, str]:
    dx = "diagnosen"
    facts = [
        _fact(
            "d1",
            "diagnosis",
            dx,
            {"text": "Mammakarzinom links", "icd10gm": "C50.9", "role": "main", "date": "2024-11"},
            {"name": "Mammakarzinom links", "code": "C50.9", "date": "11/2024"},
        ),
        _fact(
            "t1",
            "tumor",
            dx,
            {
                "entity": "Mammakarzinom",
                "icd10gm": "C50.9",
                "morphology": "8500/3",
                "histology": "Invasiv-duktales Karzinom",
                "grading": "G3",
                "laterality": "L",
                "tnm": {
                    "t": {"prefix": "c", "value": "T2"},
                    "n": {"prefix": "c", "value": "N1"},
                    "m": {"prefix": "c", "value": "M1"},
                },
                "staging": "initial",
                "uicc_stage": "IV",
                "markers": [
                    {"name": "ER", "value": 90, "unit": "%"},
                    {"name": "PR", "value": 20, "unit": "%"},
                    {"name": "HER2", "result": "negative"},
                    {"name": "Ki-67", "value": 30, "unit": "%"},
                ],
            },
            {"entity": "Mammakarzinom", "laterality": "links", "tnm": "cT2 cN1 cM1", "stage": "UICC IV"},
        ),
        _fact(
            "d2",
            "diagnosis",
            dx,
            {"text": "Lebermetastasen", "icd10gm": "C78.7", "role": "secondary"},
            {"name": "Lebermetastasen", "code": "C78.7"},
        ),
        _fact(
            "p1",
            "procedure",
            dx,
            {"text": "Cholezystektomie", "date": "2015"},
            {"name": "Cholezystektomie", "date": "2015"},
            "historical",
        ),
        _med("m1", "Letrozol", 2.5, "mg", "mg", "L02BG04", schedule=[1, 0, 0, 0], context="discharge"),
        _med("m2", "Palbociclib", 125, "mg", "mg", "L01EF01", schedule=[1, 0, 0, 0], context="discharge"),
    ]
    recipe = Recipe(
        spec_id="case-breast",
        patient_id="p2",
        encounter_id="e2",
        split="train",
        letter_type="Kurzarztbrief",
        header={
            "patient": "Patientin: Erika Beispiel, geb. 12.08.1961",
            "stay": "ambulante Vorstellung am 04.03.2025",
        },
        sections=[
            {"key": "diagnosen", "heading": "Diagnosen", "layout": "list"},
            {"key": "befunde", "heading": "Befunde", "layout": "text"},
            {"key": "medikation", "heading": "Medikation", "layout": "table"},
        ],
        facts=facts,
        style={"date_style": "dmy"},
        encounter={"admission": "2025-03-04", "type": "outpatient"},
        patient={"sex": "female", "birth_date": "1961-08-12", "name": "Erika Beispiel"},
        untagged=[],
    )
    return recipe, BREAST


def fact(recipe: Recipe, fid: str) -> RecipeFact:
    return next(f for f in recipe.facts if f.id == fid)
