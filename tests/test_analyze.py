"""The live analyzer as the monitor drives it (no sockets): what it stores and publishes."""

from __future__ import annotations

import numpy as np
from operando.drivers.spectra import EDGES, Realism, export_references, references, synthesize_xas

from operando.align import Alignment
from operando.analyze import Analyzer, SpectrumInput, poisson_sigma
from operando.config import AnalysisConfig
from operando.protocol import MODE_CC


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


def run(cfg: AnalysisConfig, tmp_path, n: int = 9):
    out: dict[str, list] = {"submit": [], "event": [], "publish": []}
    an = Analyzer(
        cfg,
        tmp_path,
        lambda op, row: out["submit"].append((op, row)),
        lambda kind, *a, **kw: out["event"].append((kind, kw)),
        lambda topic, body: out["publish"].append((topic, body)),
    )
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
        an.on_spectrum(s, {"energy": e, **ch}, alignment(100.0 * k, 0.1 * k))
    return an, out


def test_without_references_the_series_is_decomposed(tmp_path):
    _an, out = run(AnalysisConfig(), tmp_path)
    kinds = [k for k, _ in out["event"]]
    assert kinds.count("analysis_skipped") == 1
    series = [row for op, row in out["submit"] if op == "series"]
    assert series and series[-1][0] == "Mn-L" and series[-1][2] == 9
    assert series[-1][3] >= 2  # two independent changes (Mn3+ -> Mn4+ over the series)
    body = next(b for t, b in reversed(out["publish"]) if t == "series")
    assert "rotation" in body["warning"]
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
