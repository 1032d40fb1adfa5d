"""The Spectra tab's heatmap cells and titles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from operando.dashboards.spectraplots import heatmap_quads, spectrum_title


def test_heatmap_cells_average_a_repeated_soc_and_reach_halfway_to_their_neighbours():
    soc = np.array([0.1, 0.3, 0.1])
    grid = np.array([640.0, 641.0, 643.0])
    z = np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0], [3.0, np.nan, 5.0]])
    cells = heatmap_quads((soc, grid, z))
    assert len(cells["mu"]) == 2 * 3  # two SOC rows (0.1 twice, averaged), three energies
    np.testing.assert_allclose(cells["mu"][:3], [2.0, 2.0, 4.0])  # NaN left out of the mean
    np.testing.assert_allclose(cells["left"][:3], [639.5, 640.5, 642.0])
    np.testing.assert_allclose(cells["right"][:3], [640.5, 642.0, 644.0])
    np.testing.assert_allclose(cells["bottom"][[0, 3]], [0.0, 0.2])
    np.testing.assert_allclose(cells["top"][[0, 3]], [0.2, 0.4])
    one = heatmap_quads((np.array([0.5]), grid, z[:1]))  # one SOC: a thin row, not nothing
    assert np.all(one["top"] > one["bottom"])


def test_a_spectrum_title_says_what_was_fitted_and_how_well():
    fitted = {"energy": np.arange(3.0), "model": np.ones(3)}
    latest = SimpleNamespace(
        spectrum_id=7, edge="Mn-L", soc=0.4213, channels={"TEY": fitted},
        quality={"TEY": ("check", ("chi2 high",))},
    )  # fmt: skip
    assert spectrum_title(latest, "fit") == "spectrum 7 (Mn-L, SOC 0.421): data and fit - TEY check"
    assert spectrum_title(latest, "residual") == "spectrum 7: residual"
    dark = fitted | {"model": np.full(3, np.nan)}
    unfitted = SimpleNamespace(
        spectrum_id=8, edge="O-K", soc=None, channels={"TEY": dark}, quality={}
    )
    assert spectrum_title(unfitted, "fit") == "spectrum 8 (O-K): data"
    assert spectrum_title(unfitted, "residual") == "spectrum 8: residual (not fitted)"
    assert spectrum_title(None, "fit") == "latest spectrum: none yet"
