"""clinsynth: synthetic German oncology letters -> fine-tuned extractors -> FHIR.

The domain library. It never imports Hydra or submitit: functions take plain
configs and paths; `launchers` decides where and how often they run.
"""

__version__ = "0.1.0"
