"""The random sample generator: letter recipes (facts, sections, phrasing) and their gold labels."""
