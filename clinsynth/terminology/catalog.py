"""The project's curated terminology as one object the cohort generator samples from.

Everything is loaded from package data (``data/``) so that a generator job on a
cluster node needs no network and no access to the reference folder, and every
code it emits can be traced back to a table with a licence notice. Loading also
cross-checks the tables (``Catalog.problems``): an entity that names a
non-terminal ICD code or a regimen drug whose ATC code is unknown is a data bug
we want at import time, not in ten thousand generated letters.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from clinsynth.terminology._io import (
    data_text,
    load_manifest,
    notice_lines,
    parse_bool,
    parse_optional_float,
    read_csv,
)
from clinsynth.terminology.tables import (
    ATC_PATTERN,
    ATC_SYSTEM,
    ICD10GM_PATTERN,
    ICD10GM_SYSTEM,
    ICDO3_SYSTEM,
    LOINC_PATTERN,
    LOINC_SYSTEM,
    MORPHOLOGY_PATTERN,
    OPS_PATTERN,
    OPS_SYSTEM,
    TOPOGRAPHY_PATTERN,
    CodeTable,
    Concept,
    atc_level,
    icd10gm_level,
    loinc_level,
    morphology_level,
    ops_level,
    topography_level,
)

Sex = Literal["any", "female", "male"]
DoseUnit = Literal["mg/m2", "mg/kg", "AUC", "mg", "IE/m2"]
Route = Literal["i.v.", "p.o.", "s.c."]
DOSE_UNITS = ("mg/m2", "mg/kg", "AUC", "mg", "IE/m2")
ROUTES = ("i.v.", "p.o.", "s.c.")
ANY = "*"
TNM_AXES = ("T", "N", "M")


# --------------------------------------------------------------------------- regimens


@dataclass(frozen=True)
class RegimenDrug:
    """One drug of a regimen; ``verified`` refers to dose, route, days (none are clinically reviewed)."""

    atc: str
    name_de: str
    dose: float
    unit: DoseUnit
    route: Route
    days: tuple[int, ...]
    verified: bool = False
    times_per_day: int = 1
    max_mg: float | None = None
    note: str = ""
    atc_verified: bool = False

    def absolute_mg(
        self, bsa_m2: float, weight_kg: float, gfr_ml_min: float, dose: float | None = None
    ) -> float:
        """Single dose in mg (IE for IE/m2: bleomycin); AUC doses by the Calvert formula, AUC x (GFR + 25).

        `dose` replaces the regimen's dose in its unit (a loading dose such as trastuzumab 8 mg/kg).
        """
        per = self.dose if dose is None else dose
        if self.unit in ("mg/m2", "IE/m2"):
            mg = per * bsa_m2
        elif self.unit == "mg/kg":
            mg = per * weight_kg
        elif self.unit == "AUC":
            mg = per * (gfr_ml_min + 25.0)
        else:
            mg = per
        return min(mg, self.max_mg) if self.max_mg is not None else mg


@dataclass(frozen=True, eq=False)
class Regimen:
    key: str
    name: str
    cycle_days: int
    drugs: list[RegimenDrug]
    setting: str = ""

    def absolute_doses(
        self, bsa_m2: float, weight_kg: float, gfr_ml_min: float
    ) -> list[tuple[RegimenDrug, float]]:
        """Per-administration doses in mg for one patient (cap such as vincristine 2 mg applied)."""
        return [(d, d.absolute_mg(bsa_m2, weight_kg, gfr_ml_min)) for d in self.drugs]


# --------------------------------------------------------------------------- labs, drugs, comorbidities


@dataclass(frozen=True, eq=False)
class LabTest:
    """A LOINC test. ``verified`` is about the reference range (none is verified); the code's own check
    is ``code_verified``.

    ``ref[sex]`` is (low, high); ``None`` means the bound is open (e.g. eGFR > 90) or unknown.
    """

    loinc: str
    name_de: str
    unit: str
    ref: Mapping[str, tuple[float | None, float | None]]
    decimals: int
    marker: bool
    verified: bool = False
    code_verified: bool = False
    unit_verified: bool = False
    note: str = ""

    def range_for(self, sex: str) -> tuple[float | None, float | None]:
        return self.ref["male" if sex == "male" else "female"]


@dataclass(frozen=True)
class DrugUse:
    """A drug as it appears in a medication list: dose per intake, schedule morning-noon-evening-night."""

    atc: str
    name_de: str
    dose: float
    unit: str
    schedule: tuple[float, float, float, float]
    route: str
    as_needed: bool = False
    indication: str = ""
    note: str = ""
    verified: bool = False


@dataclass(frozen=True, eq=False)
class Comorbidity:
    icd: str
    title: str
    prevalence_by_age: list[tuple[int, float]]
    drugs: list[DrugUse]

    def prevalence(self, age: float) -> float:
        """Step function: the last band whose minimum age is not above ``age``."""
        p = 0.0
        for min_age, share in self.prevalence_by_age:
            if age >= min_age:
                p = share
        return p


# --------------------------------------------------------------------------- entities and staging


@dataclass(frozen=True)
class StageRule:
    """``stage`` applies when T, N and M are each in their set (``None`` = any value of the entity)."""

    stage: str
    t: frozenset[str] | None
    n: frozenset[str] | None
    m: frozenset[str] | None

    def matches(self, t: str, n: str, m: str) -> bool:
        return all(allowed is None or v in allowed for v, allowed in ((t, self.t), (n, self.n), (m, self.m)))


_PREFIX = {axis: re.compile(rf"(?:[yra]?[cpu]?{axis})?(.+)") for axis in TNM_AXES}


def tnm_value(axis: str, text: str) -> str:
    """oBDS value of a written category: 'pT2a' -> '2a', 'cN0' -> '0', 'M1c' -> '1c', '2a' -> '2a'."""
    match = _PREFIX[axis].fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a {axis} category: {text!r}")
    return match.group(1)


@dataclass(frozen=True, eq=False)
class Entity:
    """A tumour entity with everything the cohort generator samples per patient.

    Weights are relative (normalise before use). ``stage_weights`` are UICC stages
    when ``staging == "UICC"``; haematological entities use their own system
    (Ann Arbor, ISS, Binet) or none (AML), and have no TNM (``has_tnm`` is False).
    ``paired_organ`` is True when any of the entity's topographies needs a side;
    whether a particular topography does is ``Concept.extra["paired"]``.
    """

    key: str
    label_de: str
    weight: float
    sex: Sex
    age_mean: float
    age_sd: float
    age_min: int
    age_max: int
    icd: list[tuple[str, float]]
    topography: list[tuple[str, float]]
    morphology: list[tuple[str, float]]
    grading: list[tuple[str, float]]
    paired_organ: bool
    stage_weights: list[tuple[str, float]]
    metastasis_sites: list[tuple[str, float]]
    surgeries: list[tuple[str, float]]
    regimens: list[str]
    markers: list[str]
    male_share: float = 0.5
    staging: str = "UICC"
    tnm_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stage_rules: tuple[StageRule, ...] = ()
    icd_topography: Mapping[str, str] = field(default_factory=dict)
    icd_morphology: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_tnm(self) -> bool:
        return bool(self.stage_rules)

    def stage_group(self, t: str, n: str, m: str) -> str:
        """Simplified UICC-8-like stage of a TNM; accepts 'pT2a' as well as '2a'."""
        if not self.has_tnm:
            raise ValueError(f"entity {self.key!r} is not staged by TNM ({self.staging or 'no staging'})")
        values = {}
        for axis, text in zip(TNM_AXES, (t, n, m), strict=True):
            v = tnm_value(axis, text)
            if v not in self.tnm_values[axis]:
                raise ValueError(f"{axis}{v} is not a {axis} value of entity {self.key!r}")
            values[axis] = v
        for rule in self.stage_rules:
            if rule.matches(values["T"], values["N"], values["M"]):
                return rule.stage
        raise ValueError(f"no stage rule of {self.key!r} covers T{values['T']} N{values['N']} M{values['M']}")

    def tnm_combinations(self, stage: str) -> list[tuple[str, str, str]]:
        """All (T, N, M) of the entity that group to ``stage``, as ('T2a', 'N1', 'M0')."""
        return list(self._combinations().get(stage, ()))

    def tnm_for_stage(self, stage: str, rng: random.Random) -> tuple[str, str, str]:
        """A TNM drawn uniformly among those grouping to ``stage``: stage_group() gives ``stage`` back."""
        combos = self._combinations().get(stage)
        if not combos:
            raise ValueError(f"stage {stage!r} is not reachable for entity {self.key!r}")
        return rng.choice(combos)

    def _combinations(self) -> dict[str, list[tuple[str, str, str]]]:
        # Enumerating is cheap (< 300 combinations) but done per draw; keep it per entity object.
        cached = self.__dict__.get("_combo_cache")
        if cached is None:
            if not self.has_tnm:
                raise ValueError(f"entity {self.key!r} is not staged by TNM ({self.staging or 'no staging'})")
            cached = {}
            for t in self.tnm_values["T"]:
                for n in self.tnm_values["N"]:
                    for m in self.tnm_values["M"]:
                        cached.setdefault(self.stage_group(t, n, m), []).append((f"T{t}", f"N{n}", f"M{m}"))
            object.__setattr__(self, "_combo_cache", cached)
        return cached

    def topography_for(self, icd: str, rng: random.Random) -> str:
        """ICD-O-3 topography that agrees with the drawn ICD code (C34.1 -> C34.1, C20 -> C20.9)."""
        topos = [c for c, _ in self.topography]
        if icd in self.icd_topography:
            return self.icd_topography[icd]
        for candidate in (icd, f"{icd}.9"):
            if candidate in topos:
                return candidate
        return _weighted(self.topography, rng)

    def morphology_for(self, icd: str, rng: random.Random) -> str:
        """Morphology that agrees with the ICD code where the ICD encodes histology (Hodgkin subtypes)."""
        if icd in self.icd_morphology:
            return self.icd_morphology[icd]
        return _weighted(self.morphology, rng)


def _weighted(pairs: Sequence[tuple[str, float]], rng: random.Random) -> str:
    return rng.choices([c for c, _ in pairs], weights=[w for _, w in pairs])[0]


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True, eq=False)
class Catalog:
    icd10gm: CodeTable
    icdo3_topography: CodeTable
    icdo3_morphology: CodeTable
    ops: CodeTable
    atc: CodeTable
    loinc: CodeTable
    entities: list[Entity]
    regimens: dict[str, Regimen]
    labs: dict[str, LabTest]
    comorbidities: list[Comorbidity]
    supportive: list[DrugUse]
    notices: dict[str, str]
    value_sets: dict[str, dict[str, str]]
    manifest: dict[str, Any]

    def entity(self, key: str) -> Entity:
        for e in self.entities:
            if e.key == key:
                return e
        raise KeyError(f"no entity {key!r}; known: {[e.key for e in self.entities]}")

    def stage_group(self, entity_key: str, t: str, n: str, m: str) -> str:
        return self.entity(entity_key).stage_group(t, n, m)

    def problems(self) -> list[str]:
        """Every cross-table inconsistency; empty for shipped data (checked at load)."""
        return _problems(self)


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalogue, loaded once per process."""
    manifest = load_manifest()
    files = {name: spec["file"] for name, spec in manifest["tables"].items()}
    tables = {name: read_csv(data_text(f)) for name, f in files.items() if f.endswith(".csv")}
    version = {name: spec["version"] for name, spec in manifest["tables"].items()}

    atc = _atc_table(tables["atc"], version["atc"])
    value_sets: dict[str, dict[str, str]] = {}
    for row in tables["value_sets"]:
        value_sets.setdefault(row["value_set"], {})[row["code"]] = row["display"]
    topography = _topography_table(tables["icdo3_topography"], version["icdo3_topography"])
    entities_doc = json.loads(data_text(files["entities"]))
    comorbidities_doc = json.loads(data_text(files["comorbidities"]))
    labs = _labs(tables["labs"])
    catalog = Catalog(
        icd10gm=_icd_table(tables["icd10gm"], version["icd10gm"]),
        icdo3_topography=topography,
        icdo3_morphology=_morphology_table(tables["icdo3_morphology"], version["icdo3_morphology"]),
        ops=_ops_table(tables["ops"], version["ops"]),
        atc=atc,
        loinc=_loinc_table(tables["labs"], tables["vitals"], version["labs"]),
        entities=[_entity(e, topography) for e in entities_doc["entities"]],
        regimens=_regimens(tables["regimens"]),
        labs=labs,
        comorbidities=[_comorbidity(c) for c in comorbidities_doc["comorbidities"]],
        supportive=[_drug_use(r) for r in tables["supportive"]],
        notices={name: "\n".join(notice_lines(manifest, name)) for name in manifest["tables"]},
        value_sets=value_sets,
        manifest=manifest,
    )
    problems = catalog.problems()
    if problems:
        raise ValueError("inconsistent terminology data:\n  " + "\n  ".join(problems))
    return catalog


# --------------------------------------------------------------------------- table builders


def _icd_table(rows: list[dict[str, str]], version: str) -> CodeTable:
    """Displays are the official titles of the levels joined by ': ' (each title unchanged)."""
    titles = {r["code"]: r["title"] for r in rows}
    concepts = []
    for r in rows:
        code = r["code"]
        parts = [titles[code[:3]]]
        if len(code) > 5:
            parts.append(titles[code[:5]])
        if len(code) > 3:
            parts.append(r["title"])
        concepts.append(
            Concept(
                code,
                ": ".join(parts),
                ICD10GM_SYSTEM,
                True,
                MappingProxyType(
                    {
                        "title": r["title"],
                        "terminal": parse_bool(r["terminal"]),
                        "chapter": int(r["chapter"]),
                        "synonyms": tuple(s for s in r["synonyms"].split("|") if s),
                    }
                ),
            )
        )
    return CodeTable(
        "icd10gm",
        ICD10GM_SYSTEM,
        version,
        ICD10GM_PATTERN,
        concepts,
        level_fn=icd10gm_level,
        codable=lambda c: bool(c.extra["terminal"]),
    )


def _topography_table(rows: list[dict[str, str]], version: str) -> CodeTable:
    concepts = [
        Concept(
            r["code"], r["title"], ICDO3_SYSTEM, True, MappingProxyType({"paired": parse_bool(r["paired"])})
        )
        for r in rows
    ]
    # The 3-character rows are headings; only C00.0-style codes are codable.
    return CodeTable(
        "icdo3_topography",
        ICDO3_SYSTEM,
        version,
        TOPOGRAPHY_PATTERN,
        concepts,
        level_fn=topography_level,
        codable=lambda c: len(c.code) == 5,
    )


def _morphology_table(rows: list[dict[str, str]], version: str) -> CodeTable:
    concepts = [
        Concept(
            r["code"],
            r["title"],
            ICDO3_SYSTEM,
            True,
            MappingProxyType({"behaviour": int(r["behaviour"]), "group": r["group"]}),
        )
        for r in rows
    ]
    return CodeTable(
        "icdo3_morphology", ICDO3_SYSTEM, version, MORPHOLOGY_PATTERN, concepts, level_fn=morphology_level
    )


def _ops_table(rows: list[dict[str, str]], version: str) -> CodeTable:
    concepts = [
        Concept(
            r["code"],
            r["title"],
            OPS_SYSTEM,
            parse_bool(r["verified"]),
            MappingProxyType({"kind": r["kind"], "evidence": r["evidence"]}),
        )
        for r in rows
    ]
    return CodeTable("ops", OPS_SYSTEM, version, OPS_PATTERN, concepts, level_fn=ops_level, upper=False)


def _atc_table(rows: list[dict[str, str]], version: str) -> CodeTable:
    concepts = [
        Concept(
            r["code"],
            r["display"],
            ATC_SYSTEM,
            parse_bool(r["verified"]),
            MappingProxyType(
                {
                    "group": r["group"],
                    "therapy_type": r["therapy_type"],
                    "use": r["use"],
                    "evidence": r["evidence"],
                }
            ),
        )
        for r in rows
    ]
    return CodeTable("atc", ATC_SYSTEM, version, ATC_PATTERN, concepts, level_fn=atc_level)


def _loinc_table(labs: list[dict[str, str]], vitals: list[dict[str, str]], version: str) -> CodeTable:
    """Labs and vital signs: both are gold LOINC codes; only `labs` feeds lab sampling (`_labs`)."""
    concepts = [
        Concept(
            r["loinc"],
            r["name_de"],
            LOINC_SYSTEM,
            parse_bool(r["code_verified"]),
            MappingProxyType(
                {
                    "long_name_en": r["long_name_en"],
                    "unit": r["unit"],
                    "marker": parse_bool(r.get("marker", "false")),
                    "vital": vital,
                }
            ),
        )
        for rows, vital in ((labs, False), (vitals, True))
        for r in rows
    ]
    return CodeTable("loinc", LOINC_SYSTEM, version, LOINC_PATTERN, concepts, level_fn=loinc_level)


def _labs(rows: list[dict[str, str]]) -> dict[str, LabTest]:
    out = {}
    for r in rows:
        ref = {
            sex: (parse_optional_float(r[f"low_{sex}"]), parse_optional_float(r[f"high_{sex}"]))
            for sex in ("female", "male")
        }
        out[r["loinc"]] = LabTest(
            loinc=r["loinc"],
            name_de=r["name_de"],
            unit=r["unit"],
            ref=MappingProxyType(ref),
            decimals=int(r["decimals"]),
            marker=parse_bool(r["marker"]),
            verified=parse_bool(r["ref_verified"]),
            code_verified=parse_bool(r["code_verified"]),
            unit_verified=parse_bool(r["unit_verified"]),
            note=r["note"],
        )
    return out


def _regimens(rows: list[dict[str, str]]) -> dict[str, Regimen]:
    grouped: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        grouped.setdefault(r["regimen"], []).append(r)
    out = {}
    for key, drug_rows in grouped.items():
        first = drug_rows[0]
        drugs = [
            RegimenDrug(
                atc=r["atc"],
                name_de=r["name_de"],
                dose=float(r["dose"]),
                # CSV strings: _problems() reports any unit or route outside DOSE_UNITS / ROUTES
                unit=cast(DoseUnit, r["unit"]),
                route=cast(Route, r["route"]),
                days=tuple(int(d) for d in r["days"].split("|")),
                verified=parse_bool(r["dose_verified"]),
                times_per_day=int(r["times_per_day"]),
                max_mg=parse_optional_float(r["max_mg"]),
                note=r["note"],
                atc_verified=parse_bool(r["atc_verified"]),
            )
            for r in drug_rows
        ]
        out[key] = Regimen(
            key=key,
            name=first["name"],
            cycle_days=int(first["cycle_days"]),
            drugs=drugs,
            setting=first["setting"],
        )
    return out


def _pairs(items: Sequence[Sequence[Any]]) -> list[tuple[str, float]]:
    return [(str(code), float(weight)) for code, weight in items]


def _rule_set(value: Any) -> frozenset[str] | None:
    return None if value == ANY else frozenset(value)


def _entity(d: Mapping[str, Any], topography: CodeTable) -> Entity:
    topo = _pairs(d["topography"])
    paired = any(bool(c.extra["paired"]) for code, _ in topo if (c := topography.lookup(code)) is not None)
    tnm = d.get("tnm") or {}
    return Entity(
        key=d["key"],
        label_de=d["label_de"],
        weight=float(d["weight"]),
        sex=d["sex"],
        age_mean=float(d["age_mean"]),
        age_sd=float(d["age_sd"]),
        age_min=int(d["age_min"]),
        age_max=int(d["age_max"]),
        icd=_pairs(d["icd"]),
        topography=topo,
        morphology=_pairs(d["morphology"]),
        grading=_pairs(d["grading"]),
        paired_organ=paired,
        stage_weights=_pairs(d["stage_weights"]),
        metastasis_sites=_pairs(d["metastasis_sites"]),
        surgeries=_pairs(d["surgeries"]),
        regimens=list(d["regimens"]),
        markers=list(d["markers"]),
        male_share=float(d["male_share"]),
        staging=d["staging"],
        tnm_values=MappingProxyType({k: tuple(v) for k, v in tnm.items()}),
        stage_rules=tuple(
            StageRule(s, _rule_set(t), _rule_set(n), _rule_set(m)) for s, t, n, m in d["stage_rules"]
        ),
        icd_topography=MappingProxyType(dict(d.get("icd_topography", {}))),
        icd_morphology=MappingProxyType(dict(d.get("icd_morphology", {}))),
    )


def _drug_use(r: Mapping[str, Any]) -> DrugUse:
    schedule = r["schedule"]
    if isinstance(schedule, str):
        schedule = schedule.split("|")
    m, n, e, night = (float(x) for x in schedule)
    return DrugUse(
        atc=r["atc"],
        name_de=r["name_de"],
        dose=float(r["dose"]),
        unit=r["unit"],
        schedule=(m, n, e, night),
        route=r["route"],
        as_needed=_flag(r["as_needed"]),
        indication=r.get("indication", ""),
        note=r.get("note", ""),
        verified=_flag(r["verified"]),
    )


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else parse_bool(value)


def _comorbidity(d: Mapping[str, Any]) -> Comorbidity:
    return Comorbidity(
        icd=d["icd"],
        title=d["title"],
        prevalence_by_age=[(int(a), float(p)) for a, p in d["prevalence_by_age"]],
        drugs=[_drug_use(x) for x in d["drugs"]],
    )


# --------------------------------------------------------------------------- consistency


def _problems(cat: Catalog) -> list[str]:
    out: list[str] = []

    def need(table: CodeTable, code: str, where: str, *, codable: bool = True) -> None:
        ok = table.validate(code) if codable else code in table
        if not ok:
            out.append(f"{where}: {code!r} is not a valid {table.name} code")

    keys = [e.key for e in cat.entities]
    if len(set(keys)) != len(keys):
        out.append("duplicate entity keys")
    for e in cat.entities:
        w = f"entity {e.key}"
        for code, _ in e.icd:
            need(cat.icd10gm, code, w)
            if not ("C00" <= code[:3] <= "D48"):
                out.append(f"{w}: primary ICD {code} is not a neoplasm code")
        for code, _ in e.topography:
            need(cat.icdo3_topography, code, w)
        for code, _ in e.morphology:
            need(cat.icdo3_morphology, code, w)
            c = cat.icdo3_morphology.lookup(code)
            if c is not None and c.extra["behaviour"] != 3:
                out.append(f"{w}: morphology {code} is not malignant (/3)")
        for icd, topo in e.icd_topography.items():
            if icd not in dict(e.icd) or topo not in dict(e.topography):
                out.append(f"{w}: icd_topography {icd}->{topo} outside the entity's lists")
        for icd, morph in e.icd_morphology.items():
            if icd not in dict(e.icd) or morph not in dict(e.morphology):
                out.append(f"{w}: icd_morphology {icd}->{morph} outside the entity's lists")
        for value, _ in e.grading:
            if value not in cat.value_sets["G"]:
                out.append(f"{w}: grading {value!r} not in the oBDS grading list")
        for code, _ in e.metastasis_sites:
            need(cat.icd10gm, code, w)
            if not ("C77" <= code[:3] <= "C79"):
                out.append(f"{w}: metastasis site {code} is not in C77-C79")
        for code, _ in e.surgeries:
            need(cat.ops, code, w)
            c = cat.ops.lookup(code)
            if c is not None and c.extra["kind"] != "surgery":
                out.append(f"{w}: {code} is not a surgery")
        for key in e.regimens:
            if key not in cat.regimens:
                out.append(f"{w}: unknown regimen {key!r}")
        for loinc in e.markers:
            if loinc not in cat.labs:
                out.append(f"{w}: marker {loinc} is not in the lab table")
        if e.sex not in ("any", "female", "male"):
            out.append(f"{w}: sex {e.sex!r}")
        expected_share = {"female": 0.0, "male": 1.0}.get(e.sex)
        if expected_share is not None and e.male_share != expected_share:
            out.append(f"{w}: male_share {e.male_share} contradicts sex {e.sex}")
        if not (e.age_min <= e.age_mean <= e.age_max):
            out.append(f"{w}: age mean outside [min, max]")
        out.extend(_staging_problems(e, cat.value_sets))
    for r in cat.regimens.values():
        for d in r.drugs:
            need(cat.atc, d.atc, f"regimen {r.key}")
            if d.unit not in DOSE_UNITS or d.route not in ROUTES:
                out.append(f"regimen {r.key}: {d.name_de} has unit {d.unit!r} / route {d.route!r}")
            if not d.days or min(d.days) < 1 or max(d.days) > max(r.cycle_days, 1):
                out.append(f"regimen {r.key}: {d.name_de} days {d.days} outside the {r.cycle_days}-day cycle")
    for como in cat.comorbidities:
        need(cat.icd10gm, como.icd, "comorbidity")
        concept = cat.icd10gm.lookup(como.icd)
        if concept is not None and concept.display != como.title:
            out.append(f"comorbidity {como.icd}: title differs from the ICD table")
        for use in como.drugs:
            need(cat.atc, use.atc, f"comorbidity {como.icd}")
    for use in cat.supportive:
        need(cat.atc, use.atc, "supportive")
    for loinc in cat.labs:
        need(cat.loinc, loinc, "labs")
    return out


def _staging_problems(e: Entity, value_sets: Mapping[str, Mapping[str, str]]) -> list[str]:
    w = f"entity {e.key}"
    if e.staging != "UICC":
        if e.stage_rules or e.tnm_values:
            return [f"{w}: staging {e.staging!r} but TNM rules given"]
        return []
    out = []
    for axis in TNM_AXES:
        for v in e.tnm_values.get(axis, ()):
            if v not in value_sets[axis]:
                out.append(f"{w}: {axis}{v} is not an oBDS {axis} value")
    if out:
        return out
    reachable = set()
    for t in e.tnm_values["T"]:
        for n in e.tnm_values["N"]:
            for m in e.tnm_values["M"]:
                try:
                    reachable.add(e.stage_group(t, n, m))
                except ValueError as exc:
                    out.append(f"{w}: {exc}")
    for rule in e.stage_rules:
        if rule.stage not in value_sets["UICC"]:
            out.append(f"{w}: stage {rule.stage!r} is not an oBDS UICC value")
    for stage, _ in e.stage_weights:
        if stage not in reachable:
            out.append(f"{w}: weighted stage {stage!r} is unreachable by the rules")
    return out
