"""Alignment of spectra with the electrochemistry: pure functions over potentiostat history.

All times here are float seconds on the monitor's reference clock (source clock + the source's
offset). Averages over a spectrum's acquisition window are *time-weighted*: the integral of the
piecewise-linear interpolant of the potentiostat samples over [t_start, t_end], divided by the
window length. That is the voltage the sample actually sat at, also when the potentiostat records
irregularly (EC-Lab records on dE/dt triggers, so rests are sparse).

State of charge: ``soc(t) = initial_soc + q(t) / capacity``, with q the charge passed in mAh,
positive on charge (EC-Lab convention): the potentiostat's own ``Q`` column when it sends one,
otherwise coulomb counting (trapezoidal integral of I over t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import numpy as np

from operando.protocol import MODE_OCV

_COLUMNS = ("t", "ewe", "i", "q", "own_q", "mode", "step", "cycle")
_DTYPES = {"mode": np.int8, "step": np.int32, "cycle": np.int32, "own_q": np.bool_}


class Alignment(msgspec.Struct, kw_only=True):
    """What the cell was doing while one spectrum was acquired."""

    t_start: float
    t_end: float
    ewe_mean_V: float
    ewe_min_V: float
    ewe_max_V: float
    i_mean_mA: float
    charge_mAh: float  # passed during the acquisition window
    q_mAh: float  # charge passed since the start of the record, at the window's middle
    soc: float  # at the window's middle; NaN when no capacity is known
    soc_start: float
    soc_end: float
    mode: int
    step: int
    cycle: int
    mode_changed: bool  # control mode or step changed inside the window
    t_since_current_change_s: float  # NaN when no change has been seen yet
    n_rows: int  # potentiostat samples inside the window
    coverage: float  # fraction of the window the potentiostat record spans
    partial: bool
    reason: str = ""  # why partial: timeout, gap, no potentiostat
    ewe_points_V: list[float] | None = None  # Ewe at each point time, when point times exist


@dataclass(frozen=True, slots=True)
class CellRecord:
    """A read-only view of the potentiostat history, sorted by time."""

    t: np.ndarray
    ewe: np.ndarray
    i: np.ndarray
    q: np.ndarray
    mode: np.ndarray
    step: np.ndarray
    cycle: np.ndarray
    change_times: np.ndarray


class PotentiostatHistory:
    """A growing, time-sorted record of potentiostat rows with cumulative charge.

    Rows older than ``retain_s`` before the newest are dropped (a spectrum older than that is
    aligned from the store, not from memory), so memory stays flat over a week of beamtime.
    """

    def __init__(self, current_step_mA: float = 0.01, retain_s: float = 6 * 3600.0) -> None:
        self.current_step_mA = current_step_mA
        self.retain_s = retain_s
        self._n = 0
        self._cols = {c: np.empty(1024, dtype=_DTYPES.get(c, np.float64)) for c in _COLUMNS}
        self._changes: list[float] = []
        self._dirty_from = 0  # first row whose coulomb-counted charge must be (re)computed

    def __len__(self) -> int:
        return self._n

    @property
    def watermark(self) -> float:
        """Time of the newest row: data are complete up to here (if no gap is outstanding)."""
        return float(self._cols["t"][self._n - 1]) if self._n else -math.inf

    @property
    def first_time(self) -> float:
        return float(self._cols["t"][0]) if self._n else math.inf

    def extend(
        self,
        t: np.ndarray,
        ewe: np.ndarray,
        i: np.ndarray,
        mode: np.ndarray,
        step: np.ndarray,
        cycle: np.ndarray,
        q: np.ndarray | None = None,
    ) -> bool:
        """Add rows; return True when they reach back before rows already held (late data)."""
        if len(t) == 0:
            return False
        late = self._n > 0 and float(t[0]) < self.watermark
        new = {"t": t, "ewe": ewe, "i": i, "mode": mode, "step": step, "cycle": cycle}
        own = q is not None and bool(np.all(np.isfinite(q)))
        new["q"] = q if own else np.full(len(t), np.nan)
        new["own_q"] = np.full(len(t), own)
        if late or not np.all(np.diff(t) >= 0):
            self._merge(new)
        else:
            self._append(new)
        self._fill_charge()
        self._trim()
        return late

    def _append(self, new: dict[str, np.ndarray]) -> None:
        n, k = self._n, len(new["t"])
        if n + k > len(self._cols["t"]):
            cap = max(2 * len(self._cols["t"]), n + k)
            for c, a in self._cols.items():
                grown = np.empty(cap, dtype=a.dtype)
                grown[:n] = a[:n]
                self._cols[c] = grown
        start = max(n - 1, 0)
        for c in _COLUMNS:
            self._cols[c][n : n + k] = new[c]
        self._n = n + k
        self._dirty_from = start
        self._record_changes(start)

    def _merge(self, new: dict[str, np.ndarray]) -> None:
        merged = {c: np.concatenate([self._cols[c][: self._n], new[c]]) for c in _COLUMNS}
        order = np.argsort(merged["t"], kind="stable")
        merged["q"][~merged["own_q"]] = np.nan  # coulomb-count again across the inserted rows
        self._n = 0
        self._changes = []
        self._append({c: a[order] for c, a in merged.items()})
        self._dirty_from = 0

    def _record_changes(self, start: int) -> None:
        c, n = self._cols, self._n
        if n - start < 2:
            return
        sl = slice(start, n)
        di = np.abs(np.diff(c["i"][sl]))
        changed = ((np.diff(c["step"][sl]) != 0) | (np.diff(c["mode"][sl]) != 0)) | (
            di > self.current_step_mA
        )
        idx = np.flatnonzero(changed) + start + 1
        self._changes.extend(c["t"][idx].tolist())

    def _fill_charge(self) -> None:
        """Coulomb-count the rows that carry no potentiostat Q (NaN), continuing the total."""
        t, i, q = self._cols["t"], self._cols["i"], self._cols["q"]
        start, n = self._dirty_from, self._n
        idx = np.flatnonzero(np.isnan(q[start:n])) + start
        if len(idx) == 0:
            return
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
            k0, k1 = int(run[0]), int(run[-1]) + 1
            if k0 == 0:
                q[0], k0 = 0.0, 1
            if k0 < k1:
                dq = 0.5 * (i[k0:k1] + i[k0 - 1 : k1 - 1]) * (t[k0:k1] - t[k0 - 1 : k1 - 1])
                q[k0:k1] = q[k0 - 1] + np.cumsum(dq) / 3600.0

    def _trim(self) -> None:
        if self._n < 4096:
            return
        cut = int(np.searchsorted(self._cols["t"][: self._n], self.watermark - self.retain_s))
        if cut < self._n // 2:  # trim in large steps so the copy is amortised
            return
        for a in self._cols.values():
            a[: self._n - cut] = a[cut : self._n].copy()
        self._n -= cut

    def record(self) -> CellRecord:
        n, c = self._n, self._cols
        return CellRecord(
            t=c["t"][:n],
            ewe=c["ewe"][:n],
            i=c["i"][:n],
            q=c["q"][:n],
            mode=c["mode"][:n],
            step=c["step"][:n],
            cycle=c["cycle"][:n],
            change_times=np.asarray(self._changes, dtype=np.float64),
        )


def window_mean(t: np.ndarray, y: np.ndarray, a: float, b: float) -> tuple[float, float, float]:
    """Time-weighted mean, min and max of the linear interpolant of (t, y) over [a, b].

    Outside the sampled range the interpolant is held at the edge value (np.interp's rule): the
    caller reports how much of the window the samples actually cover.
    """
    lo, hi = np.searchsorted(t, a, side="right"), np.searchsorted(t, b, side="left")
    ya, yb = np.interp(a, t, y), np.interp(b, t, y)
    inner_t, inner_y = t[lo:hi], y[lo:hi]
    if b <= a:
        return float(ya), float(ya), float(ya)
    tt = np.concatenate(([a], inner_t, [b]))
    yy = np.concatenate(([ya], inner_y, [yb]))
    mean = float(np.sum(0.5 * (yy[1:] + yy[:-1]) * np.diff(tt)) / (b - a))
    return mean, float(yy.min()), float(yy.max())


def align_window(
    rec: CellRecord,
    t_start: float,
    t_end: float,
    *,
    capacity_mAh: float | None,
    initial_soc: float = 0.0,
    point_t: np.ndarray | None = None,
    cover_tolerance_s: float = 0.0,
) -> Alignment:
    """Align one acquisition window [t_start, t_end] with the potentiostat record."""
    if len(rec.t) == 0:
        return _unaligned(t_start, t_end, "no potentiostat data")
    a, b = float(t_start), float(t_end)
    mid = 0.5 * (a + b)
    ewe_mean, ewe_min, ewe_max = window_mean(rec.t, rec.ewe, a, b)
    i_mean = window_mean(rec.t, rec.i, a, b)[0]
    qa, qm, qb = np.interp([a, mid, b], rec.t, rec.q)
    lo, hi = np.searchsorted(rec.t, a, side="left"), np.searchsorted(rec.t, b, side="right")
    at_mid = max(int(np.searchsorted(rec.t, mid, side="right")) - 1, 0)
    in_window = slice(lo, hi)
    changed = hi - lo > 1 and bool(
        np.any(rec.step[in_window] != rec.step[lo]) or np.any(rec.mode[in_window] != rec.mode[lo])
    )
    span = max(b - a, 0.0)
    covered = max(0.0, min(b, float(rec.t[-1])) - max(a, float(rec.t[0])))
    tol = cover_tolerance_s
    fully = bool(rec.t[0] <= a + tol and rec.t[-1] >= b - tol)
    coverage = 1.0 if fully else (covered / span if span > 0 else 0.0)
    before = rec.change_times[rec.change_times <= mid]
    soc = [
        float(initial_soc + q / capacity_mAh) if capacity_mAh else math.nan for q in (qa, qm, qb)
    ]
    points = None
    if point_t is not None:
        points = np.interp(point_t, rec.t, rec.ewe, left=np.nan, right=np.nan).tolist()
    return Alignment(
        t_start=a,
        t_end=b,
        ewe_mean_V=ewe_mean,
        ewe_min_V=ewe_min,
        ewe_max_V=ewe_max,
        i_mean_mA=i_mean,
        charge_mAh=float(qb - qa),
        q_mAh=float(qm),
        soc=soc[1],
        soc_start=soc[0],
        soc_end=soc[2],
        mode=int(rec.mode[at_mid]),
        step=int(rec.step[at_mid]),
        cycle=int(rec.cycle[at_mid]),
        mode_changed=changed,
        t_since_current_change_s=float(mid - before[-1]) if len(before) else math.nan,
        n_rows=int(hi - lo),
        coverage=coverage,
        partial=not fully,
        reason="" if fully else "potentiostat record does not cover the window",
        ewe_points_V=points,
    )


def _unaligned(t_start: float, t_end: float, reason: str) -> Alignment:
    nan = math.nan
    return Alignment(
        t_start=t_start,
        t_end=t_end,
        ewe_mean_V=nan,
        ewe_min_V=nan,
        ewe_max_V=nan,
        i_mean_mA=nan,
        charge_mAh=nan,
        q_mAh=nan,
        soc=nan,
        soc_start=nan,
        soc_end=nan,
        mode=MODE_OCV,
        step=-1,
        cycle=-1,
        mode_changed=False,
        t_since_current_change_s=nan,
        n_rows=0,
        coverage=0.0,
        partial=True,
        reason=reason,
    )
