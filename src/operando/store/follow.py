"""Following a run as it grows: each table's rows past what was read before.

The dashboard reads a run being recorded this way: one read-only connection (WAL: it never
waits for the writer), a watermark per table (the last rowid read), and each query returns
only what is new, as typed rows (``rowid`` first: the watermark).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from operando.config import ConfigError, ExperimentConfig
from operando.protocol import ProtocolError, decode
from operando.rawlog import RawLogError, read_record
from operando.store.files import is_run_dir
from operando.store.reader import load_run_config
from operando.store.schema import StoreError, open_readonly

log = logging.getLogger(__name__)

# columns of ``cell_rows``: what the dashboard draws of the potentiostat record
CELL_COLUMNS = ("t", "Ewe", "I", "soc", "mode")


class AlignedSpectrum(NamedTuple):
    rowid: int
    spectrum_id: int
    raw_id: int
    link: str
    kind: str
    edge: str
    t_start: float
    t_end: float
    spot: str | None
    x_mm: float | None
    y_mm: float | None
    trigger_id: str | None
    partial: int
    reason: str
    soc: float | None
    Ewe: float | None
    I: float | None  # noqa: E741 - the current, as the cell's columns name it
    revision: int
    q_mAh: float | None  # the charge counter at the window's middle (to place it in a cycle)


class FittedSpectrum(NamedTuple):
    rowid: int
    spectrum_id: int
    channel: str
    valence: float | None
    valence_unc: float | None
    chi2_red: float | None
    quality: str  # "good", "check", "poor" ("unjudged": recorded before fits were judged)
    notes: str  # JSON list
    fractions: str  # JSON
    uncertainties: str  # JSON
    doc: str  # the whole fit, JSON
    edge: str
    t_start: float
    t_end: float
    soc: float | None
    raw_id: int


class ChannelFit(NamedTuple):
    rowid: int
    spectrum_id: int
    channel: str
    doc: str
    quality: str  # "good", "check", "poor" ("unjudged": recorded before fits were judged)
    notes: str  # JSON list


class SpotDose(NamedTuple):
    rowid: int
    spectrum_id: int
    spot: str
    scan_Gy: float
    total_Gy: float
    t: float
    x_mm: float | None
    y_mm: float | None


class SpectrumArrays(NamedTuple):
    """What a dashboard draws of one spectrum: its channels' names and arrays (energy, I0,
    TEY, ...; RIXS rows: excitation, emission, counts) and, for RIXS rows, their map and
    place in it."""

    channels: tuple[str, ...]
    arrays: Mapping[str, np.ndarray]
    map_id: str  # "" for an XAS scan
    row_offset: int
    rows_total: int


class EventEntry(NamedTuple):
    id: int
    recv_ns: int
    t: float | None
    kind: str
    link: str | None
    detail: str  # JSON


class RelaxationEntry(NamedTuple):
    rowid: int
    rest_start: float
    channel: str
    quantity: str
    doc: str


class RixsEntry(NamedTuple):
    rowid: int
    map_id: str
    rows: int
    rows_total: int
    roi: float | None
    ratio: float | None
    soc: float | None


class CyclingEntry(NamedTuple):
    """A half-cycle (``key``: its index) or a current step (``key``: its time), as a JSON
    document (``analysis.cycling.HalfCycle``, ``analysis.resistance.CurrentStep``). A half-cycle
    recorded open and closed later comes again: replaced, with a new rowid."""

    rowid: int
    key: float
    doc: str


R = TypeVar("R", bound=tuple)


def _typed(row_type: type[R], rows: list[tuple[Any, ...]]) -> list[R]:
    return [row_type(*r) for r in rows]


class RunFollower:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.label = str(self.run_dir)
        self.marks: Counter[str] = Counter()  # table -> last rowid read
        self._conn: sqlite3.Connection | None = None

    def config(self) -> ExperimentConfig | None:
        """The experiment the run was recorded with (None, with a warning: unreadable)."""
        try:
            return load_run_config(self.run_dir)
        except ConfigError as e:
            log.warning("%s", e)
            return None

    @property
    def ready(self) -> bool:
        """Is there a run store to read yet (the monitor creates it when it starts)?"""
        if self._conn is None and is_run_dir(self.run_dir):
            self._conn = open_readonly(self.run_dir)
        return self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        if not self.ready:
            return []
        assert self._conn is not None
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as e:  # e.g. the schema is being created
            raise StoreError(f"reading the run store: {e}") from None

    def _new(self, table: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows past the watermark of ``table``; ``sql`` selects rowid first."""
        rows = self._query(sql, (self.marks[table], *params))
        if rows:
            self.marks[table] = max(r[0] for r in rows)
        return rows

    def cell_rows(self, link: str | None, chunk: int) -> np.ndarray | None:
        """Up to ``chunk`` new potentiostat rows of ``link`` (all links: None) as an array
        of ``CELL_COLUMNS``; None when there are none.

        One text value a query: row by row, sqlite3 takes the GIL back for every row, and
        while the server thread was busy drawing a page, reading a 72 h history that way took
        over 15 s; as one value it takes ~0.1 s. (SQLite's printf keeps 16 significant digits:
        sub-microsecond times, enough for a display.)"""
        rows = self._query(
            "SELECT max(r), count(*), group_concat(v, ',') FROM (SELECT rowid AS r, "
            "printf('%.17g,%.17g,%.17g,%s,%d', t, ewe, i, coalesce(soc, 'nan'), mode) "
            "AS v FROM potentiostat WHERE rowid > ? AND (link = ? OR ? IS NULL) "
            "ORDER BY rowid LIMIT ?)",
            (self.marks["potentiostat"], link, link, chunk),
        )
        if not rows:  # no store yet
            return None
        last, n, text = rows[0]
        if not n or last is None or text is None:
            return None
        self.marks["potentiostat"] = int(last)
        return np.array(text.split(","), dtype=np.float64).reshape(-1, len(CELL_COLUMNS))

    def alignments(self, again: Iterable[int]) -> list[AlignedSpectrum]:
        """New alignments, and those of spectra ``again`` (partial ones, which may be
        realigned)."""
        ids = ",".join(str(int(i)) for i in sorted(again)) or "-1"
        return _typed(
            AlignedSpectrum,
            self._new(
                "alignment",
                "SELECT a.rowid, s.id, s.raw_id, s.link, s.kind, s.edge, s.t_start, s.t_end, "
                "s.spot_id, s.spot_x, s.spot_y, s.trigger_id, a.partial, a.reason, a.soc, "
                "a.ewe_mean, a.i_mean, a.revision, json_extract(a.doc, '$.q_mAh') "
                "FROM alignment a JOIN spectra s ON s.id = "
                f"a.spectrum_id WHERE a.rowid > ? OR a.spectrum_id IN ({ids}) ORDER BY a.rowid",
            ),
        )

    def fits(self) -> list[FittedSpectrum]:
        """New fits, with their spectrum's edge, window, SOC and raw message."""
        return _typed(
            FittedSpectrum,
            self._new(
                "analysis",
                "SELECT a.rowid, a.spectrum_id, a.channel, a.valence, a.valence_unc, a.chi2_red, "
                "a.quality, a.notes, a.fractions, a.uncertainties, a.doc, s.edge, s.t_start, "
                "s.t_end, al.soc, s.raw_id "
                "FROM analysis a JOIN spectra s ON s.id = a.spectrum_id LEFT JOIN alignment al "
                "ON al.spectrum_id = a.spectrum_id WHERE a.rowid > ? ORDER BY a.rowid",
            ),
        )

    def fits_of(self, spectrum_id: int) -> list[ChannelFit]:
        """Every channel's fit of one spectrum."""
        return _typed(
            ChannelFit,
            self._query(
                "SELECT rowid, spectrum_id, channel, doc, quality, notes FROM analysis "
                "WHERE spectrum_id = ?",
                (spectrum_id,),
            ),
        )

    def doses(self) -> list[SpotDose]:
        """New doses: each scan's, its spot's total after it, when and where."""
        return _typed(
            SpotDose,
            self._new(
                "dose",
                "SELECT d.rowid, d.spectrum_id, d.spot, d.dose_Gy, d.after_Gy, s.t_end, s.spot_x, "
                "s.spot_y FROM dose d JOIN spectra s ON s.id = d.spectrum_id WHERE d.rowid > ? "
                "ORDER BY d.rowid",
            ),
        )

    def events(self) -> list[EventEntry]:
        return _typed(
            EventEntry,
            self._new(
                "events",
                "SELECT id, recv_ns, t, kind, link, detail FROM events WHERE id > ? ORDER BY id",
            ),
        )

    def relaxation(self) -> list[RelaxationEntry]:
        return _typed(
            RelaxationEntry,
            self._new(
                "relaxation",
                "SELECT rowid, rest_start, channel, quantity, doc FROM relaxation WHERE rowid > ?",
            ),
        )

    def rixs(self) -> list[RixsEntry]:
        """New RIXS map reductions."""
        return _typed(
            RixsEntry,
            self._new(
                "rixs",
                "SELECT rowid, map_id, rows, rows_total, roi, ratio, soc FROM rixs WHERE rowid > ?",
            ),
        )

    def cycling(self, table: str) -> list[CyclingEntry]:
        """New rows of ``half_cycles``, ``current_steps``, ``gitt_pulses`` or
        ``interruptions`` (none in a run recorded before them)."""
        key = {
            "half_cycles": "idx",
            "current_steps": "t_step",
            "gitt_pulses": "t_start",
            "interruptions": "t_start",
        }[table]
        found = self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        )
        if not found:
            return []
        return _typed(
            CyclingEntry,
            self._new(
                table, f"SELECT rowid, {key}, doc FROM {table} WHERE rowid > ? ORDER BY rowid"
            ),
        )

    def raw_location(self, raw_id: int) -> tuple[int, int, int] | None:
        rows = self._query("SELECT segment, offset, length FROM raw WHERE id = ?", (raw_id,))
        return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    def spectrum_arrays(self, raw_id: int) -> SpectrumArrays | None:
        """A recorded spectrum's arrays, from the raw log; None (with a warning) when they
        cannot be read."""
        row = self.raw_location(raw_id)
        if row is None:
            return None
        try:
            msg = decode(read_record(self.run_dir, *row).frames)
        except (RawLogError, ProtocolError, OSError) as e:
            log.warning("raw message %d: %s", raw_id, e)
            return None
        h = msg.header
        return SpectrumArrays(
            tuple(getattr(h, "channels", ())),
            msg.arrays,
            getattr(h, "map_id", "") or getattr(h, "scan_id", ""),
            getattr(h, "row_offset", 0),
            getattr(h, "rows_total", 0),
        )
