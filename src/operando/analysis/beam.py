"""The beam as the I0 monitor saw it: its level per scan and the times it was lost.

A storage-ring dump, a closed shutter or a frozen monochromator shows as I0 collapsing to
(near) zero; the points measured then are dark counts, not absorption, and the operator must
see when it happened and which scans it touched. Top-up steps, the slow decay between
refills and the monitor's drift across a scan change I0 by a few percent; a carbon-contaminated
optic dips I0 by tens of percent at the carbon K edge. So the beam counts as lost only where I0
falls below ``LOST_BELOW`` of its level, well under any of those.

The level is the beam's recent typical I0: the median of the earlier scans' medians, raised to
this scan's own upper I0 (its 90th percentile) when that is higher: a first scan cut by a dump
is judged against its own beam, a scan lost from end to end against the scans before it.
Pure functions, so any reader of a run gets the same answer (the dashboard reads them;
``operando inspect`` does not list the losses yet: docs/decisions/0011).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LOST_BELOW = 0.2  # I0 under 20 % of its level: no beam on the sample


@dataclass(frozen=True, slots=True)
class ScanBeam:
    """One scan's I0: its median and minimum, the level it was judged against, and the
    intervals (source seconds) when the beam was lost: the time the points below the
    threshold were measured, half a point's spacing either side of each run of them."""

    t: float  # the scan's middle (source seconds)
    i0_median: float
    i0_min: float
    level: float
    lost: tuple[tuple[float, float], ...]

    @property
    def lost_s(self) -> float:
        return sum(b - a for a, b in self.lost)


def point_times(t_start: float, t_end: float, n: int, point_t: np.ndarray | None) -> np.ndarray:
    """The time of each point: as recorded, else spread evenly over the scan."""
    if point_t is not None and len(point_t) == n:
        return np.asarray(point_t, float)
    if n == 1:
        return np.array([0.5 * (t_start + t_end)])
    return np.linspace(t_start, t_end, n)


def scan_beam(t: np.ndarray, i0: np.ndarray, earlier_level: float | None) -> ScanBeam | None:
    """The beam of one scan (``t`` and ``i0`` per point); ``earlier_level`` is the median I0 of
    the scans before it (None for the first). None when the scan has no finite I0."""
    t, i0 = np.asarray(t, float), np.asarray(i0, float)
    ok = np.isfinite(i0) & np.isfinite(t)
    if not ok.any():
        return None
    t, i0 = t[ok], i0[ok]
    own = float(np.percentile(i0, 90))
    level = max(own, earlier_level or 0.0)
    lost: list[tuple[float, float]] = []
    if level > 0:
        below = i0 < LOST_BELOW * level
        # runs of consecutive points below the threshold
        edges = np.flatnonzero(np.diff(np.concatenate(([0], below.astype(np.int8), [0]))))
        half = 0.5 * float(np.median(np.diff(t))) if len(t) > 1 else 0.0
        lost = [
            (float(t[a]) - half, float(t[b - 1]) + half)
            for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
    mid = 0.5 * (float(t[0]) + float(t[-1]))
    return ScanBeam(mid, float(np.median(i0)), float(i0.min()), level, tuple(lost))


class BeamHistory:
    """Scans' beams in arrival order. Each is judged against the median I0 of the recent scans
    of its own edge: the monitor's response, and so I0, differs from edge to edge (a gold mesh
    at 640 eV is not one at 850 eV), and the ring current changes over hours."""

    def __init__(self, recent: int = 50) -> None:
        self.scans: list[tuple[int, ScanBeam]] = []  # (spectrum id, its beam)
        self._medians: dict[str, deque[float]] = {}
        self.recent = recent

    def add(self, spectrum_id: int, edge: str, t: np.ndarray, i0: np.ndarray) -> ScanBeam | None:
        medians = self._medians.setdefault(edge, deque(maxlen=self.recent))
        beam = scan_beam(t, i0, float(np.median(medians)) if medians else None)
        if beam is not None:
            self.scans.append((spectrum_id, beam))
            # a scan lost from end to end does not lower the level the next one is judged by
            if beam.i0_median >= LOST_BELOW * beam.level:
                medians.append(beam.i0_median)
        return beam

    def lost(self) -> list[tuple[int, float, float]]:
        """Every interval without beam: (spectrum id, from, to)."""
        return [(sid, a, b) for sid, beam in self.scans for a, b in beam.lost]
