"""The run store: the raw log plus one SQLite file (WAL) per run, written from one thread.

Every message received goes to the raw log (``rawlog``) exactly as received, whatever its
decoding outcome; SQLite holds an index row per message (where it lies in the log, its status,
and the header fields that identify it) and the derived tables. Everything in SQLite can be
rebuilt from the log (``operando reprocess``).

A writer process (``store_writer``) does all the I/O, in batches, so the event loop never
blocks and never waits for it. Per batch it appends the raw records, flushes the log to the OS,
then commits the SQLite transaction: a committed row never points at a record that is not in the
log. Crash bound: a SIGKILL of the monitor loses only what had not yet reached the writer (the
current loop step's outbox, and what the local pipe still held), never more than
``backlog_limit_bytes`` of received data, because ingest stops reading its sockets (the drivers'
lossless publishers then hold their messages) while the backlog is over that limit; what reached
the writer is written, the writer finishing after the monitor is gone. Records that reached the
log but not the index are found and processed when the run is reopened; a record torn by the
crash is cut off and reported.

A writer that dies while the monitor lives (the OOM killer, a bug) is restarted at once, and
every batch it had not reported committed is sent again (they are kept until then, so what is
kept is bounded by the same backlog limit). A writer that dies again within
``WRITER_RESTART_MIN_S`` of its restart is not restarted: ``last_error`` says so, and ingest
then stops at the backlog limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import zmq

from operando.config import ExperimentConfig
from operando.rawlog import RawLogError, RawLogWriter, RawRecord, frame_sizes, scan
from operando.store.files import CONFIG_FILE, store_path
from operando.store.rows import OPS, Row
from operando.store.schema import (
    DERIVED_TABLES,
    KEPT_ON_REPROCESS,
    SCHEMA,
    SCHEMA_VERSION,
    SQL,
    StoreError,
    connect,
    migrate,
)
from operando.store.writer_process import (
    FLUSH,
    RAW,
    STOP,
    Op,
    Report,
    Ring,
    RunBusy,
    pack,
    report_decoder,
    take_lock,
)

log = logging.getLogger(__name__)

# What identifies a message, from its header (None for a malformed one): the index row's tail.
Summary = tuple[str, str | None, str | None, str | None, int | None, str | None, int | None]


# What may wait for the writer before ingest stops reading. Below the ring's size (less a
# frame or two): large frames in flight then always find room in it.
BACKLOG_LIMIT_BYTES = 96 * 2**20
# A writer that dies again this soon after it was restarted fails on what it is given: it is
# not restarted again (the next restart would only repeat it).
WRITER_RESTART_MIN_S = 60.0


class RunStore:
    """Owns the run's log and SQLite file; ``submit``/``append_raw`` queue work for the writer."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        max_batch: int = 5000,
        backlog_limit_bytes: int = BACKLOG_LIMIT_BYTES,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = store_path(self.run_dir)
        # An earlier writer (of a monitor that was killed) may still be finishing this run:
        # nothing is read before it is done.
        try:
            lock = take_lock(self.run_dir, 120.0)
        except RunBusy as e:
            raise StoreError(str(e)) from None
        try:
            self.reopened = self.path.exists()
            if not self.reopened:
                _create_store(self.path)
            conn = connect(self.path)
            conn.executescript(SCHEMA)
            migrate(conn)
            conn.execute(SQL["meta"], ("schema_version", str(SCHEMA_VERSION)))
            conn.commit()
            self._conn = conn
            self.unindexed, self.torn = self._recover()
        finally:
            os.close(lock)
        last_raw = max(
            [
                conn.execute("SELECT coalesce(max(id), 0) FROM raw").fetchone()[0],
                *(r.raw_id for r in self.unindexed),
            ]
        )
        self.next_raw_id = int(last_raw) + 1
        row = conn.execute("SELECT coalesce(max(id), 0) FROM spectra").fetchone()
        self.next_spectrum_id = int(row[0]) + 1
        self.max_batch = max_batch
        self.backlog_limit_bytes = backlog_limit_bytes
        self._lock = threading.Lock()  # the outbox, the pipe to the writer, the backlog count
        self._outbox: list[Op] = []
        self._outbox_bytes = 0
        self._ship_scheduled = False
        # batches sent to the writer and not yet reported committed: (number, ops, bytes)
        self._shipped: deque[tuple[int, list[Op], int]] = deque()
        self._next_batch = 0
        self._backlog_bytes = 0  # received data in the batches above
        self._flushes: dict[int, threading.Event] = {}
        self._next_flush = 0
        self.last_error: str | None = None  # e.g. disk full; writes are retried, never dropped
        self._token = uuid.uuid4().hex  # this store's, across restarts of its writer
        self._ring = Ring()
        self._restarting = False  # batches wait in _shipped, unsent, while a writer starts
        self._restart_lock = threading.Lock()  # held through a restart; close waits for it
        self._stopping = self._closing = False
        self.writer_restarts = 0
        self.rows_refused = 0  # rows SQLite refused (a bug upstream), recorded as events
        self.last_refused: str | None = None
        self._last_restart = -math.inf
        self._gave_up = False
        try:
            self._spawn_writer()
        except StoreError:
            self._ring.close()
            raise
        self._listener = threading.Thread(
            target=self._listen, name="run-store-reports", daemon=True
        )
        self._listener.start()

    def _spawn_writer(self) -> Report:
        """Start a writer process and connect to it; its first report (after a restart: the
        batch its predecessor committed last)."""
        name = f"@operando-store-{uuid.uuid4().hex}"  # abstract ipc: no file, no network
        self._ctx = zmq.Context(1)
        self._reports = self._ctx.socket(zmq.PULL)
        self._reports.linger, self._reports.rcvtimeo = 0, 200
        self._reports.bind(f"ipc://{name}-reports")
        self._pipe = self._ctx.socket(zmq.PUSH)
        # unbounded (and connected, so sends queue at once): the backlog limit bounds it
        self._pipe.linger, self._pipe.sndhwm, self._pipe.reconnect_ivl = 60_000, 0, 10
        self._pipe.connect(f"ipc://{name}-data")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",  # not -m: the package imports this module before runpy would run it
                "from operando.store.writer_process import main; main()",
                str(self.run_dir),
                f"ipc://{name}-data",
                f"ipc://{name}-reports",
                str(self.max_batch),
                str(self._ring.fd),
                self._token,
            ],
            pass_fds=(self._ring.fd,),
            stdin=subprocess.PIPE,  # never written: it closes when this process is gone
            start_new_session=True,  # a Ctrl-C or a signal to the monitor's group is not for it
        )
        # The first flush goes through the same pipe as the data, so once it is reported the
        # pipe is connected: nothing this store is given waits on a connection being made.
        # (Batch -1: never written, only answered.)
        self._pipe.send_multipart(pack([(FLUSH, 0, 0)]), copy=False)
        deadline = time.monotonic() + 120
        while True:
            try:
                first = report_decoder.decode(self._reports.recv())
            except zmq.Again:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
                    self._proc.stdin.close()  # type: ignore[union-attr]
                    self._ctx.destroy(linger=0)
                    raise StoreError(
                        f"{self.run_dir}: the run store's writer did not start "
                        f"(exit code {self._proc.returncode})"
                    ) from None
                continue
            if first.flushed == [0]:
                return first
            self.last_error = first.error  # what it retries first (a locked database)

    def _recover(self) -> tuple[list[RawRecord], str | None]:
        """Records in the log past the last indexed one (a crash came between the two)."""
        row = self._conn.execute(
            "SELECT segment, offset + length FROM raw ORDER BY id DESC LIMIT 1"
        ).fetchone()
        start = (int(row[0]), int(row[1])) if row else (1, 0)
        found: list[RawRecord] = []
        try:
            for rec in scan(self.run_dir, start):
                found.append(rec)
        except RawLogError as e:
            end = (found[-1].segment, found[-1].offset + found[-1].length) if found else start
            torn = RawLogWriter(self.run_dir)
            torn.truncate(*end)
            torn.close()
            log.warning("raw log: %s; cut off at segment %d offset %d", e, *end)
            return found, str(e)
        return found, None

    # -- writing ---------------------------------------------------------------------------
    def submit(self, op: str, params: Sequence[Any], nbytes: int = 0) -> None:
        """Queue one row for table/statement ``op``; never blocks.

        Rows submitted on the event loop wait in an outbox until the loop's current step
        ends and then go to the writer together (one hand-over per batch of messages, not
        per row: the per-row queue cost was a tenth of ingest's). Rows from any other thread
        go at once, with whatever the outbox holds before them, so the order is kept.
        """
        with self._lock:
            self._outbox.append((op, params, nbytes))
            self._outbox_bytes += nbytes
            if self._ship_scheduled:
                return
            try:
                asyncio.get_running_loop().call_soon(self._ship)
                self._ship_scheduled = True
                return
            except RuntimeError:  # not on an event loop: hand over now
                self._ship_locked()

    @property
    def writer_pid(self) -> int:
        """The writer process (benches measure its CPU; fault tests kill it)."""
        return self._proc.pid

    def put(self, row: Row) -> None:
        """Queue one typed row for its table; never blocks."""
        self.submit(OPS[type(row)][0], row)

    def put_rows(self, rows: Sequence[Row]) -> None:
        """Queue rows of one table together (a potentiostat batch: one hand-over, one
        executemany)."""
        if rows:
            self.submit("rows", (OPS[type(rows[0])][0], rows))

    def _ship(self) -> None:
        with self._lock:
            self._ship_locked()

    def _ship_locked(self) -> None:
        self._ship_scheduled = False
        if self._outbox:
            batch = self._next_batch
            self._next_batch += 1
            self._shipped.append((batch, self._outbox, self._outbox_bytes))
            self._backlog_bytes += self._outbox_bytes
            if not self._restarting:
                self._send(batch, self._outbox)
            self._outbox, self._outbox_bytes = [], 0

    def _send(self, batch: int, ops: list[Op]) -> None:
        # copy=False: pyzmq still copies each part under its copy_threshold (64 KiB)
        self._pipe.send_multipart(pack(ops, self._ring, batch), copy=False)

    def append_raw(
        self,
        raw_id: int,
        recv_ns: int,
        link: str,
        frames: Sequence[Any],
        summary: Summary,
        refill: bool = False,
        sizes: list[int] | None = None,
    ) -> None:
        """Queue a received message for the raw log and its index row (``sizes``: the frames'
        sizes, when the caller has them)."""
        sizes = frame_sizes(frames) if sizes is None else sizes
        self.submit(RAW, (raw_id, recv_ns, link, frames, sizes, summary, refill), sum(sizes))

    def index_raw(self, rec: RawRecord, summary: Summary, refill: bool = False) -> None:
        """Queue the index row of a record already in the log (recovery, reprocess)."""
        self.submit(
            "raw",
            (
                rec.raw_id,
                rec.recv_ns,
                rec.link,
                rec.segment,
                rec.offset,
                rec.length,
                *summary,
                refill,
            ),
        )

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    @property
    def over_backlog(self) -> bool:
        """Received data not yet written (shipped or still in the outbox) is over the limit."""
        return self._backlog_bytes + self._outbox_bytes > self.backlog_limit_bytes

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is committed (for shutdown and tests)."""
        done = threading.Event()
        with self._lock:
            self._next_flush += 1
            flush_id = self._next_flush
            self._flushes[flush_id] = done
        self.submit(FLUSH, flush_id)  # type: ignore[arg-type]
        self._ship()
        if not done.wait(timeout):
            raise StoreError(f"run store did not commit within {timeout} s: {self.last_error}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self.submit(STOP, ())
            self._ship()
        self._stop_writer()
        self._conn.close()

    def _stop_writer(self) -> None:
        self._stopping = True  # its exit now is no reason to restart it
        with self._restart_lock:  # a restart under way finishes first
            if self._proc.stdin is not None:  # also says "finish": a writer astray exits
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.error("run store writer did not stop within 60 s; killing it")
                self._proc.kill()
                self._proc.wait(timeout=10)
            finally:
                self._closing = True
                listener = getattr(self, "_listener", None)
                if listener is not None and listener is not threading.current_thread():
                    listener.join(timeout=5)
                self._ctx.destroy(linger=0)
                self._ring.close()

    def _listen(self) -> None:
        """The writer's reports: batches committed, flushes done, the error it is retrying;
        and the writer's death."""
        while not self._closing:
            try:
                report = report_decoder.decode(self._reports.recv())
            except zmq.Again:
                code = self._proc.poll()
                if code is not None and not self._stopping:
                    self._writer_died(code)
                continue
            except zmq.ZMQError:  # closed under us at shutdown
                return
            self._committed(report)
            if report.refused:
                self.rows_refused += len(report.refused)
                self.last_refused = report.refused[-1]
            self.last_error = report.error
            for flush_id in report.flushed:  # once: a batch sent again may repeat one
                done = self._flushes.pop(flush_id, None)
                if done is not None:
                    done.set()
            if report.stopped:
                return

    def _committed(self, report: Report) -> None:
        with self._lock:
            while self._shipped and self._shipped[0][0] <= report.committed:
                self._backlog_bytes -= self._shipped.popleft()[2]
            self._ring.free_to = max(self._ring.free_to, report.ring_to)

    def _writer_died(self, code: int) -> None:
        """Start a new writer and send it again every batch not reported committed."""
        if self._gave_up:
            return
        died = f"run store writer exited with code {code}"
        if time.monotonic() - self._last_restart < WRITER_RESTART_MIN_S:
            self._gave_up = True
            self.last_error = (
                f"{died} again, within {WRITER_RESTART_MIN_S:.0f} s of its restart: not "
                "restarted; stop the monitor and start it again on this run"
            )
            log.error("%s", self.last_error)
            return
        log.error("%s; restarting it", died)
        self.last_error = f"{died}; restarting it"
        with self._restart_lock:
            if self._stopping:
                return
            with self._lock:
                self._restarting = True
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._ctx.destroy(linger=0)
            try:
                first = self._spawn_writer()
            except StoreError as e:
                self._gave_up, self.last_error = True, str(e)
                return
            self._committed(first)
            # Ingest waits on the lock meanwhile (a few ms per MB sent again): once, at a
            # writer's death.
            with self._lock:
                self._ring.head = self._ring.free_to = 0  # the new writer has read nothing
                for batch, ops, _ in self._shipped:
                    self._send(batch, ops)
                resent = len(self._shipped)
                self._restarting = False
        self.writer_restarts += 1
        self._last_restart = time.monotonic()
        detail = json.dumps({"exit_code": code, "batches_sent_again": resent})
        event = (time.time_ns(), None, "store_writer_restarted", None, detail, "monitor")
        self.submit("event", event)

    # -- helpers used by ingest and reprocess ------------------------------------------------
    def take_raw_id(self) -> int:
        rid = self.next_raw_id
        self.next_raw_id += 1
        return rid

    def take_spectrum_id(self) -> int:
        sid = self.next_spectrum_id
        self.next_spectrum_id += 1
        return sid

    def clear_derived(self) -> None:
        """Empty everything reprocess rebuilds from the raw log."""
        self.flush()
        for table in DERIVED_TABLES:
            keep = KEPT_ON_REPROCESS.get(table)
            self._conn.execute(f"DELETE FROM {table}" + (f" WHERE NOT ({keep})" if keep else ""))
        self._conn.commit()
        self.next_spectrum_id = 1


def _create_store(path: Path) -> None:
    """Make a new run store whole before it appears under its name: a reader that finds
    ``run.sqlite`` (a notebook polling for it) always finds its tables."""
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    conn = connect(partial)
    try:
        conn.executescript(SCHEMA)
        migrate(conn)  # a new store is at the newest schema: this only gives it its uid
        conn.execute(SQL["meta"], ("schema_version", str(SCHEMA_VERSION)))
        conn.commit()
    finally:
        conn.close()  # the last connection closing folds the WAL back into the file
    os.replace(partial, path)


def save_run_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Keep the experiment configuration with the run (``Run.config`` reads it back)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(cfg)))
