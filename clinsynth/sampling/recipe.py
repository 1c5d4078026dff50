"""A letter recipe: which facts a letter states, where, with which assertion and in which words —
and its gold label.

The gold extraction is built from the recipe alone (`Recipe.gold()`), never from the letter:
what the recipe says is negated is gold-negated, whatever a generator wrote. "Gold follows the
text" is the sampler's duty: it chooses the words (`say`) first and derives each gold value from
them (a code only at the specificity the written name or code supports).

Contract between the sampler (what is said) and the renderer (how it is written):

* `RecipeFact.say` holds the strings the letter writes **verbatim** for the fact; the renderer
  places them in sentence frames, tables or lists of its choosing, adds the assertion's cue
  (before or after the noun, `assertion` decides which cues fit) and may merge facts of one
  kind into one sentence ("Kein Nachweis von Leber- oder Lungenmetastasen" is two facts only
  if both names are written in full). It never invents another value, unit, date or code.
  Keys by kind (absent or "" = not written):
    - every kind: `name` (the fact's name as written; gold text/name/entity/target),
      `code` (a code as written, e.g. "C50.4", "5-870.a2"), `date` (as written)
    - diagnosis: `role` (main | secondary), `mark` († * !)
    - tumor: `entity`, `histology`, `morphology` (ICD-O code as written), `grading`, `tnm`
      (as written: "ypT3c ypN0 (0/14) cM0 L0 V0 Pn0 R0"), `stage` ("UICC IIIB", "Ann Arbor IIB",
      "Gleason-Score 3+4=7"), `laterality` ("links"), `markers` (list of strings, each a marker
      or receptor with its value: "ER 90 %", "HER2 negativ", "CEA 4,1 ng/ml"), `ecog`
      ("ECOG 1"), `status` ("partielle Remission"), `staging` (initial | current), `date`
    - procedure: `name`, `code`, `date`
    - radiotherapy: `name` (target), `total` ("50,4 Gy"), `fraction` ("1,8 Gy"),
      `fractions` ("28"), `start`, `end`, `intent`
    - medication: `name` (brand or INN as written), `dose` ("85"), `unit` ("mg/m²"),
      `schedule` ("1-0-1" or "1-0-1-0"), `frequency`, `as_needed` ("bei Bedarf"), `route`,
      `regimen` ("FOLFOX"), `cycle` ("3"), `day` ("1")
    - lab / vital: `name`, `value` ("10,2"), `unit` ("g/dl", may be "" when the block omits
      units), `flag` ("↓", "H", ""), `date`
    - risk_factor: `name` ("Nikotinabusus"), `pack_years` ("30")
  Keys added by the v2 sampler (additive; absent = not written):
    - tumor: `code` (the entity's ICD code as written), `topography` (ICD-O topography code as
      written), `stages` (list of entity-specific stages as written: "Gleason-Score 3+4=7",
      "Ann Arbor IIB"; `stage` stays the UICC stage), `name` (= `entity`)
    - medication: `context` (discharge | inpatient | therapy | admission | allergy — allergy is
      written as an intolerance: "Unverträglichkeit gegen Metamizol"), `intent` ("palliativ")
    - risk_factor: `cued` (true: the name carries its own assertion — "Nichtraucher" is negated,
      "Ex-Raucher" historical — and the renderer adds no cue)
    - v1's `phrase` (name with its cue) is gone: the renderer adds the cue.
  Keys added in the fix round (additive; absent = not known):
    - diagnosis: `course` ("chronic" | "acute" | "leading"): chronic = a comorbidity known before
      the stay (the comorbidity ICD codes of terminology/data/comorbidities.json, at 3 characters),
      acute = an event or complication of this stay (also every pooled negated/suspected/historical
      finding), leading = the stay's reason (the main diagnosis). The renderer picks present frames by
      it: "bekannte …/Vorbekannt" for chronic, "Komplizierend/Neu aufgetreten" only for acute,
      "Klinisch führend" only for leading. Absent: chronic for comorbidity ICD ranges, else acute.
    - diagnosis: `name_dat` (the dative of an adjective-initial name, for von/bei/mit/nach/Z.n.
      frames: "benigne essentielle Hypertonie" -> "benigner essentieller Hypertonie", "zerebrale
      Metastasen" -> "zerebralen Metastasen"); absent when the name does not start with an adjective
      or its head noun's gender is unclear — the renderer then uses label frames ("Z.n.: …") instead.
      Gold text stays `name`; the renderer writes `name_dat` in dative frames and the verifier binds it.
    - medication: `continuing` (true): a historical fact that stands for the earlier cycles of the
      regimen running this stay (gold has `regimen` and `cycle`: "Z.n. 3 Zyklen FOLFOX"); the
      renderer writes it only with cycle-bound frames ("Vormals … (C3)", "Z.n. 3 Zyklen …"), never
      "abgeschlossen/beendet/abgesetzt". A drug of the running regimen is otherwise never historical.
* Assertions per kind: `phrases.ASSERTIONS` lists the ones that apply (the sampler draws each);
  `phrases.SECTION_WEIGHTS` where each kind may stand — drawn independently of the assertion.
* `Recipe.header` holds the head as written: `title` (letter type), `clinic`, `hospital`, `date`
  (the letter's own), `patient`, `sex`, `birth`, `start`, `end`, `stay_type`, `stay_kind`
  (diagnostic | surgery | therapy | complication | palliative, "" unknown), `doctors`,
  `salutation`, `phone`; optional `follow_up` (a date), and for a Verlegungsbrief `reason` and
  `destination` (drawn as one pair fitting the stay: phrases.TRANSFER_PAIRS). `Recipe.encounter`
  and `Recipe.patient` are their gold parts (dates at the precision written, the department as
  written, the name as written in the head).
* `Recipe.untagged` lists strings the letter writes on purpose without gold (the letter's own
  date, a follow-up appointment, a phone number): the verifier's reverse check accepts them.
* `Recipe.sections`: dicts with `key` (schema.LetterSection), `heading` (as written, upper case
  when the style says so), `layout` (prose | table), `variant` (0-3).
* `Recipe.style` holds letter-wide choices: `date_style` (dmy | dmy_short | dmy2 | long) and
  `history_date_style` (my | my2 | dmy, for first-diagnosis and earlier dates), `abbreviations`,
  `table`, `target_words` (by letter type, close to the development letters), `code_style`
  (paren | line_end | bracket | prefix), `codes` (does the diagnosis list write ICD codes),
  `lab_units`, `lab_flags`, `lab_layout` (inline | table | list), `heading_case` (title | upper),
  `numbered_diagnoses`, `noise` (float: 0 none, 0.3 light, 1.0 heavy — typos per 100 words),
  `tnm_layout` (spaced | compact | prefix_once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from clinsynth.schema import LISTS, Assertion, ClinicalExtraction, FactKind, LetterSection, LetterType, Split

KINDS: tuple[FactKind, ...] = tuple(LISTS)


@dataclass
class RecipeFact:
    id: str
    kind: FactKind
    section: LetterSection
    assertion: Assertion
    #: the schema fact (Diagnosis, Tumor, Procedure ... as a dict, without assertion): the gold
    gold: dict[str, Any]
    #: the strings the letter writes verbatim (see the module docstring for the keys per kind)
    say: dict[str, Any] = field(default_factory=dict)
    #: other ways to name the fact that count as expressing it (for LLM-written text)
    synonyms: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    spec_id: str
    patient_id: str
    encounter_id: str
    split: Split
    letter_type: LetterType
    #: head of the letter as written: clinic, department, stay, patient line, signatures
    header: dict[str, Any]
    #: ordered sections: key, heading, layout, variant (the renderer may merge neighbours)
    sections: list[dict[str, Any]]
    facts: list[RecipeFact]
    #: letter-wide style choices (date style, abbreviations, target length, noise ...)
    style: dict[str, Any]
    #: gold of the stay and the patient (schema Encounter / Patient as dicts)
    encounter: dict[str, Any] = field(default_factory=dict)
    patient: dict[str, Any] = field(default_factory=dict)
    #: strings written on purpose without gold (see the module docstring)
    untagged: list[str] = field(default_factory=list)

    def section_facts(self, section: str) -> list[RecipeFact]:
        return [f for f in self.facts if f.section == section]

    def has_section(self, section: str) -> bool:
        return any(s["key"] == section for s in self.sections)

    def gold(self) -> ClinicalExtraction:
        out: dict[str, Any] = {name: [] for name in LISTS.values()}
        if self.encounter:
            out["encounter"] = self.encounter
        if self.patient:
            out["patient"] = self.patient
        for f in self.facts:
            out[LISTS[f.kind]].append(dict(f.gold, assertion=f.assertion))
        return ClinicalExtraction.model_validate(out)

    def codes(self) -> set[str]:
        """Every code the gold holds (a letter may write these and no others)."""
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
