"""Orchestration only: stage plan, submitit executors, run folders, identity, status.

The clinical work lives in `clinsynth`; this package decides where and how often it runs.
"""
