"""UCUM unit codes: the syntax of the UCUM grammar over the atoms clinical letters use.

The MII laboratory profile and the HL7 vital-signs profile require `valueQuantity.system` =
UCUM and a UCUM `code`; a unit as written in a letter ("µg", "IE", "Mio. IE") is only
written as a code when it is one (after the project's unit map, `conventions.UNIT_UCUM`).
The parser follows the UCUM grammar (terms of components joined by `.` and `/`, exponents,
integer factors, `{annotations}` of printable ASCII, parentheses, a leading `/`); the atom
table holds the base, derived and clinical atoms (arbitrary units included) a discharge
letter writes, not all ~300 UCUM atoms: a valid code with an unlisted atom is reported as
"not UCUM", so the export writes it as text (a warning in the report), never as a wrong code.
"""

from __future__ import annotations

import re
from functools import lru_cache

from clinsynth.fhir import conventions as fc

#: atoms that take a metric prefix (mg, µmol → umol, kBq, mm[Hg], mL ...)
METRIC = frozenset(
    "m s g rad K C cd mol sr Hz N Pa J W A V F Ohm S Wb Cel T H lm lx Bq Gy Sv l L ar t bar u eV "  # noqa: SIM905
    "eq osm U [iU] [IU] kat b mho Ci R RAD REM cal m[Hg] m[H2O] atm B Np bit By Bd".split()
)
#: atoms without prefixes
NON_METRIC = frozenset(
    "10* 10^ [pi] % [ppth] [ppm] [ppb] deg gon min h d wk mo a a_j a_t a_g mo_j mo_g [in_i] [ft_i] "  # noqa: SIM905
    "[lb_av] [oz_av] [degF] [pH] [drp] [HPF] [LPF] [arb'U] [USP'U] [GPL'U] [MPL'U] [APL'U] [CFU] "
    "[PFU] [FFU] [BAU] [AU] [CCID_50] [TCID_50] [EID_50] [Lf] [EU] [ELU] [FEU] [Ch] [mesh_i] [psi] "
    "[diop] [beth'U] [anti'Xa'U] [todd'U] [ka'U] [knk'U] [mclg'U] [tb'U] [S] [HP] [lne]".split()
)
#: longest first, so that "da" is tried before "d"
_PREFIX_SYMBOLS = "Y Z E P T G M k h da d c m u n p f a z y Ki Mi Gi Ti".split()  # noqa: SIM905
PREFIXES = tuple(sorted(_PREFIX_SYMBOLS, key=len, reverse=True))

_ANNOTATION = r"\{[!-z|~]*\}"  # printable ASCII without braces
_SYMBOL = re.compile(r"10[*^]|(?:[^.\/(){}\[\]\d+\-\s]|\[[^\[\]\s]*\])+")
_EXPONENT = re.compile(r"[+-]?\d+")
_FACTOR = re.compile(r"\d+")
_ANNOT = re.compile(_ANNOTATION)


def _atom_ok(symbol: str) -> bool:
    if symbol in METRIC or symbol in NON_METRIC:
        return True
    return any(symbol.startswith(p) and symbol[len(p) :] in METRIC for p in PREFIXES)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def term(self) -> bool:
        if not self.component():
            return False
        while self.i < len(self.s) and self.s[self.i] in "./":
            self.i += 1
            if not self.component():
                return False
        return True

    def component(self) -> bool:
        s = self.s
        if self.i >= len(s):
            return False
        if s[self.i] == "(":
            self.i += 1
            if not self.term() or self.i >= len(s) or s[self.i] != ")":
                return False
            self.i += 1
            return True
        if m := _ANNOT.match(s, self.i):
            self.i = m.end()
            return True
        sym = _SYMBOL.match(s, self.i)
        if sym is None:
            fac = _FACTOR.match(s, self.i)
            if fac is None:
                return False
            self.i = fac.end()
            return True
        if not _atom_ok(sym.group()):
            return False
        self.i = sym.end()
        if exp := _EXPONENT.match(s, self.i):
            self.i = exp.end()
        elif sym.group() in ("10*", "10^"):
            return False  # the power-of-ten atom needs its exponent
        if ann := _ANNOT.match(s, self.i):
            self.i = ann.end()
        return True


@lru_cache(maxsize=4096)
def is_ucum(code: str) -> bool:
    """Whether `code` parses as a UCUM expression over the known atoms ("1" and "10*3/uL" do)."""
    if not code or code != code.strip():
        return False
    p = _Parser(code)
    if code.startswith("/"):
        p.i = 1
    return p.term() and p.i == len(code)


_IE = re.compile(r"(?<![A-Za-z\[])(IE|I\.E\.)(?![A-Za-z\]])")


@lru_cache(maxsize=4096)
def ucum_code(unit: str | None) -> str | None:
    """The UCUM code of a unit as written, or None when it has none: the project's unit map first,
    then µ → u and IE → [IU] inside compound units ("µg/kg", "IE/m2")."""
    if not unit:
        return None
    unit = unit.strip()
    code = fc.UNIT_UCUM.get(unit)
    if code is None:
        code = _IE.sub("[IU]", unit.replace("µ", "u").replace("μ", "u"))
    return code if is_ucum(code) else None
