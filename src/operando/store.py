"""The run store: one SQLite file (WAL) per run, written from a thread so ingest never blocks.

Every message received is appended to ``raw`` exactly as it came off the socket, before it is
decoded; decoding then adds rows to the derived tables (or marks the raw row malformed). The
derived tables can always be rebuilt from ``raw`` (``operando reprocess``).

Crash bound: the writer commits each time it empties its queue (and at least every
``max_batch`` operations), so a SIGKILL of the monitor loses only what was queued but not yet
committed: at most ``max_batch`` operations, and never more than ``backlog_limit_bytes`` of
received data, because ingest stops reading its sockets (the drivers' lossless publishers then
hold their messages) while the backlog is over that limit.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STORE_FILE = "run.sqlite"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw (
    id INTEGER PRIMARY KEY, recv_ns INTEGER NOT NULL, link TEXT NOT NULL,
    topic BLOB, header BLOB, payload BLOB, frame_sizes TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok', error TEXT, refill INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (
    raw_id INTEGER PRIMARY KEY, link TEXT NOT NULL, source TEXT NOT NULL, session TEXT NOT NULL,
    seq INTEGER NOT NULL, kind TEXT NOT NULL, t_ns INTEGER NOT NULL, series TEXT NOT NULL,
    arrival TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_source ON messages (link, session, seq);
CREATE TABLE IF NOT EXISTS potentiostat (
    raw_id INTEGER NOT NULL, link TEXT NOT NULL, t REAL NOT NULL, ewe REAL NOT NULL,
    i REAL NOT NULL, q REAL, mode INTEGER NOT NULL, step INTEGER NOT NULL, cycle INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS potentiostat_by_time ON potentiostat (t);
CREATE TABLE IF NOT EXISTS spectra (
    id INTEGER PRIMARY KEY, raw_id INTEGER NOT NULL, link TEXT NOT NULL, source TEXT NOT NULL,
    kind TEXT NOT NULL, scan_id TEXT NOT NULL, series TEXT NOT NULL, edge TEXT NOT NULL,
    t_start REAL NOT NULL, t_end REAL NOT NULL, spot_id TEXT, spot_x REAL, spot_y REAL,
    flux REAL, exposure REAL, trigger_id TEXT, n_points INTEGER NOT NULL, channels TEXT,
    extra TEXT);
CREATE TABLE IF NOT EXISTS alignment (
    spectrum_id INTEGER PRIMARY KEY, partial INTEGER NOT NULL, reason TEXT NOT NULL,
    ewe_mean REAL, soc REAL, i_mean REAL, mode INTEGER, step INTEGER, cycle INTEGER,
    revision INTEGER NOT NULL DEFAULT 0, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, recv_ns INTEGER NOT NULL, t REAL, kind TEXT NOT NULL,
    link TEXT, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind);
"""

DERIVED_TABLES = ("messages", "potentiostat", "spectra", "alignment", "events")

SQL = {
    "raw": "INSERT INTO raw (id, recv_ns, link, topic, header, payload, frame_sizes, refill) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "malformed": "UPDATE raw SET status = 'malformed', error = ? WHERE id = ?",
    "raw_status": "UPDATE raw SET status = ? WHERE id = ?",
    "message": "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "potentiostat": "INSERT INTO potentiostat VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "spectrum": "INSERT OR REPLACE INTO spectra VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "alignment": "INSERT INTO alignment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
    "ON CONFLICT(spectrum_id) DO UPDATE SET partial = excluded.partial, "
    "reason = excluded.reason, ewe_mean = excluded.ewe_mean, soc = excluded.soc, "
    "i_mean = excluded.i_mean, mode = excluded.mode, step = excluded.step, "
    "cycle = excluded.cycle, revision = alignment.revision + 1, doc = excluded.doc",
    "event": "INSERT INTO events (recv_ns, t, kind, link, detail) VALUES (?, ?, ?, ?, ?)",
    "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
}


class StoreError(RuntimeError):
    pass


def store_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STORE_FILE


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise StoreError(f"{path.parent}: no run store ({STORE_FILE}) in this directory")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a killed process loses nothing committed; only an OS crash or
        # power cut can lose the last commits.
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def open_readonly(run_dir: str | Path) -> sqlite3.Connection:
    return connect(store_path(run_dir), readonly=True)


class RunStore:
    """Owns the run's SQLite file; ``submit`` queues writes for the writer thread."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        max_batch: int = 5000,
        backlog_limit_bytes: int = 256 * 2**20,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = store_path(self.run_dir)
        self.reopened = self.path.exists()
        conn = connect(self.path)
        conn.executescript(SCHEMA)
        conn.execute(SQL["meta"], ("schema_version", str(SCHEMA_VERSION)))
        conn.commit()
        row = conn.execute("SELECT coalesce(max(id), 0) FROM raw").fetchone()
        self.next_raw_id = int(row[0]) + 1
        row = conn.execute("SELECT coalesce(max(id), 0) FROM spectra").fetchone()
        self.next_spectrum_id = int(row[0]) + 1
        self._conn = conn
        self.max_batch = max_batch
        self.backlog_limit_bytes = backlog_limit_bytes
        self._queue: queue.SimpleQueue[tuple[str, Any, int]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog_bytes = 0
        self.committed_batches = 0
        self.last_error: str | None = None  # e.g. disk full; writes are retried, never dropped
        self._thread = threading.Thread(target=self._run, name="run-store-writer", daemon=True)
        self._thread.start()

    # -- writing ---------------------------------------------------------------------------
    def submit(self, op: str, params: Sequence[Any], nbytes: int = 0) -> None:
        """Queue one row for table/statement ``op``; never blocks."""
        if nbytes:
            with self._lock:
                self._backlog_bytes += nbytes
        self._queue.put((op, params, nbytes))

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes

    @property
    def over_backlog(self) -> bool:
        return self._backlog_bytes > self.backlog_limit_bytes

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is committed (for shutdown and tests)."""
        done = threading.Event()
        self._queue.put(("__flush__", done, 0))
        if not done.wait(timeout):
            raise StoreError(f"run store did not commit within {timeout} s: {self.last_error}")

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(("__stop__", None, 0))
            self._thread.join(timeout=60)
        self._conn.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._write_batch(batch)

    def _write_batch(self, batch: list[tuple[str, Any, int]]) -> bool:
        while True:
            try:
                self._execute(batch)
                break
            except sqlite3.Error as e:  # disk full, I/O error: keep the batch and retry
                with contextlib.suppress(sqlite3.Error):
                    self._conn.rollback()
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("run store write failed, retrying: %s", self.last_error)
                time.sleep(0.5)
        self.last_error = None
        self.committed_batches += 1
        freed = sum(n for _, _, n in batch)
        if freed:
            with self._lock:
                self._backlog_bytes -= freed
        stop = False
        for op, arg, _ in batch:
            if op == "__flush__":
                arg.set()
            stop |= op == "__stop__"
        return stop

    def _execute(self, batch: list[tuple[str, Any, int]]) -> None:
        conn = self._conn
        i = 0
        while i < len(batch):
            op = batch[i][0]
            j = i
            while j < len(batch) and batch[j][0] == op:
                j += 1
            if op in SQL:
                conn.executemany(SQL[op], [p for _, p, _ in batch[i:j]])
            elif op == "rows":  # a list of rows for one table, e.g. a potentiostat batch
                for _, (table, rows), _ in batch[i:j]:
                    conn.executemany(SQL[table], rows)
            i = j
        conn.commit()

    # -- helpers used by ingest and reprocess ------------------------------------------------
    def take_raw_id(self) -> int:
        rid = self.next_raw_id
        self.next_raw_id += 1
        return rid

    def take_spectrum_id(self) -> int:
        sid = self.next_spectrum_id
        self.next_spectrum_id += 1
        return sid

    def set_meta(self, key: str, value: str) -> None:
        self.submit("meta", (key, value))

    def clear_derived(self) -> None:
        """Empty the derived tables (reprocess rebuilds them from raw)."""
        self.flush()
        for table in DERIVED_TABLES:
            self._conn.execute(f"DELETE FROM {table}")
        self._conn.execute("UPDATE raw SET status = 'ok', error = NULL")
        self._conn.commit()
        self.next_spectrum_id = 1


def iter_raw(conn: sqlite3.Connection, batch: int = 2000) -> Iterator[tuple[Any, ...]]:
    """Raw messages in the order received: (id, recv_ns, link, frames, refill)."""
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, recv_ns, link, topic, header, payload, frame_sizes, refill FROM raw "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (last, batch),
        ).fetchall()
        if not rows:
            return
        for rid, recv_ns, link, topic, header, payload, sizes, refill in rows:
            yield rid, recv_ns, link, split_frames(topic, header, payload, sizes), refill
        last = rows[-1][0]


def pack_frames(frames: Sequence[bytes | memoryview]) -> tuple[Any, Any, bytes, str]:
    """(topic, header, payload, frame_sizes) for the raw table: the frames exactly as received.

    Messages with fewer than two frames (malformed) keep what they had: sizes lists all frames.
    """
    topic = bytes(frames[0]) if len(frames) > 0 else None
    header = bytes(frames[1]) if len(frames) > 1 else None
    rest = frames[2:]
    payload = b"".join(rest) if len(rest) != 1 else rest[0]
    sizes = ",".join(str(memoryview(f).nbytes) for f in frames)
    return topic, header, payload, sizes


def split_frames(topic: Any, header: Any, payload: Any, sizes: str) -> list[bytes]:
    lengths = [int(s) for s in sizes.split(",")] if sizes else []
    frames: list[bytes] = []
    if len(lengths) > 0:
        frames.append(bytes(topic or b""))
    if len(lengths) > 1:
        frames.append(bytes(header or b""))
    view = memoryview(payload or b"")
    pos = 0
    for n in lengths[2:]:
        frames.append(view[pos : pos + n])
        pos += n
    return frames
