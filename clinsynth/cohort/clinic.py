"""Clinical rules the cohort follows: which regimen, antiemetics, G-CSF, OPS code and work-up fit a case.

Kept apart from the generator so that the cohort tests check the generated courses against
the same written-down rules (and a reader finds the medicine in one place). Project content
from standard German practice (S3 guidelines, MASCC/ESMO antiemesis, EORTC G-CSF, UICC 8);
not clinically reviewed, for synthetic data only.
"""

from __future__ import annotations

from collections.abc import Iterable

#: emetogenic risk of a regimen (MASCC/ESMO): high -> 5-HT3 + dexamethasone + NK1; moderate -> 5-HT3
#: + dexamethasone; low/minimal -> none or metoclopramide as needed; oral -> no inpatient antiemesis
EMETOGENIC: dict[str, str] = {
    "ec": "high",
    "ec_dd": "high",
    "tac": "high",
    "cisplatin_vinorelbin": "high",
    "gemcitabin_cisplatin": "high",
    "cisplatin_weekly_rt": "high",
    "abvd": "high",
    "cisplatin_etoposid": "high",
    "mfolfox6": "moderate",
    "folfiri": "moderate",
    "capox": "moderate",
    "mfolfox6_bevacizumab": "moderate",
    "folfiri_cetuximab": "moderate",
    "flot": "moderate",
    "mfolfirinox": "moderate",
    "carboplatin_pemetrexed_pembrolizumab": "moderate",
    "carboplatin_paclitaxel_pembrolizumab": "moderate",
    "carboplatin_paclitaxel": "moderate",
    "carboplatin_etoposid": "moderate",
    "carboplatin_etoposid_atezolizumab": "moderate",
    "carboplatin_etoposid_durvalumab": "moderate",
    "carboplatin_vinorelbin": "moderate",
    "gemcitabin_carboplatin": "moderate",
    "r_chop_21": "high",  # anthracycline + cyclophosphamide (the AC rule)
    "aml_7plus3": "moderate",
    "gemcitabin_nab_paclitaxel": "low",
    "paclitaxel_weekly": "low",
    "paclitaxel_trastuzumab": "low",
    "docetaxel_prednison": "low",
    "vrd": "low",
    "trastuzumab_pertuzumab": "minimal",
    "nivolumab": "minimal",
    "nivolumab_ipilimumab": "minimal",
    "nivolumab_ipilimumab_rcc": "minimal",
    "pembrolizumab": "minimal",
    "cetuximab_rt": "minimal",
    "atezolizumab_bevacizumab": "minimal",
}

#: regimens taken at home (oral or hormonal): never an inpatient chemotherapy stay
OUTPATIENT = frozenset(
    {
        "letrozol",
        "tamoxifen",
        "palbociclib_letrozol",
        "osimertinib",
        "alectinib",
        "dabrafenib_trametinib",
        "enzalutamid",
        "abirateron_prednison",
        "leuprorelin",
        "ibrutinib",
        "capecitabin_rt",
        "temozolomid_stupp",
    }
)

#: short i.v./s.c. regimens given in the outpatient clinic (antibody monotherapy, VRd): no inpatient stay
OUTPATIENT_CYCLES = frozenset({"nivolumab", "pembrolizumab", "vrd"})
#: cisplatin is not given at eGFR < 60 ml/min: the carboplatin (or cetuximab) alternative
CISPLATIN_FREE = {
    "cisplatin_vinorelbin": "carboplatin_vinorelbin",
    "gemcitabin_cisplatin": "gemcitabin_carboplatin",
    "cisplatin_weekly_rt": "cetuximab_rt",
    "cisplatin_etoposid": "carboplatin_etoposid",
}
CISPLATIN = "L01XA01"

#: the second palliative line after progression (only where the entity lists it)
SECOND_LINE = {
    "mfolfox6": "folfiri",
    "mfolfox6_bevacizumab": "folfiri",
    "capox": "folfiri",
    "folfiri": "mfolfox6",
    "folfiri_cetuximab": "mfolfox6",
    "mfolfirinox": "gemcitabin_nab_paclitaxel",
    "gemcitabin_cisplatin": "nivolumab",
    "gemcitabin_carboplatin": "nivolumab",
    "carboplatin_paclitaxel": "paclitaxel_weekly",
}

#: loading doses of the first cycle (per_unit as in the regimen): trastuzumab, pertuzumab
LOADING = {
    "trastuzumab_pertuzumab": {"L01FD01": 8.0, "L01FD02": 840.0},
    "paclitaxel_trastuzumab": {"L01FD01": 4.0},
}


def needs_gcsf(regimen: str, age: int) -> bool:
    """Primary G-CSF prophylaxis: febrile-neutropenia risk >= 20 % (EORTC), R-CHOP from age 60."""
    return regimen in ("tac", "ec_dd") or (regimen == "r_chop_21" and age >= 60)


#: drug classes of which a patient takes one at a time: ATC level 4, RAS blockers (C09) as one class
def drug_class(atc: str) -> str:
    return atc[:3] if atc.startswith("C09") else atc[:5]


FIVE_HT3 = "A04AA"
#: drugs that are not substances in the OPS sense of 8-542/8-543: folinic acid and corticosteroids
_NOT_CYTOSTATIC = ("V03AF", "H02AB")


def counts_as_substance(atc: str) -> bool:
    return atc.startswith(("L01", "L04AX")) and not atc.startswith(_NOT_CYTOSTATIC)


def antibody_only(atcs: Iterable[str]) -> bool:
    """Monoclonal antibodies (L01F) alone are immunotherapy (OPS 8-547.0), not chemotherapy."""
    subs = [a for a in atcs if counts_as_substance(a)]
    return bool(subs) and all(a.startswith("L01F") for a in subs)


def chemo_ops(regimen: str, atcs: Iterable[str], days: int) -> str | None:
    """OPS for the systemic therapy given during one stay: by regimen, number of substances and days.

    8-544.0 for an AML induction block; 8-547.0 for antibodies alone; 8-542.1n for one day,
    8-543.dn for d >= 2 days with n substances (5-FU over 46 h counts two days).
    """
    atcs = list(atcs)
    subs = sorted({a for a in atcs if counts_as_substance(a)})
    if not subs:
        return None
    if regimen == "aml_7plus3":
        return "8-544.0"
    if antibody_only(subs):
        return "8-547.0"
    n = min(len(subs), 4)
    if days <= 1:
        return f"8-542.1{n}"
    return f"8-543.2{n}"


#: diagnostic work-up per entity at the first stay (OPS), the endoscopy/biopsy first
DIAGNOSTICS: dict[str, tuple[str, ...]] = {
    "lung": ("1-620", "3-222"),
    "colon": ("1-650", "1-444.7", "3-225"),
    "rectum": ("1-650", "1-444.7", "3-225"),
    "breast": ("3-100.0", "1-494.31"),
    "prostate": ("1-465.90", "3-705"),
    "pancreas": ("1-445", "3-225"),
    "stomach": ("1-632.0", "1-440.a", "3-225"),
    "oesophagus": ("1-632.0", "1-440.a", "3-222"),
    "bladder": ("1-661", "3-225"),
    "kidney": ("3-225", "3-222"),
    "liver": ("1-442.0", "3-225"),
    "melanoma": ("3-222", "3-225"),
    "head_neck": ("1-610.0", "3-222"),
    "ovary": ("1-694", "3-225"),
    "endometrium": ("1-471.2", "3-225"),
    "dlbcl": ("1-586.0", "1-424", "3-222"),
    "hodgkin": ("1-586.0", "1-424", "3-222"),
    "myeloma": ("1-424",),
    "aml": ("1-424",),
    "cll": ("1-424",),
}
#: procedures no entity but the listed ones gets (the ÖGD in prostate cancer of the old cohort)
ENTITY_ONLY: dict[str, frozenset[str]] = {
    "1-632.0": frozenset({"stomach", "oesophagus"}),
    "1-440.a": frozenset({"stomach", "oesophagus"}),
    "1-650": frozenset({"colon", "rectum"}),
    "1-444.7": frozenset({"colon", "rectum"}),
    "1-620": frozenset({"lung"}),
    "1-661": frozenset({"bladder"}),
    "3-100.0": frozenset({"breast"}),
    "1-494.31": frozenset({"breast"}),
    "1-465.90": frozenset({"prostate"}),
    "1-424": frozenset({"dlbcl", "hodgkin", "myeloma", "aml", "cll"}),
    "1-586.0": frozenset({"dlbcl", "hodgkin"}),
    "1-610.0": frozenset({"head_neck"}),
    "1-471.2": frozenset({"endometrium"}),
    "1-445": frozenset({"pancreas"}),
}

#: sites (ICD-10 C77-C79) and the M category they make, per entity (UICC 8)
PLEURA_CONTRALATERAL = frozenset({"C78.2", "C78.0"})  # lung M1a
PERITONEUM = "C78.6"
BONE = "C79.5"
BRAIN = "C79.3"
LUNG = "C78.0"


def m_for_sites(entity: str, sites: list[str]) -> str | None:
    """The M subcategory the metastasis sites make, or None where the entity has plain M1."""
    s = set(sites)
    if not s:
        return "0"
    if entity == "lung":
        if s <= PLEURA_CONTRALATERAL:
            return "1a"
        extra = s - PLEURA_CONTRALATERAL
        return "1b" if len(extra) == 1 else "1c"
    if entity in ("colon", "rectum"):
        if PERITONEUM in s:
            return "1c"
        return "1a" if len(s) == 1 else "1b"
    if entity == "prostate":
        if s - {BONE} - {c for c in s if c.startswith("C77")}:
            return "1c"
        return "1b" if BONE in s else "1a"
    if entity == "bladder":
        return "1a" if all(c.startswith("C77") for c in s) else "1b"
    if entity == "melanoma":
        if BRAIN in s:
            return "1d"
        if s - {LUNG, "C79.2"} - {c for c in s if c.startswith("C77")}:
            return "1c"
        return "1b" if LUNG in s else "1a"
    return None


#: Radiotherapy standards: (target, total Gy, fractions)
RT_RECTUM = ("Rektum und mesorektale Lymphabflusswege", 50.4, 28)
RT_BREAST = ("Mamma", 40.05, 15)
RT_PROSTATE = ("Prostata und Samenblasen", 74.0, 37)
RT_HEAD_NECK = ("Primärtumorregion und zervikale Lymphabflusswege", 70.0, 35)
RT_LUNG = ("Primärtumor und mediastinale Lymphknoten", 60.0, 30)
RT_OESOPHAGUS = ("Ösophagus und regionäre Lymphabflusswege", 41.4, 23)  # CROSS, neoadjuvant
RT_BRAIN = ("Ganzhirn", 30.0, 10)
RT_BONE = ("Skelettmetastase", 20.0, 5)
RT_OPS = "8-522.6"
#: axillary lymph node excision, beside a breast-conserving operation or mastectomy when nodes are positive
AXILLA = "5-401.1"

#: Vitals by LOINC: (German name, UCUM unit)
VITALS = {
    "8480-6": ("RR systolisch", "mm[Hg]"),
    "8462-4": ("RR diastolisch", "mm[Hg]"),
    "8867-4": ("Herzfrequenz", "/min"),
    "8310-5": ("Körpertemperatur", "Cel"),
    "29463-7": ("Körpergewicht", "kg"),
}

#: share of current / former smokers per entity (lung, bladder and head-neck cancer: mostly smokers)
SMOKING = {"lung": (0.45, 0.42), "bladder": (0.35, 0.4), "head_neck": (0.5, 0.35), "oesophagus": (0.35, 0.35)}
SMOKING_DEFAULT = (0.2, 0.3)

#: morphology codes (ICD-O-3) of small-cell lung cancer and of squamous-cell carcinoma
SCLC_MORPHOLOGY = ("8041/3",)
SQUAMOUS_MORPHOLOGY = ("8070/3", "8071/3", "8072/3")


def is_sclc(entity: str, morphology: str) -> bool:
    return entity == "lung" and morphology in SCLC_MORPHOLOGY


def clinical_stage(entity: str, t: str, n: str, m: str) -> str | None:
    """The UICC 8 clinical stage group where it differs from the pathological one (stomach), else None.

    Gastric cancer: cT4b any N is IVA, cT1-2 N+ IIA, cT3-4a N0 IIB, cT3-4a N+ III (UICC 8, cTNM).
    """
    if entity != "stomach":
        return None
    tv, nv, mv = t.removeprefix("T"), n.removeprefix("N"), m.removeprefix("M")
    if mv.startswith("1"):
        return "IVB"
    if tv == "4b":
        return "IVA"
    node = not nv.startswith("0")
    if tv.startswith(("1", "2")):
        return "IIA" if node else "I"
    return "III" if node else "IIB"


#: lab thresholds under which a cycle is postponed (G/l)
MIN_LEUKOCYTES, MIN_NEUTROPHILS, MIN_PLATELETS = 3.0, 1.5, 100.0
