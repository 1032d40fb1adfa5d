"""Current interruptions (ICI) end to end: a simulated cell charged in 300 s runs with 10 s
interruptions, recorded by ``operando demo``; the interruptions appear in ``inspect``, are
rebuilt alike by ``reprocess``, travel in the NeXus and documents exports and reach the
dashboard's Cycling tab. (Their D against a known truth: tests/unit/analysis/test_gitt.py;
the simulated cell has no solid diffusion, so its numbers here are not physics.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, cli, inspect_json, record_demo
from operando.dashboards import cycleplots
from operando.dashboards.pictures import draw
from operando.dashboards.view import RunView

import operando
from operando.export.documents import read_documents

ICI_PROTOCOL = """protocol = [
    { type = "rest", duration_s = 300 },
    { type = "gitt", c_rate = 0.2, pulse_s = 300, rest_s = 10, pulses = 40 },
]
"""
MATERIAL = """
[electrochemistry.cycling]
active_mass_mg = 5.0

[electrochemistry.gitt]
molar_mass_g_mol = 96.5
molar_volume_cm3_mol = 20.3
electrode_area_cm2 = 1.13
"""


@pytest.fixture(scope="module")
def ici_run(tmp_path_factory) -> Path:
    """peo-nmc's experiment with the cycling protocol replaced by interrupted charging."""
    where = tmp_path_factory.mktemp("ici")
    text = (REPO / "configs" / "peo-nmc.toml").read_text()
    start = text.index("protocol = [")
    end = text.index("]\n", start) + 2
    config = where / "ici.toml"
    config.write_text(text[:start] + ICI_PROTOCOL + text[end:] + MATERIAL)
    run = where / "run"
    record_demo(run, 40, "--config", str(config), speed=240)
    return run


def _frame(run: Path) -> pd.DataFrame:
    with operando.open_run(run) as r:
        return r.interruptions()


@pytest.mark.slow
def test_interruptions_are_recorded_shown_rebuilt_and_exported(ici_run, tmp_path):
    found = _frame(ici_run)
    # 40 s at 240x: 9600 s of the protocol, about 30 interruptions
    assert len(found) >= 10
    assert (found["duration_s"] > 8).all() and (found["duration_s"] < 12).all()
    assert (found["i_mA"] > 0).all() and found["d_cm2_s"].notna().all()
    # R: the simulated cell's ohmic 150 ohm, less than that plus its RC pairs' 370 ohm,
    # each with a 1-sigma
    assert found["r_ohm"].between(50, 520).all() and (found["r_unc_ohm"] > 0).all()
    assert found["soc"].is_monotonic_increasing
    # inspect says how many and how many met every assumption
    summary = inspect_json(ici_run)["electrochemistry"]
    assert summary["interruptions"] == len(found)
    assert summary["interruptions_trusted"] == sum(not n for n in found["notes"])
    text = cli("inspect", str(ici_run)).stdout
    assert f"current interruptions (ICI): {len(found)}," in text
    # reprocess derives the same table from the raw log
    again = tmp_path / "again"
    shutil.copytree(ici_run, again)
    cli("reprocess", str(again))
    pd.testing.assert_frame_equal(_frame(again), found)
    # NeXus: R with its 1-sigma beside it, times since the start
    from nexusformat.nexus import nxload

    out = tmp_path / "ici.nxs"
    cli("export", str(ici_run), "--format", "nexus", "--out", str(out))
    g = nxload(str(out)).entry.cycling.interruptions
    assert g.nxsignal.nxname == "r_ohm"
    np.testing.assert_allclose(g.r_ohm.nxvalue, found["r_ohm"])
    np.testing.assert_allclose(g.r_ohm_errors.nxvalue, found["r_unc_ohm"])
    assert g.k_ohm_s05.attrs["units"] == "ohm/s^0.5" and g.d_cm2_s.attrs["units"] == "cm^2/s"
    # documents: one event an interruption
    docs = tmp_path / "ici.jsonl"
    cli("export", str(ici_run), "--format", "documents", "--out", str(docs))
    by_uid = {}
    r_ohm = []
    for name, doc in read_documents(docs):
        if name == "descriptor":
            by_uid[doc["uid"]] = doc["name"]
        elif name == "event" and by_uid[doc["descriptor"]] == "interruptions":
            r_ohm.append(doc["data"]["r_ohm"])
    assert r_ohm == pytest.approx(found["r_ohm"].tolist())
    # the dashboard's Cycling tab: every interruption, D with its 1-sigma
    view = RunView(ici_run)
    try:
        assert view.refresh()
        shown = view.snapshot.interruptions
    finally:
        view.close()
    np.testing.assert_allclose(shown["r_ohm"], found["r_ohm"])
    fig, (drawn,) = draw(cycleplots.interruptions_picture(shown))
    assert fig.yaxis[0].axis_label == "D (cm^2/s)" and "ICI" in fig.title.text
    assert len(drawn.data["hi"]) == len(found)
    assert (drawn.data["hi"] > drawn.data["y"]).all() and (drawn.data["lo"] < drawn.data["y"]).all()
    np.testing.assert_allclose(drawn.data["y"], found["d_cm2_s"])
    without_d = shown.drop(columns=["d_cm2_s"])
    r, _ = draw(cycleplots.interruptions_picture(without_d))
    assert r.yaxis[0].axis_label == "R (ohm)"
    draw(cycleplots.interruptions_picture(pd.DataFrame()))
    # a run without a capacity has no SOC: the points are drawn against time, not left out
    no_soc, (points,) = draw(cycleplots.interruptions_picture(shown.assign(soc=np.nan)))
    assert no_soc.xaxis[0].axis_label == "time since the first (h)"
    assert len(points.data["x"]) == len(found) and np.isfinite(points.data["x"]).all()
