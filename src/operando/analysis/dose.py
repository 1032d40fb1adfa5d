"""Radiation dose at the sample surface, per spot: D = N E mu / (rho A) (docs/decisions/0008).

N photons of energy E on area A; mu the linear absorption coefficient of the sample (from
xraydb for its formula and density), rho its density. For a scan the sum runs over its points
(dwell = exposure / points), since mu changes across an edge.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import xraydb

EV_J = 1.602176634e-19


@cache
def _mu_per_m(formula: str, density_g_cm3: float, energies: tuple[float, ...]) -> np.ndarray:
    return np.asarray(xraydb.material_mu(formula, np.asarray(energies), density_g_cm3)) * 100.0


def scan_dose_Gy(
    flux_ph_s: float,
    exposure_s: float,
    energy_eV: np.ndarray,
    formula: str,
    density_g_cm3: float,
    spot_area_mm2: float,
) -> float:
    """Dose one scan deposits: exposure shared evenly over its energy points."""
    e = np.atleast_1d(np.asarray(energy_eV, dtype=np.float64))
    if spot_area_mm2 <= 0 or density_g_cm3 <= 0:
        raise ValueError(
            f"spot area ({spot_area_mm2} mm2) and density ({density_g_cm3} g/cm3) must be positive"
        )
    mu = _mu_per_m(formula, density_g_cm3, tuple(np.round(e, 4).tolist()))
    dwell = exposure_s / len(e)
    rho, area = density_g_cm3 * 1000.0, spot_area_mm2 * 1e-6
    return float(np.sum(flux_ph_s * dwell * e * EV_J * mu) / (rho * area))
