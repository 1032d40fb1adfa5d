"""Plots described as data (a ``Picture``: title, axes, layers of glyphs over small tables)
and drawn as Bokeh figures that live as long as the page.

For tabs whose tables are small and change a few times an hour (the Cycling tab's cycles,
half-cycles, current steps): a ``PicturePlot`` makes its figure again only when the plot's
shape changes (a legend entry, an axis), and otherwise replaces the data of the sources that
changed. Through HoloViews each of these plots was built again from its table whenever its
tab was opened (decision 0016).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from bokeh.models import ColumnDataSource, HoverTool, LegendItem
from operando.dashboards.figures import bokeh_pane, legend_beside, plain_figure
from operando.dashboards.streamed import replace_if_changed

# What a plot did with a picture: nothing changed, sources replaced, the figure made again.
SAME, REPLACED, MADE = "same", "replaced", "made"

Glyph = tuple[str, dict[str, Any]]  # a figure's glyph method and its arguments (fields by name)


@dataclass(frozen=True)
class Layer:
    """One legend entry (``label``; empty: none): glyphs drawn from one table, with hover."""

    label: str
    data: pd.DataFrame
    glyphs: tuple[Glyph, ...]
    tips: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Picture:
    title: str
    x_label: str
    y_label: str
    layers: tuple[Layer, ...] = field(default=())
    y_log: bool = False

    def shape(self) -> tuple[Any, ...]:
        """All but the title and the tables' values: what a figure is made of."""
        return (
            self.x_label,
            self.y_label,
            self.y_log,
            tuple(
                (layer.label, repr(layer.glyphs), tuple(layer.data.columns), layer.tips)
                for layer in self.layers
            ),
        )


def columns(data: pd.DataFrame) -> dict[str, Any]:
    return {str(c): data[c].to_numpy() for c in data.columns}


def draw(picture: Picture, height: int = 280) -> tuple[Any, list[ColumnDataSource]]:
    """A figure of ``picture``, and a source per layer (in its order)."""
    fig = plain_figure(
        picture.title,
        picture.x_label,
        picture.y_label,
        height,
        y_axis_type="log" if picture.y_log else "linear",
    )
    items, sources = [], []
    for layer in picture.layers:
        source = ColumnDataSource(columns(layer.data))
        renderers = [getattr(fig, glyph)(source=source, **kw) for glyph, kw in layer.glyphs]
        if layer.label:
            items.append(LegendItem(label=layer.label, renderers=renderers))
        if layer.tips:
            fig.add_tools(HoverTool(renderers=renderers, tooltips=list(layer.tips)))
        sources.append(source)
    legend_beside(fig, items)
    return fig, sources


class PicturePlot:
    """A pane showing the newest picture given to it."""

    def __init__(self, height: int) -> None:
        self.height = height
        self.pane = bokeh_pane(height)
        self.figure: Any = None
        self.sources: list[ColumnDataSource] = []
        self.shape: tuple[Any, ...] | None = None

    def show(self, picture: Picture) -> str:
        shape = picture.shape()
        if shape != self.shape:
            self.figure, self.sources = draw(picture, self.height)
            self.pane.object = self.figure
            self.shape = shape
            return MADE
        replaced = [
            replace_if_changed(source, columns(layer.data))
            for source, layer in zip(self.sources, picture.layers, strict=True)
        ]
        if self.figure.title.text != picture.title:
            self.figure.title.text = picture.title
            return REPLACED
        return REPLACED if any(replaced) else SAME
