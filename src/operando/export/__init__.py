"""Exports of a recorded run into the formats the field reads: NeXus/HDF5, event-model
documents (for databroker/Tiled), and a Tiled server. One module per format."""

from __future__ import annotations

from collections.abc import Callable

FORMATS = ("nexus", "documents", "tiled")
Progress = Callable[[int, int], None]  # (done, total): what long work reports to a progress bar
