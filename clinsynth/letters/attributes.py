"""Does the text beside a fact's own name say what its gold says? (value, unit, date, dose, scheme ...)

Each check gets the fact's gold and one occurrence of its name with its region (the text after the
name up to the next fact's name or the clause end; for tumours the tumour's block) and returns the
problems, as reason strings without the fact's label. A value that sits beside a neighbour's name
does not count: that is how a swapped lab value or dose is caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clinsynth.letters.scan import Axis, LetterText, Token, name_pattern, norm, same_number, unit_key

#: UCUM (gold) -> how letters print it (the sampler's table, when it is there, is merged in)
UNIT_DISPLAY: dict[str, tuple[str, ...]] = {
    "g/dL": ("g/dl",),
    "10*3/uL": ("/nl", "tsd/µl", "g/l", "/µl"),
    "10*6/uL": ("/pl", "mio/µl", "t/l"),
    "10*9/L": ("g/l", "/nl"),
    "10*12/L": ("t/l", "/pl"),
    "mg/dL": ("mg/dl",),
    "mmol/L": ("mmol/l",),
    "umol/L": ("µmol/l",),
    "U/L": ("u/l",),
    "mg/L": ("mg/l",),
    "ng/mL": ("ng/ml", "µg/l"),
    "ug/L": ("µg/l", "ng/ml"),
    "ug/mL": ("µg/ml",),
    "pg/mL": ("pg/ml",),
    "ng/dL": ("ng/dl",),
    "[arb'U]/mL": ("u/ml", "ku/l"),
    "U/mL": ("u/ml", "ku/l"),
    "mL/min/{1.73_m2}": ("ml/min/1,73m²", "ml/min/1,73 m²", "ml/min"),
    "m[IU]/L": ("mu/l", "µiu/ml"),
    "[IU]": ("ie", "i.e."),
    "IE": ("ie", "i.e."),
    "ug": ("µg",),
    "mm[Hg]": ("mmhg",),
    "/min": ("/min",),
    "Cel": ("°c",),
    "{INR}": (),
}
try:  # the sampler's display table decides what letters write; ours covers what it may lack
    from clinsynth.sampling.phrases import UNIT_DISPLAY as _SAMPLER_UNITS

    for _k, _v in _SAMPLER_UNITS.items():
        UNIT_DISPLAY[_k] = tuple(dict.fromkeys((*UNIT_DISPLAY.get(_k, ()), *_v)))
except ImportError:  # pragma: no cover - the sampler is optional for the verifier
    pass


def unit_keys(ucum: str) -> set[str]:
    return {unit_key(u) for u in (ucum, *UNIT_DISPLAY.get(ucum, ())) if u}


def schedule_strings(schedule: Sequence[float]) -> set[tuple[float, ...]]:
    """A gold scheme as the tuples a letter may write: 4 slots, or 3 when the night slot is 0."""
    s = tuple(float(x) for x in schedule)
    out = {s}
    if len(s) == 4 and s[3] == 0:
        out.add(s[:3])
    return out


_SLOT_VALUE = {"½": 0.5, "¼": 0.25, "¾": 0.75, "1/2": 0.5, "1/4": 0.25}


def parse_schedule(text: str) -> tuple[float, ...]:
    return tuple(_SLOT_VALUE.get(p.strip()) or float(p.strip().replace(",", ".")) for p in text.split("-"))


_AS_NEEDED = re.compile(r"(?<!\w)(?:bei\s+bedarf|b\.\s?b\.|bei\s+bed\.|bedarfsweise|prn|nach\s+bedarf)")
_CYCLE = re.compile(r"(?<!\w)(?:(\d+)\.\s*zyklus|zyklus\s*(?:nr\.?\s*)?(\d+)|c(\d+)(?:\s*d\d+)?(?!\w))")
_GY = re.compile(r"gy")


@dataclass
class Place:
    """One occurrence of a fact's name and the text it governs."""

    start: int
    end: int
    region_end: int
    #: the located section (or the whole letter) the occurrence lies in
    section_start: int
    section_end: int
    #: where the text that belongs to this name starts: a code written before the name on its line
    lead: int = -1
    #: tumours: where the codes that belong to the entity end (the next other fact's name)
    code_end: int = -1

    def __post_init__(self) -> None:
        if self.lead < 0:
            self.lead = self.start


def _num_hits(tokens: Iterable[Token], value: float) -> list[Token]:
    return [t for t in tokens if any(same_number(v, value) for v in t.value[0])]


def _value(lt: LetterText, p: Place, value: float, unit: str | None, what: str) -> list[str]:
    nums = lt.tokens("numbers", p.end, p.region_end)
    hits = _num_hits(nums, value)
    if not hits:
        shown = f" (beside it: {nums[0].text!r})" if nums else ""
        return [
            f"{what} {'mismatch' if nums else 'missing'}: gold {value:g} not written beside its name{shown}"
        ]
    written = [t.value[1] for t in hits]
    if unit:
        keys = unit_keys(unit)
        if all(w is not None and w not in keys for w in written):
            return [f"unit mismatch: gold {unit}, text {written[0]}"]
    elif all(w is not None for w in written):
        return [f"unit mismatch: text writes {written[0]}, gold has no unit"]
    return []


def _dates(lt: LetterText, start: int, end: int) -> list[Token]:
    return lt.tokens("dates", start, end)


def _date(lt: LetterText, p: Place, iso: str, what: str = "date", block: bool = False) -> list[str]:
    """The gold date among the dates beside the name (for blocks dated once: the block's last date before)."""
    near = _dates(lt, p.lead, p.region_end)  # "22.08.2022: Port-Implantation" counts too
    if len(iso) == 4:
        years = lt.tokens("years", p.lead, p.region_end)
        if any(t.value == int(iso) for t in years):
            return []
    if any(t.value.matches(iso) for t in near):
        return []
    if block and not near:
        before = _dates(lt, p.section_start, p.start)
        if before and before[-1].value.matches(iso):
            return []
        near = before[-1:]
    shown = f" (text: {near[0].text!r})" if near else ""
    return [f"{what} {'mismatch' if near else 'missing'}: gold {iso} not written beside its name{shown}"]


def check_lab(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    out = []
    if gold.get("value") is not None:
        out += _value(lt, p, float(gold["value"]), gold.get("unit"), "value")
    elif gold.get("value_text") and norm(gold["value_text"]) not in lt.n[p.end : p.region_end]:
        out.append(f"value mismatch: gold {gold['value_text']!r} not written beside its name")
    if gold.get("date"):
        out += _date(lt, p, gold["date"], block=True)
    return out


def check_medication(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    out = []
    if gold.get("dose") is not None:
        out += _value(lt, p, float(gold["dose"]), gold.get("unit"), "dose")
    if gold.get("schedule"):
        want = schedule_strings(gold["schedule"])
        # a table may write the scheme before the name ("1-0-0     Amlodipin 5 mg")
        lo = p.lead if p.lead == lt.line(p.start)[0] else p.end
        written = [parse_schedule(t.text) for t in lt.tokens("schedules", lo, p.region_end)]
        if not any(w in want for w in written):
            gs = "-".join(f"{x:g}" for x in gold["schedule"])
            shown = f", text {'-'.join(f'{x:g}' for x in written[0])}" if written else " not written"
            out.append(f"schedule mismatch: gold {gs}{shown}")
    region = lt.n[p.end : p.region_end]
    sentence = lt.n[slice(*lt.sentence(p.start, p.end))]
    if (
        gold.get("frequency")
        and norm(gold["frequency"]) not in region
        and norm(gold["frequency"]) not in sentence
    ):
        out.append(f"frequency mismatch: gold {gold['frequency']!r} not written beside its name")
    lead = lt.n[p.lead : p.start] if p.lead == lt.line(p.start)[0] else ""
    says_prn = bool(_AS_NEEDED.search(region) or _AS_NEEDED.search(lead))
    if gold.get("as_needed") and not says_prn:
        out.append("as-needed mismatch: gold as needed, text does not say 'bei Bedarf'")
    elif says_prn and not gold.get("as_needed"):
        out.append("as-needed mismatch: text says 'bei Bedarf', gold does not")
    para = lt.n[slice(*lt.paragraph(p.start))]
    if gold.get("regimen"):
        pat = name_pattern(gold["regimen"])
        if pat is not None and not pat.search(lt.n):  # a regimen is named once for all its drugs
            out.append(f"regimen mismatch: gold {gold['regimen']!r} not written")
    if gold.get("cycle"):
        where = [sentence, para, lt.n[p.section_start : p.section_end]]
        found: list[int] = []
        for w in where:
            found = [int(next(g for g in m.groups() if g)) for m in _CYCLE.finditer(w)]
            if found:
                break
        if int(gold["cycle"]) not in found:
            shown = f", text cycle {found[0]}" if found else " not written"
            out.append(f"cycle mismatch: gold {gold['cycle']}{shown}")
    return out


def check_dated(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    return _date(lt, p, gold["date"]) if gold.get("date") else []


def check_radiotherapy(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    out = []
    s, e = lt.sentence(p.start, p.end)
    wide = Place(p.start, p.end, max(p.region_end, e), p.section_start, p.section_end)
    nums = lt.tokens("numbers", s, wide.region_end)
    for key, label in (("total_gy", "total dose"), ("fraction_gy", "single dose")):
        if gold.get(key) is not None:
            hits = [t for t in _num_hits(nums, float(gold[key])) if t.value[1] == "gy"]
            if not hits:
                out.append(f"{label} mismatch: gold {gold[key]:g} Gy not written beside its target")
    if gold.get("fractions") is not None and not _num_hits(nums, float(gold["fractions"])):
        out.append(f"fractions mismatch: gold {gold['fractions']} not written beside its target")
    for key in ("start", "end"):
        if gold.get(key):
            out += _date(lt, wide, gold[key], what=f"{key} date")
    return out


def check_risk(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    if gold.get("pack_years") is None:
        return []
    if _num_hits(lt.tokens("numbers", p.end, p.region_end), float(gold["pack_years"])):
        return []
    return [f"pack years mismatch: gold {gold['pack_years']:g} not written beside its name"]


# ---------------------------------------------------------------------------------------------- tumours

_LEFT = re.compile(r"(?<!\w)(?:links\w*|li\.|linke[nrms]?)(?!\w)")
_RIGHT = re.compile(r"(?<!\w)(?:rechts\w*|re\.|rechte[nrms]?)(?!\w)")
_BOTH = re.compile(r"(?<!\w)(?:beidseit\w*|bds\.|bilateral\w*)(?!\w)")
_MIDLINE = re.compile(r"(?<!\w)(?:mittellinie|median)(?!\w)")
_LATERALITY = {"L": _LEFT, "R": _RIGHT, "B": _BOTH, "M": _MIDLINE}
#: a side word that names part of an unpaired organ ("Karzinom der linken Kolonflexur", "rechter
#: Leberlappen") says nothing about a tumour's laterality
_UNPAIRED_SIDE = re.compile(
    r"(?<!\w)(?:links\w*|linke[nrms]?|rechts\w*|rechte[nrms]?)\s+"
    r"(?:kolonflexur|flexur|colonflexur|hemikolon|hemicolon|leberlappen|leberlappens)(?!\w)"
)


def _sides(text: str, limit: int | None = None) -> set[str]:
    """The laterality keys text[:limit] says, not counting side words of unpaired organs (matched on the
    whole text: a window may cut "Kolonflexur")."""
    text = _UNPAIRED_SIDE.sub(lambda m: " " * len(m.group(0)), text)[:limit]
    return {k for k, pat in _LATERALITY.items() if pat.search(text)}


_UICC = re.compile(
    r"(?<!\w)(?:uicc(?:[- ]?stadium)?|(?<![\w-])stadium)\s*:?\s*(0is|0a|0|iv[abc]?|i{1,3}[abc]?[1-3]?)(?!\w)"
    r"(?!\s*(?:nach|gemäß|n\.)\s*(?:ann|figo|binet|rai|iss|r-iss|durie))"
)
#: a stage named by its system after the value: "Stadium IIIA nach Ann Arbor"
_STAGE_AFTER = re.compile(
    r"(?<!\w)stadium\s+([0-9ivxabcesk]+)\s*(?:nach|gemäß|n\.)\s*"
    r"(ann[- ]arbor|figo|binet|rai|r-iss|iss|durie[- ]salmon)"
)
_SYSTEM_NAMES = {
    "ann arbor": "Ann Arbor", "ann-arbor": "Ann Arbor", "figo": "FIGO", "binet": "Binet", "rai": "Rai",
    "iss": "ISS", "r-iss": "R-ISS", "durie-salmon": "Durie-Salmon", "durie salmon": "Durie-Salmon",
}  # fmt: skip
_STAGE_SYSTEMS = {
    "Ann Arbor": r"ann[- ]arbor(?:[- ]stadium)?",
    "ISS": r"(?<!r-)iss(?:[- ]stadium)?",
    "R-ISS": r"r-iss(?:[- ]stadium)?",
    "Binet": r"binet(?:[- ]stadium)?",
    "Rai": r"rai(?:[- ]stadium)?",
    "FIGO": r"figo(?:[- ]stadium)?",
    "Gleason": r"gleason(?:[- ]score)?",
    "ISUP": r"isup(?:[- ](?:grad\w*|gruppe))?",
    "ELN": r"eln(?:[- ]?20\d\d)?(?:[- ]risiko)?",
    "Durie-Salmon": r"durie[- ]salmon(?:[- ]stadium)?",
}
_STAGE_VALUE = r"([0-9ivxabcesk+=()/-]+(?:\s*[+=]\s*[0-9]+)*)"
_STAGE = {
    k: re.compile(
        rf"(?<!\w){v}\s*:?\s*"
        + (r"(günstig|intermediär|ungünstig|favorable|intermediate|adverse)" if k == "ELN" else _STAGE_VALUE)
        + r"(?![\w])"
    )
    for k, v in _STAGE_SYSTEMS.items()
}
_ECOG = re.compile(r"(?<!\w)ecog(?:[- ]?(?:ps|status|performance[- ]status))?\s*:?\s*([0-5])(?!\d)")
_KARNOFSKY = re.compile(r"(?<!\w)(?:karnofsky|kps)(?:[- ]index)?\s*:?\s*(\d{2,3})\s*%?")
_RESULT_WORDS: dict[str, re.Pattern[str]] = {
    "wildtype": re.compile(
        r"wildtyp\w*|(?<!\w)wt(?!\w)|nicht\s+mutiert|keine\s+mutation\w*|ohne\s+mutation\w*"
    ),
    "negative": re.compile(
        r"negativ\w*|(?<!\w)neg\.|nicht\s+(?:amplifiziert|exprimiert|nachweisbar)|(?<!\w)0\s*%?$"
    ),
    "positive": re.compile(r"positiv\w*|(?<!\w)pos\.|überexprimiert|\d\+"),
    "mutated": re.compile(
        r"mutiert\w*|mutation\w*|deletion\w*|(?<!\w)del\d+|(?<!\w)ex(?:on)?[- ]?\d+|insertion\w*|fusion\w*"
    ),
    "amplified": re.compile(r"amplifiziert\w*|amplifikation\w*"),
    "equivocal": re.compile(r"grenzwertig\w*|equivocal|fraglich\w*|unklar\w*"),
}


def _stage_key(s: str) -> str:
    return re.sub(r"[\s()]", "", norm(s))


def _marker_windows(lt: LetterText, name: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """The text from each occurrence of a marker's name to the next comma/semicolon/clause end (<= 48)."""
    pat = name_pattern(name)
    if pat is None:
        return []
    out = []
    for m in pat.finditer(lt.n, lo, hi):
        stop = min(lt.sentence(m.start(), m.end())[1], m.end() + 48)
        for ch in (",", ";"):
            i = lt.n.find(ch, m.end(), stop)
            if i != -1:
                stop = i
        out.append((m.start(), stop))
    return out


def _marker_problem(lt: LetterText, marker: Mapping[str, Any], region: tuple[int, int]) -> str | None:
    name = marker["name"]
    windows = _marker_windows(lt, name, *region) or _marker_windows(lt, name, 0, len(lt.n))
    if not windows:
        return f"marker missing: {name!r} not written"
    best = None
    for ws, we in windows:
        problems = []
        w = lt.n[ws:we]
        if marker.get("value") is not None:
            hits = _num_hits(lt.tokens("numbers", ws, we), float(marker["value"]))
            if not hits:
                problems.append(f"value {marker['value']:g}")
            elif (
                marker.get("unit") and hits[0].value[1] and hits[0].value[1] not in unit_keys(marker["unit"])
            ):
                problems.append(f"unit {marker['unit']}")
        wide = lt.n[ws : ws + len(name) + len(marker.get("text") or "") + 24].replace(" ", "")
        if marker.get("text") and norm(marker["text"]).replace(" ", "") not in wide:
            problems.append(f"finding {marker['text']!r}")
        result = marker.get("result")
        said = {k for k, p in _RESULT_WORDS.items() if p.search(w)}
        if "wildtype" in said:
            said.discard("mutated")
        if "negative" in said and re.search(r"nicht\s+(?:amplifiziert|exprimiert)", w):
            said.discard("amplified")
        if result and result not in said and (said or not marker.get("text")):
            problems.append(f"result {result}" + (f" (text: {', '.join(sorted(said))})" if said else ""))
        if not result and said and marker.get("value") is None and not marker.get("text"):
            problems.append(f"text says {', '.join(sorted(said))}, gold has no result")
        if not problems:
            return None
        if best is None or len(problems) < len(best):
            best = problems
    return f"marker mismatch: {name!r} gold {'; '.join(best or [])} not written beside it"


def _axis_str(prefix: str | None, value: str) -> str:
    return f"{prefix or ''}{value}"


def _tnm_problems(gold_tnm: Mapping[str, Any], axes: Sequence[Axis]) -> list[str]:
    by = {a.axis: a for a in axes}
    out = []
    for ax in ("t", "n", "m"):
        g = gold_tnm.get(ax)
        a = by.get(ax)
        label = ax.upper()
        if g is None:
            if a is not None:
                out.append(f"{label}: text {_axis_str(a.prefix, a.value)}, gold has none")
            continue
        if a is None:
            out.append(f"{label}: gold {_axis_str(g.get('prefix'), g['value'])} not written")
            continue
        if g["value"] != a.value:
            out.append(
                f"{label}: gold {_axis_str(g.get('prefix'), g['value'])}, text {_axis_str(a.prefix, a.value)}"
            )
        gp = g.get("prefix")
        if a.carried:
            if gp not in (None, a.prefix):
                out.append(f"{label} prefix: gold {gp}, text {a.prefix}")
        elif gp != a.prefix:
            out.append(f"{label} prefix: gold {gp or 'none'}, text {a.prefix or 'none'}")
        if ax == "n" and (g.get("nodes") or None) != a.nodes:
            out.append(f"N nodes: gold {g.get('nodes')}, text {a.nodes}")
    for ax in ("l", "v", "pn", "r"):
        g = gold_tnm.get(ax)
        a = by.get(ax)
        if (g or None) != (a.value if a else None):
            out.append(f"{ax.upper()}: gold {g}, text {a.value if a else None}")
    return out


def check_tumor(lt: LetterText, p: Place, gold: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    lo, hi = p.start, p.region_end
    region = lt.n[lo:hi]
    # TNM: one written staging must match the gold's (a block may hold the initial and the current one)
    runs = [t.value for t in lt.tokens("tnm", lo, hi)]
    gold_tnm = gold.get("tnm") or {}
    axes_written = [r for r in runs if any(a.axis in ("t", "n", "m") for a in r)]
    if any(gold_tnm.get(k) for k in ("t", "n", "m")):
        if not axes_written:
            out.append("tumour TNM missing: gold TNM not written in the tumour's block")
        else:
            best = min((_tnm_problems(gold_tnm, r) for r in axes_written), key=len)
            out += [f"tumour {x}" for x in best]
    else:
        for k in ("l", "v", "pn", "r"):
            if gold_tnm.get(k) and not any(a.value == gold_tnm[k] for r in runs for a in r):
                out.append(f"tumour {k.upper()}: gold {gold_tnm[k]} not written")
    grades = {a.value for r in runs for a in r if a.axis == "g"}
    grades |= {m.group(0).upper() for m in re.finditer(r"(?<!\w)g[1-4x](?!\w)", region)}
    if gold.get("grading"):
        if gold["grading"] not in grades and not (gold["grading"] in ("L", "M", "H", "B") and not grades):
            out.append(f"tumour grading: gold {gold['grading']}, text {', '.join(sorted(grades)) or 'none'}")
    elif grades:
        out.append(f"tumour grading: text {', '.join(sorted(grades))}, gold has none")
    uicc = {m.group(1).upper().replace("0IS", "0is").replace("0A", "0a") for m in _UICC.finditer(region)}
    if gold.get("uicc_stage"):
        if gold["uicc_stage"] not in uicc:
            out.append(f"tumour UICC: gold {gold['uicc_stage']}, text {', '.join(sorted(uicc)) or 'none'}")
    elif uicc:
        out.append(f"tumour UICC: text {', '.join(sorted(uicc))}, gold has none")
    gold_stages: dict[str, set[str]] = {}
    for st in gold.get("stages") or ():
        gold_stages.setdefault(st["system"], set()).add(_stage_key(st["value"]))
    named_after: dict[str, set[str]] = {}
    for m in _STAGE_AFTER.finditer(region):
        named_after.setdefault(_SYSTEM_NAMES.get(m.group(2), m.group(2)), set()).add(_stage_key(m.group(1)))
    for system, pat in _STAGE.items():
        written = {_stage_key(m.group(1)) for m in pat.finditer(region)} | named_after.get(system, set())
        want = gold_stages.get(system, set())
        if want and not (want & written):
            shown = ", ".join(sorted(written)) or "none"
            out.append(f"tumour stage {system}: gold {', '.join(sorted(want))}, text {shown}")
        elif written and not want:
            out.append(f"tumour stage {system}: text {', '.join(sorted(written))}, gold has none")
    # laterality: on the entity's own line first (or in the name itself)
    ls, le = lt.line(p.start)
    line = lt.n[ls:le]
    said = _sides(line) or _sides(region)
    lat = gold.get("laterality")
    if lat in _LATERALITY:
        if lat not in said:
            out.append(f"tumour laterality: gold {lat}, text {', '.join(sorted(said)) or 'none'}")
    elif lat is None:
        # up to 25 characters after the name, never into the next tumour ("Z.n. Melanom. Larynx-CA re.")
        near = _sides(lt.n[p.start : min(le, p.region_end)], p.end + 25 - p.start)
        if near:
            out.append(f"tumour laterality: text {', '.join(sorted(near))}, gold has none")
    for marker in gold.get("markers") or ():
        problem = _marker_problem(lt, marker, (lo, hi))
        if problem:
            out.append(f"tumour {problem}")
    if gold.get("histology") and norm(gold["histology"]) not in lt.n:
        out.append(f"tumour histology missing: gold {gold['histology']!r} not written")
    if gold.get("ecog") is not None:
        said_ecog = {int(m.group(1)) for m in _ECOG.finditer(lt.n)}
        if gold["ecog"] not in said_ecog:
            out.append(
                f"tumour ECOG: gold {gold['ecog']}, text {', '.join(map(str, sorted(said_ecog))) or 'none'}"
            )
    if gold.get("karnofsky") is not None:
        said_k = {int(m.group(1)) for m in _KARNOFSKY.finditer(lt.n)}
        if gold["karnofsky"] not in said_k:
            shown = ", ".join(map(str, sorted(said_k))) or "none"
            out.append(f"tumour Karnofsky: gold {gold['karnofsky']}, text {shown}")
    if gold.get("date"):
        out += [f"tumour {x}" for x in _date(lt, p, gold["date"])]
    return out


#: a label that makes the ICD-like code right after it an ICD-O topography
_TOPO_LABEL = re.compile(
    r"(?:topographie|icd-o(?:-3)?-?t|icd-o(?:-3)?\s+topographie|lokalisation)\s*:?\s*\(?\s*$"
)

#: which written code systems a fact kind's gold codes sit in (ICD-like tokens: ICD-10-GM or ICD-O topography)
CODE_FIELDS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "diagnosis": (("icd10gm", ("icd10gm",)),),
    "tumor": (("icd10gm", ("icd10gm", "topography")), ("morphology", ("morphology",))),
    "procedure": (("ops", ("ops",)),),
    "medication": (("atc", ("atc",)),),
    "lab": (("loinc", ("loinc",)),),
    "vital": (("loinc", ("loinc",)),),
}


def check_codes(lt: LetterText, p: Place, kind: str, gold: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, gold code fields not written beside the name). A written code must be the gold code at
    the same specificity: C18 written with gold C18.7 fails, and so does a sibling."""
    out: list[str] = []
    unwritten: list[str] = []
    hi = p.code_end if kind == "tumor" and p.code_end >= 0 else p.region_end
    # a code before the name belongs to it only at the start of its line ("1. C83.3 Diffuses ...")
    lo = p.lead if p.lead == lt.line(p.start)[0] else p.start
    tokens = lt.tokens("codes", lo, hi)
    # an ICD-O topography is labelled ("Topographie C16.0", "ICD-O-T C67.2"): it is the tumour's
    # topography, never an ICD-10 code, and no other fact's code
    topo = [
        t for t in tokens if t.value == "icd10gm" and _TOPO_LABEL.search(lt.n, max(0, t.start - 24), t.start)
    ]
    if topo:
        tokens = [t for t in tokens if t not in topo]
        if kind == "tumor":
            wrong = [t.text for t in topo if t.text != str(gold.get("topography") or "")]
            if wrong:
                shown = f"gold {gold['topography']}" if gold.get("topography") else "gold has none"
                out.append(f"code mismatch: topography {shown}, text {', '.join(wrong)}")
    for system, fields in CODE_FIELDS.get(kind, ()):
        written = [t.text for t in tokens if t.value == system]
        want = {str(gold[f]) for f in fields if gold.get(f)}
        if written:
            wrong = [w for w in written if w not in want]
            if wrong:
                shown = f"gold {', '.join(sorted(want))}" if want else "gold has none"
                out.append(f"code mismatch: {system} {shown}, text {', '.join(wrong)}")
        unwritten += [f for f in fields if gold.get(f) and str(gold[f]) not in written]
    return out, unwritten


CHECKS = {
    "lab": check_lab,
    "vital": check_lab,
    "medication": check_medication,
    "diagnosis": check_dated,
    "procedure": check_dated,
    "radiotherapy": check_radiotherapy,
    "risk_factor": check_risk,
    "tumor": check_tumor,
}
