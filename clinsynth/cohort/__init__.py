"""The built-in synthetic cancer cohort: realistic German oncology inpatient courses as MII FHIR."""
