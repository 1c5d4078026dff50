"""FHIR R4 conventions (MII profiles, code systems) and fast validation with fhir.resources (R4B models)."""
