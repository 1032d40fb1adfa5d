"""The raw log: every received message, exactly as received, in append-only segment files.

Why not SQLite BLOBs: an 8 KB BLOB insert costs ~30 us of page handling and a large one is
written twice (WAL, then checkpoint); an append to a file costs one copy into the page cache,
so 8 MB RIXS frames go at the disk's sequential rate.

Record layout (little-endian):
    magic  b"ORAW"              4
    length u64                  total record length, header included
    raw_id u64
    recv_ns i64
    link_len u16, nframes u16
    crc32  u32                  of everything after the header
    frame sizes u64 x nframes, link (utf-8), frames back to back

A record cut short by a crash (the tail of the last segment) fails the length or CRC check and
is reported, never silently taken as data. Segments rotate at ``segment_bytes``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from isal.isal_zlib import crc32  # zlib's CRC-32, 3x faster (ISA-L, SIMD)

MAGIC = b"ORAW"
_HEADER = struct.Struct("<4sQQqHHI")
RAW_DIR = "raw"
SCATTER_BYTES = 1 << 20  # records with more payload than this are written without a copy


class RawLogError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RawRecord:
    raw_id: int
    recv_ns: int
    link: str
    frames: list[memoryview]
    segment: int
    offset: int
    length: int


def segment_path(run_dir: Path, segment: int) -> Path:
    return run_dir / RAW_DIR / f"{segment:06d}.log"


def segments(run_dir: Path) -> list[int]:
    """The numbers of the log's segment files, in order."""
    return sorted(int(p.stem) for p in (run_dir / RAW_DIR).glob("*.log"))


_LEN_IS_BYTES = frozenset({bytes, zmq.Frame})  # len() of a memoryview counts items, not bytes


def nbytes(frame: Any) -> int:
    """The size of a frame in bytes, whatever buffer holds it."""
    return len(frame) if type(frame) in _LEN_IS_BYTES else memoryview(frame).nbytes


def frame_sizes(frames: Sequence[Any]) -> list[int]:
    """Each frame's size in bytes; for frames as received (bytes, zmq.Frame) without a Python
    call per frame (this runs for every message received)."""
    if _LEN_IS_BYTES.issuperset(map(type, frames)):
        return list(map(len, frames))
    return [nbytes(f) for f in frames]


class RawLogWriter:
    """Appends records; used from one thread only (the store's writer, a driver's spool).

    Records wait in ``append`` as buffer views (no copy) and go to the OS together in
    ``flush``, in scatter writes, with no user-space buffer in between. A flush that fails
    half-way (a full disk) cuts the file back to where it started and keeps the records, so
    the next flush writes them again at the same offsets: the log never holds a torn record
    followed by good ones.
    """

    MAX_PENDING_PARTS = 4096
    MAX_PENDING_BYTES = 16 * 2**20

    def __init__(self, run_dir: Path, segment_bytes: int = 256 * 2**20) -> None:
        self.run_dir = run_dir
        (run_dir / RAW_DIR).mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        found = segments(run_dir)
        self.segment = found[-1] if found else 1
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(
            segment_path(self.run_dir, self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self.offset = os.lseek(self._fd, 0, os.SEEK_END)  # where the next record will start

    def append(
        self,
        raw_id: int,
        recv_ns: int,
        link: str,
        frames: Sequence[Any],
        sizes: Sequence[int] | None = None,
    ) -> tuple[int, int, int]:
        """Queue one record; return (segment, offset, length) it will have once flushed.

        With ``sizes`` (the frames' sizes), ``frames`` may be the frames' bytes in any
        pieces, e.g. all of them in one buffer. May flush what waits first (the segment is
        full, or enough is waiting); on OSError from that, this record was not queued: call
        again."""
        if sizes is None:
            sizes = [nbytes(f) for f in frames]
        link_b = link.encode()
        sizes_b = struct.pack(f"<{len(sizes)}Q", *sizes)
        payload = sum(sizes)
        length = _HEADER.size + len(sizes_b) + len(link_b) + payload
        if self.offset and self.offset + length > self.segment_bytes:
            self.flush()
            self._rotate()
        elif (
            len(self._pending) > self.MAX_PENDING_PARTS
            or self._pending_bytes > self.MAX_PENDING_BYTES
        ):
            self.flush()
        prefix = sizes_b + link_b
        if len(frames) > 1 and payload < SCATTER_BYTES:
            # Several small frames are copied into one buffer: a copy of a few KB costs less
            # than a view per frame and a CRC call per frame (measured: 8 KB spectra, 4x less).
            pieces: list[Any] = [b"".join(frames)]
        else:  # one piece (the store's writer gets a message's small frames so) or large
            # frames: written from the buffers they arrived in, never copied
            pieces = [memoryview(f).cast("B") for f in frames]
        crc = crc32(prefix)
        for piece in pieces:
            crc = crc32(piece, crc)
        head = _HEADER.pack(MAGIC, length, raw_id, recv_ns, len(link_b), len(sizes), crc)
        self._pending.append(head + prefix)
        self._pending += pieces
        self._pending_bytes += length
        where = (self.segment, self.offset, length)
        self.offset += length
        return where

    def flush(self) -> None:
        """Hand every queued record to the OS: a killed process then loses nothing of it."""
        if not self._pending:
            return
        start = self.offset - self._pending_bytes
        try:
            _write_all(self._fd, list(self._pending))
        except OSError:
            os.ftruncate(self._fd, start)  # no partial record stays behind; try again later
            raise
        self._pending.clear()
        self._pending_bytes = 0

    def truncate(self, segment: int, offset: int) -> None:
        """Cut a torn tail record off (found by ``scan`` after a crash)."""
        os.close(self._fd)
        with open(segment_path(self.run_dir, segment), "r+b") as f:
            f.truncate(offset)
        self.segment = segment
        self._open()

    def cut(self, segment: int, offset: int) -> None:
        """Drop everything after ``offset`` of ``segment``, later segments too: what a writer
        that died had written past its last commit (its batches are sent again)."""
        for later in segments(self.run_dir):
            if later > segment:
                segment_path(self.run_dir, later).unlink()
        self.truncate(segment, offset)

    def _rotate(self) -> None:
        os.close(self._fd)
        self.segment += 1
        self._open()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self._fd)


def _write_all(fd: int, parts: list[Any]) -> None:
    """os.writev until every byte is written (a write may take only part of them)."""
    i = 0
    while i < len(parts):
        n = os.writev(fd, parts[i : i + 1024])  # IOV_MAX
        while i < len(parts) and n >= len(parts[i]):  # bytes, or views cast to bytes
            n -= len(parts[i])
            i += 1
        if i < len(parts) and n:
            parts[i] = memoryview(parts[i]).cast("B")[n:]


def _header(buf: bytes, at: int, segment: int, pos: int, end: int) -> tuple[Any, ...]:
    """The header at ``buf[at:]``, of the record at ``pos`` in a segment (or buffer) that ends
    at ``end``; RawLogError when it is damaged or its record cut short."""
    if end - pos < _HEADER.size:
        raise RawLogError(f"segment {segment} offset {pos}: truncated record header")
    fields = _HEADER.unpack_from(buf, at)
    magic, length = fields[0], fields[1]
    if magic != MAGIC:
        raise RawLogError(f"segment {segment} offset {pos}: bad magic {magic!r}")
    if pos + length > end:
        raise RawLogError(f"segment {segment} offset {pos}: record of {length} bytes cut short")
    return fields


def _parse(buf: bytes, pos: int, segment: int, base: int = 0) -> RawRecord:
    """The record at ``buf[pos:]``; ``buf`` starts at offset ``base`` of its segment."""
    where = base + pos
    fields = _header(buf, pos, segment, where, base + len(buf))
    _, length, raw_id, recv_ns, link_len, nframes, crc = fields
    view = memoryview(buf)[pos + _HEADER.size : pos + length]
    if crc32(view) != crc:
        raise RawLogError(f"segment {segment} offset {where}: CRC mismatch")
    sizes = struct.unpack_from(f"<{nframes}Q", view, 0)
    p = 8 * nframes
    link = bytes(view[p : p + link_len]).decode()
    p += link_len
    frames = []
    for n in sizes:
        frames.append(view[p : p + n])
        p += n
    return RawRecord(raw_id, recv_ns, link, frames, segment, where, length)


class RecordReader:
    """Reads records at known places, each segment file opened once. A file opened stays
    readable after it is removed: a driver's spool pruning its oldest segment takes nothing
    from a refill already reading it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fds: dict[int, int] = {}

    def open(self, segment: int) -> None:
        """Open ``segment`` now (FileNotFoundError when it is gone), to read it later."""
        if segment not in self._fds:
            self._fds[segment] = os.open(segment_path(self.run_dir, segment), os.O_RDONLY)

    def read(self, segment: int, offset: int, length: int) -> RawRecord:
        """The record at ``offset`` of ``segment``; RawLogError when it is damaged."""
        self.open(segment)
        return _parse(os.pread(self._fds[segment], length, offset), 0, segment, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def read_record(run_dir: Path, segment: int, offset: int, length: int) -> RawRecord:
    reader = RecordReader(run_dir)
    try:
        return reader.read(segment, offset, length)
    finally:
        reader.close()


def scan(run_dir: Path, start: tuple[int, int] = (1, 0)) -> Iterator[RawRecord]:
    """Every intact record from ``(segment, offset)`` on, in order.

    Stops at the first damaged record and raises RawLogError naming it, after yielding
    everything before it (a torn tail after a crash is the expected case).
    """
    first_seg, first_off = start
    for seg in (s for s in segments(run_dir) if s >= first_seg):
        buf = segment_path(run_dir, seg).read_bytes()
        pos = first_off if seg == first_seg else 0
        while pos < len(buf):
            rec = _parse(buf, pos, seg)
            yield rec
            pos += rec.length


def headers(run_dir: Path) -> Iterator[tuple[int, int, int, int]]:
    """(segment, offset, length, raw_id) of every record in order, from the headers alone:
    no payload is read and no CRC checked (``read_record`` checks the records read). To find
    a few records, or the last one, without reading a spool of RIXS images. Stops at a damaged
    header or a record cut short, raising RawLogError as ``scan`` does."""
    for seg in segments(run_dir):
        path = segment_path(run_dir, seg)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            pos = 0
            while pos < size:
                f.seek(pos)
                _, length, raw_id, *_ = _header(f.read(_HEADER.size), 0, seg, pos, size)
                yield seg, pos, length, raw_id
                pos += length


def log_bytes(run_dir: Path) -> int:
    return sum(os.path.getsize(p) for p in (run_dir / RAW_DIR).glob("*.log"))
