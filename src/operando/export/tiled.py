"""``operando export RUN --format tiled --uri URI``: the run written into a Tiled server.

Optional (``pip install 'operando[tiled]'``). One container per run, named after the run
directory, with the experiment as metadata; inside it the same content as the NeXus file:
``electrochemistry`` and ``events`` tables, a container per edge and channel (``mu``, ``raw``,
``I0`` and ``energy`` arrays, a ``spectra`` table of everything known per spectrum), and a
container per RIXS map (``counts``, ``excitation``, ``emission``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from operando import __version__
from operando.export import Progress
from operando.export.nexus import collect_spectra, nexus_name, stack_channel
from operando.export.tables import cycling_tables, units_of
from operando.store.reader import Run

TILED_MISSING = "writing to Tiled needs the tiled client: pip install 'operando[tiled]'"


class TiledExportError(RuntimeError):
    pass


def export_tiled(
    run_dir: str | Path, uri: str, *, api_key: str | None = None, progress: Progress | None = None
) -> str:
    """Write the run; return where it now lives on the server."""
    try:
        from tiled.client import from_uri
    except ImportError:
        raise TiledExportError(TILED_MISSING) from None
    client = from_uri(uri, api_key=api_key or os.environ.get("TILED_API_KEY"))
    with Run(run_dir) as run:
        if run.name in client:
            raise TiledExportError(f"{uri}: a run named {run.name!r} is already there")
        t0, t1 = run.time_range()
        node = client.create_container(
            key=run.name,
            metadata={
                "experiment": run.config.name,
                "description": run.config.description,
                "start_time": dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(),
                "end_time": dt.datetime.fromtimestamp(t1, dt.UTC).isoformat(),
                "program": f"operando {__version__}",
                "configuration": msgspec.to_builtins(run.config),
            },
        )
        cell = run.potentiostat()
        cell["t"] = cell["t"] - t0
        node.write_dataframe(cell, key="electrochemistry", metadata={"t": "s since start"})
        events = run.events()
        events["t"] = events["t"] - t0
        node.write_dataframe(events.astype({"source": str, "detail": str}), key="events")
        cycling = node.create_container(key="cycling", metadata={"t": "s since start"})
        for name, table in cycling_tables(run, t0).items():
            cycling.write_dataframe(table, key=name, metadata={"units": units_of(table)})
        xas, rixs = collect_spectra(run, progress)
        for (edge, channel), spectra in xas.items():
            st = stack_channel(spectra, channel, t0)
            g = node.create_container(
                key=nexus_name(f"{edge or 'unknown_edge'}_{channel}"),
                metadata={"edge": edge, "channel": channel, "signal": "mu", "labels": st.labels},
            )
            dims = ["spectrum", "energy"]
            g.write_array(st.energy, key="energy", metadata={"units": "eV"})
            for name, values in (("mu", st.mu), ("raw", st.raw), ("I0", st.i0)):
                g.write_array(values, key=name, dims=dims)
            table = pd.DataFrame({k: v for k, (v, _) in st.per_spectrum.items()})
            units = {k: u for k, (_, u) in st.per_spectrum.items() if u}
            g.write_dataframe(table, key="spectra", metadata={"units": units})
        for map_id, rows in rixs.items():
            rows = sorted(rows, key=lambda s: s.row_offset)
            g = node.create_container(key=nexus_name(f"rixs_{map_id}"), metadata=_rixs_meta(rows))
            g.write_array(np.vstack([s.arrays["counts"] for s in rows]), key="counts")
            g.write_array(np.concatenate([s.arrays["excitation"] for s in rows]), key="excitation")
            g.write_array(np.asarray(rows[0].arrays["emission"]), key="emission")
    return f"{uri.rstrip('/')}/{run.name}"


def _rixs_meta(rows: list[Any]) -> dict[str, Any]:
    return {"map_id": rows[0].map_id, "edge": rows[0].edge, "rows": len(rows), "units": "eV"}
