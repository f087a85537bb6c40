"""Scores against manual masks: pixel and instance metrics, scoring, error analysis, the test set."""
