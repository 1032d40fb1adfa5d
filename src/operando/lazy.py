"""A package's public names, each imported on first use (PEP 562).

``operando`` and ``operando.store`` export names from their modules this way, so a process
that needs one small part (the store's writer process) does not import numpy, pandas and the
analysis to start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds each name of ``where`` (name -> module) on first use."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
