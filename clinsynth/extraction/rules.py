"""The `rules` extractor: a dictionary and pattern baseline over the terminology, the floor every LLM
extractor must beat.

Per letter: the text is indexed once (`clinsynth.letters.scan.LetterText`: codes, dates, numbers with
units, dosing schemes, TNM strings, clauses, sections), every clinical name of the terminology is
found by a token dictionary walk (`rules_index`), and each name becomes a fact with what stands beside
it — a written code, a dose, unit and scheme, a lab value, unit and flag, a tumour's TNM, grading,
stage, histology and markers — and the assertion its cues give (`clinsynth.letters.cues`: "kein
Hinweis auf", "V.a.", "Z.n." in scope within the clause, both directions). Letter-level fields
(stay dates, patient, letter type, risk factors, radiotherapy) come from `rules_letter`.

Every fact is validated against schema v2 on its own: a field that fails its pattern is dropped, a
fact whose required text fails is dropped, and each drop is recorded in `RulesExtractor.problems`
(per letter, no letter text): one odd letter never raises.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from clinsynth.extraction import rules_letter as L
from clinsynth.extraction import rules_values as V
from clinsynth.extraction.rules_index import Hit, name_index
from clinsynth.letters.cues import CueIndex
from clinsynth.letters.scan import LetterText, Token
from clinsynth.sampling.phrases import SECTION_HEADINGS
from clinsynth.schema import (
    ClinicalExtraction,
    Diagnosis,
    Encounter,
    Lab,
    Medication,
    Patient,
    Procedure,
    Radiotherapy,
    RiskFactor,
    Tumor,
    Vital,
)
from clinsynth.terminology import Catalog, load_catalog

log = logging.getLogger(__name__)

#: section headings: the sampler's plus the admission-medication and allergy headings real letters use
HEADINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    *SECTION_HEADINGS.items(),
    (
        "aufnahmemedikation",
        (
            "Hausmedikation",
            "Vormedikation",
            "Aufnahmemedikation",
            "Dauermedikation",
            "Bisherige Medikation",
            "Medikation bei Aufnahme",
        ),
    ),
    ("allergien", ("Allergien", "Allergien/Unverträglichkeiten", "Unverträglichkeiten", "Allergie")),
)
_BULLET = re.compile(
    r"[ \t]*(?:[-–•*·>][ \t]*|\d{1,2}[.)][ \t]*)*(?:(?:hd|nd|diagnosen?|haupt-?diagnose)\s*:\s*)?"
)
_ALLERGY = re.compile(r"allergi|unverträglich|intoleranz")
_ADMISSION = re.compile(
    r"hausmedikation|vormedikation|aufnahmemedikation|dauermedikation|bisherige\s+medikation"
)
_THERAPY_ATC = ("L01", "L02", "L04")
_HISTOLOGY_CUE = re.compile(r"(?:histolog\w*|histo|morphologie|icd-o(?:-3)?|befund|typ)\s*:?\s*$")
_TOPO_CUE = re.compile(r"(?:topogra\w*|icd-o(?:-3)?(?:-t)?|lokalisation)\s*:?\s*$")
_ICD_CUE = re.compile(r"icd(?:-10)?(?:-gm)?\s*:?\s*$")
_OPS_CUE = re.compile(r"ops\s*:?\s*$")
_SIDE = re.compile(r"[ \t]*,?[ \t]*(links|li\.|rechts|re\.|beidseits|bds\.)(?!\w)")
_SIDES = {"links": "L", "li.": "L", "rechts": "R", "re.": "R", "beidseits": "B", "bds.": "B"}
_UICC = re.compile(
    r"(?:UICC[- ]?(?:Stadium)?|Stadium)\s*:?\s*(0is|0a|0|IV[ABC]?|I{1,3}[ABC]?[1-3]?)(?![\w+])"
)
_STAGE = re.compile(
    r"(Ann[- ]Arbor|FIGO|R-ISS|ISS|Binet|Rai|Gleason|ISUP|Durie[- ]Salmon|ELN)"
    r"(?:[- ](?:Stadium|Score|Grad(?:gruppe)?|Risiko))?\s*:?\s*"
    r"(\d\s?\+\s?\d\s?=\s?\d{1,2}|\d\s?\+\s?\d|[0-9IVX]{1,4}[A-E]?[1-3]?(?:\s?[ABES])?(?![\w])|"
    r"günstig|intermediär|ungünstig)"
)
_STAGE_SYSTEMS = {"ann arbor": "Ann Arbor", "ann-arbor": "Ann Arbor", "durie salmon": "Durie-Salmon"}
_GRADING = re.compile(r"(?<![\w-])G([1-4X])(?![\w])|(?<!\w)(high|low)[ -]grade(?!\w)", re.IGNORECASE)
_ECOG = re.compile(r"ECOG(?:[- ]?(?:PS|Status|Score))?\s*:?\s*([0-5])(?!\d)")
_KARNOFSKY = re.compile(r"(?:Karnofsky|KPS|KI)(?:-Index)?\s*:?\s*(\d{2,3})\s*%?")
_STATUS = (
    (re.compile(r"vollremission|komplette[rn]?\s+remission|complete\s+remission"), "complete_remission"),
    (re.compile(r"partielle[rn]?\s+remission|teilremission|partial\s+remission"), "partial_remission"),
    (re.compile(r"gemischte[sn]?\s+ansprechen|mixed\s+response"), "mixed"),
    (re.compile(r"stable\s+disease|stabile[rn]?\s+erkrankung|befundkonstanz|stabiler\s+befund"), "stable"),
    (re.compile(r"progress|progredien"), "progression"),
    (re.compile(r"rezidiv"), "recurrence"),
    (re.compile(r"(?:aktuell|status|jetzt)\s*:\s*sd(?!\w)"), "stable"),
    (re.compile(r"(?:aktuell|status|jetzt)\s*:\s*pd(?!\w)"), "progression"),
    (re.compile(r"(?:aktuell|status|jetzt)\s*:\s*pr(?!\w)"), "partial_remission"),
    (re.compile(r"(?:aktuell|status|jetzt)\s*:\s*cr(?!\w)"), "complete_remission"),
    (
        re.compile(
            r"neu\s+diagnostiziert|erstdiagnostiziert|neu\s+aufgetreten|(?:status|jetzt)\s*:\s*erstdiagnose"
        ),
        "new",
    ),
)
_MARKER = re.compile(
    r"(?<![\w-])(ER|PR|PgR|HER2(?:/neu)?|Ki-?67|EGFR|KRAS|NRAS|BRAF|ALK|ROS1|PD-L1|MSI|MMR|BRCA[12]|FLT3|"
    r"NPM1|IDH[12]|MGMT|TP53|CD20|CD30)(?![\w-])"
)
_MARKER_RESULT = re.compile(
    r"[ \t:]*(?:status[ \t]*:?[ \t]*)?(nicht[ \t]+mutiert|nicht[ \t]+amplifiziert|wildtyp|positiv|negativ|"
    r"mutiert|amplifiziert|grenzwertig|(\d+(?:,\d+)?)[ \t]*%|[0-3]\+|MSI-H|MSS|pMMR|dMMR)"
)
_MARKER_RESULTS = {
    "nicht mutiert": "wildtype",
    "wildtyp": "wildtype",
    "nicht amplifiziert": "negative",
    "positiv": "positive",
    "negativ": "negative",
    "mutiert": "mutated",
    "amplifiziert": "amplified",
    "grenzwertig": "equivocal",
    "msi-h": "positive",
    "mss": "negative",
    "dmmr": "positive",
    "pmmr": "negative",
}
_LAB_DATE_AFTER = re.compile(r"[ \t]*\)?[ \t]*:")
TUMOUR_BLOCK_MAX = 1200


def _primary(code: str | None) -> bool:
    """A malignant primary (C00-C97 without the metastasis codes C77-C79): a tumour record."""
    return bool(code) and code[0] == "C" and not ("C77" <= code[:3] <= "C79")  # type: ignore[index]


@functools.lru_cache(maxsize=4)
def _regimen_pattern(cat: Catalog) -> re.Pattern[str] | None:
    """Regimen names as written ("FOLFOX", "R-CHOP", "Carboplatin/Pemetrexed/Pembrolizumab"), matched
    case-sensitively; a regimen named like its only drug ("Letrozol", "Nivolumab mono") is left to the
    drug names."""
    names: set[str] = set()
    for r in cat.regimens.values():
        for v in (r.name, re.sub(r"\s*\(.*?\)", "", r.name), *re.findall(r"\((.*?)\)", r.name)):
            v = v.strip()
            bare = re.sub(r"^m(?=[A-Z])", "", v)
            names |= {v, bare, re.sub(r"-?\d+$", "", bare)}
    keep = {
        v
        for v in names
        if len(v) >= 2
        and not v.endswith("+")
        and ("/" in v or "+" in v or (v.upper() == v and any(c.isalpha() for c in v)))
        and " mono" not in v
    }
    if not keep:
        return None
    alt = "|".join(re.escape(v) for v in sorted(keep, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alt})(?![\w])")


class RulesExtractor:
    """Dictionary/pattern extraction of schema-v2 facts from one letter's text."""

    name = "rules"

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.index = name_index(catalog)
        #: what the last letter's validation dropped or which reader failed (no letter text)
        self.problems: list[str] = []

    def extract(self, text: str) -> ClinicalExtraction:
        """The letter's facts; never raises on a letter (see `problems` for what was dropped)."""
        self.problems = []
        letter = _Letter(self, text)
        return letter.result()


class _Letter:
    """One letter indexed for the rules: names, cues, written codes, blocks."""

    def __init__(self, ex: RulesExtractor, text: str) -> None:
        text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
        self.ex = ex
        self.cat = ex.catalog
        self.problems = ex.problems
        self.lt = lt = LetterText(text, HEADINGS)
        self.regimens: list[tuple[int, int]] = []
        pattern = _regimen_pattern(self.cat)
        if pattern is not None:
            self.regimens = [(m.start(), m.end()) for m in pattern.finditer(lt.raw)]
        hits = ex.index.find(lt.raw, lt.n)
        # a drug named inside a regimen's name ("Carboplatin/Pemetrexed/Pembrolizumab") is the regimen's
        hits = [h for h in hits if not (self._only(h, "atc") and self._in_regimen(h.start, h.end))]
        self.hits = hits
        self.starts = [h.start for h in hits]
        self.cues = CueIndex(lt, [(h.start, h.end) for h in hits])
        self._classify_codes()

    @staticmethod
    def _only(h: Hit, system: str) -> bool:
        return all(s == system for s, _ in h.entry.codes)

    def _in_regimen(self, s: int, e: int) -> bool:
        return any(a <= s and e <= b for a, b in self.regimens)

    # -- shared helpers

    def assertion(self, s: int, e: int) -> str:
        """The assertion the strong cues in scope give; a negation wins over suspicion ("kein V.a.")."""
        cues = self.cues.in_scope(s, e)
        strong = [c for c in cues if c.strong]
        if not strong:
            # a hedge ("am ehesten", "vereinbar mit") or a trailing "negativ" still says it; a weak
            # history word ("bekannt", "(2019)") does not make a current fact historical
            weak = next((c for c in cues if c.assertion in ("suspected", "negated") and c.text != "?"), None)
            return weak.assertion if weak is not None else "present"
        if any(c.assertion == "negated" for c in strong):
            return "negated"
        return strong[0].assertion

    def region_end(self, k: int) -> int:
        """Where the text hit k governs ends: the next name or the clause end."""
        h = self.hits[k]
        _, s_end = self.lt.sentence(h.start, h.end)
        nxt = self.hits[k + 1].start if k + 1 < len(self.hits) else len(self.lt.n)
        return max(h.end, min(nxt, s_end))

    def lead(self, k: int) -> int:
        """Where the text before hit k that belongs to it starts: its line, after the previous name."""
        h = self.hits[k]
        ls, _ = self.lt.line(h.start)
        prev = self.hits[k - 1].end if k > 0 else 0
        return max(ls, prev)

    def line_leader(self, pos: int) -> bool:
        """Does pos start a list line (after bullets, enumeration, "HD:")?"""
        ls, le = self.lt.line(pos)
        m = _BULLET.match(self.lt.n, ls, le)
        return (m.end() if m else ls) == pos

    # -- written codes

    def _classify_codes(self) -> None:
        n = self.lt.n
        self.icd: list[Token] = []
        self.ops: list[Token] = []
        self.morph: list[Token] = []
        self.topo: list[Token] = []
        cat = self.cat
        for t in self.lt.codes:
            before = n[max(0, t.start - 24) : t.start]
            if t.value == "icd10gm":
                if _TOPO_CUE.search(before):
                    if cat.icdo3_topography.lookup(t.text) is not None:
                        self.topo.append(t)
                elif cat.icd10gm.lookup(t.text) is not None or "." in t.text or _ICD_CUE.search(before):
                    self.icd.append(t)
            elif t.value == "ops":
                if cat.ops.lookup(t.text) is not None or _OPS_CUE.search(before):
                    self.ops.append(t)
            elif t.value == "morphology" and (
                cat.icdo3_morphology.lookup(t.text) is not None or "icd-o" in before
            ):
                self.morph.append(t)

    def _code_owner(self, t: Token, system: str, taken: set[int]) -> int | None:
        """The name a written code belongs to: the nearest such name before it on its line ("Adipositas
        (E66.0)", "Herzinsuffizienz   I50.9"), or right after it ("C43.6 Melanom am Arm")."""
        ls, le = self.lt.line(t.start)
        i = bisect.bisect_left(self.starts, t.start)
        for k in range(i - 1, -1, -1):
            h = self.hits[k]
            if h.start < ls:
                break
            if h.entry.has(system):
                between = self.lt.n[h.end : t.start]
                if k not in taken and not any(
                    c.start >= h.end and c.end <= t.start for c in self.icd + self.ops
                ):
                    return k if len(between) <= 120 else None
                break
        if i < len(self.hits):
            h = self.hits[i]
            if (
                h.start < le
                and h.entry.has(system)
                and i not in taken
                and not self.lt.n[t.end : h.start].strip(" \t-–:")
            ):
                return i
        return None

    def _label(self, t: Token) -> tuple[str, int]:
        """The text a written code without a known name stands for (its list item, without the code),
        and where that text starts."""
        lt = self.lt
        ls, le = lt.line(t.start)
        m = _BULLET.match(lt.n, ls, le)
        start = m.end() if m else ls
        before = re.split(r"[(\[]", lt.raw[start : t.start])[0]
        text = before.strip(" \t-–:,;[]()").split(",")[0].strip()
        if text:
            return text[:120], start + before.index(text)
        after = re.split(r"[,(\[;]", lt.raw[t.end : le])[0].strip(" \t-–:.")
        if after:
            return after[:120], t.start
        c = self.cat.icd10gm.lookup(t.text) or self.cat.ops.lookup(t.text)
        return (c.display if c is not None else t.text), t.start

    # -- facts

    def result(self) -> ClinicalExtraction:
        parts: dict[str, Any] = {}
        readers: list[tuple[str, Callable[[], Any]]] = [
            ("encounter", lambda: L.encounter(self.lt)),
            ("patient", lambda: L.patient(self.lt)),
            ("diagnoses_tumors", self._diagnoses_and_tumours),
            ("procedures", self._procedures),
            ("radiotherapy", self._radiotherapy),
            ("medications", self._medications),
            ("measurements", self._measurements),
            ("risk_factors", self._risk_factors),
        ]
        for what, read in readers:
            try:
                got = read()
            except Exception as e:  # a reader bug must not lose the other facts of the letter
                self.problems.append(f"{what}: reader failed ({type(e).__name__}: {e})")
                log.warning("rules extractor: %s reader failed: %s", what, type(e).__name__)
                continue
            if what == "encounter":
                parts["encounter"] = self._valid(Encounter, got, "encounter") if got else None
            elif what == "patient":
                parts["patient"] = self._valid(Patient, got, "patient") if got else None
            else:
                parts.update(got)
        return ClinicalExtraction(**{k: v for k, v in parts.items() if v is not None})

    def _valid(self, model: type[BaseModel], d: dict[str, Any], what: str) -> Any:
        """The fact as the schema's model; fields that fail are dropped (and recorded), then the fact."""
        d = dict(d)
        for _ in range(6):
            try:
                return model.model_validate(d)
            except ValidationError as e:
                bad = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
                required = {n for n, f in model.model_fields.items() if f.is_required()}
                if not bad or bad & required:
                    self.problems.append(f"{what}: dropped ({'; '.join(sorted(bad)) or 'invalid'})")
                    return None
                for k in bad:
                    self.problems.append(f"{what}: field {k} dropped")
                    d.pop(k, None)
        return None

    def _facts(self, model: type[BaseModel], items: list[dict[str, Any]], what: str) -> list[Any]:
        out = []
        for d in items:
            f = self._valid(model, {k: v for k, v in d.items() if v is not None}, what)
            if f is not None:
                out.append(f)
        return out

    # diagnoses and tumours

    def _diagnoses_and_tumours(self) -> dict[str, list[Any]]:
        lt, n = self.lt, self.lt.n
        taken: dict[int, str] = {}
        loose: list[Token] = []
        for t in self.icd:
            k = self._code_owner(t, "icd10gm", set(taken))
            if k is None:
                loose.append(t)
            else:
                taken[k] = t.text
        histology_hits = self._histology_cache
        diagnoses: list[dict[str, Any]] = []
        tumours: list[tuple[int, int, dict[str, Any]]] = []
        seen_list_entry = False
        mentions: list[tuple[int, int, str, str | None]] = []  # (start, end, text, code)
        for k, h in enumerate(self.hits):
            if not h.entry.has("icd10gm") or k in histology_hits:
                continue
            mentions.append((h.start, h.end, h.text, taken.get(k) or h.entry.code("icd10gm")))
        for t in loose:
            label, at = self._label(t)
            mentions.append((at, t.end, label, t.text))
        mentions.sort()
        for s, e, text, code in mentions:
            assertion = self.assertion(s, e)
            d: dict[str, Any] = {"text": text, "icd10gm": code, "assertion": assertion}
            sec = lt.section_at(s)[0]
            _, region = lt.sentence(s, e)
            d["date"] = V.diagnosis_date(lt, e, min(region, e + 60))
            if sec == "diagnosen" and assertion != "negated" and self.line_leader(s):
                ls, _ = lt.line(s)
                head = n[ls:s]
                if "hd" in head or "haupt" in head or not seen_list_entry:
                    d["role"] = "main"
                else:
                    d["role"] = "secondary"
                if re.search(r"(?<!\w)nd(?!\w)|neben", head):
                    d["role"] = "secondary"
                seen_list_entry = True
            diagnoses.append(d)
            if _primary(code):
                tumours.append((s, e, {"entity": text, "icd10gm": code, "assertion": assertion}))
        self._tumour_details(tumours)
        diagnoses = _dedupe(diagnoses, ("icd10gm", "text", "assertion"))
        merged = self._merge_tumours([t for _, _, t in tumours])
        return {
            "diagnoses": self._facts(Diagnosis, diagnoses, "diagnosis"),
            "tumors": self._facts(Tumor, merged, "tumor"),
        }

    def _histology_hits(self) -> set[int]:
        """Names that are a histology here, not a diagnosis: a morphology name after a histology cue
        ("Histologie: Adenokarzinom") or after the tumour's own name in its clause."""
        out: set[int] = set()
        for k, h in enumerate(self.hits):
            if not h.entry.has("morphology"):
                continue
            if not h.entry.has("icd10gm"):
                out.add(k)
                continue
            before = self.lt.n[max(0, h.start - 30) : h.start]
            s, _ = self.lt.sentence(h.start, h.end)
            earlier = [
                j
                for j in range(k - 1, -1, -1)
                if self.hits[j].start >= s and _primary(self.hits[j].entry.code("icd10gm"))
            ]
            if _HISTOLOGY_CUE.search(before) or earlier:
                out.add(k)
        return out

    def _block_end(self, s: int, e: int, tumour_starts: list[int]) -> int:
        lt = self.lt
        sec_e = lt.section_at(s)[2]
        i = bisect.bisect_right(tumour_starts, s)
        nxt = tumour_starts[i] if i < len(tumour_starts) else len(lt.n)
        stop = min(nxt, lt.paragraph(s)[1], sec_e, s + TUMOUR_BLOCK_MAX)
        # a later list line that starts with another diagnosis ends the block
        _, le = lt.line(e)
        pos = le + 1
        while pos < stop:
            ls, le2 = lt.line(pos)
            m = _BULLET.match(lt.n, ls, le2)
            first = m.end() if m else ls
            j = bisect.bisect_left(self.starts, first)
            h = self.hits[j] if j < len(self.hits) else None
            if (
                h is not None
                and h.start == first
                and h.entry.has("icd10gm")
                and not h.entry.has("morphology")
            ):
                return ls
            if any(t.start == first for t in self.icd):
                return ls
            pos = le2 + 1
        return stop

    def _tumour_details(self, tumours: list[tuple[int, int, dict[str, Any]]]) -> None:
        lt, raw, n = self.lt, self.lt.raw, self.lt.n
        starts = sorted(s for s, _, _ in tumours)
        used_tnm: set[int] = set()
        for s, e, t in tumours:
            b = self._block_end(s, e, starts)
            side = _SIDE.match(n, e)
            if side is not None:
                t["laterality"] = _SIDES[side.group(1)]
            for tok in lt.tokens("tnm", s, b):
                if tok.start in used_tnm:
                    continue
                axes = [a for a in tok.value if a.axis in ("t", "n", "m")]
                if not axes:
                    continue
                tnm, grading = V.tnm(tok.value)
                t["tnm"] = tnm
                if grading:
                    t["grading"] = grading
                used_tnm.add(tok.start)
                break
            if "grading" not in t and (g := _GRADING.search(raw, e, b)):
                t["grading"] = "G" + g.group(1).upper() if g.group(1) else g.group(2)[0].upper()
            if (m := _UICC.search(raw, e, b)) and not re.search(
                r"(?i)figo|ann|arbor|binet|iss\W*$", raw[max(0, m.start() - 12) : m.start()]
            ):
                t["uicc_stage"] = m.group(1)
            stages = []
            for m in _STAGE.finditer(raw, e, b):
                system = _STAGE_SYSTEMS.get(m.group(1).lower().replace("-", " "), m.group(1))
                if system in ("Ann-Arbor",):
                    system = "Ann Arbor"
                stages.append({"system": system, "value": re.sub(r"\s+", "", m.group(2))[:16]})
            if stages:
                t["stages"] = _dedupe(stages, ("system", "value"))
            for tok in self.morph:
                if e <= tok.start < b or s <= tok.start < e:
                    t["morphology"] = tok.text
                    break
            for k in range(bisect.bisect_left(self.starts, e), len(self.hits)):
                h = self.hits[k]
                if h.start >= b:
                    break
                if h.entry.has("morphology") and (not h.entry.has("icd10gm") or k in self._histology_cache):
                    t["histology"] = h.text
                    t.setdefault("morphology", h.entry.code("morphology"))
                    break
            for tok in self.topo:
                if s <= tok.start < b:
                    t["topography"] = tok.text
                    break
            if (m := _ECOG.search(raw, e, b)) is not None:
                t["ecog"] = int(m.group(1))
            if (m := _KARNOFSKY.search(raw, e, b)) is not None:
                t["karnofsky"] = int(m.group(1))
            for pat, status in _STATUS:
                if pat.search(n, e, b):
                    t["status"] = status
                    break
            ed = re.search(
                r"(?<!\w)(ed|erstdiagnose|aktuell|jetzt|stand|staging)\s*:?\s*(?:am\s+|vom\s+)?", n[e:b]
            )
            if ed is not None:
                at = e + ed.end()
                for tok in lt.tokens("dates", at, at + 3):
                    t["date"] = V.iso(tok.value)
                    if "tnm" in t and ed.group(1) in ("ed", "erstdiagnose"):
                        t["staging"] = "initial"
                    break
            t["markers"] = self._markers(e, b)

    @functools.cached_property
    def _histology_cache(self) -> set[int]:
        return self._histology_hits()

    def _markers(self, a: int, b: int) -> list[dict[str, Any]]:
        raw = self.lt.raw
        out: list[dict[str, Any]] = []
        for m in _MARKER.finditer(raw, a, b):
            d: dict[str, Any] = {"name": m.group(1)}
            at = m.end()
            for _ in range(2):  # "ER positiv 90 %", "ER 90 % positiv", "MSI positiv MSI-H"
                r = _MARKER_RESULT.match(raw, at, min(b, at + 30))
                if r is None:
                    break
                word = " ".join(r.group(1).lower().split())
                if r.group(2):
                    d.setdefault("value", float(r.group(2).replace(",", ".")))
                    d.setdefault("unit", "%")
                elif word in _MARKER_RESULTS and "result" not in d:
                    d["result"] = _MARKER_RESULTS[word]
                    if word in ("msi-h", "mss", "dmmr", "pmmr"):
                        d["text"] = r.group(1)
                elif word in ("msi-h", "mss", "dmmr", "pmmr"):
                    d.setdefault("text", r.group(1))
                else:
                    d.setdefault("text", r.group(1))
                at = r.end()
            if len(d) > 1:
                out.append(d)
        for k in range(bisect.bisect_left(self.starts, a), len(self.hits)):
            h = self.hits[k]
            if h.start >= b:
                break
            code = h.entry.code("loinc")
            lab = self.cat.labs.get(code or "")
            if lab is None or not lab.marker or self.lt.section_at(h.start)[0] == "befunde":
                continue
            value, unit, _flag, text, _ = V.measurement(self.lt, h.end, self.region_end(k), lab.unit)
            if value is None and text is None:
                continue
            out.append({"name": h.text, "loinc": code, "value": value, "unit": unit, "text": text})
            self._marker_hits.add(k)
        return [{k: v for k, v in d.items() if v is not None} for d in out]

    @functools.cached_property
    def _marker_hits(self) -> set[int]:
        return set()

    def _merge_tumours(self, tumours: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Mentions of one tumour (same ICD category and assertion) become one record: its first name,
        its most specific code, and every detail any mention states."""
        out: list[dict[str, Any]] = []
        by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for t in tumours:
            key = ((t.get("icd10gm") or "")[:3], t["assertion"])
            have = by_key.get(key)
            if have is None:
                by_key[key] = t
                out.append(t)
                continue
            if len(t.get("icd10gm") or "") > len(have.get("icd10gm") or ""):
                have["icd10gm"] = t["icd10gm"]
            for k, v in t.items():
                if v not in (None, [], {}) and have.get(k) in (None, [], {}):
                    have[k] = v
        return out

    # procedures

    def _procedures(self) -> dict[str, list[Any]]:
        lt = self.lt
        taken: dict[int, str] = {}
        items: list[tuple[int, int, str, str | None, int]] = []
        for t in self.ops:
            k = self._code_owner(t, "ops", set(taken))
            if k is None:
                label, at = self._label(t)
                items.append((at, t.end, label, t.text, -1))
            else:
                taken[k] = t.text
        for k, h in enumerate(self.hits):
            if h.entry.has("ops"):
                items.append((h.start, h.end, h.text, taken.get(k) or h.entry.code("ops"), k))
        out = []
        for s, e, text, code, k in sorted(items):
            d: dict[str, Any] = {"text": text, "ops": code, "assertion": self.assertion(s, e)}
            lead = max(self.lead(k) if k >= 0 else lt.line(s)[0], lt.sentence(s, e)[0])
            dates = [t for t in lt.tokens("dates", lead, s) if len(lt.n[t.end : s].split()) <= 3]
            before = V.iso(dates[-1].value) if dates else None
            end = self.region_end(k) if k >= 0 else lt.sentence(s, e)[1]
            d["date"] = before or V.first_date(lt, e, end)
            out.append(d)
        return {
            "procedures": self._facts(
                Procedure, _dedupe(out, ("ops", "text", "date", "assertion")), "procedure"
            )
        }

    # radiotherapy

    def _radiotherapy(self) -> dict[str, list[Any]]:
        out = []
        for s, e, fact in L.radiotherapy(self.lt):
            fact.setdefault("assertion", self.assertion(s, e))
            out.append(fact)
        return {"radiotherapy": self._facts(Radiotherapy, out, "radiotherapy")}

    # medications

    def _medication_context(self, h: Hit, code: str) -> tuple[str | None, int, int]:
        lt, n = self.lt, self.lt.n
        sec = lt.section_at(h.start)[0]
        s, e = lt.sentence(h.start, h.end)
        ls, _ = lt.line(h.start)
        ps, _ = lt.paragraph(h.start)
        if sec == "allergien" or _ALLERGY.search(n, min(s, ls), h.start):
            return "allergy", s, e
        if sec == "aufnahmemedikation" or _ADMISSION.search(n, ps, h.start):
            return "admission", s, e
        if code.startswith(_THERAPY_ATC) or any(s <= a < e for a, _ in self.regimens) or V.cycle(n, s, e):
            return "therapy", s, e
        if sec in ("medikation", "procedere"):
            return "discharge", s, e
        if sec == "anamnese":
            return "admission", s, e
        if sec in ("verlauf", "epikrise", "befunde", "aufnahmebefund"):
            return "inpatient", s, e
        return None, s, e

    def _medications(self) -> dict[str, list[Any]]:
        lt, n, raw = self.lt, self.lt.n, self.lt.raw
        out = []
        for k, h in enumerate(self.hits):
            code = h.entry.code("atc")
            if code is None:
                continue
            end = self.region_end(k)
            if h.entry.has("loinc") and self._reads_as_lab(h, end):
                continue
            context, s, e = self._medication_context(h, code)
            d: dict[str, Any] = {"name": h.text, "atc": code, "assertion": self.assertion(h.start, h.end)}
            d["context"] = context
            got = V.dose(lt, h.end, end)
            if got is not None:
                d["dose"], d["unit"] = got
            scheds = lt.tokens("schedules", h.end, end)
            if not scheds:  # a table row that starts with the scheme ("1-0-0   Amlodipin 5 mg")
                scheds = [
                    t for t in lt.tokens("schedules", self.lead(k), h.start) if self.line_leader(t.start)
                ]
            if scheds:
                d["schedule"] = V.schedule(scheds[0])
            d["route"] = V.route(n, h.end, end)
            if V.as_needed(n, h.end, end):
                d["as_needed"] = True
            d["frequency"] = V.frequency(raw, n, h.end, end)
            if context == "therapy":
                reg = next(((a, b) for a, b in self.regimens if s <= a < e), None)
                if reg is not None:
                    d["regimen"] = raw[reg[0] : reg[1]]
                d["cycle"] = V.cycle(n, s, e)
                d["day"] = V.day(n, s, e)
                d["intent"] = V.intent(n, max(lt.line(s)[0], s - 40), e)
            out.append(d)
        meds = _dedupe(out, ("name", "context", "dose", "assertion"))
        return {"medications": self._facts(Medication, meds, "medication")}

    def _reads_as_lab(self, h: Hit, end: int) -> bool:
        """A name that is both a drug and an analyte (Kalium, Calcium) is a lab when a value without a
        drug unit follows."""
        if V.dose(self.lt, h.end, end) is not None:
            return False
        return bool(self.lt.tokens("numbers", h.end, min(end, h.end + 24)))

    # labs and vitals

    def _lab_date(self, pos: int) -> str | None:
        """The date of a lab block's header ("Labor vom 21.1.23:", "Blutwerte (19.07.2022):")."""
        ps, _ = self.lt.paragraph(pos)
        for t in reversed(self.lt.tokens("dates", ps, pos)):
            if _LAB_DATE_AFTER.match(self.lt.n, t.end):
                return V.iso(t.value)
        return None

    def _measurements(self) -> dict[str, list[Any]]:
        lt, n = self.lt, self.lt.n
        labs: list[dict[str, Any]] = []
        vitals: list[dict[str, Any]] = []
        markers = self._marker_hits  # filled by the tumour reader, which runs first
        for k, h in enumerate(self.hits):
            if k in markers:
                continue
            end = self.region_end(k)
            if h.entry.has("bp"):
                bp = V.blood_pressure(n, h.end, end)
                if bp is not None:
                    a = self.assertion(h.start, h.end)
                    for (loinc, label), mm in zip(
                        (("8480-6", "systolisch"), ("8462-4", "diastolisch")), bp, strict=True
                    ):
                        vitals.append(
                            {
                                "name": f"{h.text} {label}",
                                "loinc": loinc,
                                "value": mm,
                                "unit": "mm[Hg]",
                                "assertion": a,
                            }
                        )
                continue
            code = h.entry.code("loinc")
            if code is None:
                continue
            concept = self.cat.loinc.lookup(code)
            if concept is None:
                continue
            if h.entry.has("atc") and not self._reads_as_lab(h, end):
                continue
            value, unit, flag, text, read = V.measurement(
                lt, h.end, end, str(concept.extra.get("unit") or "")
            )
            if flag is None and value is not None:
                flag = V.flag_words(n, max(self.lead(k), h.start - 30), h.start, read, end)
            if value is None and text is None:
                continue
            d: dict[str, Any] = {
                "name": h.text,
                "loinc": code,
                "value": value,
                "value_text": text,
                "unit": unit,
                "assertion": self.assertion(h.start, h.end),
            }
            if concept.extra.get("vital"):
                if value is None:
                    continue
                vitals.append(d)
            else:
                d["flag"] = flag
                d["date"] = self._lab_date(h.start)
                labs.append(d)
        return {
            "labs": self._facts(Lab, _dedupe(labs, ("loinc", "value", "value_text", "date")), "lab"),
            "vitals": self._facts(Vital, _dedupe(vitals, ("loinc", "value")), "vital"),
        }

    # risk factors

    def _risk_factors(self) -> dict[str, list[Any]]:
        out = []
        for s, e, fact in L.risk_factors(self.lt):
            fact.setdefault("assertion", self.assertion(s, e))
            out.append(fact)
        return {
            "risk_factors": self._facts(
                RiskFactor, _dedupe(out, ("kind", "text", "assertion")), "risk_factor"
            )
        }


def _dedupe(items: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in items:
        key = tuple(str(d.get(k)).lower() if isinstance(d.get(k), str) else d.get(k) for k in keys)
        if key in seen:
            continue
        seen.add(key)
        out.append(d)
    return out
