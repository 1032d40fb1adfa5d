"""Intermittent current interruptions (ICI) as rows arrive: per interruption the cell's
resistance, its diffusion resistance coefficient and the chemical diffusion coefficient.

An interruption is a rest (|I| below the run's rest current) shorter than ``min_rest_s``
between two runs of the same constant current (within ``hold_fraction``). Over it the voltage
is the constant-current trajectory carried on (its slope ``dE/dt`` times the time since the
interruption, by superposition) less the response to the current step ``-I``; for times short
against ``L^2/D`` that response is an ohmic drop and semi-infinite diffusion (Lacey,
ChemElectroChem 2 (2015) 1988; Chien et al., Nat. Commun. 14 (2023) 2289,
doi 10.1038/s41467-023-37989-6):

    E(dt) - E_I - (dE/dt) dt = -I R - I k sqrt(dt)

fitted by least squares over the interruption's rows from ``ici_fit_from_s`` (before that,
the double layer and charge transfer relax) to its end. ``dt`` is the time since the last row
under current, ``E_I`` the voltage there from the line below (one row's noise would shift R).
Then

    D = 4 / pi * (L (dE/dt) / (I k))**2,     L = V_M m / (M S)

with GITT's material inputs (``[electrochemistry.gitt]``). ``dE/dt`` is the slope of the
voltage over the later half of the current run before the interruption, less the recoveries
of this current's earlier interruptions (``-I k (sqrt(t - t_off) - sqrt(t - t_on))`` each,
with their own k: without them D came out 9-54 % high at 10 s off in 120-300 s on).
Once the current has run long against ``L^2/D`` it is the OCV's slope, which the relation
needs. The 1-sigma of R, k and dE/dt are the regressions' standard errors (R's with E_I's);
D's is first order in k's and dE/dt's. Checked per interruption and named in ``notes``:
- Ewe linear in sqrt(dt): "not linear in sqrt(t)" when a curvature beyond 3 sigma changes
  the line's slope by more than 10 % over the fitted rows (R^2 would take noise for it);
- the interruption short against diffusion: ``dt D / L**2`` below 0.1 ("interruption long
  against L^2/D");
- the current steady: run for ``STEADY`` L^2/D since it began ("current not yet steady":
  before that dE/dt is still the transient's, not the OCV's);
- the OCV's slope resolved: ``dE/dt`` more than twice its 1-sigma ("dE/dt not resolved", as
  on a two-phase plateau, where D from this relation means nothing).
Without the material inputs ``d_cm2_s`` is NaN; R and k stand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from operando.analysis.runs import RunReader

# rows of a current run its slope is taken over, at most: at 1 Hz, 20 min (an ICI run is
# minutes)
SLOPE_ROWS = 1200
# dE/dt is the OCV's slope once the current has run this long against L^2/D (a 5 um slab
# at D = 1e-10 cm^2/s: within 5 % from 0.5, 3.4 times too large at 0.12)
STEADY = 0.5
PAST = 20  # earlier interruptions whose recovery is taken out of a run's slope


@dataclass(frozen=True, slots=True)
class Interruption:
    t_start: float  # the last row under current before it
    duration_s: float
    i_mA: float
    soc: float  # at the interruption (NaN without a capacity)
    e_i_V: float  # the voltage under current at t_start (the run's line there)
    r_ohm: float  # ohmic (and fast) resistance: the sqrt(t) line's intercept
    r_unc_ohm: float
    k_ohm_s05: float  # diffusion resistance coefficient, ohm / sqrt(s)
    k_unc_ohm_s05: float
    dedt_V_s: float  # the voltage's slope under the current before it
    dedt_unc_V_s: float
    sqrt_t_r2: float
    points: int  # rows fitted
    d_cm2_s: float  # NaN without the material inputs
    d_unc_cm2_s: float
    t_D_over_L2: float  # the semi-infinite check (NaN without them)
    notes: list[str] = field(default_factory=list)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """Least squares y = a + b x: a, b, their standard errors, and R^2."""
    n = len(x)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    b = float(((x - xm) * (y - ym)).sum()) / sxx
    a = float(ym - b * xm)
    resid = y - (a + b * x)
    sse = float((resid**2).sum())
    s2 = sse / (n - 2) if n > 2 else math.nan
    se_b = math.sqrt(s2 / sxx)
    se_a = math.sqrt(s2 * (1 / n + xm**2 / sxx))
    total = float(((y - ym) ** 2).sum())
    r2 = 1.0 - sse / total if total > 0 else math.nan
    return a, b, se_a, se_b, r2


def _bent(x: np.ndarray, y: np.ndarray, slope: float) -> bool:
    """The line's slope changes by more than 10 % over the fitted range, beyond 3 sigma:
    curvature that noise does not explain (R^2 would flag noise as curvature)."""
    if len(x) < 4 or slope == 0:
        return False
    design = np.column_stack([np.ones_like(x), x, x**2])
    coef, sse, *_ = np.linalg.lstsq(design, y, rcond=None)
    s2 = float(sse[0]) / (len(x) - 3) if len(sse) else 0.0
    se_c = math.sqrt(s2 * np.linalg.inv(design.T @ design)[2, 2])
    c = float(coef[2])
    return abs(c) > 3 * se_c and 2 * abs(c) * float(np.ptp(x)) > 0.1 * abs(slope)


@dataclass(slots=True)
class _Run:
    """A run of one current: the latest ``SLOPE_ROWS`` of its rows."""

    i_mA: float
    t0: float
    t: np.ndarray = field(default_factory=lambda: np.empty(0))
    v: np.ndarray = field(default_factory=lambda: np.empty(0))
    soc: float = math.nan

    def extend(self, t: np.ndarray, v: np.ndarray, soc: float) -> None:
        self.t = np.concatenate([self.t[-SLOPE_ROWS:], t[-SLOPE_ROWS:]])[-SLOPE_ROWS:]
        self.v = np.concatenate([self.v[-SLOPE_ROWS:], v[-SLOPE_ROWS:]])[-SLOPE_ROWS:]
        self.soc = soc


@dataclass(slots=True)
class _Gap:
    before: _Run
    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)


class InterruptionTracker(RunReader[Interruption]):
    """Interruptions from rows in time order; ``add`` returns the ones it finished (one
    finishes when the current resumes)."""

    def _clear(self) -> None:
        self._run: _Run | None = None  # under current now
        self._gap: _Gap | None = None  # an interruption in progress
        # this current's interruptions so far, (last row before, first row after, -I k):
        # each one's recovery bends the voltage after it, taken out of the slope
        self._past: list[tuple[float, float, float]] = []
        self._began = math.nan  # when this current began, after a rest

    def finish(self) -> list[Interruption]:
        """End of input: an interruption the current did not resume after is none."""
        self._run = self._gap = None
        return []

    restart = finish

    def _same(self, i: float, j: float) -> bool:
        return i * j > 0 and self.held(i, j)

    def _part(
        self, at_rest: bool, t: np.ndarray, v: np.ndarray, i: float, soc: np.ndarray
    ) -> Interruption | None:
        if at_rest:
            if self._run is not None:  # the current stopped: an interruption, perhaps
                self._gap, self._run = _Gap(self._run), None
            gap = self._gap
            if gap is not None:
                gap.t.extend(t.tolist())
                gap.v.extend(v.tolist())
                if gap.t[-1] - gap.before.t[-1] >= self.s.min_rest_s:
                    self._gap = None  # a rest, not an interruption
            return None
        found = None
        gap, self._gap = self._gap, None
        run = self._run
        if gap is not None and self._same(i, gap.before.i_mA):
            found = self._interruption(gap)
            if found is not None:
                minus_ik = -found.i_mA * 1e-3 * found.k_ohm_s05
                self._past = [*self._past[-(PAST - 1) :], (found.t_start, float(t[0]), minus_ik)]
        elif run is None or not self._same(i, run.i_mA):
            self._past, self._began = [], float(t[0])  # a new current
        if run is None or not self._same(i, run.i_mA):
            run = self._run = _Run(i, float(t[0]))
        run.extend(t, v, float(soc[-1]))
        return found

    def _interruption(self, gap: _Gap) -> Interruption | None:
        run = gap.before
        t_i = float(run.t[-1])
        # the current run's slope over its later half (the earlier half carries the last
        # interruption's transient), its last SLOPE_ROWS rows at most: the same rows however
        # the rows came in
        rt, rv = run.t, run.v
        later = rt >= t_i - (t_i - run.t0) / 2
        dt, v = np.asarray(gap.t) - t_i, np.asarray(gap.v)
        fit = dt >= self.s.ici_fit_from_s
        if later.sum() < 3 or fit.sum() < 3:
            return None  # too few rows to fit either line
        rt, rv = rt[later], rv[later]
        recovering = 0.0  # at t_i
        for off, on, b_past in self._past:  # their recoveries: -I k (sqrt(t-off) - sqrt(t-on))
            after = rt > on
            rv[after] -= b_past * (np.sqrt(rt[after] - off) - np.sqrt(rt[after] - on))
            recovering += b_past * (math.sqrt(t_i - off) - math.sqrt(t_i - on))
        line_i, dedt, e_i_unc, dedt_unc, _ = _line(rt - t_i, rv)
        # E_I from the run's line, not its last row: one row's noise would shift R
        e_i = line_i + recovering
        x = np.sqrt(dt[fit])
        y = v[fit] - e_i - dedt * dt[fit]
        a, b, se_a, se_b, r2 = _line(x, y)
        se_a = math.hypot(se_a, e_i_unc)
        amps = run.i_mA * 1e-3
        notes = []
        if _bent(x, y, b):
            notes.append("not linear in sqrt(t)")
        if not abs(dedt) > 2 * dedt_unc:
            notes.append("dE/dt not resolved")
        d = d_unc = check = math.nan
        if self.length_cm is not None and b != 0:
            # I k = -b: the current cancels, D needs only the two slopes
            d = 4 / math.pi * (self.length_cm * dedt / b) ** 2
            d_unc = 2 * d * math.hypot(dedt_unc / dedt if dedt else math.inf, se_b / b)
            check = float(dt[-1]) * d / self.length_cm**2
            if check > 0.1:
                notes.append("interruption long against L^2/D")
            if (t_i - self._began) * d / self.length_cm**2 < STEADY:
                notes.append("current not yet steady")
        return Interruption(
            t_start=t_i,
            duration_s=float(dt[-1]),
            i_mA=run.i_mA,
            soc=run.soc,
            e_i_V=e_i,
            r_ohm=-a / amps,
            r_unc_ohm=se_a / abs(amps),
            k_ohm_s05=-b / amps,
            k_unc_ohm_s05=se_b / abs(amps),
            dedt_V_s=dedt,
            dedt_unc_V_s=dedt_unc,
            sqrt_t_r2=r2,
            points=int(fit.sum()),
            d_cm2_s=d,
            d_unc_cm2_s=d_unc,
            t_D_over_L2=check,
            notes=notes,
        )
