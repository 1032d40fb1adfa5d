"""Beam-damage detection with stated statistics, per sample spot.

Three tests, each at false-alarm probability ``alpha`` per comparison:
- repeat: consecutive scans at one spot while the electrochemical state is constant (|I|
  small, SOC change below a tolerance): the later scan is compared with the earlier one
  (allowing a scale and offset for beam and background) by chi-square against the propagated
  counting noise; p = chi2.sf.
- dose slope: the lowest-valence fraction (photoreduction product) regressed on dose over the
  recent scans at constant state at this spot; one-sided t-test that the slope is positive.
- fresh spot: the lowest-valence fraction against that of a fresh (undosed) spot at the same
  SOC; one-sided z-test with fit uncertainties plus a systematic floor.
A flag carries its evidence: the test, statistic, p-value, slope where there is one, dose.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import msgspec
import numpy as np
from scipy import stats

from operando.analysis.rest import RestCriterion


class DamageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The tests' own settings (``[analysis.damage]``); 'at rest' is the run's one
    ``RestCriterion``, not a threshold of their own."""

    alpha: float = 1e-3
    soc_tolerance: float = 0.005  # SOC change allowed between 'constant state' scans
    slope_window: int = 6  # recent scans in the dose-slope regression
    systematic: float = 0.01  # added in quadrature to fit uncertainties (fresh-spot test)


class ScanSummary(msgspec.Struct, kw_only=True):
    spectrum_id: int
    spot: str
    edge: str
    dose_before_Gy: float
    dose_after_Gy: float
    soc: float
    i_mean_mA: float
    mode: int = -1  # the alignment's control mode (-1: not known)
    lowest: str  # name of the lowest valence
    lowest_fraction: float
    lowest_uncertainty: float
    energy: np.ndarray
    y: np.ndarray  # I0-normalised surface signal over the fit range
    sigma: np.ndarray


class DamageFlag(msgspec.Struct, kw_only=True):
    spectrum_id: int
    spot: str
    test: str
    statistic: float
    p_value: float
    dose_Gy: float
    detail: dict[str, float] = {}


class DamageDetector:
    def __init__(
        self, settings: DamageSettings | None = None, rest: RestCriterion | None = None
    ) -> None:
        self.s = settings or DamageSettings()
        self.rest = rest or RestCriterion()
        self.history: dict[tuple[str, str], deque[ScanSummary]] = defaultdict(
            lambda: deque(maxlen=max(self.s.slope_window, 2))
        )
        self.fresh: dict[str, list[ScanSummary]] = defaultdict(list)  # by edge

    def _constant(self, a: ScanSummary, b: ScanSummary) -> bool:
        return (
            bool(self.rest(a.mode, a.i_mean_mA))
            and bool(self.rest(b.mode, b.i_mean_mA))
            and abs(a.soc - b.soc) <= self.s.soc_tolerance
        )

    def add(self, scan: ScanSummary) -> list[DamageFlag]:
        flags: list[DamageFlag] = []
        key = (scan.spot, scan.edge)
        past = self.history[key]
        if past and self._constant(past[-1], scan):
            flag = self._repeat(past[-1], scan)
            if flag:
                flags.append(flag)
            run = [p for p in past if self._constant(p, scan)] + [scan]
            if len(run) >= 3:
                flag = self._slope(run, scan)
                if flag:
                    flags.append(flag)
        elif past and not self._constant(past[-1], scan):
            past.clear()  # the state moved on: a new constant-state run starts here
        if scan.dose_before_Gy == 0.0:
            self.fresh[scan.edge].append(scan)
        else:
            flag = self._fresh(scan)
            if flag:
                flags.append(flag)
        past.append(scan)
        return flags

    def _repeat(self, a: ScanSummary, b: ScanSummary) -> DamageFlag | None:
        ya = np.interp(b.energy, a.energy, a.y)
        sa = np.interp(b.energy, a.energy, a.sigma)
        # b ~ p + q a (beam and background may differ); weighted least squares, then chi2
        w = 1.0 / np.sqrt(b.sigma**2 + sa**2)
        design = np.column_stack([np.ones_like(ya), ya]) * w[:, None]
        coef, *_ = np.linalg.lstsq(design, b.y * w, rcond=None)
        q = coef[1]
        resid = (b.y - coef[0] - q * ya) / np.sqrt(b.sigma**2 + (q * sa) ** 2)
        chi2 = float(resid @ resid)
        dof = len(resid) - 2
        p = float(stats.chi2.sf(chi2, dof))
        if p >= self.s.alpha:
            return None
        return DamageFlag(
            spectrum_id=b.spectrum_id,
            spot=b.spot,
            test="repeat",
            statistic=chi2 / dof,
            p_value=p,
            dose_Gy=b.dose_before_Gy,
            detail={"chi2": chi2, "dof": float(dof), "previous_spectrum": float(a.spectrum_id)},
        )

    def _slope(self, run: list[ScanSummary], scan: ScanSummary) -> DamageFlag | None:
        dose = np.array([r.dose_before_Gy for r in run])
        f = np.array([r.lowest_fraction for r in run])
        if np.ptp(dose) <= 0:
            return None
        res: Any = stats.linregress(dose, f)  # scipy's result type is not declared
        slope, stderr = float(res.slope), float(res.stderr)
        if not np.isfinite(stderr) or stderr == 0:
            return None
        t = slope / stderr
        p = float(stats.t.sf(t, len(run) - 2))
        if p >= self.s.alpha:
            return None
        return DamageFlag(
            spectrum_id=scan.spectrum_id,
            spot=scan.spot,
            test="dose_slope",
            statistic=float(t),
            p_value=p,
            dose_Gy=scan.dose_before_Gy,
            detail={"slope_per_MGy": float(slope * 1e6), "scans": float(len(run))},
        )

    def _fresh(self, scan: ScanSummary) -> DamageFlag | None:
        same = [
            f
            for f in self.fresh[scan.edge]
            if abs(f.soc - scan.soc) <= self.s.soc_tolerance and f.spot != scan.spot
        ]
        if not same:
            return None
        ref = min(same, key=lambda f: abs(f.soc - scan.soc))
        sig = np.sqrt(
            scan.lowest_uncertainty**2 + ref.lowest_uncertainty**2 + 2 * self.s.systematic**2
        )
        z = (scan.lowest_fraction - ref.lowest_fraction) / sig
        p = float(stats.norm.sf(z))
        if p >= self.s.alpha:
            return None
        return DamageFlag(
            spectrum_id=scan.spectrum_id,
            spot=scan.spot,
            test="fresh_spot",
            statistic=float(z),
            p_value=p,
            dose_Gy=scan.dose_before_Gy,
            detail={
                "fresh_spectrum": float(ref.spectrum_id),
                "difference": float(scan.lowest_fraction - ref.lowest_fraction),
            },
        )
