"""Synthetic spectra and the sample truth: what the analysis will be scored against."""

from __future__ import annotations

import numpy as np
import pytest
import xraydb
from operando.drivers.sim.sample import MODELS, lag, photoreduce
from operando.drivers.sim.sim_spectrometer import EV_J, CellView, dose_per_point
from operando.drivers.sim.spectra import EDGES, export_references, references, rixs_axes, rixs_map


@pytest.mark.parametrize("edge", list(EDGES))
def test_references_are_normalised_overlapping_and_independent(edge):
    ed = EDGES[edge]
    e = ed.axis()
    refs = references(edge)
    for mu in refs.values():
        assert mu[:20].max() < 0.05 and abs(mu[-1] - 1.0) < 0.02  # pre-edge 0, post-edge 1
    m = (e >= ed.fit_range[0]) & (e <= ed.fit_range[1])
    a = np.column_stack([mu[m] for mu in refs.values()])
    cond = np.linalg.cond(a)
    assert 1.5 < cond < 50  # overlapping, yet well conditioned
    cos = a.T @ a / np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(a, axis=0))
    assert cos[np.triu_indices(len(refs), 1)].min() > 0.4  # strongly overlapping pairs


def test_mn_peak_positions_follow_design_facts():
    e = np.arange(636, 648, 0.02)
    refs = references("Mn-L", e)
    peaks = {k: e[np.argmax(v)] for k, v in refs.items()}
    assert 640.0 <= peaks["Mn2+"] <= 640.3
    assert 641.5 <= peaks["Mn3+"] <= 642.0
    assert 643.3 <= peaks["Mn4+"] <= 643.6


def test_references_export_and_read_back(tmp_path):
    path = export_references("Mn-L", tmp_path / "mn.csv")
    data = np.genfromtxt(path, delimiter=",", names=True)
    assert data.dtype.names == ("energy_eV", "Mn2", "Mn3", "Mn4")
    np.testing.assert_allclose(data["Mn3"], references("Mn-L")["Mn3+"], atol=1e-6)


def test_bulk_truth_follows_soc_per_chemistry():
    nmc, lnmo, na = MODELS["nmc111"], MODELS["lnmo"], MODELS["na044mno2"]
    assert nmc.bulk("Ni-L", 0.0, 3.6)["Ni2+"] == 1.0
    assert nmc.bulk("Ni-L", 1.0, 4.3)["Ni4+"] == pytest.approx(0.8)
    assert nmc.bulk("Mn-L", 0.5, 3.9)["Mn4+"] == 1.0
    ox = [sum(int(k[2]) * v for k, v in na.bulk("Mn-L", y, 3).items()) for y in (0, 0.5, 1)]
    assert ox == pytest.approx([3.34, 3.56, 3.78])
    assert lnmo.surface("Mn-L", 1.0, 4.9)["Mn2+"] > lnmo.surface("Mn-L", 0.0, 3.5)["Mn2+"] + 0.25
    assert na.surface("Mn-L", 0.0, 2.0)["Mn2+"] > na.surface("Mn-L", 0.0, 3.0)["Mn2+"] + 0.2
    for m in MODELS.values():
        for edge in m.edges:
            for y in (0.0, 0.3, 1.0):
                for f in (m.bulk(edge, y, 3.5), m.surface(edge, y, 3.5)):
                    assert sum(f.values()) == pytest.approx(1.0)
                    assert min(f.values()) >= 0


def test_lfp_bulk_relaxes_after_the_current_stops():
    view = CellView()
    view.start({"capacity_mAh": 1.0, "chemistry": "lfp"}, MODELS["lfp"].bulk_tau_s)
    t = np.arange(0, 1800.0)
    q = np.where(t < 900, t / 3600.0, 0.25)  # 1C for 15 min, then rest
    view.add(t, q, np.full(t.size, 3.4), np.where(t < 900, 1.0, 0.0))
    soc, y, _ = view.at(np.array([899.0, 1500.0]))
    assert soc[0] - y[0] > 0.1  # the phase transformation lags the charge
    tau = MODELS["lfp"].bulk_tau_s
    expected = 0.25 - (soc[0] - y[0]) * np.exp(-(1500 - 899) / tau)
    assert y[1] == pytest.approx(expected, abs=2e-3)
    assert lag(0.0, 1.0, 10.0, 0.0) == 1.0


def test_dose_matches_the_analytic_formula():
    e = np.array([640.0, 645.0])
    d = dose_per_point(1e12, 0.5, e, "LiNi0.5Mn1.5O4", 4.4, 0.01)
    mu = xraydb.material_mu("LiNi0.5Mn1.5O4", e, 4.4) * 100  # 1/m
    expected = 1e12 * 0.5 * e * EV_J * mu / (4400.0 * 0.01e-6)
    np.testing.assert_allclose(d, expected, rtol=1e-12)
    assert 1e5 < d.sum() < 1e7  # MGy-scale per scan is ordinary at this flux (docs/decisions/0008)


def test_photoreduction_only_above_critical_dose():
    f = {"Mn2+": 0.1, "Mn3+": 0.3, "Mn4+": 0.6}
    assert photoreduce(f, "Mn2+", 9e6, 1e7, 1e-7) == f
    g = photoreduce(f, "Mn2+", 2e7, 1e7, 1e-7)
    assert g["Mn2+"] == pytest.approx(0.1 + 0.9 * (1 - np.exp(-1.0)))
    assert sum(g.values()) == pytest.approx(1.0)


def test_rixs_oxidised_oxygen_feature_grows_with_soc():
    ex, em = rixs_axes()
    i_ex, i_em = np.argmin(abs(ex - 531.0)), np.argmin(abs(em - 523.7))
    low = rixs_map(ex, em, MODELS["lirich"].oxo(0.3))
    high = rixs_map(ex, em, MODELS["lirich"].oxo(1.0))
    assert high[i_ex, i_em] > 1.5 * low[i_ex, i_em]
    assert np.allclose(high[:, em < 520], low[:, em < 520])
