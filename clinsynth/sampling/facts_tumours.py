"""Tumours of a stay: entity, histology, grading, TNM per axis, stages, markers, ECOG and status."""

from __future__ import annotations

from typing import Any

from clinsynth.sampling import phrases as P
from clinsynth.sampling.base import (
    ICD10GM_SYSTEMS,
    ICDO3_SYSTEMS,
    LOINC_SYSTEMS,
    SamplerBase,
    _Ctx,
    _d,
    _tnm_ok,
    _uicc_ok,
)
from clinsynth.schema import Assertion


class TumourFacts(SamplerBase):
    """Tumours of a stay: entity, histology, grading, TNM per axis, stages, markers, ECOG and status."""

    # ------------------------------------------------------------------ tumours
    def _tumor_groups(self, facts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Tumour facts by tumour. Each stay has its own primary-tumour Condition (`extra.tumor`), so
        groups are keyed by that Condition's code: one tumour keeps its code across stays."""
        if self._code_of is None:
            self._code_of = {}
            for groups_ in self._by_enc.values():
                for f in groups_.get("diagnosis", ()):
                    x = self._x(f)
                    if x.get("primary_tumor"):
                        tid = x.get("tumor") or f["resource_id"]
                        self._code_of[tid] = str(f.get("code") or f["resource_id"])
        groups: dict[str, list[dict[str, Any]]] = {}
        keys = self._group_keys
        for f in facts:
            key = keys.get(id(f), "")
            if key == "":
                x = self._x(f)
                tid = x.get("tumor") or ""
                skip = f["category"] == "diagnosis" and not x.get("primary_tumor")
                key = keys[id(f)] = None if skip else self._code_of.get(tid, tid or "_")
            if key is not None:
                groups.setdefault(key, []).append(f)
        return groups

    def _tumors(
        self,
        ctx: _Ctx,
        known: list[dict[str, Any]],
        earlier: list[dict[str, Any]],
        main: dict[str, Any] | None,
    ) -> None:
        """The current tumour (its latest staging known at discharge), then earlier tumours as history."""
        groups = self._tumor_groups(known + earlier)
        current_key = str(main.get("code") or main["resource_id"]) if main else None
        if current_key not in groups:  # a complication is the main diagnosis: the stay's tumour is current
            own_tumour = next(
                (
                    str(f.get("code") or f["resource_id"])
                    for f in known
                    if f["category"] == "diagnosis"
                    and self._x(f).get("primary_tumor")
                    and f.get("assertion") != "historical"
                ),
                None,
            )
            current_key = own_tumour if own_tumour in groups else "_" if "_" in groups else current_key
        own_keys = {str(f.get("code")) for f in known if f["category"] == "diagnosis"} | {"_"}
        for key, facts in sorted(groups.items(), key=lambda kv: (kv[0] != current_key, kv[0])):
            if key != current_key and current_key and key[:3] == current_key[:3] and key[:1] in "CD":
                continue  # the same tumour under another code: one name per tumour per letter
            if key == current_key:
                assertion: Assertion = (
                    "suspected" if main is not None and main.get("assertion") == "suspected" else "present"
                )
            elif key not in own_keys or all(
                f.get("assertion") == "historical" for f in facts if f["category"] == "diagnosis"
            ):
                if ctx.rng.random() >= max(self.cfg.historical, 0.6):
                    continue
                assertion = "historical"
            else:
                assertion = "present"
            self._tumor_fact(ctx, facts, assertion, current=key == current_key)

    def _tumor_fact(
        self, ctx: _Ctx, facts: list[dict[str, Any]], assertion: Assertion, *, current: bool
    ) -> None:
        rng = ctx.rng
        latest: dict[str, dict[str, Any]] = {}
        markers: dict[str, dict[str, Any]] = {}
        stages: dict[str, dict[str, Any]] = {}
        nodes: dict[str, dict[str, Any]] = {}
        for f in sorted(facts, key=lambda f: (f.get("date") or "", f["resource_id"])):
            c = f["category"]
            if c == "marker_status":
                markers[f.get("code") or f.get("text") or f["resource_id"]] = f
            elif c == "stage_other":
                stages[self._x(f).get("system") or "other"] = f
            elif c == "lymph_nodes":
                nodes[self._x(f).get("nodes") or "positive"] = f
            else:
                latest[c] = f
        dx = latest.get("diagnosis")
        histo = latest.get("histology")
        if dx is None and histo is None:
            return
        section = self._place(ctx, "tumor")
        if section is None:
            section = "diagnosen"
        gold: dict[str, Any] = {}
        say: dict[str, Any] = {"staging": "", "date": ""}
        # entity: the name of the tumour as written (pins the ICD code at its level)
        code = self._slot_code(dx, ICD10GM_SYSTEMS, "tumor") if dx else None
        entity_name = None
        if current and ctx.main_named is not None:
            # one tumour, one name: the tumour block repeats the main diagnosis as written there
            entity_name, main_code, main_written = ctx.main_named
            gold["icd10gm"] = main_code
            say["code"] = main_written
        elif code and code[:3] in ctx.tumor_named:  # a second tumour: the name its diagnosis line wrote
            entity_name, dx_code, dx_written = ctx.tumor_named[code[:3]]
            gold["icd10gm"] = dx_code
            say["code"] = dx_written
        elif code:
            got = self._name(ctx, "icd10gm", code, prefer_specific=0.3)
            if got:
                entity_name, pinned = got
                written = ""
                if ctx.style["codes"] and rng.random() < self.cfg.code_written.get("tumor", 0.0):
                    written = self._written_icd(ctx, code, pinned, "diagnosen")
                gold["icd10gm"] = written or pinned
                say["code"] = written
        if entity_name is None and code:
            fallback = self.lex.fallback_name("icd10gm", code)
            if fallback is not None:
                entity_name, gold["icd10gm"] = fallback
        if entity_name is None:
            ent = self._entity_of_icd.get(code or "")
            entity_name = ent.label_de if ent else (dx.get("text") if dx else None) or "Tumorerkrankung"
            self.stats["tumor_entity_without_code"] += 1
        gold["entity"] = entity_name
        say["entity"] = entity_name
        say["name"] = entity_name
        extra_dx = self._x(dx) if dx else {}
        lat = extra_dx.get("laterality")
        if lat in P.LATERALITY:  # always: the diagnosis line may write the side of the same tumour
            gold["laterality"] = lat
            say["laterality"] = P.pick(rng, P.LATERALITY[lat])
        topo = extra_dx.get("topography") or (self._x(histo).get("topography") if histo else None)
        if topo and rng.random() < self.cfg.code_written.get("topography", 0.0):
            held = self.lex.in_catalogue("topography", topo)
            if held == topo:
                gold["topography"] = topo
                say["topography"] = topo
        # a suspected tumour has no tissue yet: at most a clinical TNM, no histology, grading, markers, stage
        tissue = assertion != "suspected"
        if tissue and histo is not None and self._slot_code(histo, ICDO3_SYSTEMS, "histology"):
            site = str(gold.get("icd10gm") or code or "")[:3] or None
            got = self._name(ctx, "morphology", histo["code"], prefer_specific=0.7, site=site)
            if got:
                hname, hpinned = got
                gold["histology"] = hname
                say["histology"] = hname
                written = histo["code"] if rng.random() < self.cfg.code_written.get("morphology", 0.0) else ""
                say["morphology"] = written
                gold["morphology"] = written or hpinned
        grading = latest.get("grading")
        if tissue and grading and grading.get("code") in P.GRADING_TEXT and rng.random() < 0.85:
            g = str(grading["code"])
            gold["grading"] = f"G{g}" if g in "1234X" else g
            say["grading"] = P.GRADING_TEXT[g]
        if assertion in ("present", "suspected") or rng.random() < 0.5:
            self._tnm(ctx, latest, nodes, gold, say)
            if not tissue and any(
                isinstance(v, dict) and (v.get("prefix") or "c") != "c"
                for v in (gold.get("tnm") or {}).values()
            ):
                for key in ("tnm", "staging", "date"):
                    gold.pop(key, None)
                    say[key] = ""
            elif not tissue and gold.get("tnm"):
                for axis in ("l", "v", "pn", "r"):  # no L/V/Pn/R nor node counts without a specimen
                    gold["tnm"].pop(axis, None)
                if "n" in gold["tnm"]:
                    gold["tnm"]["n"].pop("nodes", None)
                tnm_g = gold["tnm"]
                say["tnm"] = " ".join(
                    f"{tnm_g[a].get('prefix') or ''}{tnm_g[a]['value']}"
                    for a in ("t", "n", "m")
                    if a in tnm_g
                )
            if tissue:
                self._stages(ctx, latest, stages, gold, say)
        if current and tissue:
            self._markers(ctx, markers, gold, say)
            self._marker_values(ctx, gold, say)
            ecog = latest.get("ecog")
            if ecog and str(ecog.get("code")).isdigit() and rng.random() < 0.7:
                gold["ecog"] = int(ecog["code"])
                say["ecog"] = P.pick(rng, ("ECOG {v}", "ECOG-Status {v}", "ECOG PS {v}")).format(
                    v=ecog["code"]
                )
        status = latest.get("tumor_status")
        if current and status and status.get("code") == "new":
            ctx.tumor_new = True
        if status and status.get("code") not in ("new", "recurrence") and not ctx.prior_therapy:
            status = None  # a response only after a therapy
        if assertion == "historical":
            gold["status"] = "complete_remission"
            say["status"] = P.pick(rng, P.TUMOR_STATUS["complete_remission"])
        elif status and status.get("code") in P.TUMOR_STATUS and rng.random() < 0.7:
            gold["status"] = status["code"]
            say["status"] = P.pick(rng, P.TUMOR_STATUS[status["code"]])
        self._add(ctx, "tumor", section, assertion, gold, say)

    def _tnm(
        self,
        ctx: _Ctx,
        latest: dict[str, dict[str, Any]],
        nodes: dict[str, dict[str, Any]],
        gold: dict[str, Any],
        say: dict[str, Any],
    ) -> None:
        rng = ctx.rng
        axes = [(a, latest.get(f"tnm_{a}")) for a in ("t", "n", "m")]
        if not any(f for _, f in axes) or rng.random() < 0.1:
            return
        layout = ctx.style["tnm_layout"]
        parts: list[str] = []
        tnm: dict[str, Any] = {}
        first_prefix = None
        staged: dict[str, Any] | None = None
        for axis, f in axes:
            if f is None or not f.get("code"):
                continue
            staged = staged or f
            value = str(f["code"])
            value = value if value[:1].upper() == axis.upper() else f"{axis.upper()}{value}"
            prefix = (self._x(f).get("prefix") or "").lower() or None
            if prefix not in ("c", "p", "yp", "r", "a", "u"):
                prefix = None
            written_prefix = prefix
            if layout == "prefix_once" and first_prefix is not None:
                written_prefix = None  # "pT3 N1 M0": the prefix is written once, the others carry none
            first_prefix = first_prefix or prefix
            piece = f"{written_prefix or ''}{value}"
            entry: dict[str, Any] = {"prefix": written_prefix, "value": value}
            if axis == "n" and "positive" in nodes and "examined" in nodes and rng.random() < 0.7:
                pos = nodes["positive"].get("value_num")
                exa = nodes["examined"].get("value_num")
                if pos is not None and exa is not None:
                    entry["nodes"] = f"{int(pos)}/{int(exa)}"
                    piece += f" ({entry['nodes']})" if layout != "compact" else f"({entry['nodes']})"
            tnm[axis] = {k: v for k, v in entry.items() if v is not None}
            parts.append(piece)
        for axis, key in (("l", "tnm_l"), ("v", "tnm_v"), ("pn", "tnm_pn"), ("r", "tnm_r")):
            f = latest.get(key)
            if f and f.get("code") and rng.random() < 0.85:
                tnm[axis] = str(f["code"])
                parts.append(str(f["code"]))
        if not parts:
            return
        if not _tnm_ok(tnm):  # a foreign value (T4b(m)) the schema's pattern refuses: leave TNM out
            self.stats["tnm_not_schema"] += 1
            return
        gold["tnm"] = tnm
        say["tnm"] = (
            ("" if layout == "compact" else " ").join(parts) if layout != "spaced" else " ".join(parts)
        )
        if staged is not None:
            ex = self._x(staged)
            if ex.get("staging") in ("initial", "current") and rng.random() < 0.6:
                gold["staging"] = ex["staging"]
                say["staging"] = ex["staging"]
            date_s, date_g = self._date(ctx, _d(staged.get("date")), 0.5, ctx.style["history_date_style"])
            if date_g:
                gold["date"] = date_g
                say["date"] = date_s

    def _stages(
        self,
        ctx: _Ctx,
        latest: dict[str, dict[str, Any]],
        stages: dict[str, dict[str, Any]],
        gold: dict[str, Any],
        say: dict[str, Any],
    ) -> None:
        rng = ctx.rng
        uicc = latest.get("uicc_stage")
        if uicc and uicc.get("code") and rng.random() < 0.8:
            value = str(uicc["code"]).removeprefix("Stadium ").strip()
            if _uicc_ok(value):
                gold["uicc_stage"] = value
                say["stage"] = P.pick(rng, P.STAGE_WRITTEN["UICC"]).format(v=value)
        written = []
        out = []
        for system, f in stages.items():
            value = str(f.get("code") or "").strip()
            if not value or len(value) > 16 or rng.random() >= 0.85:
                continue
            sys_key = system if system in P.STAGE_WRITTEN else "other"
            out.append({"system": sys_key, "value": value})
            written.append(P.pick(rng, P.STAGE_WRITTEN[sys_key]).format(v=value))
        if out:
            gold["stages"] = out
            say["stages"] = written

    def _markers(
        self, ctx: _Ctx, markers: dict[str, dict[str, Any]], gold: dict[str, Any], say: dict[str, Any]
    ) -> None:
        rng = ctx.rng
        out, written = [], []
        for f in list(markers.values())[:4]:
            if rng.random() >= 0.8:
                continue
            ex = self._x(f)
            name = self._own_words(f.get("text") or f.get("display"))
            if not name or len(name) > 40:
                continue
            m: dict[str, Any] = {"name": name}
            code = self._slot_code(f, LOINC_SYSTEMS, "marker") if f.get("system") in LOINC_SYSTEMS else None
            if code and self.cat.loinc.lookup(code):
                m["loinc"] = code
            pieces = [name]
            if f.get("value_num") is not None:
                m["value"] = f["value_num"]
                unit = f.get("unit") or ""
                m["unit"] = unit or None
                pieces.append(
                    f"{P.format_number(f['value_num'])} {P.pick(rng, P.unit_variants(unit))}".strip()
                )
            result = ex.get("result")
            if result in P.MARKER_RESULT:
                m["result"] = result
                pieces.append(P.pick(rng, P.MARKER_RESULT[result]))
            if ex.get("text"):
                m["text"] = ex["text"]
                pieces.append(str(ex["text"]))
            if len(pieces) == 1:
                continue
            out.append({k: v for k, v in m.items() if v is not None})
            written.append(" ".join(pieces))
        if out:
            gold["markers"] = out
            say["markers"] = written

    def _marker_values(self, ctx: _Ctx, gold: dict[str, Any], say: dict[str, Any]) -> None:
        """The stay's latest tumour-marker values (CEA 4,1 ng/ml) in the tumour block, up to two."""
        rng = ctx.rng
        latest: dict[str, dict[str, Any]] = {}
        for f in sorted(ctx.marker_labs, key=lambda f: (f.get("date") or "", f["resource_id"])):
            latest[str(f.get("code"))] = f
        for code, f in list(latest.items())[:2]:
            if rng.random() >= 0.5:
                continue
            lab = self.cat.labs[code]
            name = lab.name_de
            value_s = P.format_number(float(f["value_num"]), lab.decimals)
            unit = f.get("unit") or ""
            shown = P.pick(rng, P.unit_variants(unit)) if unit else ""
            marker: dict[str, Any] = {"name": name, "value": float(value_s.replace(",", "."))}
            if self.lex.pinned_code("loinc", name) == code:
                marker["loinc"] = code
            if shown:
                marker["unit"] = unit
            gold.setdefault("markers", []).append(marker)
            say.setdefault("markers", []).append(f"{name} {value_s} {shown}".strip())
            ctx.in_tumor.add(id(f))
