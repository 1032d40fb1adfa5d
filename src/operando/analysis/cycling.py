"""Half-cycles from the charge passed, as potentiostat rows arrive: capacity, energy, mean
voltage and incremental capacity (dQ/dV) with its peaks.

A half-cycle is a run of charge passed in one direction (positive current: charge). The
direction comes from the charge counter (the instrument's own, or the monitor's coulomb
count), never from the instrument's cycle or step counters, which differ between EC-Lab
techniques. An interval moves charge when it passes more than the rest current would
(``[analysis] rest_current_mA`` times its length): open circuit, impedance sweeps (EC-Lab
counts no charge for them) and noise at rest move none. A half-cycle ends only when charge in
the other direction, contiguous but for rests, exceeds ``reversal_fraction`` of its own
capacity: a brief opposite pulse (a current-interrupt test, an impedance point counted as
charge) is folded back in as net charge.

dQ/dV is made per half-cycle from its intervals that moved charge its way under constant
current (a constant-voltage hold moves charge at one voltage: a spike at the hold, not a
feature of the electrode; it counts in the capacity, not in dQ/dV; nor do rests or a brief
opposite pulse), not by differentiating noisy samples: each
interval's charge is spread evenly over the voltage range it swept (a sparse CC row that
crosses several bins fills them all, as the cell did), summed in bins of ``dqdv_bin_V``, then
smoothed with a Gaussian of ``dqdv_smooth_V``. Peaks are the smoothed curve's local maxima
more prominent than ``peak_prominence`` of its highest, placed to sub-bin precision by a
parabola through the top three bins; a maximum within three smoothing widths of either end of
the voltage swept is the cut-off, not a peak. Discharge values are negative, as plotted in
the field.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

CHARGE, DISCHARGE = "charge", "discharge"


class CyclingSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    reversal_fraction: float = 0.02  # opposite charge, of the half-cycle's, that ends it
    dqdv_bin_V: float = 0.002
    dqdv_smooth_V: float = 0.00425  # Gaussian sigma: 10 mV full width, as cellpy's ICA
    peak_prominence: float = 0.05  # of the curve's highest value
    active_mass_mg: float | None = None  # for mAh/g; None: absolute only


@dataclass(frozen=True, slots=True)
class Peak:
    voltage_V: float
    height_mAh_V: float  # signed as the curve: negative on discharge
    # how sharply the position is defined: half the width of the top within 5 % of the
    # height. A bound, not a 1-sigma: on the peo-nmc demo's identical cycles the broad peaks
    # moved 8-15 mV (standard deviation) where this said 25-41 mV
    flat_V: float = 0.0


@dataclass(frozen=True, slots=True)
class HalfCycle:
    """One half-cycle, closed (``complete``) or still running when the record ended."""

    index: int  # 1, 2, ... in the run
    cycle: int  # 1, 2, ...: a cycle is the run's first direction then the other
    direction: str  # CHARGE or DISCHARGE
    t_start: float
    t_end: float
    capacity_mAh: float  # net charge moved, > 0
    energy_mWh: float  # > 0
    mean_voltage_V: float  # energy / capacity
    v_start: float
    v_end: float
    q_start_mAh: float  # the record's charge counter at the start (to place spectra)
    complete: bool
    rows: int
    dqdv_V: list[float] = field(default_factory=list)  # bin centres
    dqdv_mAh_V: list[float] = field(default_factory=list)
    peaks: list[Peak] = field(default_factory=list)


class _Run(NamedTuple):
    """Successive intervals moving charge the same way (or none): Ewe at both ends of each,
    its charge, whether it was a constant-voltage hold, and where the run starts and ends."""

    v0: np.ndarray
    v1: np.ndarray
    dq: np.ndarray
    cv: np.ndarray
    t0: float
    t1: float
    q0: float


@dataclass(slots=True)
class _Open:
    """The half-cycle in progress: its intervals (Ewe at both ends, charge)."""

    sign: int
    t_start: float
    v_start: float
    q_start: float
    t_end: float = math.nan
    v_end: float = math.nan
    runs: list[_Run] = field(default_factory=list)
    charge: float = 0.0  # net, signed
    energy: float = 0.0  # signed, mWh
    rows: int = 0

    def take(self, run: _Run, *, moved: bool) -> None:
        """Add a run; ``moved``: it moved charge this half-cycle's way (rests after the last
        one do not lengthen the half-cycle)."""
        if not len(run.dq):
            return
        self.runs.append(run)
        self.charge += float(run.dq.sum())
        self.energy += float((0.5 * (run.v0 + run.v1) * run.dq).sum())
        self.rows += len(run.dq)
        if moved:
            self.t_end, self.v_end = run.t1, float(run.v1[-1])


def dqdv(
    v0: np.ndarray, v1: np.ndarray, dq: np.ndarray, bin_V: float, smooth_V: float
) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, smoothed dQ/dV in mAh/V) of intervals that each moved ``dq`` while Ewe
    went from ``v0`` to ``v1``. Charge spread evenly over each interval's range; an interval
    whose Ewe did not change puts its charge in its bin."""
    lo, hi = np.minimum(v0, v1), np.maximum(v0, v1)
    if not len(dq) or not np.isfinite(lo).all() or not np.isfinite(hi).all():
        return np.zeros(0), np.zeros(0)
    first = math.floor(float(lo.min()) / bin_V) - 3 * max(1, round(smooth_V / bin_V))
    last = math.ceil(float(hi.max()) / bin_V) + 3 * max(1, round(smooth_V / bin_V))
    edges = np.arange(first, last + 1) * bin_V
    n_bins = len(edges) - 1

    def bin_of(x: np.ndarray) -> np.ndarray:
        return np.clip(((x - edges[0]) / bin_V).astype(np.int64), 0, n_bins - 1)

    flat = hi - lo < 1e-9
    binned = np.bincount(bin_of(lo[flat]), weights=dq[flat], minlength=n_bins)
    # The rest: the charge density s(V) = sum of dq_i / width_i over the intervals covering V
    # steps up at each lo_i and down at each hi_i. Its integral over bin k is the density at
    # the bin's start times its width, plus each step inside the bin times what is left of
    # the bin after it: two weighted bincounts, no sort, O(n) however many intervals.
    w = ~flat
    dens = dq[w] / (hi[w] - lo[w])
    x = np.concatenate([lo[w], hi[w]])
    d = np.concatenate([dens, -dens])
    k = bin_of(x)
    inside = np.bincount(k, weights=d * (edges[k + 1] - x), minlength=n_bins)
    steps = np.bincount(k, weights=d, minlength=n_bins)
    at_start = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    binned = binned + at_start * bin_V + inside
    curve = binned / bin_V
    sigma = smooth_V / bin_V
    if sigma > 0:
        curve = gaussian_filter1d(curve, sigma, mode="constant")
    return 0.5 * (edges[:-1] + edges[1:]), curve


def peaks(
    v: np.ndarray, curve: np.ndarray, prominence: float, within: tuple[float, float] | None = None
) -> list[Peak]:
    """Local maxima of |curve| more prominent than ``prominence`` of its highest, and (with
    ``within``) inside that voltage range."""
    mag = np.abs(curve)
    if not len(mag) or mag.max() <= 0:
        return []
    found, _ = find_peaks(mag, prominence=prominence * float(mag.max()))
    out = []
    step = float(v[1] - v[0]) if len(v) > 1 else 0.0
    for k in found:
        a, b, c = mag[k - 1], mag[k], mag[k + 1]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom else 0.0  # the parabola's vertex, in bins
        where = float(v[k] + shift * step)
        top = mag >= 0.95 * b
        left = k - int(np.argmin(top[k::-1])) if not top[k::-1].all() else 0
        right = k + int(np.argmin(top[k:])) if not top[k:].all() else len(top)
        flat = 0.5 * (right - left) * step
        if within is None or within[0] <= where <= within[1]:
            out.append(Peak(where, float(curve[k]), float(flat)))
    return out


class HalfCycleTracker:
    """Half-cycles from rows in time order; ``add`` returns those it closed."""

    def __init__(self, settings: CyclingSettings, rest_current_mA: float) -> None:
        self.s = settings
        self.rest_current_mA = rest_current_mA
        self.index = 0  # half-cycles started
        self.first_sign = 0  # the run's first direction: it starts each cycle
        self.open: _Open | None = None
        self._pending: list[_Run] = []  # opposite charge not yet confirmed
        self._pending_charge = 0.0
        self._last: tuple[float, float, float] | None = None  # (t, Ewe, q) of the last row

    def restart(self) -> list[HalfCycle]:
        """The potentiostat's series ended or restarted: its charge counter may start again,
        so no interval spans the boundary; the open half-cycle closes as incomplete."""
        out = self.finish()
        self._last = None
        return out

    def finish(self) -> list[HalfCycle]:
        """The record ends: the open half-cycle, incomplete (``complete`` False)."""
        if self.open is None:
            return []
        self._fold_pending()
        done = self._close(self.open, complete=False)
        self.open = None
        return [done]

    def current(self) -> HalfCycle | None:
        """The half-cycle in progress, as it stands (without its dQ/dV)."""
        o = self.open
        return None if o is None else self._summary(o, complete=False, with_dqdv=False)

    def add(
        self, t: np.ndarray, ewe: np.ndarray, q: np.ndarray, cv: np.ndarray | None = None
    ) -> list[HalfCycle]:
        """Rows in time order: time, Ewe, the charge counter (mAh) and whether each row was
        under constant voltage (``cv``; None: none was)."""
        t, ewe, q = (np.asarray(a, dtype=np.float64) for a in (t, ewe, q))
        hold = np.zeros(len(t), dtype=bool) if cv is None else np.asarray(cv, dtype=bool)
        if not len(t):
            return []
        if self._last is not None:
            t = np.concatenate([[self._last[0]], t])
            ewe = np.concatenate([[self._last[1]], ewe])
            q = np.concatenate([[self._last[2]], q])
            hold = np.concatenate([[False], hold])
        ok = np.isfinite(q) & np.isfinite(ewe) & np.isfinite(t)
        t, ewe, q, hold = t[ok], ewe[ok], q[ok], hold[ok]
        if not len(t):
            return []
        self._last = (float(t[-1]), float(ewe[-1]), float(q[-1]))
        if len(t) < 2:
            return []
        dq, dt = np.diff(q), np.diff(t)
        still = np.abs(dq) <= self.rest_current_mA * np.maximum(dt, 0.0) / 3600.0
        sign = np.where(still, 0, np.sign(dq)).astype(np.int8)
        closed: list[HalfCycle] = []
        starts = np.flatnonzero(np.diff(np.concatenate([[127], sign, [127]])))
        for a, b in itertools.pairwise(starts.tolist()):
            run = _Run(
                ewe[a:b],
                ewe[a + 1 : b + 1],
                dq[a:b],
                hold[a + 1 : b + 1],  # an interval's mode is its end row's
                float(t[a]),
                float(t[b]),
                float(q[a]),
            )
            closed.extend(self._run(int(sign[a]), run))
        return closed

    # -- the state machine, one run of same-direction intervals at a time -------------------
    def _run(self, s: int, run: _Run) -> list[HalfCycle]:
        o = self.open
        if o is None:
            if s != 0:
                self._start(s, run)
            return []
        if s == 0:
            if self._pending:
                self._pending.append(run)
            else:
                o.take(run, moved=False)
            return []
        if s == o.sign:
            self._fold_pending()
            o.take(run, moved=True)
            return []
        self._pending.append(run)
        self._pending_charge += float(run.dq.sum())
        if abs(self._pending_charge) <= self.s.reversal_fraction * abs(o.charge):
            return []
        done = self._close(o, complete=True)
        first, *rest = self._pending
        self._pending, self._pending_charge = [], 0.0
        self._start(s, first)
        new = self.open
        assert new is not None
        for r in rest:
            new.take(r, moved=bool(np.sign(r.dq.sum()) == s))
        return [done]

    def _fold_pending(self) -> None:
        """Opposite charge that did not end the half-cycle counts in it, as net charge."""
        if self.open is not None:
            for r in self._pending:
                self.open.take(r, moved=False)
        self._pending, self._pending_charge = [], 0.0

    def _start(self, sign: int, run: _Run) -> None:
        self.index += 1
        if not self.first_sign:
            self.first_sign = sign
        self.open = _Open(sign, run.t0, float(run.v0[0]), run.q0)
        self.open.take(run, moved=True)

    def _close(self, o: _Open, *, complete: bool) -> HalfCycle:
        return self._summary(o, complete=complete, with_dqdv=True)

    def _summary(self, o: _Open, *, complete: bool, with_dqdv: bool) -> HalfCycle:
        cap = abs(o.charge)
        energy = abs(o.energy)
        # the cycle count steps up at each half-cycle in the run's first direction
        cycle = (self.index + (1 if o.sign == self.first_sign else 0)) // 2
        v, curve, found = np.zeros(0), np.zeros(0), []
        if with_dqdv and o.runs:
            dq_all = np.concatenate([r.dq for r in o.runs])
            v_mid = 0.5 * (
                np.concatenate([r.v0 for r in o.runs]) + np.concatenate([r.v1 for r in o.runs])
            )
            # summed once over the whole half-cycle: the same to the last bit however the
            # rows came in batches (the running sums are for the half-cycle in progress)
            cap, energy = abs(float(dq_all.sum())), abs(float((v_mid * dq_all).sum()))
            # the intervals that moved charge this way under constant current: rests (no
            # charge, only their voltages) and folded-in opposite pulses are left out
            keep = ~np.concatenate([r.cv for r in o.runs]) & (dq_all * o.sign > 0)
            v0, v1, dq = (
                np.concatenate([getattr(r, k) for r in o.runs])[keep] for k in ("v0", "v1", "dq")
            )
            v, curve = dqdv(v0, v1, dq, self.s.dqdv_bin_V, self.s.dqdv_smooth_V)
            if len(dq):
                # a maximum within three widths of where the sweep stopped is the cut-off (the
                # curve is high there and ends), not a feature of the electrode
                margin = 3 * self.s.dqdv_smooth_V
                lo, hi = float(min(v0.min(), v1.min())), float(max(v0.max(), v1.max()))
                found = peaks(v, curve, self.s.peak_prominence, (lo + margin, hi - margin))
        return HalfCycle(
            index=self.index,
            cycle=max(cycle, 1),
            direction=CHARGE if o.sign > 0 else DISCHARGE,
            t_start=o.t_start,
            t_end=o.t_end,
            capacity_mAh=cap,
            energy_mWh=energy,
            mean_voltage_V=energy / cap if cap > 0 else math.nan,
            v_start=o.v_start,
            v_end=o.v_end,
            q_start_mAh=o.q_start,
            complete=complete,
            rows=o.rows,
            dqdv_V=np.round(v, 6).tolist(),
            dqdv_mAh_V=curve.tolist(),
            peaks=found,
        )


@dataclass(frozen=True, slots=True)
class Cycle:
    cycle: int
    charge_mAh: float  # NaN: that half-cycle is not in the record
    discharge_mAh: float
    coulombic_efficiency: float  # discharge / charge (a cathode against a metal counter)
    charge_energy_mWh: float
    discharge_energy_mWh: float
    energy_efficiency: float
    retention: float  # discharge capacity / the first complete cycle's
    complete: bool  # both half-cycles closed


def cycles(halves: list[HalfCycle]) -> list[Cycle]:
    """Per-cycle figures from the half-cycles (any order of directions in a cycle)."""
    by_cycle: dict[int, dict[str, HalfCycle]] = {}
    for h in halves:
        by_cycle.setdefault(h.cycle, {})[h.direction] = h
    out: list[Cycle] = []
    first_discharge = math.nan
    for n in sorted(by_cycle):
        pair = by_cycle[n]
        ch, dis = pair.get(CHARGE), pair.get(DISCHARGE)
        qc = ch.capacity_mAh if ch else math.nan
        qd = dis.capacity_mAh if dis else math.nan
        ec = ch.energy_mWh if ch else math.nan
        ed = dis.energy_mWh if dis else math.nan
        complete = bool(ch and dis and ch.complete and dis.complete)
        if complete and math.isnan(first_discharge):
            first_discharge = qd
        out.append(
            Cycle(
                cycle=n,
                charge_mAh=qc,
                discharge_mAh=qd,
                coulombic_efficiency=qd / qc if qc > 0 else math.nan,
                charge_energy_mWh=ec,
                discharge_energy_mWh=ed,
                energy_efficiency=ed / ec if ec > 0 else math.nan,
                retention=qd / first_discharge if first_discharge > 0 else math.nan,
                complete=complete,
            )
        )
    return out


def locate(halves: list[HalfCycle], t: np.ndarray, *, inside: bool = True) -> np.ndarray:
    """For each time, the position in ``halves`` (in time order) of the half-cycle it lies
    in; -1 before the first, and with ``inside`` also between a closed half-cycle's last
    charge and the next one's start (a rest belongs to neither). Without ``inside``: the
    half-cycle started last."""
    starts = np.array([h.t_start for h in halves], dtype=np.float64)
    k = np.searchsorted(starts, np.asarray(t, dtype=np.float64), side="right") - 1
    if not inside or not len(halves):
        return k
    ends = np.array([h.t_end if h.complete else np.inf for h in halves], dtype=np.float64)
    past = (k >= 0) & (np.asarray(t) > ends[np.maximum(k, 0)])
    return np.where(past, -1, k)


@dataclass(frozen=True, slots=True)
class TrackedPeak:
    feature: str  # "charge 1", "discharge 2", ...: the same feature from cycle to cycle
    idx: int  # the half-cycle
    cycle: int
    direction: str
    voltage_V: float
    height_mAh_V: float
    flat_V: float  # the position's spread (Peak.flat_V)
    shift_V: float  # from where the feature was first seen


def track_peaks(halves: list[HalfCycle], tolerance_V: float = 0.03) -> list[TrackedPeak]:
    """Each half-cycle's dQ/dV peaks matched to the features seen before in the same
    direction: a peak within ``tolerance_V`` of a feature's last position continues it
    (closest pairs first, one peak a feature), any other starts a new feature. So a peak that
    drifts (growing polarisation, a phase change moving with cycling) keeps its name."""
    last: dict[str, tuple[float, float]] = {}  # feature -> (last position, first position)
    count = {CHARGE: 0, DISCHARGE: 0}
    out: list[TrackedPeak] = []
    for h in halves:
        mine = [f for f in last if f.startswith(h.direction)]
        pairs = sorted(
            (abs(p.voltage_V - last[f][0]), n, f)
            for n, p in enumerate(h.peaks)
            for f in mine
            if abs(p.voltage_V - last[f][0]) <= tolerance_V
        )
        taken: dict[int, str] = {}
        for _, n, f in pairs:
            if n not in taken and f not in taken.values():
                taken[n] = f
        for n, p in enumerate(h.peaks):
            f = taken.get(n)
            if f is None:
                count[h.direction] += 1
                f = f"{h.direction} {count[h.direction]}"
                last[f] = (p.voltage_V, p.voltage_V)
            first = last[f][1]
            last[f] = (p.voltage_V, first)
            out.append(
                TrackedPeak(
                    f,
                    h.index,
                    h.cycle,
                    h.direction,
                    p.voltage_V,
                    p.height_mAh_V,
                    p.flat_V,
                    p.voltage_V - first,
                )
            )
    return out
