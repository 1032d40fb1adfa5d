"""Synthetic soft X-ray reference spectra (TM L2,3 edges) and O K-edge RIXS maps. Pure numpy.

Each valence's L3 multiplet is a few Voigt lines (Gaussian resolution x Lorentzian lifetime)
at the positions docs/decisions/0009 gives; L2 repeats it ~11-17 eV higher, weaker and
broader (shorter core-hole lifetime). Edge steps are two arctans with L3:L2 = 2:1,
normalised so the post-edge level is 1 (one absorber). White-line areas scale with the number
of 3d holes (Mn2+ d5: 5, Mn3+: 6, Mn4+: 7), so the references overlap strongly but stay
linearly independent, as real MnO / Mn2O3 / MnO2 references do. These are model line
shapes, not multiplet calculations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from scipy.special import voigt_profile

GAUSS_SIGMA_EV = 0.12  # beamline resolution (~0.28 eV FWHM at 640 eV)


@dataclass(frozen=True, slots=True)
class Valence:
    name: str
    oxidation: int
    holes: int  # 3d holes: white-line area is proportional
    l3_lines: tuple[tuple[float, float, float], ...]  # (energy eV, rel. amplitude, extra sigma)
    edge_eV: float  # L3 edge-step position (arctan centre)


@dataclass(frozen=True, slots=True)
class Edge:
    name: str  # e.g. "Mn-L"
    element: str
    valences: tuple[Valence, ...]
    spin_orbit_eV: float  # L2 - L3
    l2_ratio: float  # L2 white-line amplitude relative to L3
    gamma_l3: float  # Lorentzian HWHM at L3, eV
    gamma_l2: float
    energy_range: tuple[float, float]
    step_eV: float  # scan step
    fit_range: tuple[float, float]  # default LCF range (L3)
    l3_area: float = 6.0  # white-line area of a 5-hole absorber per unit edge step, eV

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.valences)

    def axis(self) -> np.ndarray:
        lo, hi = self.energy_range
        return np.round(np.arange(lo, hi + self.step_eV / 2, self.step_eV), 6)


def _v(name: str, ox: int, holes: int, lines: list[tuple[float, float, float]], edge: float):
    return Valence(name, ox, holes, tuple(lines), edge)


EDGES: dict[str, Edge] = {
    "Mn-L": Edge(
        "Mn-L",
        "Mn",
        (
            # Mn2+ (MnO-like): sharp main line 640.1 eV, pre-peaks 638.6-639.7 eV.
            _v(
                "Mn2+",
                2,
                5,
                [
                    (638.6, 0.10, 0.15),
                    (639.6, 0.32, 0.15),
                    (640.1, 1.00, 0.10),
                    (640.9, 0.28, 0.25),
                    (642.0, 0.12, 0.40),
                    (643.2, 0.05, 0.50),
                ],
                640.3,
            ),
            # Mn3+ (Mn2O3-like): broad 641.8 eV with shoulders at 640.5 and 643.0 eV.
            _v(
                "Mn3+",
                3,
                6,
                [
                    (640.5, 0.35, 0.30),
                    (641.8, 0.90, 0.35),
                    (643.0, 0.55, 0.40),
                    (644.3, 0.15, 0.50),
                ],
                641.5,
            ),
            # Mn4+ (Li2MnO3/MnO2-like): main 643.4 eV, weak structure at 641.0-642.0 eV.
            _v(
                "Mn4+",
                4,
                7,
                [
                    (641.0, 0.18, 0.30),
                    (642.1, 0.30, 0.35),
                    (643.4, 1.00, 0.30),
                    (644.7, 0.28, 0.45),
                ],
                642.5,
            ),
        ),
        spin_orbit_eV=11.0,
        l2_ratio=0.40,
        gamma_l3=0.17,
        gamma_l2=0.40,
        energy_range=(630.0, 665.0),
        step_eV=0.1,
        fit_range=(637.0, 647.0),
    ),
    "Fe-L": Edge(
        "Fe-L",
        "Fe",
        (
            # Fe2+ (LiFePO4): main 707.9 eV, weaker 709.7 eV.
            _v(
                "Fe2+",
                2,
                4,
                [
                    (706.9, 0.12, 0.20),
                    (707.9, 1.00, 0.15),
                    (708.7, 0.35, 0.25),
                    (709.7, 0.30, 0.35),
                    (710.6, 0.12, 0.45),
                ],
                708.2,
            ),
            # Fe3+ (FePO4): pre-peak 708.3 eV, main 709.9 eV.
            _v(
                "Fe3+", 3, 5, [(708.3, 0.38, 0.20), (709.9, 1.00, 0.25), (711.0, 0.25, 0.45)], 709.3
            ),
        ),
        spin_orbit_eV=12.9,
        l2_ratio=0.40,
        gamma_l3=0.20,
        gamma_l2=0.45,
        energy_range=(700.0, 735.0),
        step_eV=0.1,
        fit_range=(705.0, 714.0),
    ),
    "Ni-L": Edge(
        "Ni-L",
        "Ni",
        (
            # Ni2+ (NiO): main 853.0 eV, satellite 854.9 eV.
            _v("Ni2+", 2, 2, [(853.0, 1.00, 0.15), (854.9, 0.32, 0.30)], 853.3),
            # Ni3+: weight moves to the high-energy line near 855.0 eV.
            _v("Ni3+", 3, 3, [(853.4, 0.45, 0.20), (855.0, 1.00, 0.30)], 854.0),
            # Ni4+: main 855.6 eV.
            _v("Ni4+", 4, 4, [(853.8, 0.18, 0.25), (855.6, 1.00, 0.30)], 854.6),
        ),
        spin_orbit_eV=17.3,
        l2_ratio=0.35,
        gamma_l3=0.20,
        gamma_l2=0.50,
        energy_range=(845.0, 880.0),
        step_eV=0.1,
        fit_range=(850.5, 858.5),
        l3_area=3.0,
    ),
}


def _multiplet(e: np.ndarray, v: Valence, edge: Edge, shift: float, gamma: float, scale: float):
    lines = np.zeros_like(e)
    for pos, amp, sig in v.l3_lines:
        sigma = float(np.hypot(GAUSS_SIGMA_EV, sig))
        lines += amp * voigt_profile(e - (pos + shift), sigma, gamma)
    return lines * scale


def reference(edge: Edge, valence: Valence, energy: np.ndarray) -> np.ndarray:
    """Normalised absorption (post-edge level 1) of one valence on the energy axis."""
    e = np.asarray(energy, dtype=np.float64)
    # Each Voigt line has unit area, so the multiplet's area is the sum of its amplitudes;
    # scale it to l3_area * holes / 5 per edge step (white-line sum rule).
    unit = _multiplet(e, valence, edge, 0.0, edge.gamma_l3, 1.0)
    scale = edge.l3_area * valence.holes / 5.0 / sum(amp for _, amp, _ in valence.l3_lines)
    l3 = unit * scale
    l2 = _multiplet(e, valence, edge, edge.spin_orbit_eV, edge.gamma_l2, scale * edge.l2_ratio)
    width = 0.4
    step = (2 / 3) * (0.5 + np.arctan((e - valence.edge_eV) / width) / np.pi)
    step += (1 / 3) * (0.5 + np.arctan((e - valence.edge_eV - edge.spin_orbit_eV) / width) / np.pi)
    return l3 + l2 + step


def references(edge: str | Edge, energy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All valence references of an edge (name -> mu(E)), on ``energy`` or the edge's axis."""
    ed = EDGES[edge] if isinstance(edge, str) else edge
    e = ed.axis() if energy is None else np.asarray(energy, dtype=np.float64)
    return {v.name: reference(ed, v, e) for v in ed.valences}


def export_references(edge: str, path: str | Path, energy: np.ndarray | None = None) -> Path:
    """Write the references as CSV (``energy_eV`` then one column per valence) for analysis."""
    ed = EDGES[edge]
    e = ed.axis() if energy is None else np.asarray(energy)
    refs = references(ed, e)
    path = Path(path)
    header = ",".join(["energy_eV", *refs])
    np.savetxt(
        path,
        np.column_stack([e, *refs.values()]),
        delimiter=",",
        header=header,
        comments="",
        fmt="%.6f",
    )
    return path


class Realism(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What makes a simulated scan look measured; each switchable so tests can isolate it."""

    noise: bool = True
    counts_at_edge_step: float = 1e4  # ~1 % counting noise on the post-edge level
    i0_drift: float = 0.03  # +-3 % linear drift of the I0 monitor across a scan
    background_slope: bool = True
    energy_drift_eV_per_h: float = 0.05
    self_absorption_mu_bg: float = 24.0  # TFY saturation; 0 switches self-absorption off
    damage: bool = True
    # beam lost (a ring dump, a closed shutter) from..to, in seconds since the experiment began:
    # no photons on the sample, the I0 monitor and the detectors read dark counts
    beam_losses: list[tuple[float, float]] = msgspec.field(default_factory=list)


def beam_on(realism: Realism, t_exp: np.ndarray) -> np.ndarray:
    """1.0 where the beam reaches the sample at ``t_exp`` (experiment seconds), 0.0 where it
    is lost: what scales the counts and the dose."""
    on = np.ones(len(t_exp))
    for start, end in realism.beam_losses:
        on[(t_exp >= start) & (t_exp < end)] = 0.0
    return on


def synthesize_xas(
    energy: np.ndarray,
    point_t: np.ndarray,
    ref_matrix: np.ndarray,
    f_surface: np.ndarray,
    f_bulk: np.ndarray,
    realism: Realism,
    rng: np.random.Generator,
    on: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """I0, TEY and TFY counts of one scan from per-point valence fractions (n, k).

    TEY ~ beam x (surface absorption + a sloped background); TFY ~ beam x (self-absorbed bulk
    absorption + background); the I0 monitor drifts by +-``i0_drift`` across the scan in a way
    the sample signals do not (so I0 division leaves a tilt); Poisson counting noise.
    """
    r = realism
    mu_s = np.sum(f_surface * ref_matrix, axis=1)
    mu_b = np.sum(f_bulk * ref_matrix, axis=1)
    tfy_mu = self_absorb(mu_b, r.self_absorption_mu_bg) if r.self_absorption_mu_bg else mu_b
    x = (energy - energy[0]) / (energy[-1] - energy[0])
    bg_tey = (0.25 + 0.35 * x) if r.background_slope else 0.25
    bg_tfy = (0.10 - 0.06 * x) if r.background_slope else 0.10
    beam = 1.0 + 0.01 * np.sin(2 * np.pi * point_t / 1800.0)  # slow source variation
    if on is not None:
        beam = beam * on
    scale = r.counts_at_edge_step
    i0 = 10.0 * scale * beam * (1.0 + r.i0_drift * (2 * x - 1))
    tey = scale * beam * (mu_s + bg_tey)
    tfy = 0.5 * scale * beam * (tfy_mu + bg_tfy)
    if r.noise:
        i0, tey, tfy = (rng.poisson(np.maximum(c, 0)).astype(np.float64) for c in (i0, tey, tfy))
    return {"I0": i0, "TEY": tey, "TFY": tfy}


def self_absorb(mu: np.ndarray, mu_bg: float) -> np.ndarray:
    """Fluorescence yield of a thick, concentrated sample: I ~ mu / (mu + mu_bg).

    ``mu_bg`` is the absorption of everything else (matrix, and the emitted photons' escape)
    in units of the edge step; the factor (1 + mu_bg) keeps the post-edge level at 1, so the
    strong white line is compressed by mu_bg / (mu_peak + mu_bg) relative to the edge step.
    """
    return mu * (1.0 + mu_bg) / (np.maximum(mu, 0.0) + mu_bg)


# -- O K-edge RIXS ---------------------------------------------------------------------------
OXO_EXCITATION_EV = 531.0
OXO_EMISSION_EV = 523.7


def rixs_axes() -> tuple[np.ndarray, np.ndarray]:
    excitation = np.round(np.arange(525.0, 540.0 + 1e-9, 0.25), 4)
    emission = np.round(np.arange(515.0, 535.0 + 1e-9, 0.05), 4)
    return excitation, emission


def _g(x: np.ndarray | float, c: float, s: float) -> np.ndarray:
    return np.exp(-0.5 * ((np.asarray(x) - c) / s) ** 2)


def rixs_map(excitation: np.ndarray, emission: np.ndarray, oxo: float) -> np.ndarray:
    """Expected O K RIXS intensity (rows: excitation, columns: emission), arbitrary units.

    O 2p fluorescence band (emission 522-528 eV) weighted by absorption (TM-O hybridised
    pre-edge 529.5 eV, main edge above 532 eV), an elastic line, and the oxidised-oxygen
    feature at excitation 531.0 / emission 523.7 eV with strength ``oxo`` (0 .. 1).
    """
    ex = np.asarray(excitation, dtype=np.float64)[:, None]
    em = np.asarray(emission, dtype=np.float64)[None, :]
    absorption = 0.8 * _g(ex, 529.5, 0.45) + 1.0 * (0.5 + np.arctan((ex - 533.0) / 0.8) / np.pi)
    band = 0.7 * _g(em, 524.6, 1.2) + 1.0 * _g(em, 526.6, 0.9)
    elastic = 0.25 * _g(em - ex, 0.0, 0.12)
    feature = 1.6 * oxo * _g(ex, OXO_EXCITATION_EV, 0.28) * _g(em, OXO_EMISSION_EV, 0.25)
    return absorption * band + elastic + feature
