"""Variability indices and point-lens (microlensing) fits on point arrays (no I/O)."""
