"""What the dashboard shows, read from the run store; one per dashboard process.

The run store is the one source of truth: history and live data come the same way, by
incremental queries past what was already read (rowid watermarks), so a page opened late, a
reload and a dashboard started after a crash all show the same run. The monitor's state stream
(``StateFeed``) only wakes the reader up early (so a new spectrum shows within a render tick) and
carries what the store does not hold: the live status of sources and alarms.

Memory stays bounded over days: the cell trace halves the resolution of its older half when it
reaches its capacity (the full rows stay in the store), the event log keeps the newest entries,
and per-spectrum arrays are kept only for the newest spectra of each edge.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
import pandas as pd
import zmq

from operando.analysis.beam import BeamHistory, point_times
from operando.analysis.cycling import Cycle, HalfCycle, cycles, locate
from operando.analysis.lcf import FitResult, model_curve
from operando.analysis.normalize import EDGE_WINDOWS, NormalizationError, normalize
from operando.analysis.references import ReferenceError, References
from operando.analysis.relaxation import ModelFit, RelaxationResult, evaluate, split_series
from operando.analysis.rest import RestCriterion
from operando.analysis.rixs import MapAccumulator
from operando.analysis.signal import signal
from operando.config import ExperimentConfig
from operando.protocol import MODE_CC, ProtocolError, StateUpdate, decode
from operando.store.follow import (
    CELL_COLUMNS,
    AlignedSpectrum,
    ChannelFit,
    CyclingEntry,
    EventEntry,
    FittedSpectrum,
    RelaxationEntry,
    RixsEntry,
    RunFollower,
    SpectrumArrays,
    SpotDose,
)
from operando.store.reader import decode_doc
from operando.store.schema import StoreError

log = logging.getLogger(__name__)

CELL_CHUNK = 100_000  # rows per query
SPOT_COLUMNS = ("spot", "x_mm", "y_mm")
BEAM_COLUMNS = ("spectrum_id", "edge", "t", "i0_median", "i0_min", "level", "lost_s")


class Follower(Protocol):
    """Where a view reads its run: each call gives what is new since the last one (the run
    store, ``RunFollower``; a run in Tiled, ``dashboards.remote.TiledFollower``)."""

    label: str  # what the header names the run by

    @property
    def ready(self) -> bool: ...
    def close(self) -> None: ...
    def config(self) -> ExperimentConfig | None: ...
    def cell_rows(self, link: str | None, chunk: int) -> np.ndarray | None: ...
    def alignments(self, again: Iterable[int]) -> list[AlignedSpectrum]: ...
    def fits(self) -> list[FittedSpectrum]: ...
    def fits_of(self, spectrum_id: int) -> list[ChannelFit]: ...
    def doses(self) -> list[SpotDose]: ...
    def events(self) -> list[EventEntry]: ...
    def relaxation(self) -> list[RelaxationEntry]: ...
    def rixs(self) -> list[RixsEntry]: ...
    def cycling(self, table: str) -> list[CyclingEntry]: ...
    def spectrum_arrays(self, raw_id: int) -> SpectrumArrays | None: ...


class CellTrace:
    """Potentiostat rows in time order, at most ``capacity`` of them: when full, every other
    row of the older half is dropped, so recent data keep full resolution and old data thin out
    (a display buffer; the store keeps every row)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.data = np.zeros((0, len(CELL_COLUMNS)))
        # counts rewrites of rows already held (a late row sorted in, the old half thinned):
        # a plot that appends new rows must then take the trace again
        self.revision = 0

    def extend(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        late = len(self.data) and rows[0, 0] < self.data[-1, 0]
        self.data = np.vstack([self.data, rows])
        if late:  # rows that arrived out of order: keep the trace sorted by time
            self.data = self.data[np.argsort(self.data[:, 0], kind="stable")]
            self.revision += 1
        while len(self.data) > self.capacity:
            half = len(self.data) // 2
            self.data = np.vstack([self.data[:half:2], self.data[half:]])
            self.revision += 1

    def frame(self) -> pd.DataFrame:
        """The trace as a frame (the time plots take ``t``, seconds since the epoch)."""
        return pd.DataFrame(self.data, columns=pd.Index(CELL_COLUMNS))


@dataclass
class LatestSpectrum:
    spectrum_id: int
    edge: str
    soc: float | None
    channels: dict[str, dict[str, np.ndarray]]  # channel -> energy, data, model, residual
    # channel -> the fit's quality ("good", "check", "poor") and why (FitResult.notes)
    quality: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)


@dataclass
class Snapshot:
    """An immutable picture of the run, shared by every browser session; ``parts`` says which
    pieces changed since the last picture (so a session redraws only those)."""

    version: int = 0
    parts: dict[str, int] = field(default_factory=dict)
    cell: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=pd.Index(CELL_COLUMNS)))
    cell_revision: int = 0  # CellTrace.revision: rows already shown were rewritten
    rests: list[tuple[float, float]] = field(default_factory=list)
    spectra: pd.DataFrame = field(default_factory=pd.DataFrame)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)
    dose: pd.DataFrame = field(default_factory=pd.DataFrame)
    spots: pd.DataFrame = field(  # every spot known: name, x and y (mm)
        default_factory=lambda: pd.DataFrame(columns=pd.Index(SPOT_COLUMNS))
    )
    damage: pd.DataFrame = field(default_factory=pd.DataFrame)
    triggers: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: list[dict[str, Any]] = field(default_factory=list)
    event_counts: dict[str, int] = field(default_factory=dict)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    relaxation: dict[str, Any] | None = None
    latest: LatestSpectrum | None = None
    # each scan's I0 (BEAM_COLUMNS): the beam's level over time, and when it was lost
    beam: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=pd.Index(BEAM_COLUMNS)))
    beam_lost: list[tuple[int, float, float]] = field(default_factory=list)  # (scan, from, to)
    heatmaps: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )
    rixs_maps: pd.DataFrame = field(default_factory=pd.DataFrame)
    rixs_latest: dict[str, Any] | None = None
    status: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    monitor_connected: bool = False
    budget_Gy: float = 0.0
    refreshed_at: float = 0.0
    # the electrochemistry (operando.electrochem): half-cycles in order, per-cycle figures,
    # current steps with the cycle each falls in, fits placed on the half-cycles
    half_cycles: list[HalfCycle] = field(default_factory=list)
    cycles: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    fits_on_cycles: pd.DataFrame = field(default_factory=pd.DataFrame)
    gitt: pd.DataFrame = field(default_factory=pd.DataFrame)  # titration pulses
    interruptions: pd.DataFrame = field(default_factory=pd.DataFrame)  # ICI


def _frame_of(rows: dict[float, dict[str, Any]]) -> pd.DataFrame:
    """Derived rows (by their time) as a frame in time order, missing numbers NaN (a column
    never given, all None, is a number column of NaN: fillna on it was pandas' deprecated
    downcast, and without it the column stays object)."""
    frame = pd.DataFrame([rows[k] for k in sorted(rows)])
    never_given = [c for c in frame.columns if bool(frame[c].isna().all())]
    frame = frame.astype(dict.fromkeys(never_given, float))
    return frame.mask(frame.isna(), np.nan)


def _fraction_columns(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def _damage_row(status: str, t: Any, d: dict[str, Any], numbers: Any) -> dict[str, Any]:
    """One line of the damage table: a suspicion (``status`` "suspicion"), a check due by
    dose ("check") or a verdict ("damage", "electrochemistry", "inconclusive",
    "unconfirmed") with its evidence."""
    return {
        "status": status,
        "t": t,
        "spectrum_id": d.get("spectrum_id"),
        "spot": d.get("spot"),
        "test": d.get("test"),
        "p_value": d.get("p_value"),
        "statistic": d.get("statistic"),
        "dose_MGy": d.get("dose_Gy", math.nan) / 1e6,
        "evidence": ", ".join(
            f"{k} {v:.4g}" for k, v in (numbers or {}).items() if isinstance(v, int | float)
        ),
        "why": "",
    }


class RunView:
    """Reads a run directory incrementally and keeps the snapshot the sessions draw."""

    def __init__(
        self,
        run: str | Path | Follower,
        *,
        cell_capacity: int = 100_000,
        heatmap_spectra: int = 200,
        event_log: int = 500,
    ) -> None:
        # a run directory (read as it grows), or a follower of a run elsewhere (in Tiled)
        follow = RunFollower(Path(run)) if isinstance(run, str | Path) else run
        self.follow: Follower = follow
        self.run_dir = follow.run_dir if isinstance(follow, RunFollower) else None
        self.label = follow.label
        self.cfg = follow.config()
        pstat = self.cfg.potentiostat if self.cfg else None
        self.pstat_link = pstat.name if pstat else None
        self.refs = self._references()
        # the run's one rest criterion: the shading is the rest the relaxation was fitted over
        self.rest = self.cfg.analysis.rest if self.cfg else RestCriterion()
        self.cell = CellTrace(cell_capacity)
        self.heatmap_spectra = heatmap_spectra
        self.spectra: dict[int, dict[str, Any]] = {}
        self.partial: set[int] = set()
        self.fits: dict[tuple[int, str], dict[str, Any]] = {}
        self.dose: dict[int, dict[str, Any]] = {}
        # every spot known, dosed or not: the experiment's list, then the spectrometer's
        # announced grid (name -> x, y in mm; NaN where only the name is known)
        configured = self.cfg.orchestration.spots if self.cfg else []
        self.spots: dict[str, tuple[float, float]] = {k: (math.nan, math.nan) for k in configured}
        self.damage: list[dict[str, Any]] = []
        self.triggers: list[dict[str, Any]] = []
        self.events: deque[dict[str, Any]] = deque(maxlen=event_log)
        self.event_counts: Counter[str] = Counter()
        self.alarms: dict[int, dict[str, Any]] = {}
        self.relaxation: dict[tuple[float, str], dict[str, Any]] = {}
        self.rixs_maps: dict[str, dict[str, Any]] = {}
        self.rixs_acc: tuple[str, MapAccumulator] | None = None
        self.rixs_rows_added = False  # since the last picture: redraw the map only then
        # per edge, channel and direction of the current (charge, discharge, at rest)
        self.normalised: dict[
            tuple[str, str, str], deque[tuple[float, np.ndarray, np.ndarray]]
        ] = {}
        # each heatmap is rebuilt only when a scan joined it, and is otherwise the same object,
        # so a page sends only what changed (every spectrum re-sent them all: up to 12 on
        # lirich-rixs, 2 edges x 2 channels x charge, discharge and rest)
        self.heat_cache: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.heat_touched: set[tuple[str, str, str]] = set()
        self.latest: LatestSpectrum | None = None
        self.beam = BeamHistory()  # each scan's I0, and when the beam was lost
        self.half_cycles: dict[int, HalfCycle] = {}
        self.steps: dict[float, dict[str, Any]] = {}
        self.gitt: dict[float, dict[str, Any]] = {}
        self.interruptions: dict[float, dict[str, Any]] = {}
        self.parts: Counter[str] = Counter()
        self.snapshot = Snapshot()

    # -- setup -------------------------------------------------------------------------------
    def _references(self) -> dict[str, References]:
        refs = {}
        for edge, path in (self.cfg.analysis.references if self.cfg else {}).items():
            try:
                refs[edge] = References.from_file(Path(path))
            except (OSError, ReferenceError, ValueError) as e:
                log.warning("references for %s: %s (fits drawn without a model)", edge, e)
        return refs

    def close(self) -> None:
        self.follow.close()

    # -- reading -----------------------------------------------------------------------------
    def refresh(self, status: dict[str, Any] | None = None, connected: bool = False) -> bool:
        """Read what is new in the store; publish a new snapshot if anything changed."""
        changed: set[str] = set()
        if self.follow.ready:
            try:
                for part, read in (
                    ("cell", self._read_cell),
                    ("spectra", self._read_spectra),
                    ("fits", self._read_fits),
                    ("dose", self._read_dose),
                    ("events", self._read_events),
                    ("relaxation", self._read_relaxation),
                    ("rixs", self._read_rixs),
                    ("cycling", self._read_cycling),
                ):
                    if read():
                        changed.add(part)
            except StoreError as e:  # e.g. the schema is being created
                log.warning("%s", e)
        if status is not None or connected != self.snapshot.monitor_connected:
            changed.add("status")
        for part in changed:
            self.parts[part] += 1
        if changed:
            self._publish(status if status is not None else self.snapshot.status, connected)
        return bool(changed)

    def _read_cell(self) -> bool:
        """New potentiostat rows, ``CELL_CHUNK`` a query."""
        got = False
        while (rows := self.follow.cell_rows(self.pstat_link, CELL_CHUNK)) is not None:
            self.cell.extend(rows)
            got = True
            if len(rows) < CELL_CHUNK:
                break
        return got

    def _read_spectra(self) -> bool:
        rows = self.follow.alignments(again=self.partial)
        changed = False
        newest_scan: tuple[dict[str, Any], SpectrumArrays | None] | None = None
        for r in rows:
            sid = r.spectrum_id
            doc: dict[str, Any] = r._asdict()
            del doc["rowid"]
            if self.spectra.get(sid) == doc:
                continue
            new = sid not in self.spectra
            self.spectra[sid] = doc
            changed = True
            (self.partial.add if doc["partial"] else self.partial.discard)(sid)
            if new and doc["kind"] == "rixs_rows":
                self._add_rixs_rows(doc)
            elif new:
                msg = self.follow.spectrum_arrays(doc["raw_id"])
                self._add_beam(doc, msg)
                if self.latest is None or sid > self.latest.spectrum_id:
                    newest_scan = (doc, msg)
        if newest_scan is not None:
            # every scan is drawn as it comes, its fit added when (and if) one is made: an
            # edge without references showed "none yet" beside 7 recorded spectra
            self._latest_unfitted(*newest_scan)
        return changed

    def _add_beam(self, doc: dict[str, Any], msg: SpectrumArrays | None) -> None:
        """The scan's I0 into the beam trace (a scan without an I0 channel adds nothing)."""
        if msg is None or "I0" not in msg.arrays:
            return
        i0 = np.asarray(msg.arrays["I0"], float)
        point_t = msg.arrays.get("point_t")
        t = point_times(doc["t_start"], doc["t_end"], len(i0), point_t)
        self.beam.add(doc["spectrum_id"], doc["edge"], t, i0)

    def _latest_unfitted(self, doc: dict[str, Any], msg: SpectrumArrays | None) -> None:
        if msg is None or "energy" not in msg.arrays:
            return
        energy = np.asarray(msg.arrays["energy"], float)
        channels = {}
        for channel in msg.channels:
            if channel in msg.arrays and channel != "I0":
                y, _, _ = signal(msg.arrays, channel)
                nan = np.full_like(y, np.nan)
                channels[channel] = {"energy": energy, "data": y, "model": nan, "residual": nan}
        why = "no fit yet" if doc["edge"] in self.refs else "no references for this edge"
        quality = {c: ("not fitted", (why,)) for c in channels}
        self.latest = LatestSpectrum(doc["spectrum_id"], doc["edge"], doc["soc"], channels, quality)

    def _read_fits(self) -> bool:
        rows = self.follow.fits()
        for r in rows:
            sid, channel = r.spectrum_id, r.channel
            self.fits[(sid, channel)] = {
                "spectrum_id": sid,
                "channel": channel,
                "edge": r.edge,
                "t": 0.5 * (r.t_start + r.t_end),
                "soc": math.nan if r.soc is None else r.soc,
                "valence": math.nan if r.valence is None else r.valence,
                "valence_unc": math.nan if r.valence_unc is None else r.valence_unc,
                "chi2_red": r.chi2_red,
                "quality": r.quality,
                "notes": "; ".join(json.loads(r.notes)),
                **_fraction_columns("f:", json.loads(r.fractions)),
                **_fraction_columns("u:", json.loads(r.uncertainties)),
            }
        if rows:
            newest = max(rows, key=lambda r: r.spectrum_id)
            if self.latest is None or newest.spectrum_id >= self.latest.spectrum_id:
                # every channel of it, also those read in an earlier refresh
                same = self.follow.fits_of(newest.spectrum_id)
                self._latest_spectrum(
                    newest.spectrum_id, newest.edge, newest.soc, newest.raw_id, same
                )
            self._normalise_new({r.spectrum_id: (r.edge, r.soc, r.raw_id) for r in rows})
        return bool(rows)

    def _latest_spectrum(
        self, sid: int, edge: str, soc: float | None, raw_id: int, rows: list[ChannelFit]
    ) -> None:
        msg = self.follow.spectrum_arrays(raw_id)
        if msg is None:
            return
        energy = np.asarray(msg.arrays["energy"], float)
        refs = self.refs.get(edge)
        channels = {}
        quality = {}
        for r in rows:
            channel = r.channel
            if channel not in msg.arrays:
                continue
            y, _, _ = signal(msg.arrays, channel)
            model = np.full_like(y, np.nan)
            fit = msgspec.json.decode(r.doc, type=FitResult)
            # the stored verdict: "unjudged" for a fit recorded before fits were judged
            quality[channel] = (r.quality, tuple(json.loads(r.notes)))
            if refs is not None:
                lo, hi = fit.fit_range  # the model is drawn only where it was fitted
                inside = (energy >= lo) & (energy <= hi)
                model[inside] = model_curve(energy[inside], refs, fit)
            channels[channel] = {"energy": energy, "data": y, "model": model, "residual": y - model}
        self.latest = LatestSpectrum(sid, edge, soc, channels, quality)

    def _normalise_new(self, spectra: dict[int, tuple[str, float | None, int]]) -> None:
        """Edge-step normalised spectra of the newest scans, for the heatmap against SOC."""
        newest = sorted(spectra)[-self.heatmap_spectra :]
        for sid in newest:
            edge, soc, raw_id = spectra[sid]
            if edge not in EDGE_WINDOWS or soc is None:
                continue
            msg = self.follow.spectrum_arrays(raw_id)
            if msg is None:
                continue
            energy = np.asarray(msg.arrays["energy"], float)
            direction = self._direction(sid)
            for channel in (c for c in ("TEY", "TFY", "PFY") if c in msg.arrays):
                y, _, _ = signal(msg.arrays, channel)
                try:
                    norm = normalize(energy, y, edge).mu
                except (NormalizationError, ValueError, np.linalg.LinAlgError):
                    continue
                buf = self.normalised.setdefault(
                    (edge, channel, direction), deque(maxlen=self.heatmap_spectra)
                )
                buf.append((float(soc), energy, norm))
                self.heat_touched.add((edge, channel, direction))

    def _direction(self, sid: int) -> str:
        """'charge', 'discharge' or 'at rest': the current while the scan was taken. Charge
        and discharge at one SOC differ (hysteresis): drawn apart, not on top of each other."""
        i = (self.spectra.get(sid) or {}).get("I")
        if i is None or not math.isfinite(i) or bool(self.rest(MODE_CC, float(i))):
            return "at rest"
        return "charge" if i > 0 else "discharge"

    def _read_cycling(self) -> bool:
        halves = self.follow.cycling("half_cycles")
        for r in halves:
            self.half_cycles[int(r.key)] = decode_doc(r.doc, HalfCycle)
        steps = self.follow.cycling("current_steps")
        for r in steps:
            d = json.loads(r.doc)
            d.update({f"r_{k}s_ohm": v for k, v in (d.pop("r_at_s", None) or {}).items()})
            self.steps[r.key] = d
        pulses = self.follow.cycling("gitt_pulses")
        gaps = self.follow.cycling("interruptions")
        for rows, into in ((pulses, self.gitt), (gaps, self.interruptions)):
            for r in rows:
                d = json.loads(r.doc)
                d["notes"] = "; ".join(d.get("notes") or [])
                into[r.key] = d
        return bool(halves or steps or pulses or gaps)

    def _cycling_frames(self) -> tuple[list[HalfCycle], pd.DataFrame, pd.DataFrame]:
        halves = [self.half_cycles[k] for k in sorted(self.half_cycles)]
        found = cycles(halves)
        per_cycle = pd.DataFrame(
            [dataclasses.astuple(c) for c in found],
            columns=pd.Index([f.name for f in dataclasses.fields(Cycle)]),
        )
        steps = _frame_of(self.steps)
        if len(steps):
            k = locate(halves, steps["t_step"].to_numpy(), inside=False)
            steps["cycle"] = [halves[j].cycle if j >= 0 else 1 for j in k]
        return halves, per_cycle, steps

    def _fits_on_cycles(self, halves: list[HalfCycle]) -> pd.DataFrame:
        """Each fit with its spectrum's Ewe, half-cycle, cycle, direction and the capacity
        passed in that half-cycle at the spectrum's middle."""
        fits = pd.DataFrame(list(self.fits.values()))
        if not len(fits) or not halves:
            return pd.DataFrame()
        spectra = [self.spectra.get(int(sid)) or {} for sid in fits["spectrum_id"]]
        ewe, q = (
            np.array([np.nan if s.get(k) is None else s[k] for s in spectra], dtype=np.float64)
            for k in ("Ewe", "q_mAh")
        )
        where = locate(halves, fits["t"].to_numpy())
        inside = where >= 0
        chosen = [halves[k] for k in where[inside]]
        out = pd.DataFrame(
            {
                "series": (fits["edge"] + " " + fits["channel"]).to_numpy()[inside],
                "valence": fits["valence"].to_numpy()[inside],
                "quality": fits["quality"].to_numpy()[inside],
                "Ewe": ewe[inside],
                "cycle": [h.cycle for h in chosen],
                "direction": [h.direction for h in chosen],
                "capacity": np.abs(q[inside] - np.array([h.q_start_mAh for h in chosen])),
            }
        )
        return out

    def _read_dose(self) -> bool:
        rows = self.follow.doses()
        for r in rows:
            self.dose[r.spectrum_id] = {k: v for k, v in r._asdict().items() if k != "rowid"}
        return bool(rows)

    def _announced_spots(self, spots: Any) -> None:
        """A spectrometer's spot grid from its series metadata: ``{name: [x_mm, y_mm]}``."""
        if not isinstance(spots, dict):
            return
        for name, where in spots.items():
            try:
                x, y = (float(v) for v in where)
            except (TypeError, ValueError):  # a driver's metadata is not ours to trust
                x = y = math.nan
            self.spots[str(name)] = (x, y)

    def _read_events(self) -> bool:
        rows = self.follow.events()
        for _id, recv_ns, t, kind, link, detail in rows:
            d = json.loads(detail)
            self.event_counts[kind] += 1
            self.events.append(
                {"id": _id, "time": recv_ns * 1e-9, "t": t, "kind": kind, "link": link, **d}
            )
            if kind == "alarm":
                self.alarms[int(d["id"])] = d
            elif kind == "alarm_acknowledged":
                self.alarms.get(int(d["id"]), {})["acknowledged"] = True
            elif kind in ("damage_suspicion", "damage_flag"):  # damage_flag: older runs
                self.damage.append(_damage_row("suspicion", t, d, d.get("detail")))
            elif kind == "damage_check":  # a control due by dose, suspected or not
                self.damage.append(_damage_row("check", t, d, d.get("detail")))
            elif kind == "damage_verdict":
                s = d.get("suspicion") or {}
                row = _damage_row(str(d.get("verdict")), t, {**s, **d}, d.get("evidence"))
                self.damage.append({**row, "why": d.get("why", "")})
            elif kind == "trigger":
                self.triggers.append({"t": t, "trigger": d.get("trigger_id", "")})
            elif kind == "series_start":
                self._announced_spots((d.get("metadata") or {}).get("spots"))
        return bool(rows)

    def _read_relaxation(self) -> bool:
        rows = self.follow.relaxation()
        for _rid, rest_start, channel, quantity, doc in rows:
            self.relaxation[(rest_start, channel)] = {
                "rest_start": rest_start,
                "channel": channel,
                "quantity": quantity,
                "result": msgspec.json.decode(doc, type=RelaxationResult),
            }
        return bool(rows)

    def _read_rixs(self) -> bool:
        rows = self.follow.rixs()
        for r in rows:
            self.rixs_maps[r.map_id] = {k: v for k, v in r._asdict().items() if k != "rowid"}
        return bool(rows)

    def _add_rixs_rows(self, doc: dict[str, Any]) -> None:
        """The newest RIXS map, filled row by row from the recorded messages."""
        msg = self.follow.spectrum_arrays(doc["raw_id"])
        if msg is None:
            return
        a, key = msg.arrays, msg.map_id
        if self.rixs_acc is None or self.rixs_acc[0] != key:
            self.rixs_acc = (key, MapAccumulator(msg.rows_total, a["emission"]))
        self.rixs_rows_added = True
        try:
            self.rixs_acc[1].add(msg.row_offset, a["excitation"], a["counts"], a["emission"])
        except ValueError as e:
            log.warning("RIXS map %s: %s", key, e)

    # -- the picture -------------------------------------------------------------------------
    def _relaxation_now(self) -> dict[str, Any] | None:
        """The newest rest period: each fitted quantity's points and curve."""
        if not self.relaxation:
            return None
        rest = max(k[0] for k in self.relaxation)
        c = self.cell.data
        moving = (c[:, 0] > rest + 1.0) & ~self.rest(c[:, 4], c[:, 2])  # current flows again
        end = float(c[moving, 0].min()) if moving.any() else math.inf
        out: dict[str, Any] = {"rest_start": rest, "rest_end": end, "channels": {}}
        for (start, channel), item in self.relaxation.items():
            if start != rest:
                continue
            res: RelaxationResult = item["result"]
            if channel == "Ewe":
                m = (c[:, 0] >= rest) & (c[:, 0] < end)
                t, v = c[m, 0] - rest, c[m, 1]
            else:  # "Mn-L TEY" (a run recorded before series had their edge: "TEY")
                edge, name = split_series(channel)
                f = [
                    x
                    for x in self.fits.values()
                    if x["channel"] == name and edge in ("", x["edge"]) and rest <= x["t"] < end
                ]
                t = np.array([x["t"] - rest for x in f])
                v = np.array([x["valence"] for x in f])
            best = next((m for m in res.fits if m.model == res.best), None)
            grid = np.linspace(0, float(t.max()) if len(t) else 1.0, 200)
            out["channels"][channel] = {
                "quantity": item["quantity"],
                "t": t,
                "v": v,
                "fit_t": grid,
                "fit_v": evaluate(best, grid) if isinstance(best, ModelFit) else grid * np.nan,
                "tau_s": res.tau_s,
                "tau_err_s": res.tau_err_s,
                "model": res.best,
                "resolved": res.resolved,
                "note": res.note,
            }
        return out

    def _heatmaps(
        self,
    ) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per edge, channel and direction of the current: SOC (sorted), energy grid,
        normalised spectra on that grid."""
        for key in self.heat_touched:
            buf = self.normalised[key]
            if len(buf) < 2:
                continue
            items = sorted(buf, key=lambda x: x[0])
            grid = items[-1][1]
            soc = np.array([x[0] for x in items])
            z = np.vstack([np.interp(grid, e, y, left=np.nan, right=np.nan) for _, e, y in items])
            self.heat_cache[key] = (soc, grid, z)
        self.heat_touched.clear()
        return dict(self.heat_cache)

    def _rixs_latest(self) -> dict[str, Any] | None:
        if self.rixs_acc is None:
            return None
        key, acc = self.rixs_acc
        filled = acc.filled
        return {
            "map_id": key,
            "excitation": acc.excitation.copy(),
            "emission": np.asarray(acc.emission, float),
            "counts": acc.counts.copy(),
            "rows": int(filled.sum()),
            "rows_total": len(filled),
        }

    def _publish(self, status: dict[str, Any], connected: bool) -> None:
        """A new snapshot; pieces whose part did not change are the old snapshot's objects."""
        old = self.snapshot

        def changed(*parts: str) -> bool:
            return any(self.parts[p] != old.parts.get(p) for p in parts)

        def fits_frame() -> pd.DataFrame:
            fits = pd.DataFrame(list(self.fits.values()))
            return fits.sort_values("t", kind="stable") if len(fits) else fits

        budget = self.cfg.analysis.dose_budget_Gy if self.cfg else 0.0
        if changed("cycling"):
            halves, per_cycle, steps = self._cycling_frames()
        else:
            halves, per_cycle, steps = old.half_cycles, old.cycles, old.steps
        cell = changed("cell")
        events = changed("events")
        self.snapshot = Snapshot(
            version=old.version + 1,
            parts=dict(self.parts),
            cell=self.cell.frame() if cell else old.cell,
            cell_revision=self.cell.revision,
            rests=self.rest.periods(*self.cell.data[:, [0, 4, 2]].T) if cell else old.rests,
            spectra=pd.DataFrame([self.spectra[k] for k in sorted(self.spectra)])
            if changed("spectra")
            else old.spectra,
            fits=fits_frame() if changed("fits") else old.fits,
            dose=pd.DataFrame([self.dose[k] for k in sorted(self.dose)])
            if changed("dose")
            else old.dose,
            spots=pd.DataFrame(
                [(k, x, y) for k, (x, y) in self.spots.items()], columns=pd.Index(SPOT_COLUMNS)
            )
            if events or not old.version
            else old.spots,
            damage=pd.DataFrame(self.damage) if events else old.damage,
            triggers=pd.DataFrame(self.triggers) if events else old.triggers,
            events=list(self.events) if events else old.events,
            event_counts=dict(self.event_counts),
            alarms=[a for a in self.alarms.values() if not a.get("acknowledged")],
            relaxation=self._relaxation_now()
            if changed("relaxation", "fits", "cell")
            else old.relaxation,
            latest=self.latest,
            beam=self._beam_frame() if changed("spectra") else old.beam,
            beam_lost=self.beam.lost() if changed("spectra") else old.beam_lost,
            heatmaps=self._heatmaps() if changed("fits") else old.heatmaps,
            rixs_maps=pd.DataFrame(list(self.rixs_maps.values()))
            if changed("rixs")
            else old.rixs_maps,
            # a new object only when rows came: the page redraws the map when it changes
            rixs_latest=self._rixs_latest() if self.rixs_rows_added else old.rixs_latest,
            status=status,
            rates=_rates(old, status),
            monitor_connected=connected,
            budget_Gy=budget,
            refreshed_at=time.time(),
            half_cycles=halves,
            cycles=per_cycle,
            steps=steps,
            fits_on_cycles=self._fits_on_cycles(halves)
            if changed("cycling", "fits", "spectra")
            else old.fits_on_cycles,
            gitt=_frame_of(self.gitt) if changed("cycling") else old.gitt,
            interruptions=_frame_of(self.interruptions)
            if changed("cycling")
            else old.interruptions,
        )
        self.rixs_rows_added = False

    def _beam_frame(self) -> pd.DataFrame:
        """One row per scan with an I0: its time, median and minimum I0, the level it was
        judged against and the seconds of it without beam (0 when the beam stayed)."""
        return pd.DataFrame(
            [
                {
                    "spectrum_id": sid,
                    "edge": self.spectra[sid]["edge"],
                    "t": b.t,
                    "i0_median": b.i0_median,
                    "i0_min": b.i0_min,
                    "level": b.level,
                    "lost_s": b.lost_s,
                }
                for sid, b in self.beam.scans
            ],
            columns=pd.Index(BEAM_COLUMNS),
        )


def _rates(old: Snapshot, status: dict[str, Any]) -> dict[str, float]:
    """Messages per second of each source, from two successive status reports."""
    now, before = status.get("_received"), old.status.get("_received")
    if not now or not before or now <= before:
        return old.rates
    rates = {}
    for name, s in status.get("sources", {}).items():
        prev = old.status.get("sources", {}).get(name)
        if prev is not None:
            rates[name] = (s["messages"] - prev["messages"]) / (now - before)
    return rates


TRIM_INTERVAL_S = 10.0


def release_freed_memory() -> None:
    """Give freed heap back to the OS (glibc). Snapshots replace large arrays several times a
    second; without this the process's RSS kept growing over a long run although the Python
    heap did not (measured: bench/dashboard.py)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class StateFeed:
    """A thread that listens to the monitor's state stream and refreshes the view.

    It refreshes at most every ``min_interval_s`` when updates arrive, and at least every
    ``max_interval_s`` without them (a monitor that has gone: the store is still read, so a
    finished run can be viewed). A slow browser never slows it: sessions read its snapshots.
    """

    def __init__(
        self,
        view: RunView,
        endpoint: str | None,
        *,
        min_interval_s: float = 0.25,
        max_interval_s: float = 1.0,
        silence_s: float = 5.0,
    ) -> None:
        self.view, self.endpoint = view, endpoint
        self.min_interval_s, self.max_interval_s = min_interval_s, max_interval_s
        self.silence_s = silence_s
        self.status: dict[str, Any] = {}
        self.last_state = 0.0
        self.missed = 0  # state batches the monitor dropped for us (we re-read the store)
        self.on_refresh: list[Callable[[Snapshot], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.view.close()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = None
        if self.endpoint:
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 10_000)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(self.endpoint)
        poller = zmq.Poller()
        if sock is not None:
            poller.register(sock, zmq.POLLIN)
        last_seq: int | None = None
        last_refresh = last_trim = 0.0
        try:
            while not self._stop.is_set():
                woke = bool(poller.poll(int(self.max_interval_s * 1000))) if sock else False
                if sock is None:
                    self._stop.wait(self.max_interval_s)
                status = None
                while sock is not None and woke:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    last_seq, status = self._state(frames, last_seq, status)
                wait = self.min_interval_s - (time.monotonic() - last_refresh)
                if wait > 0:
                    self._stop.wait(wait)
                connected = time.monotonic() - self.last_state < self.silence_s
                try:
                    self.view.refresh(status, connected)
                except (StoreError, OSError) as e:
                    log.warning("refreshing the dashboard: %s", e)
                last_refresh = time.monotonic()
                for listener in list(self.on_refresh):  # pages come and go meanwhile
                    listener(self.view.snapshot)
                if last_refresh - last_trim > TRIM_INTERVAL_S:
                    release_freed_memory()
                    last_trim = last_refresh
        finally:
            if sock is not None:
                sock.close(linger=0)
            ctx.term()

    def _state(
        self, frames: list[bytes], last_seq: int | None, status: dict[str, Any] | None
    ) -> tuple[int | None, dict[str, Any] | None]:
        try:
            h = decode(frames).header
        except ProtocolError as e:
            log.warning("state stream: %s", e)
            return last_seq, status
        if not isinstance(h, StateUpdate):
            return last_seq, status
        if last_seq is not None and h.seq > last_seq + 1:
            self.missed += h.seq - last_seq - 1
        self.last_state = time.monotonic()
        for u in h.body.get("updates", []):
            if u.get("topic") == "status":
                status = {k: v for k, v in u.items() if k != "topic"}
                status["_received"] = time.time()
        return h.seq, status
