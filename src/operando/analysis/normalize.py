"""Classic XAS normalisation (Larch's conventions) with soft X-ray L-edge defaults.

e0 is the energy of the maximum derivative; the pre-edge line is fitted over a window below
e0 and subtracted; the edge step is the post-edge level (fitted above L2) minus the pre-edge
line at e0. Used for display, waterfalls and series analysis; valence fractions come from the
robust fit in ``lcf`` instead, because a short pre-edge extrapolated over 30 eV amplifies noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class NormalizationError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class EdgeWindows:
    """Absolute energy windows (eV). L-edge e0 moves by ~3 eV with valence, so windows tied to
    e0 would slide into the multiplet; the pre-edge ends before any valence's onset and the
    post-edge lies above L2."""

    pre: tuple[float, float]
    post: tuple[float, float]
    e0_search: tuple[float, float]  # where the edge may be
    fit_range: tuple[float, float]  # default LCF range (L3 for L-edges)


EDGE_WINDOWS = {
    "Mn-L": EdgeWindows(
        pre=(630.0, 636.0), post=(658.0, 665.0), e0_search=(636.0, 646.0), fit_range=(637.0, 647.0)
    ),
    "Fe-L": EdgeWindows(
        pre=(700.0, 705.0), post=(727.0, 735.0), e0_search=(704.0, 713.0), fit_range=(705.0, 714.0)
    ),
    "Co-L": EdgeWindows(
        pre=(768.0, 774.0), post=(803.0, 810.0), e0_search=(775.0, 783.0), fit_range=(776.0, 786.0)
    ),
    "Ni-L": EdgeWindows(
        pre=(845.0, 849.5), post=(875.0, 880.0), e0_search=(850.0, 858.0), fit_range=(850.5, 858.5)
    ),
    "O-K": EdgeWindows(
        pre=(520.0, 526.5), post=(545.0, 555.0), e0_search=(527.0, 535.0), fit_range=(527.0, 540.0)
    ),
}


@dataclass(frozen=True, slots=True)
class Normalized:
    energy: np.ndarray
    mu: np.ndarray  # normalised: pre-edge 0, edge step 1
    e0: float
    edge_step: float
    pre_line: tuple[float, float]  # slope, intercept


def find_e0(energy: np.ndarray, mu: np.ndarray, search: tuple[float, float] | None = None) -> float:
    """Energy of the maximum of d mu / dE (Larch's e0), within ``search`` if given."""
    d = np.gradient(np.asarray(mu, float), np.asarray(energy, float))
    m = (
        np.ones_like(energy, dtype=bool)
        if search is None
        else ((energy >= search[0]) & (energy <= search[1]))
    )
    if not m.any():
        raise NormalizationError(
            f"e0 search window {search} eV lies outside the scan "
            f"({energy.min():.1f}-{energy.max():.1f} eV)"
        )
    i = np.flatnonzero(m)[np.argmax(d[m])]
    return float(energy[i])


def normalize(
    energy: np.ndarray, mu: np.ndarray, edge: str | EdgeWindows, e0: float | None = None
) -> Normalized:
    """Pre-edge line subtracted, divided by the edge step; windows checked against the scan."""
    w = EDGE_WINDOWS[edge] if isinstance(edge, str) else edge
    e, y = np.asarray(energy, float), np.asarray(mu, float)
    e0 = find_e0(e, y, w.e0_search) if e0 is None else e0
    pre = (e >= w.pre[0]) & (e <= w.pre[1])
    post = (e >= w.post[0]) & (e <= w.post[1])
    for name, mask, win in (("pre-edge", pre, w.pre), ("post-edge", post, w.post)):
        if mask.sum() < 3:
            raise NormalizationError(
                f"{name} window {win[0]:.1f}-{win[1]:.1f} eV is outside the scan "
                f"({e.min():.1f}-{e.max():.1f} eV) or holds under 3 points"
            )
    slope, intercept = np.polyfit(e[pre], y[pre], 1)
    flat = y - (slope * e + intercept)
    step = float(np.mean(flat[post]))
    if step <= 0:
        raise NormalizationError(f"edge step {step:.3g} is not positive: no edge at {e0} eV?")
    return Normalized(e, flat / step, e0, step, (float(slope), float(intercept)))
