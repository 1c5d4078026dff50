"""Diagnoses of a stay: the main tumour always written, comorbidities, course and dative forms."""

from __future__ import annotations

from typing import Any

from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    _ASSERTION_OF,
    ICD10GM_SYSTEMS,
    SamplerBase,
    _Ctx,
    _d,
)
from clinsynth.sampling.recipe import RecipeFact
from clinsynth.schema import Assertion, LetterSection
from clinsynth.terminology.names import name_dative


class DiagnosisFacts(SamplerBase):
    """Diagnoses of a stay: the main tumour always written, comorbidities, course and dative forms."""

    # ------------------------------------------------------------------ diagnoses
    def _diagnoses(self, ctx: _Ctx, facts: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The stay's diagnoses; the main tumour is always written. Returns the main diagnosis row."""
        dx = [f for f in facts if f["category"] == "diagnosis" and f.get("assertion") != "entered-in-error"]
        dx.sort(
            key=lambda f: (
                f.get("role") != "main",
                not self._x(f).get("primary_tumor"),
                f["resource_id"],
            )
        )
        main = next((f for f in dx if f.get("role") == "main"), None) or next(
            (f for f in dx if self._x(f).get("primary_tumor")), None
        )
        n = 0
        seen: set[str] = set()
        seen_tumour: set[str] = set()
        for f in dx:
            is_main = f is main
            code = self._slot_code(f, ICD10GM_SYSTEMS, "diagnosis")
            if code is None and not (f.get("text") or f.get("display")):
                self.stats["dropped/diagnosis_without_code_or_text"] += 1
                continue
            if code in seen:
                continue
            if code and self._x(f).get("primary_tumor") and code[:3] in seen_tumour:
                continue  # one name per tumour per letter ("Hypernephrom" and "Nierenkarzinom" are one)
            # the stay's tumour is always written, also when a complication is the main diagnosis
            tumour = bool(self._x(f).get("primary_tumor")) and f.get("assertion") != "historical"
            if not (is_main or tumour) and (
                n >= self.cfg.max_facts["diagnosis"] or ctx.rng.random() >= self.cfg.keep["diagnosis"]
            ):
                continue
            # Z codes: only the ones a letter lists, never dated, only in the diagnosis list
            if (
                code
                and code.startswith("Z")
                and (not code.startswith(("Z51", "Z93", "Z90", "Z85", "Z92")) or ctx.rng.random() > 0.35)
            ):
                continue
            assertion: Assertion = _ASSERTION_OF.get(f.get("assertion") or "", "present")
            if (
                code
                and not (is_main or tumour)
                and assertion in ("present", "suspected")
                and code.startswith(ctx.ruled_out)
            ):
                self.stats["dropped/diagnosis_ruled_out_by_labs"] += 1
                continue
            if is_main or tumour:
                section: LetterSection | None = "diagnosen"
            elif code and code.startswith("Z"):
                section = "diagnosen"
            else:
                section = self._place(ctx, "diagnosis")
            if section is None:
                continue
            made = self._diagnosis_fact(
                ctx,
                f,
                code,
                section,
                assertion,
                role=f.get("role") or ("main" if is_main else "secondary"),
                ed=bool(self._x(f).get("primary_tumor")),
            )
            if made is None:
                if is_main:
                    self.stats["main_without_name"] += 1
                continue
            if code:
                seen.add(code)
                if self._x(f).get("primary_tumor"):
                    seen_tumour.add(code[:3])
            n += 1
        return main

    def _diagnosis_fact(
        self,
        ctx: _Ctx,
        f: dict[str, Any],
        code: str | None,
        section: LetterSection,
        assertion: Assertion,
        *,
        role: str | None,
        ed: bool,
    ) -> RecipeFact | None:
        extra = self._x(f)
        pinned: str | None = None
        name: str | None = None
        if code:
            got = self._name(ctx, "icd10gm", code, prefer_specific=0.35)
            if got:
                name, pinned = got
        if name is None and code:
            fallback = self.lex.fallback_name("icd10gm", code)
            if fallback is not None:
                name, pinned = fallback
                self.stats["diagnosis_named_by_category_title"] += 1
        if name is None:
            text = self._own_words(f.get("text"))
            if text and ": " not in text and self.lex.pinned_code("icd10gm", text) in (None, code):
                name = text  # the source's own wording; its code only when written
                pinned = self.lex.pinned_code("icd10gm", text)
            else:
                return None
        base_name = name
        lat = extra.get("laterality")
        if lat in P.LATERALITY and extra.get("primary_tumor") and ctx.rng.random() < 0.8:
            name = f"{name} {P.pick(ctx.rng, P.LATERALITY[lat])}"
        written = ""
        if code and ctx.style["codes"] and ctx.rng.random() < self.cfg.code_written.get("diagnosis", 0.0):
            written = self._written_icd(ctx, code, pinned, section)
        if code and code.startswith("Z"):
            date_s, date_g = "", None
        elif ed:
            date_s, date_g = self._date(ctx, _d(f.get("date")), 0.7, ctx.style["history_date_style"])
        else:
            date_s, date_g = self._date(ctx, _d(f.get("date")), 0.15, ctx.style["history_date_style"])
        gold_code = written or pinned
        if gold_code and assertion == "present":
            ctx.held_icd.add(gold_code)
        if code and assertion == "present":
            ctx.held_icd.add(code)
        gold = {"text": name, "icd10gm": gold_code, "role": role, "date": date_g}
        say = {"name": name, "code": written, "date": date_s, "role": role or ""}
        say["course"] = (
            "leading"
            if role == "main"
            else "chronic"
            if code and self._chronic(code) and not extra.get("primary_tumor")
            else "acute"
        )
        dat = name_dative(name)
        if dat:
            say["name_dat"] = dat
        if extra.get("primary_tumor") and assertion != "historical" and ctx.main_named is None:
            ctx.main_named = (base_name, gold_code, written)
        if extra.get("primary_tumor") and code:
            ctx.tumor_named.setdefault(code[:3], (base_name, gold_code, written))
        return self._add(ctx, "diagnosis", section, assertion, gold, say)

    def _chronic(self, code: str) -> bool:
        """A comorbidity known before the stay (the cohort's comorbidity ICD codes, at 3 characters)."""
        if self._chronic_codes is None:
            self._chronic_codes = {c.icd[:3] for c in self.cat.comorbidities}
        return code[:3] in self._chronic_codes
