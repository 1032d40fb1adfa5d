"""``operando driver eclab FILE``: an EC-Lab text export (.mpt) or binary file (.mpr, with the
optional galvani) as a potentiostat source.

``--follow``: EC-Lab is still writing the file; rows are published as they appear (a partial
last line waits for its end), and a file that is replaced or cut short (a new export under the
same name) is read again from its header. Without ``--follow`` the finished file is replayed:
row times keep their spacing, divided by ``--speed`` (1: real time; 0: as fast as the monitor
takes them).
Row times are absolute: the header's acquisition start (the EC-Lab PC's local time, or
``--utc-offset``) plus ``time/s``. EC-Lab's own charge counter, ``(Q-Qo)``, goes out as the
instrument's Q (``--no-charge`` leaves the monitor to count coulombs from the current).
A .mpr is replayed only: EC-Lab writes it in binary blocks, so a live run is followed through
its text export.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.eclab import MptFormatError, MptHeader, MptReader, current_sampling
from operando.drivers.eclab_mpr import read_mpr

from operando.argtypes import non_negative, positive
from operando.protocol import PotentiostatBatch

log = logging.getLogger(__name__)

DEFAULT_NAME = "potentiostat"
BATCH_ROWS = 500
CHUNK_BYTES = 1 << 20


class EclabFile(Driver):
    instrument = "potentiostat"

    def __init__(
        self,
        opts: DriverOptions,
        path: Path,
        *,
        follow: bool,
        tz: dt.tzinfo | None,
        poll_s: float = 0.2,
        capacity_mAh: float | None = None,
        charge: bool = True,
        settle_s: float = 30.0,
    ) -> None:
        # --speed is the replay's (file seconds per wall second; 0: at once); the driver's own
        # clock (heartbeats) is the real one
        super().__init__(dataclasses.replace(opts, speed=1.0))
        self.path, self.follow = path, follow
        self.replay_speed = opts.speed
        self.tz, self.poll_s, self.capacity_mAh, self.charge = tz, poll_s, capacity_mAh, charge
        self.binary: dict[str, np.ndarray] | None = None  # a .mpr's rows, read whole
        if path.suffix.lower() == ".mpr":
            if follow:
                raise MptFormatError(
                    f"{path}: --follow reads text exports (.mpt); EC-Lab writes .mpr in binary "
                    "blocks. Follow the .mpt export, or replay the finished .mpr"
                )
            start, names, self.binary = read_mpr(path)
            self._header: MptHeader | None = MptHeader(0, names, start, "EC-Lab binary file (.mpr)")
        else:
            self._header = self._read_header()
            if self._header is None and not follow:
                raise MptFormatError(
                    f"{path}: no such file"
                    if not path.exists()
                    else f"{path}: the header is not complete (start with --follow to wait)"
                )
        self.settle_s = settle_s
        self.rows_published = 0
        self.files_read = 1

    @property
    def header(self) -> MptHeader:
        assert self._header is not None, "prepare() waits for the header"
        return self._header

    def _read_header(self) -> MptHeader | None:
        """The export's header, or None while the file is missing or its header incomplete
        (EC-Lab creates the file when the technique starts and writes the header first)."""
        reader = MptReader(str(self.path))
        try:
            with open(self.path, "rb") as f:
                reader.feed(f.read(64 * 1024))
        except FileNotFoundError:
            return None
        return reader.header

    async def prepare(self) -> None:
        """--follow, started before EC-Lab: wait for the file and its whole header."""
        said = False
        while self._header is None:
            if not said:
                log.warning(
                    "%s: waiting for %s", self.path, "its header" if self.path.exists() else "it"
                )
                said = True
            await asyncio.sleep(self.poll_s)
            self._header = self._read_header()

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "file": str(self.path),
            "technique": self.header.technique,
            "acquisition_start": self.header.start.isoformat() if self.header.start else None,
            "columns": self.header.names,
            # for the monitor's coulomb counting when no charge column is sent
            "current_sampling": current_sampling(self.header.names),
        }
        if self.capacity_mAh:
            meta["capacity_mAh"] = self.capacity_mAh
        return meta

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rows": self.rows_published, "files": self.files_read}

    async def produce(self) -> None:
        if self.binary is not None:
            rows = {**self.binary, "t": self.binary["t"] + self.header.epoch(self.tz)}
            if self.replay_speed > 0:
                await self._pace(rows, float(rows["t"][0]), asyncio.get_running_loop().time())
            else:
                await self._send(rows)
            return
        reader = MptReader(str(self.path))
        f = open(self.path, "rb")  # noqa: SIM115 - reopened on rotation, closed in finally
        inode = os.fstat(f.fileno()).st_ino
        grew = asyncio.get_running_loop().time()
        t_first: float | None = None
        wall_first = 0.0
        try:
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK_BYTES)
                at_end = not chunk and not self.follow
                # a finished file's last line may lack its newline: end it
                rows = await self._rows(reader, chunk or (b"\n" if at_end else b""))
                if len(rows["t"]):
                    if not self.follow and self.replay_speed > 0:
                        if t_first is None:
                            t_first = float(rows["t"][0])
                            wall_first = asyncio.get_running_loop().time()
                        await self._pace(rows, t_first, wall_first)
                    else:
                        await self._send(rows)
                if chunk:
                    grew = asyncio.get_running_loop().time()
                    continue
                if at_end:
                    return  # the whole file is out
                if (
                    asyncio.get_running_loop().time() - grew >= self.settle_s
                    and reader.pending_is_row()
                ):
                    # EC-Lab ends a finished file without a newline: a last row that has sat
                    # unchanged for settle_s is complete
                    await self._send(await self._rows(reader, b"\n"))
                await asyncio.sleep(self.poll_s)
                if self._rotated(f, inode):
                    log.warning("%s: replaced or cut short: reading it again", self.path)
                    # the old file's last line is complete now
                    await self._send(await self._rows(reader, b"\n"))
                    f.close()
                    f = open(self.path, "rb")  # noqa: SIM115
                    inode, reader = os.fstat(f.fileno()).st_ino, MptReader(str(self.path))
                    self.files_read += 1
        finally:
            f.close()

    def _rotated(self, f: Any, inode: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # being replaced: wait for the new file
        return st.st_ino != inode or st.st_size < f.tell()

    async def _rows(self, reader: MptReader, data: bytes) -> dict[str, np.ndarray]:
        """The complete rows in ``data``, times as seconds since the epoch (the header's
        acquisition start + time/s); each line that cannot be read is refused to the run."""
        rows = reader.feed(data)
        for line, why in reader.take_refused():
            log.warning("%s: line %d left out: %s", self.path, line, why)
            await self.refuse(f"{self.path.name} line {line}", why)
        if len(rows["t"]) and reader.header is not None:
            rows["t"] = rows["t"] + reader.header.epoch(self.tz)
        return rows

    async def _pace(self, rows: dict[str, np.ndarray], t_first: float, wall_first: float) -> None:
        """Replay: each batch leaves when its first row's time has come, at ``replay_speed``."""
        loop = asyncio.get_running_loop()
        for part in _batches(rows):
            due = wall_first + (float(part["t"][0]) - t_first) / self.replay_speed
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._publish(part)

    async def _send(self, rows: dict[str, np.ndarray]) -> None:
        for part in _batches(rows):
            await self._publish(part)

    async def _publish(self, part: dict[str, np.ndarray]) -> None:
        assert self.pub is not None
        arrays = batch_arrays(part, self.charge)
        await self.pub.send(PotentiostatBatch(source=self.opts.name), arrays)
        self.rows_published += len(part["t"])


def batch_arrays(part: dict[str, np.ndarray], charge: bool) -> dict[str, np.ndarray]:
    """A batch's arrays; EC-Lab's charge only where every row has one. The monitor refuses a
    batch with a NaN in Q (one unmeasured value is not a charge), and counts coulombs from the
    current for a batch without Q, so a partly missing column loses nothing."""
    arrays = {k: part[k] for k in ("t", "Ewe", "I", "mode", "step", "cycle")}
    if charge and np.all(np.isfinite(part["Q"])):
        arrays["Q"] = part["Q"]
    return arrays


def _batches(rows: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The rows in pieces of at most ``BATCH_ROWS`` (none for no rows)."""
    for start in range(0, len(rows["t"]), BATCH_ROWS):
        yield {k: v[start : start + BATCH_ROWS] for k, v in rows.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the EC-Lab text export (.mpt), or a binary .mpr (galvani)")
    p.add_argument("--follow", action="store_true", help="EC-Lab is still writing it")
    p.add_argument(
        "--utc-offset",
        type=float,
        default=None,
        help="hours the EC-Lab PC's clock is ahead of UTC (default: this machine's zone)",
    )
    p.add_argument("--poll", type=positive, default=0.2, help="--follow: seconds between reads")
    p.add_argument(
        "--settle",
        type=non_negative,
        default=30.0,
        help="--follow: seconds a last line without its newline must sit unchanged to count "
        "as a row (EC-Lab ends a finished file without one; default 30)",
    )
    p.add_argument("--capacity", type=positive, help="cell capacity in mAh (for the SOC)")
    p.add_argument(
        "--no-charge",
        action="store_true",
        help="do not publish EC-Lab's (Q-Qo): the monitor counts coulombs from the current",
    )


def from_args(a: argparse.Namespace, opts: DriverOptions) -> EclabFile:
    tz = dt.timezone(dt.timedelta(hours=a.utc_offset)) if a.utc_offset is not None else None
    return EclabFile(
        opts,
        Path(a.file),
        follow=a.follow,
        tz=tz,
        poll_s=a.poll,
        capacity_mAh=a.capacity,
        charge=not a.no_charge,
        settle_s=a.settle,
    )
