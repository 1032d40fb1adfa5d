"""A driver's memory of what it sent, so a recorder that missed messages can ask for them again.

Publish/subscribe forgets: a message sent while the monitor was restarting, or while the link
was down, reaches nobody. Every Publisher therefore keeps its newest messages, byte for byte,
bounded in count and bytes; the monitor asks for the sequence ranges it missed (the ``resend``
command) and the driver publishes them again, unchanged.

Optionally the messages also go to a spool on disk (the raw log's record format, one folder per
session). A driver killed and restarted with the same spool then still holds its previous
session: it announces that session's last seq, and can resend the tail the monitor never saw.
"""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operando.rawlog import RAW_DIR, RawLogError, RawLogWriter, RecordReader, headers

log = logging.getLogger(__name__)

Frames = list[bytes]


@dataclass(frozen=True, slots=True)
class ReplayLimits:
    # 20,000 messages: hours of a potentiostat (a batch and a heartbeat a second), a bounded
    # few tens of MB of driver memory over a week; --spool for more (and for RIXS frames)
    messages: int = 20_000
    bytes: int = 32 * 2**20
    spool: Path | None = None  # a folder: keep sent messages on disk as well
    spool_bytes: int = 2 * 2**30  # per session; the oldest segments are removed beyond it
    spool_sessions: int = 4  # previous sessions kept in the spool


class ReplayBuffer:
    """The newest messages of one session (seq -> frames), in memory and optionally on disk.

    Used from the event loop, except what reads the spool: ``spooled`` and ``Spooled.read``
    run on ``spool_thread``, the one thread that writes it.
    """

    def __init__(self, session: str, limits: ReplayLimits) -> None:
        self.session = session
        self.limits = limits
        self._memory: dict[int, Frames] = {}
        self._oldest = 0  # lowest seq that may still be in memory
        self._bytes = 0
        self.newest = -1
        self._spool: RawLogWriter | None = None
        # One thread writes the spool, in order, so the event loop never waits for the disk;
        # refills read it there too, after every write queued before them.
        self.spool_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool")
        self.previous: tuple[str, int] | None = None  # (session, last seq) found in the spool
        self.spool_error = ""
        if limits.spool is not None:
            limits.spool.mkdir(parents=True, exist_ok=True)
            self.previous = _newest_session(limits.spool)
            _prune(limits.spool, limits.spool_sessions)
            self._spool = RawLogWriter(
                limits.spool / session, segment_bytes=max(limits.spool_bytes // 4, 1 << 20)
            )

    def add(self, seq: int, frames: Sequence[Any]) -> None:
        kept = [bytes(f) for f in frames]  # a copy: the sender may reuse its arrays
        self._memory[seq] = kept
        self._bytes += sum(len(f) for f in kept)
        self.newest = seq
        lim = self.limits
        while self._oldest < seq and (len(self._memory) > lim.messages or self._bytes > lim.bytes):
            old = self._memory.pop(self._oldest, None)
            self._oldest += 1
            if old is not None:
                self._bytes -= sum(len(f) for f in old)
        if self._spool is not None:
            self.spool_thread.submit(self._write, seq, kept)

    def _write(self, seq: int, frames: Frames) -> None:
        spool = self._spool
        assert spool is not None
        segment = spool.segment
        try:
            spool.append(seq, 0, self.session, frames)
            spool.flush()  # to the OS: a killed driver keeps it
        except OSError as e:  # the spool's disk: memory still holds the newest messages
            if not self.spool_error:
                log.error(
                    "spool %s: %s (messages stay in memory only until it clears)", spool.run_dir, e
                )
            self.spool_error = str(e)
            return
        self.spool_error = ""
        if spool.segment != segment:  # rotated: keep the newest four segments
            for old in sorted((spool.run_dir / RAW_DIR).glob("*.log"))[:-4]:
                old.unlink(missing_ok=True)

    def from_memory(self, session: str, first: int, last: int) -> tuple[dict[int, Frames], int]:
        """What memory holds of first..last (last < 0: up to the newest), and the last seq
        asked for once resolved."""
        if session != self.session:
            return {}, last
        last = self.newest if last < 0 else last
        lo = max(first, self._oldest)
        hi = min(last, self.newest)
        found = {s: self._memory[s] for s in range(lo, hi + 1) if s in self._memory}
        return found, last

    def spooled(self, session: str, first: int, last: int) -> Spooled:
        """Where the disk holds first..last (last < 0: to the end), from the record headers
        alone, with their segments opened. Blocking: run it on ``spool_thread``, after the
        writes queued there."""
        spool = self.limits.spool
        found = Spooled(RecordReader(spool / session) if spool else None)
        if found.reader is None or not (found.reader.run_dir / RAW_DIR).is_dir():
            return found
        try:
            for segment, offset, length, seq in headers(found.reader.run_dir):
                if seq < first:
                    continue
                if last >= 0 and seq > last:
                    break  # a session's spool holds its messages in the order sent
                found.reader.open(segment)
                found.places[seq] = (segment, offset, length)
        except (RawLogError, FileNotFoundError):
            pass  # a torn tail (the driver was killed mid-write) or a segment just pruned
        return found

    def status(self) -> dict[str, Any]:
        """What a recorder can still ask for again."""
        return {
            "session": self.session,
            "in_memory": len(self._memory),
            "memory_MB": round(self._bytes / 2**20, 1),
            "oldest_in_memory": min(self._memory, default=None),
            "newest": self.newest,
            "spool": str(self.limits.spool) if self.limits.spool else None,
            "spool_error": self.spool_error or None,
        }

    def close(self) -> None:
        self.spool_thread.shutdown(wait=True)
        if self._spool is not None:
            self._spool.close()


@dataclass(slots=True)
class Spooled:
    """Records of one session found on disk: seq -> (segment, offset, length), and their
    segments held open until ``read`` has taken what it needs and ``close``."""

    reader: RecordReader | None
    places: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def read(self, seqs: Sequence[int]) -> dict[int, Frames]:
        """The records of ``seqs``, checked; one found damaged (a bad disk block) is left out
        and logged. Blocking: on the spool thread."""
        out: dict[int, Frames] = {}
        if self.reader is None:
            return out
        for seq in seqs:
            try:
                rec = self.reader.read(*self.places[seq])
            except RawLogError as e:
                log.error("spool %s: seq %d not resent: %s", self.reader.run_dir, seq, e)
                continue
            out[seq] = [bytes(f) for f in rec.frames]
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _sessions(spool: Path) -> list[Path]:
    """Session folders in the spool, oldest write first."""

    def newest_write(p: Path) -> float:
        return max((f.stat().st_mtime for f in (p / RAW_DIR).glob("*.log")), default=0.0)

    return sorted((p for p in spool.iterdir() if (p / RAW_DIR).is_dir()), key=newest_write)


def _newest_session(spool: Path) -> tuple[str, int] | None:
    """The session a previous run of this driver left in the spool, and its last seq."""
    sessions = _sessions(spool)
    if not sessions:
        return None
    last = -1
    try:
        for _, _, _, seq in headers(sessions[-1]):
            last = max(last, seq)
    except RawLogError:
        pass  # killed mid-write: the intact records before the tear count
    return (sessions[-1].name, last) if last >= 0 else None


def _prune(spool: Path, keep: int) -> None:
    sessions = _sessions(spool)
    for old in sessions[: max(0, len(sessions) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
