"""A scan's I0-normalised signal and its counting noise: what every fit and test starts from.

The live analysis, ``operando fit``, the damage tests, the NeXus export and the dashboard all
take a channel's signal from here, so a point left out of one (I0 = 0, a damaged value) is
left out of all.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# A normalised point this large (a damaged value, or I0 near 0) is unusable: NaN, which the
# fits and damage tests leave out (squared, such a value overflowed their chi-square).
MAX_SIGNAL = 1e15


def signal(
    arrays: Mapping[str, np.ndarray], channel: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(channel / I0, the raw channel, I0 or None): the I0-normalised signal of a scan."""
    raw = np.asarray(arrays[channel], float)
    i0 = np.asarray(arrays["I0"], float) if "I0" in arrays else None
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = raw / i0 if i0 is not None else raw
        y = np.where(np.abs(y) < MAX_SIGNAL, y, np.nan)
    return y, raw, i0


def poisson_sigma(signal: np.ndarray, i0: np.ndarray | None) -> np.ndarray | None:
    """Counting noise of signal/I0 when the signal is counts (non-negative integers), else
    None. An I0 in counts adds its own; an I0 that is not counts (a monitor current, arbitrary
    units) is taken as exact: a monitor is far quieter than the signal it normalises, and
    the fit's chi2_red against this noise shows when that is not so."""

    def counts(a: np.ndarray) -> bool:
        finite = a[np.isfinite(a)]
        return bool(len(finite) and np.all(finite >= 0) and np.all(finite == np.round(finite)))

    if not counts(signal):
        return None
    s = np.maximum(signal, 1.0)
    if i0 is None:
        return np.sqrt(s)
    i = np.where(i0 > 0, i0, np.nan)
    if not counts(i0):
        return np.sqrt(s) / i
    i = np.maximum(i, 1.0)
    return (s / i) * np.sqrt(1.0 / s + 1.0 / i)
