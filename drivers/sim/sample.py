"""The simulated sample's truth: valence fractions in the bulk and at the surface, vs the cell.

Pure functions of the state of charge ``y`` that the spectroscopy sees (which lags the
coulometric SOC for LiFePO4, see ``lag``), the electrode voltage, and the dose a spot has taken.
Rules follow docs/decisions/0009 and the review's cathode sections:
- NMC111: Ni carries the redox (Ni2+ -> Ni4+ with SOC, immediately); Mn stays 4+ in the bulk;
  a reduced (rock-salt-like) surface layer shows extra Ni2+/Mn2+/Mn3+ in TEY.
- LiFePO4: Fe2+ -> Fe3+ with SOC; the two-phase transformation lags the current and keeps
  relaxing for minutes after the current stops (first order, ``bulk_tau_s``).
- LiNi0.5Mn1.5O4 (disordered): ~10 % Mn3+ oxidised on the 4.0 V step; Ni2+ -> Ni4+ on the
  4.7 V plateau; surface Mn2+ grows on charge (electrolyte oxidation, Mn dissolution).
- Na0.44MnO2: average Mn valence 3.34 (Na0.66) .. 3.78 (Na0.22); surface Mn2+ appears at low
  voltage (Mn3+ disproportionation).
- Li-rich NMC: TM redox on the sloping region, then lattice-oxygen oxidation on the 4.5 V
  plateau: the O K RIXS feature at 531.0 / 523.7 eV grows with SOC above ~0.45.
Beam damage: above a critical dose the surface photoreduces Mn(III/IV) -> Mn(II) (and the
lowest valence of any edge), ``1 - exp(-(D - D_c) * rate)`` of the higher valences per spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Fractions = dict[str, float]


def _two_step(ox: float, low: int, names: tuple[str, str, str]) -> Fractions:
    """Fractions of low / low+1 / low+2 valences with average oxidation ``ox``."""
    x = min(max(ox - low, 0.0), 2.0)
    if x <= 1.0:
        return {names[0]: 1.0 - x, names[1]: x, names[2]: 0.0}
    return {names[0]: 0.0, names[1]: 2.0 - x, names[2]: x - 1.0}


MN = ("Mn2+", "Mn3+", "Mn4+")
NI = ("Ni2+", "Ni3+", "Ni4+")


def _blend(a: Fractions, b: Fractions, w: float) -> Fractions:
    """(1 - w) a + w b over the union of names."""
    return {k: (1 - w) * a.get(k, 0.0) + w * b.get(k, 0.0) for k in {**a, **b}}


@dataclass(frozen=True, slots=True)
class SampleModel:
    chemistry: str
    edges: tuple[str, ...]  # edges this sample shows, first is the main one
    bulk_tau_s: float = 0.0  # spectroscopic lag of the bulk behind the coulometric SOC

    def bulk(self, edge: str, y: float, voltage: float) -> Fractions:
        c, y = self.chemistry, min(max(y, 0.0), 1.0)
        if edge == "Fe-L":
            return {"Fe2+": 1.0 - y, "Fe3+": y}
        if edge == "Ni-L":
            if c == "lnmo":  # Ni2+ -> Ni4+ over the 4.7 V plateaus (SOC 0.1 .. 1)
                return _two_step(2.0 + 2.0 * max(y - 0.1, 0.0) / 0.9, 2, NI)
            return _two_step(2.0 + 1.8 * y, 2, NI)
        if edge == "Mn-L":
            if c == "lnmo":
                mn3 = 0.10 * max(0.0, 1.0 - y / 0.08)
                return {"Mn2+": 0.0, "Mn3+": mn3, "Mn4+": 1.0 - mn3}
            if c == "na044mno2":
                return _two_step(3.34 + 0.44 * y, 2, MN)
            return {"Mn2+": 0.0, "Mn3+": 0.0, "Mn4+": 1.0}
        raise KeyError(f"{self.chemistry}: no model for edge {edge}")

    def surface(self, edge: str, y: float, voltage: float) -> Fractions:
        c, b = self.chemistry, self.bulk(edge, y, voltage)
        if c in ("nmc111", "lirich"):  # reduced surface layer
            if edge == "Ni-L":
                return _blend(b, {"Ni2+": 1.0}, 0.30)
            if edge == "Mn-L":
                return _blend(b, {"Mn2+": 0.35, "Mn3+": 0.65}, 0.20)
        if c == "lfp":  # slightly oxidised surface
            return _blend(b, {"Fe3+": 1.0}, 0.15)
        if c == "lnmo" and edge == "Mn-L":
            return _blend(b, {"Mn2+": 1.0}, 0.05 + 0.30 * min(max(y, 0.0), 1.0))
        if c == "na044mno2" and edge == "Mn-L":
            low_v = min(max((2.6 - voltage) / 0.6, 0.0), 1.0)
            return _blend(b, {"Mn2+": 1.0}, 0.03 + 0.25 * low_v)
        return b

    def oxo(self, y: float) -> float:
        """Oxidised-oxygen RIXS feature strength (0 .. 1)."""
        if self.chemistry != "lirich":
            return 0.0
        return min(max((y - 0.45) / 0.55, 0.0), 1.0)


MODELS = {
    "nmc111": SampleModel("nmc111", ("Ni-L", "Mn-L")),
    # ~10 min relaxation of LiFePO4 after the current stops (docs/decisions/0009).
    "lfp": SampleModel("lfp", ("Fe-L",), bulk_tau_s=600.0),
    "lnmo": SampleModel("lnmo", ("Mn-L", "Ni-L")),
    "na044mno2": SampleModel("na044mno2", ("Mn-L",)),
    "lirich": SampleModel("lirich", ("Mn-L", "Ni-L")),
}


def lag(y: float, target: float, dt: float, tau: float) -> float:
    """First-order approach of y to target over dt (exact for a constant target)."""
    if tau <= 0 or dt <= 0:
        return target if tau <= 0 else y
    return target + (y - target) * math.exp(-dt / tau)


def photoreduce(
    f: Fractions, lowest: str, dose_Gy: float, critical_Gy: float, rate_per_Gy: float
) -> Fractions:
    """Move ``1 - exp(-(D - Dc) rate)`` of every higher valence into the lowest one."""
    if dose_Gy <= critical_Gy or rate_per_Gy <= 0:
        return dict(f)
    r = 1.0 - math.exp(-(dose_Gy - critical_Gy) * rate_per_Gy)
    out = {k: (v if k == lowest else v * (1 - r)) for k, v in f.items()}
    out[lowest] = f.get(lowest, 0.0) + r * sum(v for k, v in f.items() if k != lowest)
    return out
