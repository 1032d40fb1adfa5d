"""Gap refill: drivers keep what they sent, the monitor asks again for what it missed.

From the book-keeping (sequence tracker, replay buffer) through a real Publisher on 127.0.0.1
to real processes killed with SIGKILL: at the end every sequence number is recorded or listed
as lost, and none is lost while the drivers' buffers cover the outage.
"""

from __future__ import annotations

import asyncio
import signal
import time
import tracemalloc

import numpy as np
import zmq
import zmq.asyncio
from conftest import (
    cli,
    free_ports,
    inspect_json,
    live_cell_experiment,
    recorded_events,
    seqs_by_session,
    sim_potentiostat,
    store_count,
    wait_for,
)

from operando import transport
from operando.protocol import Heartbeat, RIXSRows, XASScan, decode
from operando.rawlog import headers, segment_path
from operando.replaybuffer import ReplayBuffer, ReplayLimits
from operando.sequence import Arrival, SequenceTracker
from operando.store import lost_ranges, open_readonly
from operando.transport import Publisher, configure


def from_spool(buf: ReplayBuffer, session: str, first: int, last: int) -> dict[int, list[bytes]]:
    """Every message the spool holds of first..last, read as a refill reads them."""
    spooled = buf.spool_thread.submit(buf.spooled, session, first, last).result()
    try:
        return spooled.read(sorted(spooled.places))
    finally:
        spooled.close()


def test_a_refill_after_the_source_restarted_fills_the_old_session():
    t = SequenceTracker()
    for seq in (0, 1, 4):
        t.observe("a", seq)
    assert t.missing == [[2, 3]]
    assert t.observe("b", 0).arrival is Arrival.NEW_SESSION
    # the old session's missing messages arrive (resent from the driver's spool)
    assert t.is_missing("a", 2) and not t.is_missing("a", 1)
    assert t.observe("a", 2).arrival is Arrival.OUT_OF_ORDER
    assert t.session == "b"  # a late message of "a" does not flip the current session
    assert t.observe("a", 2).arrival is Arrival.DUPLICATE
    # the restarted driver says "a" went on to seq 7: 5-7 become a gap of "a"
    gap = t.expect("a", 7)
    assert (gap.first, gap.last, gap.count) == (5, 7, 3)
    assert t.any_missing("a", 3, 6) and t.outstanding == 4  # 3 and 5-7
    for seq in (3, 5, 6, 7):
        assert t.observe("a", seq).arrival is Arrival.OUT_OF_ORDER
    assert t.outstanding == 0 and t.lost == 5 and t.recovered == 5
    assert t.expect("a", 7) is None  # nothing more to expect
    assert t.observe("b", 1).arrival is Arrival.IN_ORDER


def test_replay_buffer_bounds_and_spool(tmp_path):
    frames = [[b"topic", f"header {i}".encode(), np.full(100, i, np.float64)] for i in range(50)]
    buf = ReplayBuffer("s1", ReplayLimits(messages=10, bytes=10**9, spool=tmp_path))
    for i, f in enumerate(frames):
        buf.add(i, f)
    found, last = buf.from_memory("s1", 0, -1)
    assert sorted(found) == list(range(40, 50)) and last == 49  # the newest ten
    assert found[45] == [bytes(x) for x in frames[45]]
    st = buf.status()
    assert (st["in_memory"], st["oldest_in_memory"], st["newest"]) == (10, 40, 49)
    # what memory no longer holds is on disk
    disk = from_spool(buf, "s1", 0, 39)
    assert sorted(disk) == list(range(40)) and disk[3][1] == b"header 3"
    buf.close()
    # the next process of the driver finds the previous session and its last seq
    again = ReplayBuffer("s2", ReplayLimits(messages=10, spool=tmp_path))
    assert again.previous == ("s1", 49)
    assert sorted(from_spool(again, "s1", 45, -1)) == [45, 46, 47, 48, 49]
    again.close()
    # a bytes bound evicts too
    small = ReplayBuffer("s3", ReplayLimits(messages=1000, bytes=3 * 900))
    for i, f in enumerate(frames):
        small.add(i, f)
    assert sorted(small.from_memory("s3", 0, -1)[0]) == [47, 48, 49]
    small.close()


def test_a_torn_spool_tail_still_gives_the_intact_messages(tmp_path):
    buf = ReplayBuffer("s1", ReplayLimits(spool=tmp_path))
    for i in range(5):
        buf.add(i, [b"t", b"h" * 100])
    buf.close()
    segment = next((tmp_path / "s1").rglob("*.log"))
    with open(segment, "r+b") as f:  # killed in the middle of writing the last record
        f.truncate(segment.stat().st_size - 30)
    again = ReplayBuffer("s2", ReplayLimits(spool=tmp_path))
    assert again.previous == ("s1", 3)
    assert sorted(from_spool(again, "s1", 0, -1)) == [0, 1, 2, 3]
    again.close()


def test_a_refill_from_the_spool_reads_the_records_asked_for_by_their_headers(tmp_path):
    """Record headers lead to the records asked for: the payloads before them are not read,
    so a byte flipped in an older record (a bad disk block) does not hide the newer ones."""
    buf = ReplayBuffer("s1", ReplayLimits(messages=2, spool=tmp_path))
    for i in range(40):
        buf.add(i, [b"t", b"h%d" % i, np.full(2_000, i, np.float64)])
    buf.close()
    spool = tmp_path / "s1"
    segment, offset, length, _ = next(h for h in headers(spool) if h[3] == 5)
    with open(segment_path(spool, segment), "r+b") as f:  # a byte of record 5's array
        f.seek(offset + length - 100)
        f.write(b"\xff")
    again = ReplayBuffer("s2", ReplayLimits(spool=tmp_path))
    assert again.previous == ("s1", 39)
    found = from_spool(again, "s1", 20, 24)
    assert sorted(found) == [20, 21, 22, 23, 24] and found[22][1] == b"h22"
    assert np.frombuffer(found[22][2], np.float64).tolist() == [22.0] * 2_000
    # asked for, it is found damaged: it alone is left out (and logged)
    assert sorted(from_spool(again, "s1", 0, 9)) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    again.close()


def test_segments_found_for_a_refill_stay_readable_when_the_spool_prunes_them(tmp_path):
    buf = ReplayBuffer("s1", ReplayLimits(messages=1, spool=tmp_path))
    for i in range(6):
        buf.add(i, [b"t", b"h%d" % i])
    spooled = buf.spool_thread.submit(buf.spooled, "s1", 2, 4).result()
    for segment in (tmp_path / "s1").rglob("*.log"):
        segment.unlink()  # as the spool's rotation removes its oldest segments
    assert {seq: f[1] for seq, f in spooled.read([2, 3, 4]).items()} == {
        2: b"h2",
        3: b"h3",
        4: b"h4",
    }
    spooled.close()
    buf.close()


def test_a_refill_of_a_large_spool_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    """64 images of 1 MiB, on disk only, asked for again at once: all come back byte for byte
    and in order, while the driver's process never holds more than a few chunks of them (the
    whole refill was read into memory before it was sent, once)."""
    monkeypatch.setattr(transport, "REFILL_CHUNK_BYTES", 4 * 2**20)
    n, image = 64, (512, 1024)  # uint16 counts: 1 MiB
    axes = {"excitation": np.linspace(525.0, 540.0, 512), "emission": np.arange(1024.0)}

    async def scenario() -> int:
        ctx = zmq.asyncio.Context()
        port = free_ports(1)[0]
        limits = ReplayLimits(messages=1, bytes=1, spool=tmp_path)
        pub = Publisher(ctx, f"tcp://127.0.0.1:{port}", "rixs", hwm=4, replay=limits)
        pub.start()
        sub = ctx.socket(zmq.SUB)
        configure(sub, hwm=4)
        sub.subscribe(b"")
        sub.connect(f"tcp://127.0.0.1:{port}")

        async def receive(seqs: list[int]) -> None:
            for seq in seqs:
                frames = await asyncio.wait_for(sub.recv_multipart(), 10)
                msg = decode(frames)
                assert msg.header.seq == seq
                assert (msg.arrays["counts"] == seq).all()

        try:
            assert await pub.wait_for_subscriber(10)
            for i in range(n):
                h = RIXSRows(source="x", scan_id=f"r{i}", map_id="m", t_start_ns=0, t_end_ns=1)
                sending = pub.send(h, {**axes, "counts": np.full(image, i, np.uint16)})
                await asyncio.gather(sending, receive([i]))
            await asyncio.to_thread(pub.buffer.spool_thread.submit(lambda: None).result)
            tracemalloc.start()
            try:
                result = await pub.resend(pub.session, 0, n - 1)
                assert result == {"resent": n, "unavailable": []}
                await receive(list(range(n)))
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        finally:
            sub.close(linger=0)
            await pub.close()
            ctx.destroy(linger=0)

    peak = asyncio.run(scenario())
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MiB held during a refill of {n} MiB"


def test_resend_publishes_the_same_bytes_again():
    async def scenario():
        ctx = zmq.asyncio.Context()
        port = free_ports(1)[0]
        pub = Publisher(ctx, f"tcp://127.0.0.1:{port}", "spec", heartbeat_s=3600)
        pub.start()
        sub = ctx.socket(zmq.SUB)
        configure(sub)
        sub.subscribe(b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        try:
            assert await pub.wait_for_subscriber(10)
            for i in range(5):
                h = XASScan(source="x", scan_id=f"s{i}", t_start_ns=0, t_end_ns=1, channels=())
                await pub.send(h, {"energy": np.arange(4.0) + i})
            first = [await asyncio.wait_for(sub.recv_multipart(), 5) for _ in range(5)]
            result = await pub.resend(pub.session, 1, 3)
            again = [await asyncio.wait_for(sub.recv_multipart(), 5) for _ in range(3)]
            assert result == {"resent": 3, "unavailable": []}
            assert again == first[1:4]  # byte for byte, with their original seq
            assert [decode(f).header.seq for f in again] == [1, 2, 3]
            # beyond what was sent, or of a session never seen: said, not invented
            assert (await pub.resend(pub.session, 3, 9))["unavailable"] == [[5, 9]]
            # a range as wide as a bad seq can make it is answered from what is held, at once
            wide = await asyncio.wait_for(pub.resend(pub.session, 4, 2**63 - 1), 5)
            assert wide == {"resent": 1, "unavailable": [[5, 2**63 - 1]]}
            assert await pub.resend("other", 0, 2) == {"resent": 0, "unavailable": [[0, 2]]}
            await pub.send(Heartbeat(source="x"))  # heartbeats are kept as well
            assert pub.buffer.newest == 5
        finally:
            sub.close(linger=0)
            await pub.close()
            ctx.destroy(linger=0)

    asyncio.run(scenario())


def test_monitor_and_driver_killed_lose_nothing_the_spool_holds(tmp_path, processes):
    """SIGKILL the monitor; while it is down the potentiostat goes on publishing to nobody,
    then is SIGKILLed too. Restart both: the driver announces where its killed process
    ended, the monitor asks for everything it missed, the spool sends it, nothing is lost."""
    cfg, path = live_cell_experiment(tmp_path)
    run = tmp_path / "run"
    spool = tmp_path / "spool"
    monitor_args = ("monitor", "--config", str(path), "--run-dir", str(run))
    driver_args = sim_potentiostat(
        cfg,
        path,
        "--speed",
        "20",
        "--spool",
        str(spool),
        "--state-file",
        str(tmp_path / "cell.json"),
    )
    rows = "SELECT count(*) FROM potentiostat"
    monitor = processes(*monitor_args, log=tmp_path / "mon1.log")
    driver = processes(*driver_args, log=tmp_path / "pot1.log")
    wait_for(lambda: store_count(run, rows) >= 60, 60, what="rows before the crash")
    monitor.stop(signal.SIGKILL)
    time.sleep(2.0)  # the driver publishes to nobody
    driver.stop(signal.SIGKILL)
    monitor = processes(*monitor_args, log=tmp_path / "mon2.log")
    driver = processes(*driver_args, log=tmp_path / "pot2.log")
    wait_for(
        lambda: (
            store_count(run, "SELECT count(DISTINCT session) FROM raw WHERE seq IS NOT NULL") >= 2
        ),
        60,
        what="the restarted driver",
    )

    def nothing_missing() -> bool:  # no hole, and the tail the restarted driver announced
        conn = open_readonly(run)
        try:
            announced = conn.execute("SELECT count(*) FROM events WHERE kind = 'gap'").fetchone()
            return announced[0] > 0 and not any(lost_ranges(conn, "potentiostat").values())
        finally:
            conn.close()

    wait_for(
        nothing_missing,
        60,
        what="every message of both driver processes recorded",
        show=lambda: (
            f"{seqs_by_session(run, 'potentiostat')}\n"
            f"{recorded_events(run, 'gap')}\n{recorded_events(run, 'refill')}\n"
            f"{recorded_events(run, 'gap_unrecoverable')}\n{(tmp_path / 'mon2.log').read_text()}"
        ),
    )
    assert driver.stop(signal.SIGINT) == 0
    s = inspect_json(run)
    pot = s["sources"]["potentiostat"]
    assert pot["lost"] == 0 and pot["lost_ranges"] == {}, pot
    assert pot["refilled"] >= 20, pot  # ~2 s at 20x, and the killed driver's tail
    refills = recorded_events(run, "refill")
    assert refills and all(r["unavailable"] == [] for r in refills)
    assert recorded_events(run, "gap_unrecoverable") == []
    tails = [g for g in recorded_events(run, "gap") if g.get("tail")]
    assert tails, "the restarted driver announced its previous session's end"
    sessions = seqs_by_session(run, "potentiostat")
    assert len(sessions) == 2 and all(n == top for n, top in sessions.values()), sessions
    # the refilled rows are in the cell record: no hole in time
    conn = open_readonly(run)
    t = np.array([r for (r,) in conn.execute("SELECT t FROM potentiostat ORDER BY t")])
    conn.close()
    first_session_dt = np.diff(t)
    assert first_session_dt.max() < 5.0, first_session_dt.max()
    # never two writers on one run: a reprocess waits for no one while the monitor records
    busy = cli("reprocess", str(run), check=False, timeout=60)
    assert busy.returncode == 2 and "being recorded by another process" in busy.stderr, busy
    assert monitor.stop(signal.SIGINT) == 0
    # the raw log alone tells which messages were refills: reprocess finds the same
    cli("reprocess", str(run))
    again = inspect_json(run)["sources"]["potentiostat"]
    assert (again["refilled"], again["lost"]) == (pot["refilled"], 0), again


def test_monitor_killed_while_the_driver_runs_gets_the_missed_messages_from_memory(
    tmp_path, processes
):
    """No spool: the driver's in-memory buffer covers a 3 s monitor outage."""
    cfg, path = live_cell_experiment(tmp_path)
    run = tmp_path / "run"
    monitor_args = ("monitor", "--config", str(path), "--run-dir", str(run))
    monitor = processes(*monitor_args, log=tmp_path / "mon1.log")
    driver = processes(*sim_potentiostat(cfg, path, "--speed", "20"), log=tmp_path / "pot.log")
    rows = "SELECT count(*) FROM potentiostat"
    wait_for(lambda: store_count(run, rows) >= 40, 60, what="rows before the crash")
    monitor.stop(signal.SIGKILL)
    time.sleep(3.0)
    processes(*monitor_args, log=tmp_path / "mon2.log")
    wait_for(lambda: recorded_events(run, "refill"), 60, what="a refill")
    assert driver.stop(signal.SIGINT) == 0
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM raw WHERE kind = 'series_end'"),
        30,
        what="the end of the series",
    )
    sessions = seqs_by_session(run, "potentiostat")
    assert len(sessions) == 1 and all(n == top for n, top in sessions.values()), sessions
    pot = inspect_json(run)["sources"]["potentiostat"]
    assert pot["lost"] == 0 and pot["gaps"] == 1 and pot["refilled"] >= 20, pot
    assert pot["out_of_order"] == 0  # refills are reported as such, not one event each
