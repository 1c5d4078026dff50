"""Draw one patient's oncology course: entity by inpatient mix, consistent tumour, stays over time.

Every patient is a pure function of (seed, index): shards and relaunches give the same
people. Dates run diagnosis <= (neoadjuvant therapy) <= surgery <= adjuvant/palliative
therapy, all on or before the reference day. The clinical rules live beside it: the
regimen a case gets in `plan`, the tables (antiemetics by emetogenic risk, G-CSF, OPS by
regimen, work-up by entity, M category by sites) in `clinic`, the tumour's markers, stages
and metastasis sites in `tumour`, creatinine/eGFR in `renal`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, TypeVar

from clinsynth.cohort import clinic
from clinsynth.cohort.model import Dx, Lab, Med, Person, Proc, Radiotherapy, Stay, Tumor, Vital
from clinsynth.cohort.plan import Plan, plan_course
from clinsynth.cohort.renal import ckd_epi, cockcroft_gault, creatinine_for_egfr
from clinsynth.cohort.tumour import (
    entity_stages,
    examined_nodes,
    metastasis_sites,
    positive_nodes,
    stage_rank,
    tumour_markers,
    weighted,
)

T = TypeVar("T")

#: (ICD 3-character prefixes, Fachabteilungsschlüssel, German name) of the surgical department
_SURGERY_DEPT = [
    (("C34", "C33", "C38", "C45"), "2000", "Thoraxchirurgie"),
    (("C61", "C62", "C64", "C65", "C66", "C67", "C68"), "2200", "Urologie"),
    (("C50", "C51", "C52", "C53", "C54", "C55", "C56", "C57"), "2400", "Frauenheilkunde und Geburtshilfe"),
    (tuple(f"C{i:02d}" for i in range(15)) + ("C30", "C31", "C32"), "2600", "Hals-, Nasen-, Ohrenheilkunde"),
    (("C43", "C44"), "3400", "Dermatologie"),
    (("C70", "C71", "C72"), "1700", "Neurochirurgie"),
]
_MEDICAL_DEPT = ("0500", "Hämatologie und internistische Onkologie")
_GENERAL_SURGERY = ("1500", "Allgemeine Chirurgie")
_RADIOTHERAPY_DEPT = ("3300", "Strahlenheilkunde")
#: the routine inpatient panel, by LOINC, when the catalogue has it
_PANEL = (
    "718-7",
    "6690-2",
    "26499-4",
    "777-3",
    "2160-0",
    "62238-1",
    "1988-5",
    "2951-2",
    "2823-3",
    "1742-6",
    "1920-8",
    "2885-2",
)
GLUCOSE, HBA1C = "2345-7", "4548-4"
#: beta-2-microglobulin (ug/mL = mg/l, the ISS unit) and albumin (g/dL)
B2M, ALBUMIN = "1952-1", "1751-7"
HB, LEUKO, NEUTRO, PLT, CREA, EGFR, CRP = "718-7", "6690-2", "26499-4", "777-3", "2160-0", "62238-1", "1988-5"
_HAEM = ("dlbcl", "hodgkin", "myeloma", "aml", "cll")
#: entities that are typical earlier, cured second primaries
_SECOND_PRIMARY = ("breast", "prostate", "colon", "melanoma", "kidney", "bladder", "endometrium")
_STEROID = ("H02AB",)
#: histology wording per entity where the ICD-O-3 title is another organ's (8500/3 is the breast's
#: "invasive ductal carcinoma"; in the pancreas it is the ductal adenocarcinoma)
_NOT_DAILY = {"L03AA13": "einmalig d2", "M05BA08": "alle 4 Wochen", "M05BX04": "alle 4 Wochen"}
_HISTOLOGY = {("pancreas", "8500/3"): "Duktales Adenokarzinom"}
#: endocrine therapy (letrozole, tamoxifen): not in the same stay as chemotherapy
_ENDOCRINE = ("L02B",)


@dataclass
class CohortConfig:
    seed: int = 0
    reference_date: date = date(2025, 6, 30)
    max_chemo_cycles: int = 4
    comorbidity_scale: float = 1.0


def _clip(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


@dataclass
class _Case:
    """Everything drawn once per patient that the stays share."""

    p: Person
    entity: Any
    icd: str
    age: int
    diag: date
    tumor: Tumor
    comorbid: list[Any]
    long_term: list[Any]
    egfr: float
    hypertension: bool
    ecog: int
    five_ht3: Any
    laterality: str | None = None
    diabetes: bool = False
    #: an earlier second primary (resected, in remission), its ICD code and side
    other: Tumor | None = None
    other_icd: str = ""
    other_laterality: str | None = None
    stays: list[Stay] = field(default_factory=list)
    home_meds: list[Med] = field(default_factory=list)  # outpatient therapy running from their start
    gcsf_secondary: bool = False
    progressed: date | None = None  # a palliative line ended with progression; the next cycle was due then
    n: int = 0  # stay counter

    def key(self) -> str:
        self.n += 1
        return f"{self.p.key}-{self.n}"


class CohortGenerator:
    def __init__(self, cfg: CohortConfig) -> None:
        from faker import Faker

        from clinsynth.terminology import load_catalog

        self.cfg = cfg
        self.cat = load_catalog()
        self.fake = Faker("de_DE")
        self.entities = [(e, e.weight) for e in self.cat.entities]
        self.panel = [self.cat.labs[c] for c in _PANEL if c in self.cat.labs]
        #: (low, high) per LOINC and sex, computed once
        self.bounds = {
            (t.loinc, sex): _bounds(t, sex) for t in self.cat.labs.values() for sex in ("female", "male")
        }
        self.schedules = {d.atc: _schedule(d.schedule) for d in self.cat.supportive}
        self.support = {d.atc: d for d in self.cat.supportive}
        self.z_chemo = self.cat.icd10gm.lookup("Z51.1")

    # ------------------------------------------------------------------ one patient
    def person(self, index: int) -> Person:
        cfg, cat = self.cfg, self.cat
        rng = random.Random(f"clinsynth-cohort:{cfg.seed}:{index}")
        entity = weighted(rng, self.entities)
        sex = entity.sex if entity.sex in ("female", "male") else rng.choice(("female", "male"))
        ref = cfg.reference_date
        diag = ref - timedelta(days=rng.randint(45, 3 * 365))
        age = int(_clip(rng.gauss(entity.age_mean, entity.age_sd), entity.age_min, entity.age_max))
        birth = diag - timedelta(days=365 * age + rng.randint(0, 364))
        self.fake.seed_instance(rng.getrandbits(32))
        given = self.fake.first_name_female() if sex == "female" else self.fake.first_name_male()
        height = _clip(rng.gauss(166 if sex == "female" else 179, 7), 145, 200)
        weight = _clip(rng.gauss(70 if sex == "female" else 84, 13), 42, 150)
        p = Person(
            key=f"{cfg.seed}-{index:07d}",
            sex=sex,
            birth=birth,
            family=self.fake.last_name(),
            given=given,
            city=self.fake.city(),
            postal_code=self.fake.postcode(),
            height_cm=round(height),
            weight_kg=round(weight),
        )
        current, former = clinic.SMOKING.get(entity.key, clinic.SMOKING_DEFAULT)
        u = rng.random()
        p.smoking = "current" if u < current else "former" if u < current + former else "never"
        if p.smoking != "never":
            p.pack_years = float(round(_clip(rng.gauss(35 if entity.key == "lung" else 22, 12), 3, 90)))

        tumor, icd = self._tumor(rng, entity, diag, age)
        comorbid = [
            c
            for c in cat.comorbidities
            if c.icd != "F17.1" and rng.random() < _prevalence(c, age) * cfg.comorbidity_scale
        ]
        if p.smoking == "current" and rng.random() < 0.4:
            comorbid += [c for c in cat.comorbidities if c.icd == "F17.1"]
        if (
            p.smoking != "never"
            and not any(c.icd.startswith("J44") for c in comorbid)
            and rng.random() < 0.15
        ):
            comorbid += [c for c in cat.comorbidities if c.icd.startswith("J44")]
        ckd = any(c.icd == "N18.3" for c in comorbid)
        egfr = rng.uniform(32, 56) if ckd else _clip(108 - 0.7 * (age - 30) + rng.gauss(0, 8), 64, 125)
        # each comorbidity is treated with one (sometimes two) of its usual drugs, one drug per class
        long_term: list[Any] = []
        classes: set[str] = set()
        for c in comorbid:
            for d in rng.sample(c.drugs, k=min(len(c.drugs), rng.choice((1, 1, 2)))):
                if clinic.drug_class(d.atc) not in classes:
                    classes.add(clinic.drug_class(d.atc))
                    long_term.append(d)
        five_ht3 = self.support[weighted(rng, [("A04AA01", 5), ("A04AA02", 3), ("A04AA05", 2)])]
        case = _Case(
            p,
            entity,
            icd,
            age,
            diag,
            tumor,
            comorbid,
            long_term,
            egfr,
            any(c.icd.startswith("I10") for c in comorbid),
            weighted(rng, [(0, 5), (1, 4), (2, 1)]),
            five_ht3,
            rng.choice(("L", "R")) if entity.paired_organ else None,
        )
        case.diabetes = any(x.icd.startswith("E11") for x in comorbid)
        if age >= 45 and rng.random() < 0.04:
            self._earlier_tumor(rng, case)
        plan = plan_course(rng, entity, case.tumor, age, case.egfr)
        self._course(rng, case, plan)
        p.stays = case.stays
        return p

    # ------------------------------------------------------------------ the tumour
    def _tumor(self, rng: random.Random, entity: Any, diag: date, age: int) -> tuple[Tumor, str]:
        cat = self.cat
        icd = weighted(rng, entity.icd)
        stage = weighted(rng, entity.stage_weights) if entity.stage_weights else None
        t = n = m = None
        if entity.has_tnm and stage is not None:
            t, n, m = entity.tnm_for_stage(stage, rng)
        morph = entity.morphology_for(icd, rng)
        topo = entity.topography_for(icd, rng)
        grading = weighted(rng, entity.grading)
        morph_display = (
            _HISTOLOGY.get((entity.key, morph))
            or (cat.icdo3_morphology.lookup(morph) or _Named(morph)).display
        )
        if entity.has_tnm and t is not None and n is not None and m is not None:
            stage = clinic.clinical_stage(entity.key, t, n, m) or stage
        # melanoma T needs the excised primary: pT at diagnosis, nodes and M clinical
        prefix = "p" if entity.key == "melanoma" else "c"
        tumor = Tumor(
            entity.key, morph, morph_display, topo, grading, prefix, t, n, m, stage, diag, entity.staging
        )
        tumor.m_prefix = "c"
        if prefix == "p":
            tumor.n_prefix = "c"
        tumor.metastasis_sites = metastasis_sites(rng, entity, (m or "M0").removeprefix("M")) if m else []
        tumor.stages = entity_stages(rng, entity.key, stage)
        tumor.markers = tumour_markers(rng, entity.key, morph, stage, m)
        tumor.status = "new"
        if entity.key in _HAEM:  # UICC/TNM does not apply: Ann Arbor, ISS, Binet or ELN is the only stage
            tumor.uicc = None
        return tumor, icd

    def _earlier_tumor(self, rng: random.Random, c: _Case) -> None:
        """A second primary diagnosed 4-15 years before, resected at an early stage, now in remission."""
        pool = [
            (e, e.weight)
            for e in self.cat.entities
            if e.key in _SECOND_PRIMARY and e.key != c.entity.key and e.sex in ("any", c.p.sex)
        ]
        e = weighted(rng, pool)
        when = c.diag - timedelta(days=rng.randint(4 * 365, 15 * 365))
        if when < c.p.birth + timedelta(days=35 * 365):
            return
        early = [(s, w) for s, w in e.stage_weights if stage_rank(s) in (1, 2)]
        stage = weighted(rng, early)
        t, n, m = e.tnm_for_stage(stage, rng)
        icd = weighted(rng, e.icd)
        morph = e.morphology_for(icd, rng)
        pos = positive_nodes(rng, n)
        c.other = Tumor(
            e.key,
            morph,
            (self.cat.icdo3_morphology.lookup(morph) or _Named(morph)).display,
            e.topography_for(icd, rng),
            weighted(rng, e.grading),
            "p",
            t,
            n,
            m,
            stage,
            when,
            e.staging,
            key="t2",
            m_prefix="c",
            nodes=f"{pos}/{examined_nodes(rng, e.key, pos)}",
            r="R0",
            kind="initial",
            stages=entity_stages(rng, e.key, stage),
            markers=tumour_markers(rng, e.key, morph, stage, m),
            status="complete_remission",
        )
        c.other_icd = icd
        c.other_laterality = rng.choice(("L", "R")) if e.paired_organ else None

    # ------------------------------------------------------------------ the stays
    def _course(self, rng: random.Random, c: _Case, pl: Plan) -> None:
        ref = self.cfg.reference_date
        e = c.entity.key
        if e == "aml":  # diagnosed and induced in one stay: the marrow puncture, then 7+3 at once
            tumor = _with(c.tumor, ecog=c.ecog)
            if self._cycles(rng, c, pl.systemic or "aml_7plus3", "induction", c.diag, 1, tumor) and c.stays:
                c.stays[0].procedures.insert(0, self._proc("1-424", c.stays[0].start, "diagnostic"))
            return
        # melanoma is diagnosed on the excised lesion (pT): never a suspected diagnosis
        provisional = e not in _HAEM and e != "melanoma" and rng.random() < 0.35
        # 1. diagnostic stay (surgical work-up departments for organ tumours half the time)
        dept = _MEDICAL_DEPT if e in _HAEM or rng.random() < 0.5 else _surgical_dept(c.icd)
        los = rng.randint(2, 6)  # the diagnosis falls inside the stay
        s1 = self._stay(c, c.diag - timedelta(days=rng.randint(0, min(3, los))), los, dept, "diagnostic")
        if s1 is None:
            return
        tumor = c.tumor
        biopsy_m = False
        for i, code in enumerate(clinic.DIAGNOSTICS.get(e, ())):
            s1.procedures.append(self._proc(code, s1.start + timedelta(days=min(i, _los(s1))), "diagnostic"))
        if clinic.BRAIN in tumor.metastasis_sites:
            s1.procedures.append(
                self._proc("3-820", s1.start + timedelta(days=min(1, _los(s1))), "diagnostic")
            )
        if clinic.BONE in tumor.metastasis_sites and "3-705" not in {x.ops for x in s1.procedures}:
            s1.procedures.append(
                self._proc("3-705", s1.start + timedelta(days=min(1, _los(s1))), "diagnostic")
            )
        if not provisional and "C78.7" in tumor.metastasis_sites and e != "liver" and rng.random() < 0.4:
            s1.procedures.append(
                self._proc("1-442.0", s1.start + timedelta(days=min(1, _los(s1))), "diagnostic")
            )
            biopsy_m = True
        tumor = _with(tumor, m_prefix="p" if biopsy_m else "c", confirmed=not provisional, ecog=c.ecog)
        s1.tumor = tumor
        s1.diagnoses = self._diagnoses(c, s1, tumor, provisional=provisional)
        s1.labs = self._labs(rng, c, s1, burden=1.0, cycle=0, aml=e == "aml")
        s1.vitals = self._vitals(rng, c, s1)
        if not (pl.surgery and pl.surgery_code):
            self._start_home(rng, c, pl, s1, when=s1.end, adjuvant_only=False)
        self._discharge(rng, c, s1)
        tumor = _with(tumor, confirmed=True)
        last = s1.end
        if e == "aml":  # induction starts within days of the diagnosis
            self._cycles(
                rng,
                c,
                pl.systemic or "aml_7plus3",
                "induction",
                s1.end + timedelta(days=rng.randint(0, 2)),
                1,
                tumor,
            )
            return

        # 2. neoadjuvant therapy
        neo_done = False
        if pl.neo_rt is not None:
            rt_start = last + timedelta(days=rng.randint(10, 21))
            rt = _rt_course(pl.neo_rt, rt_start, "neoadjuvant", pl.neo_rt_drug)
            last = rt.end + timedelta(days=rng.randint(40, 70))
            neo_done = rt.end < ref
            pending_rt: list[Radiotherapy] = [rt] if neo_done else []
        else:
            pending_rt = []
        if pl.neo is not None:
            start = last + timedelta(days=rng.randint(10, 21))
            end = self._cycles(rng, c, pl.neo, "neoadjuvant", start, pl.neo_cycles, tumor)
            if end is None:
                return
            neo_done = True
            last = end + timedelta(days=rng.randint(21, 35))
        elif pl.neo_rt is None:
            last = last + timedelta(days=rng.randint(10, 35))
        if pl.neo_rt is not None and not neo_done:
            return

        # 3. surgery
        if pl.surgery and pl.surgery_code:
            s2 = self._stay(c, last, rng.randint(5, 14), _surgical_dept(c.icd), "surgery")
            if s2 is None:
                return
            s2.procedures.append(self._proc(pl.surgery_code, s2.start + timedelta(days=1), "operation"))
            if e == "breast" and not (tumor.n or "N0").startswith("N0") and rng.random() < 0.7:
                s2.procedures.append(self._proc(clinic.AXILLA, s2.start + timedelta(days=1), "operation"))
            s2.radiotherapy = pending_rt
            tumor = self._pathology(rng, c, s2, neo_done)
            s2.tumor = tumor
            s2.diagnoses = self._diagnoses(c, s2, tumor)
            s2.labs = self._labs(rng, c, s2, burden=0.4, cycle=0)
            s2.vitals = self._vitals(rng, c, s2)
            if not any(clinic.drug_class(d.atc) == "B01AF" for d in c.long_term):
                s2.medications.append(self._support("B01AB05", s2.start, "inpatient"))
            if not any(clinic.drug_class(d.atc) == "A02BC" for d in c.long_term):
                s2.medications.append(self._support("A02BC02", s2.start, "inpatient"))
            s2.medications.append(self._support("N02BB02", s2.start, "inpatient"))
            last = s2.end + timedelta(days=rng.randint(21, 42))
            tumor = _with(tumor, status="complete_remission" if tumor.r in (None, "R0") else tumor.status)
            pending_rt = []
            self._start_home(rng, c, pl, s2, when=s2.end, adjuvant_only=True)
            self._discharge(rng, c, s2)
        else:
            last = last + timedelta(days=rng.randint(0, 14))

        # 4. systemic therapy (adjuvant, definitive with RT, palliative)
        if pl.systemic and pl.systemic not in clinic.OUTPATIENT | clinic.OUTPATIENT_CYCLES:
            concurrent = None
            outpatient: list[Radiotherapy] = []
            if pl.rt is not None and pl.rt is not clinic.RT_BREAST:
                concurrent = _rt_course(pl.rt, last, pl.systemic_intent, pl.rt_drug)
                if concurrent.end >= self.cfg.reference_date:  # no course that ends after the data do
                    return
            elif pl.rt is clinic.RT_BREAST and pl.systemic == "trastuzumab_pertuzumab":
                # antibody maintenance runs on; the breast is irradiated at the same time, as an outpatient
                outpatient = [self._breast_rt(c, last + timedelta(days=rng.randint(0, 10)))]
                pl.rt = None
            cycles = rng.randint(1, self.cfg.max_chemo_cycles)
            end = self._cycles(
                rng,
                c,
                pl.systemic,
                pl.systemic_intent,
                last,
                cycles,
                tumor,
                rt=concurrent,
                history=outpatient,
            )
            if end is None:
                return
            second = clinic.SECOND_LINE.get(pl.systemic)
            if (
                c.progressed is not None
                and second in c.entity.regimens
                and second not in clinic.OUTPATIENT_CYCLES
            ):
                assert second is not None
                cycles = rng.randint(1, self.cfg.max_chemo_cycles)
                t2 = _with(tumor, status="progression")
                end = self._cycles(rng, c, second, "palliative", c.progressed, cycles, t2, line=2)
                if end is None:
                    return
                tumor = t2
            last = end + timedelta(days=rng.randint(14, 30))
        # 5. palliative radiotherapy of brain / bone metastases, or an outpatient RT shown on a later stay
        sites = tumor.metastasis_sites
        pall = clinic.RT_BRAIN if clinic.BRAIN in sites else clinic.RT_BONE if clinic.BONE in sites else None
        if pall is not None and rng.random() < 0.55:
            st = self._stay(c, last, pall[2] + 4 + rng.randint(0, 4), _RADIOTHERAPY_DEPT, "palliative")
            if st is None:
                return
            rt = _rt_course(pall, st.start + timedelta(days=1), "palliative", None)
            if rt.end > st.end:  # cut off by the reference day: no half course
                c.stays.remove(st)
                return
            if pall is clinic.RT_BONE:
                rt.target = rng.choice(("LWK 3", "BWK 9", "Os ilium links", "LWK 1", "Femur rechts proximal"))
            st.radiotherapy = [rt]
            st.procedures.append(self._proc(clinic.RT_OPS, rt.start, "radiotherapy"))
            t2 = _with(tumor, status="progression", ecog=min(3, c.ecog + 1))
            st.tumor = t2
            st.diagnoses = self._diagnoses(c, st, t2)
            st.labs = self._labs(rng, c, st, burden=1.2, cycle=0)
            st.vitals = self._vitals(rng, c, st)
            if pall is clinic.RT_BRAIN:
                st.medications.append(_with(self._support("H02AB02", st.start, "inpatient"), dose=4.0))
            st.medications += [
                self._support("N02BB02", st.start, "inpatient"),
                self._support("N02AA05", st.start, "discharge"),
            ]
            self._discharge(rng, c, st)
            return

        # 6. outpatient radiotherapy (breast after BET, prostate definitive), then for some a recurrence
        curative = pl.surgery or pl.rt in (clinic.RT_PROSTATE, clinic.RT_LUNG, clinic.RT_HEAD_NECK)
        if (
            (tumor.m or "M0").startswith("M1")
            or e in _HAEM
            or not curative
            or (pl.systemic and pl.systemic_intent == "palliative")
        ):
            return
        courses: list[Radiotherapy] = []
        if pl.rt in (clinic.RT_BREAST, clinic.RT_PROSTATE):
            breast = pl.rt is clinic.RT_BREAST
            rt = self._breast_rt(c, last) if breast else _rt_course(pl.rt, last, "curative", None)
            courses.append(rt)
            last = rt.end + timedelta(days=rng.randint(14, 60))
        if rng.random() < 0.18:
            self._recurrence(rng, c, last + timedelta(days=rng.randint(240, 900)), tumor, courses)

    def _breast_rt(self, c: _Case, start: date) -> Radiotherapy:
        rt = _rt_course(clinic.RT_BREAST, start, "adjuvant", None)
        rt.target = "Mamma links" if c.laterality == "L" else "Mamma rechts"
        return rt

    def _recurrence(
        self, rng: random.Random, c: _Case, start: date, tumor: Tumor, rts: list[Radiotherapy]
    ) -> None:
        """A local recurrence worked up months after curative therapy (rTNM, current staging)."""
        dept = _MEDICAL_DEPT if rng.random() < 0.5 else _surgical_dept(c.icd)
        st = self._stay(c, start, rng.randint(2, 7), dept, "diagnostic")
        if st is None:
            return
        st.radiotherapy = [r for r in rts if r.end < st.start]
        work_up = clinic.DIAGNOSTICS.get(c.entity.key, ())
        for i, code in enumerate(work_up[:2]):
            st.procedures.append(self._proc(code, st.start + timedelta(days=min(i, _los(st))), "diagnostic"))
        t = tumor
        if t.t is not None and t.n is not None and t.m is not None:
            uicc = self.cat.stage_group(c.entity.key, t.t, "N0", "M0")
            t = _with(t, prefix="r", n_prefix=None, m_prefix="c", n="N0", m="M0", uicc=uicc, nodes=None,
                      l=None, v=None, pn=None, r=None)  # fmt: skip
        t = _with(t, kind="current", status="recurrence", when=st.start + timedelta(days=min(1, _los(st))),
                  ecog=c.ecog)  # fmt: skip
        st.tumor = t
        st.diagnoses = self._diagnoses(c, st, t)
        st.labs = self._labs(rng, c, st, burden=1.0, cycle=0)
        st.vitals = self._vitals(rng, c, st)
        self._discharge(rng, c, st)

    def _cycles(
        self,
        rng: random.Random,
        c: _Case,
        key: str,
        intent: str,
        start: date,
        cycles: int,
        tumor: Tumor,
        rt: Radiotherapy | None = None,
        history: list[Radiotherapy] | None = None,
        line: int = 1,
    ) -> date | None:
        """Inpatient cycles of one regimen with postponements and febrile neutropenia between them.

        A palliative first line stops at a restaging that shows progression (`_Case.progressed`
        holds the day the next cycle was due); the caller may start a second line then.
        """
        regimen = self.cat.regimens[key]
        e = c.entity.key
        last_end: date | None = None
        cycle = 1
        attempts = 0
        while cycle <= cycles and attempts < cycles + 3:
            attempts += 1
            status = tumor.status if cycle == 1 else "stable"
            if intent == "palliative" and cycle >= 3:
                outcomes = [
                    ("partial_remission", 4.0),
                    ("stable", 4.0),
                    ("progression", 2.0 if line == 1 else 0.0),
                ]
                status = weighted(rng, outcomes)
                if status == "progression":
                    c.progressed = start
                    return last_end
            elif intent == "neoadjuvant" and cycle >= 3:
                status = weighted(rng, [("partial_remission", 6), ("stable", 3)])
            elif intent == "adjuvant":
                status = "complete_remission"
            if key == "aml_7plus3":
                los = rng.randint(26, 34)
            elif any(d.note.startswith(("46", "24")) for d in regimen.drugs):
                los = rng.randint(2, 4)
            elif clinic.needs_gcsf(key, _age(c.p, start)) or c.gcsf_secondary:
                los = rng.randint(1, 3)
            else:
                los = rng.randint(0, 3)
            st = self._stay(c, start, los, _MEDICAL_DEPT, "therapy")
            if st is None:
                return None
            st_tumor = _with(tumor, status=status, ecog=c.ecog)
            st.tumor = st_tumor
            st.diagnoses = self._diagnoses(c, st, st_tumor)
            postpone = None
            if cycle > 1 and key != "aml_7plus3" and rng.random() < 0.07:
                postpone = rng.choice(("leukocytes", "neutrophils", "platelets"))
            st.labs = self._labs(rng, c, st, burden=0.7, cycle=cycle, low=postpone, aml=key == "aml_7plus3")
            st.vitals = self._vitals(rng, c, st)
            st.radiotherapy = [r for r in history or () if r.end < st.start]
            if rt is not None and cycle == 1:
                st.radiotherapy = [rt]
                st.procedures.append(self._proc(clinic.RT_OPS, st.start, "radiotherapy"))
            if postpone is not None:
                st.postponed, st.postpone_reason = True, postpone
                self._discharge(rng, c, st)
                start = st.start + timedelta(days=7)
                last_end = st.end
                continue
            if self.z_chemo is not None:
                st.diagnoses.append(Dx(self.z_chemo.code, self.z_chemo.display, "secondary", st.start))
            if cycle == 1 and any(d.route == "i.v." for d in regimen.drugs) and e not in _HAEM[2:]:
                infusional = any(d.note.startswith("46") for d in regimen.drugs)
                if rng.random() < (0.8 if infusional else 0.3):
                    st.procedures.append(self._proc("5-399.5", st.start, "port"))
            given, days = self._therapy_meds(rng, c, st, key, intent, cycle)
            inpatient = [m for m in given if m.context == "inpatient"]
            code = clinic.chemo_ops(key, [m.atc for m in inpatient], days)
            if code:
                st.procedures.append(
                    self._proc(code, st.start + timedelta(days=min(0, _los(st))), "chemotherapy")
                )
            st.medications += given
            st.medications += self._supportive(rng, c, st, key)
            if key == "aml_7plus3":
                self._nadir(rng, c, st, st.start + timedelta(days=min(_los(st), rng.randint(10, 14))))
            self._discharge(rng, c, st)
            last_end = st.end
            nxt = st.start + timedelta(days=regimen.cycle_days)
            # febrile neutropenia at the nadir (day 7-12): a complication stay before the next cycle
            risk = {"high": 0.12, "moderate": 0.05}.get(clinic.EMETOGENIC.get(key, ""), 0.01)
            if clinic.needs_gcsf(key, _age(c.p, st.start)) or c.gcsf_secondary:
                risk *= 0.3
            if regimen.cycle_days >= 14 and key != "aml_7plus3" and rng.random() < risk:
                fn = self._stay(
                    c,
                    st.start + timedelta(days=rng.randint(7, 10)),
                    rng.randint(3, 6),
                    _MEDICAL_DEPT,
                    "complication",
                )
                if fn is not None and fn.end < nxt:
                    self._febrile_neutropenia(rng, c, fn, st_tumor)
                    c.gcsf_secondary = True
                    last_end = fn.end
                elif fn is not None:
                    c.stays.remove(fn)
                    c.n -= 1
            start = nxt
            cycle += 1
        return last_end

    def _therapy_meds(
        self, rng: random.Random, c: _Case, st: Stay, key: str, intent: str, cycle: int
    ) -> tuple[list[Med], int]:
        """The regimen's drugs given in this stay (oral parts go home), and the days they are given."""
        regimen = self.cat.regimens[key]
        p = c.p
        crea = next((x.value for x in st.labs if x.loinc == CREA), 1.0)
        gfr = cockcroft_gault(p, st.start, crea)
        out = []
        days: set[int] = set()
        for drug in regimen.drugs:
            per, unit = drug.dose, drug.unit
            if cycle == 1:
                per = clinic.LOADING.get(key, {}).get(drug.atc, per)
            mg = drug.absolute_mg(p.bsa, p.weight_kg, gfr, dose=per)
            oral = drug.route == "p.o."
            first = drug.days[0]
            if oral or drug.atc.startswith("L02"):
                span = f"Tag {drug.days[0]}-{drug.days[-1]}" if len(drug.days) > 1 else "täglich"
                out.append(
                    Med(
                        drug.atc,
                        drug.name_de,
                        _round_dose(mg),
                        "mg",
                        drug.route,
                        st.start,
                        None,
                        "discharge",
                        _times(drug.times_per_day),
                        True,
                        False,
                        span,
                        key,
                        cycle,
                        first,
                        intent,
                        per if unit != "mg" else None,
                        unit if unit != "mg" else None,
                    )
                )
                continue
            in_stay = [d for d in drug.days if d - 1 <= _los(st)]
            if not in_stay:
                continue
            days.update(in_stay)
            freq = None
            if drug.note.startswith("46"):
                freq = "über 46 h"
                days.update((1, 2))
            elif drug.note.startswith("24"):
                freq = "über 24 h"
                days.update((1, 2))
            elif drug.note == "Bolus":
                freq = "Bolus"
            end = None
            if len(in_stay) > 1:
                contiguous = in_stay == list(range(in_stay[0], in_stay[-1] + 1))
                freq = freq or (
                    f"Tag {in_stay[0]}-{in_stay[-1]}" if contiguous else "Tag " + ", ".join(map(str, in_stay))
                )
                end = st.start + timedelta(days=in_stay[-1] - 1)
            out.append(
                Med(
                    drug.atc,
                    drug.name_de,
                    _round_dose(mg),
                    "IE" if unit == "IE/m2" else "mg",
                    drug.route,
                    st.start + timedelta(days=in_stay[0] - 1),
                    end,
                    "inpatient",
                    None,
                    True,
                    False,
                    freq,
                    key,
                    cycle,
                    in_stay[0],
                    intent,
                    per if unit != "mg" else None,
                    unit if unit != "mg" else None,
                )
            )
        return out, len(days)

    def _supportive(self, rng: random.Random, c: _Case, st: Stay, key: str) -> list[Med]:
        """Antiemetics by emetogenic risk, G-CSF where indicated, infection prophylaxis for AML."""
        risk = clinic.EMETOGENIC.get(key, "minimal")
        steroid_in_regimen = any(d.atc.startswith(_STEROID) for d in self.cat.regimens[key].drugs)
        out: list[Med] = []
        if risk in ("high", "moderate"):
            out.append(self._support(c.five_ht3.atc, st.start, "inpatient"))
            if not steroid_in_regimen:  # 12 mg with an NK1 antagonist (high risk), 8 mg otherwise
                dexa = self._support("H02AB02", st.start, "inpatient")
                out.append(_with(dexa, dose=12.0) if risk == "high" else dexa)
            if risk == "high":
                out.append(
                    _with(self._support("A04AD12", st.start, "inpatient"), dose=125.0, frequency="Tag 1")
                )
        elif rng.random() < 0.5:
            out.append(_with(self._support("A03FA01", st.end, "discharge"), as_needed=True))
        if clinic.needs_gcsf(key, _age(c.p, st.start)) or (c.gcsf_secondary and key != "aml_7plus3"):
            out.append(self._support("L03AA13", st.start + timedelta(days=min(1, _los(st))), "inpatient"))
        if key == "aml_7plus3":
            out += [self._support(a, st.start, "inpatient") for a in ("M04AA01", "J05AB01", "J01EE01")]
        elif key in ("r_chop_21", "vrd"):
            out.append(self._support("J05AB01" if key == "vrd" else "M04AA01", st.start, "inpatient"))
        return out

    def _febrile_neutropenia(self, rng: random.Random, c: _Case, st: Stay, tumor: Tumor) -> None:
        st.tumor = tumor
        main = self.cat.icd10gm.lookup(rng.choice(("D70.10", "D70.13", "D70.14")))
        assert main is not None
        st.diagnoses = [Dx(main.code, main.display, "main", st.start)] + [
            _with(d, role="secondary") for d in self._diagnoses(c, st, tumor)
        ]
        st.labs = self._labs(rng, c, st, burden=2.5, cycle=1, nadir=True)
        st.vitals = self._vitals(rng, c, st, fever=True)
        st.medications += [
            self._support("J01CR05", st.start, "inpatient"),
            self._support("L03AA02", st.start, "inpatient"),
        ]
        self._discharge(rng, c, st)

    def _nadir(self, rng: random.Random, c: _Case, st: Stay, when: date) -> None:
        """A second lab date inside a long stay: the nadir after induction."""
        labs = self._labs(rng, c, st, burden=1.5, cycle=1, nadir=True)
        st.labs += [_with(x, when=when) for x in labs if not x.marker]

    def _pathology(self, rng: random.Random, c: _Case, st: Stay, neo: bool) -> Tumor:
        """pT/pN (ypT/ypN after neoadjuvant therapy) with nodes, L/V/Pn and R; M stays clinical (cM0)."""
        t0 = c.tumor
        e = c.entity
        when = min(st.start + timedelta(days=3), st.end)  # the pathology report
        if t0.t is None or t0.n is None or t0.m is None:
            return _with(t0, when=when, ecog=c.ecog)
        t, n, m = t0.t, t0.n, t0.m
        if neo:  # response: T and N shrink (never grow) within the entity's values
            ts = [v for v in e.tnm_values["T"] if v <= t.removeprefix("T")]
            ns = [v for v in e.tnm_values["N"] if v <= n.removeprefix("N")]
            t = "T" + rng.choice(ts[: max(1, len(ts))])
            n = "N" + (ns[0] if rng.random() < 0.6 else rng.choice(ns))
        stage = self.cat.stage_group(e.key, t, n, m)
        pos = positive_nodes(rng, n)
        examined = examined_nodes(rng, e.key, pos)
        r = "R0" if rng.random() < 0.88 else "R1"
        return _with(
            t0,
            prefix="yp" if neo else "p",
            n_prefix=None,
            m_prefix="c",
            t=t,
            n=n,
            uicc=stage,
            when=when if neo else t0.when,  # the initial staging is dated at the first diagnosis (ED)
            nodes=f"{pos}/{examined}",
            l="L1" if rng.random() < 0.25 else "L0",
            v="V1" if rng.random() < 0.12 else "V0",
            pn="Pn1" if rng.random() < 0.15 else "Pn0",
            r=r,
            kind="current" if neo else "initial",
            status="partial_remission" if neo else t0.status,
            ecog=c.ecog,
            confirmed=True,
        )

    # ------------------------------------------------------------------ helpers
    def _stay(self, c: _Case, start: date, los: int, dept: tuple[str, str], kind: str) -> Stay | None:
        ref = self.cfg.reference_date
        if start >= ref or (c.stays and start < c.stays[-1].end):
            return None
        end = min(start + timedelta(days=max(1, los)), ref)
        if end <= start:  # no same-day inpatient stay
            return None
        st = Stay(c.key(), start, end, dept[0], dept[1], kind=kind)
        if c.other is not None:
            st.other_tumors = [c.other]
        c.stays.append(st)
        return st

    def _proc(self, code: str, when: date, kind: str) -> Proc:
        op = self.cat.ops.lookup(code)
        return Proc(code, op.display if op else code, when, kind)

    def _support(self, atc: str, when: date, context: str) -> Med:
        d = self.support[atc]
        if atc in _NOT_DAILY:  # once per cycle / every 4 weeks: a frequency, never a daily scheme
            return Med(d.atc, d.name_de, d.dose, d.unit, d.route, when, None, context, None,
                       frequency=_NOT_DAILY[atc])  # fmt: skip
        return Med(
            d.atc,
            d.name_de,
            d.dose,
            d.unit,
            d.route,
            when,
            None,
            context,
            self.schedules[atc],
            as_needed=d.as_needed,
        )

    def _diagnoses(self, c: _Case, st: Stay, tumor: Tumor, provisional: bool = False) -> list[Dx]:
        cat = self.cat
        main = cat.icd10gm.lookup(c.icd)
        ver = "provisional" if provisional else "confirmed"
        out = [
            Dx(
                c.icd,
                main.display if main else c.icd,
                "main",
                c.diag,
                True,
                tumor.topography,
                c.laterality,
                ver,
                tumor.key,
            )
        ]
        out += [
            Dx(code, _title(cat, code), "secondary", c.diag, verification=ver, tumor_key=tumor.key)
            for code in tumor.metastasis_sites
        ]
        if c.other is not None:
            t2 = c.other
            out.append(
                Dx(c.other_icd, _title(cat, c.other_icd), "secondary", t2.when, True, t2.topography,
                   c.other_laterality, tumor_key=t2.key)
            )  # fmt: skip
        out += [
            Dx(x.icd, x.title, "secondary", c.p.birth + timedelta(days=365 * max(18, c.age - 5)))
            for x in c.comorbid
        ]
        return out

    def _start_home(
        self, rng: random.Random, c: _Case, pl: Plan, st: Stay, when: date, adjuvant_only: bool
    ) -> None:
        """Outpatient (oral / hormonal) therapy begins at this discharge and runs on."""
        for key, intent in pl.home:
            if adjuvant_only and intent not in ("adjuvant", "curative"):
                continue
            if any(m.regimen == key for m in c.home_meds):
                continue
            regimen = self.cat.regimens[key]
            for drug in regimen.drugs:
                mg = drug.absolute_mg(c.p.bsa, c.p.weight_kg, 90.0)
                if regimen.cycle_days > 28:
                    freq = f"alle {regimen.cycle_days // 30} Monate"
                elif regimen.cycle_days >= 28 and len(drug.days) < regimen.cycle_days:
                    freq = f"Tag 1-{drug.days[-1]}, alle {regimen.cycle_days} Tage"
                else:
                    freq = "täglich"
                c.home_meds.append(
                    Med(
                        drug.atc,
                        drug.name_de,
                        _round_dose(mg),
                        "mg",
                        drug.route,
                        when,
                        None,
                        "discharge",
                        _times(drug.times_per_day) if drug.route == "p.o." else None,
                        True,
                        False,
                        freq,
                        key,
                        None,
                        None,
                        intent,
                        None if drug.unit == "mg" else drug.dose,
                        None if drug.unit == "mg" else drug.unit,
                    )
                )
        if clinic.BONE in c.tumor.metastasis_sites and not any(m.atc.startswith("M05") for m in c.home_meds):
            c.home_meds.append(self._support("M05BX04" if c.egfr < 60 else "M05BA08", when, "discharge"))

    def _discharge(self, rng: random.Random, c: _Case, st: Stay) -> None:
        """Long-term medication (one drug per class) and the outpatient tumour therapy running now."""
        st.medications = [
            m
            for m in st.medications
            if not (m.context == "discharge" and not m.therapy and m.atc in {d.atc for d in c.long_term})
        ]
        have = {clinic.drug_class(m.atc) for m in st.medications if m.context == "discharge"}
        for d in c.long_term:
            if clinic.drug_class(d.atc) in have:
                continue
            have.add(clinic.drug_class(d.atc))
            st.medications.append(
                Med(
                    d.atc,
                    d.name_de,
                    d.dose,
                    d.unit,
                    d.route,
                    st.end,
                    None,
                    "discharge",
                    _schedule(d.schedule),
                    as_needed=d.as_needed,
                )
            )
        present = {m.atc for m in st.medications if m.context == "discharge"}
        chemo = any(m.therapy and m.context == "inpatient" for m in st.medications)
        for m in c.home_meds:
            if chemo and m.atc.startswith(_ENDOCRINE):
                continue  # endocrine therapy starts after the chemotherapy
            if m.start <= st.end and m.atc not in present:
                present.add(m.atc)
                st.medications.append(_with(m, start=st.end) if m.start < st.start else m)

    def _labs(
        self,
        rng: random.Random,
        c: _Case,
        st: Stay,
        burden: float,
        cycle: int,
        low: str | None = None,
        nadir: bool = False,
        aml: bool = False,
    ) -> list[Lab]:
        """One lab date per stay: counts, renal values by the patient's eGFR, CRP by tumour burden."""
        p = c.p
        when = st.start
        age = (when - p.birth).days // 365
        egfr_true = c.egfr + rng.uniform(-2.5, 2.5)
        crea_test = self.cat.labs.get(CREA)
        crea = round(creatinine_for_egfr(egfr_true, age, p.sex), crea_test.decimals if crea_test else 2)
        egfr = round(ckd_epi(crea, age, p.sex))
        leuko = rng.uniform(4.2, 9.5)
        plt = rng.uniform(170, 380)
        neutro_share = rng.uniform(0.5, 0.7)
        if cycle:
            leuko = rng.uniform(3.4, 8.0)
            plt = rng.uniform(130, 330)
        if c.entity.key == "cll" and cycle == 0:
            leuko, neutro_share = rng.uniform(18, 70), rng.uniform(0.05, 0.15)
        if aml:
            leuko, plt, neutro_share = rng.uniform(1.2, 40), rng.uniform(25, 120), rng.uniform(0.05, 0.3)
        if low == "leukocytes":
            leuko = rng.uniform(1.8, 2.9)
        elif low == "neutrophils":
            leuko, neutro_share = rng.uniform(3.1, 3.8), rng.uniform(0.2, 0.38)
        elif low == "platelets":
            plt = rng.uniform(55, 95)
        if nadir:
            leuko, neutro_share, plt = rng.uniform(0.3, 1.4), rng.uniform(0.05, 0.3), rng.uniform(15, 90)
        values = {LEUKO: leuko, NEUTRO: leuko * neutro_share, PLT: plt, CREA: crea, EGFR: egfr}
        gauss, bounds, sex = rng.gauss, self.bounds, p.sex
        out = []
        for test in self.panel:
            loinc = test.loinc
            lo, hi = bounds[loinc, sex]
            if loinc in values:
                value = values[loinc]
            elif loinc == HB:
                if aml or (c.entity.key == "myeloma" and cycle == 0):  # marrow failure / myeloma anaemia
                    value = rng.uniform(7.2, 10.5)
                elif cycle:
                    value = lo - 0.2 * cycle * rng.random() * (hi - lo)  # chemotherapy-induced anaemia
                else:
                    value = gauss(lo + 0.35 * (hi - lo), (hi - lo) / 6)
            elif loinc == CRP:
                value = abs(gauss(hi * 1.5 * burden, hi)) + (rng.uniform(80, 250) if nadir else 0)
            else:
                value = gauss((lo + hi) / 2, (hi - lo) / 4)
            floor = (lo + hi) * 0.01
            out.append(
                Lab(loinc, test.name_de, _rounded(value, floor, test.decimals), test.unit, when, lo, hi)
            )
        if c.diabetes and not nadir:  # treated type 2 diabetes: glucose and HbA1c above the range
            for loinc, lo_v, hi_v in ((GLUCOSE, 125.0, 230.0), (HBA1C, 6.4, 8.6)):
                extra = self.cat.labs.get(loinc)
                if extra is not None:
                    lo, hi = bounds[loinc, sex]
                    value = round(rng.uniform(lo_v, hi_v), extra.decimals)
                    out.append(Lab(loinc, extra.name_de, value, extra.unit, when, lo, hi))
        b2m, albumin = _b2m_albumin(rng, c.tumor)
        if albumin is not None and not nadir and (alb := self.cat.labs.get(ALBUMIN)) is not None:
            lo, hi = bounds[ALBUMIN, sex]
            out.append(Lab(ALBUMIN, alb.name_de, round(albumin, alb.decimals), alb.unit, when, lo, hi))
        for loinc in c.entity.markers:
            marker = self.cat.labs.get(loinc)
            if marker is None or nadir:
                continue
            lo, hi = self.bounds[marker.loinc, p.sex]
            if loinc == B2M and b2m is not None:
                value = b2m
            else:
                value = hi * rng.uniform(1.2, 8.0) * burden if rng.random() < 0.6 else rng.uniform(lo, hi)
            out.append(
                Lab(
                    marker.loinc,
                    marker.name_de,
                    _positive(value, hi, marker.decimals),
                    marker.unit,
                    when,
                    lo,
                    hi,
                    marker=True,
                )
            )
        return out

    def _vitals(self, rng: random.Random, c: _Case, st: Stay, fever: bool = False) -> list[Vital]:
        sys_bp = round(_clip(rng.gauss(142 if c.hypertension else 126, 13), 95, 195))
        dia = round(_clip(sys_bp * rng.uniform(0.55, 0.68), 50, 110))
        hr = round(_clip(rng.gauss(104 if fever else 78, 10), 48, 140))
        temp = round(rng.uniform(38.3, 39.6) if fever else _clip(rng.gauss(36.7, 0.3), 35.8, 37.6), 1)
        values = {"8480-6": sys_bp, "8462-4": dia, "8867-4": hr, "8310-5": temp, "29463-7": c.p.weight_kg}
        return [
            Vital(loinc, name, float(values[loinc]), unit, st.start)
            for loinc, (name, unit) in clinic.VITALS.items()
        ]


def _rt_course(std: tuple[str, float, int], start: date, intent: str, drug: str | None) -> Radiotherapy:
    target, gy, fx = std
    weeks, rest = divmod(fx, 5)
    end = start + timedelta(days=7 * weeks + rest - (1 if rest else 3))
    return Radiotherapy(target, gy, round(gy / fx, 2), fx, start, end, intent, clinic.RT_OPS, drug)


@dataclass
class _Named:
    display: str


D = TypeVar("D")


def _with(obj: D, **changes: Any) -> D:
    """A changed copy of a (plain) dataclass; dataclasses.replace re-runs __init__ and is 5x slower."""
    assert changes.keys() <= obj.__dict__.keys(), changes.keys() - obj.__dict__.keys()
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def _b2m_albumin(rng: random.Random, t: Tumor) -> tuple[float | None, float | None]:
    """Beta-2-microglobulin (mg/l) and albumin (g/dl) that make the tumour's stage.

    Myeloma ISS: I = b2M < 3.5 and albumin >= 3.5; III = b2M >= 5.5; II otherwise. Lymphoma and
    CLL: b2M rises with the stage (never 15 mg/l at Ann Arbor I). Other entities: no rule (None).
    """
    stages = dict(t.stages)
    if "ISS" in stages:
        iss = stages["ISS"]
        if iss == "I":
            return rng.uniform(1.2, 3.4), rng.uniform(3.5, 4.6)
        if iss == "III":
            return rng.uniform(5.5, 14.0), rng.uniform(2.6, 3.9)
        if rng.random() < 0.5:
            return rng.uniform(1.5, 3.4), rng.uniform(2.6, 3.4)
        return rng.uniform(3.5, 5.4), rng.uniform(2.8, 4.3)
    rank = stage_rank(stages.get("Ann Arbor", "")) or {"A": 1, "B": 3, "C": 4}.get(stages.get("Binet", ""), 0)
    if rank:
        return rng.uniform(1.2, 2.6 + 0.9 * rank), None
    return None, None


def _age(p: Person, when: date) -> int:
    return (when - p.birth).days // 365


def _round_dose(mg: float) -> float:
    """Doses as prescribed: 0.1 mg above 20 mg, 0.01 mg below (11.25 mg leuprorelin, 1.9 mg vincristine)."""
    return round(mg, 1) if mg >= 20 else round(mg, 2)


def _times(per_day: int) -> tuple[float, float, float, float]:
    return (1, 0, 1, 0) if per_day == 2 else (1, 0, 0, 0)


@lru_cache(maxsize=256)
def _schedule(s: Any) -> tuple[int, int, int, int] | None:
    """Morning/noon/evening/night counts; half tablets round up (a letter writes 1-0-1-0)."""
    if not s:
        return None
    return tuple(int(x) if float(x).is_integer() else int(x) + 1 for x in s)  # type: ignore[return-value]


def _title(cat: Any, code: str) -> str:
    c = cat.icd10gm.lookup(code)
    return c.display if c else code


def _positive(value: float, typical: float, decimals: int) -> float:
    """Lab values stay above a tiny floor and never round to zero."""
    return _rounded(value, typical * 0.02, decimals)


def _rounded(value: float, floor: float, decimals: int) -> float:
    value = round(value if value > floor else floor, decimals)
    return value if value > 0 else 10.0**-decimals


def _bounds(test: Any, sex: str) -> tuple[float, float]:
    """A usable (low, high) even where the catalogue leaves a bound open."""
    lo, hi = test.ref.get(sex) or next(iter(test.ref.values()), (None, None))
    lo = 0.0 if lo is None else float(lo)
    hi = (lo * 2 or 1.0) if hi is None else float(hi)
    return lo, hi


def _los(st: Stay) -> int:
    return max(0, (st.end - st.start).days)


def _surgical_dept(icd: str) -> tuple[str, str]:
    for prefixes, code, name in _SURGERY_DEPT:
        if icd[:3] in prefixes:
            return code, name
    return _GENERAL_SURGERY


def _prevalence(c: Any, age: int) -> float:
    p = 0.0
    for min_age, prob in sorted(c.prevalence_by_age):
        if age >= min_age:
            p = prob
    return p
