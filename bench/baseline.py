"""The transport baseline every benchmark divides by: ``shared/bench/bare_zmq.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SHARED_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "bare_zmq.py"


def load_bare_zmq() -> ModuleType:
    if not SHARED_BENCH.exists():
        raise SystemExit(f"baseline {SHARED_BENCH} not found: run from a checkout beside shared/")
    spec = importlib.util.spec_from_file_location("bare_zmq", SHARED_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
