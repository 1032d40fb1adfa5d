"""The run store's SQLite side: its schema, its statements, and how it is opened.

Shared by the monitor's process (reading, recovery) and the store's writer process.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from operando.store.files import STORE_FILE, store_path
from operando.store.rows import (
    AlignmentRow,
    AnalysisRow,
    CurrentStepRow,
    DoseRow,
    EventRow,
    GittPulseRow,
    HalfCycleRow,
    InterruptionRow,
    PotentiostatRow,
    RelaxationRow,
    RixsRow,
    SeriesRow,
    SpectrumRow,
    insert,
)

SCHEMA_VERSION = 7
RUN_UID = "run_uid"  # meta key

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
    link TEXT, detail TEXT NOT NULL, origin TEXT NOT NULL DEFAULT 'ingest');
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind);
CREATE TABLE IF NOT EXISTS analysis (
    spectrum_id INTEGER NOT NULL, channel TEXT NOT NULL, method TEXT NOT NULL, valence REAL,
    valence_unc REAL, chi2_red REAL, shift_eV REAL, beta REAL, fractions TEXT NOT NULL,
    uncertainties TEXT NOT NULL, doc TEXT NOT NULL, quality TEXT NOT NULL DEFAULT 'unjudged',
    notes TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (spectrum_id, channel));
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
CREATE TABLE IF NOT EXISTS half_cycles (
    idx INTEGER PRIMARY KEY, cycle INTEGER NOT NULL, direction TEXT NOT NULL,
    t_start REAL NOT NULL, t_end REAL NOT NULL, capacity_mAh REAL NOT NULL,
    energy_mWh REAL NOT NULL, mean_voltage_V REAL, complete INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS current_steps (
    t_step REAL PRIMARY KEY, i_before_mA REAL NOT NULL, i_after_mA REAL NOT NULL, soc REAL,
    r_first_ohm REAL NOT NULL, r_0_ohm REAL, r_unc_ohm REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gitt_pulses (
    t_start REAL PRIMARY KEY, tau_s REAL NOT NULL, i_mA REAL NOT NULL, ocv_after_V REAL NOT NULL,
    d_cm2_s REAL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interruptions (
    t_start REAL PRIMARY KEY, duration_s REAL NOT NULL, i_mA REAL NOT NULL, r_ohm REAL NOT NULL,
    d_cm2_s REAL, doc TEXT NOT NULL);
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
    "half_cycles",
    "current_steps",
    "gitt_pulses",
    "interruptions",
)

# The monitor's own events (origin 'monitor': a trigger fired, a spot moved, an alarm, a
# command) happened at the time, not in the messages: reprocess keeps them. The rest (gaps,
# malformed messages, damage suspicions ...) it derives again.
KEPT_ON_REPROCESS = {"events": "origin = 'monitor'"}
# Kinds the monitor itself records, to mark its events in runs recorded before schema 4.
MONITOR_EVENT_KINDS = (
    "ack",
    "alarm",
    "alarm_acknowledged",
    "clock_estimate_failed",
    "clock_offset",
    "command",
    "disconnected",
    "gap_unrecoverable",
    "monitor_restarted",
    "reconnected",
    "refill",
    "spot_change",
    "spot_move_retry",
    "store_error",
    "store_writer_restarted",
    "trigger",
)

SQL = {
    "raw": "INSERT OR REPLACE INTO raw VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?)",
    "potentiostat": insert(PotentiostatRow, "INSERT"),
    "spectrum": insert(SpectrumRow),
    # a realignment replaces the row and counts its revision
    "alignment": insert(
        AlignmentRow,
        "INSERT",
        " ON CONFLICT(spectrum_id) DO UPDATE SET partial = excluded.partial, "
        "reason = excluded.reason, ewe_mean = excluded.ewe_mean, soc = excluded.soc, "
        "i_mean = excluded.i_mean, mode = excluded.mode, step = excluded.step, "
        "cycle = excluded.cycle, revision = alignment.revision + 1, doc = excluded.doc",
    ),
    "event": insert(EventRow, "INSERT"),
    "analysis": insert(AnalysisRow),
    "dose": insert(DoseRow),
    "relaxation": insert(RelaxationRow),
    "rixs": insert(RixsRow),
    "series": insert(SeriesRow),
    # a half-cycle recorded open (the record ended inside it) is replaced when it closes
    "half_cycle": insert(HalfCycleRow),
    "current_step": insert(CurrentStepRow),
    "gitt_pulse": insert(GittPulseRow),
    "interruption": insert(InterruptionRow),
}


class StoreError(RuntimeError):
    pass


WRITER_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers (status, the dashboard) never wait for the writer
    # NORMAL in WAL mode: a killed process loses nothing committed; only an OS crash or power
    # cut can lose the last commits.
    "PRAGMA synchronous=NORMAL",
)
BUSY_TIMEOUT = "PRAGMA busy_timeout=5000"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise StoreError(f"{path.parent}: no run store ({STORE_FILE}) in this directory")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        # a damaged or foreign file fails here, once, with its name, not in a later query
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{path}: not a run store ({e})") from None
        if "potentiostat" not in tables:
            conn.close()
            raise StoreError(f"{path}: not a run store (it has no potentiostat table)")
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        for pragma in WRITER_PRAGMAS:
            conn.execute(pragma)
    conn.execute(BUSY_TIMEOUT)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Runs recorded by an older version: add what is new (schema 3: the SOC of each row;
    schema 4: where each event came from; schema 5: each fit's quality and notes, 'unjudged'
    until ``operando reprocess`` fits it again; schema 6: half-cycles, current steps and
    titration pulses, empty until ``operando reprocess`` derives them; schema 7: current
    interruptions, likewise)."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(potentiostat)")}
    if "soc" not in columns:
        conn.execute("ALTER TABLE potentiostat ADD COLUMN soc REAL")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if "origin" not in columns:
        conn.execute("ALTER TABLE events ADD COLUMN origin TEXT NOT NULL DEFAULT 'ingest'")
        kinds = ", ".join("?" * len(MONITOR_EVENT_KINDS))
        conn.execute(
            f"UPDATE events SET origin = 'monitor' WHERE kind IN ({kinds})", MONITOR_EVENT_KINDS
        )

    # the run's identity, made once: its documents' uids derive from it, so an export, a
    # restarted publisher or a copied run directory gives the same documents (de-duplication
    # downstream by uid)
    conn.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (RUN_UID, str(uuid.uuid4())))
    columns = {r[1] for r in conn.execute("PRAGMA table_info(analysis)")}
    if "quality" not in columns:
        conn.execute("ALTER TABLE analysis ADD COLUMN quality TEXT NOT NULL DEFAULT 'unjudged'")
        conn.execute("ALTER TABLE analysis ADD COLUMN notes TEXT NOT NULL DEFAULT '[]'")


def open_readonly(run_dir: str | Path) -> sqlite3.Connection:
    return connect(store_path(run_dir), readonly=True)
