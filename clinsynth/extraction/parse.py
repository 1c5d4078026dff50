"""A model's raw answer -> (status, schema-v2 extraction or None, what was wrong or repaired).

Models wrap JSON in many ways: a `<think>` block (Qwen3), the final channel after an analysis
channel (GPT-OSS), a Markdown code fence, a sentence before or after. That envelope is taken off
without counting as a repair. What does count, and is written into `error`:

- control characters inside strings (JSON forbids them; some grammars let them through);
- a cut answer (token limit, or a model that stopped mid-object): closed after its last complete
  value; the status is then `truncated` when the model hit its token limit, else `repaired`;
- codes with the ICD-10-GM mark glued on (`G63.2*`: the mark goes to `icd10gm_mark`), lower-case
  or spaced codes, decimal commas in numbers, German dates (17.03.2025, 03/2024);
- anything else the schema refuses: the offending key is removed, or the fact when a required key
  is missing or invalid, each with its path and reason.

The fine-tuned model answers in the canonical compact form (clinsynth.training.answer): its first
try is `expand_answer`, which restores every dropped key. `invalid` means nothing usable was
found (no JSON object at all); strict scoring counts it as an empty prediction.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from clinsynth.schema import ClinicalExtraction
from clinsynth.training.answer import expand_answer

ParseStatus = Literal["ok", "repaired", "invalid", "truncated"]

#: how many cut points are tried, newest first, when closing a cut answer
MAX_CUTS = 64
#: repairs per answer before giving up on the rest (a degenerate answer with thousands of errors)
MAX_REPAIRS = 400

_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_HARMONY_FINAL = ("<|channel|>final<|message|>", "assistantfinal")
_ICD_MARKS = {"†": "†", "+": "†", "*": "*", "!": "!"}
_CODE_FIELDS = {"icd10gm", "ops", "atc", "loinc", "topography", "morphology"}
_DECIMAL_COMMA = re.compile(r"^\s*-?\d+,\d+\s*$")
_DATE_FIELDS = {"date", "admission", "discharge", "birth_date", "start", "end"}
_GERMAN_DATE = re.compile(r"^\s*(?:(\d{1,2})\.)?(\d{1,2})[./](\d{4})\s*$")


@dataclass
class Parsed:
    status: ParseStatus
    extraction: ClinicalExtraction | None
    repairs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def message(self) -> str | None:
        """What goes into the prediction's `error`: why it failed, or what was repaired."""
        if self.error:
            return self.error
        return "; ".join(self.repairs) if self.repairs else None

    def extraction_dict(self) -> dict[str, Any] | None:
        return None if self.extraction is None else self.extraction.model_dump(mode="json")


def unwrap(text: str) -> str:
    """The answer without its envelope: reasoning, channels, code fences."""
    body = _THINK.sub("", text)
    if "</think>" in body:  # the template opened the block in the prompt: the answer follows the close
        body = body.rsplit("</think>", 1)[1]
    elif "<think>" in body:  # reasoning never closed: no answer after it
        body = body.split("<think>", 1)[0]
    for marker in _HARMONY_FINAL:
        if marker in body:
            body = body.rsplit(marker, 1)[1]
    fenced = [m for m in _FENCE.findall(body) if "{" in m]
    if fenced:
        body = fenced[0]
    elif "```" in body:  # an opened fence that was never closed (cut answer)
        head, _, tail = body.partition("```")
        body = tail.split("\n", 1)[1] if "{" not in head and "\n" in tail else head + tail
    return body.strip()


def _cut_points(s: str, start: int) -> tuple[int | None, list[tuple[int, list[str]]]]:
    """(end of the complete object or None, [(cut index, open containers)]): where a cut answer can
    be closed, i.e. after a complete value or right after an opening bracket."""
    stack: list[str] = []
    cuts: list[tuple[int, list[str]]] = []
    in_str = esc = False
    for i in range(start, len(s)):
        ch = s[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                cuts.append((i + 1, list(stack)))
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            cuts.append((i + 1, list(stack)))
        elif ch in "}]":
            if not stack or stack[-1] != ch:  # a stray or mismatched bracket: a syntax error here
                return None, cuts
            stack.pop()
            if not stack:
                return i + 1, cuts
            cuts.append((i + 1, list(stack)))
        elif ch == ",":
            cuts.append((i, list(stack)))
    return None, cuts


def _close(s: str, cuts: list[tuple[int, list[str]]]) -> Any | None:
    """The longest prefix that closes into valid JSON (a dangling key or comma is dropped)."""
    for cut, stack in reversed(cuts[-MAX_CUTS:]):
        head = s[:cut].rstrip().rstrip(",")
        try:
            return json.loads(head + "".join(reversed(stack)), strict=False)
        except json.JSONDecodeError:
            continue
    return None


def _has_content(value: Any) -> bool:
    """Some value other than null, an empty list or an empty object, at any depth."""
    if isinstance(value, dict):
        return any(_has_content(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_content(v) for v in value)
    return value is not None


def load_object(text: str) -> tuple[Any | None, list[str], bool, str | None]:
    """(JSON value, repairs, was cut, error) for the first JSON object in the unwrapped text."""
    body = unwrap(text)
    start = body.find("{")
    if start < 0:
        return None, [], False, "no JSON object in the answer" if body else "empty answer"
    decoder = json.JSONDecoder()
    try:
        return decoder.raw_decode(body, start)[0], [], False, None
    except json.JSONDecodeError:
        pass
    try:
        value = json.JSONDecoder(strict=False).raw_decode(body, start)[0]
        return value, ["control characters inside strings"], False, None
    except json.JSONDecodeError as exc:
        first_error = str(exc)
    end, cuts = _cut_points(body, start)
    if end is not None:  # a complete object that does not parse: a syntax error inside
        return None, [], False, f"not valid JSON ({first_error})"
    value = _close(body, cuts)
    if not _has_content(value):  # nothing complete before the cut or the error: no answer to speak of
        return None, [], True, f"no complete value before the cut or error ({first_error})"
    return value, ["cut answer closed after its last complete value"], True, None


# ---------------------------------------------------------------- schema repairs


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _get(obj: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        obj = obj[part]
    return obj


def _delete(obj: Any, loc: tuple[Any, ...]) -> bool:
    try:
        parent = _get(obj, loc[:-1])
        del parent[loc[-1]]
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _fix_code(name: str, value: str, parent: dict[str, Any], *, diagnosis: bool) -> str | None:
    """A code in a form the pattern refuses but that means one code: marks, case, spaces."""
    code = re.sub(r"\s+", "", value)
    if name == "icd10gm" and code and code[-1] in _ICD_MARKS:
        if diagnosis:  # a diagnosis keeps its mark in a field of its own; a tumour has none
            parent.setdefault("icd10gm_mark", _ICD_MARKS[code[-1]])
        code = code[:-1]
    code = code.lower() if name == "ops" else code.upper()
    return code if code != value else None


def _fix(data: Any, loc: tuple[Any, ...], err: Any) -> str | None:
    """Try to mend the value at loc in place; a description of the fix, or None."""
    if not loc or not isinstance(loc[-1], str):
        return None
    try:
        parent = _get(data, loc[:-1])
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(parent, dict):
        return None
    name, value = loc[-1], parent.get(loc[-1])
    if name in _CODE_FIELDS and isinstance(value, str):
        fixed = _fix_code(name, value, parent, diagnosis=loc[0] == "diagnoses")
        if fixed is not None:
            parent[name] = fixed
            return f"{_path(loc)} {value!r} -> {fixed!r}"
    if isinstance(value, str) and _DECIMAL_COMMA.match(value):
        parent[name] = float(value.replace(",", "."))
        return f"{_path(loc)} decimal comma {value!r}"
    if name in _DATE_FIELDS and isinstance(value, str):
        m = _GERMAN_DATE.match(value)
        if m:
            day, month, year = m.groups()
            iso = f"{year}-{int(month):02d}" + (f"-{int(day):02d}" if day else "")
            parent[name] = iso
            return f"{_path(loc)} date {value!r} -> {iso!r}"
    if value is None and err["type"] == "list_type":
        parent[name] = []
        return f"{_path(loc)} null -> []"
    return None


def repair(data: dict[str, Any]) -> tuple[ClinicalExtraction | None, list[str], str | None]:
    """Validate, mending or removing what the schema refuses one error at a time."""
    data = copy.deepcopy(data)
    repairs: list[str] = []
    for _ in range(MAX_REPAIRS):
        try:
            return ClinicalExtraction.model_validate(data), repairs, None
        except ValidationError as exc:
            err = exc.errors()[0]
        loc = tuple(err["loc"])
        fixed = _fix(data, loc, err)
        if fixed is not None:
            repairs.append(fixed)
            continue
        # a required key missing or refused: the object that needs it goes (a fact: the list item)
        target = loc[:-1] if err["type"] == "missing" or _required(data, loc) else loc
        if not target:
            return None, repairs, f"{_path(loc) or 'answer'}: {err['msg']}"
        if not _delete(data, target):
            return None, repairs, f"{_path(loc)}: {err['msg']} (could not be removed)"
        repairs.append(f"{_path(target)} removed ({_path(loc)}: {err['msg']})")
    return None, repairs, f"more than {MAX_REPAIRS} schema errors"


def _required(data: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the key at loc is a required one of its object (then the object goes, not the key)."""
    if len(loc) < 2 or not isinstance(loc[-1], str):
        return False
    model: Any = ClinicalExtraction
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return False
        model = _inner_model(info.annotation)
        if model is None:
            return False
    info = getattr(model, "model_fields", {}).get(loc[-1])
    return bool(info is not None and info.is_required())


def _inner_model(annotation: Any) -> Any:
    from clinsynth.core.config import nested_models

    models = nested_models(annotation)
    return models[0] if models else None


def parse_output(text: str, *, finish_reason: str = "stop") -> Parsed:
    """Parse one raw answer; `finish_reason` "length" marks a cut answer as truncated."""
    value, repairs, cut, error = load_object(text)
    hit_limit = finish_reason == "length"
    if value is None:
        if hit_limit:
            error = f"truncated at the token limit; {error}"
        return Parsed("invalid", None, repairs, error)
    if not isinstance(value, dict):
        return Parsed("invalid", None, repairs, f"the answer is a JSON {type(value).__name__}, not an object")
    if not repairs:
        try:
            return Parsed("ok", expand_answer(json.dumps(value)))
        except (ValidationError, ValueError):
            pass
    extraction, more, error = repair(value)
    repairs += more
    if extraction is None:
        return Parsed("invalid", None, repairs, error)
    status: ParseStatus = "truncated" if cut and hit_limit else "repaired"
    return Parsed(status, extraction, repairs)


__all__ = ["Parsed", "load_object", "parse_output", "repair", "unwrap"]
