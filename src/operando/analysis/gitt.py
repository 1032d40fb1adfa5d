"""Titration pulses (GITT) as rows arrive: per pulse the transient and steady-state voltage
changes, the equilibrium (OCV) point after it, and the chemical diffusion coefficient.

A pulse is a run of rows at one constant current (within ``hold_fraction``), ``min_pulse_s``
to ``max_pulse_s`` long, between two rests (|I| below the run's rest current). Its transient
``delta_et_V`` is the slope of Ewe against the square root of the time since the pulse began,
times the square root of its length: the ohmic step is the intercept, so it is left out
without estimating it. Its steady-state change
``delta_es_V`` is the equilibrium voltage after it minus the one before it. The equilibrium
voltage of a rest is where its relaxation goes: the asymptote of the relaxation model AIC picks
(the same fits as every rest's Ewe, ``analysis.relaxation``), with its 1-sigma; where the rest
does not determine it, the rest's last voltage, and the notes say so. A rest shorter than
``min_rest_s`` is an interruption, not a titration step.

The diffusion coefficient is Weppner and Huggins' (J. Electrochem. Soc. 124 (1977) 1569):
``D = 4 / (pi tau) * (L * delta_es / delta_et)**2`` with ``L = V_M m / (M S)`` (molar volume,
active mass, molar mass, electrode area: the experiment's ``[electrochemistry.gitt]``). Its
assumptions, checked per pulse and named in ``notes`` when they fail:
- diffusion into a semi-infinite solid during the pulse: ``tau * D / L**2`` well below 1
  (``notes``: "pulse long against L^2/D" above 0.1);
- Ewe linear in sqrt(t) over the pulse (R^2 of that line below 0.99: "not linear in sqrt(t)");
- the rest long enough to reach equilibrium (Ewe still drifting over the rest's last tenth at
  a rate that would move it by more than 5 % of delta_es over a rest as long again: "rest not
  relaxed");
- small steps: one pulse moves the composition little (with a known SOC, a run of current
  moving it by more than ``max_pulse_soc`` is not taken for a pulse at all).
Without the material inputs ``d_cm2_s`` is NaN and the pulse's other numbers still stand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np

from operando.analysis.relaxation import fit_relaxation, why_undetermined
from operando.analysis.runs import RunReader


class GittSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    molar_mass_g_mol: float | None = None  # of the active material
    molar_volume_cm3_mol: float | None = None
    electrode_area_cm2: float | None = None  # electrode / electrolyte contact area
    min_pulse_s: float = 2.0
    # a titration pulse moves a little charge: a longer run of current between two rests is a
    # (half-)cycle, not a pulse (GITT pulses are minutes to an hour)
    max_pulse_s: float = 3600.0
    # nor one that moves the SOC by more than this (when the SOC is known): Weppner and
    # Huggins linearise the voltage in the composition over one pulse
    max_pulse_soc: float = 0.05
    hold_fraction: float = 0.05
    # a rest shorter than this after a pulse is an interruption (analysis.ici), not a
    # titration step: its voltage has not come near equilibrium
    min_rest_s: float = 60.0
    # an interruption's sqrt(t) line is fitted from this long after the current stopped:
    # before it the double layer and charge transfer relax (Chien et al. 2023 fit 1-10 s)
    ici_fit_from_s: float = 1.0

    def diffusion_length_cm(self, active_mass_mg: float | None) -> float | None:
        """L = V_M m / (M S), or None when an input is missing."""
        inputs = (self.molar_volume_cm3_mol, active_mass_mg, self.molar_mass_g_mol)
        if any(v is None or v <= 0 for v in (*inputs, self.electrode_area_cm2)):
            return None
        assert self.molar_volume_cm3_mol and active_mass_mg and self.molar_mass_g_mol
        assert self.electrode_area_cm2
        moles = active_mass_mg * 1e-3 / self.molar_mass_g_mol
        return self.molar_volume_cm3_mol * moles / self.electrode_area_cm2


@dataclass(frozen=True, slots=True)
class GittPulse:
    t_start: float  # the last rest row before the pulse
    tau_s: float
    i_mA: float
    soc_after: float  # at the end of the rest after it (NaN without a capacity)
    ocv_before_V: float
    ocv_after_V: float  # the equilibrium point this pulse adds to the titration curve
    delta_es_V: float
    delta_et_V: float
    sqrt_t_r2: float
    d_cm2_s: float  # NaN without the material inputs
    tau_D_over_L2: float  # the semi-infinite check (NaN without them)
    # ocv_after_V's 1-sigma from the relaxation fits (NaN: taken at the rest's end, or a run
    # recorded before it was fitted)
    ocv_unc_V: float = math.nan
    rest_end_V: float = math.nan  # the last voltage of the rest after it
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pulse:
    t0: float
    v_rest: float  # the rest voltage before it
    soc_before: float
    i_mA: float
    t: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    tau: float = math.nan
    delta_et: float = math.nan
    r2: float = math.nan


class PulseTracker(RunReader[GittPulse]):
    """GITT pulses from rows in time order; ``add`` returns the pulses it finished (a pulse
    finishes when the rest after it ends: its steady-state change is known then)."""

    def _clear(self) -> None:
        self._last: tuple[float, float, float, float] | None = None  # t, V, I, soc
        self._pulse: _Pulse | None = None  # under current now
        self._resting: _Pulse | None = None  # ended, its rest running
        self._rest: list[tuple[np.ndarray, ...]] = []  # (t, V, soc) parts of the rest after it

    def finish(self) -> list[GittPulse]:
        found = self._close_rest()
        self._pulse = None
        return [found] if found is not None else []

    def restart(self) -> list[GittPulse]:
        out = self.finish()
        self._last = None
        return out

    def _part(
        self, at_rest: bool, t: np.ndarray, v: np.ndarray, i: float, soc: np.ndarray
    ) -> GittPulse | None:
        last = self._last
        self._last = (float(t[-1]), float(v[-1]), i, float(soc[-1]))
        p = self._pulse
        if p is not None:
            if not at_rest and self.held(i, p.i_mA):  # the same pulse, in the next batch
                if p.t and p.t[-1] <= self.s.max_pulse_s:  # past it, it is no pulse: stop
                    p.t.extend((t - p.t0).tolist())
                    p.v.extend(v.tolist())
                return None
            self._pulse = None
            if at_rest and self._ended(p):  # a pulse, then a rest: its rest starts here
                self._resting, self._rest = p, [(t, v, soc)]
            return None  # a current that changed without a rest is no titration pulse
        if at_rest:
            if self._resting is not None:
                self._rest.append((t, v, soc))
            return None
        # a current starts: the rest before it (if any) is over
        found = self._close_rest()
        if last is not None and abs(last[2]) < self.rest_current_mA:
            # after a titration step, from the equilibrium its rest relaxed to
            v_rest = found.ocv_after_V if found is not None else last[1]
            self._pulse = _Pulse(last[0], v_rest, last[3], i, (t - last[0]).tolist(), v.tolist())
        return found

    def _ended(self, p: _Pulse) -> bool:
        """The pulse's transient, from Ewe against sqrt(t); False when too short to fit."""
        if len(p.t) < 3 or not self.s.min_pulse_s <= p.t[-1] <= self.s.max_pulse_s:
            return False
        x, y = np.sqrt(np.asarray(p.t)), np.asarray(p.v)
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        total = float(((y - y.mean()) ** 2).sum())
        p.r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else math.nan
        p.tau = p.t[-1]
        p.delta_et = float(slope) * math.sqrt(p.tau)
        return True

    def _close_rest(self) -> GittPulse | None:
        p, parts = self._resting, self._rest
        self._resting, self._rest = None, []
        if p is None or not parts:
            return None
        t, v, soc = (np.concatenate([part[k] for part in parts]) for k in range(3))
        if len(t) < 2 or abs(soc[-1] - p.soc_before) > self.s.max_pulse_soc:
            return None  # not a titration step (NaN SOC: not known, kept)
        if t[-1] - (p.t0 + p.tau) < self.s.min_rest_s:
            return None  # an interruption of the current, too short to relax: no titration
        rest_end = float(v[-1])
        relaxed, relaxed_unc = relaxed_voltage(t - (p.t0 + p.tau), v)
        # the titration curve's point: where the rest's relaxation goes (the fit's y_inf)
        # when the fit determines it, else the rest's last voltage
        ocv_after = relaxed if math.isfinite(relaxed) else rest_end
        delta_es = ocv_after - p.v_rest
        notes = []
        if math.isfinite(relaxed):
            # the rest ended more than 5 % of delta_es from where it was going
            if abs(relaxed - rest_end) > 0.05 * abs(delta_es):
                notes.append("rest not relaxed")
        else:
            notes.append("relaxation not determined: OCV from the rest's end")
            # still drifting at the end: at that rate over a rest as long again, the point
            # would move by more than 5 % of delta_es
            tail = t >= t[-1] - 0.1 * (t[-1] - t[0])
            if tail.sum() >= 2:
                rate = abs(float(np.polyfit(t[tail], v[tail], 1)[0]))
                if rate * (t[-1] - t[0]) > 0.05 * abs(delta_es):
                    notes.append("rest not relaxed")
        if not p.r2 >= 0.99:
            notes.append("not linear in sqrt(t)")
        d, check = math.nan, math.nan
        if self.length_cm is not None and p.delta_et != 0:
            d = 4 / (math.pi * p.tau) * (self.length_cm * delta_es / p.delta_et) ** 2
            check = p.tau * d / self.length_cm**2
            if check > 0.1:
                notes.append("pulse long against L^2/D")
        return GittPulse(
            t_start=p.t0,
            tau_s=p.tau,
            i_mA=p.i_mA,
            soc_after=float(soc[-1]),
            ocv_before_V=p.v_rest,
            ocv_after_V=ocv_after,
            ocv_unc_V=relaxed_unc,  # NaN with relaxed: the point is the rest's end
            rest_end_V=rest_end,
            delta_es_V=delta_es,
            delta_et_V=p.delta_et,
            sqrt_t_r2=p.r2,
            d_cm2_s=d,
            tau_D_over_L2=check,
            notes=notes,
        )


FIT_POINTS = 400  # rows of a rest the relaxation fit sees (evenly picked): its cost is bounded


def relaxed_voltage(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Where a rest's voltage relaxes to, and its 1-sigma: the asymptote y_inf of the
    relaxation model AIC picks (analysis.relaxation, the same fits as the rests' Ewe);
    (NaN, NaN) when the rest does not determine it (too few rows, no model converged, its
    time constants or y_inf not fixed by the data)."""
    keep = t > 0
    t, v = t[keep], v[keep]
    if len(t) > FIT_POINTS:
        pick = np.linspace(0, len(t) - 1, FIT_POINTS).round().astype(int)
        t, v = t[pick], v[pick]
    if len(t) < 4 or np.ptp(v) == 0:
        return math.nan, math.nan
    try:
        result = fit_relaxation(t, v)
    except ValueError:
        return math.nan, math.nan
    if not result.determined:
        return math.nan, math.nan
    best = next(f for f in result.fits if f.model == result.best)
    y_inf, unc = best.params["y_inf"], best.errors["y_inf"]
    if not math.isfinite(unc):
        return math.nan, math.nan
    # the asymptote is an extrapolation: the models the data determine disagree on it by
    # more than any one's 1-sigma when the rest is short (a slab's 300 s rest after 900 s:
    # single 3.591, stretched 3.585, double 3.590 V; the truth 3.588 V), and that spread
    # is how well it is known
    span = float(t.max() - t.min())
    asymptotes = [f.params["y_inf"] for f in result.fits if not why_undetermined(f, span)]
    return y_inf, max(unc, (max(asymptotes) - min(asymptotes)) / 2)
