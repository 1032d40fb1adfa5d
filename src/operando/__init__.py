"""operando: live operando battery spectroscopy at a soft X-ray beamline."""

from operando.align import Alignment, PotentiostatHistory, align_window
from operando.config import ConfigError, ExperimentConfig, load_config
from operando.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from operando.store import RunStore

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Alignment",
    "ConfigError",
    "ExperimentConfig",
    "Message",
    "PotentiostatHistory",
    "ProtocolError",
    "RunStore",
    "align_window",
    "decode",
    "encode",
    "load_config",
]
