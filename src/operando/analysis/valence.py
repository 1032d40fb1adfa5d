"""A scan's channel to its valence fit: the one path the monitor's live analysis and
``operando fit`` both take (``operando.fit_scan``).

Before, ``operando fit`` divided by I0 and chose its fit range its own way: a point the live
analysis left out (I0 = 0, a damaged value) went into the file fit, and a range beyond the
references was not clipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from operando.analysis.lcf import FitResult, fit_spectrum
from operando.analysis.references import References
from operando.analysis.signal import poisson_sigma, signal

# Fluorescence channels: thick-sample saturation bends their spectra, so they are fitted with
# the self-absorption model unless configured otherwise ([analysis] self_absorption).
FLUORESCENCE = ("TFY", "PFY", "FY", "iPFY")


def fit_scan(
    arrays: Mapping[str, np.ndarray],
    channel: str,
    refs: References,
    *,
    fit_range: tuple[float, float] | None = None,
    self_absorption: bool = False,
) -> FitResult:
    """Fit ``arrays[channel]`` (over ``arrays["I0"]`` when there is one) against ``refs``.

    ``fit_range``: eV; default the whole overlap of scan and references (L3 and L2: the
    fitted background needs no pre-edge normalisation, and L2 carries valence too; the L3
    window alone erred up to 0.06 on the multiplet validation sets, the whole edge 0.01).
    Always clipped to what the scan and the references both cover. Raises ``FitError`` or
    ``ValueError`` when the scan cannot be fitted."""
    e = np.asarray(arrays["energy"], float)
    order = np.argsort(e, kind="stable")
    sorted_arrays = {k: np.asarray(v)[order] for k, v in arrays.items() if np.shape(v) == e.shape}
    e = e[order]
    y, raw, i0 = signal(sorted_arrays, channel)
    lo, hi = fit_range if fit_range is not None else (-np.inf, np.inf)
    rng = (max(lo, float(e.min()), refs.energy[0]), min(hi, float(e.max()), refs.energy[-1]))
    return fit_spectrum(
        e,
        y,
        refs,
        fit_range=rng,
        sigma=poisson_sigma(raw, i0),
        self_absorption=self_absorption,
    )
