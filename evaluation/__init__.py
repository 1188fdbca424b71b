"""Reproduce the paper's comparison: RAEE against honest baselines, through the running services."""
