"""Packaged terminology tables (data only; see ../README.md and manifest.json)."""
