"""One thin entry point per ``dvc.yaml`` stage: ``python -m nanoseg.pipeline.stages.<name>``."""
