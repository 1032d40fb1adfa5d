"""The tables the first tab's figures are fed: what each fit, scan and fraction becomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from operando.dashboards.hours import HoursAxis
from operando.dashboards.live import newest_edge
from operando.dashboards.timeplots import (
    POOR,
    TimePlots,
    beam_table,
    fraction_table,
    valence_table,
)

FITS = pd.DataFrame(
    {
        "spectrum_id": [1, 1, 2, 3],
        "edge": ["Mn-L", "Mn-L", "Mn-L", "Ni-L"],
        "channel": ["TEY", "TFY", "TEY", "TEY"],
        "t": [100.0, 100.0, 200.0, 300.0],
        "valence": [3.2, 3.4, 3.3, 2.5],
        "valence_unc": [0.01, 0.02, 0.5, 0.03],
        "quality": ["good", "check", "poor", "good"],
        "notes": ["", "chi2 high", "at bound", ""],
        "f:Mn3+": [0.8, 0.6, 0.7, np.nan],
        "u:Mn3+": [0.01, 0.02, 0.3, np.nan],
        "f:Mn4+": [0.2, 0.4, 0.3, np.nan],
        "u:Mn4+": [0.01, 0.02, 0.3, np.nan],
        "f:Ni2+": [np.nan, np.nan, np.nan, 0.5],
        "u:Ni2+": [np.nan, np.nan, np.nan, 0.05],
    }
)


def test_a_poor_fit_is_drawn_apart_hollow_and_without_a_bar():
    table = valence_table(FITS)
    assert list(table["time"]) == [1e5, 1e5, 2e5, 3e5]  # ms, what a datetime axis takes
    assert list(table["group"]) == ["Mn-L TEY", "Mn-L TFY", "Mn-L TEY poor fit", "Ni-L TEY"]
    poor = table.iloc[2]
    assert (poor["colour"], poor["fill"], poor["bar"]) == (POOR, 0.0, 0.0)
    assert table.iloc[0]["fill"] == 1.0 and table.iloc[0]["bar"] > 0
    np.testing.assert_allclose(table["high"] - table["low"], 2 * FITS["valence_unc"])
    assert table["marker"].iloc[0] != table["marker"].iloc[3]  # one marker per edge
    assert len(valence_table(pd.DataFrame())) == 0


def test_fractions_are_those_of_the_chosen_edge_and_channel_with_their_band():
    table = fraction_table(FITS, "TEY", "Mn-L")
    assert list(table.columns) == [
        "time", "f:Mn3+", "lo:Mn3+", "hi:Mn3+", "f:Mn4+", "lo:Mn4+", "hi:Mn4+",
    ]  # fmt: skip
    np.testing.assert_allclose(table["lo:Mn3+"], [0.79, 0.4])
    assert list(fraction_table(FITS, "TEY", "Ni-L").columns) == [
        "time",
        "f:Ni2+",
        "lo:Ni2+",
        "hi:Ni2+",
    ]
    assert list(fraction_table(FITS, "TEY", None).columns) == ["time"]


def test_the_beam_table_marks_each_edge_and_the_page_shows_its_losses():
    beam = pd.DataFrame(
        {"spectrum_id": [1, 2], "edge": ["Mn-L", "Ni-L"], "t": [10.0, 20.0],
         "i0_median": [1e5, 2e5], "i0_min": [9e4, 10.0]}
    )  # fmt: skip
    table = beam_table(beam)
    assert list(table["group"]) == ["Mn-L", "Ni-L"]
    assert table["marker"].nunique() == 2
    time = TimePlots(HoursAxis(None))
    time.show_beam(beam, [(2, 19.0, 21.0)])
    assert time.beam.figure.title.text.startswith("beam (I0 per scan): lost 1 time(s)")
    assert list(time.lost.data["x0"]) == [19e3]


def test_a_new_group_makes_the_figure_again_and_a_groups_new_fits_are_appended():
    """One source per edge and channel: with the group in a column of one source (Bokeh's
    legend_field), the page failed drawing the legend when a patch brought a new group."""
    time = TimePlots(HoursAxis(None))
    assert time.show_valence(FITS.iloc[:0]) == {}
    empty = time.valence.figure
    assert empty.title.text == "average oxidation state vs time: no fit yet"
    assert time.show_valence(FITS.iloc[:1]) == {"Mn-L TEY": "replaced"}
    assert time.valence.figure is not empty  # a group came: made again, with its legend entry
    assert time.show_valence(FITS.iloc[:2]) == {"Mn-L TEY": "replaced", "Mn-L TFY": "replaced"}
    figure = time.valence.figure
    later = FITS.iloc[[0]].assign(spectrum_id=9, t=400.0, valence=3.25)
    grown = pd.concat([FITS.iloc[:2], later])
    assert time.show_valence(grown) == {"Mn-L TEY": "streamed", "Mn-L TFY": "same"}
    assert time.valence.figure is figure  # no new group: the same figure
    assert list(time.valence.tables["Mn-L TEY"].source.data["valence"]) == [3.2, 3.25]
    labels = [item.label["value"] for item in figure.legend[0].items]
    assert labels == ["Mn-L TEY", "Mn-L TFY"]


def test_the_edge_selector_starts_on_the_edge_measured_last():
    fits = FITS.assign(t=[100.0, 100.0, 200.0, 50.0])  # Ni-L measured first, then Mn-L
    assert newest_edge(fits) == "Mn-L"
    assert newest_edge(FITS) == "Ni-L"  # not the first in the alphabet
    assert newest_edge(FITS.iloc[:0]) is None
