"""A recorded run, read back for exports: spectra with their arrays, alignment and analysis,
the potentiostat record, dose and events. Read-only; the raw log is the arrays' one source.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from operando.config import ExperimentConfig
from operando.protocol import ProtocolError, decode
from operando.run import load_run_config
from operando.store import open_readonly, read_record


@dataclass(frozen=True, slots=True)
class RecordedSpectrum:
    """One spectrum (an XAS scan or RIXS rows) as the run recorded and analysed it."""

    id: int
    kind: str  # xas_scan | rixs_rows
    source: str
    scan_id: str
    edge: str
    t_start: float
    t_end: float
    spot: str | None
    channels: list[str]
    extra: dict[str, Any]
    arrays: dict[str, np.ndarray]
    alignment: dict[str, Any] | None  # the alignment document (None: never aligned)
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)  # channel -> fit document
    dose: dict[str, float] | None = None
    map_id: str = ""
    row_offset: int = 0


class RecordedRun:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.conn: sqlite3.Connection = open_readonly(self.run_dir)
        self.config: ExperimentConfig = load_run_config(self.run_dir)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RecordedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.run_dir.name

    def count_spectra(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM spectra").fetchone()[0])

    def time_range(self) -> tuple[float, float]:
        """First and last time the run knows of (potentiostat rows and spectra), epoch s."""
        lo, hi = self.conn.execute(
            "SELECT min(t), max(t) FROM (SELECT min(t) t FROM potentiostat UNION ALL "
            "SELECT max(t) FROM potentiostat UNION ALL SELECT min(t_start) FROM spectra "
            "UNION ALL SELECT max(t_end) FROM spectra)"
        ).fetchone()
        if lo is None:
            (recv,) = self.conn.execute("SELECT min(recv_ns) FROM raw").fetchone()
            lo = hi = (recv or 0) / 1e9
        return float(lo), float(hi)

    def potentiostat(self) -> pd.DataFrame:
        """Every potentiostat row in time order: t (epoch s), Ewe, I, Q, soc, mode, step, cycle."""
        return pd.read_sql_query(
            "SELECT t, ewe AS Ewe, i AS I, q AS Q, soc, mode, step, cycle, link AS source "
            "FROM potentiostat ORDER BY t",
            self.conn,
        )

    def events(self) -> pd.DataFrame:
        # by receive time: after a reprocess the monitor's own events keep their ids and the
        # events derived again come after them
        return pd.read_sql_query(
            "SELECT id, recv_ns, t, kind, link AS source, detail FROM events ORDER BY recv_ns, id",
            self.conn,
        )

    def spectra(self) -> Iterator[RecordedSpectrum]:
        fits: dict[int, dict[str, dict[str, Any]]] = {}
        for sid, channel, doc in self.conn.execute(
            "SELECT spectrum_id, channel, doc FROM analysis"
        ):
            fits.setdefault(sid, {})[channel] = json.loads(doc)
        doses = {
            r[0]: {"dose_Gy": r[1], "before_Gy": r[2], "after_Gy": r[3]}
            for r in self.conn.execute("SELECT spectrum_id, dose_Gy, before_Gy, after_Gy FROM dose")
        }
        rows = self.conn.execute(
            "SELECT s.id, s.kind, s.source, s.scan_id, s.edge, s.t_start, s.t_end, s.spot_id, "
            "s.channels, s.extra, a.doc, r.segment, r.offset, r.length "
            "FROM spectra s JOIN raw r ON r.id = s.raw_id "
            "LEFT JOIN alignment a ON a.spectrum_id = s.id ORDER BY s.id"
        ).fetchall()
        for sid, kind, source, scan_id, edge, t0, t1, spot, chans, extra, al, seg, off, n in rows:
            rec = read_record(self.run_dir, seg, off, n)
            try:
                msg = decode(rec.frames)
            except ProtocolError:  # indexed as a spectrum, so it decoded once: a changed log
                continue
            h = msg.header
            yield RecordedSpectrum(
                id=sid,
                kind=kind,
                source=source,
                scan_id=scan_id,
                edge=edge,
                t_start=t0,
                t_end=t1,
                spot=spot,
                channels=json.loads(chans) if chans else [],
                extra=json.loads(extra) if extra else {},
                arrays={k: np.array(v) for k, v in msg.arrays.items()},
                alignment=json.loads(al) if al else None,
                fits=fits.get(sid, {}),
                dose=doses.get(sid),
                map_id=getattr(h, "map_id", ""),
                row_offset=getattr(h, "row_offset", 0),
            )
