"""When the cell is at rest: the one criterion every part of the product uses.

Analysis (relaxation fits, the rest voltage), the damage tests (constant state), the
``rest_time`` trigger and the dashboard's rest shading all ask ``RestCriterion``; before, each
had its own rule (open circuit only, or a current threshold of its own), and a rest shaded on
the dashboard was not the rest the relaxation was fitted over. Its one setting is
``[analysis] rest_current_mA``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

from operando.align import Alignment, CellRecord
from operando.protocol import MODE_OCV


class RestCriterion(msgspec.Struct, frozen=True, kw_only=True):
    """Open circuit, or a current below ``current_mA`` in magnitude."""

    current_mA: float = 0.005

    def __call__(self, mode: Any, i_mA: Any) -> Any:
        """Of one value (a bool) or of arrays of rows (a bool array)."""
        return (np.asarray(mode) == MODE_OCV) | (np.abs(i_mA) < self.current_mA)

    def spectrum(self, al: Alignment) -> bool:
        """A spectrum counts as taken at rest by its window's mean current and mode."""
        return bool(self(al.mode, al.i_mean_mA))

    def periods(
        self, t: np.ndarray, mode: np.ndarray, i_mA: np.ndarray
    ) -> list[tuple[float, float]]:
        """(start, end) of each run of resting rows, in the rows' time."""
        rest = np.asarray(self(mode, i_mA), dtype=np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], rest, [0]])))
        t = np.asarray(t, float)
        return [
            (float(t[a]), float(t[b - 1])) for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]


def rest_voltage(
    rec: CellRecord, al: Alignment, rest: RestCriterion, max_rows: int = 400
) -> tuple[np.ndarray, np.ndarray] | None:
    """(seconds since the current stopped, Ewe) up to the end of this spectrum or of the
    rest, whichever comes first, at most ``max_rows`` rows evenly picked; None unless the
    cell rests.

    A spectrum counts as taken at rest by its window's middle, so the last one of a rest can
    end after the next current step began: its rows are not the relaxation (they made the
    rest's last Ewe fit a straight line through the discharge's first volts)."""
    since = al.t_since_current_change_s
    if not rest.spectrum(al) or not math.isfinite(since):
        return None
    stop = 0.5 * (al.t_start + al.t_end) - since
    rows = np.flatnonzero((rec.t >= stop) & (rec.t <= al.t_end))
    resting = rest(rec.mode[rows], rec.i[rows])
    if not resting.all():
        rows = rows[: int(np.argmin(resting))]  # up to the first row with a current again
    n = len(rows)
    if n < 8:
        return None
    rows = rows[np.linspace(0, n - 1, min(n, max_rows)).astype(int)]
    return rec.t[rows] - stop, rec.ewe[rows].copy()
