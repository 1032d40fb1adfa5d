"""A second time axis on the time plots: hours since the experiment began, above the UTC one.

A scientist reads "3.5 h into the run, after the first discharge", not "14:07 UTC"; the log book
and the beamline speak UTC. Both are on every time plot: the hours axis follows the UTC axis in
the browser (a CustomJS callback on the shared x range), so zooming and panning keep them in
step without a round trip to the server.
"""

from __future__ import annotations

from typing import Any

from bokeh.models import CustomJS, LinearAxis, Range1d

HOURS = "hours"

# x ranges of datetime axes are milliseconds since the epoch
FOLLOW_UTC = """
if (t0 === null || xr.start == null || xr.end == null) { return }
hr.start = (xr.start - t0) / 3.6e6
hr.end = (xr.end - t0) / 3.6e6
"""


class HoursAxis:
    """One per browser page: the start of the experiment (the first potentiostat row, source
    time), and the axes that show hours since it. A page opened before the first row gets its
    start when that row comes (``start_at``)."""

    def __init__(self, t0_s: float | None) -> None:
        self.t0_s = t0_s
        self.callbacks: list[CustomJS] = []
        self.ranges: dict[str, Range1d] = {}  # the hours range of each UTC range, by its id

    def add(self, fig: Any) -> None:
        """Put the hours axis on a Bokeh figure whose x axis is UTC time (once). Figures that
        share a UTC range share its hours range and its one callback: a figure made again
        (another edge's fractions) adds no model that the page must learn first."""
        if HOURS in fig.extra_x_ranges:
            return
        hours = self.ranges.get(fig.x_range.id)
        if hours is None:
            hours = self.ranges[fig.x_range.id] = Range1d(start=0, end=1)
            callback = CustomJS(
                args={"xr": fig.x_range, "hr": hours, "t0": self._t0_ms()}, code=FOLLOW_UTC
            )
            fig.x_range.js_on_change("start", callback)
            fig.x_range.js_on_change("end", callback)
            self.callbacks.append(callback)
        fig.extra_x_ranges = {**fig.extra_x_ranges, HOURS: hours}
        fig.add_layout(
            LinearAxis(x_range_name=HOURS, axis_label="hours since the first potentiostat row"),
            "above",
        )

    def start_at(self, t0_s: float) -> None:
        if self.t0_s is not None:
            return
        self.t0_s = t0_s
        for callback in self.callbacks:
            callback.args = {**callback.args, "t0": self._t0_ms()}

    def _t0_ms(self) -> float | None:
        return None if self.t0_s is None else 1e3 * self.t0_s
