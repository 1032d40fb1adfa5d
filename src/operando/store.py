"""The run store: the raw log plus one SQLite file (WAL) per run, written from one thread.

Every message received goes to the raw log (``rawlog``) exactly as received, whatever its
decoding outcome; SQLite holds an index row per message (where it lies in the log, its status,
and the header fields that identify it) and the derived tables. Everything in SQLite can be
rebuilt from the log (``operando reprocess``).

One writer thread does all the I/O, in batches, so the event loop never blocks. Per batch it
appends the raw records, flushes the log to the OS, then commits the SQLite transaction: a
committed row never points at a record that is not in the log. Crash bound: a SIGKILL of the
monitor loses only messages still queued for the writer - at most ``max_batch`` operations, and
never more than ``backlog_limit_bytes`` of received data, because ingest stops reading its
sockets (the drivers' lossless publishers then hold their messages) while the backlog is over
that limit. Records that reached the log but not the index are found and processed when the run
is reopened; a record torn by the crash is cut off and reported.
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

from operando.rawlog import RawLogError, RawLogWriter, RawRecord, read_record, scan

log = logging.getLogger(__name__)

STORE_FILE = "run.sqlite"
SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw (
    id INTEGER PRIMARY KEY, recv_ns INTEGER NOT NULL, link TEXT NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    status TEXT NOT NULL, error TEXT, source TEXT, session TEXT, seq INTEGER, kind TEXT,
    t_ns INTEGER, refill INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS raw_by_source ON raw (link, session, seq);
CREATE TABLE IF NOT EXISTS potentiostat (
    raw_id INTEGER NOT NULL, link TEXT NOT NULL, t REAL NOT NULL, ewe REAL NOT NULL,
    i REAL NOT NULL, q REAL, mode INTEGER NOT NULL, step INTEGER NOT NULL, cycle INTEGER NOT NULL,
    soc REAL);
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
CREATE TABLE IF NOT EXISTS analysis (
    spectrum_id INTEGER NOT NULL, channel TEXT NOT NULL, method TEXT NOT NULL, valence REAL,
    valence_unc REAL, chi2_red REAL, shift_eV REAL, beta REAL, fractions TEXT NOT NULL,
    uncertainties TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (spectrum_id, channel));
CREATE TABLE IF NOT EXISTS dose (
    spectrum_id INTEGER PRIMARY KEY, spot TEXT NOT NULL, dose_Gy REAL NOT NULL,
    before_Gy REAL NOT NULL, after_Gy REAL NOT NULL, rate_Gy_s REAL);
CREATE TABLE IF NOT EXISTS relaxation (
    rest_start REAL NOT NULL, channel TEXT NOT NULL, quantity TEXT NOT NULL, model TEXT NOT NULL,
    tau_s REAL, tau_err_s REAL, resolved INTEGER NOT NULL, n_points INTEGER NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (rest_start, channel, quantity));
CREATE TABLE IF NOT EXISTS series (
    edge TEXT NOT NULL, channel TEXT NOT NULL, spectra INTEGER NOT NULL, rank INTEGER,
    components INTEGER, residual REAL, doc TEXT NOT NULL, PRIMARY KEY (edge, channel));
CREATE TABLE IF NOT EXISTS rixs (
    map_id TEXT PRIMARY KEY, rows INTEGER NOT NULL, rows_total INTEGER NOT NULL, roi REAL,
    reference REAL, ratio REAL, soc REAL, doc TEXT NOT NULL);
"""

# Rebuilt by reprocess (the raw index too: the log is the one source of truth).
DERIVED_TABLES = (
    "raw",
    "potentiostat",
    "spectra",
    "alignment",
    "events",
    "analysis",
    "dose",
    "relaxation",
    "rixs",
    "series",
)

SQL = {
    "raw": "INSERT OR REPLACE INTO raw VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "potentiostat": "INSERT INTO potentiostat VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "spectrum": "INSERT OR REPLACE INTO spectra VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "alignment": "INSERT INTO alignment VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
    "ON CONFLICT(spectrum_id) DO UPDATE SET partial = excluded.partial, "
    "reason = excluded.reason, ewe_mean = excluded.ewe_mean, soc = excluded.soc, "
    "i_mean = excluded.i_mean, mode = excluded.mode, step = excluded.step, "
    "cycle = excluded.cycle, revision = alignment.revision + 1, doc = excluded.doc",
    "event": "INSERT INTO events (recv_ns, t, kind, link, detail) VALUES (?, ?, ?, ?, ?)",
    "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
    "analysis": "INSERT OR REPLACE INTO analysis VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "dose": "INSERT OR REPLACE INTO dose VALUES (?, ?, ?, ?, ?, ?)",
    "relaxation": "INSERT OR REPLACE INTO relaxation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "rixs": "INSERT OR REPLACE INTO rixs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "series": "INSERT OR REPLACE INTO series VALUES (?, ?, ?, ?, ?, ?, ?)",
}

# What identifies a message, from its header (None for a malformed one): the index row's tail.
Summary = tuple[str, str | None, str | None, str | None, int | None, str | None, int | None]


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


def _migrate(conn: sqlite3.Connection) -> None:
    """Runs recorded by an older version: add what is new (schema 3: the SOC of each row)."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(potentiostat)")}
    if "soc" not in columns:
        conn.execute("ALTER TABLE potentiostat ADD COLUMN soc REAL")


def open_readonly(run_dir: str | Path) -> sqlite3.Connection:
    return connect(store_path(run_dir), readonly=True)


class RunStore:
    """Owns the run's log and SQLite file; ``submit``/``append_raw`` queue work for the writer."""

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
        _migrate(conn)
        conn.execute(SQL["meta"], ("schema_version", str(SCHEMA_VERSION)))
        conn.commit()
        self._conn = conn
        self._log = RawLogWriter(self.run_dir)
        self.unindexed, self.torn = self._recover()
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
        self._queue: queue.SimpleQueue[tuple[str, Any, int]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog_bytes = 0
        self.last_error: str | None = None  # e.g. disk full; writes are retried, never dropped
        self._thread = threading.Thread(target=self._run, name="run-store-writer", daemon=True)
        self._thread.start()

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
            self._log.truncate(*end)
            log.warning("raw log: %s; cut off at segment %d offset %d", e, *end)
            return found, str(e)
        return found, None

    # -- writing ---------------------------------------------------------------------------
    def submit(self, op: str, params: Sequence[Any], nbytes: int = 0) -> None:
        """Queue one row for table/statement ``op``; never blocks."""
        if nbytes:
            with self._lock:
                self._backlog_bytes += nbytes
        self._queue.put((op, params, nbytes))

    def append_raw(
        self,
        raw_id: int,
        recv_ns: int,
        link: str,
        frames: Sequence[Any],
        summary: Summary,
        refill: bool = False,
    ) -> None:
        """Queue a received message for the raw log and its index row."""
        nbytes = sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)
        self.submit("__raw__", (raw_id, recv_ns, link, frames, summary, refill), nbytes)

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
        self._log.close()
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
        logged = self._append_to_log(batch)
        while True:
            try:
                self._execute(batch, logged)
                break
            except sqlite3.Error as e:  # disk full, I/O error: keep the batch and retry
                with contextlib.suppress(sqlite3.Error):
                    self._conn.rollback()
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("run store write failed, retrying: %s", self.last_error)
                time.sleep(0.5)
        self.last_error = None
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

    def _append_to_log(self, batch: list[tuple[str, Any, int]]) -> list[tuple[Any, ...]]:
        rows = []
        for op, params, _ in batch:
            if op != "__raw__":
                continue
            raw_id, recv_ns, link, frames, summary, refill = params
            while True:
                try:
                    where = self._log.append(raw_id, recv_ns, link, frames)
                    break
                except OSError as e:  # disk full: the message stays queued, ingest pauses
                    self.last_error = f"raw log: {e}"
                    log.error("raw log write failed, retrying: %s", e)
                    time.sleep(0.5)
            rows.append((raw_id, recv_ns, link, *where, *summary, refill))
        while True:
            try:
                self._log.flush()
                return rows
            except OSError as e:
                self.last_error = f"raw log: {e}"
                time.sleep(0.5)

    def _execute(self, batch: list[tuple[str, Any, int]], raw_rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        if raw_rows:
            conn.executemany(SQL["raw"], raw_rows)
        groups: dict[str, list[Any]] = {}  # in order of first appearance; order kept within
        for op, params, _ in batch:
            if op in SQL:
                groups.setdefault(op, []).append(params)
            elif op == "rows":  # a list of rows for one table, e.g. a potentiostat batch
                table, rows = params
                groups.setdefault(table, []).extend(rows)
        for op, rows in groups.items():
            conn.executemany(SQL[op], rows)
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

    def clear_derived(self) -> None:
        """Empty everything reprocess rebuilds from the raw log."""
        self.flush()
        for table in DERIVED_TABLES:
            self._conn.execute(f"DELETE FROM {table}")
        self._conn.commit()
        self.next_spectrum_id = 1


def read_raw(run_dir: str | Path, raw_id: int) -> RawRecord:
    """One recorded message by id, exactly as received."""
    conn = open_readonly(run_dir)
    try:
        row = conn.execute(
            "SELECT segment, offset, length FROM raw WHERE id = ?", (raw_id,)
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        raise StoreError(f"{run_dir}: no raw message {raw_id}")
    return read_record(Path(run_dir), *row)


def iter_raw(run_dir: str | Path) -> Iterator[RawRecord]:
    """Every recorded message in the order received (the raw log, start to end)."""
    return scan(Path(run_dir))


_STREAM = "link = ? AND session IS NOT NULL AND seq IS NOT NULL AND kind NOT IN ('command', 'ack')"


def lost_ranges(conn: sqlite3.Connection, link: str) -> dict[str, list[list[int]]]:
    """Per session of ``link``, the sequence numbers the run does not hold, as [first, last]
    ranges: holes below the highest seq recorded, and the tails a restarted driver said its
    previous process had sent (``gap`` events marked ``tail``) that never arrived."""
    out: dict[str, list[list[int]]] = {}
    for session, first, last in conn.execute(
        f"SELECT session, 0, min(seq) - 1 FROM raw WHERE {_STREAM} GROUP BY session "
        "HAVING min(seq) > 0 "
        "UNION ALL "
        "SELECT session, prev + 1, seq - 1 FROM (SELECT session, seq, lag(seq) OVER "
        f"(PARTITION BY session ORDER BY seq) AS prev FROM raw WHERE {_STREAM}) "
        "WHERE seq > prev + 1 ORDER BY 1, 2",
        (link, link),
    ):
        out.setdefault(session, []).append([first, last])
    for session, first, last in conn.execute(
        "SELECT json_extract(detail, '$.session'), json_extract(detail, '$.first'), "
        "json_extract(detail, '$.last') FROM events WHERE kind = 'gap' AND link = ? "
        "AND json_extract(detail, '$.tail')",
        (link,),
    ):
        held = {
            s
            for (s,) in conn.execute(
                f"SELECT DISTINCT seq FROM raw WHERE {_STREAM} AND session = ? "
                "AND seq BETWEEN ? AND ?",
                (link, session, first, last),
            )
        }
        ranges = out.setdefault(session, [])
        for seq in range(first, last + 1):
            if seq in held:
                continue
            if ranges and ranges[-1][1] >= seq - 1 and ranges[-1][0] <= seq:
                ranges[-1][1] = max(ranges[-1][1], seq)
            else:
                ranges.append([seq, seq])
    return out
