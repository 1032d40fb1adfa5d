"""The Cycling tab's figures are kept between redraws: a plot whose table is unchanged sends
the browser nothing, a changed value replaces one source, and only a new legend entry or axis
makes the figure again. Checked on the Bokeh document's change events."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ModelChangedEvent
from bokeh.models import ColumnDataSource
from operando.dashboards.cycleplots import (
    CyclingPlots,
    along_titration,
    gitt_picture,
    interruptions_picture,
)
from operando.dashboards.pictures import MADE, REPLACED, SAME, PicturePlot, draw
from operando.dashboards.streamed import replace_if_changed

from operando.analysis.cycling import HalfCycle, Peak


def half(index: int, direction: str, complete: bool = True) -> HalfCycle:
    v = np.linspace(3.0, 4.2, 50)
    sign = 1.0 if direction == "charge" else -1.0
    return HalfCycle(
        index=index, cycle=(index + 1) // 2, direction=direction, t_start=100.0 * index,
        t_end=100.0 * index + 90, capacity_mAh=1.0, energy_mWh=3.7, mean_voltage_V=3.7,
        v_start=3.0, v_end=4.2, q_start_mAh=0.0, complete=complete, rows=50,
        dqdv_V=v.tolist(), dqdv_mAh_V=(sign * np.exp(-((v - 3.7) ** 2) / 0.01)).tolist(),
        peaks=[Peak(3.7, sign)],
    )  # fmt: skip


def snapshot(halves: list[HalfCycle], capacity: list[float]) -> SimpleNamespace:
    n = len(capacity)
    cycles = pd.DataFrame(
        {
            "cycle": np.arange(1, n + 1), "charge_mAh": capacity, "discharge_mAh": capacity,
            "coulombic_efficiency": 0.99, "energy_efficiency": 0.95,
            "complete": [True] * (n - 1) + [False],
        }
    )  # fmt: skip
    placed = pd.DataFrame(
        {
            "series": "Mn-L TEY", "direction": ["charge", "discharge"], "Ewe": [3.8, 3.6],
            "capacity": [0.4, 0.6], "valence": [3.3, 3.5], "cycle": [1, 1],
            "quality": ["good", "check"],
        }
    )  # fmt: skip
    steps = pd.DataFrame(
        {"cycle": [1, 1], "r_0_ohm": [10.0, 11.0], "r_0_unc_ohm": [0.5, 0.4], "soc": [0.1, 0.9]}
    )
    return SimpleNamespace(
        half_cycles=halves, cycles=cycles, fits_on_cycles=placed, steps=steps,
        gitt=pd.DataFrame(), interruptions=pd.DataFrame(),
    )  # fmt: skip


def sent_by(plots: CyclingPlots) -> list[str]:
    """The kinds of change the browser would get for the plots' current figures."""
    doc = Document()
    for plot in plots.plots.values():
        doc.add_root(plot.figure)
    sent: list[str] = []

    def record(event: object) -> None:
        if isinstance(event, ColumnDataChangedEvent | ModelChangedEvent):
            model = getattr(event, "model", None)
            sent.append(type(model).__name__)

    doc.on_change(record)
    return sent


def test_a_cycling_plot_sends_only_what_changed_and_is_made_again_for_a_new_legend_entry():
    plots = CyclingPlots()
    halves = [half(1, "charge"), half(2, "discharge", complete=False)]
    snap = snapshot(halves, [1.0, 0.98])
    assert set(plots.show(snap).values()) == {MADE}
    assert len(plots.show(snap)) == 0  # the same tables: not looked at
    figures = {name: plot.figure for name, plot in plots.plots.items()}
    sent = sent_by(plots)
    # equal tables the view made again (another refresh): nothing sent
    again = snapshot(halves, [1.0, 0.98])
    assert set(plots.show(again).values()) == {SAME}
    assert sent == []
    # the running cycle's capacity grew: its source replaced (capacity and efficiency share
    # the table; efficiency shows complete cycles only, so it is unchanged)
    grown = SimpleNamespace(**{**vars(again), "cycles": snapshot(halves, [1.0, 1.05]).cycles})
    done = plots.show(grown)
    assert done == {"capacity": REPLACED, "efficiency": SAME}
    assert sent == ["ColumnDataSource", "ColumnDataSource"]  # charge and discharge
    assert plots.plots["capacity"].figure is figures["capacity"]
    np.testing.assert_allclose(plots.plots["capacity"].sources[0].data["y"], [1.0, 1.05])
    # the open half-cycle closed: its legend entry changes, the dQ/dV figure is made again
    closed = SimpleNamespace(
        **{**vars(grown), "half_cycles": [halves[0], replace(halves[1], complete=True)]}
    )
    assert plots.show(closed) == {"dqdv": MADE}
    assert plots.plots["dqdv"].figure is not figures["dqdv"]
    labels = [item.label.value for item in plots.plots["dqdv"].figure.legend[0].items]
    assert labels == ["charge 1", "discharge 1", "peaks"]


def test_a_running_cycle_is_drawn_hollow_and_left_out_of_the_efficiency():
    snap = snapshot([], [1.0, 0.98])
    plots = CyclingPlots()
    plots.show(snap)
    charge = plots.plots["capacity"].sources[0].data
    assert list(charge["fill"]) == [1.0, 0.0]
    assert list(plots.plots["efficiency"].sources[0].data["cycle"]) == [1]
    assert plots.plots["dqdv"].figure.title.text == "dQ/dV: no half-cycle closed yet"


def test_titration_points_without_a_soc_go_against_time_and_log_bars_stay_positive():
    gaps = pd.DataFrame(
        {
            "t_start": [1000.0, 4600.0], "soc": [np.nan, np.nan], "d_cm2_s": [1e-10, 2e-10],
            "d_unc_cm2_s": [3e-10, 1e-11], "r_ohm": [5.0, 6.0], "r_unc_ohm": [0.1, 0.1],
            "k_ohm_s05": [1.0, 1.1], "notes": ["", "R fit poor"],
        }
    )  # fmt: skip
    label, x = along_titration(gaps, "soc", "SOC at the interruption")
    assert label == "time since the first (h)" and list(x) == [0.0, 1.0]
    fig, (points,) = draw(interruptions_picture(gaps))
    assert fig.y_scale.__class__.__name__ == "LogScale"
    # a 1-sigma larger than D: the bar ends at a tenth of D, not at zero or below
    assert points.data["lo"][0] == pytest.approx(1e-11) and points.data["hi"][0] == 4e-10
    assert list(points.data["notes"]) == ["assumptions met", "R fit poor"]
    assert list(points.data["fill"]) == [1.0, 0.0]
    # without D's inputs: R on a linear axis, the same points
    fig, (points,) = draw(interruptions_picture(gaps.drop(columns="d_cm2_s")))
    assert fig.y_scale.__class__.__name__ == "LinearScale"
    np.testing.assert_allclose(points.data["y"], [5.0, 6.0])
    assert gitt_picture(pd.DataFrame()).layers == ()


def test_a_plot_shown_the_same_picture_again_sends_nothing_even_with_text_columns():
    gap = {
        "t_start": [0.0], "soc": [0.5], "r_ohm": [5.0], "r_unc_ohm": [np.nan],
        "k_ohm_s05": [1.0], "notes": ["ok"],
    }  # fmt: skip
    picture = interruptions_picture(pd.DataFrame(gap))
    plot = PicturePlot(280)
    assert plot.show(picture) == MADE
    assert plot.show(picture) == SAME  # NaN equals NaN, text compares as text
    source = ColumnDataSource({"notes": np.array(["a", "b"], object)})
    assert not replace_if_changed(source, {"notes": np.array(["a", "b"], object)})
    assert replace_if_changed(source, {"notes": np.array(["a", "c"], object)})
