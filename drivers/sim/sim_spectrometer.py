"""Simulated soft X-ray spectrometer looking at the same cell the simulated potentiostat drives.

It subscribes to the potentiostat's stream (like any other listener, so it needs nothing from
the monitor), follows the cell's state of charge from the instrument's charge counter, and
synthesises each scan point from the sample's truth at that point's own time:
- XAS (TEY = surface, TFY = bulk with self-absorption, and I0) of the configured edges;
- O K-edge RIXS maps, published row by row;
- per-spot dose from flux x dwell x photon energy x absorption (xraydb) / (density x area),
  and photoreduction of the surface above a critical dose.
Realism switches: counting noise, I0 drift that division leaves in, sloped backgrounds,
monochromator energy drift, TFY self-absorption, beam damage.

Each message's ``extra["sim_truth"]`` holds the truth (fractions per channel, SOC, dose) so
tests and benchmarks can score the analysis; the monitor never reads it.

Modes: ``free`` (a scan every ``interval_s``, cycling through the edges; triggered requests go
first) and ``triggered`` (scans only on ``acquire`` commands). Commands: ``acquire`` (edge,
mode xas|rixs, spot, trigger_id; acked at once), ``move`` (spot), ``status``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import msgspec
import numpy as np
import xraydb
import zmq
import zmq.asyncio
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.sim.sample import MODELS, SampleModel, lag, photoreduce
from operando.drivers.sim.sim_potentiostat import settings_from
from operando.drivers.sim.spectra import (
    EDGES,
    Realism,
    beam_on,
    references,
    rixs_axes,
    rixs_map,
    synthesize_xas,
)

from operando.config import ConfigError
from operando.protocol import (
    Command,
    PotentiostatBatch,
    ProtocolError,
    RIXSRows,
    SeriesStart,
    Spot,
    XASScan,
    decode,
)
from operando.transport import CommandHandler, configure

log = logging.getLogger(__name__)

DEFAULT_NAME = "spectrometer"
EV_J = 1.602176634e-19

# Sample composition for the dose calculation, per chemistry (formula, density g/cm3).
SAMPLES = {
    "nmc111": ("LiNi0.33Mn0.33Co0.33O2", 4.7),
    "lfp": ("LiFePO4", 3.6),
    "lnmo": ("LiNi0.5Mn1.5O4", 4.4),
    "na044mno2": ("Na0.44MnO2", 4.1),
    "lirich": ("Li1.2Ni0.13Mn0.54Co0.13O2", 4.3),
}


class SpotGrid(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rows: int = 3
    cols: int = 4
    pitch_mm: float = 0.5

    def spots(self) -> dict[str, Spot]:
        out = {}
        for r in range(self.rows):
            for c in range(self.cols):
                sid = f"{chr(ord('A') + r)}{c + 1}"
                out[sid] = Spot(id=sid, x_mm=c * self.pitch_mm, y_mm=r * self.pitch_mm)
        return out


class SpectrometerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    driver: str = "sim-spectrometer"
    cell_data: str = "tcp://127.0.0.1:5555"  # the simulated potentiostat's data endpoint
    chemistry: str = ""  # default: from the potentiostat's series metadata
    edges: list[str] = msgspec.field(default_factory=list)  # default: the sample's edges
    mode: Literal["free", "triggered"] = "free"
    interval_s: float = 300.0  # experiment seconds from one free-running scan to the next
    dwell_s: float = 0.3  # per energy point
    rixs_every: int = 0  # every Nth free-running acquisition is a RIXS map (0: never)
    rixs_row_s: float = 10.0
    flux_ph_s: float = 1e10  # a defocused beam on 0.1 mm2: ~1 MGy per Mn L scan
    spot_area_mm2: float = 0.1
    formula: str = ""  # default per chemistry, for the absorption (dose)
    density_g_cm3: float = 0.0
    critical_dose_Gy: float = 2e7
    damage_rate_per_Gy: float = 1e-9
    spots: SpotGrid = msgspec.field(default_factory=SpotGrid)
    realism: Realism = msgspec.field(default_factory=Realism)
    seed: int = 2
    # fault injection: the first N moves are acked but the stage stays where it was (a motor
    # that reports done without moving)
    stuck_moves: int = 0


@dataclass(slots=True)
class Request:
    mode: str  # xas | rixs
    edge: str
    spot: str | None
    trigger_id: str = ""
    scan_id: str = ""


class CellView:
    """The cell as seen from the potentiostat stream: SOC, lagged bulk SOC and voltage vs time."""

    def __init__(self, keep_s: float = 4 * 3600.0) -> None:
        self.capacity_mAh = 0.0
        self.initial_soc = 0.0
        self.chemistry = ""
        self.tau_s = 0.0
        self.keep_s = keep_s
        self.t: deque[float] = deque()
        self.soc: deque[float] = deque()
        self.y: deque[float] = deque()  # what the spectroscopy sees (lags soc for LFP)
        self.ewe: deque[float] = deque()
        self.ready = asyncio.Event()
        self._q_last = 0.0
        self._i_last = 0.0

    def start(self, meta: dict[str, Any], tau_s: float) -> None:
        self.capacity_mAh = float(meta.get("capacity_mAh") or 1.0)
        self.initial_soc = float(meta.get("initial_soc") or 0.0)
        self.chemistry = str(meta.get("chemistry") or "")
        self.tau_s = tau_s
        self.ready.set()

    def add(self, t: np.ndarray, q: np.ndarray | None, ewe: np.ndarray, i: np.ndarray) -> None:
        if q is None:  # no charge counter on this potentiostat: coulomb-count the current
            t_prev, i_prev = (self.t[-1], self._i_last) if self.t else (float(t[0]), float(i[0]))
            tt, ii = np.concatenate(([t_prev], t)), np.concatenate(([i_prev], i))
            q = self._q_last + np.cumsum(0.5 * (ii[1:] + ii[:-1]) * np.diff(tt)) / 3600.0
        self._q_last, self._i_last = float(q[-1]), float(i[-1])
        soc = self.initial_soc + q / self.capacity_mAh
        for tk, sk, ek in zip(t.tolist(), soc.tolist(), ewe.tolist(), strict=True):
            if self.t and tk <= self.t[-1]:
                continue
            y = sk if not self.t else lag(self.y[-1], sk, tk - self.t[-1], self.tau_s)
            self.t.append(tk)
            self.soc.append(sk)
            self.y.append(y)
            self.ewe.append(ek)
        while self.t and self.t[0] < self.t[-1] - self.keep_s:
            for d in (self.t, self.soc, self.y, self.ewe):
                d.popleft()

    @property
    def covered_until(self) -> float:
        return self.t[-1] if self.t else -math.inf

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(soc, y, ewe) at each time, interpolated; before the first row held, after the
        last carried on by the last current (the cell goes on charging while its rows are
        late: held, a late stream gave two scans the same state)."""
        if not self.t:
            z = np.full(len(times), self.initial_soc)
            return z, z.copy(), np.full(len(times), np.nan)
        t = np.fromiter(self.t, float)
        soc = np.interp(times, t, np.fromiter(self.soc, float))
        y = np.interp(times, t, np.fromiter(self.y, float))
        beyond = times > t[-1]
        if beyond.any():
            dt = times[beyond] - t[-1]
            ahead = self.soc[-1] + self._i_last * dt / 3600.0 / self.capacity_mAh
            soc[beyond] = ahead
            y[beyond] = [
                lag(self.y[-1], a, d, self.tau_s)
                for a, d in zip(ahead.tolist(), dt.tolist(), strict=True)
            ]
        return soc, y, np.interp(times, t, np.fromiter(self.ewe, float))


@cache
def _mu_per_m(formula: str, density: float, energies: tuple[float, ...]) -> np.ndarray:
    return xraydb.material_mu(formula, np.asarray(energies), density) * 100.0


def dose_per_point(
    flux: float,
    dwell: float,
    energy_eV: np.ndarray,
    formula: str,
    density_g_cm3: float,
    area_mm2: float,
) -> np.ndarray:
    """Surface dose (Gy) each point deposits: D = N E mu / (rho A) (docs/decisions/0008)."""
    mu = _mu_per_m(formula, density_g_cm3, tuple(np.round(energy_eV, 4).tolist()))
    rho = density_g_cm3 * 1000.0  # kg/m3
    area = area_mm2 * 1e-6  # m2
    return flux * dwell * energy_eV * EV_J * mu / (rho * area)


def sample_of(chemistry: str, s: SpectrometerSettings) -> tuple[str, float]:
    """(formula, density g/cm3) of the sample, for the dose: configured, else per chemistry."""
    formula, density = SAMPLES.get(chemistry, ("MnO2", 5.0))
    return s.formula or formula, s.density_g_cm3 or density


@dataclass(slots=True)
class SimulatedScan:
    channels: dict[str, np.ndarray]  # I0, TEY, TFY counts
    f_surface: np.ndarray  # (points, valences): the truth at each point
    f_bulk: np.ndarray
    dose_after_Gy: float
    energy_shift_eV: float


def simulate_xas(
    model: SampleModel,
    edge_name: str,
    s: SpectrometerSettings,
    point_t: np.ndarray,
    y: np.ndarray,
    ewe: np.ndarray,
    dose0_Gy: float,
    sample: tuple[str, float],
    energy_shift_eV: float,
    rng: np.random.Generator,
    experiment_t0: float = 0.0,
) -> SimulatedScan:
    """One XAS scan of a spot that had taken ``dose0_Gy``, from the spectroscopic SOC ``y``
    and the voltage at each point: the sample's truth (photoreduced point by point as the
    dose grows) and the counts. The driver and ``bench/damage.py`` both scan with it."""
    edge, r = EDGES[edge_name], s.realism
    energy = edge.axis()
    n = len(energy)
    # a lost beam (realism.beam_losses, in seconds since ``experiment_t0``) doses nothing
    on = beam_on(r, point_t - experiment_t0)
    d_point = on * dose_per_point(s.flux_ph_s, s.dwell_s, energy, *sample, s.spot_area_mm2)
    dose_at = dose0_Gy + np.concatenate(([0.0], np.cumsum(d_point)[:-1])) + 0.5 * d_point
    refs = references(edge, energy - energy_shift_eV)  # the sample's features appear shifted
    names = edge.names
    lowest = names[0]
    f_surf = np.zeros((n, len(names)))
    f_bulk = np.zeros((n, len(names)))
    for k in range(n):
        fs = model.surface(edge_name, float(y[k]), float(ewe[k]))
        if r.damage:
            fs = photoreduce(
                fs, lowest, float(dose_at[k]), s.critical_dose_Gy, s.damage_rate_per_Gy
            )
        fb = model.bulk(edge_name, float(y[k]), float(ewe[k]))
        f_surf[k] = [fs.get(v, 0.0) for v in names]
        f_bulk[k] = [fb.get(v, 0.0) for v in names]
    ref_matrix = np.column_stack([refs[v] for v in names])
    channels = synthesize_xas(energy, point_t, ref_matrix, f_surf, f_bulk, r, rng, on)
    return SimulatedScan(channels, f_surf, f_bulk, dose0_Gy + float(d_point.sum()), energy_shift_eV)


class SimSpectrometer(Driver):
    instrument = "spectrometer"

    def __init__(self, opts: DriverOptions, settings: SpectrometerSettings) -> None:
        super().__init__(opts)
        for e in settings.edges:
            if e not in EDGES:
                raise ConfigError(
                    f"drivers.spectrometer.edges: unknown edge {e!r}; have {sorted(EDGES)}"
                )
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)
        self.cell = CellView()
        self.spots = settings.spots.spots()
        self.spot = next(iter(self.spots))
        self.stuck_moves = settings.stuck_moves
        self.dose: dict[str, float] = dict.fromkeys(self.spots, 0.0)
        self.queue: deque[Request] = deque()
        self.wake = asyncio.Event()
        self.count = 0
        self.free_count = 0
        self.paused = False  # the monitor paused the free-running scans (no fresh spot)
        self.scanning: Request | None = None
        self.model: SampleModel | None = None

    # -- configuration that depends on the cell ----------------------------------------------
    @property
    def chemistry(self) -> str:
        return self.s.chemistry or self.cell.chemistry

    def edges(self) -> list[str]:
        assert self.model is not None
        return self.s.edges or list(self.model.edges)

    def sample_formula(self) -> tuple[str, float]:
        return sample_of(self.chemistry, self.s)

    def _sample_extra(self) -> dict[str, Any]:
        """Per-scan sample and beam facts (as beamline scan headers carry them): for dose."""
        formula, density = self.sample_formula()
        return {
            "sample_formula": formula,
            "sample_density_g_cm3": density,
            "spot_area_mm2": self.s.spot_area_mm2,
        }

    def metadata(self) -> dict[str, Any]:
        formula, density = self.sample_formula()
        return {
            "simulated": True,
            "mode": self.s.mode,
            "edges": self.s.edges,
            "beam": {"flux_ph_s": self.s.flux_ph_s, "spot_area_mm2": self.s.spot_area_mm2},
            "sample": {"formula": formula, "density_g_cm3": density, "chemistry": self.s.chemistry},
            "spots": {k: [v.x_mm, v.y_mm] for k, v in self.spots.items()},
            "truth_key": "sim_truth",
        }

    # -- commands ----------------------------------------------------------------------------
    def handlers(self) -> dict[str, CommandHandler]:
        return {
            **super().handlers(),
            "acquire": self._acquire_cmd,
            "move": self._move,
            "pause_scans": self._pause_scans,
            "resume_scans": self._resume_scans,
        }

    async def _pause_scans(self, cmd: Command) -> dict[str, Any]:
        """No more free-running scans (an acquire, asked for by name, is still taken)."""
        self.paused = True
        return {"paused": True, "spot": self.spot}

    async def _resume_scans(self, cmd: Command) -> dict[str, Any]:
        self.paused = False
        self.wake.set()
        return {"paused": False, "spot": self.spot}

    async def _acquire_cmd(self, cmd: Command) -> dict[str, Any]:
        a = cmd.args
        mode = str(a.get("mode", "xas"))
        if mode not in ("xas", "rixs"):
            raise ValueError(f"mode must be xas or rixs, got {mode!r}")
        edge = str(a.get("edge", "O-K" if mode == "rixs" else ""))
        if mode == "xas" and edge and edge not in EDGES:
            raise ValueError(f"unknown edge {edge!r}; have {sorted(EDGES)}")
        spot = a.get("spot")
        if spot is not None and spot not in self.spots:
            raise ValueError(f"unknown spot {spot!r}; have {sorted(self.spots)}")
        req = Request(mode, edge, spot, str(a.get("trigger_id", "")), self._next_scan_id())
        self.queue.append(req)
        self.wake.set()
        return {"scan_id": req.scan_id, "queued": len(self.queue)}

    async def _move(self, cmd: Command) -> dict[str, Any]:
        spot = str(cmd.args["spot"])
        if spot not in self.spots:
            raise ValueError(f"unknown spot {spot!r}; have {sorted(self.spots)}")
        if self.stuck_moves > 0:
            self.stuck_moves -= 1
        else:
            self.spot = spot
        return {"spot": spot, "dose_Gy": self.dose[spot]}

    def status(self) -> dict[str, Any]:
        return {
            **super().status(),
            "spot": self.spot,
            "dose_Gy": self.dose,
            "queued": len(self.queue),
            "scanning": self.scanning.scan_id if self.scanning else None,
            "scans": self.count,
            "paused": self.paused,
        }

    def state(self) -> dict[str, Any]:
        return {
            "dose_Gy": self.dose,
            "count": self.count,
            "free_count": self.free_count,
            "spot": self.spot,
            "paused": self.paused,
        }

    def restore(self, st: dict[str, Any]) -> None:
        self.dose.update(st["dose_Gy"])
        self.count, self.free_count, self.spot = st["count"], st["free_count"], st["spot"]
        self.paused = bool(st.get("paused", False))  # state files from before pauses

    def _next_scan_id(self) -> str:
        self.count += 1
        return f"{self.opts.name}-{self.count:05d}"

    # -- running -----------------------------------------------------------------------------
    async def produce(self) -> None:
        watcher = asyncio.create_task(self._watch_cell(), name="watch-cell")
        try:
            await asyncio.wait_for(self.cell.ready.wait(), 60)
            while not self.cell.t:  # first scan once the potentiostat records the cell
                await asyncio.sleep(0.01)
            self.model = MODELS.get(self.chemistry)
            if self.model is None:
                raise ConfigError(
                    f"no sample model for chemistry {self.chemistry!r}; have {sorted(MODELS)}"
                )
            self.cell.tau_s = self.model.bulk_tau_s
            next_free = self.clock.now()
            while True:
                req = self.queue.popleft() if self.queue else None
                free = self.s.mode == "free" and not self.paused
                if req is None and free and self.clock.now() >= next_free:
                    req = self._free_request()
                    # a beamline that fell behind starts the next scan on time, it does not
                    # run the missed ones back to back (a burst on one spot after any stall)
                    next_free = max(next_free + self.s.interval_s, self.clock.now())
                if req is None:
                    self.wake.clear()
                    wait = max(0.0, self.clock.wall_seconds(next_free - self.clock.now()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), wait if free else None)
                    continue
                self.scanning = req
                if req.mode == "rixs":
                    await self._rixs(req)
                else:
                    await self._xas(req)
                self.scanning = None
                self.persist()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _free_request(self) -> Request:
        self.free_count += 1
        if self.s.rixs_every and self.free_count % self.s.rixs_every == 0:
            return Request("rixs", "O-K", None, "", self._next_scan_id())
        edges = self.edges()
        edge = edges[(self.free_count - 1) % len(edges)]
        return Request("xas", edge, None, "", self._next_scan_id())

    async def _watch_cell(self) -> None:
        assert self.ctx is not None
        sock = self.ctx.socket(zmq.SUB)
        configure(sock, hwm=100_000)
        for kind in ("series_start/", "potentiostat_batch/"):  # not a recorder: only these
            sock.setsockopt(zmq.SUBSCRIBE, kind.encode())
        sock.connect(self.s.cell_data)
        try:
            while True:
                frames = await sock.recv_multipart()
                try:
                    msg = decode(frames)
                except ProtocolError as e:
                    log.warning("potentiostat stream: %s", e)
                    continue
                h = msg.header
                if isinstance(h, SeriesStart) and h.instrument == "potentiostat":
                    model = MODELS.get(self.s.chemistry or str(h.metadata.get("chemistry")))
                    self.cell.start(h.metadata, model.bulk_tau_s if model else 0.0)
                elif isinstance(h, PotentiostatBatch) and self.cell.ready.is_set():
                    a = msg.arrays
                    self.cell.add(a["t"], a.get("Q"), a["Ewe"], a["I"])
        finally:
            sock.close(linger=0)

    async def _wait_for_cell(self, t_end: float) -> None:
        """Let the potentiostat stream catch up with the scan's end (up to 2 s wall; then
        the cell view carries the state on by the last current)."""
        for _ in range(100):
            if self.cell.covered_until >= t_end:
                return
            await asyncio.sleep(0.02)

    def _spot(self, req: Request) -> Spot:
        if req.spot is not None:
            self.spot = req.spot
        return self.spots[self.spot]

    def _energy_shift(self, t: float) -> float:
        return self.s.realism.energy_drift_eV_per_h * (t - self.clock.t0_ns * 1e-9) / 3600.0

    async def _xas(self, req: Request) -> None:
        assert self.pub is not None and self.model is not None
        edge_name = req.edge or self.edges()[0]
        edge, r, s = EDGES[edge_name], self.s.realism, self.s
        spot = self._spot(req)
        energy = edge.axis()
        n = len(energy)
        t_start = self.clock.now()
        point_t = t_start + (np.arange(n) + 0.5) * s.dwell_s
        t_end = t_start + n * s.dwell_s
        await self.sleep(t_end - t_start)
        await self._wait_for_cell(t_end)
        soc, y, ewe = self.cell.at(point_t)
        formula, density = self.sample_formula()
        dose0 = self.dose[spot.id]
        scan = simulate_xas(
            self.model,
            edge_name,
            s,
            point_t,
            y,
            ewe,
            dose0,
            (formula, density),
            self._energy_shift(t_start),
            self.rng,
            experiment_t0=self.clock.t0_ns * 1e-9,
        )
        self.dose[spot.id] = scan.dose_after_Gy
        names, channels, shift = edge.names, scan.channels, scan.energy_shift_eV
        f_surf, f_bulk = scan.f_surface, scan.f_bulk
        truth = {
            "chemistry": self.chemistry,
            "edge": edge_name,
            "soc": float(soc.mean()),
            "spectroscopic_soc": float(y.mean()),
            "fractions": {
                "TEY": dict(zip(names, f_surf.mean(axis=0).tolist(), strict=True)),
                "TFY": dict(zip(names, f_bulk.mean(axis=0).tolist(), strict=True)),
            },
            "dose_before_Gy": dose0,
            "dose_after_Gy": self.dose[spot.id],
            "energy_shift_eV": shift,
            "self_absorption_mu_bg": r.self_absorption_mu_bg,
            "i0_drift": r.i0_drift,
            "counts_at_edge_step": r.counts_at_edge_step,
        }
        header = XASScan(
            source=self.opts.name,
            scan_id=req.scan_id,
            edge=edge_name,
            t_start_ns=int(t_start * 1e9),
            t_end_ns=int(t_end * 1e9),
            spot=spot,
            flux_ph_s=s.flux_ph_s,
            exposure_s=n * s.dwell_s,
            trigger_id=req.trigger_id,
            channels=("I0", "TEY", "TFY"),
            extra={"sim_truth": truth, "dwell_s": s.dwell_s, **self._sample_extra()},
        )
        await self.pub.send(header, {"energy": energy, **channels, "point_t": point_t})

    async def _rixs(self, req: Request) -> None:
        assert self.pub is not None and self.model is not None
        s = self.s
        spot = self._spot(req)
        excitation, emission = rixs_axes()
        formula, density = self.sample_formula()
        map_id = req.scan_id
        for j, ex in enumerate(excitation):
            t0 = self.clock.now()
            t1 = t0 + s.rixs_row_s
            await self.sleep(s.rixs_row_s)
            await self._wait_for_cell(t1)
            _soc, y, _ewe = self.cell.at(np.array([0.5 * (t0 + t1)]))
            oxo = self.model.oxo(float(y[0]))
            expected = 200.0 * rixs_map(np.array([ex]), emission, oxo)
            counts = self.rng.poisson(expected).astype(np.float64) if s.realism.noise else expected
            d = float(
                dose_per_point(
                    s.flux_ph_s, s.rixs_row_s, np.array([ex]), formula, density, s.spot_area_mm2
                )[0]
            )
            dose0 = self.dose[spot.id]
            self.dose[spot.id] += d
            header = RIXSRows(
                source=self.opts.name,
                scan_id=f"{map_id}-r{j:03d}",
                map_id=map_id,
                edge="O-K",
                row_offset=j,
                rows_total=len(excitation),
                t_start_ns=int(t0 * 1e9),
                t_end_ns=int(t1 * 1e9),
                spot=spot,
                flux_ph_s=s.flux_ph_s,
                exposure_s=s.rixs_row_s,
                trigger_id=req.trigger_id,
                extra={
                    "sim_truth": {
                        "oxo": oxo,
                        "spectroscopic_soc": float(y[0]),
                        "dose_before_Gy": dose0,
                        "dose_after_Gy": self.dose[spot.id],
                    },
                    **self._sample_extra(),
                },
            )
            await self.pub.send(
                header,
                {
                    "excitation": np.array([ex]),
                    "emission": emission,
                    "counts": counts[None, :] if counts.ndim == 1 else counts,
                },
            )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment TOML with a [drivers.SECTION] table")
    p.add_argument("--section", default="spectrometer", help="which [drivers.*] table to use")
    p.add_argument("--cell-data", help="the potentiostat's data endpoint to follow")
    p.add_argument("--mode", choices=["free", "triggered"], help="free-running or triggered")
    p.add_argument("--interval", type=float, help="experiment seconds between free scans")


def from_args(a: argparse.Namespace, opts: DriverOptions) -> SimSpectrometer:
    s = settings_from(a.config, a.section, SpectrometerSettings)
    changes = {
        k: v
        for k, v in (("cell_data", a.cell_data), ("mode", a.mode), ("interval_s", a.interval))
        if v is not None
    }
    return SimSpectrometer(opts, msgspec.structs.replace(s, **changes))
