"""operando: live operando battery spectroscopy at a soft X-ray beamline."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Where each public name lives. Loaded on first use, so a process that needs one small part
# (the run store's writer) does not import numpy and the analysis to start.
_EXPORTS = {
    "PROTOCOL_VERSION": "operando.protocol",
    "Alignment": "operando.align",
    "ConfigError": "operando.config",
    "ExperimentConfig": "operando.config",
    "Message": "operando.protocol",
    "PotentiostatHistory": "operando.align",
    "ProtocolError": "operando.protocol",
    "RunStore": "operando.store",
    "align_window": "operando.align",
    "decode": "operando.protocol",
    "encode": "operando.protocol",
    "load_config": "operando.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'operando' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
