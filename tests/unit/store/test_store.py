"""The run store keeps every message as received: a real raw log and a real SQLite file."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, wait_for

from operando.protocol import Heartbeat, encode
from operando.rawlog import RawLogError, nbytes, scan, segment_path
from operando.store import RunStore, StoreError, iter_raw, open_readonly, read_raw
from operando.store.writer_process import BATCH, RAW, RING_TO, BatchWriter, Ring, pack, unpack

OK = ("ok", None, "p", "s", 0, "heartbeat", 0)


def frames_of(k: int) -> list[bytes]:
    return [bytes(f) for f in encode(Heartbeat(source="p", seq=k), {"a": np.arange(k + 1.0)})]


def fill(store: RunStore, n: int, *, flush: bool = True) -> list[list[bytes]]:
    sent = []
    for k in range(n):
        frames = frames_of(k)
        store.append_raw(store.take_raw_id(), 1000 + k, "p", frames, OK)
        sent.append(frames)
    if flush:
        store.flush()
    return sent


def test_frames_round_trip_through_the_raw_log(tmp_path):
    store = RunStore(tmp_path)
    sent = fill(store, 50)
    store.append_raw(store.take_raw_id(), 7, "p", [b"only-one"], ("malformed", "x", *[None] * 5))
    store.flush()
    store.close()
    recs = list(iter_raw(tmp_path))
    assert [[bytes(f) for f in r.frames] for r in recs[:50]] == sent
    assert [bytes(f) for f in recs[50].frames] == [b"only-one"]
    assert [bytes(f) for f in read_raw(tmp_path, 17).frames] == sent[16]
    conn = open_readonly(tmp_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT status, error FROM raw WHERE id = 51").fetchone() == (
        "malformed",
        "x",
    )


def test_reopen_continues_ids(tmp_path):
    s1 = RunStore(tmp_path)
    fill(s1, 3)
    s1.close()
    s2 = RunStore(tmp_path)
    assert s2.reopened and s2.take_raw_id() == 4 and s2.unindexed == [] and s2.torn is None
    s2.close()


def test_records_past_the_index_are_recovered_and_a_torn_tail_cut(tmp_path):
    store = RunStore(tmp_path)
    fill(store, 10)
    store.close()
    # A crash after the log was written but before the index committed: drop index rows 8-10,
    # and leave half a record at the end of the log.
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    conn.execute("DELETE FROM raw WHERE id > 7")
    conn.commit()
    conn.close()
    other = RunStore(tmp_path / "other")  # a real record, of which only 40 bytes made it
    fill(other, 1)
    other.close()
    seg = segment_path(tmp_path, 1)
    whole = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(segment_path(tmp_path / "other", 1).read_bytes()[:40])
    reopened = RunStore(tmp_path)
    assert [r.raw_id for r in reopened.unindexed] == [8, 9, 10]
    assert reopened.torn.endswith("cut short")
    assert seg.stat().st_size == whole and reopened.take_raw_id() == 11
    reopened.close()


def test_a_damaged_record_is_named(tmp_path):
    store = RunStore(tmp_path)
    fill(store, 3)
    store.close()
    seg = segment_path(tmp_path, 1)
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(RawLogError, match="segment 1 offset .*: CRC mismatch"):
        list(scan(tmp_path))


def test_write_errors_are_retried_not_dropped(tmp_path):
    store = RunStore(tmp_path)
    store.submit("event", (0, None, "x", None, "{}", "ingest"))
    store.flush()
    blocker = sqlite3.connect(store.path)  # holds the write lock, as a full disk would fail
    blocker.execute("BEGIN EXCLUSIVE")
    store.submit("event", (1, None, "y", None, "{}", "ingest"))
    wait_for(lambda: store.last_error, 15, what="the writer to meet the locked database")
    assert "locked" in store.last_error
    blocker.rollback()
    blocker.close()
    store.flush(timeout=30)
    assert store.last_error is None
    store.close()
    kinds = [k for (k,) in open_readonly(tmp_path).execute("SELECT kind FROM events")]
    assert kinds == ["x", "y"]


def test_a_row_sqlite_refuses_is_left_out_and_recorded_and_the_rest_written(tmp_path):
    """A bug upstream hands the writer rows SQLite refuses (a NULL where NOT NULL, a list):
    the batch is not retried for ever behind them; the other rows are written, and each
    refused row is recorded as an event with its error."""
    store = RunStore(tmp_path)
    fill(store, 3, flush=False)
    store.submit("event", (1, None, "fine", None, "{}", "ingest"))
    store.submit("event", (2, None, None, None, "{}", "ingest"))  # kind is NOT NULL
    store.submit("event", (3, None, "a list", None, [1, 2], "ingest"))
    store.submit("event", (4, None, "also fine", None, "{}", "ingest"))
    store.submit("event", (2**64 - 1, None, "beyond 64 bits", None, "{}", "ingest"))
    store.submit("event", (5, None, "complex", None, "{}", 1j))  # cannot even be sent
    # a message whose index values SQLite cannot hold: it stays in the log and indexed
    beyond = ("ok", None, "p", "s", 2**64 - 1, "heartbeat", 1)
    store.append_raw(store.take_raw_id(), 5, "p", frames_of(9), beyond)
    store.flush(30)
    assert store.rows_refused == 5 and store.last_error is None
    store.close()
    conn = open_readonly(tmp_path)
    events = conn.execute("SELECT kind, detail FROM events ORDER BY id").fetchall()
    kinds = [k for k, _ in events]
    assert [k for k in kinds if k != "store_row_refused"] == ["fine", "also fine"]
    refusals = [d for k, d in events if k == "store_row_refused"]
    assert len(refusals) == 5
    assert sum("cannot encode complex" in d and "1j" in d for d in refusals) == 1
    assert sum("NOT NULL constraint failed: events.kind" in d for d in refusals) == 1
    assert sum("TypeError" in d for d in refusals) == 2  # the list, the complex number
    assert sum("OverflowError" in d for d in refusals) == 2
    rows = conn.execute("SELECT id, status, error, seq FROM raw ORDER BY id").fetchall()
    assert [r[:2] for r in rows] == [(1, "ok"), (2, "ok"), (3, "ok"), (4, "malformed")]
    assert rows[3][2].startswith("index row refused: OverflowError") and rows[3][3] is None
    assert [bytes(f) for f in read_raw(tmp_path, 4).frames] == frames_of(9)  # whole
    conn.close()


def test_the_writer_finishes_what_it_received_after_the_monitor_is_killed(tmp_path):
    """SIGKILL of the process that owns the store, while its writer is stuck on a locked
    database with 300 messages received: the writer writes them all once the lock goes (with
    the killed process), then exits; a store reopened on the run waits for it."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path[:0] = sys.argv[2:]\n"
            "from test_store import killed_with_a_stuck_writer\n"
            "killed_with_a_stuck_writer(sys.argv[1])\n",
            str(tmp_path),
            str(Path(__file__).parent),
            str(REPO / "tests"),  # conftest
        ],
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL
    reopened = RunStore(tmp_path)  # waits for the orphaned writer's lock
    try:
        (indexed,) = open_readonly(tmp_path).execute("SELECT count(*) FROM raw").fetchone()
        assert (indexed, reopened.unindexed, reopened.torn) == (303, [], None)
        assert reopened.take_raw_id() == 304
    finally:
        reopened.close()


def killed_with_a_stuck_writer(run_dir: str) -> None:
    store = RunStore(run_dir)
    fill(store, 3)
    blocker = sqlite3.connect(store.path)  # holds the write lock: the writer retries
    blocker.execute("BEGIN EXCLUSIVE")
    fill(store, 300, flush=False)
    wait_for(lambda: store.last_error, 30, what="the writer to meet the locked database")
    assert "locked" in store.last_error
    time.sleep(2)  # the local pipe hands the writer the rest (300 small messages)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_writer_that_dies_is_restarted_and_records_everything_once(tmp_path):
    """The writer is killed (the OOM killer, a bug) with records in the log that it could not
    commit (the database is locked): the new writer cuts them off, the store sends every
    batch not reported committed again, and each message is in the run exactly once."""
    store = RunStore(tmp_path)
    sent = fill(store, 100)
    blocker = sqlite3.connect(store.path)
    blocker.execute("BEGIN IMMEDIATE")  # the writer logs what it gets, then cannot commit
    sent += fill(store, 200, flush=False)
    wait_for(lambda: store.last_error, 30, what="the writer to meet the locked database")
    wait_for(lambda: sum(1 for _ in scan(tmp_path)) > 100, 10, what="records past the commit")
    dead = store._proc
    dead.kill()
    wait_for(lambda: store._proc is not dead, 15, what="a new writer")
    blocker.rollback()
    blocker.close()
    store.flush(60)
    wait_for(lambda: store.last_error is None, 15, what="the error to clear")
    assert store.writer_restarts == 1 and store.backlog_bytes == 0
    store.close()
    records = list(scan(tmp_path))
    assert [r.raw_id for r in records] == list(range(1, 301))  # the log: each once, in order
    assert all(
        [bytes(f) for f in r.frames] == frames for r, frames in zip(records, sent, strict=True)
    )
    conn = open_readonly(tmp_path)
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM raw").fetchone() == (300, 300)
    (detail,) = conn.execute(
        "SELECT detail FROM events WHERE kind = 'store_writer_restarted'"
    ).fetchone()
    assert '"exit_code": -9' in detail
    conn.close()


def test_a_writer_killed_among_rixs_images_gets_them_again_through_the_ring(tmp_path):
    """Large frames travel in the shared ring: after a restart the ring starts afresh and the
    images not reported committed are placed in it again, whole."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 2**16, (1024, 1024), dtype=np.uint16) for _ in range(24)]

    async def record() -> RunStore:
        store = RunStore(tmp_path)
        for k, image in enumerate(images):
            store.append_raw(store.take_raw_id(), k, "spectrometer", [b"r", b"h%d" % k, image], OK)
            await asyncio.sleep(0)
            if k == 11:
                store._proc.kill()  # with images in the ring, some written, some not
        await asyncio.to_thread(store.flush, 60)
        return store

    store = asyncio.run(record())
    assert store.writer_restarts == 1
    store.close()
    assert [r.raw_id for r in scan(tmp_path)] == list(range(1, 25))
    for k, image in enumerate(images):
        assert bytes(read_raw(tmp_path, k + 1).frames[2]) == image.tobytes()


def test_a_writer_that_dies_again_soon_is_not_restarted(tmp_path):
    store = RunStore(tmp_path)
    fill(store, 3)
    store._proc.kill()
    wait_for(lambda: store.writer_restarts == 1, 30, what="the first restart")
    fill(store, 3)
    store._proc.kill()  # again, within a minute: what it is given makes it fail
    wait_for(lambda: "not restarted" in (store.last_error or ""), 15, what="giving up")
    assert "exited with code -9 again" in store.last_error
    with pytest.raises(StoreError, match="did not commit"):
        store.flush(timeout=1)
    store.close()
    assert store_rows(tmp_path) == 6


def store_rows(run_dir: Path) -> int:
    conn = open_readonly(run_dir)
    try:
        return conn.execute("SELECT count(*) FROM raw").fetchone()[0]
    finally:
        conn.close()


def test_a_restarted_writer_cuts_the_log_and_skips_what_was_committed(tmp_path):
    """Batch 0 committed; batch 1 logged, never committed: a writer restarted for the same
    monitor (same token) cuts batch 1 off the log, and batch 0 sent again is not written
    twice. A writer for another monitor cuts nothing."""
    RunStore(tmp_path).close()  # the schema

    def batch(number: int, first: int) -> list:
        ops = []
        for k in range(first, first + 10):
            frames = frames_of(k)
            sizes = [nbytes(f) for f in frames]
            ops.append((RAW, (k, 0, "p", frames, sizes, OK, False), sum(sizes)))
        return unpack(pack(ops, None, number))

    def raw_ids() -> list[int]:
        return [r.raw_id for r in scan(tmp_path)]

    writer = BatchWriter(tmp_path, lambda report: None, "monitor-a")
    writer.write(writer.fresh(batch(0, 1)))
    writer._append_to_log(batch(1, 11))  # in the log; the writer dies before its commit
    writer.close()
    assert raw_ids() == list(range(1, 21))
    restarted = BatchWriter(tmp_path, lambda report: None, "monitor-a")
    assert restarted.committed == 0 and raw_ids() == list(range(1, 11))
    for number, first in ((0, 1), (1, 11)):  # everything not reported committed, again
        restarted.write(restarted.fresh(batch(number, first)))
    restarted._append_to_log(batch(2, 21))  # and dies again before a commit
    restarted.close()
    assert raw_ids() == list(range(1, 31)) and store_rows(tmp_path) == 20
    third = BatchWriter(tmp_path, lambda report: None, "monitor-a")
    assert third.committed == 1 and raw_ids() == list(range(1, 21))
    third.write(third.fresh(batch(0, 1)))  # committed already: the mark stays at 1
    third.close()
    assert BatchWriter(tmp_path, lambda report: None, "monitor-a").committed == 1
    assert store_rows(tmp_path) == 20
    third = BatchWriter(tmp_path, lambda report: None, "monitor-a")
    third.write(third.fresh(batch(2, 21)))
    third.close()
    assert raw_ids() == list(range(1, 31)) and store_rows(tmp_path) == 30
    # A new monitor on this run: its writer cuts nothing (the store indexes what lies past
    # the index when it opens the run: test_records_past_the_index_are_recovered_...).
    assert BatchWriter(tmp_path, lambda report: None, "monitor-b").committed == -1
    assert raw_ids() == list(range(1, 31))


def test_a_run_recorded_by_a_live_process_is_refused_at_once(tmp_path):
    """Two writers must never share a run: the second is told who holds it, without waiting
    (a writer whose process was killed is waited for instead, above)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from operando.store import RunStore\n"
            "store = RunStore(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n"
            "store.close()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        t0 = time.monotonic()
        with pytest.raises(
            StoreError, match=f"being recorded by another process .monitor pid {holder.pid}"
        ):
            RunStore(tmp_path)
        assert time.monotonic() - t0 < 5
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    RunStore(tmp_path).close()  # free again once it has closed


def test_large_frames_go_through_the_shared_ring_and_come_back_whole(tmp_path):
    """8 MB frames (a RIXS image) are copied into the ring once and written from there; one
    larger than the ring, or with the ring full, takes the pipe. Every byte arrives."""
    ring = Ring(32 << 20)
    reader = memoryview(mmap.mmap(ring.fd, 0, prot=mmap.PROT_READ))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 2**16, (2048, 2048), dtype=np.uint16)
    huge = rng.integers(0, 255, 40 << 20, dtype=np.uint8)
    messages = [
        [b"topic", b"header", image, np.arange(2048.0)],  # into the ring
        [b"topic", b"header", np.arange(256.0)],  # small: in the joined part
        [b"topic", b"header", huge],  # larger than the ring: a part of its own
        *([[b"t", b"h", image]] * 4),  # the ring fills: the fourth takes the pipe
    ]
    ops = [
        (RAW, (k, 0, "link", m, [nbytes(f) for f in m], OK, False), sum(map(nbytes, m)))
        for k, m in enumerate(messages)
    ]
    parts = pack(ops, ring)
    assert len(parts) == 2 + 2  # the huge frame and the image that found no room
    first, *back = unpack(parts, reader)
    assert tuple(first) == (BATCH, -1, 0)
    assert tuple(back[-1]) == (RING_TO, ring.head, 0)
    for (_, params, _), sent in zip(back, messages, strict=False):
        pieces, sizes = params[3], params[4]
        assert b"".join(pieces) == b"".join(memoryview(f).cast("B") for f in sent)
        assert sizes == [nbytes(f) for f in sent]
    ring.free_to = ring.head  # the writer has written them: the ring takes frames again
    assert ring.place(image, image.nbytes) >= 0
    reader.release()
    ring.close()


def test_a_store_records_rixs_images_exactly(tmp_path):
    """Through the real writer process, on an event loop as the monitor uses it."""
    image = np.random.default_rng(2).integers(0, 2**16, (2048, 2048), dtype=np.uint16)

    async def record() -> RunStore:
        store = RunStore(tmp_path)
        for k in range(20):
            frames = [b"rixs_rows/x", b"h%d" % k, image]
            store.append_raw(store.take_raw_id(), k, "spectrometer", frames, OK)
            await asyncio.sleep(0)
        await asyncio.to_thread(store.flush, 60)
        return store

    store = asyncio.run(record())
    # they went through the ring: the first 16 always (128 MiB), the rest as the writer frees
    # room in time (one that finds none takes the pipe; seen once in a full run)
    assert store._ring.head >= 16 * image.nbytes
    store.close()
    for k in range(20):
        frames = read_raw(tmp_path, k + 1).frames
        assert bytes(frames[1]) == b"h%d" % k and bytes(frames[2]) == image.tobytes()


def test_a_run_recorded_before_event_origins_keeps_the_monitors_events_on_reprocess(tmp_path):
    """Schema 3 had no ``origin`` column: the monitor's events are recognised by their kind,
    and clearing the derived tables (reprocess) keeps them."""
    old = sqlite3.connect(tmp_path / "run.sqlite")
    old.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, recv_ns INTEGER NOT NULL, "
        "t REAL, kind TEXT NOT NULL, link TEXT, detail TEXT NOT NULL)"
    )
    for kind in ("trigger", "gap", "spot_change", "malformed"):
        old.execute("INSERT INTO events (recv_ns, kind, detail) VALUES (1, ?, '{}')", (kind,))
    old.commit()
    old.close()
    store = RunStore(tmp_path)
    store.clear_derived()
    store.close()
    conn = open_readonly(tmp_path)
    kept = conn.execute("SELECT kind, origin FROM events ORDER BY id").fetchall()
    conn.close()
    assert kept == [("trigger", "monitor"), ("spot_change", "monitor")]
