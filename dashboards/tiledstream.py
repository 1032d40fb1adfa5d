"""A table in Tiled followed through Tiled's own streaming (a websocket the server feeds from
its streaming cache, Redis or memory), with HTTP reads where the stream cannot be trusted.

A websocket update is the rows one append added, so an idle follower asks the server nothing
and a busy one gets each row once, where a poll reads at least the table's ``seq_num`` column
(a week at 1 Hz is 600,000 potentiostat rows; Tiled 0.2's table API has no row offset). What
the stream misses is read over HTTP, and rows are told apart by ``seq_num``:
- the rows written before the subscription (its first call reads the table whole);
- a gap in ``seq_num`` (a server restarted with a memory cache counts its updates from 1
  again, while the client resumes after the last number it saw, so rows are skipped);
- rows lost at the end, after which nothing comes to show the gap: the ``seq_num`` column is
  compared with what was seen every ``AUDIT_S``.
A server without a streaming cache refuses the websocket (HTTP 500 in tiled 0.2.20): the
table is then polled, its ``seq_num`` column at each call and the whole table when it has news.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

AUDIT_S = 30.0  # how often a streamed table's seq_num column is compared with the rows seen
POLL_S = 0.5  # a polled table is looked at no more often than this (a view asks thrice)
MAX_UPDATE_BYTES = 64 * 2**20  # a writer catching up after an outage appends in large pages


class FollowedTable:
    """The rows of an appended table (an event stream's ``internal``) not handed out before,
    in ``seq_num`` order (see the module's docstring). ``websocket``: False polls."""

    def __init__(self, table: Any, name: str, websocket: bool = True) -> None:
        self.table, self.name = table, name
        self.seen: set[int] = set()
        self.top = 0  # the highest seq_num seen
        self.streamed = 0  # rows that came through the websocket (for tests and benches)
        self.audited = 0.0  # time.monotonic() of the last look at the seq_num column
        self._lock = threading.Lock()
        self._arrived: list[pd.DataFrame] = []
        self._subscription: Any = None
        self._thread: threading.Thread | None = None
        if websocket:
            self._subscription = table.subscribe()
            # the registry holds callbacks weakly: a bound method lives as long as this object
            self._subscription.new_data.add_callback(self._on_update)
            self._thread = threading.Thread(target=self._listen, daemon=True, name=name)
            self._thread.start()

    @property
    def streaming(self) -> bool:
        """Whether the websocket is (or is trying to be) connected: a refused one ends."""
        return self._thread is not None and self._thread.is_alive()

    def _listen(self) -> None:
        try:  # reconnects by itself after a lost connection, until disconnected
            self._subscription.start(max_size=MAX_UPDATE_BYTES)
        except Exception as e:  # a refusal (no streaming cache), or closed while connecting
            log.info("%s: no websocket stream from Tiled (%s); polling", self.name, e)

    def _on_update(self, update: Any) -> None:
        rows = update.data()  # decoded here, in the subscription's thread
        with self._lock:
            self._arrived.append(rows)
            self.streamed += len(rows)

    def new(self) -> pd.DataFrame:
        """The rows not handed out before (the caller turns a server's errors into its own)."""
        with self._lock:
            frames, self._arrived = self._arrived, []
        now = time.monotonic()
        if not self.streaming or not self.seen:  # a poll (the first read is one)
            due = now - self.audited >= POLL_S
        else:
            due = self._gap(frames) or now - self.audited >= AUDIT_S
        if due:
            self.audited = now
            try:
                there = set(self.table.read(["seq_num"])["seq_num"])
                if there - self.seen - {n for f in frames for n in f["seq_num"]}:
                    frames.append(self.table.read())
            except BaseException:  # the streamed rows wait for the next call
                with self._lock:
                    self._arrived[:0] = frames
                raise
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        rows = pd.concat(frames, ignore_index=True).drop_duplicates("seq_num")
        # not isin(seen): that hashes every seq_num seen (a week's rows) at each call
        rows = rows.loc[[int(n) not in self.seen for n in rows["seq_num"]]]
        rows = rows.sort_values("seq_num")
        if len(rows):
            self.seen.update(int(n) for n in rows["seq_num"])
            self.top = max(self.top, int(rows["seq_num"].iloc[-1]))
        return rows

    def _gap(self, frames: list[pd.DataFrame]) -> bool:
        """Whether the streamed rows skip a ``seq_num`` (a stream's events are appended in
        order, but for a spectrum that waited for a refill: then the look is only early)."""
        numbers = sorted({int(n) for f in frames for n in f["seq_num"]} - self.seen)
        if not numbers:
            return False
        return numbers[0] != self.top + 1 or numbers[-1] - numbers[0] + 1 != len(numbers)

    def close(self) -> None:
        """Stop the websocket (not waiting for a connection attempt to give up)."""
        if self._subscription is not None:
            self._subscription.disconnect(wait=False)
