"""Experiment configurations shipped with operando (demo presets, example beamline)."""
