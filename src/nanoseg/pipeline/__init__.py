"""The DVC stages and the orchestration they run: cross-validation and the Optuna search."""
