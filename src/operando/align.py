"""Alignment of spectra with the electrochemistry: pure functions over potentiostat history.

All times here are float seconds on the monitor's reference clock (source clock + the source's
offset). Averages over a spectrum's acquisition window are *time-weighted*: the integral of the
piecewise-linear interpolant of the potentiostat samples over [t_start, t_end], divided by the
window length. That is the voltage the sample actually sat at, also when the potentiostat records
irregularly (EC-Lab records on dE/dt triggers, so rests are sparse).

State of charge: ``soc(t) = initial_soc + q(t) / capacity``, with q the charge passed in mAh,
positive on charge (EC-Lab convention): the potentiostat's own ``Q`` column when it sends one,
otherwise coulomb counting: the trapezoid of I over t, or I times each interval when the
potentiostat says its current is the average over the interval ending at each row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import msgspec
import numpy as np

from operando.protocol import MODE_OCV

# q: charge passed; cum_ewe / cum_i: running trapezoid integrals (window means in O(log n));
# regime: count of step/mode changes so far (a window spans a change if it differs at its ends).
_COLUMNS = ("t", "ewe", "i", "q", "own_q", "mode", "step", "cycle", "cum_ewe", "cum_i", "regime")
_DTYPES = {
    "mode": np.int8,
    "step": np.int32,
    "cycle": np.int32,
    "own_q": np.bool_,
    "regime": np.int64,
}


class Partial(StrEnum):
    """Why an alignment is partial: what realignment and the displays decide on (the
    ``reason`` beside it is for people)."""

    NO = ""
    NOT_COVERED = "not_covered"  # the potentiostat record does not span the window (yet)
    GAP = "gap"  # potentiostat messages missing in the window
    NO_POTENTIOSTAT = "no_potentiostat"  # none configured, or no rows at all
    ERROR = "error"  # aligning failed (a bug): stored unaligned, with why


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
    reason: str = ""  # why partial, for people: timeout, gap, no potentiostat
    cause: Partial = Partial.NO
    timed_out: bool = False  # aligned before the record covered it: alignment.timeout_s passed
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
    cum_ewe: np.ndarray
    cum_i: np.ndarray
    regime: np.ndarray


class PotentiostatHistory:
    """A growing, time-sorted record of potentiostat rows with cumulative charge.

    Rows older than ``retain_s`` before the newest are dropped (a spectrum older than that is
    aligned from the store, not from memory), so memory stays flat over a week of beamtime.
    """

    def __init__(self, current_step_mA: float = 0.01, retain_s: float = 6 * 3600.0) -> None:
        self.current_step_mA = current_step_mA
        self.retain_s = retain_s
        # how the current column was sampled, for coulomb counting: "instant" (a reading at
        # each row: the trapezoid) or "interval_average" (the mean over the interval ending at
        # each row, as EC-Lab's <I>/mA: I times the interval). The potentiostat says which.
        self.current_sampling = "instant"
        self._n = 0
        self._cols = {c: np.empty(1024, dtype=_DTYPES.get(c, np.float64)) for c in _COLUMNS}
        self._changes: list[float] = []
        self._dirty_from = 0  # first row whose derived columns must be (re)computed
        self._changes_array: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def watermark(self) -> float:
        """Time of the newest row: data are complete up to here (if no gap is outstanding)."""
        return float(self._cols["t"][self._n - 1]) if self._n else -math.inf

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
        new["q"] = q if q is not None and own else np.full(len(t), np.nan)
        new["own_q"] = np.full(len(t), own)
        for col in ("cum_ewe", "cum_i", "regime"):  # computed below, from the rows before
            new[col] = np.zeros(len(t))
        if late or not np.all(np.diff(t) >= 0):
            self._merge(new)
        else:
            self._append(new)
        self._fill_charge()
        self._fill_running()
        self._changes_array = None
        # never the rows just added: a batch spanning more than retain_s (EC-Lab's GCPL logs a
        # row every 120 s, 500 rows a batch: 16 h) lost its oldest rows' charge and SOC, and
        # the batch was not recorded at all
        self._trim(keep=len(t))
        return late

    def _append(self, new: dict[str, np.ndarray]) -> None:
        n, k = self._n, len(new["t"])
        if n + k > len(self._cols["t"]):
            cap = max(2 * len(self._cols["t"]), n + k)
            for c, a in self._cols.items():
                grown = np.empty(cap, dtype=a.dtype)
                grown[:n] = a[:n]
                self._cols[c] = grown
        for c in _COLUMNS:
            self._cols[c][n : n + k] = new[c]
        self._n = n + k
        self._dirty_from = n
        self._record_changes(max(n - 1, 0))

    def _merge(self, new: dict[str, np.ndarray]) -> None:
        merged = {c: np.concatenate([self._cols[c][: self._n], new[c]]) for c in _COLUMNS}
        order = np.argsort(merged["t"], kind="stable")
        merged["q"][~merged["own_q"].astype(bool)] = (
            np.nan
        )  # coulomb-count again across the inserted rows
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
                dt = t[k0:k1] - t[k0 - 1 : k1 - 1]
                if self.current_sampling == "interval_average":
                    dq = i[k0:k1] * dt
                else:
                    dq = 0.5 * (i[k0:k1] + i[k0 - 1 : k1 - 1]) * dt
                q[k0:k1] = q[k0 - 1] + np.cumsum(dq) / 3600.0

    def _fill_running(self) -> None:
        """Running integrals of Ewe and I, and the regime count, for the new rows."""
        c, n, k0 = self._cols, self._n, self._dirty_from
        if k0 == 0 and n:
            c["cum_ewe"][0] = c["cum_i"][0] = 0.0
            c["regime"][0] = 0
            k0 = 1
        if k0 >= n:
            return
        t = c["t"]
        dt = t[k0:n] - t[k0 - 1 : n - 1]
        for col, y in (("cum_ewe", c["ewe"]), ("cum_i", c["i"])):
            c[col][k0:n] = c[col][k0 - 1] + np.cumsum(0.5 * (y[k0:n] + y[k0 - 1 : n - 1]) * dt)
        switched = (np.diff(c["step"][k0 - 1 : n]) != 0) | (np.diff(c["mode"][k0 - 1 : n]) != 0)
        c["regime"][k0:n] = c["regime"][k0 - 1] + np.cumsum(switched)

    def _trim(self, keep: int = 0) -> None:
        """Drop rows older than ``retain_s`` before the newest, but never the last ``keep``."""
        if self._n < 4096:
            return
        cut = int(np.searchsorted(self._cols["t"][: self._n], self.watermark - self.retain_s))
        cut = min(cut, self._n - keep)
        if cut < self._n // 2:  # trim in large steps so the copy is amortised
            return
        for a in self._cols.values():
            a[: self._n - cut] = a[cut : self._n].copy()
        self._n -= cut
        first = float(self._cols["t"][0])
        self._changes = [x for x in self._changes if x >= first]
        self._changes_array = None

    def record(self) -> CellRecord:
        n, c = self._n, self._cols
        if self._changes_array is None:
            self._changes_array = np.asarray(self._changes, dtype=np.float64)
        return CellRecord(
            t=c["t"][:n],
            ewe=c["ewe"][:n],
            i=c["i"][:n],
            q=c["q"][:n],
            mode=c["mode"][:n],
            step=c["step"][:n],
            cycle=c["cycle"][:n],
            change_times=self._changes_array,
            cum_ewe=c["cum_ewe"][:n],
            cum_i=c["cum_i"][:n],
            regime=c["regime"][:n],
        )


def _integral(
    t: np.ndarray, y: np.ndarray, cum: np.ndarray, x: np.ndarray, j: np.ndarray, y_x: np.ndarray
) -> np.ndarray:
    """Integral of the interpolant of (t, y) up to each x, from the running trapezoid ``cum``
    (``j``: the row at or before each x, clamped to the record; ``y_x``: y interpolated at x)."""
    return cum[j] + (x - t[j]) * 0.5 * (y[j] + y_x)


def _row_before(after: np.ndarray, n: int) -> np.ndarray:
    """The row at or before each time, from ``searchsorted(side='right')``, clamped to the
    record (min/max: np.clip's Python wrapper cost more than the arithmetic here)."""
    return np.minimum(np.maximum(after - 1, 0), n - 1)


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
    return align_windows(
        rec,
        [t_start],
        [t_end],
        capacity_mAh=capacity_mAh,
        initial_soc=initial_soc,
        point_ts=[point_t],
        cover_tolerance_s=cover_tolerance_s,
    )[0]


def align_windows(
    rec: CellRecord,
    t_start: Sequence[float],
    t_end: Sequence[float],
    *,
    capacity_mAh: float | None,
    initial_soc: float = 0.0,
    point_ts: Sequence[np.ndarray | None] | None = None,
    cover_tolerance_s: float = 0.0,
) -> list[Alignment]:
    """Align many acquisition windows at once (vectorised: a live batch costs one pass)."""
    if len(rec.t) == 0:
        return [
            unaligned(float(a), float(b), "no potentiostat data")
            for a, b in zip(t_start, t_end, strict=True)
        ]
    t, n = rec.t, len(rec.t)
    a, b = np.asarray(t_start, np.float64), np.asarray(t_end, np.float64)
    mid = 0.5 * (a + b)
    span = b - a
    safe = np.where(span > 0, span, 1.0)
    # Each search and interpolation once, shared by the means and the window's rows: a live
    # batch is often one window, and then these calls are the cost.
    lo, hi = np.searchsorted(t, a, side="left"), np.searchsorted(t, b, side="right")
    inner_lo, inner_hi = np.searchsorted(t, a, side="right"), np.searchsorted(t, b, side="left")
    ja, jb = _row_before(inner_lo, n), _row_before(hi, n)
    at_mid = _row_before(np.searchsorted(t, mid, side="right"), n)
    ya, yb = np.interp(a, t, rec.ewe), np.interp(b, t, rec.ewe)
    ia, ib = np.interp(a, t, rec.i), np.interp(b, t, rec.i)
    ewe_int = _integral(t, rec.ewe, rec.cum_ewe, b, jb, yb)
    ewe_int -= _integral(t, rec.ewe, rec.cum_ewe, a, ja, ya)
    ewe_mean = np.where(span > 0, ewe_int / safe, ya)
    i_int = _integral(t, rec.i, rec.cum_i, b, jb, ib) - _integral(t, rec.i, rec.cum_i, a, ja, ia)
    i_mean = np.where(span > 0, i_int / safe, ia)
    qa, qm, qb = np.interp(a, t, rec.q), np.interp(mid, t, rec.q), np.interp(b, t, rec.q)
    changed = (hi - lo > 1) & (
        rec.regime[np.maximum(hi - 1, 0)] != rec.regime[np.minimum(lo, n - 1)]
    )
    fully = (t[0] <= a + cover_tolerance_s) & (t[-1] >= b - cover_tolerance_s)
    covered = np.maximum(0.0, np.minimum(b, t[-1]) - np.maximum(a, t[0]))
    coverage = np.where(fully, 1.0, np.where(span > 0, covered / safe, 0.0))
    k = np.searchsorted(rec.change_times, mid, side="right") - 1
    since = (
        np.where(k >= 0, mid - rec.change_times[np.maximum(k, 0)], np.nan)
        if len(rec.change_times)
        else np.full(len(a), np.nan)
    )
    if capacity_mAh:
        soc_a, soc_m, soc_b = (initial_soc + q / capacity_mAh for q in (qa, qm, qb))
    else:
        soc_a = soc_m = soc_b = np.full(len(a), np.nan)
    # Python numbers once per column, not a numpy scalar per window and field: this loop
    # runs for every spectrum received
    cols = (a, b, ewe_mean, ya, yb, i_mean, qb - qa, qm, soc_m, soc_a, soc_b, since, coverage)
    rows = zip(*(np.asarray(x, np.float64).tolist() for x in cols), strict=True)
    mode, step, cycle = (x[at_mid].tolist() for x in (rec.mode, rec.step, rec.cycle))
    n_rows, ok_all, changed_all = (hi - lo).tolist(), fully.tolist(), changed.tolist()
    inner_lo, inner_hi = inner_lo.tolist(), inner_hi.tolist()
    out = []
    for w, (ta, tb, mean, va, vb, i_m, dq, q_m, s_m, s_a, s_b, since_w, cov) in enumerate(rows):
        lo_v, hi_v = (va, vb) if va <= vb else (vb, va)
        if inner_hi[w] > inner_lo[w]:
            inner = rec.ewe[inner_lo[w] : inner_hi[w]]
            lo_v, hi_v = min(lo_v, float(inner.min())), max(hi_v, float(inner.max()))
        pt = point_ts[w] if point_ts is not None else None
        points = None
        if pt is not None:
            points = np.interp(pt, t, rec.ewe, left=np.nan, right=np.nan).tolist()
        ok = ok_all[w]
        out.append(
            Alignment(
                t_start=ta,
                t_end=tb,
                ewe_mean_V=mean,
                ewe_min_V=lo_v,
                ewe_max_V=hi_v,
                i_mean_mA=i_m,
                charge_mAh=dq,
                q_mAh=q_m,
                soc=s_m,
                soc_start=s_a,
                soc_end=s_b,
                mode=mode[w],
                step=step[w],
                cycle=cycle[w],
                mode_changed=changed_all[w],
                t_since_current_change_s=since_w,
                n_rows=n_rows[w],
                coverage=cov,
                partial=not ok,
                reason="" if ok else "potentiostat record does not cover the window",
                cause=Partial.NO if ok else Partial.NOT_COVERED,
                ewe_points_V=points,
            )
        )
    return out


def unaligned(
    t_start: float, t_end: float, reason: str, cause: Partial = Partial.NO_POTENTIOSTAT
) -> Alignment:
    """A spectrum aligned with nothing (partial, with why)."""
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
        cause=cause,
    )
