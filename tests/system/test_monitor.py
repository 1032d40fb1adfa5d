"""The monitor end to end over real ZeroMQ sockets on 127.0.0.1 and a real SQLite file.

Synthetic instruments publish from this process with the project's Publisher; the monitor
runs as its own process (``operando monitor``), exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import msgspec
import numpy as np
import pytest
import zmq
import zmq.asyncio
from conftest import cli, inspect_json, monitor_config, recorded_events, store_count, wait_for

from operando.demo import localize
from operando.monitor import command_monitor, query_status
from operando.protocol import MODE_CC, PotentiostatBatch, Spot, XASScan, encode
from operando.store import open_readonly, read_raw
from operando.transport import CommandError, Publisher

T0 = 1.8e9  # source clock, s


def ewe_of(t: np.ndarray) -> np.ndarray:
    return 3.5 + 0.0004 * (t - T0) + 0.01 * np.sin((t - T0) / 7.0)


class Instruments:
    """A synthetic potentiostat (10 Hz rows) and spectrometer (a scan every 5 s)."""

    def __init__(self, cfg):
        self.ctx = zmq.asyncio.Context()
        self.pstat = Publisher(self.ctx, cfg.source("potentiostat").data, "potentiostat")
        self.spec = Publisher(self.ctx, cfg.source("spectrometer").data, "spectrometer")
        self.windows: list[tuple[float, float]] = []
        self.t = T0

    async def start(self) -> None:
        self.pstat.start()
        self.spec.start()
        assert await self.pstat.wait_for_subscriber(20) and await self.spec.wait_for_subscriber(20)
        await self.pstat.start_series("p-1", "potentiostat", {"capacity_mAh": 1.0})
        await self.spec.start_series("s-1", "spectrometer", {})

    async def run(self, seconds: float, *, skip_pstat: set[int] = frozenset()) -> None:
        """``seconds`` of source time; batches of 1 s; skip_pstat: batch numbers to drop."""
        for k in range(int(seconds)):
            t = self.t + np.arange(1, 11) * 0.1
            self.t = float(t[-1])
            arrays = {
                "t": t,
                "Ewe": ewe_of(t),
                "I": np.full(10, 0.5),
                "mode": np.full(10, MODE_CC, np.int8),
                "step": np.zeros(10, np.int32),
                "cycle": np.zeros(10, np.int32),
            }
            if k in skip_pstat:
                self.pstat.seq += 1  # the message is "sent" but never arrives
            else:
                await self.pstat.send(PotentiostatBatch(source="potentiostat"), arrays)
            if k % 5 == 4:
                await self.scan(self.t - 4.0, self.t - 0.5)
            await asyncio.sleep(0.002)

    async def scan(self, t0: float, t1: float) -> None:
        e = np.linspace(630, 660, 301)
        h = XASScan(
            source="spectrometer",
            scan_id=f"scan-{len(self.windows)}",
            edge="Mn-L",
            t_start_ns=int(t0 * 1e9),
            t_end_ns=int(t1 * 1e9),
            channels=("I0", "TEY"),
            spot=Spot(id="A1"),
        )
        await self.spec.send(
            h, {"energy": e, "I0": np.ones(301), "TEY": e, "point_t": np.linspace(t0, t1, 301)}
        )
        self.windows.append((t0, t1))

    async def close(self, end: bool = True) -> None:
        if end:
            await self.pstat.end_series()
            await self.spec.end_series()
        await self.pstat.close()
        await self.spec.close()
        self.ctx.destroy(linger=0)


def exact_mean(t0: float, t1: float) -> float:
    grid = np.linspace(t0, t1, 400_001)
    samples_t = np.arange(T0 + 0.1, T0 + 1000, 0.1)
    return float(np.trapezoid(np.interp(grid, samples_t, ewe_of(samples_t)), grid) / (t1 - t0))


async def wait_status(cfg, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        try:
            st = await query_status(cfg.monitor.command_endpoint, 1.0)
        except CommandError:  # a monitor still starting up: ask again
            continue
        if predicate(st):
            return st
        await asyncio.sleep(0.1)
    raise AssertionError(f"monitor status never matched: {json.dumps(st)[:2000]}")


def start_monitor(tmp_path, processes):
    """``operando monitor`` as its own process on a fresh config: (config, run dir, process)."""
    cfg, path = monitor_config(tmp_path)
    run = tmp_path / "run"
    mon = processes(
        "monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "monitor.log"
    )
    return cfg, run, mon


def test_end_to_end_every_message_recorded_and_aligned(tmp_path, processes):
    cfg, run, mon = start_monitor(tmp_path, processes)

    async def scenario():
        inst = Instruments(cfg)
        await inst.start()
        await inst.run(60)
        await inst.close()
        await wait_status(cfg, lambda s: s["spectra"]["aligned"] == len(inst.windows))
        return inst

    inst = asyncio.run(scenario())
    assert mon.stop(signal.SIGINT) == 0, mon.output()
    s = inspect_json(run)
    assert s["sources"]["potentiostat"]["messages"] >= 60 + 2  # batches + series start/end
    for src in s["sources"].values():
        assert (src["gaps"], src["malformed"], src["lost"]) == (0, 0, 0)
    assert s["potentiostat_rows"] == 600
    assert s["spectra"] == {
        "total": 12,
        "aligned": 12,
        "partial": 0,
        "unaligned": 0,
        "by_kind": {"xas_scan": 12},
    }
    conn = open_readonly(run)
    rows = conn.execute(
        "SELECT s.t_start, s.t_end, a.doc FROM spectra s JOIN alignment a "
        "ON a.spectrum_id = s.id ORDER BY s.id"
    ).fetchall()
    assert len(rows) == len(inst.windows)
    for (t0, t1, doc), (w0, w1) in zip(rows, inst.windows, strict=True):
        al = json.loads(doc)
        assert (t0, t1) == pytest.approx((w0, w1))
        assert al["ewe_mean_V"] == pytest.approx(exact_mean(w0, w1), abs=1e-9)
        # coulomb counting starts at the first row (T0 + 0.1 s): 0.5 mA, 1 mAh capacity
        assert al["soc"] == pytest.approx(0.5 * ((w0 + w1) / 2 - T0 - 0.1) / 3600, abs=1e-9)
        assert al["ewe_points_V"][0] == pytest.approx(float(ewe_of(np.array([w0]))[0]), abs=2e-4)


def test_dropped_messages_are_counted_and_recorded(tmp_path, processes):
    cfg, run, mon = start_monitor(tmp_path, processes)

    async def scenario():
        inst = Instruments(cfg)
        await inst.start()
        await inst.run(30, skip_pstat={7, 8, 20})
        await wait_status(cfg, lambda s: s["sources"]["potentiostat"]["gaps"] == 2)
        await inst.close()
        await wait_status(
            cfg, lambda s: s["spectra"]["pending"] == 0 and s["spectra"]["total"] == 6
        )

    asyncio.run(scenario())
    assert mon.stop(signal.SIGINT) == 0
    gaps = recorded_events(run, "gap")
    conn = open_readonly(run)
    assert [(g["first"], g["last"], g["count"]) for g in gaps] == [(8, 9, 2), (21, 21, 1)]
    s = inspect_json(run)
    assert s["sources"]["potentiostat"]["gaps"] == 2 and s["sources"]["potentiostat"]["lost"] == 3
    # The scans whose window lies in a missing batch are aligned, but marked partial.
    partial = conn.execute(
        "SELECT count(*) FROM alignment WHERE partial = 1 AND reason LIKE 'potentiostat messages%'"
    ).fetchone()[0]
    assert partial >= 1


def test_malformed_frames_are_stored_marked_and_ingest_goes_on(tmp_path, processes):
    cfg, run, mon = start_monitor(tmp_path, processes)
    junk = [
        [b"garbage"],
        [b"t", b"\xc1\xc1"],
        [b"t", b'{"json": "not msgpack"}'],
        [b"t", bytes(range(256)), b"x" * 100],
        # a seq SQLite cannot hold (once it stopped the recording for good)
        [
            b"t",
            msgspec.msgpack.encode({"v": 1, "kind": "heartbeat", "source": "x", "seq": 2**64 - 1}),
        ],
    ]

    async def scenario():
        inst = Instruments(cfg)
        await inst.start()
        await inst.run(5)
        for frames in junk:  # straight onto the publisher's socket, bypassing the codec
            await inst.spec.sock.send_multipart(frames)

        async def in_sequence(scan_id: str, window_s: float, energy: np.ndarray) -> None:
            t_ns = int(inst.t * 1e9)
            bad = XASScan(
                source="spectrometer",
                session=inst.spec.session,
                seq=inst.spec.seq,
                t_ns=t_ns,
                scan_id=scan_id,
                t_start_ns=t_ns,
                t_end_ns=t_ns + int(window_s * 1e9),
                channels=(),
            )
            junk.append(encode(bad, {"energy": energy}))
            await inst.spec.send_raw(junk[-1])
            inst.spec.seq += 1

        # in sequence, but malformed: recorded so, and not "lost"
        await in_sequence("complex", 0.0, np.arange(3.0) + 1j)  # energies complex numbers
        await in_sequence("backwards", -1.0, np.arange(3.0))  # its window runs backwards
        await inst.run(10)
        await inst.close()
        await wait_status(
            cfg,
            lambda s: (
                s["sources"]["spectrometer"]["malformed"] == 7 and s["spectra"]["aligned"] == 3
            ),
        )

    asyncio.run(scenario())
    assert mon.stop(signal.SIGINT) == 0
    conn = open_readonly(run)
    bad = conn.execute(
        "SELECT id, error FROM raw WHERE status = 'malformed' ORDER BY id"
    ).fetchall()
    junk = [[bytes(f) for f in frames] for frames in junk]
    assert len(bad) == 7 and all(err for _, err in bad)
    assert "t_end_ns" in bad[-1][1]
    assert "arrays['energy']: complex128 values, expected real numbers" in bad[-2][1]
    kept = [[bytes(f) for f in read_raw(run, rid).frames] for rid, _ in bad]
    assert kept == junk  # exactly as received
    summary = inspect_json(run)
    assert summary["events"]["malformed"] == 7
    spec = summary["sources"]["spectrometer"]
    assert (spec["gaps"], spec["lost"]) == (0, 0)  # the backwards scan was received

    # a replay meets a new monitor with the same bad input, byte for byte
    replayed = localize(cfg)
    path = tmp_path / "replayed.json"
    path.write_bytes(msgspec.json.encode(replayed))
    again = tmp_path / "again"
    processes("monitor", "--config", str(path), "--run-dir", str(again), log=tmp_path / "m2.log")
    cli("replay", str(run), "--speed", "0", "--config", str(path))
    malformed = "SELECT count(*) FROM raw WHERE status = 'malformed'"
    wait_for(lambda: store_count(again, malformed) == 7, 30, what="the replayed bad input")
    conn = open_readonly(again)
    ids = [r for (r,) in conn.execute("SELECT id FROM raw WHERE status = 'malformed' ORDER BY id")]
    conn.close()
    assert [[bytes(f) for f in read_raw(again, rid).frames] for rid in ids] == junk


def test_monitor_killed_and_restarted_continues_the_run(tmp_path, processes):
    cfg, path = monitor_config(tmp_path)
    run = tmp_path / "run"
    args = ("monitor", "--config", str(path), "--run-dir", str(run))
    first = processes(*args, log=tmp_path / "monitor1.log")

    async def scenario():
        inst = Instruments(cfg)
        await inst.start()
        await inst.run(20)
        await wait_status(cfg, lambda s: s["potentiostat_rows"] == 200)
        first.stop(signal.SIGKILL)
        await inst.run(5)  # published while no monitor listens: lost to this run
        second = processes(*args, log=tmp_path / "monitor2.log")
        await wait_status(cfg, lambda s: True)
        await asyncio.sleep(0.5)
        await inst.run(20)
        await inst.close()
        st = await wait_status(
            cfg,
            lambda s: s["spectra"]["pending"] == 0 and s["sources"]["potentiostat"]["gaps"] >= 1,
        )
        return inst, second, st

    _inst, second, _st = asyncio.run(scenario())
    assert second.stop(signal.SIGINT) == 0, second.output()
    s = inspect_json(run)
    pstat = s["sources"]["potentiostat"]
    # Every batch is either recorded or listed as lost, none twice.
    assert s["potentiostat_rows"] + 10 * pstat["lost"] >= 450
    assert pstat["gaps"] >= 1 and pstat["malformed"] == 0
    assert s["events"]["monitor_restarted"] == 1
    assert s["spectra"]["aligned"] == s["spectra"]["total"] >= 7


def test_reprocess_rebuilds_the_same_derived_tables(tmp_path, processes):
    """... and keeps the monitor's own events (here a command it was sent), which no
    message holds."""
    cfg, run, mon = start_monitor(tmp_path, processes)

    async def scenario():
        inst = Instruments(cfg)
        await inst.start()
        await inst.run(25)
        await inst.spec.sock.send_multipart([b"t", b"\x00"])
        await inst.close()
        await wait_status(cfg, lambda s: s["spectra"]["aligned"] == 5)
        with pytest.raises(CommandError, match="no open alarm 7"):
            await command_monitor(cfg.monitor.command_endpoint, "acknowledge", {"alarm": 7})

    asyncio.run(scenario())
    assert mon.stop(signal.SIGINT) == 0
    before = inspect_json(run)
    (command,) = recorded_events(run, "command")
    assert command["action"] == "acknowledge" and not command["ok"]
    conn = open_readonly(run)
    docs = conn.execute("SELECT doc FROM alignment ORDER BY spectrum_id").fetchall()
    conn.close()
    out = cli("reprocess", str(run)).stdout
    assert "5 spectra (5 aligned, 0 partial)" in out
    after = inspect_json(run)
    for key in ("spectra", "potentiostat_rows", "sources", "events"):
        assert after[key] == before[key], key
    assert recorded_events(run, "command") == [command]
    conn = open_readonly(run)
    assert conn.execute("SELECT doc FROM alignment ORDER BY spectrum_id").fetchall() == docs
