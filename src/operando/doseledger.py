"""Radiation dose per sample spot, counted the moment a scan arrives.

The dose a scan deposits needs only its header (spot, flux, exposure) and its energies: not
the cell's state, not a fit. It is counted here, on the event loop, as each scan is received,
rather than after alignment and analysis. The orchestrator's spot rotation acts on these
totals; counted after analysis, they lagged the beam by as many scans as the analysis was
behind, and a loaded monitor let a spot take twice its budget (seen in CI: 12 scans on B4).
The totals are the run's record too (the ``dose`` table) and reprocess counts them again, in
the same order, from the raw log.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from operando.analysis.dose import scan_dose_Gy
from operando.analyze import SpectrumInput
from operando.config import AnalysisConfig
from operando.events import EventKind, Recorder
from operando.store.rows import DoseRow

Put = Callable[[DoseRow], None]
DoseListener = Callable[[str, float, float], None]  # spot, this scan's dose, spot total after


class DoseLedger:
    def __init__(self, cfg: AnalysisConfig, put: Put, event: Recorder) -> None:
        self.cfg = cfg
        self.put, self.event = put, event
        self.totals: dict[str, float] = {}  # spot -> Gy so far
        self.warned: set[tuple[str, str]] = set()
        self.on_dose: list[DoseListener] = []

    def count(self, s: SpectrumInput, energy_eV: np.ndarray) -> tuple[float, float]:
        """Add one scan's dose to its spot; returns the spot's (before, after) totals in Gy.

        (nan, nan) when the scan names no spot; (before, before) when the sample or beam
        needed for a dose is not known (formula, density, spot area, flux)."""
        if s.spot is None:
            return math.nan, math.nan
        before = self.totals.get(s.spot, 0.0)
        cfg = self.cfg
        formula = cfg.sample_formula or str(s.extra.get("sample_formula", ""))
        density = cfg.sample_density_g_cm3 or float(s.extra.get("sample_density_g_cm3", 0.0))
        area = cfg.spot_area_mm2 or float(s.extra.get("spot_area_mm2", 0.0))
        if not formula or density <= 0 or area <= 0 or s.flux_ph_s <= 0:
            return before, before
        try:
            d = scan_dose_Gy(s.flux_ph_s, s.exposure_s, energy_eV, formula, density, area)
        except (ValueError, KeyError) as err:
            self.event(EventKind.DOSE_ERROR, None, None, spectrum_id=s.spectrum_id, error=str(err))
            return before, before
        after = before + d
        self.totals[s.spot] = after
        rate = d / s.exposure_s if s.exposure_s > 0 else math.nan
        self.put(DoseRow(s.spectrum_id, s.spot, d, before, after, rate))
        for listener in self.on_dose:
            listener(s.spot, d, after)
        self._warn(s.spot, after)
        return before, after

    def _warn(self, spot: str, total: float) -> None:
        budget = self.cfg.dose_budget_Gy
        if budget <= 0:
            return
        for level, kind in (
            (budget, EventKind.DOSE_BUDGET_EXCEEDED),
            (budget * self.cfg.budget_warning_fraction, EventKind.DOSE_BUDGET_WARNING),
        ):
            if total >= level and (spot, kind) not in self.warned:
                self.warned.add((spot, kind))
                self.event(kind, None, None, spot=spot, dose_Gy=total, budget_Gy=budget)
                break
