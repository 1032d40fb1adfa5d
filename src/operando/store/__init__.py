"""The run store: one owner of a run directory's files and tables.

- ``files``: every file name of a run directory;
- ``schema``: the SQLite tables, their statements, how the file is opened;
- ``rows``: one typed row per table, from which the INSERTs are made;
- ``writer`` (``RunStore``): the monitor's side, handing rows to ``writer_process``;
- ``reader`` (``Run``, ``open_run``): the one read-only reader, for notebooks, the dashboard,
  the exports, ``inspect``, restore, replay and reprocess;
- ``follow``: what the dashboard reads as a run grows;
- ``summary``: ``operando inspect``.

No SQL lives outside this package. Names load on first use: the writer process imports this
package and must not pay for pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from operando.lazy import exports

if TYPE_CHECKING:  # what an editor and pyright see; at run time each loads on first use
    from operando.store.reader import (
        RecordedSpectrum,
        Run,
        iter_raw,
        load_run_config,
        lost_ranges,
        open_run,
        read_raw,
    )
    from operando.store.schema import StoreError, open_readonly
    from operando.store.writer import RunStore, Summary, save_run_config

_EXPORTS = {
    "Run": "operando.store.reader",
    "RecordedSpectrum": "operando.store.reader",
    "RunStore": "operando.store.writer",
    "StoreError": "operando.store.schema",
    "Summary": "operando.store.writer",
    "iter_raw": "operando.store.reader",
    "load_run_config": "operando.store.reader",
    "lost_ranges": "operando.store.reader",
    "open_readonly": "operando.store.schema",
    "open_run": "operando.store.reader",
    "read_raw": "operando.store.reader",
    "save_run_config": "operando.store.writer",
}

__all__ = [
    "RecordedSpectrum",
    "Run",
    "RunStore",
    "StoreError",
    "Summary",
    "iter_raw",
    "load_run_config",
    "lost_ranges",
    "open_readonly",
    "open_run",
    "read_raw",
    "save_run_config",
]
assert sorted(__all__) == sorted(_EXPORTS)


__getattr__ = exports(__name__, _EXPORTS)
