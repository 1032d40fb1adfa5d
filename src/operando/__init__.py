"""operando: live operando battery spectroscopy at a soft X-ray beamline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from operando.lazy import exports

if TYPE_CHECKING:  # what an editor and pyright see; at run time each loads on first use
    from operando.align import Alignment, PotentiostatHistory, align_window
    from operando.analysis.references import References
    from operando.analysis.valence import fit_scan
    from operando.config import ConfigError, ExperimentConfig, load_config
    from operando.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
    from operando.store.reader import Run, open_run
    from operando.store.writer import RunStore

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
    "References": "operando.analysis.references",
    "Run": "operando.store.reader",
    "RunStore": "operando.store.writer",
    "align_window": "operando.align",
    "decode": "operando.protocol",
    "encode": "operando.protocol",
    "fit_scan": "operando.analysis.valence",
    "load_config": "operando.config",
    "open_run": "operando.store.reader",
}

__all__ = [
    "PROTOCOL_VERSION",
    "Alignment",
    "ConfigError",
    "ExperimentConfig",
    "Message",
    "PotentiostatHistory",
    "ProtocolError",
    "References",
    "Run",
    "RunStore",
    "align_window",
    "decode",
    "encode",
    "fit_scan",
    "load_config",
    "open_run",
]


assert sorted(__all__) == sorted(_EXPORTS)


__getattr__ = exports(__name__, _EXPORTS)
