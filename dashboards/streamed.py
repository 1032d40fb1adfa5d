"""Bokeh data sources a live table feeds by appending (issue #22: arrival to page in 1 s).

Through HoloViews, each redraw rebuilt every element from the whole table and sent the browser
all of it again; at 72 h of a run that was 250-600 ms of server time per redraw, most of it
HoloViews building elements. A source here remembers what the browser holds and sends only the
rows that are new (``ColumnDataSource.stream``, a patch of those rows alone). It sends the table
whole only when what the browser holds is no longer the table's beginning: a row changed (a
refit, a row sorted in late) or a trace outgrew its display budget and is thinned again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource
from pandas.core.util.hashing import hash_pandas_object
from tsdownsample import MinMaxLTTBDownsampler, NaNMinMaxLTTBDownsampler

# What a source did with a table: nothing new, new rows appended, or the whole table sent.
SAME, STREAMED, REPLACED = "same", "streamed", "replaced"


class AppendedTable:
    """A source for a table that grows at its end (fits, scans, beam readings).

    Each row is known by a hash of its values, so a row that changed (a refit with another
    value) is seen, not only a row count that grew."""

    def __init__(self, columns: list[str]) -> None:
        # empty columns as lists, not float arrays: a colour or marker column given as an
        # empty float array broke the whole page in the browser ("invalid color array")
        self.source = ColumnDataSource({c: [] for c in columns})
        self.columns = columns
        self.held = np.zeros(0, np.uint64)  # the hashes of the rows the browser holds

    def show(self, table: pd.DataFrame) -> str:
        table = table.loc[:, self.columns]
        hashes = hash_pandas_object(table, index=False).to_numpy() if len(table) else self.held[:0]
        n = len(self.held)
        # into an empty source the first rows go whole, so its columns take their types (a
        # number column a typed array) from them; new rows, a few at a time, as lists
        if n and len(hashes) >= n and np.array_equal(hashes[:n], self.held):
            if len(hashes) == n:
                return SAME
            self.source.stream({c: table[c].iloc[n:].tolist() for c in self.columns})
            done = STREAMED
        elif n == len(hashes) == 0:
            return SAME
        else:
            self.source.data = {c: table[c].to_numpy() if len(table) else [] for c in self.columns}
            done = REPLACED
        self.held = hashes
        return done


class Trace:
    """One quantity against time (a potentiostat column), shown downsampled.

    The history is sent thinned to ``points`` (min-max then LTTB, which keeps the spikes a plain
    LTTB drops); rows after it are appended as they come, at full resolution. When the browser
    holds ``budget`` times ``points``, or the trace was rewritten (``revision``: a late row sorted
    in, the display buffer thinned its old half), the whole trace is thinned and sent again."""

    def __init__(self, name: str, points: int, budget: float = 3.0) -> None:
        self.name, self.points, self.budget = name, points, budget
        self.source = ColumnDataSource({"time": np.zeros(0), name: np.zeros(0)})
        self.until = -math.inf  # source time (s) of the newest row the browser holds
        self.revision: int | None = None
        self.held = 0

    def show(self, t: np.ndarray, y: np.ndarray, revision: int) -> str:
        """``t`` (s since the epoch, sorted) and ``y``: the whole trace as it is now."""
        k = int(np.searchsorted(t, self.until, side="right"))
        if revision == self.revision and k == len(t):
            return SAME
        if revision != self.revision or self.held + len(t) - k > self.budget * self.points:
            keep = thinned(t, y, self.points)
            self.source.data = {"time": 1e3 * t[keep], self.name: y[keep]}
            self.held, done = len(keep), REPLACED
        else:
            self.source.stream({"time": 1e3 * t[k:], self.name: y[k:]})
            self.held, done = self.held + len(t) - k, STREAMED
        self.until = float(t[-1]) if len(t) else -math.inf
        self.revision = revision
        return done


def thinned(t: np.ndarray, y: np.ndarray, points: int) -> np.ndarray:
    """Indices of at most ``points`` rows that keep the trace's shape (its extremes included);
    NaN (a SOC not known) is kept as a gap, not dropped."""
    if len(t) <= points:
        return np.arange(len(t))
    t, y = np.ascontiguousarray(t, float), np.ascontiguousarray(y, float)
    sampler = NaNMinMaxLTTBDownsampler() if np.isnan(y).any() else MinMaxLTTBDownsampler()
    return np.asarray(sampler.downsample(t, y, n_out=points))


def replace_if_changed(source: ColumnDataSource, data: Mapping[str, np.ndarray]) -> bool:
    """Set a small source's data (spans, a few marks, a plot's points) when it differs from
    what it holds."""
    held: dict[Any, Any] = dict(source.data)
    if held.keys() == data.keys() and all(_same(held[k], v) for k, v in data.items()):
        return False
    source.data = dict(data)
    return True


def _same(held: Any, new: Any) -> bool:
    a, b = np.asarray(held), np.asarray(new)
    # NaN equals NaN in number columns; a text column (notes) cannot hold NaN that way
    numbers = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=numbers))
