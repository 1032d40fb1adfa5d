"""The first tab's plots, against time: Bokeh figures that new rows are appended to.

Cell voltage (with rests, spectrum windows and triggers marked), current, SOC, the beam (I0),
the chosen edge's fractions in TEY and TFY, and the valence, on one shared time axis with the
hours since the start above it. This is the tab an operator keeps open, so it is drawn with
Bokeh itself and fed by ``streamed`` sources: a redraw sends the browser the rows that are
new, not the whole run again through HoloViews (issue #22, item 5).

The tables the figures show are made by pure functions (``*_table``), tested on their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool, LegendItem, NumeralTickFormatter
from operando.dashboards.figures import (
    HEIGHT,
    TIME_TIP,
    GroupedPoints,
    bokeh_pane,
    hover,
    legend_beside,
    ms,
    time_figure,
)
from operando.dashboards.hours import HoursAxis
from operando.dashboards.plots import (
    CHANNEL_COLOUR,
    PALETTE,
    REST_SHADE,
    SPECTRUM_SPAN,
    marker_of,
)
from operando.dashboards.streamed import AppendedTable, Trace, replace_if_changed

DISPLAY_POINTS = 1500  # per time series, per browser: downsampled, the shape kept
CELL = {  # potentiostat column: (title, axis label, hover format, colour)
    "Ewe": ("cell voltage", "Ewe (V)", "0.0000", PALETTE[0]),
    "I": ("current", "I (mA)", "0.0000", PALETTE[3]),
    "soc": ("state of charge", "SOC", "0.000", PALETTE[2]),
}
CHANNEL_NAME = {"TEY": "surface (TEY)", "TFY": "bulk (TFY)"}
POOR = "#888888"  # a fit judged poor: hollow and grey, seen but not read as a valence

VALENCE_COLUMNS = [
    "time", "soc", "valence", "low", "high", "group", "colour", "marker", "fill", "bar",
    "spectrum", "quality", "notes",
]  # fmt: skip
BEAM_COLUMNS = ["time", "I0", "minimum", "spectrum", "group", "marker"]


# -- tables (pure) ---------------------------------------------------------------------------
def windows_table(spectra: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each XAS scan's window, start and end (ms)."""
    xas = spectra[spectra["kind"] == "xas_scan"] if len(spectra) else spectra
    return {
        "x0": ms(xas["t_start"] if len(xas) else []),
        "x1": ms(xas["t_end"] if len(xas) else []),
    }


def valence_table(fits: pd.DataFrame) -> pd.DataFrame:
    """One row per fit: valence with its 1-sigma bar, drawn per edge (marker) and channel
    (colour); a fit judged poor hollow and grey, without a bar, in a legend entry of its own."""
    if not len(fits):
        return pd.DataFrame({c: [] for c in VALENCE_COLUMNS})
    edges = sorted(fits["edge"].unique())
    soc = fits["soc"].to_numpy(float) if "soc" in fits else np.full(len(fits), np.nan)
    poor = (fits["quality"] == "poor").to_numpy()
    colour = fits["channel"].map(lambda c: CHANNEL_COLOUR.get(c, PALETTE[4])).to_numpy()
    label = (fits["edge"] + " " + fits["channel"]).to_numpy(object)
    err = fits["valence_unc"].to_numpy(float)
    return pd.DataFrame(
        {
            "time": ms(fits["t"]),
            "soc": soc,
            "valence": fits["valence"].to_numpy(float),
            "low": fits["valence"].to_numpy(float) - err,
            "high": fits["valence"].to_numpy(float) + err,
            "group": np.where(poor, label + " poor fit", label),
            "colour": np.where(poor, POOR, colour),
            "marker": fits["edge"].map(lambda e: marker_of(e, edges)).to_numpy(),
            "fill": np.where(poor, 0.0, 1.0),
            "bar": np.where(poor, 0.0, 0.5),
            "spectrum": fits["spectrum_id"].to_numpy(),
            "quality": fits["quality"].astype(str).to_numpy(),
            "notes": fits["notes"].astype(str).to_numpy(),
        }
    )


def fraction_table(fits: pd.DataFrame, channel: str, edge: str | None) -> pd.DataFrame:
    """The fractions of one edge and channel against time: per species ``f:NAME`` and its
    1-sigma band ``lo:NAME``, ``hi:NAME`` (only species this edge's fits have)."""
    f = fits.loc[(fits["channel"] == channel) & (fits["edge"] == edge)] if len(fits) else fits
    names = [c[2:] for c in f.columns if c.startswith("f:") and bool(f[c].notna().any())]
    out = {"time": ms(f["t"] if len(f) else [])}
    for name in names:
        value, err = f[f"f:{name}"].to_numpy(float), f[f"u:{name}"].to_numpy(float)
        out |= {f"f:{name}": value, f"lo:{name}": value - err, f"hi:{name}": value + err}
    return pd.DataFrame(out)


def beam_table(beam: pd.DataFrame) -> pd.DataFrame:
    """Each scan's median and minimum I0, grouped by edge with a marker each (each edge's
    photons are read differently, so their levels differ)."""
    if not len(beam):
        return pd.DataFrame({c: [] for c in BEAM_COLUMNS})
    edges = sorted(beam["edge"].unique())
    edge = beam["edge"].astype(str)
    return pd.DataFrame(
        {
            "time": ms(beam["t"]),
            "I0": beam["i0_median"].to_numpy(float),
            "minimum": beam["i0_min"].to_numpy(float),
            "spectrum": beam["spectrum_id"].to_numpy(),
            "group": edge.to_numpy(object),
            "marker": edge.map(lambda e: marker_of(e, edges)).to_numpy(),
        }
    )


def beam_title(lost: list[tuple[int, float, float]], any_scan: bool) -> str:
    if not any_scan:
        return "beam (I0): no scan with an I0 yet"
    if not lost:
        return "beam (I0 per scan)"
    minutes = sum(b - a for _, a, b in lost) / 60
    scans = len({sid for sid, *_ in lost})
    return f"beam (I0 per scan): lost {len(lost)} time(s), {minutes:.1f} min, in {scans} scan(s)"


def fraction_title(channel: str, edge: str | None, names: list[str]) -> str:
    title = f"{edge or ''} fractions, {CHANNEL_NAME.get(channel, channel)}"
    return title if names else f"{title}: no fit yet"


# -- the plots -------------------------------------------------------------------------------
class FractionPlot:
    """The chosen edge's fractions in one channel: a line and a 1-sigma band per species.

    The species differ by edge, so the figure is made again when the edge (or its species)
    changes; otherwise new fits are appended."""

    def __init__(self, channel: str, x_range: DataRange1d, hours: HoursAxis) -> None:
        self.channel, self.x_range, self.hours = channel, x_range, hours
        self.pane = bokeh_pane()
        self.drawn: tuple[str | None, list[str]] | None = None
        self.table: AppendedTable | None = None

    def show(self, fits: pd.DataFrame, edge: str | None) -> str:
        table = fraction_table(fits, self.channel, edge)
        names = [c[2:] for c in table.columns if c.startswith("f:")]
        if self.table is None or (edge, names) != self.drawn:
            self.table = AppendedTable(list(table.columns))
            self.pane.object = self._figure(edge, names, self.table.source)
            self.drawn = (edge, names)
        return self.table.show(table)

    def _figure(self, edge: str | None, names: list[str], source: ColumnDataSource) -> Any:
        fig = time_figure(
            fraction_title(self.channel, edge, names), "fraction", self.x_range, self.hours
        )
        items, points = [], []
        for i, name in enumerate(names):
            colour = PALETTE[i % len(PALETTE)]
            band = fig.varea(
                "time", f"lo:{name}", f"hi:{name}", source=source, color=colour, alpha=0.25
            )
            line = fig.line("time", f"f:{name}", source=source, color=colour, line_width=1.5)
            # a point per fit: one fit alone is no line, and was not seen
            dots = fig.scatter("time", f"f:{name}", source=source, color=colour, size=4)
            items.append(LegendItem(label=name, renderers=[line, band, dots]))
            points.append(dots)
        legend_beside(fig, items)  # empty until the edge has a fit: its title says so
        if points:
            fig.add_tools(hover(points, *((n, f"@{{f:{n}}}{{0.000}}") for n in names)))
        return fig


def valence_tips(x: str) -> Any:
    """What a valence point says under the pointer, against ``x`` ("time" or "soc")."""
    at = TIME_TIP if x == "time" else ("SOC", "@soc{0.000}")

    def tips(renderers: list[Any]) -> HoverTool:
        return HoverTool(
            renderers=renderers,
            tooltips=[
                at,
                ("fit", "@group"),
                ("valence", "@valence{0.000} (@low{0.000} to @high{0.000})"),
                ("spectrum", "@spectrum"),
                ("quality", "@quality: @notes"),
            ],
            formatters={"@time": "datetime"},
        )

    return tips


def draw_valence(x: str) -> Any:
    """A group of valence points (an edge and channel): its 1-sigma bars and its points, in
    the group's colour and marker (a poor fit hollow, without a bar)."""

    def draw(fig: Any, source: ColumnDataSource, group: str, first: pd.Series) -> list[LegendItem]:
        colour = str(first["colour"])
        bars = fig.segment(
            x, "low", x, "high", source=source, color=colour, line_alpha=float(first["bar"])
        )
        points = fig.scatter(
            x, "valence", source=source, marker=str(first["marker"]), size=7, color=colour,
            fill_alpha=float(first["fill"]),
        )  # fmt: skip
        return [LegendItem(label=group, renderers=[points, bars])]

    return draw


def valence_plot(x: str, make_figure: Any, height: int = HEIGHT) -> GroupedPoints:
    """Average oxidation state per edge and channel against ``x`` ("time" or "soc")."""
    return GroupedPoints(
        lambda: (make_figure(), []), draw_valence(x), VALENCE_COLUMNS, valence_tips(x), height
    )


def valence_title(fits: pd.DataFrame, against: str) -> str:
    return f"average oxidation state vs {against}" + ("" if len(fits) else ": no fit yet")


class TimePlots:
    """The first tab's figures and what feeds them; ``show_*`` take snapshot pieces."""

    def __init__(self, hours: HoursAxis) -> None:
        self.x_range = DataRange1d()  # one time axis: zoom one plot, all follow
        self.traces = {name: Trace(name, DISPLAY_POINTS) for name in CELL}
        self.figures = {name: self._cell_figure(name, hours) for name in CELL}
        self.rests = ColumnDataSource({"x0": np.zeros(0), "x1": np.zeros(0)})
        self.windows = AppendedTable(["x0", "x1"])
        self.triggers = ColumnDataSource({"x": np.zeros(0)})
        self._mark(self.figures["Ewe"])
        self.valence = valence_plot(
            "time",
            lambda: time_figure("", "average oxidation state", self.x_range, hours),
        )
        self.lost = ColumnDataSource({"x0": np.zeros(0), "x1": np.zeros(0)})
        self.beam = GroupedPoints(
            lambda: self._beam_figure(hours), self._draw_beam, BEAM_COLUMNS, self._beam_tips
        )
        self.fractions = {c: FractionPlot(c, self.x_range, hours) for c in CHANNEL_NAME}
        # two columns, each plot half the window wide whatever the screen; the beam beside
        # the cell: a dump or a refill lines up with what it touched
        self.layout = pn.GridBox(
            bokeh_pane(fig=self.figures["Ewe"]),
            bokeh_pane(fig=self.figures["I"]),
            bokeh_pane(fig=self.figures["soc"]),
            self.beam.pane,
            self.fractions["TEY"].pane,
            self.fractions["TFY"].pane,
            self.valence.pane,
            ncols=2,
            sizing_mode="stretch_width",
        )

    # -- feeding -----------------------------------------------------------------------------
    def show_cell(self, cell: pd.DataFrame, revision: int) -> dict[str, str]:
        t = cell["t"].to_numpy(float)
        return {
            name: trace.show(t, cell[name].to_numpy(float), revision)
            for name, trace in self.traces.items()
        }

    def show_marks(
        self, rests: list[tuple[float, float]], spectra: pd.DataFrame, triggers: pd.DataFrame
    ) -> None:
        replace_if_changed(
            self.rests, {"x0": ms([r[0] for r in rests]), "x1": ms([r[1] for r in rests])}
        )
        self.windows.show(pd.DataFrame(windows_table(spectra)))
        fired = triggers["t"].dropna() if len(triggers) and "t" in triggers else []
        replace_if_changed(self.triggers, {"x": ms(fired)})

    def show_beam(self, beam: pd.DataFrame, lost: list[tuple[int, float, float]]) -> None:
        replace_if_changed(
            self.lost, {"x0": ms([a for _, a, _ in lost]), "x1": ms([b for *_, b in lost])}
        )
        self.beam.show(beam_table(beam), beam_title(lost, bool(len(beam))))

    def show_valence(self, fits: pd.DataFrame) -> dict[str, str]:
        return self.valence.show(valence_table(fits), valence_title(fits, "time"))

    def show_fractions(self, fits: pd.DataFrame, edge: str | None) -> dict[str, str]:
        return {c: plot.show(fits, edge) for c, plot in self.fractions.items()}

    # -- figures -----------------------------------------------------------------------------
    def _cell_figure(self, name: str, hours: HoursAxis) -> Any:
        title, label, fmt, colour = CELL[name]
        fig = time_figure(title, label, self.x_range, hours)
        line = fig.line("time", name, source=self.traces[name].source, color=colour, line_width=1.5)
        fig.add_tools(hover([line], (label, f"@{name}{{{fmt}}}")))
        if name != "Ewe":  # the voltage's legend names the marks (``_mark``)
            legend_beside(fig, [LegendItem(label=label, renderers=[line])])
        return fig

    def _mark(self, fig: Any) -> None:
        """Rests shaded, spectrum windows as bands, triggers as dashed lines, on the voltage
        only (each marked plot costs the browser a redraw per spectrum)."""
        rest = fig.vstrip("x0", "x1", source=self.rests, color=REST_SHADE, alpha=0.2, line_alpha=0)
        window = fig.vstrip(
            "x0", "x1", source=self.windows.source, color=SPECTRUM_SPAN, alpha=0.15, line_alpha=0
        )
        fired = fig.vspan(
            "x", source=self.triggers, color=PALETTE[5], line_dash="dashed", line_width=1.5
        )
        voltage = fig.renderers[0]
        legend_beside(
            fig,
            [
                LegendItem(label="Ewe (V)", renderers=[voltage]),
                LegendItem(label="rest", renderers=[rest]),
                LegendItem(label="spectrum", renderers=[window]),
                LegendItem(label="trigger", renderers=[fired]),
            ],
        )

    def _beam_figure(self, hours: HoursAxis) -> tuple[Any, list[LegendItem]]:
        fig = time_figure("", "I0 (counts or monitor units)", self.x_range, hours)
        lost = fig.vstrip("x0", "x1", source=self.lost, color=PALETTE[3], alpha=0.35, line_alpha=0)
        fig.yaxis.formatter = NumeralTickFormatter(format="0.[00]a")  # 100k, not 1.000e+5
        return fig, [LegendItem(label="beam lost", renderers=[lost])]

    @staticmethod
    def _draw_beam(
        fig: Any, source: ColumnDataSource, edge: str, first: pd.Series
    ) -> list[LegendItem]:
        marker = str(first["marker"])
        median = fig.scatter("time", "I0", source=source, marker=marker, size=6, color=PALETTE[0])
        lowest = fig.scatter(
            "time", "minimum", source=source, marker=marker, size=4, color=PALETTE[4]
        )
        return [
            LegendItem(label=f"{edge} median", renderers=[median]),
            LegendItem(label=f"{edge} minimum", renderers=[lowest]),
        ]

    @staticmethod
    def _beam_tips(renderers: list[Any]) -> HoverTool:
        return hover(
            renderers,
            ("I0 median", "@I0{0.[00]a}"),
            ("minimum", "@minimum{0.[00]a}"),
            ("spectrum", "@spectrum"),
        )
