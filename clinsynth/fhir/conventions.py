"""The FHIR vocabulary clinsynth writes and reads: MII profiles, code systems, well-known systems.

Profile URLs are those of the MII core data set (KDS) and the MII oncology module as
used by the MII test data (`medizininformatik-initiative/mii-testdata`, IG 2026.0.0).
"""

from __future__ import annotations

from typing import get_args

from clinsynth.schema import StageSystem

MII = "https://www.medizininformatik-initiative.de/fhir"
ONKO = f"{MII}/ext/modul-onko/StructureDefinition"

PROFILE = {
    "Patient": f"{MII}/core/modul-person/StructureDefinition/Patient",
    "Encounter": f"{MII}/core/modul-fall/StructureDefinition/KontaktGesundheitseinrichtung",
    "Condition": f"{MII}/core/modul-diagnose/StructureDefinition/Diagnose",
    "Condition.primary_tumor": f"{ONKO}/mii-pr-onko-diagnose-primaertumor",
    "Procedure": f"{MII}/core/modul-prozedur/StructureDefinition/Procedure",
    "Procedure.operation": f"{ONKO}/mii-pr-onko-operation",
    "Procedure.systemic_therapy": f"{ONKO}/mii-pr-onko-systemische-therapie",
    "Procedure.radiotherapy": f"{ONKO}/mii-pr-onko-strahlentherapie",
    "Medication": f"{MII}/core/modul-medikation/StructureDefinition/Medication",
    "MedicationStatement": f"{MII}/core/modul-medikation/StructureDefinition/MedicationStatement",
    "MedicationStatement.systemic_therapy": f"{ONKO}/mii-pr-onko-systemische-therapie-medikation",
    "Observation.lab": f"{MII}/core/modul-labor/StructureDefinition/ObservationLab",
    "Observation.histology": f"{ONKO}/mii-pr-onko-histologie-icdo3",
    "Observation.grading": f"{ONKO}/mii-pr-onko-grading",
    "Observation.tnm": f"{ONKO}/mii-pr-onko-tnm-klassifikation",
    "Observation.tnm_t": f"{ONKO}/mii-pr-onko-tnm-t-kategorie",
    "Observation.tnm_n": f"{ONKO}/mii-pr-onko-tnm-n-kategorie",
    "Observation.tnm_m": f"{ONKO}/mii-pr-onko-tnm-m-kategorie",
    "Observation.tnm_l": f"{ONKO}/mii-pr-onko-tnm-l-kategorie",
    "Observation.tnm_v": f"{ONKO}/mii-pr-onko-tnm-v-kategorie",
    "Observation.tnm_pn": f"{ONKO}/mii-pr-onko-tnm-pn-kategorie",
    "Observation.residual": f"{ONKO}/mii-pr-onko-residualstatus",
    "Observation.nodes_positive": f"{ONKO}/mii-pr-onko-anzahl-befallene-lymphknoten",
    "Observation.nodes_examined": f"{ONKO}/mii-pr-onko-anzahl-untersuchte-lymphknoten",
    "Observation.other_stage": f"{ONKO}/mii-pr-onko-weitere-klassifikationen",
    "Observation.ecog": f"{ONKO}/mii-pr-onko-allgemeiner-leistungszustand-ecog",
    "Observation.status": f"{ONKO}/mii-pr-onko-verlauf",
    "Observation.metastasis": f"{ONKO}/mii-pr-onko-fernmetastasen",
    "Observation.er": f"{ONKO}/mii-pr-onko-mamma-rezeptorstatus-estrogen",
    "Observation.pr": f"{ONKO}/mii-pr-onko-mamma-rezeptorstatus-progesteron",
    "Observation.her2": f"{ONKO}/mii-pr-onko-mamma-her2neu-status",
    "Observation.variant": f"{ONKO}/mii-pr-onko-genetische-variante",
    # HL7 vital signs (the MII has no profile of its own for these)
    "Observation.vital": "http://hl7.org/fhir/StructureDefinition/vitalsigns",
    "Observation.smoking": "http://hl7.org/fhir/StructureDefinition/Observation",
}

#: the oncology profile suffixes (after mii-pr-onko-) ingest reads, and the fact category of each
ONKO_CATEGORIES = {
    "tnm-t-kategorie": "tnm_t",
    "tnm-n-kategorie": "tnm_n",
    "tnm-m-kategorie": "tnm_m",
    "tnm-l-kategorie": "tnm_l",
    "tnm-v-kategorie": "tnm_v",
    "tnm-pn-kategorie": "tnm_pn",
    "residualstatus": "tnm_r",
    "anzahl-befallene-lymphknoten": "lymph_nodes",
    "anzahl-untersuchte-lymphknoten": "lymph_nodes",
    "tnm-klassifikation": "uicc_stage",
    "weitere-klassifikationen": "stage_other",
    "grading": "grading",
    "histologie-icdo3": "histology",
    "allgemeiner-leistungszustand-ecog": "ecog",
    "verlauf": "tumor_status",
    "fernmetastasen": "metastasis",
    "mamma-rezeptorstatus-estrogen": "marker_status",
    "mamma-rezeptorstatus-progesteron": "marker_status",
    "mamma-her2neu-status": "marker_status",
    "genetische-variante": "marker_status",
}

# code systems
ICD10GM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
OPS = "http://fhir.de/CodeSystem/bfarm/ops"
ATC = "http://fhir.de/CodeSystem/bfarm/atc"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
ICDO3_OID = "urn:oid:2.16.840.1.113883.6.43.1"
UICC = "https://www.uicc.org/resources/tnm"
ONKO_CS = f"{MII}/ext/modul-onko/CodeSystem"
GRADING = f"{ONKO_CS}/mii-cs-onko-grading"
TNM_VERSION = f"{ONKO_CS}/mii-cs-onko-tnm-version"
LATERALITY = f"{ONKO_CS}/mii-cs-onko-seitenlokalisation"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
FACHABTEILUNG = "http://fhir.de/CodeSystem/dkgev/Fachabteilungsschluessel"
KONTAKTEBENE = "http://fhir.de/CodeSystem/Kontaktebene"
KONTAKTART = "http://fhir.de/CodeSystem/kontaktart-de"
EDQM = "http://standardterms.edqm.eu"
MED_STATEMENT_CATEGORY = "http://terminology.hl7.org/CodeSystem/medication-statement-category"
PATIENT_ID_SYSTEM = "https://clinsynth.invalid/sid/patient"  # .invalid: never a real namespace
RESIDUAL = f"{ONKO_CS}/mii-cs-onko-residualstatus"
ECOG = f"{ONKO_CS}/mii-cs-onko-allgemeiner-leistungszustand-ecog"
MII_STATUS = f"{ONKO_CS}/mii-cs-onko-verlauf-gesamtbeurteilung"
MII_METASTASIS = f"{ONKO_CS}/mii-cs-onko-fernmetastasen"
MII_INTENTION = f"{ONKO_CS}/mii-cs-onko-intention"
VITAL_CATEGORY_CODE = "vital-signs"
CONDITION_RELATED = "http://hl7.org/fhir/StructureDefinition/condition-related"

# The project's own namespace: what the MII profiles have no element or code system for.
# `.invalid` never resolves, so these can never collide with a real terminology.
CLINSYNTH = "https://clinsynth.invalid/fhir"
CLINSYNTH_EXT = f"{CLINSYNTH}/StructureDefinition"
CLINSYNTH_CS = f"{CLINSYNTH}/CodeSystem"
#: extensions (valueCode / valueString / valuePositiveInt / valueBoolean)
EXT_STAGING_KIND = f"{CLINSYNTH_EXT}/staging-kind"  # Observation: initial | current
EXT_REGIMEN = f"{CLINSYNTH_EXT}/regimen"  # MedicationStatement: regimen name (valueString)
EXT_CYCLE = f"{CLINSYNTH_EXT}/cycle"  # MedicationStatement: cycle number (valuePositiveInt)
EXT_DAY = f"{CLINSYNTH_EXT}/cycle-day"  # MedicationStatement: day within the cycle (valuePositiveInt)
EXT_INTENT = f"{CLINSYNTH_EXT}/intent"  # MedicationStatement, Procedure: curative | palliative | ...
EXT_FRACTIONS = f"{CLINSYNTH_EXT}/fractions"  # radiotherapy Procedure: number of fractions
EXT_STAY_KIND = f"{CLINSYNTH_EXT}/stay-kind"  # Encounter: diagnostic | surgery | therapy | ...
#: Encounter: admitted for a cycle that was not given; valueCode = why (leukocytes | neutrophils | platelets)
EXT_POSTPONED = f"{CLINSYNTH_EXT}/cycle-postponed"
EXT_CONCURRENT = f"{CLINSYNTH_EXT}/concurrent-drug"  # radiotherapy Procedure: drug given alongside
DOSE_RATE_TYPE = "http://terminology.hl7.org/CodeSystem/dose-rate-type"  # ordered | calculated
#: code systems
MARKER_CS = f"{CLINSYNTH_CS}/marker"  # a marker without LOINC: code = its name ("Ki-67")
MARKER_RESULT = f"{CLINSYNTH_CS}/marker-result"  # positive | negative | equivocal | mutated | ...
TUMOR_STATUS = f"{CLINSYNTH_CS}/tumor-status"  # new | complete_remission | ... | mixed
SMOKING_CS = f"{CLINSYNTH_CS}/smoking"  # never | former | current, beside SNOMED
#: one code system per entity-specific staging system: value code = the stage as written
STAGE_SYSTEMS = {
    name: f"{CLINSYNTH_CS}/stage-{name.lower().replace(' ', '-')}"
    for name in get_args(StageSystem)
    if name != "UICC"  # UICC stages keep their own Observation (uicc_stage)
}


def stage_system_name(system: str) -> str:
    """The schema's name of a staging system: "ELN 2022" is ELN, "Rai" is Rai, unknown ones "other"."""
    if system in STAGE_SYSTEMS:
        return system
    return next((k for k in STAGE_SYSTEMS if system.startswith(k + " ")), "other")


MII_RADIOTHERAPY_TOTAL = f"{ONKO}/mii-ex-onko-strahlentherapie-bestrahlung-gesamtdosis"
MII_RADIOTHERAPY_FRACTION = f"{ONKO}/mii-ex-onko-strahlentherapie-bestrahlung-einzeldosis"
MII_RADIOTHERAPY_INTENTION = f"{ONKO}/mii-ex-onko-strahlentherapie-intention"
MII_SYSTEMIC_INTENTION = f"{ONKO}/mii-ex-onko-systemische-therapie-intention"

#: systems whose codes ingest turns into facts; one of them must code the element
#: in order of preference: the schema's system first (its slot takes the code), then its
#: legacy URL, then the others (their codes keep their system in the record and never fill the slot)
DIAGNOSIS_SYSTEMS = (ICD10GM, "http://fhir.de/CodeSystem/dimdi/icd-10-gm", ICD10_WHO)
PROCEDURE_SYSTEMS = (OPS, "http://fhir.de/CodeSystem/dimdi/ops", SNOMED)
MEDICATION_SYSTEMS = (
    ATC,
    "http://fhir.de/CodeSystem/dimdi/atc",
    "http://www.whocc.no/atc",
    "http://fhir.de/CodeSystem/ifa/pzn",
    SNOMED,
    "http://fhir.de/CodeSystem/ask",
)
LAB_SYSTEMS = (LOINC, SNOMED)
STAGE_SYSTEM_OF = {url: name for name, url in STAGE_SYSTEMS.items()}
ICDO3_SYSTEMS = (ICDO3, ICDO3_OID)

#: exact code system URLs accepted in codings, besides the prefixes below
KNOWN_SYSTEMS = frozenset(
    {
        ICD10GM,
        ICD10_WHO,
        OPS,
        ATC,
        LOINC,
        SNOMED,
        UCUM,
        ICDO3,
        ICDO3_OID,
        UICC,
        EDQM,
        "http://fhir.de/CodeSystem/dimdi/icd-10-gm",
        "http://fhir.de/CodeSystem/dimdi/ops",
        "http://fhir.de/CodeSystem/dimdi/atc",
        "http://fhir.de/CodeSystem/bfarm/alpha-id",
        "http://fhir.de/CodeSystem/dimdi/alpha-id",
        "http://fhir.de/CodeSystem/bfarm/icd-o-3",
        "http://purl.obolibrary.org/obo/mondo.owl",
        "http://orpha.net",
        "http://www.whocc.no/atc",
        "urn:iso:std:iso:11073:10101",
        "http://varnomen.hgvs.org",
        "http://www.genenames.org/geneId",
        "http://www.genenames.org",
        "http://human-phenotype-ontology.org",
        "http://www.orpha.net",
        "http://www.ensembl.org",
        "http://www.ncbi.nlm.nih.gov/clinvar",
        "http://cancer.sanger.ac.uk/cancergenome/projects/cosmic",
        "urn:ietf:bcp:47",
        "urn:ietf:bcp:13",
        "urn:iso:std:iso:3166",
        "http://www.bbmri-eric.eu/",
        "http://data.mskcc.org/ontologies/oncotree",
        "http://ncit.nci.nih.gov",
        "http://fdasis.nlm.nih.gov",
        "https://nih-ncpi.github.io/ncpi-fhir-ig/CodeSystem-ncit.html",
        "http://radlex.org",
        "http://omim.org",
        "http://purl.obolibrary.org/obo/hp.owl",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "http://www.ama-assn.org/go/cpt",
    }
)

#: prefixes of code system families (HL7, FHIR, fhir.de, MII, OIDs, IHE-D, ...)
KNOWN_SYSTEM_PREFIXES = (
    "http://terminology.hl7.org/CodeSystem/",
    "http://hl7.org/fhir/",
    "http://fhir.de/CodeSystem/",
    f"{MII}/",
    "urn:oid:",
    "http://ihe-d.de/CodeSystems/",
    "https://www.uicc.org/",
    "http://dicom.nema.org/",
    f"{CLINSYNTH}/",
)


#: inside these families only the exact systems above exist: a near miss is a typo, not a new system
STRICT_FAMILIES = ("http://fhir.de/CodeSystem/bfarm/", "http://fhir.de/CodeSystem/dimdi/")


def is_known_system(system: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """Known: listed, configured, or in a well-known family; a coding without a system is unknown."""
    if not system:
        return False
    if system in KNOWN_SYSTEMS or system in extra:
        return True
    if system.startswith(STRICT_FAMILIES):
        return False
    return system.startswith(KNOWN_SYSTEM_PREFIXES)


# ---- codes clinsynth writes for what it records: one place for the cohort and the export
#: (system, code, display) of a coding
CodeSpec = tuple[str, str, str]
#: schema grading (G1 ... GB, L/M/H) -> code in mii-cs-onko-grading
GRADING_OF = {"G1": "1", "G2": "2", "G3": "3", "G4": "4", "GX": "X", "GB": "B", "L": "L", "M": "M", "H": "H"}
#: German dose and lab units -> UCUM codes (units not listed here are written as they are)
UNIT_UCUM = {
    "µg": "ug",
    "mcg": "ug",
    "IE": "[IU]",
    "I.E.": "[IU]",
    "ml": "mL",
    "Hub": "{Hub}",
    "Tbl": "{Tbl}",
    "Stück": "{Stück}",
    "Tropfen": "[drp]",
    "mg/m2": "mg/m2",
    "mg/kg": "mg/kg",
}
#: route as written -> EDQM standard term (code, display)
ROUTE_EDQM = {
    "i.v.": ("20045000", "Intravenous use"),
    "p.o.": ("20053000", "Oral use"),
    "s.c.": ("20066000", "Subcutaneous use"),
}
#: the four slots of a 1-0-1-0 schedule as Timing.repeat.when codes
SCHEDULE_WHEN = ("MORN", "NOON", "EVE", "NIGHT")
#: SNOMED CT smoking status answers (the MII and HL7 use these for LOINC 72166-2)
SMOKING_SNOMED = {
    "never": ("266919005", "Never smoked tobacco"),
    "former": ("8517006", "Ex-smoker"),
    "current": ("77176002", "Smoker"),
}
#: MII oncology: therapy intention (K kurativ, P palliativ) where our intent maps onto it
MII_INTENTION_OF = {"curative": ("K", "kurativ"), "palliative": ("P", "palliativ")}
#: MII Verlauf (Gesamtbeurteilung) beside our own status code
MII_STATUS_OF = {
    "complete_remission": ("V", "Vollremission"),
    "partial_remission": ("T", "Teilremission"),
    "stable": ("K", "keine Änderung"),
    "progression": ("P", "Progression"),
    "recurrence": ("Y", "Rezidiv"),
    "mixed": ("D", "divergentes Geschehen"),
}
#: lymph node counts of the N category: LOINC (code, display) by role
LYMPH_NODES_LOINC = {
    "positive": ("21893-3", "Regional lymph nodes positive [#] Specimen"),
    "examined": ("21894-1", "Regional lymph nodes examined [#] Specimen"),
}
#: receptor markers with an MII profile of their own, by LOINC
MARKER_PROFILE_OF = {"40556-3": "Observation.er", "85339-0": "Observation.pr", "48676-1": "Observation.her2"}
#: Observation.code of the tumour observations
HISTOLOGY_CODE: CodeSpec = (LOINC, "59847-4", "Histology and Behavior ICD-O-3 Cancer")
GRADING_CODE: CodeSpec = (LOINC, "33732-9", "Histology grade [Identifier] in Cancer specimen")
RESIDUAL_CODE: CodeSpec = (LOINC, "84892-9", "Residual tumor classification [Type] in Cancer specimen")
TNM_CATEGORY_CODE: dict[str, CodeSpec] = {
    "t": (SNOMED, "399504009", "T category"),
    "n": (SNOMED, "399534004", "N category"),
    "m": (SNOMED, "399387003", "M category"),
    "l": (SNOMED, "395715009", "Status of lymphatic (small vessel) invasion by tumor"),
    "v": (SNOMED, "371493002", "Status of vascular invasion by tumor"),
    "pn": (SNOMED, "371513001", "Status of perineural invasion by tumor"),
}
#: UICC stage grouping: clinical (prefix c) or pathological (any other prefix)
TNM_GROUPING_CODE: dict[str, CodeSpec] = {
    "clinical": (SNOMED, "399537006", "TNM stage grouping"),
    "pathological": (SNOMED, "399588009", "TNM stage grouping"),
}
ECOG_CODES: tuple[CodeSpec, ...] = (
    (SNOMED, "423740007", "ECOG performance status"),
    (LOINC, "89262-0", "Physical performance [ECOG]"),
)
TUMOR_STATUS_CODE: CodeSpec = (SNOMED, "396432002", "Status of regression of tumor")
METASTASIS_CODE: CodeSpec = (SNOMED, "385421009", "Site of distant metastasis")
SMOKING_CODE: CodeSpec = (LOINC, "72166-2", "Tobacco smoking status")
PACK_YEARS_CODE: CodeSpec = (LOINC, "8664-5", "Cigarettes smoked total (pack per year)")
#: a radiotherapy course without an OPS code
EXTERNAL_BEAM_CODE: CodeSpec = (SNOMED, "33195004", "External beam radiation therapy procedure")
