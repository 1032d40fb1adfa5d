"""The Spectra tab's plots: the newest spectrum with its fit, its residual, valence against SOC,
and the normalised spectra stacked by SOC (a heatmap per edge, channel and direction of the
current), as Bokeh figures fed with what changed.

Through HoloViews, opening this tab under a RIXS run's load took 1.2 s (p50) to 1.8 s (p95):
each of its plots was rebuilt from the whole run whenever the tab was opened or a spectrum
came. Here the figures live as long as the page: a new spectrum replaces two small sources,
a fit is appended, and a heatmap is sent again only when a scan joined it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LegendItem, LinearColorMapper
from bokeh.palettes import Cividis256
from operando.dashboards.figures import GroupedPoints, bokeh_pane, legend_beside, plain_figure
from operando.dashboards.plots import CHANNEL_COLOUR, PALETTE
from operando.dashboards.timeplots import valence_plot, valence_table, valence_title

ENERGY_LABEL = "photon energy (eV)"
HeatItem = tuple[np.ndarray, np.ndarray, np.ndarray]  # SOC of each scan, energy grid, spectra
QUAD_COLUMNS = ("left", "right", "bottom", "top", "mu", "energy", "soc")  # a heatmap's cells


def spectrum_title(latest: Any, part: str) -> str:
    """'spectrum 12 (Mn-L, SOC 0.420): data and fit - TEY good, TFY check', or its residual."""
    if latest is None:
        return "latest spectrum: none yet" if part == "fit" else "residual: no spectrum yet"
    fitted = any(np.isfinite(c["model"]).any() for c in latest.channels.values())
    if part != "fit":
        return f"spectrum {latest.spectrum_id}: residual{'' if fitted else ' (not fitted)'}"
    soc = "" if latest.soc is None or not math.isfinite(latest.soc) else f", SOC {latest.soc:.3f}"
    title = (
        f"spectrum {latest.spectrum_id} ({latest.edge}{soc}): data{' and fit' if fitted else ''}"
    )
    if latest.quality:
        title += " - " + ", ".join(f"{c} {q}" for c, (q, _) in sorted(latest.quality.items()))
    return title


class SpectrumPlot:
    """The newest spectrum of each channel: its data and fitted model (``part='fit'``), or
    data - model (``part='residual'``). Made again only when the channels change."""

    def __init__(self, part: str, height: int) -> None:
        self.part, self.height = part, height
        self.pane = bokeh_pane(height)
        self.channels: list[str] | None = None
        self.sources: dict[str, ColumnDataSource] = {}
        self.shown: Any = None

    def show(self, latest: Any) -> bool:
        if latest is self.shown and self.channels is not None:
            return False
        channels = sorted(latest.channels) if latest is not None else []
        if channels != self.channels:
            self.sources = {
                c: ColumnDataSource({"energy": [], "y": [], "model": []}) for c in channels
            }
            self.pane.object = self._figure(channels)
            self.channels = channels
        arrays = latest.channels if latest is not None else {}
        for channel, source in self.sources.items():
            c = arrays[channel]
            y = c["data"] if self.part == "fit" else c["residual"]
            source.data = {"energy": c["energy"], "y": y, "model": c["model"]}
        self.pane.object.title.text = spectrum_title(latest, self.part)
        self.shown = latest
        return True

    def _figure(self, channels: list[str]) -> Any:
        fit = self.part == "fit"
        fig = plain_figure(
            spectrum_title(None, self.part),
            ENERGY_LABEL,
            "signal / I0" if fit else "data - fit",
            self.height,
        )
        items, data = [], []
        for channel in channels:
            source, colour = self.sources[channel], CHANNEL_COLOUR.get(channel, PALETTE[4])
            if fit:
                points = fig.scatter("energy", "y", source=source, size=3, color=colour)
                model = fig.line("energy", "model", source=source, color="#000000", line_width=1)
                items += [
                    LegendItem(label=f"{channel} data", renderers=[points]),
                    LegendItem(label=f"{channel} fit", renderers=[model]),
                ]
                data.append(points)
            else:
                line = fig.line("energy", "y", source=source, color=colour, line_width=1.5)
                items.append(LegendItem(label=channel, renderers=[line]))
                data.append(line)
        legend_beside(fig, items)
        if data:
            fig.add_tools(
                HoverTool(
                    renderers=data,
                    tooltips=[("energy", "@energy{0.00} eV"), ("value", "@y{0.0000}")],
                )
            )
        return fig


def heatmap_quads(item: HeatItem) -> dict[str, Any]:
    """Cells of the heatmap: a row per SOC (scans at the same SOC averaged), a column per
    energy of the grid, each cell bounded halfway to its neighbours (SOC values that bunch up
    or repeat still draw)."""
    soc, grid, z = item
    rows = np.unique(soc)
    z_rows = np.vstack([np.nanmean(z[soc == s], axis=0) for s in rows])
    e_edges, s_edges = _edges(np.asarray(grid, float)), _edges(rows)
    left, bottom = np.meshgrid(e_edges[:-1], s_edges[:-1])
    right, top = np.meshgrid(e_edges[1:], s_edges[1:])
    energy, soc_at = np.meshgrid(np.asarray(grid, float), rows)
    cells = (left, right, bottom, top, z_rows, energy, soc_at)
    return {name: values.ravel() for name, values in zip(QUAD_COLUMNS, cells, strict=True)}


def _edges(centres: np.ndarray) -> np.ndarray:
    if len(centres) == 1:
        return np.array([centres[0] - 0.005, centres[0] + 0.005])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(([2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]))


class Heatmap:
    """Normalised spectra of one edge and channel, stacked by SOC, for one direction of the
    current (charge, discharge, at rest: one drawn over the other hid the hysteresis)."""

    def __init__(self, edge: str, channel: str, direction: str, height: int) -> None:
        title = f"normalised {edge} {channel} vs SOC" + (f", {direction}" if direction else "")
        self.source = ColumnDataSource({k: [] for k in QUAD_COLUMNS})
        fig = plain_figure(title, ENERGY_LABEL, "SOC", height)
        colours = LinearColorMapper(palette=Cividis256, nan_color="rgba(0,0,0,0)")
        # outlined in their own colour: without, the canvas left seams between cells
        colour = {"field": "mu", "transform": colours}
        cells = fig.quad(
            left="left", right="right", bottom="bottom", top="top", source=self.source,
            fill_color=colour, line_color=colour, line_width=1,
        )  # fmt: skip
        fig.add_layout(ColorBar(color_mapper=colours, title="normalised"), "right")
        fig.add_tools(
            HoverTool(
                renderers=[cells],
                tooltips=[("energy", "@energy{0.00} eV"), ("SOC", "@soc{0.000}"), ("mu", "@mu")],
            )
        )
        self.pane = bokeh_pane(height, fig)
        self.shown: HeatItem | None = None

    def show(self, item: HeatItem) -> bool:
        if item is self.shown:  # the view makes a new object when a scan joins
            return False
        self.source.data = dict(heatmap_quads(item))
        self.shown = item
        return True


class SpectraPlots:
    """The Spectra tab's figures; the fit-quality text sits between the spectrum and its
    residual (``Session`` places it)."""

    def __init__(self) -> None:
        self.latest = SpectrumPlot("fit", 320)
        self.residual = SpectrumPlot("residual", 180)
        self.valence: GroupedPoints = valence_plot(
            "soc", lambda: plain_figure("", "SOC", "average oxidation state", 300), 300
        )
        self.heatmaps: dict[tuple[str, str, str], Heatmap] = {}
        self.heatmap_column = pn.Column(sizing_mode="stretch_width")

    def show(self, latest: Any, fits: pd.DataFrame, heatmaps: dict[Any, HeatItem]) -> None:
        self.latest.show(latest)
        self.residual.show(latest)
        self.valence.show(valence_table(fits), valence_title(fits, "SOC"))
        for key, item in heatmaps.items():
            if key not in self.heatmaps:
                self.heatmaps[key] = Heatmap(*key, height=300)
                self.heatmap_column.append(self.heatmaps[key].pane)
            self.heatmaps[key].show(item)
