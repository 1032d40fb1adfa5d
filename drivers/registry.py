"""The one place that names every driver: ``operando driver NAME`` looks drivers up here.

Each entry is a module with ``DEFAULT_NAME``, ``add_arguments(parser)`` and
``from_args(args, opts) -> Driver``; modules are imported only when their driver is run, so
an optional driver's dependencies are needed only by those who use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DRIVERS: dict[str, tuple[str, str]] = {
    "sim-potentiostat": (
        "operando.drivers.sim.sim_potentiostat",
        "simulated potentiostat driving a cell model (protocol from TOML)",
    ),
    "sim-spectrometer": (
        "operando.drivers.sim.sim_spectrometer",
        "simulated soft X-ray spectrometer (XAS TEY/TFY, RIXS) on the same cell",
    ),
    "eclab": (
        "operando.drivers.eclab_file",
        "EC-Lab .mpt export: follow a file being written (--follow) or replay it (.mpr too)",
    ),
    "scan-files": (
        "operando.drivers.scan_files",
        "a folder of beamline scan files (column text, NXxas, RIXS rows) published as they appear",
    ),
    "palmsens": (
        "operando.drivers.palmsens",
        "a PalmSens MethodSCRIPT instrument (serial or TCP): uploads the steps, reads the data",
    ),
    "bluesky": (
        "operando.drivers.bluesky",
        "a bluesky RunEngine's documents from its 0MQ Proxy (msgpack or JSON) as XAS scans",
    ),
}


def load_driver(name: str) -> ModuleType:
    try:
        module, _ = DRIVERS[name]
    except KeyError:
        raise KeyError(f"no driver named {name!r}; known drivers: {', '.join(DRIVERS)}") from None
    return importlib.import_module(module)
