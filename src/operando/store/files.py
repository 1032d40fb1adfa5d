"""Every file of a run directory, named in one place (light: the writer process imports it).

```
RUN_DIR/
  run.sqlite      the index of every message and the derived tables (schema.py)
  raw/NNNNNN.log  every message exactly as received (operando.rawlog)
  config.json     the experiment configuration the run was recorded with
  monitor.json    the endpoints of the monitor recording it (while one does)
  writer.lock     held by the store's writer process while it writes
  demo.json       the processes of an `operando demo` (who is running)
  logs/           the demo's process logs
  references/     the simulator's references the demo exports for the monitor to read
  publish/NAME.json  how far `operando publish` got sending the run to NAME (nats): its target
                  and cursor, saved after the broker acknowledged
  RUN.nxs         `operando export --format nexus`
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from operando.rawlog import RAW_DIR

STORE_FILE = "run.sqlite"
CONFIG_FILE = "config.json"
MONITOR_FILE = "monitor.json"
LOCK_FILE = "writer.lock"
DEMO_FILE = "demo.json"
LOGS_DIR = "logs"
REFERENCES_DIR = "references"
PUBLISH_DIR = "publish"

__all__ = [
    "CONFIG_FILE",
    "DEMO_FILE",
    "LOCK_FILE",
    "LOGS_DIR",
    "MONITOR_FILE",
    "PUBLISH_DIR",
    "RAW_DIR",
    "REFERENCES_DIR",
    "STORE_FILE",
    "is_run_dir",
    "nexus_path",
    "read_monitor_file",
    "store_path",
    "write_monitor_file",
]


def store_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STORE_FILE


def is_run_dir(run_dir: str | Path) -> bool:
    return store_path(run_dir).exists()


def nexus_path(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir / f"{run_dir.name}.nxs"


def write_monitor_file(run_dir: Path, info: dict[str, Any]) -> None:
    (run_dir / MONITOR_FILE).write_text(json.dumps(info, indent=2))


def read_monitor_file(run_dir: Path) -> dict[str, Any] | None:
    """The endpoints of the monitor that records (or last recorded) this run; None if none."""
    path = Path(run_dir) / MONITOR_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
