"""The run store's writer: a process of its own that appends the raw log and commits SQLite.

Why a process: in the monitor's own process the writer thread took the GIL for every row it
bound and every record it framed, and each ZeroMQ receive of the event loop then waited for it
(measured: 8 KB spectra ingested at 4,600/s with the thread, 8,100/s with no writing at all).
Here the writing runs beside the event loop, not between its steps.

The monitor hands it batches over a local ZeroMQ pipe (``PUSH`` -> ``PULL``, abstract ipc
socket, never a network address): part 0 is MessagePack of the batch's operations; part 1 the
small frames of the raw messages back to back; then any large frame that did not fit the ring.
Large frames (a RIXS image) go through a ring of shared memory instead (an anonymous memfd both
processes map): one copy into pages that stay resident, and the writer writes them to the log
from there. Through the pipe, 8 MB frames cost two more copies into fresh memory and committed
at half the disk's rate. After each commit the writer says up to which batch it committed, how
far the ring is free, which flushes it completed and what error it is retrying (a full disk),
on a second pipe.

Each commit also records, in the same transaction, the batch and where the raw log then ended,
under the monitor's token. A writer that dies (the OOM killer, a bug) is restarted by its
monitor with the same token: it cuts the log back to that end (records of a batch that never
committed), and the monitor sends every batch not reported committed again; one committed but
not yet reported is recognised by its number and not written twice.

The writer outlives a monitor killed with SIGKILL just long enough to write what it had
received: it sees its stdin close, drains its pipe, commits and exits. The run directory's
lock file keeps a restarted monitor from opening the store until then.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import msgspec
import zmq

from operando.rawlog import RawLogWriter
from operando.store.files import LOCK_FILE, store_path
from operando.store.schema import BUSY_TIMEOUT, SQL, WRITER_PRAGMAS

log = logging.getLogger(__name__)

BIG_FRAME = 1 << 16  # frames this large go as parts of their own, never copied
RING_BYTES = 128 << 20  # shared memory for large frames: sixteen 8 MB images in flight
FLUSH, STOP, RAW, RING_TO = "__flush__", "__stop__", "__raw__", "__ring_to__"
BATCH = "__batch__"  # first op of each batch the monitor sends: its number
# in place of a row whose values could not be sent to the writer (a complex number, an
# object: a bug upstream); the writer records it as refused, as a row SQLite refuses
UNSENDABLE = "__unsendable__"
MARKERS = (FLUSH, STOP, RING_TO, BATCH)  # ops that write nothing
WRITER_META = "writer"  # meta key: "<token> <batch> <log segment> <log end>" of the last commit
BATCH_BYTES = 32 << 20
IN_BLOB, OWN_PART = -1, -2  # where a frame travels, when not in the ring (at an offset >= 0)

Op = tuple[str, Any, int]  # (statement or marker, parameters, bytes of received data)


def _plain(obj: Any) -> Any:
    """numpy scalars in rows (from arithmetic on arrays) as plain numbers; numpy itself is
    not imported here, so the writer starts in a fraction of the monitor's time."""
    item = getattr(obj, "item", None)
    if item is None:
        raise TypeError(f"cannot encode {type(obj).__name__}")
    return item()


_encoder = msgspec.msgpack.Encoder(enc_hook=_plain)
_json_encoder = msgspec.json.Encoder(enc_hook=repr)  # a refused row may hold anything


def _json(value: Any) -> str:
    return _json_encoder.encode(value).decode()


# What SQLite says of a row itself (a NULL where NOT NULL, a wrong number of values): writing
# the batch again would fail again, so the row is left out and the rest written. Any other
# error (a full disk, I/O) passes: the batch is kept and written again.
ROW_ERRORS = (
    apsw.ConstraintError,
    apsw.BindingsError,
    apsw.MismatchError,
    apsw.TooBigError,
    TypeError,  # a value SQLite cannot hold (a list, a dict)
    OverflowError,  # an integer beyond 64 bits
)


class Report(msgspec.Struct, omit_defaults=True):
    """What the writer tells the monitor after each batch (or while it retries one)."""

    committed: int = -1  # every batch up to this number is committed
    ring_to: int = -1  # the ring is free up to here (a position counted since the start)
    flushed: list[int] = []
    error: str | None = None
    stopped: bool = False
    refused: list[str] = []  # rows SQLite refused and that were left out (a bug upstream)


report_decoder = msgspec.msgpack.Decoder(Report)


# -- the wire between the monitor and its writer ----------------------------------------------
class Ring:
    """The monitor's side of the shared ring: places large frames, one after the other.

    Positions count bytes since the start; ``free_to`` (from the writer's reports) is where
    the oldest frame not yet written begins. A frame never wraps: the ring's tail end is
    skipped instead. A frame that does not fit goes through the pipe: nothing waits for room.
    """

    def __init__(self, size: int = RING_BYTES) -> None:
        self.fd = os.memfd_create("operando-store-ring", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size = size
        self.view = memoryview(mmap.mmap(self.fd, size))
        self.head = 0  # where the next frame goes
        self.free_to = 0

    def place(self, frame: Any, nbytes: int) -> int:
        """Copy ``frame`` in; its offset, or OWN_PART when there is no room."""
        start = self.head % self.size
        skip = self.size - start if start + nbytes > self.size else 0
        if nbytes > self.size or self.head + skip + nbytes - self.free_to > self.size:
            return OWN_PART
        start = 0 if skip else start
        self.view[start : start + nbytes] = memoryview(frame).cast("B")
        self.head += skip + nbytes
        return start

    def close(self) -> None:
        self.view.release()
        os.close(self.fd)


def pack(ops: Sequence[Op], ring: Ring | None = None, batch: int = -1) -> list[Any]:
    """Batch number ``batch`` as ZeroMQ parts: operations, the small frames joined, large
    frames that did not go into the ring."""
    out: list[Op] = [(BATCH, batch, 0)]
    small: list[Any] = []
    big: list[Any] = []
    placed = False
    for op, params, n in ops:
        if op == RAW:
            raw_id, recv_ns, link, frames, sizes, summary, refill = params
            if n < BIG_FRAME:  # n: the message's bytes, so every frame is small
                small += frames
                where = None
            else:
                where = []
                for f, size in zip(frames, sizes, strict=True):
                    if size < BIG_FRAME:
                        small.append(f)
                        where.append(IN_BLOB)
                        continue
                    at = ring.place(f, size) if ring is not None else OWN_PART
                    if at == OWN_PART:
                        big.append(f)
                    placed |= at >= 0
                    where.append(at)
            params = (raw_id, recv_ns, link, sizes, where, summary, refill)
        out.append((op, params, n))
    if placed:
        out.append((RING_TO, ring.head, 0))  # type: ignore[union-attr]
    try:
        head = _encoder.encode(out)
    except (TypeError, OverflowError):  # one row cannot be sent: that row is left out
        head = _encoder.encode([_sendable(op) for op in out])
    return [head, b"".join(small), *big]


def _sendable(op: Op) -> Op:
    try:
        _encoder.encode(op)
        return op
    except (TypeError, OverflowError) as e:
        table = op[0] if op[0] != "rows" else op[1][0]
        return (UNSENDABLE, (table, f"{type(e).__name__}: {e}", repr(op[1])[:2000]), 0)


def unpack(parts: Sequence[Any], ring: memoryview | None = None) -> list[Op]:
    """The inverse of ``pack``: frames come back as views of the received buffers and of
    the ring, with their sizes; a message of small frames only comes back as one piece that
    holds them back to back (what the raw log writes: one piece, one CRC)."""
    ops = msgspec.msgpack.decode(memoryview(parts[0]))
    small = memoryview(parts[1]).cast("B")
    big = iter(memoryview(p).cast("B") for p in parts[2:])
    pos = 0
    for k, (op, params, n) in enumerate(ops):
        if op != RAW:
            continue
        raw_id, recv_ns, link, sizes, where, summary, refill = params
        if where is None:  # all in the joined part, back to back: one piece for the log
            frames = [small[pos : pos + n]]
            pos += n
        else:
            frames = []
            for size, at in zip(sizes, where, strict=True):
                if at == IN_BLOB:
                    frames.append(small[pos : pos + size])
                    pos += size
                elif at == OWN_PART:
                    frames.append(next(big))
                else:
                    frames.append(ring[at : at + size])  # type: ignore[index]
        ops[k] = (op, (raw_id, recv_ns, link, frames, sizes, tuple(summary), refill), n)
    return ops


class RunBusy(RuntimeError):
    """Another live process is recording this run."""


def take_lock(run_dir: Path, timeout: float) -> int:
    """Hold the run directory's writer lock.

    Held by the writer of a monitor that was killed, it is waited for (that writer is
    finishing what it received). Held by the writer of a monitor that is alive, it is not:
    two processes must never write one run (a reprocess under a recording monitor).
    """
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            holder = _holder(fd)
            if (holder is not None and _alive(holder[1])) or time.monotonic() > deadline:
                os.close(fd)
                who = f"monitor pid {holder[1]}, writer pid {holder[0]}" if holder else "?"
                raise RunBusy(
                    f"{run_dir} is being recorded by another process ({who}, holding "
                    f"{LOCK_FILE}): stop it first"
                ) from None
            time.sleep(0.05)


def being_recorded(run_dir: Path) -> bool:
    """Does a writer hold the run (a monitor records it, or one killed is finishing)?"""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock taken to look
    return False


def _holder(fd: int) -> tuple[int, int] | None:
    """(writer pid, monitor pid) the lock file names, if it names them."""
    try:
        writer, monitor = os.pread(fd, 64, 0).split()
        return int(writer), int(monitor)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        # our own pid: a killed monitor's, reused (a container starts its processes at the
        # same low pids), so its writer is an orphan that is finishing
        return pid != os.getpid()
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True


def _claim(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {os.getppid()}\n".encode(), 0)


# -- writing ---------------------------------------------------------------------------------
class BatchWriter:
    """Writes batches: raw records to the log, flushed to the OS, then one SQLite commit.

    A committed index row never points at a record that is not in the log. Errors (a full
    disk) are retried with the batch kept, never dropped; ``report`` hears each one.
    """

    def __init__(self, run_dir: Path, report: Any, token: str = "") -> None:
        # apsw, not the standard sqlite3: it binds rows in about half the time (measured:
        # 29 -> 17 us a scan for the raw, spectrum and alignment rows of 8 KB spectra). The
        # file is the same SQLite database that every reader opens with sqlite3.
        self.conn = apsw.Connection(str(store_path(run_dir)))
        for pragma in (*WRITER_PRAGMAS, BUSY_TIMEOUT):
            self.conn.execute(pragma).fetchall()
        self.log = RawLogWriter(run_dir)
        self.report = report
        self.token = token  # the monitor's: the same across restarts of its writer
        self.committed = self._resume()  # batches up to this number are committed

    def _resume(self) -> int:
        """Restarted for the same monitor: cut the log back to where the last commit left it
        and say which batch that was. Otherwise mark where the log ends now."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (WRITER_META,)).fetchone()
        if row is not None:
            token, batch, segment, end = row[0].split()
            if token == self.token:
                self.log.cut(int(segment), int(end))
                return int(batch)
        self.conn.execute(SQL["meta"], (WRITER_META, self._marker(-1)))
        return -1

    def fresh(self, ops: list[Op]) -> list[Op]:
        """A batch as received; only its markers when it is committed already (sent again
        after a restart, its report lost with the writer that committed it)."""
        if ops[0][1] <= self.committed:
            return [op for op in ops if op[0] in MARKERS]
        return ops

    def _marker(self, batch: int) -> str:
        return f"{self.token} {batch} {self.log.segment} {self.log.offset}"

    def close(self) -> None:
        self.log.close()
        self.conn.close()

    def write(self, batch: list[Op]) -> bool:
        """Write one batch; True when it holds the stop marker."""
        logged = self._append_to_log(batch)
        # (a batch sent again that was committed already must not move the mark back)
        last = max([self.committed, *(arg for op, arg, _ in batch if op == BATCH)])
        one_by_one = False
        while True:
            try:
                refused = self._execute(batch, logged, last, one_by_one)
                break
            except (apsw.Error, *ROW_ERRORS) as e:
                if not self.conn.getautocommit():  # a transaction is still open
                    with contextlib.suppress(apsw.Error):
                        self.conn.execute("ROLLBACK")
                if isinstance(e, ROW_ERRORS) and not one_by_one:
                    one_by_one = True  # a row SQLite refuses: find it, write the rest
                    continue
                self._failed(f"{type(e).__name__}: {e}")  # disk full, I/O: keep, retry
        flushed = [arg for op, arg, _ in batch if op == FLUSH]
        ring_to = max((arg for op, arg, _ in batch if op == RING_TO), default=-1)
        stop = any(op == STOP for op, _, _ in batch)
        self.committed = max(self.committed, last)
        self.report(
            Report(
                committed=self.committed,
                ring_to=ring_to,
                flushed=flushed,
                stopped=stop,
                refused=refused,
            )
        )
        return stop

    def _failed(self, error: str) -> None:
        log.error("run store write failed, retrying: %s", error)
        self.report(Report(error=error))
        time.sleep(0.5)

    def _append_to_log(self, batch: list[Op]) -> list[tuple[Any, ...]]:
        rows = []
        for op, params, _ in batch:
            if op != RAW:
                continue
            raw_id, recv_ns, link, frames, sizes, summary, refill = params
            while True:
                try:
                    where = self.log.append(raw_id, recv_ns, link, frames, sizes)
                    break
                except OSError as e:  # disk full: the message stays queued, ingest pauses
                    self._failed(f"raw log: {e}")
            rows.append((raw_id, recv_ns, link, *where, *summary, refill))
        while True:
            try:
                self.log.flush()
                return rows
            except OSError as e:
                self._failed(f"raw log: {e}")

    def _execute(
        self, batch: list[Op], raw_rows: list[tuple[Any, ...]], last: int, one_by_one: bool
    ) -> list[str]:
        """One transaction for the batch; what was refused (``one_by_one``: each derived row
        is written alone, and one that SQLite refuses is left out, recorded as an event)."""
        conn = self.conn
        conn.execute("BEGIN")
        # in the same transaction: how far this commit goes, in batches and in the log
        conn.execute(SQL["meta"], (WRITER_META, self._marker(last)))
        groups: dict[str, list[Any]] = {"raw": raw_rows}  # in order of first appearance
        for op, params, _ in batch:
            if op in SQL:
                groups.setdefault(op, []).append(params)
            elif op == "rows":  # a list of rows for one table, e.g. a potentiostat batch
                table, rows = params
                groups.setdefault(table, []).extend(rows)
        refused: list[str] = []

        def refuse(table: str, error: str, row: Any) -> None:
            refused.append(f"{table} row refused: {error}")
            detail = {"table": table, "error": error, "row": row}
            event = (time.time_ns(), None, "store_row_refused", None, _json(detail))
            conn.execute(SQL["event"], (*event, "ingest"))

        for op, params, _ in batch:
            if op == UNSENDABLE:
                refuse(*params)
        for op, rows in groups.items():
            if not one_by_one:
                conn.executemany(SQL[op], rows)
                continue
            for row in rows:
                try:
                    conn.execute(SQL[op], row)
                except ROW_ERRORS as e:
                    error = f"{type(e).__name__}: {e}"
                    refuse(op, error, row)
                    if op == "raw":  # the message stays indexed, marked with why
                        conn.execute(SQL["raw"], _unreadable_header(row, error))
        conn.execute("COMMIT")
        return refused


def _unreadable_header(row: tuple[Any, ...], error: str) -> tuple[Any, ...]:
    """A raw index row without what its header said: where the message is in the log, and
    why its header's values are not in the index (they are still in the message)."""
    where, refill = row[:6], row[-1]
    unknown = (None,) * 5  # source, session, seq, kind, t_ns
    return (*where, "malformed", f"index row refused: {error}", *unknown, refill)


# -- the process -----------------------------------------------------------------------------
def serve(run_dir: Path, data: str, reports: str, max_batch: int, ring_fd: int, token: str) -> None:
    ring = memoryview(mmap.mmap(ring_fd, 0, prot=mmap.PROT_READ))
    ctx = zmq.Context(1)
    pull = ctx.socket(zmq.PULL)
    pull.linger, pull.rcvhwm = 0, 0  # unbounded: the monitor bounds what it ships by bytes
    pull.bind(data)
    out = ctx.socket(zmq.PUSH)
    out.linger, out.sndhwm = 10_000, 0
    out.connect(reports)
    lock = take_lock(run_dir, 120.0)
    _claim(lock)
    writer = BatchWriter(run_dir, lambda r: out.send(_encoder.encode(r)), token)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)  # closes when the monitor is gone
    stop = False
    try:
        while not stop:
            ready = dict(poller.poll())
            # Only stdin: the monitor is gone. What it sent may still be on its way through
            # the socket; once nothing more comes for a moment, everything is written.
            if pull not in ready and not pull.poll(500):
                break
            batch: list[Op] = []
            size = 0
            # a batch ends at max_batch rows or 32 MB of data: large frames are committed,
            # and their room in the ring handed back, a few at a time
            while len(batch) < max_batch and size < BATCH_BYTES:
                try:
                    ops = unpack(pull.recv_multipart(zmq.NOBLOCK, copy=False), ring)
                except zmq.Again:
                    break
                ops = writer.fresh(ops)
                batch += ops
                size += sum(n for _, _, n in ops)
            if batch:
                stop = writer.write(batch)
    finally:
        writer.close()
        os.close(lock)
        ctx.destroy(linger=2000)


def main() -> None:
    # Ctrl-C in the monitor's terminal is for the monitor: it then flushes and stops this
    # process itself (the monitor also starts it in a session of its own).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s store-writer %(message)s")
    run_dir, data, reports, max_batch, ring_fd, token = sys.argv[1:7]
    serve(Path(run_dir), data, reports, int(max_batch), int(ring_fd), token)


if __name__ == "__main__":
    main()
