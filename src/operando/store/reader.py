"""A recorded run, read back: the one read-only reader of a run directory.

``Run`` is what a notebook, the dashboard, the exports, ``inspect``, restore, replay and
reprocess read a run through. It takes no lock and never writes, so it reads a run that a
monitor is recording (SQLite in WAL mode: each query sees the rows committed when it began)
as well as a finished one. Tables come back as pandas DataFrames; a spectrum's arrays come
from the raw log, their one source.

    >>> import operando
    >>> run = operando.open_run("runs/peo-nmc-20261204T0900Z")
    >>> run.fits().query("channel == 'TEY'")[["spectrum_id", "valence", "valence_unc"]]
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import numpy as np
import pandas as pd

from operando.analysis.cycling import (
    Cycle,
    HalfCycle,
    TrackedPeak,
    cycles,
    locate,
    track_peaks,
)
from operando.analysis.gitt import GittPulse
from operando.analysis.ici import Interruption
from operando.config import ConfigError, ExperimentConfig, parse_config
from operando.protocol import ProtocolError, decode
from operando.rawlog import RawRecord, read_record, scan
from operando.sequence import missing_ranges
from operando.store.files import CONFIG_FILE
from operando.store.schema import RUN_UID, StoreError, open_readonly

D = TypeVar("D")


def _nan_for_null(v: Any) -> Any:
    if v is None:
        return math.nan
    if isinstance(v, list):
        return [_nan_for_null(x) for x in v]
    if isinstance(v, dict):
        return {k: _nan_for_null(x) for k, x in v.items()}
    return v


def decode_doc(doc: str | bytes, kind: type[D]) -> D:
    """A derived row's JSON document back as its type: JSON has no NaN, so a value that was
    NaN (not measured, not defined) was written as null and is read back as NaN."""
    return msgspec.convert(_nan_for_null(msgspec.json.decode(doc)), kind)


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    """The experiment configuration a run was recorded with (``config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; is this a run directory?")
    return parse_config(msgspec.json.decode(path.read_bytes()), str(path))


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
    rows_total: int = 0  # of a RIXS map (0: an XAS scan)
    spot_x: float | None = None  # the spot's place, mm (None: the spectrometer did not say)
    spot_y: float | None = None
    trigger_id: str | None = None  # the trigger that asked for it (None: the scan's own pace)


class Run:
    """A run directory, read-only: its tables as DataFrames, its spectra with their arrays."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise StoreError(f"{self.run_dir}: no such run directory")
        self.conn: sqlite3.Connection = open_readonly(self.run_dir)
        self._config: ExperimentConfig | None = None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Run {self.name}: {self.count_spectra()} spectra>"

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def config(self) -> ExperimentConfig:
        """The experiment configuration the run was recorded with."""
        if self._config is None:
            self._config = load_run_config(self.run_dir)
        return self._config

    def _frame(self, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
        return pd.read_sql_query(sql, self.conn, params=list(params))

    # -- the notebook's tables ---------------------------------------------------------------
    def potentiostat(self) -> pd.DataFrame:
        """Every potentiostat row in time order: t (epoch s), Ewe (V), I (mA), Q (mAh), soc,
        mode, step, cycle, source."""
        return self._frame(
            "SELECT t, ewe AS Ewe, i AS I, q AS Q, soc, mode, step, cycle, link AS source "
            "FROM potentiostat ORDER BY t"
        )

    def spectra(self) -> pd.DataFrame:
        """One row a spectrum: what it is (kind, edge, spot, window) and its alignment with
        the cell (Ewe, I, soc over its window; partial and why) and its spot's dose."""
        return self._frame(
            "SELECT s.id AS spectrum_id, s.kind, s.source, s.scan_id, s.edge, s.t_start, "
            "s.t_end, s.spot_id AS spot, s.spot_x AS x_mm, s.spot_y AS y_mm, s.flux, "
            "s.exposure, s.trigger_id, s.n_points, a.ewe_mean AS Ewe, a.i_mean AS I, a.soc, "
            "a.mode, a.step, a.cycle, a.partial, a.reason, a.revision, d.dose_Gy, "
            "d.after_Gy AS spot_dose_Gy FROM spectra s "
            "LEFT JOIN alignment a ON a.spectrum_id = s.id "
            "LEFT JOIN dose d ON d.spectrum_id = s.id ORDER BY s.id"
        )

    def fits(self) -> pd.DataFrame:
        """One row a fitted spectrum and channel: average valence with its 1-sigma, chi2_red,
        energy shift, self-absorption beta, the fit's ``quality`` ("good", "check", "poor")
        and ``notes`` (why not good: parameters at a bound, a poor fit, glitches), and each
        valence's fraction (``f:NAME``) and 1-sigma (``u:NAME``), with the spectrum's edge,
        mid time and SOC."""
        df = self._frame(
            "SELECT a.spectrum_id, a.channel, s.edge, (s.t_start + s.t_end) / 2 AS t, al.soc, "
            "a.method, a.valence, a.valence_unc, a.chi2_red, a.shift_eV, a.beta, a.quality, "
            "a.notes, a.fractions, a.uncertainties FROM analysis a "
            "JOIN spectra s ON s.id = a.spectrum_id "
            "LEFT JOIN alignment al ON al.spectrum_id = a.spectrum_id "
            "ORDER BY a.spectrum_id, a.channel"
        )
        for column, prefix in (("fractions", "f:"), ("uncertainties", "u:")):
            values = pd.DataFrame([json.loads(v) for v in df.pop(column)], index=df.index)
            df = df.join(values.add_prefix(prefix))
        df["notes"] = [json.loads(v) for v in df["notes"]]
        return df

    def dose(self) -> pd.DataFrame:
        """One row a dosed spectrum: its spot, the dose it deposited and the spot's totals
        before and after it (Gy), the dose rate, and when it ended."""
        return self._frame(
            "SELECT d.spectrum_id, d.spot, d.dose_Gy, d.before_Gy, d.after_Gy, d.rate_Gy_s, "
            "s.t_end FROM dose d JOIN spectra s ON s.id = d.spectrum_id ORDER BY d.spectrum_id"
        )

    def events(self) -> pd.DataFrame:
        """Every event in the order recorded (by receive time: after a reprocess the
        monitor's own events keep their ids and the events derived again come after them);
        ``detail`` is the event's JSON text."""
        return self._frame(
            "SELECT id, recv_ns, t, kind, link AS source, origin, detail FROM events "
            "ORDER BY recv_ns, id"
        )

    def relaxation(self) -> pd.DataFrame:
        """One row a rest period, series (``Ewe`` or e.g. ``Mn-L TEY``) and fit: the model AIC
        chose, tau with its 1-sigma, whether the rest resolved it, and the fit's note."""
        df = self._frame(
            "SELECT rest_start, channel AS series, quantity, model, tau_s, tau_err_s, resolved, "
            "n_points, doc FROM relaxation ORDER BY rest_start, channel"
        )
        df["note"] = [json.loads(d).get("note", "") for d in df.pop("doc")]
        df["resolved"] = df["resolved"].astype(bool)
        return df

    def rixs(self) -> pd.DataFrame:
        """One row a RIXS map: rows received of its total, ROI and reference sums, their
        ratio, and the SOC of its newest rows."""
        return self._frame(
            "SELECT map_id, rows, rows_total, roi, reference, ratio, soc FROM rixs ORDER BY rowid"
        )

    def rixs_maps_final(self, skip: int, ended: bool) -> pd.DataFrame:
        """The RIXS maps whose reduction is final, with its document, past the first ``skip``:
        a map's row is replaced as its rows come, so one is final once it has all its rows
        (in the order they completed: the last replacement gives its rowid), and at the end
        the rest follow."""
        final = "" if ended else "WHERE rows >= rows_total "
        return self._frame(
            "SELECT map_id, rows, rows_total, roi, reference, ratio, soc, doc FROM rixs "
            f"{final}ORDER BY rows < rows_total, rowid LIMIT -1 OFFSET ?",
            (skip,),
        )

    # -- electrochemistry (operando.electrochem) ------------------------------------------
    def _has_table(self, table: str) -> bool:
        """Runs recorded before schema 6 have no half-cycle or step tables (reprocess adds
        them)."""
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return found is not None

    def _half_cycle_docs(self) -> list[HalfCycle]:
        if not self._has_table("half_cycles"):
            return []
        rows = self.conn.execute("SELECT doc FROM half_cycles ORDER BY idx").fetchall()
        return [decode_doc(d, HalfCycle) for (d,) in rows]

    def half_cycles(self) -> pd.DataFrame:
        """One row a half-cycle (from the charge passed, not the instrument's counters):
        its cycle and direction, start and end, capacity (mAh, and mAh/g with
        ``[electrochemistry.cycling] active_mass_mg``), energy (mWh), mean voltage, whether it
        closed (``complete``: False when the record ended inside it), and its dQ/dV peaks
        (``peaks_V``: positions in V, ``peak_heights``: mAh/V, negative on discharge)."""
        halves = self._half_cycle_docs()
        mass = self.config.electrochemistry.cycling.active_mass_mg
        df = pd.DataFrame(
            [
                {
                    "idx": h.index,
                    "cycle": h.cycle,
                    "direction": h.direction,
                    "t_start": h.t_start,
                    "t_end": h.t_end,
                    "capacity_mAh": h.capacity_mAh,
                    "capacity_mAh_g": h.capacity_mAh / (mass * 1e-3) if mass else np.nan,
                    "energy_mWh": h.energy_mWh,
                    "mean_voltage_V": h.mean_voltage_V,
                    "complete": h.complete,
                    "peaks_V": [p.voltage_V for p in h.peaks],
                    "peak_heights": [p.height_mAh_V for p in h.peaks],
                }
                for h in halves
            ],
            columns=pd.Index([
                "idx", "cycle", "direction", "t_start", "t_end", "capacity_mAh",
                "capacity_mAh_g", "energy_mWh", "mean_voltage_V", "complete", "peaks_V",
                "peak_heights",
            ]),
        )  # fmt: skip
        return df

    def cycles(self) -> pd.DataFrame:
        """One row a cycle (the run's first direction, then the other): charge and discharge
        capacity (mAh), coulombic efficiency (discharge / charge), energies, energy
        efficiency, capacity retention (discharge / the first complete cycle's), and whether
        both its half-cycles closed."""
        found = cycles(self._half_cycle_docs())
        columns = [f.name for f in dataclasses.fields(Cycle)]
        return pd.DataFrame([dataclasses.astuple(c) for c in found], columns=pd.Index(columns))

    def dqdv(self) -> pd.DataFrame:
        """Incremental capacity of every half-cycle, long form: idx, cycle, direction,
        Ewe (V, bin centre), dQdV (mAh/V, negative on discharge)."""
        parts = [
            pd.DataFrame(
                {
                    "idx": h.index,
                    "cycle": h.cycle,
                    "direction": h.direction,
                    "Ewe": h.dqdv_V,
                    "dQdV": h.dqdv_mAh_V,
                }
            )
            for h in self._half_cycle_docs()
            if h.dqdv_V
        ]
        if not parts:
            return pd.DataFrame(columns=pd.Index(["idx", "cycle", "direction", "Ewe", "dQdV"]))
        return pd.concat(parts, ignore_index=True)

    def dqdv_peaks(self) -> pd.DataFrame:
        """Every dQ/dV peak, tracked from cycle to cycle: ``feature`` ("charge 1", ...) names
        the same feature in each half-cycle it appears in, ``shift_V`` its move since first
        seen; with the half-cycle, cycle, direction, position (V) and height (mAh/V)."""
        found = track_peaks(self._half_cycle_docs())
        columns = [f.name for f in dataclasses.fields(TrackedPeak)]
        return pd.DataFrame([dataclasses.astuple(p) for p in found], columns=pd.Index(columns))

    def current_steps(self) -> pd.DataFrame:
        """One row a current step: when, currents before and after (mA), SOC, the ohmic
        resistance extrapolated to the step (``r_0_ohm``, 1-sigma ``r_0_unc_ohm``, from
        ``r_0_rows`` rows; NaN when the rows are too sparse), dV/dI at the first row after it
        (``r_first_ohm``, ``first_after_s`` later) and the DC resistance at stated times
        (``r_1s_ohm``, ``r_10s_ohm``, ...: NaN when the current did not hold that long)."""
        empty = pd.DataFrame(columns=pd.Index(["t_step", "i_before_mA", "i_after_mA", "soc"]))
        if not self._has_table("current_steps"):
            return empty
        out = []
        for (doc,) in self.conn.execute("SELECT doc FROM current_steps ORDER BY t_step"):
            d = json.loads(doc)
            row = {k: v for k, v in d.items() if k != "r_at_s"}
            row.update({f"r_{k}s_ohm": v for k, v in (d.get("r_at_s") or {}).items()})
            out.append(row)
        return pd.DataFrame(out).fillna(np.nan) if out else empty

    def gitt(self) -> pd.DataFrame:
        """One row a titration pulse: start, length (tau_s), current, the equilibrium voltage
        before and after it (``ocv_after_V``: the titration curve's point at ``soc_after``,
        where the rest relaxes to, with its 1-sigma ``ocv_unc_V``; ``rest_end_V`` the rest's
        last voltage), the
        steady-state and transient changes, R^2 of Ewe against sqrt(t), the diffusion
        coefficient (cm^2/s; NaN without ``[electrochemistry.gitt]``'s material inputs), the
        semi-infinite check tau D / L^2, and ``notes`` naming each assumption that failed."""
        return self._docs_by_start("gitt_pulses", GittPulse)

    def interruptions(self) -> pd.DataFrame:
        """One row a current interruption (ICI): its start (the last row under current),
        length, current and SOC, the voltage there, the resistance R and the diffusion
        resistance coefficient k (ohm/sqrt(s)) from Ewe against sqrt(t), the voltage's slope
        under the current before it, each with its 1-sigma, the rows fitted, the diffusion
        coefficient (cm^2/s, NaN without ``[electrochemistry.gitt]``'s material inputs) with
        its 1-sigma, the check t D / L^2, and ``notes`` naming each assumption that failed."""
        return self._docs_by_start("interruptions", Interruption)

    def _docs_by_start(self, table: str, kind: type) -> pd.DataFrame:
        """A derived table's documents (dataclasses ``kind``) in order of ``t_start``, a
        column a field; empty with those columns in a run recorded before the table."""
        columns = pd.Index([f.name for f in dataclasses.fields(kind)])
        if not self._has_table(table):
            return pd.DataFrame(columns=columns)
        rows = self.conn.execute(f"SELECT doc FROM {table} ORDER BY t_start").fetchall()
        found = [dataclasses.astuple(decode_doc(d, kind)) for (d,) in rows]
        return pd.DataFrame(found, columns=columns)

    def spectra_on_cycles(self) -> pd.DataFrame:
        """Each aligned spectrum placed on the electrochemistry: the half-cycle it was taken
        in (idx, cycle, direction; NaN between half-cycles' charge, e.g. at rest before the
        first), the capacity passed in that half-cycle at its middle (mAh), its SOC, and the
        nearest dQ/dV peak of that half-cycle (V) with Ewe's distance from it (V)."""
        spectra = self._frame(
            "SELECT s.id AS spectrum_id, (s.t_start + s.t_end) / 2 AS t, s.edge, "
            "a.ewe_mean AS Ewe, a.soc, a.doc FROM spectra s "
            "JOIN alignment a ON a.spectrum_id = s.id ORDER BY s.id"
        )
        q_mid = [json.loads(d).get("q_mAh") for d in spectra.pop("doc")]
        spectra["q_mAh"] = pd.to_numeric(pd.Series(q_mid, dtype=object), errors="coerce")
        halves = self._half_cycle_docs()
        where = locate(halves, spectra["t"].to_numpy())
        placed = []
        for k, ewe, q in zip(where, spectra["Ewe"], spectra["q_mAh"], strict=True):
            if k < 0:
                placed.append((np.nan, np.nan, None, np.nan, np.nan, np.nan))
                continue
            h = halves[k]
            peak = min(h.peaks, key=lambda p: abs(p.voltage_V - ewe), default=None)
            placed.append(
                (
                    h.index,
                    h.cycle,
                    h.direction,
                    abs(q - h.q_start_mAh) if np.isfinite(q) else np.nan,
                    peak.voltage_V if peak else np.nan,
                    ewe - peak.voltage_V if peak else np.nan,
                )
            )
        cols = ["half_cycle", "cycle", "direction", "capacity_mAh", "peak_V", "from_peak_V"]
        spectra[cols] = pd.DataFrame(placed, columns=pd.Index(cols), index=spectra.index)
        return spectra.drop(columns=["q_mAh"])

    def spectrum(self, spectrum_id: int) -> RecordedSpectrum:
        """One spectrum with its arrays (from the raw log), alignment, fits and dose."""
        found = next(self.iter_spectra(spectrum_id), None)
        if found is None:
            raise StoreError(f"{self.run_dir}: no spectrum {spectrum_id}")
        return found

    def summary(self) -> dict[str, Any]:
        """What ``operando inspect`` prints: sources, loss, spectra, fits, dose, relaxation."""
        from operando.store.summary import summary_of

        out = summary_of(self.conn, self.run_dir)
        out["uid"] = self.uid  # what its documents, NATS and Tiled know it by
        out["electrochemistry"] = self._electrochemistry_summary()
        return out

    def _electrochemistry_summary(self) -> dict[str, Any]:
        if not self._has_table("half_cycles"):
            return {"derived": False}
        cyc = self.cycles()
        steps = self.current_steps()
        r0 = steps["r_0_ohm"].dropna() if "r_0_ohm" in steps else pd.Series(dtype=float)
        unc = steps["r_0_unc_ohm"].dropna() if "r_0_unc_ohm" in steps else pd.Series(dtype=float)
        gitt = self.gitt()
        d = gitt["d_cm2_s"].dropna()
        ici = self.interruptions()
        trusted = ici.loc[[not n for n in ici["notes"]]]
        ici_d, ici_r = trusted["d_cm2_s"].dropna(), trusted["r_ohm"]
        return {
            "interruptions": len(ici),
            "interruptions_trusted": len(trusted),
            "ici_d_cm2_s_range": [float(ici_d.min()), float(ici_d.max())] if len(ici_d) else None,
            "ici_r_ohm_median": float(ici_r.median()) if len(ici_r) else None,
            "derived": True,
            "gitt_pulses": len(gitt),
            "gitt_trusted": int(sum(not n for n in gitt["notes"])),
            "d_cm2_s_range": [float(d.min()), float(d.max())] if len(d) else None,
            "half_cycles": len(self._half_cycle_docs()),
            "cycles": json.loads(cyc.to_json(orient="records") or "[]"),
            "current_steps": len(steps),
            "r_0_ohm_median": float(r0.median()) if len(r0) else None,
            "r_0_unc_ohm_median": float(unc.median()) if len(unc) else None,
            "r_0_steps": len(r0),
        }

    # -- for exports -------------------------------------------------------------------------
    def count_spectra(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM spectra").fetchone()[0])

    @property
    def uid(self) -> str:
        """The run's identity (made with its store; a run recorded before schema 7 and never
        reopened by a writer: derived from its directory's name and first time), the root of
        its documents' uids."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (RUN_UID,)).fetchone()
        if row is not None:
            return str(row[0])
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"operando:{self.name}:{self.time_range()[0]}"))

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

    def _last_id(self, after: int, limit: int) -> int:
        """The id ``limit`` spectra after ``after`` (every one: the newest)."""
        if limit < 0:
            (last,) = self.conn.execute("SELECT coalesce(max(id), 0) FROM spectra").fetchone()
        else:
            row = self.conn.execute(
                "SELECT id FROM spectra WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                (after, limit - 1),
            ).fetchone()
            last = row[0] if row else self._last_id(after, -1)
        return int(last)

    def iter_spectra(
        self, only: int | None = None, *, after: int = 0, limit: int = -1
    ) -> Iterator[RecordedSpectrum]:
        """Every spectrum (or the one with id ``only``; or up to ``limit`` after id ``after``)
        in id order, with its arrays."""
        if only is not None:
            after, last = only - 1, only
        else:
            last = self._last_id(after, limit)
        ids = "BETWEEN ? AND ?"
        params = (after + 1, last)
        fits: dict[int, dict[str, dict[str, Any]]] = {}
        for sid, channel, doc in self.conn.execute(
            f"SELECT spectrum_id, channel, doc FROM analysis WHERE spectrum_id {ids}", params
        ):
            fits.setdefault(sid, {})[channel] = json.loads(doc)
        doses = {
            r[0]: {"dose_Gy": r[1], "before_Gy": r[2], "after_Gy": r[3]}
            for r in self.conn.execute(
                "SELECT spectrum_id, dose_Gy, before_Gy, after_Gy FROM dose "
                f"WHERE spectrum_id {ids}",
                params,
            )
        }
        where = f"WHERE s.id {ids}"
        rows = self.conn.execute(
            "SELECT s.id, s.kind, s.source, s.scan_id, s.edge, s.t_start, s.t_end, s.spot_id, "
            "s.channels, s.extra, a.doc, r.segment, r.offset, r.length, s.spot_x, s.spot_y, "
            "s.trigger_id "
            "FROM spectra s JOIN raw r ON r.id = s.raw_id "
            f"LEFT JOIN alignment a ON a.spectrum_id = s.id {where} ORDER BY s.id",
            params,
        ).fetchall()
        for (
            (sid, kind, source, scan_id, edge, t0, t1, spot, chans, extra, al, seg, off, n),
            (x, y, trigger),
        ) in ((r[:14], r[14:]) for r in rows):
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
                rows_total=getattr(h, "rows_total", 0),
                spot_x=x,
                spot_y=y,
                trigger_id=trigger,
            )

    # -- for replay, reprocess and the raw log -----------------------------------------------
    def raw_location(self, raw_id: int) -> tuple[int, int, int] | None:
        """(segment, offset, length) of a recorded message in the raw log."""
        row = self.conn.execute(
            "SELECT segment, offset, length FROM raw WHERE id = ?", (raw_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    def raw_message(self, raw_id: int) -> RawRecord:
        """One recorded message by id, exactly as received (on this open run)."""
        where = self.raw_location(raw_id)
        if where is None:
            raise StoreError(f"{self.run_dir}: no raw message {raw_id}")
        return read_record(self.run_dir, *where)

    def raw_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM raw").fetchone()[0])

    def links(self) -> list[str]:
        """The links (configured sources) the run recorded messages on."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT link FROM raw ORDER BY link")]

    def clock_offsets(self) -> dict[str, float]:
        """Per link, the clock offset the monitor measured (``clock = "ping"``), the newest:
        a run-time fact reprocess and restore apply as the live monitor did."""
        out: dict[str, float] = {}
        for link, detail in self.conn.execute(
            "SELECT link, detail FROM events WHERE kind = 'clock_offset' ORDER BY id"
        ):
            offset = json.loads(detail).get("offset_s")
            if isinstance(offset, int | float):
                out[link] = float(offset)
        return out

    def alarm_events(self) -> list[tuple[str, str]]:
        """(kind, detail) of every alarm raised and acknowledged, in order."""
        return self.conn.execute(
            "SELECT kind, detail FROM events WHERE kind IN ('alarm', 'alarm_acknowledged') "
            "ORDER BY id"
        ).fetchall()

    def lost_ranges(self, link: str) -> dict[str, list[list[int]]]:
        return lost_ranges(self.conn, link)

    # -- for restore (a monitor restarted on this run directory) ------------------------------
    def stream_heads(self) -> list[tuple[str, str, int]]:
        """Per link: its newest own session and the highest seq recorded in it (a refused
        stranger's session, even the newest, is not the link's to continue)."""
        return self.conn.execute(
            f"SELECT r.link, r.session, (SELECT max(seq) FROM raw WHERE link = r.link AND "
            f"session = r.session AND {_IN_STREAM}) FROM raw r WHERE r.id IN "
            f"(SELECT max(id) FROM raw WHERE {_OWN_STREAM} GROUP BY link)"
        ).fetchall()

    def past_sessions(self, link: str, current: str) -> list[tuple[str, int]]:
        """The link's earlier own sessions with the highest seq of each, oldest first."""
        return self.conn.execute(
            f"SELECT session, max(seq) FROM raw WHERE link = ? AND session != ? AND "
            f"{_OWN_STREAM} GROUP BY session ORDER BY max(id)",
            (link, current),
        ).fetchall()

    def stream_messages(self) -> dict[str, int]:
        """Per link, how many of its own stream messages (not commands, acks or a refused
        stranger's) were recorded."""
        return dict(
            self.conn.execute(f"SELECT link, count(*) FROM raw WHERE {_OWN_STREAM} GROUP BY link")
        )

    def stranger_sessions(self) -> dict[str, dict[str, int]]:
        return stranger_sessions(self.conn)

    def event_counts(self) -> list[tuple[str | None, str, int]]:
        """(link, kind, how many) of every event."""
        return self.conn.execute(
            "SELECT link, kind, count(*) FROM events GROUP BY link, kind"
        ).fetchall()

    def spot_changes(self) -> list[tuple[str | None, str, bool]]:
        """(old, new, whether old was left for good) of every spot change the orchestrator
        made, in order (a control scan's visit leaves no spot spent)."""
        return [
            (old, new, spent is None or bool(spent))
            for old, new, spent in self.conn.execute(
                "SELECT json_extract(detail, '$.old'), json_extract(detail, '$.new'), "
                "json_extract(detail, '$.spent') FROM events "
                "WHERE kind = 'spot_change' ORDER BY id"
            )
            if new
        ]

    def last_series_start(self, link: str) -> dict[str, Any] | None:
        """The newest ``series_start`` event's detail on ``link`` (series, metadata)."""
        row = self.conn.execute(
            "SELECT detail FROM events WHERE kind = 'series_start' AND link = ? "
            "ORDER BY id DESC LIMIT 1",
            (link,),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def potentiostat_chunks(self, link: str, size: int = 100_000) -> Iterator[np.ndarray]:
        """The link's potentiostat rows in the order recorded, as float arrays of columns
        t, Ewe, I, Q (NaN: none), mode, step, cycle, SOC (NaN: none)."""
        cur = self.conn.execute(
            "SELECT t, ewe, i, q, mode, step, cycle, soc FROM potentiostat WHERE link = ? "
            "ORDER BY rowid",
            (link,),
        )
        while rows := cur.fetchmany(size):
            yield np.array(rows, dtype=np.float64)

    def potentiostat_after(self, rowid: int, limit: int) -> pd.DataFrame:
        """Up to ``limit`` potentiostat rows recorded after ``rowid``, in the order recorded,
        ``rowid`` first (what a follower of the run keeps as its place)."""
        return self._frame(
            "SELECT rowid, t, ewe AS Ewe, i AS I, q AS Q, soc, mode, step, cycle "
            "FROM potentiostat WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )

    def events_after(self, event_id: int, limit: int) -> pd.DataFrame:
        """Up to ``limit`` events recorded after id ``event_id``, in id order."""
        return self._frame(
            "SELECT id, recv_ns, t, kind, link, detail FROM events WHERE id > ? ORDER BY id "
            "LIMIT ?",
            (event_id, limit),
        )

    def sources_not_closed(self) -> list[str]:
        from operando.store.summary import sources_not_closed

        return sources_not_closed(self.conn)

    def last_received(self) -> float | None:
        from operando.store.summary import last_received

        return last_received(self.conn)

    def last_fitted(self) -> int:
        """The newest spectrum with a fit (0: none): the analysis has passed every one before."""
        (n,) = self.conn.execute("SELECT coalesce(max(spectrum_id), 0) FROM analysis").fetchone()
        return int(n)

    def readiness(self, ids: list[int]) -> dict[int, tuple[bool | None, set[str]]]:
        """Of each spectrum in ``ids``: is its alignment partial (None: not aligned yet), and
        which channels have a fit; from the index alone, without reading its arrays."""
        out: dict[int, tuple[bool | None, set[str]]] = {}
        for i in range(0, len(ids), 500):  # within SQLite's limit of parameters
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for sid, partial in self.conn.execute(
                f"SELECT s.id, a.partial FROM spectra s LEFT JOIN alignment a "
                f"ON a.spectrum_id = s.id WHERE s.id IN ({marks})",
                part,
            ):
                out[sid] = (None if partial is None else bool(partial), set())
            for sid, channel in self.conn.execute(
                f"SELECT spectrum_id, channel FROM analysis WHERE spectrum_id IN ({marks})", part
            ):
                out[sid][1].add(channel)
        return out

    def rests_fitted(self) -> tuple[float | None, int]:
        """The newest rest with a relaxation fit (its start, epoch s; None: none) and how
        many rests have one: what says whether a rest's fits are final (a later rest began)."""
        newest, n = self.conn.execute(
            "SELECT max(rest_start), count(DISTINCT rest_start) FROM relaxation"
        ).fetchone()
        return newest, int(n)

    def relaxation_before(self, before: float, skip: int) -> pd.DataFrame:
        """The relaxation fits of the rests that started before ``before`` (epoch s), with
        their documents, in order of rest, series and quantity, past the first ``skip``."""
        return self._frame(
            "SELECT rest_start, channel AS series, quantity, model, tau_s, tau_err_s, resolved, "
            "n_points, doc FROM relaxation WHERE rest_start < ? "
            "ORDER BY rest_start, channel, quantity LIMIT -1 OFFSET ?",
            (before, skip),
        )

    def documents_of(self, table: str) -> list[str]:
        """Each row's JSON document of a derived table, in the order its frame has
        (``half_cycles()``, ``current_steps()``, ``gitt()``, ``interruptions()``)."""
        if not self._has_table(table):
            return []
        order = {"half_cycles": "idx", "current_steps": "t_step"}.get(table, "t_start")
        return [d for (d,) in self.conn.execute(f"SELECT doc FROM {table} ORDER BY {order}")]

    def settled_rows(self, table: str) -> int:
        """How many rows of a derived table are done: every row, but of ``half_cycles`` only
        the complete ones (the open half-cycle is rewritten as it grows)."""
        if not self._has_table(table):
            return 0
        done = " WHERE complete" if table == "half_cycles" else ""
        (n,) = self.conn.execute(f"SELECT count(*) FROM {table}{done}").fetchone()
        return int(n)

    def counts(self) -> dict[str, int]:
        """How many potentiostat rows, spectra, aligned and partial spectra the run holds."""
        (rows,) = self.conn.execute("SELECT count(*) FROM potentiostat").fetchone()
        (spectra,) = self.conn.execute("SELECT count(*) FROM spectra").fetchone()
        aligned, partial = self.conn.execute(
            "SELECT count(*), coalesce(sum(partial), 0) FROM alignment"
        ).fetchone()
        return {
            "potentiostat_rows": rows,
            "spectra": spectra,
            "aligned": aligned,
            "partial": partial,
        }

    def spot_doses(self) -> dict[str, float]:
        """Each spot's total dose so far (Gy)."""
        return dict(self.conn.execute("SELECT spot, max(after_Gy) FROM dose GROUP BY spot"))

    def unaligned(self) -> list[UnalignedSpectrum]:
        """Spectra recorded but not yet aligned (the monitor stopped first), with the dose
        counted for each when it arrived (None: not yet written)."""
        rows = self.conn.execute(
            "SELECT s.id, s.link, s.scan_id, s.kind, s.t_start, s.t_end, s.edge, s.spot_id, "
            "s.trigger_id, s.channels, s.raw_id, d.before_Gy, d.after_Gy FROM spectra s "
            "LEFT JOIN dose d ON d.spectrum_id = s.id "
            "WHERE s.id NOT IN (SELECT spectrum_id FROM alignment) ORDER BY s.id"
        ).fetchall()
        return [
            UnalignedSpectrum(
                *r[:9],
                channels=json.loads(r[9] or "[]"),
                raw_id=r[10],
                dose=None if r[11] is None else (r[11], r[12]),
            )
            for r in rows
        ]


class UnalignedSpectrum(msgspec.Struct, frozen=True):
    spectrum_id: int
    link: str
    scan_id: str
    kind: str
    t_start: float
    t_end: float
    edge: str
    spot: str | None
    trigger_id: str | None
    channels: list[str]
    raw_id: int
    dose: tuple[float, float] | None  # the spot's (before, after) as counted on arrival


def open_run(run_dir: str | Path) -> Run:
    """Open a recorded (or recording) run for reading: ``operando.open_run(path)``."""
    return Run(run_dir)


_IN_STREAM = "seq IS NOT NULL AND kind NOT IN ('command', 'ack')"
# the link's own stream: without the sessions refused as another source's
_OWN_STREAM = (
    f"{_IN_STREAM} AND session NOT IN (SELECT json_extract(detail, '$.session') FROM events "
    "WHERE kind = 'stranger_refused' AND events.link = raw.link)"
)


def stranger_sessions(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per link: each refused stranger's session and how many of its messages were
    recorded (never derived)."""
    out: dict[str, dict[str, int]] = {}
    for link, session, n in conn.execute(
        "SELECT e.link, e.session, (SELECT count(*) FROM raw WHERE raw.link = e.link AND "
        "raw.session = e.session) FROM (SELECT link, json_extract(detail, '$.session') AS "
        "session FROM events WHERE kind = 'stranger_refused') e"
    ):
        out.setdefault(link, {})[session] = n
    return out


def read_raw(run_dir: str | Path, raw_id: int) -> RawRecord:
    """One recorded message by id, exactly as received."""
    with Run(run_dir) as run:
        return run.raw_message(raw_id)


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
    # another source's stream refused on this link is not this link's to lose
    for stranger in stranger_sessions(conn).get(link, {}):
        out.pop(stranger, None)
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
        for a, b in missing_ranges(held, first, last):
            if ranges and ranges[-1][1] >= a - 1 and ranges[-1][0] <= a:
                ranges[-1][1] = max(ranges[-1][1], b)
            else:
                ranges.append([a, b])
    return out
