"""Extractors: letter text -> `clinsynth.schema.ClinicalExtraction` (the extract stage calls them).

`rules.RulesExtractor` is the dictionary/pattern baseline; the LLM extractors live in their own modules.
"""
