"""Instrument files read in a worker process.

A library can crash on a damaged file: libhdf5 segfaults on some HDF5 files with a few bytes
overwritten (``bench/fuzz.py`` found it), and a crash in the driver's own process would stop
the source. Read in a worker, a crash or a read that never returns takes only the worker: the
file is refused, naming what happened, and a new worker reads the next one.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping
from concurrent.futures import TimeoutError
from pathlib import Path

import pebble
from operando.drivers.scan_formats import RixsRow, Scan, read_scan_file

from operando.scanfile import ScanFileError

READ_TIMEOUT_S = 120.0  # a scan file of a few MB reads in well under a second


class IsolatedReader:
    """``read_scan_file`` in one worker process, started on first use and replaced when it dies
    or overruns. Blocking: call ``read`` from a thread."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pool: pebble.ProcessPool | None = None

    def read(
        self, path: Path, fmt: str, columns: Mapping[str, str], edge: str | None
    ) -> list[Scan | RixsRow]:
        if self._pool is None:
            # spawn, not fork: the driver has threads and a ZeroMQ context
            spawn = multiprocessing.get_context("spawn")
            self._pool = pebble.ProcessPool(max_workers=1, context=spawn)
        reading = self._pool.schedule(
            read_scan_file, args=(path, fmt, dict(columns), edge), timeout=self.timeout_s
        )
        try:
            return reading.result()
        except pebble.ProcessExpired as e:
            raise ScanFileError(
                f"{path}: the reader process died reading it (exit code {e.exitcode}); "
                "a damaged HDF5 file can crash libhdf5"
            ) from None
        except TimeoutError:
            raise ScanFileError(
                f"{path}: not read within {self.timeout_s:g} s; the reader process was stopped"
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None
