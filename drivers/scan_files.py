"""``operando driver scan-files DIR``: a beamline that writes each scan to a file, as a source.

The directory is polled (inotify does not see writes made on another machine over NFS/SMB,
which is how beamline data folders are usually shared). A file is read once it has stopped
changing for ``--settle`` seconds; an mda2ascii file that says ``Points completed = N of M``
with N < M waits until it is complete (or unchanged for ``--incomplete-after`` seconds: an
aborted scan, published marked incomplete). A file that changes after it was published is
published again as a new revision (``scan_id~2``). A file that cannot be read is reported with
the reason (log and ``status``) and tried again when it changes.

Times: by default from the files themselves: the scan ran from the modification time the
driver first saw on a growing file to its last modification (both read from the file server's
clock, so the window cannot come out reversed when the last write lands just as the file is
first seen); a file that appears complete is placed at its modification time (``--scan-seconds``
before it, when given). ``--times header`` uses the start the file states (mda2ascii ``Scan
time``) for scans read after the fact.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.isolated_reader import IsolatedReader
from operando.drivers.scan_formats import FORMATS, RixsRow, Scan

from operando.argtypes import non_negative, positive
from operando.protocol import RIXSRows, Spot, XASScan
from operando.scanfile import ScanFileError

log = logging.getLogger(__name__)

DEFAULT_NAME = "spectrometer"
IGNORED_SUFFIXES = (".tmp", ".part", ".swp", ".lock", "~")


@dataclasses.dataclass(slots=True)
class _Watched:
    """What the poller knows of one file."""

    signature: tuple[int, int]  # (size, mtime_ns)
    changed_at: float  # monotonic time of the last change seen
    first_mtime_ns: int  # modification time when first seen (the file server's clock)
    grew_while_watched: bool = False
    published: tuple[int, int] | None = None
    revisions: int = 0
    failed: tuple[int, int] | None = None  # the signature that could not be read


@dataclasses.dataclass(frozen=True, slots=True)
class ScanFileOptions:
    directory: Path
    pattern: str = "*"
    fmt: str = "auto"
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    edge: str | None = None
    recursive: bool = False
    skip_existing: bool = False
    poll_s: float = 0.5
    settle_s: float = 1.0
    incomplete_after_s: float = 60.0
    times: str = "file"
    scan_seconds: float = 0.0
    tz: dt.tzinfo | None = None
    spot: str | None = None
    flux_ph_s: float = 0.0


class ScanFiles(Driver):
    instrument = "spectrometer"

    def __init__(self, opts: DriverOptions, files: ScanFileOptions) -> None:
        # the files carry real times: this driver's clock is the wall clock
        super().__init__(dataclasses.replace(opts, speed=1.0))
        if not files.directory.is_dir():
            raise FileNotFoundError(f"{files.directory}: no such directory")
        self.files = files
        self.watched: dict[Path, _Watched] = {}
        # file name stem -> (current map id, its emission axis, rows so far, maps started)
        self.maps: dict[str, tuple[str, np.ndarray, int, int]] = {}
        self.published = 0
        self.errors: dict[str, str] = {}
        self.reader = IsolatedReader()

    def metadata(self) -> dict[str, Any]:
        f = self.files
        return {
            "directory": str(f.directory),
            "pattern": f.pattern,
            "format": f.fmt,
            "columns": f.columns,
            "times": f.times,
        }

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "files_seen": len(self.watched),
            "scans_published": self.published,
            "unreadable": dict(self.errors),
        }

    # -- the poll loop -------------------------------------------------------------------------
    async def produce(self) -> None:
        try:
            await self._poll()
        finally:
            await asyncio.to_thread(self.reader.close)

    async def _poll(self) -> None:
        first = True
        while True:
            listing = await asyncio.to_thread(self._list)
            now = time.monotonic()
            for path, sig in listing:
                w = self.watched.get(path)
                if w is None:
                    w = self.watched[path] = _Watched(sig, now, sig[1])
                    if first and self.files.skip_existing:
                        w.published = sig
                    continue
                if sig != w.signature:
                    w.grew_while_watched = w.grew_while_watched or w.published is None
                    w.signature, w.changed_at = sig, now
            first = False
            for path, w in list(self.watched.items()):
                if w.signature in (w.published, w.failed):
                    continue
                if now - w.changed_at >= self.files.settle_s:
                    await self._read_and_publish(path, w, now)
            await asyncio.sleep(self.files.poll_s)

    def _list(self) -> list[tuple[Path, tuple[int, int]]]:
        d = self.files.directory
        paths = d.rglob(self.files.pattern) if self.files.recursive else d.glob(self.files.pattern)
        out = []
        for p in paths:
            if p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
                continue
            sig = _signature(p)
            if sig is not None:
                out.append((sig[1], p.name, p, sig))
        return [(p, sig) for _, _, p, sig in sorted(out)]  # oldest first: scans in order

    async def _read_and_publish(self, path: Path, w: _Watched, now: float) -> None:
        f = self.files
        try:
            items = await asyncio.to_thread(self.reader.read, path, f.fmt, f.columns, f.edge)
        except ScanFileError as e:
            w.failed = w.signature
            self.errors[path.name] = str(e)
            log.warning("%s", e)
            await self.refuse(f"scan file {path.name}", str(e))
            return
        if await asyncio.to_thread(_signature, path) != w.signature:
            return  # written to while it was read: read again once it settles
        if any(
            isinstance(i, Scan) and i.complete is False for i in items
        ) and now - w.changed_at < max(f.settle_s, f.incomplete_after_s):
            return  # the file says more points are coming
        self.errors.pop(path.name, None)
        w.published, w.failed = w.signature, None
        w.revisions += 1
        for item in items:
            if isinstance(item, Scan):
                await self._send_scan(item, w)
            else:
                await self._send_rixs_row(item, w)
            self.published += 1

    # -- messages --------------------------------------------------------------------------
    def _window(self, w: _Watched, stated: dt.datetime | None) -> tuple[int, int, str]:
        """(t_start_ns, t_end_ns, where the times came from)."""
        f = self.files
        if f.times == "header" and stated is not None:
            start = stated.replace(tzinfo=stated.tzinfo or f.tz).timestamp()
            return int(start * 1e9), int((start + f.scan_seconds) * 1e9), "header"
        end_ns = w.signature[1]
        if w.grew_while_watched:
            return min(w.first_mtime_ns, end_ns), end_ns, "watched"
        return end_ns - int(f.scan_seconds * 1e9), end_ns, "mtime"

    def _common(self, w: _Watched, scan_id: str, meta: dict[str, Any]) -> dict[str, Any]:
        rev = w.revisions
        return {
            "source": self.opts.name,
            "scan_id": scan_id if rev == 1 else f"{scan_id}~{rev}",
            "spot": Spot(id=self.files.spot) if self.files.spot else None,
            "flux_ph_s": self.files.flux_ph_s,
            "extra": {**meta, "revision": rev},
        }

    async def _send_scan(self, scan: Scan, w: _Watched) -> None:
        assert self.pub is not None
        t0, t1, how = self._window(w, scan.start)
        common = self._common(w, scan.scan_id, scan.metadata)
        common["extra"].update(time_source=how, complete=scan.complete)
        if scan.start is not None:
            common["extra"]["file_start"] = scan.start.isoformat()
        header = XASScan(
            edge=scan.edge,
            t_start_ns=t0,
            t_end_ns=t1,
            exposure_s=(t1 - t0) / 1e9,
            channels=tuple(scan.channels),
            **common,
        )
        arrays = {"energy": scan.energy, **scan.channels}
        await self.pub.send(header, {k: np.asarray(v, float) for k, v in arrays.items()})

    async def _send_rixs_row(self, row: RixsRow, w: _Watched) -> None:
        """Rows join their map in arrival order; a row on another emission grid starts a new
        map (rows of one map share one emission axis: nothing is resampled)."""
        assert self.pub is not None
        map_id, emission, n, started = self.maps.get(row.map_key, ("", np.empty(0), 0, 0))
        if not map_id or not np.array_equal(emission, row.emission):
            started += 1
            map_id = row.map_key if started == 1 else f"{row.map_key}-{started}"
            emission, n = row.emission, 0
        self.maps[row.map_key] = (map_id, emission, n + 1, started)
        t0, t1, how = self._window(w, None)
        common = self._common(w, row.scan_id, row.metadata)
        common["extra"].update(time_source=how)
        header = RIXSRows(
            edge=row.edge,
            map_id=map_id,
            row_offset=n,
            rows_total=0,  # unknown: the map grows as files arrive
            t_start_ns=t0,
            t_end_ns=t1,
            exposure_s=(t1 - t0) / 1e9,
            **common,
        )
        arrays = {
            "excitation": np.array([row.excitation]),
            "emission": np.asarray(row.emission, float),
            "counts": np.asarray(row.counts, float)[None, :],
        }
        await self.pub.send(header, arrays)


def _signature(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file; None when it is gone or not a file (one
    stat: the listing runs every poll)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def column_map(items: list[str], option: str = "--column") -> dict[str, str]:
    """``OURS=THEIRS`` items as a dict; a malformed item is named."""
    out = {}
    for item in items:
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ScanFileError(f"{option} {item!r}: expected OURS=THEIRS, e.g. TEY=5")
        out[ours.strip()] = theirs.strip()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="the folder the beamline writes scan files into")
    p.add_argument("--pattern", default="*", help="file name pattern (glob), e.g. '*.dat'")
    p.add_argument("--format", default="auto", choices=FORMATS, help="file format (auto: by name)")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="OURS=THEIRS",
        help="name a file column (name or 1-based number) as ours: energy, I0, TEY, TFY, PFY; "
        "RIXS: emission, counts, excitation (repeat)",
    )
    p.add_argument("--edge", help="edge of every scan, e.g. Ni-L (default: from the file/energy)")
    p.add_argument("--recursive", action="store_true", help="watch sub-folders too")
    p.add_argument("--skip-existing", action="store_true", help="only files that appear later")
    p.add_argument("--poll", type=positive, default=0.5, help="seconds between directory scans")
    p.add_argument(
        "--settle", type=non_negative, default=1.0, help="seconds unchanged before reading"
    )
    p.add_argument(
        "--incomplete-after",
        type=positive,
        default=60.0,
        help="publish a scan the file says is incomplete after this many unchanged seconds",
    )
    p.add_argument("--times", choices=["file", "header"], default="file", help="see above")
    p.add_argument(
        "--scan-seconds", type=non_negative, default=0.0, help="scan length when unknown"
    )
    p.add_argument(
        "--utc-offset", type=float, default=None, help="hours the file's clock is ahead of UTC"
    )
    p.add_argument("--spot", help="sample spot id of these scans (for dose book-keeping)")
    p.add_argument(
        "--flux", type=non_negative, default=0.0, help="photons/s on the sample (for dose)"
    )


def from_args(a: argparse.Namespace, opts: DriverOptions) -> ScanFiles:
    tz = dt.timezone(dt.timedelta(hours=a.utc_offset)) if a.utc_offset is not None else None
    columns = column_map(a.column)
    files = ScanFileOptions(
        directory=Path(os.path.expanduser(a.directory)),
        pattern=a.pattern,
        fmt=a.format,
        columns=columns,
        edge=a.edge,
        recursive=a.recursive,
        skip_existing=a.skip_existing,
        poll_s=a.poll,
        settle_s=a.settle,
        incomplete_after_s=a.incomplete_after,
        times=a.times,
        scan_seconds=a.scan_seconds,
        tz=tz,
        spot=a.spot,
        flux_ph_s=a.flux,
    )
    return ScanFiles(opts, files)
