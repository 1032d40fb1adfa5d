"""Bokeh figures as the live tabs draw them (``timeplots``, ``spectraplots``): the tools, the
legend beside the plot, hover, and points drawn in groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool, Legend, LegendItem
from bokeh.plotting import figure
from operando.dashboards.hours import HoursAxis
from operando.dashboards.streamed import AppendedTable

HEIGHT = 260
TIME_TIP = ("time", "@time{%F %T} UTC")


def ms(t: Any) -> np.ndarray:
    """Seconds since the epoch -> the milliseconds a Bokeh datetime axis takes."""
    return 1e3 * np.asarray(t, float)


def plain_figure(
    title: str,
    x_label: str,
    y_label: str,
    height: int = HEIGHT,
    tools: str = "pan,wheel_zoom,box_zoom,reset,save",
    **kw: Any,
) -> Any:
    """A figure that stretches to the width it is given, its toolbar right of its legend."""
    fig = figure(
        title=title,
        height=height,
        min_width=360,
        sizing_mode="stretch_width",
        tools=tools,
        toolbar_location="right",
        **kw,
    )
    fig.xaxis.axis_label, fig.yaxis.axis_label = x_label, y_label
    return fig


def time_figure(title: str, y_label: str, x_range: DataRange1d, hours: HoursAxis) -> Any:
    """A figure on the shared time axis (UTC below, hours since the start above); the wheel
    zooms time only."""
    fig = plain_figure(
        title,
        "time (UTC)",
        y_label,
        tools="pan,xwheel_zoom,box_zoom,reset,save",
        x_axis_type="datetime",
        x_range=x_range,
    )
    hours.add(fig)
    return fig


def bokeh_pane(height: int = HEIGHT, fig: Any = None) -> pn.pane.Bokeh:
    return pn.pane.Bokeh(fig, sizing_mode="stretch_width", min_width=360, height=height)


def legend_beside(fig: Any, items: list[LegendItem]) -> None:
    """The legend right of the plot (inside, it covered the newest data), made with the
    figure: a legend first added on a later update left a stale view in the browser that
    logged 'cannot find a view for Legend' at every layout pass."""
    fig.add_layout(Legend(items=items, click_policy="hide"), "right")


def hover(renderers: list[Any], *tips: tuple[str, str]) -> HoverTool:
    """Hover on ``renderers`` of a time figure: the time, then ``tips``."""
    return HoverTool(
        renderers=renderers, tooltips=[TIME_TIP, *tips], formatters={"@time": "datetime"}
    )


# draws one group on a figure from its source and the group's first row (its colour, marker):
# gives the legend entries, with the renderers hover should answer for
Draw = Callable[[Any, ColumnDataSource, str, pd.Series], list[LegendItem]]


class GroupedPoints:
    """Points in groups (an edge and channel; an edge's I0), a source and renderers per
    group, each group's new rows appended; the figure is made again when a group appears.

    Not one source with the group in a column (Bokeh's ``legend_field``): a patch that brought
    a new group made the page fail drawing the legend ("Offset is outside the bounds of the
    DataView", Bokeh 3.9), and that plot took no patch after it."""

    def __init__(
        self,
        make_figure: Callable[[], tuple[Any, list[LegendItem]]],
        draw: Draw,
        columns: list[str],
        tips: Callable[[list[Any]], HoverTool],
        height: int = HEIGHT,
    ) -> None:
        self.make_figure, self.draw, self.columns, self.tips = make_figure, draw, columns, tips
        self.pane = bokeh_pane(height)
        self.groups: list[str] | None = None
        self.tables: dict[str, AppendedTable] = {}
        self.figure: Any = None

    def show(self, table: pd.DataFrame, title: str, group: str = "group") -> dict[str, str]:
        """``table``'s rows, grouped by its ``group`` column, under ``title``: what each
        group's source did (``streamed.SAME``, ``STREAMED``, ``REPLACED``)."""
        groups = sorted({str(g) for g in table[group]}) if len(table) else []
        if groups != self.groups:
            fig, others = self.make_figure()
            self.tables = {g: AppendedTable(self.columns) for g in groups}
            items: list[LegendItem] = []
            for g in groups:
                first = table.loc[table[group] == g].iloc[0]
                items += self.draw(fig, self.tables[g].source, g, first)
            renderers = [r for item in items for r in item.renderers]
            if renderers:
                fig.add_tools(self.tips(renderers))
            legend_beside(fig, items + others)
            self.pane.object = self.figure = fig
            self.groups = groups
        if self.figure.title.text != title:
            self.figure.title.text = title
        return {g: self.tables[g].show(table.loc[table[group] == g]) for g in groups}
