"""Template letters: a recipe rendered by Jinja2 templates and sentence frames, deterministic and fast
(the CPU default letter backend).

The templates lay a section out (lists, tables, blocks); `SectionWriter` turns each fact into
words with a frame chosen by kind and assertion (`frames.py`), never by section, so the section
never predicts the assertion; secondary diagnoses are shuffled so position does not either. A
heading claims only what its facts are ("Hausmedikation" over admission drugs only, an exam's
"Beurteilung" over findings it can show), and fact-free sentences only what the stay has (`traits`).
Every string in a fact's `say` is written verbatim (codes of drugs and
labs never: real letters do not show ATC or LOINC). Fillers state no fact; dates the renderer
invents (next cycle, re-presentation) go to the letter's `untagged` list. Length follows
`style.target_words` through fact-free narrative; `noise.py` adds typos and OCR confusions.
Same recipe -> same letter: every choice comes from a `random.Random` seeded by the spec id.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jinja2

from clinsynth.letters import frames as F
from clinsynth.letters.noise import Table, add_noise, shift_table
from clinsynth.sampling.recipe import Recipe, RecipeFact

TEMPLATES = Path(__file__).with_name("templates")

#: words a letter aims at when the recipe sets no `style.target_words` (dev letters: median 227)
DEFAULT_WORDS = {"Entlassungsbrief": 260, "Arztbrief": 250, "Kurzarztbrief": 175, "Verlegungsbrief": 215}
#: noise level when the recipe sets no `style.noise` (typos per 100 words ~ level)
DEFAULT_NOISE = 0.3
#: assertion cues written right after a radiotherapy's target
RADIO_CUES = {
    "historical": (" in der Vorgeschichte", " (Vorgeschichte)", ", abgeschlossen,", " (früher)"),
    "negated": (" nicht erfolgt,", ", auf die verzichtet wurde,", " (nicht durchgeführt)"),
    "suspected": (" (fraglich)", ", fraglich,"),
}
#: narrative sections that take fact-free sentences to reach the target length
NARRATIVE = ("anamnese", "aufnahmebefund", "verlauf", "epikrise", "procedere", "befunde")
#: at most this many fact-free sentences per section (a letter short of facts stays short)
MAX_FILLER = 6
HEADINGS = {
    "diagnosen": ("Diagnosen", "Diagnose(n)", "Haupt- und Nebendiagnosen", "Diagnose"),
    "tumor": ("Onkologische Diagnose", "Tumorklassifikation", "Histologie", "Verlauf der Tumorerkrankung"),
    "anamnese": ("Anamnese", "Aufnahmegrund", "Aktuelle Anamnese", "Vorgeschichte"),
    "aufnahmebefund": ("Aufnahmebefund", "Befund bei Aufnahme", "Status bei Aufnahme", "Klinischer Befund"),
    "befunde": ("Befunde", "Labor und Befunde", "Diagnostik", "Untersuchungsbefunde"),
    "verlauf": ("Therapie und Verlauf", "Verlauf", "Stationärer Verlauf", "Dekurs"),
    "medikation": ("Medikation bei Entlassung", "Entlassmedikation", "Aktuelle Medikation", "Medikation"),
    "epikrise": ("Epikrise", "Zusammenfassung", "Beurteilung", "Epikrise und Therapieempfehlung"),
    "procedere": ("Procedere", "Empfehlung", "Weiteres Vorgehen", "Therapieempfehlung"),
}
#: neighbouring sections a letter may write under one heading, with the headings it then uses
MERGES = {
    ("anamnese", "aufnahmebefund"): ("Anamnese und Aufnahmebefund", "Anamnese/Befund", "Aufnahme"),
    ("verlauf", "epikrise"): ("Therapie und Verlauf/Epikrise", "Verlauf und Epikrise", "Epikrise"),
    ("epikrise", "procedere"): ("Epikrise und Procedere", "Beurteilung und Procedere", "Epikrise/Procedere"),
}
TITLES = {
    "Entlassungsbrief": ("Entlassungsbrief", "Entlassungsbericht", "Arztbrief"),
    "Arztbrief": ("Arztbrief", "Ärztlicher Bericht", ""),
    "Kurzarztbrief": ("Kurzarztbrief", "Vorläufiger Entlassungsbericht", "KURZARZTBRIEF"),
    "Verlegungsbrief": ("Verlegungsbrief", "Verlegungsbericht", "Ärztlicher Verlegungsbericht"),
}


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _say(f: Any) -> Mapping[str, Any]:
    return f.say if isinstance(f, RecipeFact) else f["say"]


def _get(f: Any, key: str) -> Any:
    return getattr(f, key) if isinstance(f, RecipeFact) else f[key]


def _ctx(f: RecipeFact) -> str:
    """A drug's context as the sampler states it in say (or, in hand-built recipes, only in gold)."""
    return str(f.say.get("context") or (f.gold or {}).get("context") or "")


def _name(say: Mapping[str, Any]) -> str:
    return str(say.get("name") or say.get("phrase") or "")


#: ICD-10 groups of comorbidities known before a stay (a diagnosis without `say["course"]` in one of
#: these is chronic, else acute): metabolic, mental, nervous, circulatory, respiratory, digestive,
#: musculoskeletal and renal long-term conditions
CHRONIC_ICD = re.compile(
    r"^(E0[0-7]|E1[0-4]|E66|E78|F[0-9]|G2|G3|G4[0-7]|I1[0-5]|I2[05]|I4[4-9]|I50|I6[5-9]|I7[0-3]|J4[0-7]|"
    r"K2[01]|K7[03-6]|M0|M1|M4|M8|N18|Z9)"
)
#: tumour status words that are a response to therapy ("Ansprechen:" fits them, not "Erstdiagnose")
RESPONSE = re.compile(r"[Rr]emission|[Pp]rogre|[Ss]tabil|[Aa]nsprechen|(?:SD|PR|CR|PD|VGPR)|stable")
#: finding names an imaging or endoscopy can show (metastasis sites, masses, tumours, effusions)
LINKABLE = re.compile(
    r"metasta|filiae|raumforderung|erguss|läsion|herd|aszites|karzinom|tumor|lymphom|neoplas|embolie|"
    r"thrombose|stenose|polyp|karzinose|infiltrat|pneumonie|fraktur|ileus|rezidiv"
)
#: examinations that see one region only (exam keyword -> finding keywords it can show); any other
#: imaging (CT, MRT of the trunk, PET, sonography) may show any linkable finding
EXAM_SCOPE: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = tuple(
    (re.compile(a, re.I), re.compile(b, re.I))
    for a, b in (
        (r"szintigra", r"ossär|knochen|skelett|wirbel|osteo"),
        (r"mammogra|mamma", r"mamma|brust|axill"),
        (r"cMRT|cCT|schädel|kopf|hirn|kraniell", r"zerebral|hirn|kraniell|meningeal"),
        (r"kolo|rekto|sigmoido", r"kolon|rekt|sigma|polyp|zäkum|darm|anastomos"),
        (r"gastro|ÖGD|ösophag", r"magen|ösophag|kardia|gastr|ulkus|stenose"),
        (r"broncho", r"bronch|lunge|pulmonal|tracheal"),
        (r"zysto", r"blase|urothel|vesikal"),
        (r"knochenmark|beckenkamm", r"knochenmark|infiltrat|leuk|lymphom|myelom"),
        (r"biopsie|punktion|zytolog|histolog", r"karzinom|tumor|lymphom|neoplas|metasta|infiltrat|filiae"),
    )
)
#: allergy frames that are a label themselves (not under the "Allergien/Unverträglichkeiten:" line)
ALLERGY_LABEL = re.compile(r"^(?:Allergien|Unverträglichkeiten):")
#: drug-administration wording that never goes into the diagnosis list
ADMINISTRATION = re.compile(
    r"Gabe|Therapie mit|Medikamentös|Wir begannen|Einleitung|verabreicht|Neu angesetzt"
)


def _ecog(recipe: Recipe) -> int | None:
    for f in recipe.facts:
        m = re.search(r"\d", str(f.say.get("ecog") or "")) if f.kind == "tumor" else None
        if m:
            return int(m.group(0))
    return None


_LAST_TRAITS: list[Any] = [None, frozenset()]


def traits(recipe: Recipe) -> frozenset[str]:
    """What the stay has, as fillers presuppose it (`frames.FILLER_NEEDS`): systemic therapy,
    cisplatin, a port, an analgesic, elective vs emergency admission, AZ by the written ECOG.
    (The last recipe's traits are kept: every section writer of one letter asks for them.)"""
    if _LAST_TRAITS[0] is recipe:
        return _LAST_TRAITS[1]
    _LAST_TRAITS[:] = [recipe, _traits(recipe)]
    return _LAST_TRAITS[1]


def _traits(recipe: Recipe) -> frozenset[str]:
    out: set[str] = set()
    for f in recipe.facts:
        s, gold = f.say, f.gold or {}
        if f.kind == "medication" and f.assertion == "present" and _ctx(f) != "allergy":
            name = _name(s).lower()
            if _ctx(f) == "therapy" or s.get("regimen") or s.get("cycle"):
                out.add("therapy")
                if "cisplatin" in name or str(gold.get("atc") or "").startswith("L01XA01"):
                    out.add("cisplatin")
            if str(gold.get("atc") or "").startswith(("N02", "M01A")):
                out.add("analgesic")
        port = "port" in _name(s).lower() or str(gold.get("ops") or "").startswith("5-399.5")
        if f.kind == "procedure" and f.assertion in ("present", "historical") and port:
            out.add("port")
    if "port" not in out:
        out.add("noport")
    kind = str(recipe.header.get("stay_kind") or "")
    if kind in ("therapy", "diagnostic", "surgery"):
        out.add("elective")
    if kind == "diagnostic":
        out.add("diagnostic")
    if kind == "complication":
        out.add("emergency")
    ecog = _ecog(recipe)
    if ecog is None or ecog <= 1:
        out.add("good_az")
    if ecog is None or ecog >= 2:
        out.add("poor_az")
    return frozenset(out)


def fits(sentence: str, have: frozenset[str]) -> bool:
    """May this fact-free sentence stand in a letter whose stay has these traits?"""
    return all(t in have for t in F.FILLER_NEEDS.get(sentence, ()))


#: frames that call a therapy finished: never for say["continuing"] (a running regimen's earlier cycles)
_FINISHED = re.compile(r"abgesetzt|abgeschlossen|beendet")


def course(f: RecipeFact) -> str:
    """A diagnosis's course as the sampler states it, else chronic for comorbidity ICD groups."""
    c = str(f.say.get("course") or "")
    if c:
        return c
    if f.say.get("role") == "main":
        return "leading"
    code = str((f.gold or {}).get("icd10gm") or f.say.get("code") or "")
    return "chronic" if CHRONIC_ICD.match(code) else "acute"


def dose_text(say: Mapping[str, Any]) -> str:
    """Dose and unit as written; carboplatin's target AUC reads "AUC 5", not "5 AUC"."""
    dose, unit = str(say.get("dose") or ""), str(say.get("unit") or "")
    if unit.upper() == "AUC" and dose:
        return f"{unit} {dose}"
    return f"{dose} {unit}".strip()


# ---------------------------------------------------------------------------- v1 helpers (prompts)
def coded(f: RecipeFact | Mapping[str, Any], style: Mapping[str, Any]) -> str:
    """The fact's name with its code where the recipe writes one (never an ATC or LOINC code)."""
    say, kind = _say(f), _get(f, "kind")
    name, code = _name(say), str(say.get("code") or "")
    if not code or kind in ("medication", "lab", "vital"):
        return name
    code += str(say.get("mark") or "")
    cs = style.get("code_style", "paren")
    if cs == "prefix" and kind == "diagnosis":
        return f"{code} {name}"
    if cs == "bracket":
        return f"{name} [{code}]"
    return f"{name} ({'OPS ' if kind == 'procedure' else ''}{code})"


def medline(f: RecipeFact | Mapping[str, Any], intent: bool = True) -> str:
    """A drug as a medication line writes it: name, dose, unit, route, schedule, frequency, as needed
    (and its therapy intent, unless the caller writes that once for a whole cycle)."""
    say = _say(f)
    keys = ("dose_unit", "route", "schedule", "frequency", "as_needed") + (("intent",) if intent else ())
    parts = [_name(say)]
    for k in keys:
        if k == "dose_unit":
            parts.append(dose_text(say))
        else:
            parts.append(str(say.get(k) or ""))
    return " ".join(p for p in parts if p)


def period(s: str) -> str:
    """End a sentence once: "i.v." stays "i.v.", "Text" becomes "Text."."""
    s = str(s).rstrip()
    return s if s.endswith((".", "!", "?", ":")) else s + "."


def capfirst(s: str) -> str:
    return s[:1].upper() + s[1:]


# ---------------------------------------------------------------------------- the section writer
class SectionWriter:
    """Words for the facts of one section; every choice from one seeded RNG (deterministic)."""

    def __init__(self, recipe: Recipe, section: Mapping[str, Any]) -> None:
        self.recipe = recipe
        self.section = section
        self.key = str(section["key"])
        self.style = recipe.style
        self.rng = random.Random(zlib.crc32(f"section|{recipe.spec_id}|{self.key}".encode()))
        self.variant = int(section.get("variant", 0) or 0) % 3
        numbered = recipe.style.get("numbered_diagnoses")
        if self.key == "diagnosen" and numbered is not None:  # 0 = numbered list, 1/2 = unnumbered
            self.variant = 0 if numbered else 1 + self.variant % 2
        self.layout = str(section.get("layout") or "prose")
        self.frames: dict[str, str] = {}
        self.last_frame = ""
        self.female = recipe.header.get("sex") == "female"
        self.have = traits(recipe)
        #: the tables written: (rows as (left cells, right cells), the column a shift moves: 0 left,
        #: 1 right); `noise.shift_table` may shift one of them in a heavy-noise letter
        self.tables: list[Table] = []

    # -- small helpers
    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def of(self, facts: Sequence[RecipeFact], *kinds: str) -> list[RecipeFact]:
        return [f for f in facts if f.kind in kinds]

    def pat(self) -> str:
        return self.pick(("Pat.", "die Patientin" if self.female else "der Patient"))

    # -- names with code and date
    def code(self, f: RecipeFact, where: str = "inline") -> str:
        """The code as written (ICD or OPS, exactly as in say); never ATC or LOINC."""
        code = str(f.say.get("code") or "")
        if not code or f.kind in ("medication", "lab", "vital"):
            return ""
        code += str(f.say.get("mark") or "")
        cs = self.style.get("code_style", "paren")
        if where == "line" and (cs == "line_end" or (cs == "paren" and self.chance(0.2))):
            return self.pick(("\t", "\t\t", "   ", " - ")) + code
        if cs == "bracket":
            return f" [{code}]"
        if f.kind == "procedure" and self.chance(0.5):
            return f" (OPS {code})"
        return f" ({code})"

    def named(self, f: RecipeFact, where: str = "inline", date: bool = False) -> str:
        """The name with its code (and, with `date`, its date before a line-end code)."""
        say = f.say
        name = _name(say)
        if date:
            name = self.dated(f, name)
        if f.kind == "diagnosis" and say.get("code") and self.style.get("code_style") == "prefix":
            return f"{say['code']}{say.get('mark') or ''} {name}"
        return name + self.code(f, where)

    def dated(self, f: RecipeFact, x: str) -> str:
        """Append the fact's date where its frame did not use it."""
        d = str(f.say.get("date") or "")
        if not d:
            return x
        if f.kind == "diagnosis" and f.assertion == "present":
            if f.say.get("role") == "main":
                return x + self.pick((f", ED {d}", f" (ED {d})", f", Erstdiagnose {d}", f" - ED {d}"))
            return x + self.pick((f", ED {d}", f" (ED {d})", f" seit {d}", f" (bekannt seit {d})"))
        return x + self.pick((f" ({d})", f" vom {d}", f", {d}"))

    # -- one fact as a sentence (or list item)
    def phrase(self, f: RecipeFact, *, item: bool = False, avoid: re.Pattern[str] | None = None) -> str:
        """The fact in a frame of its kind and assertion; `item` = a list line (no final period);
        `avoid`: frames the caller's place does not take (drug administration in a diagnosis list)."""
        if f.kind == "tumor":
            return self.tumor_inline(f)
        if f.kind == "medication" and _ctx(f) == "allergy":
            frame, mod, fid = F.choose(self.rng, "allergy", f.assertion, _name(f.say), avoid=avoid)
            self.frames[f.id] = fid.replace("allergy.", "medication.", 1)
            return self._end(F.fill(frame, _name(f.say)), item)
        if f.kind == "risk_factor" and f.say.get("cued"):
            self.frames[f.id] = f"risk_factor.{f.assertion}:cued|"
            return self._end(self.risk(f), item)
        if f.kind == "medication":
            x = medline(f)
        elif f.kind in ("lab", "vital"):
            x = self.labtext(f)
            if f.say.get("date"):
                x += self.pick((f" ({f.say['date']})", f" am {f.say['date']}", f" vom {f.say['date']}"))
        elif f.kind == "radiotherapy" and f.assertion != "present":
            # the cue right after the target (a pre-cue would have "Radiatio" between it and the name)
            cue = self.pick(RADIO_CUES[f.assertion])
            self.frames[f.id] = f"radiotherapy.{f.assertion}:after:{cue.strip(' ,()')}|"
            return self._end(self.radio(f, cue), item)
        elif f.kind == "radiotherapy":
            x = self.radio(f)
        elif f.kind == "risk_factor":
            x = self.risk(f)
        elif item and f.assertion == "present" and f.kind == "diagnosis":
            self.frames[f.id] = "diagnosis.present:{x}|"
            return self.named(f, "line", date=True)
        else:
            x = self.named(f)
        d = str(f.say.get("date") or "") if f.kind in ("diagnosis", "procedure") else ""
        use_date = bool(d) and (f.kind == "procedure" or f.assertion == "historical") and self.chance(0.7)
        opts: dict[str, Any] = {
            "dated": d if use_date else "",
            "course": course(f) if f.kind == "diagnosis" else "",
            "chapter": F.ops_chapter(str(f.say.get("code") or (f.gold or {}).get("ops") or ""))
            if f.kind == "procedure"
            else None,
            "cycle": str(f.say.get("cycle") or "") if f.kind == "medication" else "",
            # earlier cycles of a regimen that continues this stay are never "finished" (sampler FB)
            "avoid": _FINISHED if f.kind == "medication" and f.say.get("continuing") else avoid,
            "dative": bool(f.say.get("name_dat")),
        }
        frame, mod, fid = F.choose(self.rng, f.kind, f.assertion, _name(f.say), **opts)
        if frame == self.last_frame:  # the same frame twice in a row reads like a template
            frame, mod, fid = F.choose(self.rng, f.kind, f.assertion, _name(f.say), **opts)
        self.last_frame = frame
        self.frames[f.id] = fid
        name = _name(f.say)
        if f.say.get("name_dat") and F.adjective_initial(name) and F.DATIVE_SLOT.search(frame):
            # "bei benigner essentieller Hypertonie", "Z.n. zerebralen Metastasen"
            dat = str(f.say["name_dat"])
            x = x.replace(name, dat, 1)
            name = dat
        if f.kind == "medication":  # regimen/cycle after a cue that follows the name, else beside it
            note = self.cycle_note(f)
            if f.assertion != "present" and frame.startswith("{x}"):
                return self._end(F.fill(frame, x, mod) + note, item)
            return self._end(F.fill(frame, x + note, mod), item)
        if use_date and "{d}" in frame:
            return self._end(F.fill(frame, x, mod, d), item)
        if f.assertion != "present" and frame.startswith("{x}") and f.kind in ("diagnosis", "procedure"):
            # a cue after the name: code and date go to the end, nothing sits between name and cue
            code = str(f.say.get("code") or "")
            tail = (f" ({code}{f.say.get('mark') or ''})" if code else "") + (
                self.pick((f" ({d})", f", {d}")) if d else ""
            )
            return self._end(F.fill(frame, name, mod) + tail, item)
        return self._end(F.fill(frame, self.dated(f, x) if d else x, mod), item)

    def _end(self, s: str, item: bool) -> str:
        return s if item else period(s)

    def sentences(self, facts: Sequence[RecipeFact], *, group: bool = True) -> list[str]:
        """Sentences for facts; same-assertion non-present findings may share one list sentence."""
        out: list[str] = []
        todo = list(facts)
        if group:
            for assertion in ("negated", "suspected", "historical"):
                same = [
                    f
                    for f in todo
                    if f.assertion == assertion
                    and f.kind == "diagnosis"
                    and not f.say.get("date")
                    and not f.say.get("code")
                ]
                if len(same) >= 2 and self.chance(0.6):
                    same = same[: self.rng.randint(2, min(4, len(same)))]
                    names = [_name(f.say) for f in same]
                    frame = F.list_frame(self.rng, assertion, names)
                    mod = ""
                    if "{m}" in frame or "{M}" in frame:
                        mods = F.modalities(names[0])
                        mod = self.pick(mods) if self.chance(0.5) else ""
                    conj = "oder" if assertion in ("negated", "suspected") else "und"
                    out.append(period(F.fill(frame, F.join_names(names, self.rng, conj), mod)))
                    for f in same:
                        self.frames[f.id] = f"{f.kind}.{assertion}:list:{frame}|{mod.strip()}"
                        todo = [g for g in todo if g is not f]
        out += [self.phrase(f) for f in todo]
        self.rng.shuffle(out) if self.chance(0.3) else None
        return out

    # -- kinds
    def cycle_note(self, f: RecipeFact) -> str:
        """Regimen, cycle and day of a drug written on its own (not in a cycle sentence)."""
        s = f.say
        bits = []
        if s.get("regimen"):
            bits.append(str(s["regimen"]))
        if s.get("cycle"):
            bits.append(self.pick((f"Zyklus {s['cycle']}", f"C{s['cycle']}", f"{s['cycle']}. Zyklus")))
        if s.get("day"):
            bits.append(self.pick((f"Tag {s['day']}", f"d{s['day']}")))
        return f" ({', '.join(bits)})" if bits else ""

    def labtext(self, f: RecipeFact) -> str:
        say = f.say
        value = " ".join(str(say.get(k) or "") for k in ("value", "unit", "flag") if say.get(k))
        sep = self.pick((" ", ": ", " ")) if f.assertion == "present" else " "
        return f"{_name(say)}{sep}{value}".strip() if value else _name(say)

    def radio(self, f: RecipeFact, cue: str = "") -> str:
        """Radiotherapy: target, dose, fractions, dates, intent; `cue` right after the target."""
        s = f.say
        head = self.pick(("Radiatio", "RTX", "Bestrahlung", "perkutane Radiatio", "Strahlentherapie"))
        out = f"{head} {_name(s)}".strip() + cue
        if s.get("total"):
            out += f" mit {s['total']}" if self.chance(0.6) else f", GD {s['total']}"
        if s.get("fractions") and s.get("fraction"):
            out += self.pick(
                (
                    f" ({s['fractions']} x {s['fraction']})",
                    f" in {s['fractions']} Fraktionen à {s['fraction']}",
                )
            )
        elif s.get("fraction"):
            out += f", ED {s['fraction']}"
        elif s.get("fractions"):
            out += f" in {s['fractions']} Fraktionen"
        if s.get("start") and s.get("end"):
            out += self.pick((f" vom {s['start']} bis {s['end']}", f" ({s['start']} - {s['end']})"))
        elif s.get("start"):
            out += f" ab {s['start']}"
        elif s.get("end"):
            out += f" bis {s['end']}"
        if s.get("intent"):
            out += self.pick((f", {s['intent']}", f" ({s['intent']})", f", Intention: {s['intent']}"))
        return out

    def risk(self, f: RecipeFact) -> str:
        s = f.say
        out = _name(s)
        if s.get("pack_years"):
            out += self.pick(
                (
                    f" ({s['pack_years']} py)",
                    f", {s['pack_years']} pack years",
                    f" (kum. {s['pack_years']} PY)",
                )
            )
        return out

    def tumor_parts(self, f: RecipeFact) -> dict[str, str]:
        s = f.say
        entity = str(s.get("entity") or s.get("name") or "")
        if s.get("laterality") and s["laterality"] not in entity:
            entity += f" {s['laterality']}"
        if s.get("code"):
            entity += self.code(f)
        hist = str(s.get("histology") or "")
        if s.get("morphology"):
            m = str(s["morphology"])
            hist = (
                f"{hist} " + self.pick((f"(ICD-O {m})", f"({m})", f"(ICD-O-3: {m})"))
                if hist
                else self.pick((f"ICD-O {m}", f"Morphologie {m}", f"ICD-O-3: {m}"))
            )
        if s.get("grading"):
            hist = (hist + ", " if hist else "") + str(s["grading"])
        stages = [str(s[k]) for k in ("tnm", "stage") if s.get(k)]
        more = s.get("stages") or []
        stages += [str(x) for x in ([more] if isinstance(more, str) else more) if x]
        staging = ", ".join(stages)
        if s.get("topography"):
            topo = str(s["topography"])
            hist = (hist + ", " if hist else "") + self.pick((f"Topographie {topo}", f"ICD-O-T {topo}"))
        markers = s.get("markers") or []
        if isinstance(markers, str):
            markers = [markers]
        mk = self.pick(("; ", ", ")).join(str(m) for m in markers if m)
        return {
            "entity": entity,
            "hist": hist,
            "staging": staging,
            "markers": mk,
            "ecog": str(s.get("ecog") or ""),
            "status": str(s.get("status") or ""),
            "date": str(s.get("date") or "") if f.assertion != "historical" else "",
            "initial": "1" if s.get("staging") == "initial" else "",
        }

    def tumor_lead(self, f: RecipeFact, entity: str) -> str:
        """The tumour's entity line with its assertion cue (a historical one with its date)."""
        if f.assertion == "present":
            self.frames[f.id] = "tumor.present:{x}|"
            return entity
        d = str(f.say.get("date") or "") if f.assertion == "historical" else ""
        frame, mod, fid = F.choose(self.rng, "tumor", f.assertion, entity, dated=d)
        self.frames[f.id] = fid
        return F.fill(frame, entity, mod, d)

    def tumor_lines(self, f: RecipeFact) -> list[str]:
        """A tumour as an indented block of lines (diagnosis list style)."""
        p = self.tumor_parts(f)
        lead = self.tumor_lead(f, p["entity"])
        if p["date"]:
            if p["initial"]:
                lead += self.pick((f", ED {p['date']}", f" (ED {p['date']})", f" - Erstdiagnose {p['date']}"))
            else:
                lead += self.pick(
                    (f", Staging {p['date']}", f" (Re-Staging {p['date']})", f", aktuell {p['date']}")
                )
        lines = [lead]
        if p["hist"]:
            lines.append(self.pick(("Histologie: ", "Histo: ", "")) + p["hist"])
        if p["staging"]:
            labels = ("", "TNM: ", "Klassifikation: ") if f.say.get("tnm") else ("", "Klassifikation: ")
            lines.append(self.pick(labels) + p["staging"])
        if p["markers"]:
            lines.append(
                self.pick(("", "Rezeptorstatus/Marker: ", "Molekularpathologie: ", "Marker: ")) + p["markers"]
            )
        if p["ecog"]:
            lines.append(p["ecog"])
        if p["status"]:
            sl: tuple[str, ...] = ("Aktuell: ", "Status: ", "Ansprechen: ", "Jetzt: ")
            lines.append(self.pick(sl if RESPONSE.search(p["status"]) else sl[:2] + sl[3:]) + p["status"])
        return lines

    def tumor_inline(self, f: RecipeFact) -> str:
        """A tumour in running text (Verlauf, Befunde, Epikrise)."""
        p = self.tumor_parts(f)
        lead = self.tumor_lead(f, p["entity"])
        bits = []
        if p["date"]:
            bits.append(
                self.pick((f"ED {p['date']}", f"Erstdiagnose {p['date']}"))
                if p["initial"]
                else f"Staging {p['date']}"
            )
        if p["hist"]:
            label = self.pick(("histologisch ", "Histologie: ", "")) if f.say.get("histology") else ""
            bits.append(label + p["hist"])
        if p["staging"]:
            bits.append(p["staging"])
        if p["markers"]:
            bits.append(p["markers"])
        out = lead + (
            " (" + "; ".join(bits) + ")"
            if bits and self.chance(0.5)
            else (", " + ", ".join(bits) if bits else "")
        )
        out = period(out)
        if p["status"]:
            out += (
                " "
                + self.pick(
                    ("Aktuell ", "Im Re-Staging ", "Befund: ", "Ansprechen: ")
                    if RESPONSE.search(p["status"])
                    else ("Aktuell ", "Status: ", "Befund: ")
                )
                + period(p["status"])
            )
        if p["ecog"]:
            out += " " + period(self.pick(("Allgemeinzustand: ", "Leistungsstatus ", "")) + p["ecog"])
        return out

    # -- blocks used by the templates
    def lab_block(self, labs: Sequence[RecipeFact], inline: bool = False) -> list[str]:
        """Present labs grouped by date (the date written once), in one of several layouts
        (`inline`: running text, as in Verlauf or Epikrise)."""
        present = [f for f in labs if f.assertion == "present"]
        out: list[str] = []
        by_date: dict[str, list[RecipeFact]] = {}
        for f in present:
            by_date.setdefault(str(f.say.get("date") or ""), []).append(f)
        layout = str(self.style.get("lab_layout") or ("table" if self.layout == "table" else "inline"))
        if inline:
            layout = "inline"
        for d, group in by_date.items():
            for f in group:
                self.frames[f.id] = f"{f.kind}.present:{layout}|"
            head = self.pick(
                ("Labor", "Laborwerte", "Laborchemisch", "Blutwerte")
                if inline
                else ("Labor", "Laborwerte", "Labor bei Aufnahme", "Laborchemisch", "Blutwerte")
            )
            head += (self.pick((f" vom {d}", f" ({d})", f" {d}")) if d else "") + ":"
            if layout == "table":
                width = max(len(_name(f.say)) for f in group) + 2
                cells = [
                    (
                        f"{_name(f.say):<{width}}",
                        f"{f.say.get('value') or ''} {f.say.get('unit') or ''}"
                        f"{' ' + str(f.say['flag']) if f.say.get('flag') else ''}",
                    )
                    for f in group
                ]
                self.tables.append((cells, 1))  # the value column can slide
                out.append(head + "\n" + "\n".join((a + b).rstrip() for a, b in cells))
            elif layout == "list":
                out.append(
                    head + "\n" + "\n".join(self.pick(("- ", "", "  ")) + self.labtext(f) for f in group)
                )
            else:
                sep = self.pick(("; ", ", ", " · "))
                out.append(head + " " + sep.join(self.labtext(f) for f in group) + ".")
        out += self.sentences([f for f in labs if f.assertion != "present"], group=False)
        return out

    def med_table(self, meds: Sequence[RecipeFact]) -> list[str]:
        """Medication lines in one of several layouts (the scheme column stays beside its drug)."""
        present = [
            f
            for f in meds
            if f.assertion == "present"
            and _ctx(f) != "allergy"
            and not any(f.say.get(k) for k in ("regimen", "cycle", "day", "intent"))
        ]
        layout = (
            self.pick(("dash", "colon", "columns", "scheme_first", "inline"))
            if self.layout != "table"
            else self.pick(("columns", "scheme_first"))
        )
        rows: list[str] = []
        if layout == "columns" and present and self.chance(0.5):
            slots = {
                str(f.say.get("schedule") or "").count("-") + 1 for f in present if f.say.get("schedule")
            }
            routed = any(f.say.get("route") for f in present)
            heads = ["Präparat / Dosis / Schema", "Medikament       Dosis       Einnahme"]
            if routed:  # the route column is written: the header names it
                heads = ["Präparat / Dosis / Applikation / Schema", "Medikament   Dosis   Art   Einnahme"]
            elif slots == {3}:
                heads.append("Wirkstoff  Stärke  morgens-mittags-abends")
            elif slots == {4}:
                heads.append("Wirkstoff  Stärke  morgens-mittags-abends-nachts")
            rows.append(self.pick(heads))
        for f in present:
            self.frames[f.id] = f"medication.present:{layout}|"
        if layout == "inline" and present:
            rows.append(
                self.pick(("Medikation: ", "Aktuell: ", "")) + ", ".join(medline(f) for f in present) + "."
            )
        else:
            width = max((len(_name(f.say)) for f in present), default=0) + 2
            cells: list[tuple[str, str]] = []
            for f in present:
                s = f.say
                dose = dose_text(s)
                when = " ".join(str(s.get(k)) for k in ("schedule", "frequency", "as_needed") if s.get(k))
                route = str(s.get("route") or "")
                name = _name(s)
                if layout == "dash":
                    rows.append("- " + medline(f))
                elif layout == "colon":
                    rows.append(" ".join(p for p in (name, dose, route) if p) + (f": {when}" if when else ""))
                elif layout == "columns":
                    cells.append((f"{name:<{width}}{dose:<12}{route:<6}", when))
                    rows.append("".join(cells[-1]).rstrip())
                else:
                    cells.append((f"{when or '-':<11} ", " ".join(p for p in (name, dose, route) if p)))
                    rows.append("".join(cells[-1]).rstrip())
            if cells:  # the schedule column can slide (last in `columns`, first in `scheme_first`)
                self.tables.append((cells, 1 if layout == "columns" else 0))
        shown = {id(f) for f in present}
        rows += self.sentences([f for f in meds if id(f) not in shown], group=False)
        return rows

    def therapy(self, meds: Sequence[RecipeFact]) -> list[str]:
        """Systemic therapy grouped by regimen and cycle: one sentence per cycle."""
        groups: dict[tuple[str, str], list[RecipeFact]] = {}
        for f in meds:
            groups.setdefault((str(f.say.get("regimen") or ""), str(f.say.get("cycle") or "")), []).append(f)
        out = []
        for (regimen, cycle), fs in groups.items():
            days = {str(f.say.get("day") or "") for f in fs}
            one_day = next(iter(days)) if len(days) == 1 else ""
            intents = {str(f.say.get("intent") or "") for f in fs}
            one_intent = next(iter(intents)) if len(intents) == 1 else ""
            drugs = []
            for f in fs:
                self.frames[f.id] = f"medication.{f.assertion}:therapy|"
                line = medline(f, intent=not one_intent)
                if f.say.get("day") and not one_day:
                    line += self.pick((f" (d{f.say['day']})", f" an Tag {f.say['day']}"))
                drugs.append(line)
            day = self.pick((f"Tag {one_day}", f"d{one_day}")) if one_day else ""
            frames: tuple[str, ...]
            if cycle:
                frames = (
                    "{r}, Zyklus {n}{D}: {x}",
                    "Applikation des {n}. Zyklus {r}{D} mit {x}",
                    "Wir verabreichten den {n}. Zyklus {r}{D}: {x}",
                    "Zyklus {n} {r}{D}: {x}",
                    "C{n} {r}{D}: {x}",
                    "Gabe des {n}. Zyklus {r}{D} mit {x}",
                )
            else:
                frames = ("{r}{D}: {x}", "Systemtherapie nach {r}-Schema{D}: {x}", "Gabe von {x} ({r}{D})")
            frame = self.pick(frames)
            if not regimen:
                frame = (
                    frame.replace(" {r}", "")
                    .replace("{r}, ", "")
                    .replace("nach {r}-Schema", "")
                    .replace("{r}", "")
                )
            sentence = (
                frame.replace("{n}", cycle)
                .replace("{r}", regimen)
                .replace("{D}", f" ({day})" if day else "")
                .replace("{x}", ", ".join(drugs))
            )
            if one_intent:
                sentence = self.pick(
                    (
                        f"{period(sentence)} Intention: {one_intent}",
                        f"{sentence} ({one_intent})",
                        f"{one_intent}: {sentence}",
                    )
                )
            out.append(period(sentence.replace("  ", " ")))
        return out

    def dx_entries(self, facts: Sequence[RecipeFact]) -> list[dict[str, Any]]:
        """The diagnosis list: main diagnoses with their tumour blocks, then the rest as items."""
        dx = self.of(facts, "diagnosis")
        main = [f for f in dx if f.say.get("role") == "main" and f.assertion == "present"]
        tumors = self.of(facts, "tumor")
        listed = {id(f) for f in main} | {id(f) for f in tumors}
        rest = [f for f in facts if id(f) not in listed]
        entries: list[dict[str, Any]] = []
        for f in main:
            lines = [self.phrase(f, item=True)]
            for t in [t for t in tumors if self.same_tumour(f, t)]:
                tumors = [u for u in tumors if u is not t]
                lines += self.tumour_under(f, t)
            entries.append({"lines": lines, "main": True})
        # a tumour whose entity a present secondary diagnosis names goes under that one (named once)
        for t in list(tumors):
            anchor = next(
                (
                    g
                    for g in rest
                    if g.kind == "diagnosis" and g.assertion == "present" and self.same_tumour(g, t)
                ),
                None,
            )
            if anchor is not None:
                tumors = [u for u in tumors if u is not t]
                rest = [g for g in rest if g is not anchor]
                lines = [self.phrase(anchor, item=True)] + self.tumour_under(anchor, t)
                entries.append({"lines": lines, "main": not entries})
        for t in tumors:
            entries.append({"lines": self.tumor_lines(t), "main": not entries})
        # a drug of this stay is no diagnosis: the running regimen goes under the main entry as a
        # therapy line; other drugs as items without administration wording
        therapy = [f for f in self.therapy_meds(rest)]
        rest = [f for f in rest if f not in therapy]
        if therapy:
            lines = [
                self.pick(("Aktuelle Therapie: ", "Systemtherapie: ", "Therapie: ")) + x
                for x in self.therapy_lines(therapy)
            ]
            if entries:
                entries[0]["lines"] += lines
            else:
                entries.append({"lines": lines, "main": False})
        # secondary items in random order: position says nothing about the assertion
        self.rng.shuffle(rest)
        for f in rest:
            entries.append({"lines": [self.phrase(f, item=True, avoid=ADMINISTRATION)], "main": False})
        return entries

    def tumour_under(self, f: RecipeFact, t: RecipeFact) -> list[str]:
        """A tumour's lines under the diagnosis that names it: the entity is not repeated (its side, if
        the diagnosis does not write it, and its date follow as a label line), then histology, TNM..."""
        tl = self.tumor_lines(t)
        ent = str(t.say.get("entity") or "")
        lat = str(t.say.get("laterality") or "")
        dn = _name(f.say)
        same_code = not t.say.get("code") or t.say.get("code") == f.say.get("code")
        if ent and ent in dn and same_code and t.assertion == "present":
            rest0 = tl[0][len(self.tumor_parts(t)["entity"]) :].lstrip(" ,")
            if not t.say.get("date") or str(t.say["date"]) in str(f.say.get("date") or ""):
                rest0 = ""
            side = self.pick(("Seite: ", "Lokalisation: ")) + lat if lat and lat not in dn else ""
            first = ", ".join(x for x in (side, rest0) if x)
            tl = ([first] if first else []) + tl[1:]
        return [x for x in tl if x]

    def therapy_lines(self, meds: Sequence[RecipeFact]) -> list[str]:
        """A regimen as label lines ("FOLFOX C3 d1: Oxaliplatin 85 mg/m² i.v., ..."), one per cycle."""
        groups: dict[tuple[str, str], list[RecipeFact]] = {}
        for f in meds:
            groups.setdefault((str(f.say.get("regimen") or ""), str(f.say.get("cycle") or "")), []).append(f)
        out = []
        for (regimen, cycle), fs in groups.items():
            head = " ".join(
                x for x in (regimen, self.pick((f"C{cycle}", f"Zyklus {cycle}")) if cycle else "") if x
            )
            drugs = []
            for f in fs:
                self.frames[f.id] = "medication.present:dx-therapy|"
                drugs.append(medline(f) + (f" d{f.say['day']}" if f.say.get("day") else ""))
            out.append((head + ": " if head else "") + ", ".join(drugs))
        return out

    @staticmethod
    def same_tumour(dx: RecipeFact, t: RecipeFact) -> bool:
        """A present tumour record that belongs under this main diagnosis (same name or ICD group)."""
        if t.assertion != "present":
            return False
        ent, dn = str(t.say.get("entity") or ""), _name(dx.say)
        if ent and (ent in dn or dn in ent):
            return True
        a, b = str(dx.gold.get("icd10gm") or ""), str(t.gold.get("icd10gm") or "")
        return bool(a and b and a[:3] == b[:3])

    def therapy_meds(self, meds: Sequence[RecipeFact]) -> list[RecipeFact]:
        """Drugs of a regimen or cycle (written per cycle), present ones only."""
        return [
            f
            for f in meds
            if f.assertion == "present"
            and _ctx(f) != "allergy"
            and (f.say.get("regimen") or f.say.get("cycle"))
        ]

    def support_meds(self, meds: Sequence[RecipeFact]) -> list[RecipeFact]:
        therapy = self.therapy_meds(meds)
        grouped = {id(f) for f in therapy}
        return [f for f in meds if id(f) not in grouped]

    def support(self, meds: Sequence[RecipeFact]) -> str:
        """Supportive drugs during the stay: a labelled list when all are given, else sentences."""
        plain = all(f.assertion == "present" and _ctx(f) != "allergy" for f in meds)
        if meds and plain and self.chance(0.6):
            for f in meds:
                self.frames[f.id] = "medication.present:support-list|"
            label = self.pick(("Supportiv: ", "Begleitend: ", "Prämedikation und Supportivtherapie: "))
            return label + ", ".join(medline(f) for f in meds) + "."
        return " ".join(self.sentences(meds, group=False))

    def az_ez(self) -> tuple[str, ...]:
        """General condition at admission, consistent with the ECOG the letter writes."""
        return tuple(x for x in F.AZ_EZ if fits(x, self.have)) or F.AZ_EZ

    def admission(self) -> str:
        """How the patient came, by the stay kind (elective vs emergency, never both in one letter)."""
        kind = str(self.recipe.header.get("stay_kind") or "")
        if kind == "therapy" and "therapy" not in self.have:  # no drug of this stay in gold
            kind = ""
        return str(self.pick(F.ADMISSION.get(kind) or F.ADMISSION[""]))

    def epikrise_opener(self) -> str:
        """An optional first Epikrise sentence that presupposes nothing the stay lacks ("" = none)."""
        ok = [
            x.replace("{pat}", self.pat())
            for x, needs in F.EPIKRISE_OPENERS
            if all(n in self.have for n in needs)
        ]
        return str(self.pick(ok)) if ok and self.chance(0.5) else ""

    def history_heading(self, hist: Sequence[RecipeFact]) -> str:
        """A heading over a history list; "Onkologische Anamnese:" only over oncological items."""
        onco = all(
            f.kind in ("tumor", "radiotherapy")
            or str((f.gold or {}).get("icd10gm") or f.say.get("code") or "")[:1] in ("C", "D")
            for f in hist
        )
        return str(
            self.pick(
                ("Vorgeschichte:", "Bekannte Vorerkrankungen:", "Onkologische Anamnese:")[: 3 if onco else 2]
            )
        )

    def admission_meds(self, meds: Sequence[RecipeFact]) -> list[RecipeFact]:
        """Drugs a heading "Hausmedikation / Medikation bei Aufnahme" may stand over: taken at admission."""
        return [
            f
            for f in meds
            if f.assertion == "present"
            and _ctx(f) == "admission"
            and not any(f.say.get(k) for k in ("regimen", "cycle", "day", "intent"))
        ]

    def allergies(self, meds: Sequence[RecipeFact]) -> list[RecipeFact]:
        return [f for f in meds if _ctx(f) == "allergy"]

    def allergy_line(self, meds: Sequence[RecipeFact]) -> str:
        """Intolerances on their own "Allergien/Unverträglichkeiten:" line (no second label inside)."""
        return "Allergien/Unverträglichkeiten: " + " ".join(
            self.phrase(f, avoid=ALLERGY_LABEL) for f in self.allergies(meds)
        )

    def vitals(self, vitals: Sequence[RecipeFact]) -> str:
        """Vital signs grouped by date, the date written once before its group."""
        present = [f for f in vitals if f.assertion == "present"]
        by_date: dict[str, list[RecipeFact]] = {}
        for f in present:
            self.frames[f.id] = "vital.present:list|"
            by_date.setdefault(str(f.say.get("date") or ""), []).append(f)
        sep = self.pick((", ", "; ", ", "))
        groups = [
            (self.pick((f"am {d}: ", f"({d}) ", f"{d}: ")) if d else "")
            + sep.join(self.labtext(f) for f in fs)
            for d, fs in by_date.items()
        ]
        rest = self.sentences([f for f in vitals if f.assertion != "present"], group=False)
        return " ".join([period(g) for g in groups] + rest)

    def exams(self, exams: Sequence[RecipeFact], findings: Sequence[RecipeFact]) -> list[dict[str, str]]:
        """Examinations each with a "Beurteilung" holding the findings it can have shown (a site or
        tumour finding under an imaging or endoscopy); other findings stand without a sub-heading."""
        linked = [
            f for f in findings if f.kind in ("diagnosis", "tumor") and LINKABLE.search(_name(f.say).lower())
        ]
        diagnostic = [
            e
            for e in exams
            if e.assertion == "present"
            and F.ops_chapter(str(e.say.get("code") or (e.gold or {}).get("ops") or "")) == "diagnostic"
        ]
        if not diagnostic:
            linked = []
        unlinked = [f for f in findings if f not in linked]

        def can_show(e: RecipeFact, f: RecipeFact) -> bool:
            scope = next((b for a, b in EXAM_SCOPE if a.search(_name(e.say))), None)
            return scope is None or bool(scope.search(_name(f.say)))

        out: list[dict[str, str]] = []
        n = len(diagnostic)
        i = 0
        for e in exams:
            share: list[RecipeFact] = []
            if e in diagnostic:
                fit = [f for f in linked if can_show(e, f)]
                share = fit[: max(1, len(fit) // max(1, n - i))] if fit else []
                linked = [f for f in linked if f not in share]
                i += 1
            if share:
                d = str(e.say.get("date") or "")
                head = self.named(e) + (self.pick((f" vom {d}", f" ({d})", f" am {d}")) if d else "") + ":"
                self.frames[e.id] = "procedure.present:exam|"
            else:
                head = self.phrase(e)
            out.append(
                {
                    "head": head,
                    "label": self.pick(("Beurteilung: ", "Befund: ", "Ergebnis: ", "BEURTEILUNG: ")),
                    "body": " ".join(self.sentences(share)) if share else "",
                }
            )
        unlinked += linked  # findings no examination of this letter can have shown
        if unlinked:
            out.append({"head": "", "label": "", "body": " ".join(self.sentences(unlinked))})
        return out

    def filler(self, key: str | None = None, n: int = 1) -> list[str]:
        """n fact-free sentences from the section's pool, from a random start with a random stride."""
        pool = tuple(x for x in F.FILLER.get(key or self.key, ()) if fits(x, self.have))
        if not pool:
            return []
        start, step = self.rng.randrange(len(pool)), self.pick((1, 1, 3, 5, 7))
        if math.gcd(step, len(pool)) != 1:
            step = 1
        return [pool[(start + i * step) % len(pool)] for i in range(min(n, len(pool)))]


# ---------------------------------------------------------------------------- environment
@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,  # a template asking for a missing key is a bug, not a blank
        autoescape=False,  # plain text letters, not HTML
        auto_reload=False,  # templates ship with the package: no stat() per render
    )
    env.filters.update(coded=coded, medline=medline, capfirst=capfirst, period=period)
    return env


def templates_version() -> str:
    """Hash of every template and frame file: recorded per letter, part of what a letter depends on."""
    h = hashlib.blake2b(digest_size=6)
    for p in sorted(TEMPLATES.rglob("*.j2")):
        h.update(p.relative_to(TEMPLATES).as_posix().encode() + b"\0" + p.read_bytes())
    for name in ("frames.py", "noise.py", "render.py"):
        h.update(Path(__file__).with_name(name).read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def template_name(key: str) -> str:
    path = TEMPLATES / "sections" / f"{key}.j2"
    return f"sections/{key}.j2" if path.is_file() else "sections/generic.j2"


def section_context(
    recipe: Recipe, section: Mapping[str, Any], facts: list[RecipeFact] | None = None
) -> dict[str, Any]:
    """The template context of one section (`facts`: the section's facts when already grouped)."""
    key = section["key"]
    procedere = key == "procedere"
    return {
        "facts": recipe.section_facts(key) if facts is None else facts,
        "section": section,
        "style": recipe.style,
        "h": recipe.header,
        "w": SectionWriter(recipe, section),
        "letter_type": recipe.letter_type,
        "dates": procedere_dates(recipe) if procedere else [],
        "cycles": procedere
        and any(
            f.kind == "medication" and f.assertion == "present" and f.say.get("cycle") for f in recipe.facts
        ),
    }


@functools.lru_cache(maxsize=64)
def _template(key: str) -> jinja2.Template:
    return environment().get_template(template_name(key))


def _render_body(
    recipe: Recipe, section: Mapping[str, Any], facts: list[RecipeFact] | None = None
) -> tuple[str, SectionWriter]:
    ctx = section_context(recipe, section, facts)
    return _tidy(_template(str(section["key"])).render(ctx)), ctx["w"]


def render_section(recipe: Recipe, section: Mapping[str, Any]) -> str:
    """ONE section's body from its template (hybrid mode replaces only narrative sections)."""
    return _render_body(recipe, section)[0]


_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    """No trailing blanks, at most one empty line in a row."""
    return _BLANKS.sub("\n\n", _TRAILING.sub("\n", text.strip() + "\n")).strip()


# ---------------------------------------------------------------------------- the whole letter
@dataclass
class RenderedLetter:
    text: str
    sections: dict[str, str]
    #: strings written without gold on purpose (recipe.untagged + the renderer's own dates)
    untagged: list[str] = field(default_factory=list)
    #: fact strings the noise changed: (as in say, as written); a shifted table (heavy noise) is one
    #: pair (the block as meant, the block as written), listed first (the verifier undoes it first)
    noise: list[tuple[str, str]] = field(default_factory=list)
    #: fact id -> frame id (kind.assertion:frame|modality), for the data report
    frames: dict[str, str] = field(default_factory=dict)


def _iso(s: Any) -> date | None:
    try:
        return date.fromisoformat(str(s)[:10])
    except (TypeError, ValueError):
        return None


MONTHS = (
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
)


def _fmt(d: date, style: str) -> str:
    if style == "dmy_short":
        return f"{d.day}.{d.month}.{d.year}"
    if style == "dmy2":
        return f"{d.day:02d}.{d.month:02d}.{d.year % 100:02d}"
    if style == "long":
        months = MONTHS
        return f"{d.day}. {months[d.month - 1]} {d.year}"
    return f"{d.day:02d}.{d.month:02d}.{d.year}"


def procedere_dates(recipe: Recipe) -> list[str]:
    """Follow-up dates after discharge (untagged: no gold holds them), in the letter's date style."""
    follow = [str(recipe.header["follow_up"])] if recipe.header.get("follow_up") else []
    end = _iso(recipe.encounter.get("discharge")) if recipe.encounter else None
    if end is None:
        return follow
    rng = random.Random(_seed("dates", recipe.spec_id))
    style = str(recipe.style.get("date_style") or "dmy")
    own = [_fmt(end + timedelta(days=rng.choice(days)), style) for days in ((7, 10, 14, 21), (28, 42, 56))]
    return (follow + own)[:2]


def _heading(text: str, rng: random.Random, style: int) -> str:
    if style == 1:
        return text.upper() + ":"
    if style == 2:
        return text
    if style == 3:
        return text.upper()
    return text + ":"


def _opening(recipe: Recipe, rng: random.Random, untagged: list[str]) -> str:
    h = recipe.header
    female = h.get("sex") == "female"
    kind = {"Kurzarztbrief": "short", "Verlegungsbrief": "transfer"}.get(recipe.letter_type, "full")
    frame = rng.choice(F.OPENINGS[kind])
    dest = str(h.get("destination") or rng.choice(F.DESTINATIONS))
    reason = str(h.get("reason") or rng.choice(F.REASONS))
    if kind == "transfer":
        untagged += [dest, reason]
    vals = {
        "o": "unsere gemeinsame Patientin" if female else "unseren gemeinsamen Patienten",
        "g": "Ihrer Patientin" if female else "Ihres Patienten",
        "pat": "Patientin" if female else "Patienten",
        "rel": "die" if female else "der",
        "p": str(h.get("patient") or ""),
        "b": str(h.get("birth") or ""),
        "s": str(h.get("start") or ""),
        "e": str(h.get("end") or ""),
        "dest": dest,
        "reason": reason,
    }
    out = frame
    for k, v in vals.items():
        out = out.replace("{" + k + "}", v)
    return out


#: the sampler's noise levels (style.noise) as typos per 100 words
NOISE_LEVELS = {"none": 0.0, "light": 0.4, "heavy": 1.5}


def noise_level(style_noise: Any, override: float | None = None) -> float:
    """The noise level: the caller's override, else the recipe's style.noise (a level name or a
    number), else DEFAULT_NOISE. An unknown name is an error naming the known ones."""
    if override is not None:
        return float(override)
    if style_noise is None or style_noise == "":
        return DEFAULT_NOISE
    if isinstance(style_noise, str):
        if style_noise not in NOISE_LEVELS:
            raise ValueError(f"style.noise {style_noise!r} is not one of {sorted(NOISE_LEVELS)} or a number")
        return NOISE_LEVELS[style_noise]
    return float(style_noise)


def _words(text: str) -> int:
    return len(text.split())


def render(
    recipe: Recipe, bodies: Mapping[str, str] | None = None, *, noise: float | None = None
) -> RenderedLetter:
    """The letter with its untagged strings, noised fact strings and frame ids.

    `bodies` replaces template sections (LLM-written narrative in hybrid mode); `noise` overrides
    `style.noise` (0 = none)."""
    rng = random.Random(_seed("letter", recipe.spec_id))
    untagged = list(recipe.untagged)
    rendered: dict[str, str] = {}
    frames: dict[str, str] = {}
    writers: dict[str, SectionWriter] = {}
    by_section: dict[str, list[RecipeFact]] = {}
    for f in recipe.facts:
        by_section.setdefault(f.section, []).append(f)
    for s in recipe.sections:
        key = str(s["key"])
        if bodies and key in bodies:
            rendered[key] = bodies[key].strip()
            continue
        body, w = _render_body(recipe, s, by_section.get(key, []))
        rendered[key] = body
        frames.update(w.frames)
        writers[key] = w
    if "procedere" in writers:
        untagged += [d for d in procedere_dates(recipe) if d in rendered["procedere"]]

    # head, opening, closing
    h = recipe.header
    title = str(h.get("title") or rng.choice(TITLES.get(recipe.letter_type, ("Arztbrief",))))
    upper = recipe.style.get("heading_case") == "upper"
    if upper:
        title = title.upper()
    head = "\n".join(str(h.get(k)) for k in ("hospital", "clinic") if h.get(k))
    if h.get("phone") and rng.random() < 0.4:
        head += ("\n" if head else "") + rng.choice(("Tel. ", "Telefon ", "Tel.: ")) + str(h["phone"])
    if h.get("date"):
        head += ("\n" if head else "") + (rng.choice(("", "Datum: ", "den ")) + str(h["date"]))
    salutation = str(h.get("salutation") or "Sehr geehrte Kolleginnen und Kollegen,")
    opening = _opening(recipe, rng, untagged)
    if h.get("patient") and (h["patient"] not in opening or rng.random() < 0.3):
        forms = ("Patient{in}: {p}, geb. {b}", "Betr.: {p}, geb. {b}", "{p}, * {b}", "{p} (geb. {b})")
        line = rng.choice(forms) if h.get("birth") else rng.choice(("Patient{in}: {p}", "Betr.: {p}"))
        line = line.replace("{in}", "in" if h.get("sex") == "female" else "")
        line = line.replace("{p}", str(h["patient"])).replace("{b}", str(h.get("birth") or ""))
        head += ("\n\n" if head else "") + line
    doctors = [str(d) for d in h.get("doctors") or []]
    closing = rng.choice(F.CLOSINGS) + ("\n\n" + rng.choice(("   ", "\n")).join(doctors) if doctors else "")

    # section order, merges, headings
    order = [str(s["key"]) for s in recipe.sections]
    if "anamnese" in order and order[0] == "diagnosen" and rng.random() < 0.15:
        order.remove("anamnese")
        order.insert(0, "anamnese")
    if "befunde" in order and "verlauf" in order and rng.random() < 0.2:
        order.remove("befunde")
        order.insert(order.index("verlauf") + 1, "befunde")
    if "medikation" in order and rng.random() < 0.35:
        order.remove("medikation")
        order.insert(
            len(order) - (1 if order and order[-1] == "procedere" and rng.random() < 0.5 else 0), "medikation"
        )
    headings = {str(s["key"]): str(s.get("heading") or "") for s in recipe.sections}
    # given headings are written as the recipe has them (with or without a colon); others by style
    hstyle = rng.choice((0, 0, 0, 2)) if upper or any(headings.values()) else rng.choice((0, 0, 0, 1, 2, 3))
    blocks: list[tuple[list[str], str]] = []  # (keys, heading)
    i = 0
    while i < len(order):
        key = order[i]
        nxt = order[i + 1] if i + 1 < len(order) else None
        if (
            nxt
            and (key, nxt) in MERGES
            and rng.random() < 0.3
            and not (bodies and (key in bodies or nxt in bodies))
        ):
            merged = rng.choice(MERGES[(key, nxt)])
            blocks.append(([key, nxt], merged.upper() if upper else merged))
            i += 2
            continue
        own = headings[key] or rng.choice(HEADINGS.get(key, (key.title(),)))
        blocks.append(([key], own.upper() if upper else own))
        i += 1

    # length: fact-free narrative until the target (Kurzarztbrief: no narrative beyond its sections)
    target = int(recipe.style.get("target_words") or DEFAULT_WORDS.get(recipe.letter_type, 250))
    words = _words(head) + _words(opening) + _words(closing) + 8
    words += sum(_words(rendered[k]) + 2 for k in order)
    pools = (
        {
            k: [x for x in writers[k].filler(k, MAX_FILLER) if x not in rendered[k]]
            for k in NARRATIVE
            if k in writers
        }
        if words < target
        else {}
    )
    extra: dict[str, list[str]] = {k: [] for k in pools}
    while words < target and any(pools.values()):
        for k in list(pools):
            if words >= target:
                break
            if pools[k]:
                sentence = pools[k].pop()
                extra[k].append(sentence)
                words += _words(sentence)
    for k, more in extra.items():
        if more:
            body = rendered[k]
            before = rng.random() < 0.3 and k in ("anamnese", "verlauf")
            rendered[k] = (
                " ".join(more) + "\n" + body if before else body + ("\n" if body else "") + " ".join(more)
            ).strip()

    parts = [head, title, salutation, opening]
    for keys, heading in blocks:
        body = "\n".join(rendered[k] for k in keys if rendered[k])
        if not body:
            continue
        hd = _heading(heading, rng, hstyle)
        if hd.endswith(":") and "\n" not in body and len(body) < 160 and rng.random() < 0.5:
            parts.append(f"{hd} {body}")
        else:
            parts.append(f"{hd}\n{body}")
    parts.append(closing)
    text = environment().get_template("letter.j2").render(parts=[p for p in parts if p]).strip() + "\n"

    level = noise_level(recipe.style.get("noise"), noise)
    noised: list[tuple[str, str]] = []
    if level > 0:

        def protected() -> list[str]:
            out = untagged + [str(v) for v in h.values() if isinstance(v, str)] + doctors
            for f in recipe.facts:
                for v in f.say.values():
                    if isinstance(v, str):
                        out.append(v)
                    elif isinstance(v, list):
                        out += [str(x) for x in v]
            return out

        text, noised = add_noise(
            text, protected, recipe.facts, random.Random(_seed("noise", recipe.spec_id)), level
        )
        # last, on the noised text: its pair goes first, so the verifier undoes it first
        tables = [t for k in order if k in writers for t in writers[k].tables]
        text, shifted = shift_table(text, tables, random.Random(_seed("shift", recipe.spec_id)), level)
        noised = shifted + noised
    return RenderedLetter(text, rendered, sorted(set(untagged), key=untagged.index), noised, frames)


def render_letter(recipe: Recipe, bodies: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(letter text, section bodies); `bodies` replaces template sections (LLM-written narrative)."""
    out = render(recipe, bodies)
    return out.text, out.sections
