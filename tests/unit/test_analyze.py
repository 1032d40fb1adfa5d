"""The live analyzer as the monitor drives it (no sockets): what it stores and publishes."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from operando.drivers.sim.spectra import (
    EDGES,
    Realism,
    export_references,
    references,
    synthesize_xas,
)

from operando.align import Alignment, PotentiostatHistory, align_windows
from operando.analysis.lcf import FitResult
from operando.analysis.relaxation import fit_relaxation
from operando.analysis.rest import RestCriterion, rest_voltage
from operando.analysis.signal import poisson_sigma
from operando.analyze import Analyzer, SpectrumInput
from operando.config import AnalysisConfig
from operando.doseledger import DoseLedger
from operando.protocol import MODE_CC, MODE_OCV
from operando.store.rows import OPS


def alignment(t: float, soc: float) -> Alignment:
    return Alignment(
        t_start=t,
        t_end=t + 100,
        ewe_mean_V=3.0,
        ewe_min_V=3.0,
        ewe_max_V=3.0,
        i_mean_mA=0.1,
        charge_mAh=0.0,
        q_mAh=0.0,
        soc=soc,
        soc_start=soc,
        soc_end=soc,
        mode=MODE_CC,
        step=0,
        cycle=0,
        mode_changed=False,
        t_since_current_change_s=t,
        n_rows=100,
        coverage=1.0,
        partial=False,
    )


def collect(out: list):
    """A store's ``put``, keeping (op, row) pairs."""
    return lambda row: out.append((OPS[type(row)][0], row))


def run(cfg: AnalysisConfig, tmp_path, n: int = 9):
    """n scans through the ledger (as on arrival), then the analyzer (as once aligned)."""
    out: dict[str, list] = {"submit": [], "event": [], "publish": []}

    def submit(row):
        out["submit"].append((OPS[type(row)][0], row))

    def event(kind, *a, **kw):
        out["event"].append((kind, kw))

    an = Analyzer(cfg, tmp_path, submit, event, lambda t, body: out["publish"].append((t, body)))
    ledger = DoseLedger(cfg, submit, event)
    rng = np.random.default_rng(0)
    ed = EDGES["Mn-L"]
    e = ed.axis()
    r = references("Mn-L", e)
    mat = np.column_stack([r[v] for v in ed.names])
    for k in range(n):
        f = np.array([0.1, 0.8 - 0.08 * k, 0.1 + 0.08 * k])
        frac = np.tile(f, (len(e), 1))
        ch = synthesize_xas(e, np.zeros(len(e)), mat, frac, frac, Realism(), rng)
        s = SpectrumInput(
            spectrum_id=k + 1,
            kind="xas_scan",
            edge="Mn-L",
            spot="A1",
            flux_ph_s=1e10,
            exposure_s=105.0,
            extra={"sample_formula": "MnO2", "sample_density_g_cm3": 5.0, "spot_area_mm2": 0.1},
        )
        s.dose_before_Gy, s.dose_after_Gy = ledger.count(s, e)
        an.on_spectrum(s, {"energy": e, **ch}, alignment(100.0 * k, 0.1 * k))
    return an, out


def test_without_references_the_series_is_decomposed(tmp_path):
    _an, out = run(AnalysisConfig(), tmp_path)
    kinds = [k for k, _ in out["event"]]
    assert kinds.count("analysis_skipped") == 1
    series = [row for op, row in out["submit"] if op == "series"]
    assert series and series[-1][0] == "Mn-L" and series[-1][2] == 9
    assert series[-1][3] >= 2  # two independent changes (Mn3+ -> Mn4+ over the series)
    assert "rotation" in json.loads(series[-1].doc)["warning"]
    assert ("series", {"edge": "Mn-L", "channel": "TEY"}) in out["publish"]  # a notice only
    doses = [row for op, row in out["submit"] if op == "dose"]
    assert len(doses) == 9 and doses[-1][4] > doses[0][4] > 0


def test_with_references_each_channel_is_fitted(tmp_path):
    refs = export_references("Mn-L", tmp_path / "mn.csv")
    _an, out = run(
        AnalysisConfig(references={"Mn-L": str(refs)}, dose_budget_Gy=5e6), tmp_path, n=4
    )
    fits = [row for op, row in out["submit"] if op == "analysis"]
    assert [(r[0], r[1]) for r in fits] == [(k, c) for k in (1, 2, 3, 4) for c in ("TEY", "TFY")]
    assert {r[2] for r in fits} == {"linear", "self_absorption"}
    kinds = [k for k, _ in out["event"]]
    assert "dose_budget_warning" in kinds or "dose_budget_exceeded" in kinds


def test_poisson_sigma_only_for_counts():
    assert poisson_sigma(np.array([100.0, 400.0]), np.array([1e4, 1e4])) is not None
    assert poisson_sigma(np.array([1.5e-9, 2e-9]), np.array([1e-6, 1e-6])) is None


def valence(v: float) -> FitResult:
    """A channel's fit result that says only its average valence."""
    return FitResult(
        fractions={},
        uncertainties={},
        average_valence=float(v),
        valence_uncertainty=0.002,
        shift_eV=0.0,
        chi2_red=1.0,
        scale=1.0,
        background=(0.0, 0.0),
        tilt=0.0,
        fit_range=(0.0, 1.0),
        n_points=100,
    )


def resting(stop: float, since: float) -> Alignment:
    """A one-second scan ``since`` seconds into a rest that began at ``stop``."""
    al = msgspec.structs.replace(alignment(stop + since - 0.5, 0.5), mode=MODE_OCV, i_mean_mA=0.0)
    return msgspec.structs.replace(al, t_end=al.t_start + 1.0, t_since_current_change_s=since)


def test_a_rest_is_refitted_as_it_grows_and_its_last_fit_sees_every_point(tmp_path):
    """Relaxation fits follow the rest geometrically, not every scan; when the rest ends the
    last fit takes every point, and finds the tau the valence relaxes with."""
    out: list = []
    an = Analyzer(
        AnalysisConfig(),
        tmp_path,
        lambda row: out.append((OPS[type(row)][0], row)),
        print,
        lambda *a: None,
    )
    tau, n_scans, period = 600.0, 60, 60.0
    rng = np.random.default_rng(1)
    for k in range(n_scans):
        since = 30.0 + k * period
        v = 3.3 + 0.2 * np.exp(-since / tau) + rng.normal(0, 0.002)
        an._relaxation({"TFY": valence(v)}, resting(1000.0, since), None)
    live = [row for op, row in out if op == "relaxation"]
    assert 3 <= len(live) < n_scans / 3, len(live)  # geometric, not one per scan
    assert live[-1][7] < n_scans  # the newest points not yet fitted while the rest goes on
    an.finish()  # the run ends during the rest
    last = [row for op, row in out if op == "relaxation"][-1]
    assert last[7] == n_scans and last[4] == pytest.approx(tau, rel=0.1)


def test_the_rest_voltage_stops_where_the_next_current_step_starts():
    """The last spectrum of a rest is counted at rest by its middle, but its window runs into
    the discharge that follows: those rows are not relaxation. Seen in the lnmo-surface demo:
    they pulled the rest's last Ewe fit to a straight line (tau 183,600 +- 27,848,649 s)."""
    t = np.arange(0.0, 3000.0)
    rest = (t >= 1000) & (t < 2800)
    ewe = np.where(t < 1000, 4.5 + 3e-4 * t, 4.88 + 0.012 * np.exp(-(t - 1000) / 120.0))
    ewe = np.where(t >= 2800, 4.88 - 1e-3 * (t - 2800), ewe)
    ewe += np.random.default_rng(3).normal(0, 1e-4, t.size)  # 0.1 mV of noise
    history = PotentiostatHistory()
    history.extend(
        t,
        ewe,
        np.where(rest, 0.0, np.where(t < 1000, 0.3, -0.3)),
        np.where(rest, MODE_OCV, MODE_CC).astype(np.int8),
        np.where(t < 1000, 0, np.where(rest, 1, 2)).astype(np.int32),
        np.zeros(t.size, np.int32),
    )
    rec = history.record()
    (al,) = align_windows(rec, [2700.0], [2860.0], capacity_mAh=None)  # middle at 2780: rest
    since, volts = rest_voltage(rec, al, RestCriterion(current_mA=0.01))
    assert since[0] == 0.0 and since[-1] == 1799.0  # the rest's rows, none of the discharge's
    assert fit_relaxation(since, volts).tau_s == pytest.approx(120.0, rel=0.05)


def test_each_edge_relaxes_on_its_own_and_the_voltage_without_waiting_for_scans(tmp_path):
    """Two edges measured in turn during a rest are two series (their valences mixed made
    one meaningless curve), and the cell voltage is fitted from its own rows even when the
    rest is too short for five scans of any edge (the peo-nmc demo's 10 min rest had none)."""
    out: list = []
    an = Analyzer(
        AnalysisConfig(),
        tmp_path,
        lambda row: out.append((OPS[type(row)][0], row)),
        print,
        lambda *a: None,
    )
    rows = np.arange(0.0, 300.0)
    an._relaxation({"TEY": valence(3.7)}, resting(1000.0, 299.0), (rows, 4 + np.exp(-rows / 60)))
    assert [row[1] for op, row in out if op == "relaxation"] == ["Ewe"]
    tau = 600.0
    for k in range(20):
        since = 300.0 + 60.0 * k
        edge, v = ("Mn-L", 3.7 + 0.1 * np.exp(-since / tau))
        if k % 2:
            edge, v = ("Ni-L", 2.5 - 0.2 * np.exp(-since / tau))
        an._relaxation({"TEY": valence(v)}, resting(1000.0, since), None, edge)
    an.finish()
    last = {row[1]: row for op, row in out if op == "relaxation"}
    assert set(last) == {"Ewe", "Mn-L TEY", "Ni-L TEY"}
    for series, y_inf in (("Mn-L TEY", 3.7), ("Ni-L TEY", 2.5)):
        result = msgspec.json.decode(last[series][8])
        best = next(f for f in result["fits"] if f["model"] == result["best"])
        assert last[series][7] == 10 and best["params"]["y_inf"] == pytest.approx(y_inf, abs=0.01)
