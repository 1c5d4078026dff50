"""Code systems as lookup tables: the one shape every generator and validator uses.

A ``CodeTable`` answers three different questions that are easy to mix up:
``code in table`` (the catalogue knows the code), ``table.validate(code)`` (the code
is well formed *and* may be used as a coded value, i.e. a terminal ICD-10-GM
code), and ``table.pattern`` (merely looks like a code). Extractor evaluation
needs all three: a syntactically fine but non-codable "E11.9" is an error of a
different kind than an invented "E11.99".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rapidfuzz import fuzz, process, utils

ICD10GM_SYSTEM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
ICDO3_SYSTEM = "urn:oid:2.16.840.1.113883.6.43.1"
OPS_SYSTEM = "http://fhir.de/CodeSystem/bfarm/ops"
ATC_SYSTEM = "http://fhir.de/CodeSystem/bfarm/atc"
LOINC_SYSTEM = "http://loinc.org"

ICD10GM_PATTERN = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9]{1,2})?")
TOPOGRAPHY_PATTERN = re.compile(r"C[0-9]{2}(?:\.[0-9])?")
MORPHOLOGY_PATTERN = re.compile(r"[89][0-9]{3}/[0-9]")
OPS_PATTERN = re.compile(r"[1-9]-[0-9]{2}(?:[0-9a-z](?:\.[0-9a-z]{1,2})?)?")
ATC_PATTERN = re.compile(r"[A-Z](?:[0-9]{2}(?:[A-Z](?:[A-Z](?:[0-9]{2})?)?)?)?")
LOINC_PATTERN = re.compile(r"[0-9]{1,7}-[0-9]")


@dataclass(frozen=True)
class Concept:
    """One code with its German display; ``extra`` holds table-specific columns."""

    code: str
    display: str
    system: str
    verified: bool = True
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, hash=False)


LevelFn = Callable[[str, int], str]


def icd10gm_level(code: str, n: int) -> str:
    """3 = category (C34), 4 = subcategory (C34.1), 5 = GM five-character code (E11.90)."""
    lengths = {3: 3, 4: 5, 5: 6}
    return _cut(code, n, lengths, "ICD-10-GM")


def topography_level(code: str, n: int) -> str:
    return _cut(code, n, {3: 3, 4: 5}, "ICD-O-3 topography")


def morphology_level(code: str, n: int) -> str:
    """4 = histology without behaviour (8140), 5 = full code (8140/3)."""
    return _cut(code, n, {4: 4, 5: 6}, "ICD-O-3 morphology")


def atc_level(code: str, n: int) -> str:
    """WHO ATC levels 1-5: L, L01, L01X, L01XA, L01XA03."""
    return _cut(code, n, {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}, "ATC")


def ops_level(code: str, n: int) -> str:
    """Levels count characters without separators: 1 = 5, 3 = 5-48, 4 = 5-484, 5 = 5-484.5, 6 = 5-484.55."""
    chars = code.replace("-", "").replace(".", "")
    if n not in (1, 3, 4, 5, 6) or n > len(chars):
        raise ValueError(f"OPS code {code!r} has no level {n}")
    if n == 1:
        return chars[0]
    out = f"{chars[0]}-{chars[1 : min(n, 4)]}"
    if n >= 5:
        out += "." + chars[4:n]
    return out


def loinc_level(code: str, n: int) -> str:
    raise ValueError("LOINC codes have no hierarchy")


def _cut(code: str, n: int, lengths: Mapping[int, int], name: str) -> str:
    size = lengths.get(n)
    if size is None or size > len(code):
        raise ValueError(f"{name} code {code!r} has no level {n} (levels: {sorted(lengths)})")
    return code[:size]


def _score(query: str, choice: str, **_: Any) -> float:
    """WRatio alone lets one shared long word win ('Karzinom des Rektums' -> Gaumen); token_set alone
    ignores partial words ('Rektum' in 'Rektums'); the mean ranks clinical phrasings best."""
    return 0.5 * fuzz.WRatio(query, choice) + 0.5 * fuzz.token_set_ratio(query, choice)


class CodeTable:
    """A curated code system subset with lookup, validation, hierarchy and fuzzy search."""

    def __init__(
        self,
        name: str,
        system: str,
        version: str,
        pattern: re.Pattern[str],
        concepts: Iterable[Concept],
        *,
        level_fn: LevelFn,
        codable: Callable[[Concept], bool] | None = None,
        upper: bool = True,
    ) -> None:
        self.name = name
        self.system = system
        self.version = version
        self.pattern = pattern
        self._level_fn = level_fn
        self._codable = codable or (lambda _c: True)
        self._upper = upper
        self._by_code: dict[str, Concept] = {}
        for concept in concepts:
            if concept.code in self._by_code:
                raise ValueError(f"{name}: duplicate code {concept.code}")
            if not pattern.fullmatch(concept.code):
                raise ValueError(f"{name}: {concept.code!r} does not match the code pattern")
            self._by_code[concept.code] = concept
        self._search_index: tuple[list[str], list[Concept]] | None = None

    def _norm(self, code: str) -> str:
        code = code.strip()
        return code.upper() if self._upper else code

    def lookup(self, code: str) -> Concept | None:
        return self._by_code.get(self._norm(code))

    def validate(self, code: str) -> bool:
        """Well formed, in the catalogue, and usable as a coded value (terminal where codes have levels)."""
        code = self._norm(code)
        concept = self._by_code.get(code)
        return bool(self.pattern.fullmatch(code)) and concept is not None and self._codable(concept)

    def level(self, code: str, n: int) -> str:
        code = self._norm(code)
        if not self.pattern.fullmatch(code):
            raise ValueError(f"{code!r} is not a {self.name} code")
        return self._level_fn(code, n)

    def search(self, text: str, limit: int = 5) -> list[tuple[Concept, float]]:
        """Best German titles (and project synonyms) for free text, score 0-100, one hit per concept."""
        names, owners = self._index()
        hits = process.extract(
            text, names, scorer=_score, processor=utils.default_process, limit=max(limit * 5, 20)
        )
        best: dict[str, tuple[Concept, float]] = {}
        for _name, score, i in hits:
            concept = owners[i]
            if concept.code not in best or score > best[concept.code][1]:
                best[concept.code] = (concept, float(score))
        ranked = sorted(best.values(), key=lambda cs: (-cs[1], len(cs[0].display), cs[0].code))
        return ranked[:limit]

    def _index(self) -> tuple[list[str], list[Concept]]:
        if self._search_index is None:
            names: list[str] = []
            owners: list[Concept] = []
            for concept in self._by_code.values():
                for name in (concept.display, *concept.extra.get("synonyms", ())):
                    names.append(name)
                    owners.append(concept)
            self._search_index = (names, owners)
        return self._search_index

    def codes(self) -> list[str]:
        return list(self._by_code)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self._norm(code) in self._by_code

    def __iter__(self) -> Iterator[Concept]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    def __repr__(self) -> str:
        return (
            f"CodeTable({self.name!r}, system={self.system!r}, version={self.version!r}, {len(self)} codes)"
        )
