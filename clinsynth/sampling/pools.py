"""Negated, suspected and historical facts drawn from clinically plausible pools (not from the stay)."""

from __future__ import annotations

from typing import Any

from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    _RESPONSES,
    _count,
    _Ctx,
)
from clinsynth.sampling.facts_therapy import TherapyFacts
from clinsynth.schema import Assertion
from clinsynth.terminology.names import name_dative


class AssertionPools(TherapyFacts):
    """Negated, suspected and historical facts drawn from clinically plausible pools (not from the stay)."""

    # ------------------------------------------------------------------ assertion pools
    def _pool(
        self,
        ctx: _Ctx,
        facts: list[dict[str, Any]],
        main: dict[str, Any] | None,
        earlier: list[dict[str, Any]],
        sex: str,
    ) -> None:
        """Negated, suspected and historical facts beyond the record's own: ruled-out metastases of the
        entity, suspected and past complications, drugs not given, intolerances, procedures not needed."""
        rng = ctx.rng
        cfg = self.cfg
        ent = self._entity_of_icd.get((main or {}).get("code") or "")
        held = ctx.held_icd | {str(f["code"]) for f in facts if f.get("code")}
        # never rule out nodal metastases of a node-positive tumour, nor distant ones of an M1 tumour
        # without named sites
        for f in ctx.facts:
            tnm = f.gold.get("tnm") if f.kind == "tumor" else None
            if tnm and tnm.get("n", {}).get("value", "N0")[:2] not in ("N0", "NX"):
                held.add("C77")
            if (
                tnm
                and tnm.get("m", {}).get("value", "M0")[:2] == "M1"
                and not any(h.startswith(("C78", "C79")) for h in held)
            ):
                held.update(("C78", "C79"))
        # never rule out what the stay's own labs show (no "kein Anhalt für Anämie" beside Hb 9,1 ↓)
        held |= {code for lab in ctx.lab_flags for code in P.SHOWN_BY_LAB.get(lab, ())}
        main_code = str((main or {}).get("code") or "")
        heme = "C81" <= main_code[:3] <= "C96"
        # no metastasis or carcinosis pool for blood cancers; chemotherapy complications only after a therapy
        mets = [] if heme else [c for c, _ in (ent.metastasis_sites if ent else [])] + list(P.METASTASES)
        mets = list(dict.fromkeys(mets))
        comps = [c for c in P.COMPLICATIONS if ctx.prior_therapy or c not in P.THERAPY_COMPLICATIONS]
        ruled_out = ctx.ruled_out

        def free(code: str) -> bool:
            """Neither the code, an ancestor nor a descendant of it is stated present."""
            return code not in covered and not any(code[:n] in held for n in (3, 5))

        def possible(code: str) -> bool:
            """Not ruled out by the stay's labs (never suspected nor asserted against them)."""
            return not code.startswith(ruled_out)

        covered = {h[:3] for h in held} | {h[:5] for h in held} | held

        n_neg = _count(rng, cfg.negated_counts)
        n_susp = _count(rng, cfg.suspected_counts)
        neg_pool = [c for c in mets[:6] + comps if free(c)]
        rng.shuffle(neg_pool)
        for code in neg_pool[:n_neg]:
            self._pool_diagnosis(ctx, code, "negated")
            held.add(code)
            covered.update(code[:n] for n in (3, 5, 6))
        susp_pool = [c for c in mets[:4] + comps[:12] if free(c) and possible(c)]
        rng.shuffle(susp_pool)
        for code in susp_pool[:n_susp]:
            self._pool_diagnosis(ctx, code, "suspected")
            held.add(code)
            covered.update(code[:n] for n in (3, 5, 6))
        # earlier illnesses: the record's earlier complications first, then typical ones
        hist = [
            str(f["code"])
            for f in earlier
            if f["category"] == "diagnosis" and f.get("code") and not str(f["code"]).startswith(("C", "Z"))
        ]
        hist = [c for c in dict.fromkeys(hist) if free(c)] or [
            c
            for c in P.HISTORY
            if free(c)
            and (ctx.prior_therapy or c not in P.THERAPY_COMPLICATIONS)
            and not (heme and c[0] == "C")
        ]
        if hist and rng.random() < cfg.historical:
            self._pool_diagnosis(ctx, P.pick(rng, hist), "historical")
        other = cfg.negated_other
        if rng.random() < other.get("procedure", 0.0):
            code = P.pick(rng, P.NEGATABLE_PROCEDURES)
            section = self._place(ctx, "procedure")
            got = self._name(ctx, "ops", code, prefer_specific=1.0)
            if section and got:
                self._add(
                    ctx,
                    "procedure",
                    section,
                    "negated",
                    {"text": got[0], "ops": got[1]},
                    {"name": got[0], "code": "", "date": ""},
                )
        if rng.random() < other.get("medication", 0.0):
            given = {f.gold.get("atc") for f in ctx.facts if f.kind == "medication"}
            options = [c for c in P.NEGATABLE_DRUGS if c not in given]
            if options:
                code = P.pick(rng, options)
                section = self._place(ctx, "medication:inpatient")
                got = self._drug_name(ctx, code, {}, 0.2)
                if section and got:
                    self._add(
                        ctx,
                        "medication",
                        section,
                        "negated",
                        {"name": got[0], "atc": got[1], "context": "inpatient"},
                        {"name": got[0], "context": "inpatient"},
                    )
        if rng.random() < other.get("allergy", 0.0):
            code = P.pick(rng, P.ALLERGENS)
            section = self._place(ctx, "medication:allergy")
            got = self._drug_name(ctx, code, {}, 0.3)
            if section and got:
                assertion: Assertion = "suspected" if rng.random() < 0.35 else "present"
                self._add(
                    ctx,
                    "medication",
                    section,
                    assertion,
                    {"name": got[0], "atc": got[1], "context": "allergy"},
                    {"name": got[0], "context": "allergy"},
                )
        has_earlier = any(f.kind == "tumor" and f.assertion == "historical" for f in ctx.facts)
        if main is not None and not has_earlier and rng.random() < other.get("earlier_tumor", 0.0):
            self._earlier_tumor(ctx, ent, sex)
        # a ruled-out relapse only after a treated tumour (never at a first diagnosis)
        if (
            main is not None
            and ctx.prior_therapy
            and not ctx.tumor_new
            and rng.random() < other.get("tumor", 0.0)
        ):
            section = self._place(ctx, "tumor")
            if section:
                name = P.pick(rng, ("Tumorrezidiv", "Lokalrezidiv"))
                self._add(
                    ctx,
                    "tumor",
                    section,
                    "negated",
                    {"entity": name, "status": "recurrence"},
                    {"entity": name, "name": name},
                )

    def _response_needs_written_therapy(self, ctx: _Ctx) -> None:
        """A response (CR/PR/SD/PD) is stated only when the letter itself shows an earlier therapy (a
        historical drug, radiotherapy or procedure, or a cycle > 1): a reader cannot judge it otherwise."""
        shown = any(
            (f.assertion == "historical" and f.kind in ("medication", "radiotherapy", "procedure"))
            or (f.kind == "medication" and str(f.say.get("cycle") or "1") not in ("", "1"))
            for f in ctx.facts
        )
        if shown:
            return
        for f in ctx.facts:
            if f.kind == "tumor" and f.assertion == "present" and f.gold.get("status") in _RESPONSES:
                del f.gold["status"]
                f.say["status"] = ""
                self.stats["response_without_written_therapy"] += 1

    def _earlier_tumor(self, ctx: _Ctx, current: Any, sex: str) -> None:
        """A second primary in the history ("Z.n. Mammakarzinom 2012, in Remission"): an entity other
        than the current one that fits the patient's sex."""
        rng = ctx.rng
        options = [
            e
            for e in self.cat.entities
            if e is not current and e.sex in ("any", sex) and e.has_tnm and e.key not in ("pancreas", "liver")
        ]
        if not options:
            return
        ent = P.pick(rng, options)
        got = self._name(ctx, "icd10gm", ent.icd[0][0][:3], prefer_specific=1.0)
        section = self._place(ctx, "tumor")
        if got is None or section is None:
            return
        name, pinned = got
        gold: dict[str, Any] = {"entity": name, "icd10gm": pinned, "status": "complete_remission"}
        say: dict[str, Any] = {"entity": name, "name": name, "code": ""}
        if rng.random() < 0.6:
            say["status"] = P.pick(rng, P.TUMOR_STATUS["complete_remission"])
        else:
            del gold["status"]
        self._add(ctx, "tumor", section, "historical", gold, say)

    def _pool_diagnosis(self, ctx: _Ctx, code: str, assertion: Assertion) -> None:
        got = self._name(ctx, "icd10gm", code, prefer_specific=1.0)
        section = self._place(ctx, "diagnosis")
        if got is None or section is None:
            return
        name, pinned = got
        written = ""
        if (
            assertion == "suspected"
            and ctx.style["codes"]
            and section == "diagnosen"
            and ctx.rng.random() < 0.4
        ):
            written = self._written_icd(ctx, code, pinned, section)
        date_s, date_g = ("", None)
        if assertion == "historical":
            date_s, date_g = self._date(ctx, None, 0.0)
        gold = {"text": name, "icd10gm": written or pinned, "date": date_g}
        self._add(
            ctx,
            "diagnosis",
            section,
            assertion,
            gold,
            {"name": name, "code": written, "date": date_s, "role": "", "course": "acute"}
            | ({"name_dat": dat} if (dat := name_dative(name)) else {}),
        )
