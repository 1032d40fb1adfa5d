"""Exports of a recorded run into the formats the field reads: NeXus/HDF5, event-model
documents (for databroker/Tiled), and a Tiled server. One module per format."""

from __future__ import annotations

FORMATS = ("nexus", "documents", "tiled")
