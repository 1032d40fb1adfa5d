"""A battery cell model: OCV(SOC) + series resistance + two RC pairs, stepped in closed form.

Sign convention (as EC-Lab): current ``I`` in mA is positive on charge; charge raises SOC and
the voltage: ``V = OCV(soc) + I*R0 + v1 + v2`` with each RC pair obeying
``dv/dt = -v/tau + I*R/tau``. For a constant current over a step dt the RC update is exact
(``v <- v e + I R (1 - e)``, ``e = exp(-dt/tau)``), so a step costs microseconds and is
stable for any dt. A constant-voltage step solves the same relation for the current that lands
exactly on the target voltage (the OCV linearised over the step), which tapers the current as
a real CV hold does.

Presets are half cells against a metal counter electrode (the usual operando geometry), with
parameters justified beside each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


def ocp_nmc_chen2020(sto: np.ndarray) -> np.ndarray:
    """NMC vs Li, fit of Chen et al., J. Electrochem. Soc. 167 (2020) 080534 (PyBaMM's
    ``nmc_LGM50_ocp_Chen2020``); ``sto`` is the Li stoichiometry of the cathode."""
    return (
        -0.809 * sto
        + 4.4875
        - 0.0428 * np.tanh(18.5138 * (sto - 0.5542))
        - 17.7326 * np.tanh(15.789 * (sto - 0.3117))
        + 17.5842 * np.tanh(15.9308 * (sto - 0.312))
    )


def ocp_lfp_afshar2017(sto: np.ndarray) -> np.ndarray:
    """LiFePO4 vs Li, Afshar et al., arXiv:1709.03970 (2017), the OCP PyBaMM's Prada2013 set
    uses; flat two-phase plateau near 3.40 V."""
    return 3.4077 - 0.020269 * sto + 0.5 * np.exp(-150 * sto) - 0.9 * np.exp(-30 * (1 - sto))


def _table(soc: list[float], volts: list[float]) -> PchipInterpolator:
    # PCHIP keeps a hand-tabulated curve monotonic between the knots (no spline overshoot).
    return PchipInterpolator(np.asarray(soc), np.asarray(volts), extrapolate=True)


@dataclass(frozen=True, slots=True)
class CellPreset:
    name: str
    chemistry: str  # nmc111, lfp, lnmo, na044mno2, lirich
    description: str
    capacity_mAh: float
    r0_ohm: float
    r1_ohm: float
    tau1_s: float
    r2_ohm: float
    tau2_s: float
    v_min: float  # safety limits enforced by the controller, beyond any protocol cut-off
    v_max: float
    initial_soc: float = 0.0
    noise_V: float = 0.0005
    noise_rel_I: float = 0.001  # relative current noise (1e-3 of reading)
    noise_abs_mA: float = 0.0005

    def ocv(self, soc: np.ndarray | float) -> np.ndarray:
        """OCV(SOC); beyond 0 and 1 the voltage runs away steeply (20 V per unit SOC), as an
        over-discharged or over-charged electrode does, so cut-offs are always reached."""
        s = np.asarray(soc, dtype=np.float64)
        inside = np.clip(s, 0.0, 1.0)
        return OCV[self.chemistry](inside) + OVERRUN_V_PER_SOC * (s - inside)


OVERRUN_V_PER_SOC = 20.0

# -- OCV(SOC) curves, SOC 0 = discharged, 1 = charged ----------------------------------------
OCV = {
    # NMC111 vs Li: stoichiometry 0.95 (discharged, 3.53 V) .. 0.27 (charged, 4.27 V).
    "nmc111": lambda s: ocp_nmc_chen2020(0.95 - 0.68 * s),
    # LFP vs Li: Li fraction 0.99 (discharged) .. 0.01 (charged); plateau 3.39-3.41 V.
    "lfp": lambda s: ocp_lfp_afshar2017(0.99 - 0.98 * s),
    # Disordered LiNi0.5Mn1.5O4 vs Li: ~8 % of capacity on the Mn3+/4+ step near 4.0 V, then
    # the Ni2+/3+ (4.70 V) and Ni3+/4+ (4.75 V) plateaus. Hand-tabulated from typical
    # published first-cycle curves (not a fit).
    "lnmo": _table(
        [0.0, 0.02, 0.05, 0.08, 0.11, 0.15, 0.30, 0.50, 0.55, 0.70, 0.90, 0.97, 1.0],
        [3.50, 3.90, 4.00, 4.05, 4.50, 4.67, 4.69, 4.71, 4.73, 4.745, 4.76, 4.82, 4.95],
    ),
    # Na0.44MnO2 vs Na between 2.0 and 3.8 V: the staircase of small plateaus this tunnel
    # structure shows (about 2.2, 2.7, 3.0, 3.1, 3.4, 3.6 V). Hand-tabulated, not a fit.
    "na044mno2": _table(
        [0.0, 0.04, 0.14, 0.20, 0.33, 0.40, 0.52, 0.58, 0.66, 0.72, 0.84, 0.90, 0.97, 1.0],
        [2.00, 2.18, 2.24, 2.62, 2.72, 2.96, 3.02, 3.08, 3.13, 3.36, 3.43, 3.58, 3.65, 3.80],
    ),
    # Li-rich Li1.2Ni0.13Mn0.54Co0.13O2 first charge: sloping TM region to ~4.45 V, then the
    # long 4.5 V plateau where lattice oxygen is oxidised. Hand-tabulated, not a fit.
    "lirich": _table(
        [0.0, 0.05, 0.20, 0.38, 0.45, 0.60, 0.85, 0.97, 1.0],
        [3.60, 3.72, 3.95, 4.30, 4.45, 4.49, 4.52, 4.58, 4.70],
    ),
}

PRESETS: dict[str, CellPreset] = {
    p.name: p
    for p in (
        CellPreset(
            name="peo-nmc",
            chemistry="nmc111",
            description="NMC111 | PEO-LiTFSI | Li at 60 C",
            # ~1 cm2 pellet, ~3 mg/cm2 NMC111 at ~150 mAh/g.
            capacity_mAh=0.45,
            # PEO-LiTFSI at 60 C conducts ~1e-4 S/cm: a 50 um film over 1 cm2 is ~50 ohm;
            # both interfaces bring it to ~150 ohm, far above a liquid cell.
            r0_ohm=150.0,
            r1_ohm=120.0,
            tau1_s=15.0,  # charge transfer at the polymer interfaces
            r2_ohm=250.0,
            tau2_s=900.0,  # solid-state diffusion, slow in a polymer cell
            v_min=2.8,
            v_max=4.4,
        ),
        CellPreset(
            name="peo-lfp",
            chemistry="lfp",
            description="LiFePO4 | PEO-LiTFSI | Li at 60 C",
            capacity_mAh=0.40,
            r0_ohm=180.0,
            r1_ohm=150.0,
            tau1_s=20.0,
            # The two-phase LFP relaxes slowly (~10 min, docs/decisions/0009): a long RC.
            r2_ohm=300.0,
            tau2_s=600.0,
            v_min=2.5,
            v_max=4.0,
        ),
        CellPreset(
            name="lnmo-liquid",
            chemistry="lnmo",
            description="LiNi0.5Mn1.5O4 | LiPF6 EC/DMC | Li, sealed cell with Si3N4 window",
            capacity_mAh=0.30,
            # Liquid electrolyte: an order of magnitude below the polymer cells.
            r0_ohm=15.0,
            r1_ohm=20.0,
            tau1_s=5.0,
            r2_ohm=30.0,
            tau2_s=120.0,
            v_min=3.0,
            v_max=5.0,
        ),
        CellPreset(
            name="na-mno2",
            chemistry="na044mno2",
            description="Na0.44MnO2 | NaClO4 PC | Na",
            capacity_mAh=0.25,
            r0_ohm=25.0,
            r1_ohm=40.0,
            tau1_s=8.0,
            r2_ohm=60.0,
            tau2_s=300.0,
            v_min=1.9,
            v_max=3.9,
            initial_soc=0.5,  # as made, Na0.44 sits mid-way: first charge and discharge both go
        ),
        CellPreset(
            name="lirich",
            chemistry="lirich",
            description="Li1.2Ni0.13Mn0.54Co0.13O2 | LiPF6 | Li, first charge (RIXS of O)",
            capacity_mAh=0.35,
            r0_ohm=20.0,
            r1_ohm=30.0,
            tau1_s=6.0,
            r2_ohm=60.0,
            tau2_s=200.0,
            v_min=2.0,
            v_max=4.8,
        ),
    )
}


@dataclass(slots=True)
class CellState:
    soc: float
    v1: float = 0.0  # RC pair voltages, V
    v2: float = 0.0


class Cell:
    """The cell the potentiostat drives: stepped by constant current or constant voltage."""

    def __init__(self, preset: CellPreset, soc: float | None = None) -> None:
        self.p = preset
        self.state = CellState(preset.initial_soc if soc is None else soc)

    def voltage(self, i_mA: float) -> float:
        s = self.state
        return float(self.p.ocv(s.soc)) + i_mA * 1e-3 * self.p.r0_ohm + s.v1 + s.v2

    def step_current(self, i_mA: float, dt: float) -> float:
        """Apply ``i_mA`` for ``dt`` s; return the terminal voltage at the end of the step."""
        p, s = self.p, self.state
        i_a = i_mA * 1e-3
        e1, e2 = math.exp(-dt / p.tau1_s), math.exp(-dt / p.tau2_s)
        s.v1 = s.v1 * e1 + i_a * p.r1_ohm * (1 - e1)
        s.v2 = s.v2 * e2 + i_a * p.r2_ohm * (1 - e2)
        s.soc += i_mA * dt / 3600.0 / p.capacity_mAh
        return self.voltage(i_mA)

    def current_for_voltage(self, v_target: float, dt: float) -> float:
        """The constant current over the next ``dt`` that ends the step at ``v_target``."""
        p, s = self.p, self.state
        e1, e2 = math.exp(-dt / p.tau1_s), math.exp(-dt / p.tau2_s)
        ocv = float(p.ocv(s.soc))
        d_soc = 1e-4
        slope = (float(p.ocv(s.soc + d_soc)) - float(p.ocv(s.soc - d_soc))) / (2 * d_soc)
        # V(I) = OCV + slope*I*dt/(3600 C) + I R0 + v1 e1 + I R1 (1-e1) + v2 e2 + I R2 (1-e2)
        r_eff = (p.r0_ohm + p.r1_ohm * (1 - e1) + p.r2_ohm * (1 - e2)) * 1e-3  # V per mA
        r_eff += slope * dt / 3600.0 / p.capacity_mAh
        return (v_target - ocv - s.v1 * e1 - s.v2 * e2) / r_eff

    def step_voltage(self, v_target: float, dt: float) -> tuple[float, float]:
        """Hold ``v_target`` for ``dt``; return (current mA, voltage V) at the end."""
        i = self.current_for_voltage(v_target, dt)
        return i, self.step_current(i, dt)
