"""Resistance from every current step, as potentiostat rows arrive.

A step is a jump in current between two rows larger than ``step_min_mA``, with the current
held (within ``hold_fraction`` of the jump, or ``step_min_mA``) for at least two rows before
it and two after it: impedance sweeps and CV tapers, whose current never holds, give none.
Assumed: the current changed right after the last row at the old current (``t_step``), so
the first row after it is at most ``first_after_s`` later, and that is what the numbers can
claim:

- ``r_first_ohm``: dV/dI at the first row after the step. With fast sampling this is the
  ohmic (iR) drop; with a row a second later it also holds a second of charge transfer.
- ``r_0_ohm``: the ohmic drop, extrapolated back to ``t_step`` by the parabola through the
  first three rows after it (a line through two, when only two lie within
  ``ohmic_window_s``; NaN with fewer: too sparse to say). The parabola removes most of a fast
  RC pair's rise (a line leaves R1 (1 - e^-1s/tau1) behind: 8 % of R0 with tau1 = 5 s, 1 s rows)
  at the price of 2x the noise, which ``r_0_unc_ohm`` carries.
- ``r_at_s``: the DC resistance (V(t_step + s) - V before) / dI at each of ``after_s``
  seconds, interpolated between rows; NaN when the current did not hold that long.
- ``r_unc_ohm``: one standard deviation of ``r_first_ohm`` and ``r_at_s`` from the voltage
  noise before the step (the spread of successive differences over up to 10 rows);
  ``r_0_unc_ohm`` the same noise through the extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

NOISE_ROWS = 10


class ResistanceSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    step_min_mA: float = 0.01
    hold_fraction: float = 0.05
    after_s: tuple[float, ...] = (1.0, 10.0)
    ohmic_window_s: float = 3.0


@dataclass(frozen=True, slots=True)
class CurrentStep:
    t_step: float
    i_before_mA: float
    i_after_mA: float
    v_before_V: float
    soc: float  # NaN without a capacity
    first_after_s: float
    r_first_ohm: float
    r_0_ohm: float
    r_0_rows: int  # rows the extrapolation used: 3, 2, or 0 (none)
    r_at_s: dict[str, float] = field(default_factory=dict)  # "1" -> ohm
    r_unc_ohm: float = math.nan
    r_0_unc_ohm: float = math.nan
    held_s: float = math.nan  # how long the current held, up to the longest ``after_s``


class StepResistance:
    """Current steps from rows in time order; ``add`` returns the steps it finished."""

    def __init__(self, settings: ResistanceSettings) -> None:
        self.s = settings
        self._cols: tuple[np.ndarray, ...] = tuple(np.zeros(0) for _ in range(4))
        self._pending: list[float] = []  # t_step of steps waiting for rows after them

    def restart(self) -> list[CurrentStep]:
        out = self.finish()
        self._cols = tuple(np.zeros(0) for _ in range(4))
        return out

    def finish(self) -> list[CurrentStep]:
        out = [self._measure(ts) for ts in self._pending]
        self._pending = []
        return [s for s in out if s is not None]

    def add(
        self, t: np.ndarray, ewe: np.ndarray, i_mA: np.ndarray, soc: np.ndarray
    ) -> list[CurrentStep]:
        new = tuple(np.asarray(a, dtype=np.float64) for a in (t, ewe, i_mA, soc))
        n_old = len(self._cols[0])
        self._cols = tuple(np.concatenate([a, b]) for a, b in zip(self._cols, new, strict=True))
        tt, _, ii, _ = self._cols
        di = np.abs(np.diff(ii[max(n_old - 1, 0) :]))
        for k in np.flatnonzero(di > self.s.step_min_mA) + max(n_old - 1, 0):
            self._pending.append(float(tt[k]))  # the last row at the old current
        done: list[CurrentStep] = []
        longest = max(self.s.after_s, default=0.0)
        keep: list[float] = []
        for ts in self._pending:
            k = int(np.searchsorted(tt, ts))
            ended = self._held_until(k) < len(tt) - 1  # the current moved on since
            if ended or tt[-1] >= ts + longest:
                step = self._measure(ts)
                if step is not None:
                    done.append(step)
            else:
                keep.append(ts)
        self._pending = keep
        self._trim()
        return done

    def _held_until(self, k: int) -> int:
        """Index of the last row from k + 1 on at which the new current still holds."""
        _, _, ii, _ = self._cols
        if k + 1 >= len(ii):
            return k
        target = ii[k + 1]
        tol = max(self.s.step_min_mA, self.s.hold_fraction * abs(target - ii[k]))
        off = np.flatnonzero(np.abs(ii[k + 1 :] - target) > tol)
        return k + (int(off[0]) if len(off) else len(ii) - k - 1)

    def _measure(self, ts: float) -> CurrentStep | None:
        tt, vv, ii, ss = self._cols
        k = int(np.searchsorted(tt, ts))
        if k + 1 >= len(tt):
            return None
        last = self._held_until(k)
        if last < k + 2 or k < 1:
            return None  # the new current did not hold for two rows: not a step
        tol = max(self.s.step_min_mA, self.s.hold_fraction * abs(ii[k + 1] - ii[k]))
        if abs(ii[k] - ii[k - 1]) > tol:
            return None  # nor had the old one
        d_i = float(ii[k + 1] - ii[k]) * 1e-3  # A
        if abs(d_i) * 1e3 <= self.s.step_min_mA:
            return None
        v0 = float(vv[k])
        first_after = float(tt[k + 1]) - ts
        r_first = (vv[k + 1] - v0) / d_i
        near = [
            j for j in range(k + 1, min(last, k + 3) + 1) if tt[j] - ts <= self.s.ohmic_window_s
        ]
        r_0, gain = math.nan, math.nan
        if len(near) >= 2:
            # the value at t_step of the polynomial through these rows: weights on their V
            x = tt[near] - ts
            w = np.linalg.solve(np.vander(x, len(x), increasing=True).T, np.eye(len(x))[:, 0])
            r_0 = float((w @ vv[near] - v0) / d_i)
            gain = math.sqrt(float(w @ w) + 1.0)  # noise of those rows and of V before
        held = float(tt[last]) - ts
        r_at = {}
        for s in self.s.after_s:
            if s <= held and s >= first_after:
                v_s = np.interp(ts + s, tt[k + 1 : last + 1], vv[k + 1 : last + 1])
                r_at[f"{s:g}"] = float((v_s - v0) / d_i)
            else:
                r_at[f"{s:g}"] = math.nan
        before = vv[max(0, k - NOISE_ROWS) : k + 1]
        noise = float(np.std(np.diff(before)) / math.sqrt(2)) if len(before) >= 3 else math.nan
        return CurrentStep(
            t_step=ts,
            i_before_mA=float(ii[k]),
            i_after_mA=float(ii[k + 1]),
            v_before_V=float(v0),
            soc=float(ss[k]),
            first_after_s=float(first_after),
            r_first_ohm=float(r_first),
            r_0_ohm=r_0,
            r_0_rows=len(near) if len(near) >= 2 else 0,
            r_at_s=r_at,
            r_unc_ohm=noise * math.sqrt(2) / abs(d_i),
            r_0_unc_ohm=noise * gain / abs(d_i),
            held_s=float(min(held, max(self.s.after_s, default=held))),
        )

    def _trim(self) -> None:
        """Keep the rows a pending step or the next step's noise estimate needs."""
        tt = self._cols[0]
        keep_from = max(0, len(tt) - NOISE_ROWS - 1)
        if self._pending:
            keep_from = min(
                keep_from, max(0, int(np.searchsorted(tt, self._pending[0])) - NOISE_ROWS)
            )
        if keep_from > 0:
            self._cols = tuple(a[keep_from:] for a in self._cols)
