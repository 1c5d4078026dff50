"""A letter recipe: which facts a letter states, where, and in which words — and its gold label.

The gold extraction is built from the recipe alone (`Recipe.gold()`), never from the letter:
what the recipe says is negated is gold-negated, whatever a generator wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from clinsynth.schema import Assertion, ClinicalExtraction, FactKind, LetterSection, LetterType, Split

KINDS: tuple[FactKind, ...] = ("diagnosis", "procedure", "medication", "lab", "tumor")


@dataclass
class RecipeFact:
    id: str
    kind: FactKind
    section: LetterSection
    assertion: Assertion
    #: the schema fact (Diagnosis, Procedure, Medication, Lab or Tumor as a dict): the gold
    gold: dict[str, Any]
    #: the strings the letter writes: phrase (text with its cue), code, date, value, unit, dose ...
    say: dict[str, str] = field(default_factory=dict)
    #: other ways to name the fact that count as expressing it (for LLM-written text)
    synonyms: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    spec_id: str
    patient_id: str
    encounter_id: str
    split: Split
    letter_type: LetterType
    #: head of the letter: clinic, department, stay, patient line, signatures
    header: dict[str, Any]
    #: ordered section keys with the heading and layout the letter uses
    sections: list[dict[str, Any]]
    facts: list[RecipeFact]
    #: letter-wide style choices (date style, abbreviations, target length ...)
    style: dict[str, Any]

    def section_facts(self, section: str) -> list[RecipeFact]:
        return [f for f in self.facts if f.section == section]

    def has_section(self, section: str) -> bool:
        return any(s["key"] == section for s in self.sections)

    def gold(self) -> ClinicalExtraction:
        out: dict[str, Any] = {"diagnoses": [], "procedures": [], "medications": [], "labs": []}
        plural: dict[FactKind, str] = {
            "diagnosis": "diagnoses",
            "procedure": "procedures",
            "medication": "medications",
            "lab": "labs",
        }
        for f in self.facts:
            fact = dict(f.gold, assertion=f.assertion)
            if f.kind == "tumor":
                out["tumor"] = fact
            else:
                out[plural[f.kind]].append(fact)
        return ClinicalExtraction.model_validate(out)

    def codes(self) -> set[str]:
        """Every code the recipe holds (a letter may write these and no others)."""
        out: set[str] = set()
        for f in self.facts:
            for key in ("icd10gm", "ops", "atc", "loinc", "topography", "morphology"):
                if f.gold.get(key):
                    out.add(str(f.gold[key]))
            for m in f.gold.get("markers") or ():
                if m.get("loinc"):
                    out.add(m["loinc"])
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively (10x asdict)

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any]) -> Recipe:
        d = orjson.loads(data) if isinstance(data, (bytes, str)) else dict(data)
        d["facts"] = [RecipeFact(**f) for f in d["facts"]]
        return cls(**d)
