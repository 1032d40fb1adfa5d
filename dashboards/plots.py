"""Pure HoloViews builders: data in (DataFrames, arrays), plot elements out.

No sockets, no Panel, no state: the live app (``live.py``) feeds them through streams. Units on
every axis; colours from the Okabe-Ito palette (safe for the common colour-vision deficiencies);
hover on every data element. The first tab's plots against time are not here: they are Bokeh
figures fed by appending rows (``timeplots.py``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import holoviews as hv
import numpy as np
import pandas as pd

from operando.analysis.relaxation import split_series

# Okabe & Ito (2008), as bokeh.palettes.Colorblind8, black last
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
CHANNEL_COLOUR = {"TEY": PALETTE[0], "TFY": PALETTE[1], "PFY": PALETTE[2], "Ewe": PALETTE[3]}
MARKERS = ("circle", "triangle", "square", "diamond")  # one per edge


def marker_of(name: str, names: list[str]) -> str:
    """The marker of ``name`` among ``names`` (sorted: the same on every redraw); the first
    for a name not among them."""
    return MARKERS[names.index(name) % len(MARKERS)] if name in names else MARKERS[0]


SPECTRUM_SPAN = "#56B4E9"
REST_SHADE = "#999999"

EWE = hv.Dimension("Ewe", label="Ewe", unit="V")
SOC = hv.Dimension("soc", label="SOC", range=(0, 1))
VALENCE = hv.Dimension("valence", label="average oxidation state")
DOSE = hv.Dimension("dose", label="dose", unit="MGy")


E = TypeVar("E", bound=hv.core.Dimensioned)


def styled(element: E, **options: Any) -> E:
    """``element.opts(**options)``, typed: HoloViews styles the element in place and returns
    it, but declares what it returns as optional."""
    element.opts(**options)
    return element


def waiting(x: Any, y: Any, title: str) -> hv.Overlay:
    """A plot with nothing to draw yet, saying so, with its legend already beside it.

    The legend is there from the start on purpose: a plot that gained its first legend on a
    later update kept a stale view in the browser without it, and Bokeh then logged 'cannot
    find a view for Legend' at every layout pass (hundreds a minute, issue #22)."""
    return styled(
        hv.Overlay([hv.Curve([], x, y, label="no data yet")]),
        title=title,
        legend_position="right",
    )


def relaxation_plot(rel: dict[str, Any] | None, quantity: str) -> hv.Overlay:
    """The newest rest period against time since the current stopped, with the fitted curves:
    ``quantity='valence'`` (each channel) or ``'Ewe'`` (the cell voltage)."""
    tdim = hv.Dimension("t", label="time since the current stopped", unit="s")
    ydim = EWE if quantity == "Ewe" else VALENCE
    channels = {
        k: c
        for k, c in (rel["channels"].items() if rel else [])
        if (k == "Ewe") == (quantity == "Ewe")
    }
    if not channels:
        return waiting(tdim, ydim, f"relaxation ({quantity}): no rest period fitted yet")
    items, taus = [], []
    edges = sorted({split_series(k)[0] for k in channels} - {""})
    for channel, c in channels.items():
        # "Mn-L TEY": the channel's colour, the edge's marker (two edges rest together)
        edge, name = split_series(channel)
        colour = CHANNEL_COLOUR.get(name, PALETTE[4])
        marker = marker_of(edge, edges)
        items.append(
            styled(
                hv.Scatter((c["t"], c["v"]), tdim, ydim, label=channel),
                marker=marker,
                color=colour,
                size=4,
                tools=["hover"],
            )
        )
        items.append(
            styled(
                hv.Curve((c["fit_t"], c["fit_v"]), tdim, ydim, label=f"{channel} fit"),
                color=colour,
                line_dash="dashed",
            )
        )
        # one line a channel: the note's first clause (why not resolved); the rest of it
        # (which model, what tau) is in the run store and `operando inspect`
        why = (c["note"] or "not resolved").split(": ")[0]
        taus.append(
            f"{channel}: tau {c['tau_s']:.0f} +- {c['tau_err_s']:.0f} s ({c['model']})"
            if c["resolved"]
            else f"{channel}: {why}"
        )
    return styled(hv.Overlay(items), title="\n".join(taus), legend_position="right")


def _per_spot(dose: pd.DataFrame, spots: pd.DataFrame | None) -> pd.DataFrame:
    """One row per spot: where it is and its cumulative dose (MGy); spots known but never
    measured (the fresh ones left) at 0, after the dosed ones in the order they were used."""
    if len(dose):
        dosed = pd.DataFrame(
            dose.groupby("spot", sort=False).agg(
                x_mm=("x_mm", "last"), y_mm=("y_mm", "last"), total_Gy=("total_Gy", "max")
            )
        )
    else:
        dosed = pd.DataFrame({"x_mm": [], "y_mm": [], "total_Gy": []}, index=pd.Index([]))
    dosed.index.name = "spot"
    if spots is not None and len(spots):
        known = spots.set_index("spot")
        fresh = known.loc[~known.index.isin(dosed.index), ["x_mm", "y_mm"]].assign(total_Gy=0.0)
        # the grid's coordinates where a scan did not say where it was
        for c in ("x_mm", "y_mm"):
            dosed[c] = dosed[c].fillna(known[c].reindex(dosed.index))
        dosed = pd.concat([dosed, fresh])
    # numbers, also when empty: an object column is a categorical axis, and the first numbers
    # after it failed the plot's update on the server (and the page's next message with it)
    out = dosed.reset_index().astype({"x_mm": float, "y_mm": float, "total_Gy": float})
    out["dose"] = out["total_Gy"] / 1e6
    return out


def dose_bars(
    dose: pd.DataFrame,
    budget_Gy: float,
    spots: pd.DataFrame | None = None,
    current: str | None = None,
) -> hv.Overlay:
    """Cumulative dose per spot against the budget (fresh spots at 0); the title says how many
    scans like the last one the spot under the beam (``current``) has left."""
    per_spot = _per_spot(dose, spots)
    if not len(per_spot):
        # a named bar at 0, so the axis is one of names from the start: an empty one was
        # numeric, and the first spot's name on it failed the plot's update on the server
        per_spot = pd.DataFrame({"spot": ["no spot dosed yet"], "dose": [0.0]})
    bars = styled(
        hv.Bars(per_spot, hv.Dimension("spot"), DOSE),
        color=PALETTE[0],
        tools=["hover"],
        title=": ".join(
            t for t in ("cumulative dose per spot", scans_left_text(dose, budget_Gy, current)) if t
        ),
    )
    if budget_Gy > 0:
        return bars * styled(hv.HLine(budget_Gy / 1e6), color=PALETTE[3], line_dash="dashed")
    return bars * styled(hv.HLine(0), alpha=0)


def scans_left_text(dose: pd.DataFrame, budget_Gy: float, spot: str | None) -> str:
    """'spot B3 412 of 500 MGy, 3 scans left' (scans like its last one before the budget);
    '' without a spot, a budget or a scan there."""
    if spot is None or budget_Gy <= 0 or not len(dose):
        return ""
    here = dose.loc[dose["spot"] == spot, ["total_Gy", "scan_Gy"]].to_numpy(float)
    if not len(here):
        return f"spot {spot} fresh, budget {budget_Gy / 1e6:.4g} MGy"
    total, last = float(here[:, 0].max()), float(here[-1, 1])
    left = max(int((budget_Gy - total) // last), 0) if last > 0 else 0
    return (
        f"spot {spot} {total / 1e6:.4g} of {budget_Gy / 1e6:.4g} MGy, "
        f"{left} scan{'s' if left != 1 else ''} left"
    )


def spot_map(
    dose: pd.DataFrame, spots: pd.DataFrame | None = None, current: str | None = None
) -> hv.Overlay:
    """Where each spot is on the sample, named and coloured by its dose (fresh spots at 0),
    the spot under the beam (``current``: the newest scan's) ringed."""
    data = _per_spot(dose, spots).dropna(subset=["x_mm", "y_mm"])
    x = hv.Dimension("x_mm", label="x", unit="mm")
    y = hv.Dimension("y_mm", label="y", unit="mm")
    points = styled(
        hv.Points(data, [x, y], [DOSE, "spot"]),
        color="dose",
        cmap="cividis",
        size=14,
        colorbar=True,
        tools=["hover"],
        padding=0.15,  # room for the top row's names
        title=f"spot map: beam on {current}" if current else "spot map",
    )
    # names above the points: an offset in data units, a fraction of the grid's height
    span = float(np.ptp(data["y_mm"])) if len(data) else 0.0
    labels = hv.Labels(data, [x, y], "spot").opts(
        text_font_size="8pt", text_baseline="bottom", yoffset=0.06 * (span or 1.0)
    )
    beam = styled(
        hv.Points(data[data["spot"] == current], [x, y], [DOSE, "spot"]),
        size=26,
        fill_alpha=0.0,
        line_color=PALETTE[3],
        line_width=3,
    )
    return points * labels * beam


def rixs_map(latest: dict[str, Any] | None) -> hv.QuadMesh:
    """The newest RIXS map as its rows arrive."""
    ex_dim = hv.Dimension("excitation", label="excitation energy", unit="eV")
    em_dim = hv.Dimension("emission", label="emission energy", unit="eV")
    if latest is None or latest["rows"] < 1:
        # empty (NaN, drawn transparent), not a solid box that looks like a map of zeros; its
        # colour bar there from the start (one added on an update is a view the page lacks)
        return styled(
            hv.QuadMesh(([0.0, 1.0], [0.0, 1.0], np.full((2, 2), np.nan)), [em_dim, ex_dim]),
            title="RIXS map: no rows yet" if latest is None else "RIXS map: waiting for rows",
            cmap="cividis",
            colorbar=True,
        )
    ex = latest["excitation"]
    filled = np.isfinite(ex)
    order = np.argsort(ex[filled])
    return styled(
        hv.QuadMesh(
            (latest["emission"], ex[filled][order], latest["counts"][filled][order]),
            [em_dim, ex_dim],
            hv.Dimension("counts"),
        ),
        cmap="cividis",
        colorbar=True,
        tools=["hover"],
        title=f"RIXS {latest['map_id']}: {latest['rows']}/{latest['rows_total']} rows",
    )


def rixs_ratio(maps: pd.DataFrame) -> hv.Scatter:
    """The ROI ratio of each RIXS map against the SOC it was taken at."""
    data = (
        maps.loc[:, ["soc", "ratio", "map_id"]].dropna(subset=["soc"])
        if len(maps)
        else pd.DataFrame({"soc": [], "ratio": [], "map_id": []})
    )
    # numbers, also when empty or missing (None): an object column is a categorical axis
    data = data.astype({"soc": float, "ratio": float, "map_id": str})
    return styled(
        hv.Scatter(data, SOC, [hv.Dimension("ratio", label="ROI ratio"), "map_id"]),
        color=PALETTE[5],
        size=8,
        tools=["hover"],
        title="RIXS ROI ratio vs SOC",
    )
