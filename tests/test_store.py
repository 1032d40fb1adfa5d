"""The run store keeps every message as received, in a real SQLite file."""

from __future__ import annotations

import sqlite3

import numpy as np

from operando.protocol import Heartbeat, encode
from operando.store import RunStore, iter_raw, open_readonly, pack_frames, split_frames


def test_frames_round_trip_through_the_raw_table(tmp_path):
    frames = [
        bytes(f)
        for f in encode(Heartbeat(source="p"), {"a": np.arange(5.0), "b": np.ones(3, np.int8)})
    ]
    store = RunStore(tmp_path)
    store.submit("raw", (store.take_raw_id(), 1, "p", *pack_frames(frames), 0))
    store.submit("raw", (store.take_raw_id(), 2, "p", *pack_frames([b"only-one"]), 0))
    store.flush()
    store.close()
    conn = open_readonly(tmp_path)
    rows = list(iter_raw(conn))
    assert [bytes(f) for f in rows[0][3]] == frames
    assert [bytes(f) for f in rows[1][3]] == [b"only-one"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopen_continues_ids(tmp_path):
    s1 = RunStore(tmp_path)
    for _ in range(3):
        s1.submit("raw", (s1.take_raw_id(), 0, "p", *pack_frames([b"x", b"y"]), 0))
    s1.close()
    s2 = RunStore(tmp_path)
    assert s2.reopened and s2.take_raw_id() == 4
    s2.close()


def test_write_errors_are_retried_not_dropped(tmp_path):
    store = RunStore(tmp_path)
    store.submit("event", (0, None, "x", None, "{}"))
    store.flush()
    # Make the events table refuse writes for a moment, as a full disk would.
    blocker = sqlite3.connect(store.path)
    blocker.execute("BEGIN EXCLUSIVE")
    store.submit("event", (1, None, "y", None, "{}"))
    import time

    deadline = time.monotonic() + 10
    while store.last_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.last_error is not None and "locked" in store.last_error
    blocker.rollback()
    blocker.close()
    store.flush(timeout=30)
    assert store.last_error is None
    store.close()
    kinds = [k for (k,) in open_readonly(tmp_path).execute("SELECT kind FROM events")]
    assert kinds == ["x", "y"]


def test_split_frames_handles_empty_payload():
    assert split_frames(b"t", b"h", b"", "1,1") == [b"t", b"h"]
