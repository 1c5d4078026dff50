"""Draw one patient's oncology course: entity by inpatient mix, consistent tumour, stays over time.

Every patient is a pure function of (seed, index): shards and relaunches give the same
people. Dates run diagnosis <= surgery <= chemotherapy, all on or before the reference day.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

from clinsynth.cohort.model import Dx, Lab, Med, Person, Proc, Stay, Tumor

T = TypeVar("T")

#: (ICD 3-character prefixes, Fachabteilungsschlüssel, German name) of the surgical department
_SURGERY_DEPT = [
    (("C34", "C33", "C38", "C45"), "2000", "Thoraxchirurgie"),
    (("C61", "C62", "C64", "C65", "C66", "C67", "C68"), "2200", "Urologie"),
    (("C50", "C51", "C52", "C53", "C54", "C55", "C56", "C57"), "2400", "Frauenheilkunde und Geburtshilfe"),
    (
        (
            "C00",
            "C01",
            "C02",
            "C03",
            "C04",
            "C05",
            "C06",
            "C07",
            "C08",
            "C09",
            "C10",
            "C11",
            "C12",
            "C13",
            "C14",
            "C30",
            "C31",
            "C32",
        ),
        "2600",
        "Hals-, Nasen-, Ohrenheilkunde",
    ),
    (("C43", "C44"), "3400", "Dermatologie"),
    (("C70", "C71", "C72"), "1700", "Neurochirurgie"),
]
_MEDICAL_DEPT = ("0500", "Hämatologie und internistische Onkologie")
_GENERAL_SURGERY = ("1500", "Allgemeine Chirurgie")
#: the routine inpatient panel, by LOINC, when the catalogue has it
_PANEL = ("718-7", "6690-2", "777-3", "2160-0", "1988-5", "2951-2", "2823-3", "1742-6", "1920-8", "2885-2")


@dataclass
class CohortConfig:
    seed: int = 0
    reference_date: date = date(2025, 6, 30)
    max_chemo_cycles: int = 4
    comorbidity_scale: float = 1.0


def _weighted(rng: random.Random, pairs: list[tuple[T, float]]) -> T:
    items, weights = zip(*pairs, strict=True)
    return rng.choices(items, weights=weights, k=1)[0]


def _clip(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


class CohortGenerator:
    def __init__(self, cfg: CohortConfig) -> None:
        from faker import Faker

        from clinsynth.terminology import load_catalog

        self.cfg = cfg
        self.cat = load_catalog()
        self.fake = Faker("de_DE")
        self.entities = [(e, e.weight) for e in self.cat.entities]
        self.panel = [self.cat.labs[c] for c in _PANEL if c in self.cat.labs]
        if not self.panel:
            self.panel = [t for t in self.cat.labs.values() if not t.marker][:8]
        self.diagnostics = [c for c in self.cat.ops if c.code[:2] in ("1-", "3-")]
        self.chemo_ops = [c for c in self.cat.ops if c.code.startswith("8-54")]
        self.port_ops = self.cat.ops.lookup("5-399.5")
        self.z_chemo = self.cat.icd10gm.lookup("Z51.1")

    # ---- one patient
    def person(self, index: int) -> Person:
        cfg, cat = self.cfg, self.cat
        rng = random.Random(f"clinsynth-cohort:{cfg.seed}:{index}")
        entity = _weighted(rng, self.entities)
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

        # the tumour, consistent in itself
        icd = _weighted(rng, entity.icd)
        stage = _weighted(rng, entity.stage_weights) if entity.stage_weights else None
        t = n = m = None
        if entity.has_tnm and stage is not None:
            t, n, m = entity.tnm_for_stage(stage, rng)
        morph = entity.morphology_for(icd, rng)
        topo = entity.topography_for(icd, rng)
        grading = _weighted(rng, entity.grading)
        laterality = rng.choice(("L", "R")) if entity.paired_organ else None
        morph_display = (cat.icdo3_morphology.lookup(morph) or _Named(morph)).display
        mets = []
        if m is not None and m.startswith("M1") and entity.metastasis_sites:
            for _ in range(rng.choice((1, 1, 2))):
                code = _weighted(rng, entity.metastasis_sites)
                if code not in mets:
                    mets.append(code)
        comorbid = [
            c for c in cat.comorbidities if rng.random() < _prevalence(c, age) * cfg.comorbidity_scale
        ]

        def diagnoses(when: date) -> list[Dx]:
            main = cat.icd10gm.lookup(icd)
            out = [Dx(icd, main.display if main else icd, "main", diag, True, topo, laterality)]
            out += [Dx(code, _title(cat, code), "secondary", diag) for code in mets]
            out += [
                Dx(c.icd, c.title, "secondary", birth + timedelta(days=365 * max(18, age - 5)))
                for c in comorbid
            ]
            return out

        # each comorbidity is treated with one (sometimes two) of its usual drugs
        long_term = [
            d for c in comorbid for d in rng.sample(c.drugs, k=min(len(c.drugs), rng.choice((1, 1, 2))))
        ]

        def discharge_meds(when: date) -> list[Med]:
            return [
                Med(d.atc, d.name_de, d.dose, d.unit, d.route, when, None, "discharge", _schedule(d.schedule))
                for d in long_term
            ]

        staging = entity.staging
        tumor_c = Tumor(entity.key, morph, morph_display, topo, grading, "c", t, n, m, stage, diag, staging)
        # 1. diagnostic stay
        start = diag - timedelta(days=rng.randint(0, 3))
        s1 = self._stay(
            p,
            "1",
            start,
            rng.randint(2, 6),
            *_MEDICAL_DEPT if rng.random() < 0.5 else (_surgical_dept(icd)),
            ref,
        )
        if s1 is None:
            return p
        s1.diagnoses = diagnoses(s1.start)
        for c in rng.sample(self.diagnostics, k=min(2, len(self.diagnostics))):
            s1.procedures.append(
                Proc(c.code, c.display, s1.start + timedelta(days=rng.randint(0, _los(s1))), "diagnostic")
            )
        s1.labs = self._labs(rng, p, s1, entity, burden=1.0, cycle=0)
        s1.tumor = tumor_c
        s1.medications = discharge_meds(s1.end)
        p.stays.append(s1)
        last_end = s1.end

        # 2. surgery for localised disease
        operable = entity.surgeries and not (m or "").startswith("M1") and rng.random() < 0.8
        if operable:
            start = last_end + timedelta(days=rng.randint(10, 35))
            dept = _surgical_dept(icd)
            s2 = self._stay(p, "2", start, rng.randint(5, 14), *dept, ref)
            if s2 is not None:
                s2.diagnoses = diagnoses(s2.start)
                code = _weighted(rng, entity.surgeries)
                op = cat.ops.lookup(code)
                s2.procedures.append(
                    Proc(code, op.display if op else code, s2.start + timedelta(days=1), "operation")
                )
                s2.labs = self._labs(rng, p, s2, entity, burden=0.4, cycle=0)
                s2.tumor = Tumor(
                    entity.key,
                    morph,
                    morph_display,
                    topo,
                    grading,
                    "p",
                    t,
                    n,
                    m,
                    cat.stage_group(entity.key, t, n, m)
                    if t is not None and n is not None and m is not None  # drawn together
                    else stage,
                    s2.start + timedelta(days=3),
                    staging,
                )
                s2.medications = discharge_meds(s2.end)
                p.stays.append(s2)
                last_end = s2.end

        # 3. chemotherapy cycles as short stays
        wants_chemo = entity.regimens and (
            stage not in ("0", "I", "IA", "IA1", "IA2", "IA3", "IB") or rng.random() < 0.2
        )
        if wants_chemo and rng.random() < 0.85:
            regimen = cat.regimens[rng.choice(entity.regimens)]
            start = last_end + timedelta(days=rng.randint(14, 42))
            for cycle in range(1, rng.randint(1, self.cfg.max_chemo_cycles) + 1):
                st = self._stay(p, f"{2 + cycle}", start, rng.randint(1, 4), *_MEDICAL_DEPT, ref)
                if st is None:
                    break
                st.diagnoses = diagnoses(st.start)
                if self.z_chemo is not None:
                    st.diagnoses.append(Dx(self.z_chemo.code, self.z_chemo.display, "secondary", st.start))
                if cycle == 1 and self.port_ops is not None and any(d.route == "i.v." for d in regimen.drugs):
                    st.procedures.append(Proc(self.port_ops.code, self.port_ops.display, st.start, "port"))
                if self.chemo_ops:
                    c = rng.choice(self.chemo_ops)
                    st.procedures.append(
                        Proc(c.code, c.display, st.start + timedelta(days=min(1, _los(st))), "chemotherapy")
                    )
                gfr = _cockcroft_gault(p, st.start, st.labs)
                for drug, mg in regimen.absolute_doses(p.bsa, p.weight_kg, gfr):
                    day = min(drug.days[0] - 1 if drug.days else 0, _los(st))
                    st.medications.append(
                        Med(
                            drug.atc,
                            drug.name_de,
                            round(mg, 1),
                            "mg",
                            drug.route,
                            st.start + timedelta(days=day),
                            None,
                            "inpatient",
                            None,
                            True,
                        )
                    )
                for d in self.cat.supportive[:2]:
                    st.medications.append(
                        Med(
                            d.atc,
                            d.name_de,
                            d.dose,
                            d.unit,
                            d.route,
                            st.start,
                            None,
                            "inpatient",
                            d.schedule,
                        )
                    )
                st.labs = self._labs(rng, p, st, entity, burden=0.7, cycle=cycle)
                st.medications += discharge_meds(st.end)
                p.stays.append(st)
                start = st.start + timedelta(days=regimen.cycle_days)
        return p

    def _stay(
        self, p: Person, k: str, start: date, los: int, dept_code: str, dept: str, ref: date
    ) -> Stay | None:
        if start >= ref:
            return None
        end = min(start + timedelta(days=los), ref)
        return Stay(f"{p.key}-{k}", start, end, dept_code, dept)

    def _labs(
        self, rng: random.Random, p: Person, st: Stay, entity: Any, burden: float, cycle: int
    ) -> list[Lab]:
        out = []
        when = st.start
        for test in self.panel:
            lo, hi = _bounds(test, p.sex)
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            value = rng.gauss(mid, half / 2)
            name = test.name_de.lower()
            if cycle and ("hämoglobin" in name):
                value = lo - 0.4 * cycle * rng.random() * (hi - lo) / 2  # chemotherapy-induced anaemia
            if cycle and ("leukozyten" in name or "neutro" in name) and rng.random() < 0.25 + 0.1 * cycle:
                value = lo * rng.uniform(0.3, 0.9)  # neutropenia at the nadir
            if "crp" in name or "c-reaktiv" in name:
                value = abs(rng.gauss(hi * 1.5 * burden, hi))
            out.append(
                Lab(test.loinc, test.name_de, _positive(value, mid, test.decimals), test.unit, when, lo, hi)
            )
        for loinc in entity.markers:
            marker = self.cat.labs.get(loinc)
            if marker is None:
                continue
            lo, hi = _bounds(marker, p.sex)
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


@dataclass
class _Named:
    display: str


def _schedule(s: Any) -> tuple[int, int, int, int] | None:
    """Morning/noon/evening/night counts; half tablets round up (a letter writes 1-0-1-0)."""
    if not s:
        return None
    return tuple(int(x) if float(x).is_integer() else int(x) + 1 for x in s)  # type: ignore[return-value]


def _title(cat: Any, code: str) -> str:
    c = cat.icd10gm.lookup(code)
    return c.display if c else code


def _positive(value: float, typical: float, decimals: int) -> float:
    """Lab values stay above a quarter of the typical value and never round to zero."""
    value = max(value, typical * 0.25)
    return max(round(value, decimals), 10.0**-decimals)


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


def _cockcroft_gault(p: Person, when: date, labs: list[Lab]) -> float:
    age = (when - p.birth).days // 365
    creat = 1.0 if p.sex == "male" else 0.8
    gfr = (140 - age) * p.weight_kg / (72 * creat)
    return round(gfr * (0.85 if p.sex == "female" else 1.0), 1)
