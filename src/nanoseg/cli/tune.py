"""``nanoseg tune``: the Optuna search over learning rate and batch size (:mod:`nanoseg.pipeline.tuning`)."""

from __future__ import annotations

from nanoseg.config import load_params
from nanoseg.pipeline.tuning import tune


def tune_command(args) -> int:
    """``nanoseg tune [--trials N] [--storage URL] [--study NAME] [--timeout MINUTES]``."""
    params = load_params()
    tune(params, getattr(args, "trials", None), getattr(args, "storage", None), getattr(args, "study", None),
         getattr(args, "timeout", None))
    return 0
