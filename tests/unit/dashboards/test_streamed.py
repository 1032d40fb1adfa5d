"""What the dashboard sends the browser as a run grows: new rows alone, or the table whole only
when rows already shown changed. Checked on the Bokeh document's own change events, the ones
Bokeh sends the browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsStreamedEvent, ModelChangedEvent
from bokeh.models import ColumnDataSource
from operando.dashboards.streamed import (
    REPLACED,
    SAME,
    STREAMED,
    AppendedTable,
    Trace,
    replace_if_changed,
    thinned,
)


def watched(source: ColumnDataSource) -> list[str]:
    """The kinds of change the browser would get for ``source``, in order."""
    doc = Document()
    doc.add_root(source)
    sent: list[str] = []

    def record(event: object) -> None:
        if isinstance(event, ColumnsStreamedEvent):
            sent.append(f"stream {len(next(iter(event.data.values())))}")
        elif isinstance(event, ModelChangedEvent | ColumnDataChangedEvent):
            sent.append("whole")

    doc.on_change(record)
    return sent


def test_a_trace_appends_new_rows_and_sends_the_whole_only_when_it_must():
    t = 1.7e9 + np.arange(10_000, dtype=float)
    y = np.sin(t / 300.0)
    trace = Trace("Ewe", points=1000, budget=3.0)
    sent = watched(trace.source)
    assert trace.show(t[:5000], y[:5000], revision=0) == REPLACED  # the history, thinned
    assert len(trace.source.data["time"]) == 1000
    assert trace.show(t[:5000], y[:5000], revision=0) == SAME
    assert trace.show(t[:5100], y[:5100], revision=0) == STREAMED
    np.testing.assert_array_equal(trace.source.data["time"][-100:], 1e3 * t[5000:5100])
    np.testing.assert_array_equal(trace.source.data["Ewe"][-100:], y[5000:5100])
    # past its budget (3 x 1000 held), the whole trace is thinned again
    assert trace.show(t[:8000], y[:8000], revision=0) == REPLACED
    assert len(trace.source.data["time"]) == 1000
    assert trace.source.data["time"][-1] == 1e3 * t[7999]  # the newest row kept
    # rows already shown rewritten (a late row sorted in): sent whole, even with none new
    assert trace.show(t[:8000], y[:8000], revision=1) == REPLACED
    assert sent == ["whole", "stream 100", "whole", "whole"]


def test_thinning_keeps_the_extremes_and_the_gaps():
    t = np.arange(100_000, dtype=float)
    y = np.zeros_like(t)
    y[51_234] = 5.0  # a spike a plain LTTB may drop
    keep = thinned(t, y, 500)
    assert len(keep) <= 500 and 51_234 in keep
    y[10:20] = np.nan  # a SOC not known yet
    assert len(thinned(t, y, 500)) <= 500
    assert list(thinned(t[:10], y[:10], 500)) == list(range(10))


def test_a_table_streams_new_rows_and_is_sent_whole_when_a_row_changed():
    table = AppendedTable(["time", "valence", "label"])
    sent = watched(table.source)
    rows = pd.DataFrame({"time": [1.0, 2.0], "valence": [3.1, 3.2], "label": ["Mn TEY"] * 2})
    assert table.show(rows.iloc[:0]) == SAME  # nothing yet
    assert table.show(rows) == REPLACED  # the first rows whole: typed like all that follow
    assert isinstance(table.source.data["time"], np.ndarray)
    assert table.show(rows.copy()) == SAME
    more = pd.concat([rows, rows.iloc[[1]].assign(time=3.0, valence=3.3)], ignore_index=True)
    assert table.show(more) == STREAMED
    assert list(table.source.data["valence"]) == [3.1, 3.2, 3.3]
    refit = more.assign(valence=[3.1, 3.25, 3.3])  # a value already shown changed
    assert table.show(refit) == REPLACED
    assert list(table.source.data["valence"]) == [3.1, 3.25, 3.3]
    assert table.show(refit.iloc[:1]) == REPLACED  # rows gone (a run read again)
    assert sent == ["whole", "stream 1", "whole", "whole"]


def test_small_sources_are_sent_only_when_they_differ():
    source = ColumnDataSource({"x0": np.zeros(0), "x1": np.zeros(0)})
    sent = watched(source)
    assert replace_if_changed(source, {"x0": np.array([1.0]), "x1": np.array([np.nan])})
    assert not replace_if_changed(source, {"x0": np.array([1.0]), "x1": np.array([np.nan])})
    assert replace_if_changed(source, {"x0": np.array([1.0]), "x1": np.array([2.0])})
    assert sent == ["whole", "whole"]
