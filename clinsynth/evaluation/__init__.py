"""Scoring extractions against gold (design §6): `strict` (the headline) and `pigeon_compat` (the
study's rules, to stand beside its published table), per category, with bootstrap intervals.

Modules: normalize (what "equal" means per value kind), items (a schema-v2 extraction -> the
comparable items and sets of every category, columnar with Arrow), strict, pigeon, bootstrap,
support (codes not in the catalogue / not supported by the letter), docs (gold + predictions of a
document set), scorer (both modes for one document set), report (metrics.json, report.md,
errors.jsonl), plots.
"""
