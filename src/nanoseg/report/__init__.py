"""Figures: learning curves, error plots and overlays."""
