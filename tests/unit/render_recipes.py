"""Hand-built v2 recipes for the renderer tests: six realistic stays (colorectal FOLFOX with both
5-FU doses, breast with receptors, lung with EGFR, lymphoma with Ann Arbor, a Kurzarztbrief,
a Verlegungsbrief); together they hold every fact kind with every assertion."""

from __future__ import annotations

from typing import Any

from clinsynth.sampling.recipe import Recipe, RecipeFact

SECTIONS = (
    "diagnosen",
    "tumor",
    "anamnese",
    "aufnahmebefund",
    "befunde",
    "verlauf",
    "medikation",
    "epikrise",
    "procedere",
)


def fact(kind: str, section: str, assertion: str, gold: dict[str, Any], **say: Any) -> RecipeFact:
    return RecipeFact(id="", kind=kind, section=section, assertion=assertion, gold=gold, say=say)  # type: ignore[arg-type]


def dx(
    section: str,
    assertion: str,
    name: str,
    code: str = "",
    date: str = "",
    iso: str = "",
    role: str = "secondary",
) -> RecipeFact:
    gold: dict[str, Any] = {"text": name, "role": role}
    if code:
        gold["icd10gm"] = code
    if iso:
        gold["date"] = iso
    return fact("diagnosis", section, assertion, gold, name=name, code=code, date=date, role=role)


def med(
    section: str,
    assertion: str,
    name: str,
    dose: str = "",
    unit: str = "",
    context: str = "discharge",
    **say: Any,
) -> RecipeFact:
    gold: dict[str, Any] = {"name": name, "context": context}
    if dose:
        gold["dose"] = float(dose.replace(",", "."))
        gold["unit"] = unit.replace("²", "2")
    if say.get("schedule"):
        gold["schedule"] = [{"½": 0.5}.get(x) or float(x) for x in say["schedule"].split("-")] + [0.0] * (
            4 - len(say["schedule"].split("-"))
        )
    if say.get("as_needed"):
        gold["as_needed"] = True
    if say.get("frequency"):
        gold["frequency"] = say["frequency"]
    if say.get("route"):
        gold["route"] = say["route"]
    if say.get("regimen"):
        gold["regimen"] = say["regimen"]
    if say.get("cycle"):
        gold["cycle"] = int(say["cycle"])
    if say.get("day"):
        gold["day"] = int(say["day"])
    return fact("medication", section, assertion, gold, name=name, dose=dose, unit=unit, **say)


def lab(
    section: str,
    assertion: str,
    name: str,
    value: str = "",
    unit: str = "",
    flag: str = "",
    date: str = "",
    iso: str = "",
    kind: str = "lab",
) -> RecipeFact:
    gold: dict[str, Any] = {"name": name}
    if value:
        gold["value"] = float(value.replace(",", "."))
    if unit:
        gold["unit"] = unit
    if flag:
        gold["flag"] = {"↓": "low", "↑": "high", "H": "high", "L": "low"}[flag]
    if iso:
        gold["date"] = iso
    if kind == "vital":
        gold.pop("flag", None)
    return fact(kind, section, assertion, gold, name=name, value=value, unit=unit, flag=flag, date=date)


def proc(
    section: str, assertion: str, name: str, code: str = "", date: str = "", iso: str = ""
) -> RecipeFact:
    gold: dict[str, Any] = {"text": name}
    if code:
        gold["ops"] = code
    if iso:
        gold["date"] = iso
    return fact("procedure", section, assertion, gold, name=name, code=code, date=date)


def tumor(section: str, assertion: str, gold: dict[str, Any], **say: Any) -> RecipeFact:
    return fact("tumor", section, assertion, gold, **say)


def risk(section: str, assertion: str, name: str, kind: str = "smoking", py: str = "") -> RecipeFact:
    gold: dict[str, Any] = {"kind": kind, "text": name}
    if py:
        gold["pack_years"] = float(py)
    return fact("risk_factor", section, assertion, gold, name=name, pack_years=py)


def radio(
    section: str,
    assertion: str,
    target: str,
    total: str,
    fraction: str,
    fractions: str,
    start: str = "",
    end: str = "",
    intent: str = "",
) -> RecipeFact:
    gold: dict[str, Any] = {
        "target": target,
        "total_gy": float(total.split()[0].replace(",", ".")),
        "fraction_gy": float(fraction.split()[0].replace(",", ".")),
        "fractions": int(fractions),
    }
    if intent:
        gold["intent"] = {"palliativ": "palliative", "adjuvant": "adjuvant", "kurativ": "curative"}[intent]
    return fact(
        "radiotherapy",
        section,
        assertion,
        gold,
        name=target,
        total=total,
        fraction=fraction,
        fractions=fractions,
        start=start,
        end=end,
        intent=intent,
    )


def recipe(
    spec: str, letter_type: str, sex: str, facts: list[RecipeFact], target: int, **style: Any
) -> Recipe:
    for i, f in enumerate(facts):
        f.id = f"f{i:02d}-{f.kind}"
    used = {f.section for f in facts}
    keys = [
        s
        for s in SECTIONS
        if s in used or s in ("anamnese", "verlauf", "epikrise", "procedere", "aufnahmebefund")
    ]
    if letter_type == "Kurzarztbrief":
        keys = [k for k in keys if k in used or k in ("procedere",)]
    return Recipe(
        spec_id=spec,
        patient_id=f"p-{spec}",
        encounter_id=spec,
        split="train",
        letter_type=letter_type,  # type: ignore[arg-type]
        header={
            "hospital": "Klinikum Neustadt",
            "clinic": "Klinik für Hämatologie und Onkologie",
            "date": "18.04.2025",
            "patient": "Erika Beispiel" if sex == "female" else "Max Beispiel",
            "sex": sex,
            "birth": "03.05.1958",
            "start": "14.04.2025",
            "end": "18.04.2025",
            "doctors": ["Dr. med. A. Muster", "B. Probe"],
            "salutation": "Sehr geehrte Kolleginnen und Kollegen,",
            "title": letter_type,
            "stay_type": "inpatient",
            "phone": "0561-123-4567",
            "follow_up": "05.05.2025",
        },
        sections=[
            {"key": k, "heading": "", "layout": "table" if i % 2 else "prose", "variant": i % 3}
            for i, k in enumerate(keys)
        ],
        facts=facts,
        style={"date_style": "dmy", "target_words": target, "code_style": "paren", "noise": "light", **style},
        encounter={
            "admission": "2025-04-14",
            "discharge": "2025-04-18",
            "type": "inpatient",
            "letter_type": letter_type,
        },
        patient={"sex": sex, "birth_date": "1958-05-03"},
        untagged=["18.04.2025", "0561-123-4567", "05.05.2025"],
    )


def colorectal() -> Recipe:
    d = "14.04.2025"
    iso = "2025-04-14"
    cyc = {"regimen": "FOLFOX", "cycle": "3", "day": "1", "route": "i.v."}
    return recipe(
        "crc-1",
        "Entlassungsbrief",
        "male",
        [
            dx("diagnosen", "present", "Sigmakarzinom", "C18.7", "03/2025", "2025-03", role="main"),
            tumor(
                "diagnosen",
                "present",
                {
                    "entity": "Sigmakarzinom",
                    "icd10gm": "C18.7",
                    "morphology": "8140/3",
                    "histology": "Adenokarzinom",
                    "grading": "G2",
                    "tnm": {
                        "t": {"prefix": "p", "value": "T3"},
                        "n": {"prefix": "p", "value": "N1b", "nodes": "3/21"},
                        "m": {"prefix": "c", "value": "M0"},
                        "l": "L1",
                        "v": "V0",
                        "r": "R0",
                    },
                    "uicc_stage": "IIIB",
                    "staging": "initial",
                    "date": "2025-03",
                    "markers": [
                        {"name": "KRAS", "result": "wildtype"},
                        {"name": "CEA", "value": 4.1, "unit": "ng/ml"},
                    ],
                    "ecog": 1,
                },
                entity="Sigmakarzinom",
                histology="Adenokarzinom",
                morphology="8140/3",
                grading="G2",
                tnm="pT3 pN1b (3/21) cM0 L1 V0 R0",
                stage="UICC IIIB",
                markers=["KRAS-Wildtyp", "CEA 4,1 ng/ml"],
                ecog="ECOG 1",
                staging="initial",
                date="03/2025",
            ),
            dx("diagnosen", "present", "Arterielle Hypertonie", "I10.90"),
            dx("diagnosen", "negated", "Lebermetastasen", "C78.7"),
            proc("anamnese", "historical", "Sigmaresektion", "", "21.03.2025", "2025-03-21"),
            proc("anamnese", "historical", "Appendektomie"),
            risk("anamnese", "historical", "Nikotinabusus", py="20"),
            lab("aufnahmebefund", "present", "RR systolisch", "135", "mmHg", kind="vital"),
            lab("aufnahmebefund", "present", "Puls", "78", "/min", kind="vital"),
            lab("befunde", "present", "Hb", "11,2", "g/dl", "↓", d, iso),
            lab("befunde", "present", "Leukozyten", "5,1", "G/l", "", d, iso),
            lab("befunde", "present", "Thrombozyten", "210", "G/l", "", d, iso),
            lab("befunde", "present", "Kreatinin", "0,9", "mg/dl", "", d, iso),
            proc("befunde", "present", "CT Thorax/Abdomen", "", "15.04.2025", "2025-04-15"),
            dx("befunde", "negated", "Lungenmetastasen"),
            dx("befunde", "negated", "Peritonealkarzinose"),
            med("verlauf", "present", "Oxaliplatin", "85", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Calciumfolinat", "400", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "5-FU", "400", "mg/m²", "therapy", frequency="als Bolus", **cyc),
            med("verlauf", "present", "5-FU", "2400", "mg/m²", "therapy", frequency="über 46 h", **cyc),
            med("verlauf", "present", "Granisetron", "1", "mg", "inpatient", route="i.v."),
            med("verlauf", "present", "Dexamethason", "8", "mg", "inpatient", route="i.v."),
            dx("verlauf", "suspected", "Polyneuropathie"),
            med("medikation", "present", "Pantozol", "40", "mg", schedule="1-0-0"),
            med("medikation", "present", "Ramipril", "5", "mg", schedule="½-0-½"),
            med("medikation", "present", "MCP", "10", "mg", as_needed="bei Bedarf"),
            dx("epikrise", "present", "Mukositis Grad 1"),
        ],
        270,
    )


def breast() -> Recipe:
    cyc = {"regimen": "EC", "cycle": "2", "day": "1", "route": "i.v."}
    return recipe(
        "bc-1",
        "Arztbrief",
        "female",
        [
            dx("diagnosen", "present", "Mammakarzinom links", "C50.4", "01/2025", "2025-01", role="main"),
            tumor(
                "diagnosen",
                "present",
                {
                    "entity": "Mammakarzinom",
                    "histology": "invasiv duktales Karzinom (NST)",
                    "grading": "G2",
                    "laterality": "L",
                    "tnm": {
                        "t": {"prefix": "c", "value": "T2"},
                        "n": {"prefix": "c", "value": "N1"},
                        "m": {"prefix": "c", "value": "M0"},
                    },
                    "uicc_stage": "IIB",
                    "staging": "initial",
                    "markers": [
                        {"name": "ER", "value": 90, "unit": "%", "result": "positive"},
                        {"name": "PR", "value": 60, "unit": "%", "result": "positive"},
                        {"name": "HER2", "result": "negative"},
                        {"name": "Ki-67", "value": 25, "unit": "%"},
                    ],
                },
                entity="Mammakarzinom",
                laterality="links",
                histology="invasiv duktales Karzinom (NST)",
                grading="G2",
                tnm="cT2 cN1 cM0",
                stage="UICC IIB",
                markers=["ER 90 %", "PR 60 %", "HER2 negativ", "Ki-67 25 %"],
                staging="initial",
            ),
            dx("diagnosen", "negated", "Knochenmetastasen"),
            dx("diagnosen", "historical", "Cholezystolithiasis", "", "2015", "2015"),
            dx("diagnosen", "suspected", "Hypothyreose"),
            risk("anamnese", "negated", "Nikotinabusus"),
            med("anamnese", "historical", "Ibuprofen", "400", "mg"),
            tumor("anamnese", "negated", {"entity": "Ovarialkarzinom"}, entity="Ovarialkarzinom"),
            lab("aufnahmebefund", "present", "Temperatur", "36,8", "°C", kind="vital"),
            lab("befunde", "present", "Leukozyten", "2,1", "G/l", "↓", "16.04.2025", "2025-04-16"),
            lab("befunde", "present", "Neutrophile", "0,9", "G/l", "↓", "16.04.2025", "2025-04-16"),
            lab("befunde", "negated", "Procalcitonin"),
            med("verlauf", "present", "Epirubicin", "90", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Cyclophosphamid", "600", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Pegfilgrastim", "6", "mg", "inpatient", route="s.c."),
            med("verlauf", "negated", "Aprepitant"),
            dx("verlauf", "present", "Febrile Neutropenie", "D70.10"),
            proc("verlauf", "negated", "Portanlage"),
            med("medikation", "present", "Ondansetron", "8", "mg", schedule="1-0-1"),
            med("medikation", "present", "L-Thyroxin", "50", "µg", schedule="1-0-0-0"),
            dx("epikrise", "negated", "Kardiotoxizität"),
        ],
        260,
    )


def lung() -> Recipe:
    return recipe(
        "lung-1",
        "Kurzarztbrief",
        "male",
        [
            dx(
                "diagnosen",
                "present",
                "Adenokarzinom der Lunge rechts",
                "C34.1",
                "11/2024",
                "2024-11",
                role="main",
            ),
            tumor(
                "diagnosen",
                "present",
                {
                    "entity": "Adenokarzinom der Lunge",
                    "laterality": "R",
                    "tnm": {
                        "t": {"prefix": "c", "value": "T3"},
                        "n": {"prefix": "c", "value": "N2"},
                        "m": {"prefix": "c", "value": "M1c"},
                    },
                    "uicc_stage": "IVB",
                    "staging": "current",
                    "status": "stable",
                    "markers": [
                        {"name": "EGFR", "result": "mutated", "text": "Exon-19-Deletion"},
                        {"name": "PD-L1", "value": 5, "unit": "%"},
                    ],
                },
                entity="Adenokarzinom der Lunge",
                laterality="rechts",
                tnm="cT3 cN2 cM1c",
                stage="UICC IVB",
                markers=["EGFR Exon-19-Deletion", "PD-L1 TPS 5 %"],
                status="stabile Erkrankung",
                staging="current",
            ),
            dx("diagnosen", "negated", "Hirnmetastasen"),
            radio(
                "diagnosen",
                "historical",
                "BWK 8",
                "20 Gy",
                "4 Gy",
                "5",
                "02.12.2024",
                "06.12.2024",
                "palliativ",
            ),
            radio("verlauf", "negated", "Lunge rechts", "60 Gy", "2 Gy", "30"),
            risk("diagnosen", "present", "Nikotinabusus", py="40"),
            med("medikation", "present", "Tagrisso", "80", "mg", schedule="1-0-0"),
            med("medikation", "suspected", "Johanniskraut"),
            lab("befunde", "historical", "CRP", "35", "mg/l", "H"),
            lab("befunde", "present", "CRP", "8", "mg/l", "", "17.04.2025", "2025-04-17"),
        ],
        175,
    )


def lymphoma() -> Recipe:
    cyc = {"regimen": "R-CHOP", "cycle": "4", "day": "1", "route": "i.v."}
    return recipe(
        "dlbcl-1",
        "Entlassungsbrief",
        "female",
        [
            dx(
                "diagnosen",
                "present",
                "Diffus großzelliges B-Zell-Lymphom",
                "C83.3",
                "12/2024",
                "2024-12",
                role="main",
            ),
            tumor(
                "tumor",
                "present",
                {
                    "entity": "Diffus großzelliges B-Zell-Lymphom",
                    "morphology": "9680/3",
                    "stages": [{"system": "Ann Arbor", "value": "IIIB"}],
                    "staging": "current",
                    "status": "partial_remission",
                    "ecog": 1,
                },
                entity="Diffus großzelliges B-Zell-Lymphom",
                morphology="9680/3",
                stage="Ann Arbor IIIB",
                status="partielle Remission",
                ecog="ECOG 1",
                staging="current",
            ),
            tumor(
                "tumor", "historical", {"entity": "Basaliom", "date": "2019"}, entity="Basaliom", date="2019"
            ),
            dx("diagnosen", "present", "Diabetes mellitus Typ 2", "E11.9"),
            dx("diagnosen", "suspected", "Pneumonie"),
            risk("anamnese", "present", "Adipositas", kind="obesity"),
            proc("anamnese", "suspected", "Knochenmarkpunktion"),
            radio("anamnese", "suspected", "Mediastinum", "30 Gy", "2 Gy", "15"),
            lab("aufnahmebefund", "negated", "Fieber", kind="vital"),
            lab("aufnahmebefund", "historical", "Gewicht", "92", "kg", kind="vital"),
            lab("befunde", "present", "LDH", "310", "U/l", "H", "15.04.2025", "2025-04-15"),
            lab("befunde", "present", "Harnsäure", "5,2", "", "", "15.04.2025", "2025-04-15"),
            proc("befunde", "present", "Röntgen-Thorax", "", "15.04.2025", "2025-04-15"),
            dx("befunde", "negated", "Pleuraerguss"),
            med("verlauf", "present", "Rituximab", "375", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Cyclophosphamid", "750", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Doxorubicin", "50", "mg/m²", "therapy", **cyc),
            med("verlauf", "present", "Vincristin", "2", "mg", "therapy", **cyc),
            med(
                "verlauf",
                "present",
                "Prednison",
                "100",
                "mg",
                "therapy",
                regimen="R-CHOP",
                cycle="4",
                frequency="Tag 1-5",
            ),
            dx("verlauf", "negated", "Tumorlysesyndrom"),
            med("verlauf", "historical", "Metformin", "1000", "mg", "admission"),
            med("medikation", "present", "Insulin glargin", "12", "IE", schedule="0-0-1"),
            med("medikation", "present", "Cotrim forte", "960", "mg", frequency="Mo/Mi/Fr"),
            med("medikation", "present", "Novaminsulfon", "500", "mg", as_needed="bei Bedarf"),
            proc("procedere", "present", "PET-CT", "", "", ""),
        ],
        300,
    )


def bladder_short() -> Recipe:
    return recipe(
        "blca-1",
        "Kurzarztbrief",
        "male",
        [
            dx("diagnosen", "suspected", "Harnblasenkarzinom", "C67", role="main"),
            tumor(
                "diagnosen",
                "suspected",
                {"entity": "Urothelkarzinom der Harnblase"},
                entity="Urothelkarzinom der Harnblase",
            ),
            dx("diagnosen", "historical", "Prostatahyperplasie"),
            proc("verlauf", "present", "TUR-Blase", "5-573.40", "15.04.2025", "2025-04-15"),
            proc("verlauf", "historical", "Zystoskopie", "", "03/2025", "2025-03"),
            dx("verlauf", "present", "Makrohämaturie", "R31"),
            lab("befunde", "present", "Hb", "12,9", "g/dl", "", "15.04.2025", "2025-04-15"),
            med("medikation", "present", "Tamsulosin", "0,4", "mg", schedule="0-0-1"),
            med("medikation", "historical", "ASS", "100", "mg"),
            risk("diagnosen", "historical", "Nikotinabusus", py="30"),
        ],
        180,
    )


def transfer() -> Recipe:
    r = recipe(
        "pca-1",
        "Verlegungsbrief",
        "male",
        [
            dx("diagnosen", "present", "Prostatakarzinom", "C61", "2022", "2022", role="main"),
            tumor(
                "diagnosen",
                "present",
                {
                    "entity": "Prostatakarzinom",
                    "histology": "Adenokarzinom",
                    "tnm": {
                        "t": {"prefix": "c", "value": "T3b"},
                        "n": {"prefix": "c", "value": "N1"},
                        "m": {"prefix": "c", "value": "M1b"},
                    },
                    "stages": [{"system": "Gleason", "value": "4+4=8"}],
                    "staging": "current",
                    "status": "progression",
                    "markers": [{"name": "PSA", "value": 48.3, "unit": "ng/ml"}],
                },
                entity="Prostatakarzinom",
                histology="Adenokarzinom",
                tnm="cT3b cN1 cM1b",
                stage="Gleason-Score 4+4=8",
                markers=["PSA 48,3 ng/ml"],
                status="Progress",
                staging="current",
            ),
            dx("diagnosen", "present", "Ossäre Metastasen", "C79.5"),
            dx("verlauf", "present", "Urosepsis", "A41.9"),
            dx("befunde", "negated", "Hydronephrose"),
            proc("befunde", "present", "Sonographie Abdomen", "", "14.04.2025", "2025-04-14"),
            lab("befunde", "present", "CRP", "120", "mg/l", "H", "14.04.2025", "2025-04-14"),
            lab("befunde", "present", "Kreatinin", "1,8", "mg/dl", "H", "14.04.2025", "2025-04-14"),
            lab("befunde", "suspected", "Troponin T"),
            med(
                "verlauf",
                "present",
                "Piperacillin/Tazobactam",
                "4,5",
                "g",
                "inpatient",
                route="i.v.",
                frequency="3x täglich",
            ),
            med("medikation", "present", "Enzalutamid", "160", "mg", schedule="1-0-0"),
            radio("verlauf", "present", "LWK 3", "30 Gy", "3 Gy", "10", "15.04.2025", "", "palliativ"),
            dx("epikrise", "historical", "Pneumonie", "", "2023", "2023"),
            lab("aufnahmebefund", "suspected", "Sauerstoffsättigung", "91", "%", kind="vital"),
            risk("anamnese", "suspected", "Alkoholabusus", kind="alcohol"),
        ],
        220,
    )
    r.header["destination"] = "Klinik für Strahlentherapie"
    r.header["reason"] = "zur Fortführung der Radiatio"
    return r


#: the sampler's letter-wide style choices, spread over the six recipes
STYLES: dict[str, dict[str, Any]] = {
    "crc-1": {"lab_layout": "table", "numbered_diagnoses": True},
    "bc-1": {"code_style": "bracket", "lab_layout": "list", "heading_case": "upper"},
    "lung-1": {"code_style": "line_end", "numbered_diagnoses": False},
    "dlbcl-1": {"lab_layout": "inline", "noise": "heavy"},
    "blca-1": {"code_style": "prefix", "noise": "none"},
    "pca-1": {"code_style": "line_end", "lab_layout": "table"},
}


def all_recipes() -> list[Recipe]:
    out = [colorectal(), breast(), lung(), lymphoma(), bladder_short(), transfer()]
    for r in out:
        r.style.update(STYLES[r.spec_id])
    return out
