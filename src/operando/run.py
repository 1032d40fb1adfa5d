"""A run directory: the store, the configuration it was recorded with, and its logs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from operando.config import ConfigError, ExperimentConfig, parse_config

CONFIG_FILE = "config.json"  # the experiment configuration the run was recorded with


def save_run_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(cfg)))


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory?")
    return parse_config(msgspec.json.decode(path.read_bytes()), str(path))
