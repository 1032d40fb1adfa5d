"""RIXS reductions of a map or of each arriving row: ROI sums, PFY / iPFY, emission cuts.

A map is counts[excitation, emission]. The default ROI is the oxidised-oxygen feature of
Li-rich cathodes at the O K-edge (excitation 530.6-531.4 eV, emission 523.0-524.4 eV), with a
reference ROI on the main O 2p band to normalise it.
"""

from __future__ import annotations

import msgspec
import numpy as np


class ROI(msgspec.Struct, frozen=True):
    excitation: tuple[float, float]
    emission: tuple[float, float]


OXO_ROI = ROI((530.6, 531.4), (523.0, 524.4))
REFERENCE_ROI = ROI((532.5, 536.0), (525.5, 527.5))


class MapReduction(msgspec.Struct):
    roi: float
    reference: float
    ratio: float
    pfy: list[float]  # per excitation: counts summed over the emission window
    ipfy: list[float]  # per excitation: 1 / (non-resonant emission window)
    cuts: dict[str, list[float]]  # emission spectra at chosen excitation energies
    rows: int


def _mask(axis: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    return (axis >= window[0]) & (axis <= window[1])


def roi_sum(excitation: np.ndarray, emission: np.ndarray, counts: np.ndarray, roi: ROI) -> float:
    ex, em = _mask(excitation, roi.excitation), _mask(emission, roi.emission)
    return float(counts[np.ix_(ex, em)].sum())


def reduce_map(
    excitation: np.ndarray,
    emission: np.ndarray,
    counts: np.ndarray,
    *,
    roi: ROI = OXO_ROI,
    reference: ROI = REFERENCE_ROI,
    pfy_window: tuple[float, float] = (520.0, 530.0),
    ipfy_window: tuple[float, float] = (515.0, 519.0),
    cuts_at: tuple[float, ...] = (531.0,),
) -> MapReduction:
    ex, em = np.asarray(excitation, float), np.asarray(emission, float)
    c = np.asarray(counts, float)
    r, ref = roi_sum(ex, em, c, roi), roi_sum(ex, em, c, reference)
    pfy = c[:, _mask(em, pfy_window)].sum(axis=1)
    non_res = c[:, _mask(em, ipfy_window)].sum(axis=1)
    ipfy = np.where(non_res > 0, 1.0 / np.maximum(non_res, 1e-300), np.nan)
    cuts = {}
    for e in cuts_at:
        j = int(np.argmin(np.abs(ex - e)))
        if abs(ex[j] - e) <= 0.5:
            cuts[f"{e:g}"] = c[j].tolist()
    return MapReduction(
        r, ref, r / ref if ref > 0 else float("nan"), pfy.tolist(), ipfy.tolist(), cuts, len(ex)
    )


class MapAccumulator:
    """Assembles a RIXS map from rows as they arrive (rows keyed by their offset).

    ``rows_total`` 0 means the map's size is not known (rows from files as they appear): the
    map then grows with its rows and is never 'complete'.
    """

    def __init__(self, rows_total: int, emission: np.ndarray) -> None:
        self.emission = np.asarray(emission, float)
        self.rows_total = rows_total
        self.excitation = np.full(rows_total, np.nan)
        self.counts = np.zeros((rows_total, len(self.emission)))
        self.filled = np.zeros(rows_total, dtype=bool)

    def add(
        self, row_offset: int, excitation: np.ndarray, counts: np.ndarray, emission: np.ndarray
    ) -> None:
        n = len(excitation)
        rows = f"rows {row_offset}..{row_offset + n - 1}"
        if len(emission) != len(self.emission):
            raise ValueError(
                f"{rows}: emission axis of {len(emission)} points, the map's has "
                f"{len(self.emission)}"
            )
        if not np.allclose(emission, self.emission):
            k = int(np.argmax(~np.isclose(emission, self.emission)))
            raise ValueError(
                f"{rows}: emission axis differs from the map's at point {k}: "
                f"{emission[k]:g} eV, the map's {self.emission[k]:g} eV"
            )
        end = row_offset + n
        if row_offset < 0 or (self.rows_total and end > self.rows_total):
            raise ValueError(
                f"rows {row_offset}..{end - 1} outside a map of {len(self.filled)} rows"
            )
        if end > len(self.filled):  # a map of unknown size grows
            grow = end - len(self.filled)
            self.excitation = np.concatenate([self.excitation, np.full(grow, np.nan)])
            self.counts = np.vstack([self.counts, np.zeros((grow, len(self.emission)))])
            self.filled = np.concatenate([self.filled, np.zeros(grow, dtype=bool)])
        self.excitation[row_offset : row_offset + n] = excitation
        self.counts[row_offset : row_offset + n] = counts
        self.filled[row_offset : row_offset + n] = True

    @property
    def complete(self) -> bool:
        return bool(self.rows_total and self.filled.all())

    def reduce(self, **kw: object) -> MapReduction:
        f = self.filled
        return reduce_map(self.excitation[f], self.emission, self.counts[f], **kw)  # type: ignore[arg-type]
