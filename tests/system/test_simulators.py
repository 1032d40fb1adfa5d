"""Simulated instruments as real processes: triggered scans, dose, damage, SOC truth."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap

import numpy as np
import pytest
import zmq
import zmq.asyncio
from conftest import cli, endpoint
from operando.drivers.base import DriverOptions
from operando.drivers.sim.sim_potentiostat import PotentiostatSettings, SimPotentiostat
from operando.drivers.sim.sim_spectrometer import CellView

from operando.align import PotentiostatHistory
from operando.protocol import ProtocolError, SeriesStart, XASScan, decode
from operando.transport import CommandClient


def test_coulomb_counting_of_measured_current_closes_a_full_cycle():
    """The monitor's own coulomb counting (noisy current, no Q column) vs the cell's truth."""
    protocol = [
        {"type": "cc", "c_rate": 1.0, "until_V": 4.2},
        {"type": "cv", "voltage_V": 4.2, "until_mA": 0.03},
        {"type": "cc", "c_rate": -1.0, "until_V": 3.0},
        {"type": "rest", "duration_s": 600},
    ]
    sim = SimPotentiostat(
        DriverOptions("p", "tcp://x", "tcp://y"),
        PotentiostatSettings(protocol=protocol, end="stop"),
    )
    hist = PotentiostatHistory()
    t = 0.0
    while not sim.controller.finished:
        rows = sim.rows(t, 600)
        t = float(rows["t"][-1])
        hist.extend(
            rows["t"], rows["Ewe"], rows["I"], rows["mode"], rows["step"], rows["cycle"]
        )  # no Q: the monitor counts coulombs itself
    cap = sim.preset.capacity_mAh
    rec = hist.record()
    soc_counted = sim.initial_soc + rec.q / cap
    assert rec.q.max() / cap > 0.6  # it really charged
    assert soc_counted[-1] == pytest.approx(sim.cell.state.soc, abs=0.01)
    assert abs(soc_counted[-1] - soc_counted[0]) < 0.05  # back where it started


def write_config(tmp_path, pstat_data, mode="triggered", extra=""):
    path = tmp_path / "sim.toml"
    path.write_text(
        textwrap.dedent(f"""
        [drivers.potentiostat]
        preset = "lnmo-liquid"
        sample_interval_s = 1.0
        protocol = [{{ type = "cc", c_rate = 1.0, until_V = 4.9 }},
                    {{ type = "rest", duration_s = 100000 }}]
        [drivers.spectrometer]
        mode = "{mode}"
        edges = ["Mn-L"]
        dwell_s = 0.05
        flux_ph_s = 3e12
        spot_area_mm2 = 0.0025
        critical_dose_Gy = 1e8
        damage_rate_per_Gy = 1e-8
        cell_data = "{pstat_data}"
        {extra}
    """)
    )
    return path


async def collect(ctx, ep, n, timeout=60.0):
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(ep)
    scans = []

    async def loop():
        while len(scans) < n:
            try:
                msg = decode(await sock.recv_multipart())
            except ProtocolError:
                continue
            if isinstance(msg.header, XASScan):
                scans.append(msg)

    try:
        await asyncio.wait_for(loop(), timeout)
    finally:
        sock.close()
    return scans


def start_simulators(tmp_path, processes, cfg, speed, p_data, p_cmd, s_data, s_cmd):
    """Both simulators as their own processes; returns the spectrometer's process."""
    common = ("--config", str(cfg), "--speed", speed, "--wait-subscriber", "0")
    processes(
        "driver",
        "sim-potentiostat",
        *common,
        "--data",
        p_data,
        "--command",
        p_cmd,
        log=tmp_path / "p.log",
    )
    return processes(
        "driver",
        "sim-spectrometer",
        *common,
        "--data",
        s_data,
        "--command",
        s_cmd,
        log=tmp_path / "s.log",
    )


def test_triggered_scans_carry_trigger_id_dose_and_damage(tmp_path, processes):
    p_data, p_cmd, s_data, s_cmd = endpoint(), endpoint(), endpoint(), endpoint()
    cfg = write_config(tmp_path, p_data)
    spec = start_simulators(tmp_path, processes, cfg, "60", p_data, p_cmd, s_data, s_cmd)

    async def scenario():
        ctx = zmq.asyncio.Context()
        client = CommandClient(ctx, s_cmd, "test", timeout_s=5.0)
        try:
            listener = asyncio.create_task(collect(ctx, s_data, 7))
            await asyncio.sleep(1.0)
            acks = []
            for k in range(6):
                acks.append(
                    await client.request(
                        "acquire", {"edge": "Mn-L", "spot": "A1", "trigger_id": f"trig-{k}"}
                    )
                )
            # the same command id again: acknowledged again, but not executed twice
            again = await client.request(
                "acquire", {"edge": "Mn-L", "spot": "A1", "trigger_id": "trig-5"}, id="fixed"
            )
            dup = await client.request(
                "acquire", {"edge": "Mn-L", "spot": "A1", "trigger_id": "trig-5"}, id="fixed"
            )
            fresh = await client.request(
                "acquire", {"edge": "Mn-L", "spot": "B2", "trigger_id": "fresh"}
            )
            bad = await client.request("acquire", {"edge": "Xx-L"})
            scans = await listener
            status = await client.request("status")
            return acks, again, dup, fresh, bad, scans, status
        finally:
            await client.close()
            ctx.destroy(linger=0)

    acks, again, dup, fresh, bad, scans, status = asyncio.run(scenario())
    assert all(a.ok for a in acks) and again.ok and dup.result == again.result
    assert not bad.ok and "unknown edge 'Xx-L'" in bad.error
    assert [s.header.trigger_id for s in scans] == [*(f"trig-{k}" for k in range(6)), "trig-5"]
    doses = [s.header.extra["sim_truth"]["dose_after_Gy"] for s in scans[:6]]
    assert np.all(np.diff(doses) > 0)  # dose accumulates on spot A1
    mn2 = [s.header.extra["sim_truth"]["fractions"]["TEY"]["Mn2+"] for s in scans[:6]]
    befores = [s.header.extra["sim_truth"]["dose_before_Gy"] for s in scans[:6]]
    damaged = [b > 1e8 for b in befores]
    assert any(damaged) and not all(damaged)
    first = damaged.index(True)
    assert mn2[first] > mn2[first - 1] + 0.01  # photoreduction above the critical dose
    assert status.result["dose_Gy"]["B2"] == 0.0 and fresh.ok  # queued; B2 still fresh
    assert spec.stop(signal.SIGTERM) == 0


def test_the_cell_goes_on_charging_past_its_last_row():
    """A scan that ends after the newest potentiostat row (the stream is late) sees the cell
    charged on by the last current, not frozen at that row: held, two scans of a CI run came
    out with the same state of charge while charging."""
    cell = CellView()
    cell.start({"capacity_mAh": 1.0, "initial_soc": 0.2}, tau_s=0.0)
    t = np.arange(0.0, 101.0)
    cell.add(t, None, np.full(t.size, 3.8), np.full(t.size, 1.0))  # 1 mA into 1 mAh: 1C
    soc, y, ewe = cell.at(np.array([50.0, 100.0, 460.0]))
    np.testing.assert_allclose(soc, 0.2 + np.array([50.0, 100.0, 460.0]) / 3600.0)
    np.testing.assert_allclose(y, soc)  # no lag configured
    assert ewe[-1] == 3.8  # the voltage is not extrapolated


def test_free_running_truth_follows_soc(tmp_path, processes):
    p_data, p_cmd, s_data, s_cmd = endpoint(), endpoint(), endpoint(), endpoint()
    cfg = write_config(tmp_path, p_data, mode="free", extra="interval_s = 60.0")
    start_simulators(tmp_path, processes, cfg, "120", p_data, p_cmd, s_data, s_cmd)

    async def scenario():
        ctx = zmq.asyncio.Context()
        try:
            return await collect(ctx, s_data, 8)
        finally:
            ctx.destroy(linger=0)

    scans = asyncio.run(scenario())
    truth = [s.header.extra["sim_truth"] for s in scans]
    socs = [t["soc"] for t in truth]
    assert np.all(np.diff(socs) > 0)  # charging at 1C
    # LNMO: surface Mn2+ grows on charge, bulk stays (almost) Mn4+
    surf = [t["fractions"]["TEY"]["Mn2+"] for t in truth]
    bulk = [t["fractions"]["TFY"]["Mn2+"] for t in truth]
    assert surf[-1] > surf[0] and max(bulk) == 0.0
    for s in scans:
        assert s.header.t_end_ns > s.header.t_start_ns
        pt = s.arrays["point_t"]
        assert pt[0] >= s.header.t_start_ns * 1e-9 and pt[-1] <= s.header.t_end_ns * 1e-9
        assert set(s.arrays) == {"energy", "I0", "TEY", "TFY", "point_t"}


def test_series_start_is_reannounced_to_late_subscribers(tmp_path, processes):
    p_data, p_cmd = endpoint(), endpoint()
    cfg = write_config(tmp_path, p_data)
    processes(
        "driver",
        "sim-potentiostat",
        "--config",
        str(cfg),
        "--speed",
        "10",
        "--wait-subscriber",
        "0",
        "--data",
        p_data,
        "--command",
        p_cmd,
        log=tmp_path / "p.log",
    )

    async def scenario():
        await asyncio.sleep(1.5)  # join well after the series started
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(p_data)
        try:
            for _ in range(200):
                msg = decode(await asyncio.wait_for(sock.recv_multipart(), 10))
                if isinstance(msg.header, SeriesStart):
                    return msg.header
        finally:
            sock.close()
            ctx.destroy(linger=0)
        return None

    start = asyncio.run(scenario())
    assert start is not None and start.reannounce
    assert start.metadata["capacity_mAh"] == 0.30 and start.metadata["chemistry"] == "lnmo"
    assert json.dumps(start.metadata)  # plain data only


@pytest.mark.parametrize("skew_s", [5.0, -5.0])
def test_clock_offset_estimated_by_ping_realigns_a_skewed_potentiostat(tmp_path, processes, skew_s):
    """A potentiostat whose clock is 5 s fast (or slow): the monitor pings it, finds the offset
    and applies it to the potentiostat's rows."""
    from conftest import endpoints, inspect_json, monitor_config

    cfg, mon_path = monitor_config(
        tmp_path, potentiostat={"clock": "ping"}, capacity_mAh=None, timeout_s=30.0
    )
    ep = endpoints(cfg)
    cfg_path = write_config(tmp_path, ep[2], mode="free", extra="interval_s = 60.0")
    run = tmp_path / "run"
    pstat = processes(
        "driver",
        "sim-potentiostat",
        "--config",
        str(cfg_path),
        "--speed",
        "1",
        "--clock-skew",
        str(skew_s),
        "--data",
        ep[2],
        "--command",
        ep[3],
        "--wait-subscriber",
        "30",
        log=tmp_path / "p.log",
    )
    mon = processes(
        "monitor",
        "--config",
        str(mon_path),
        "--run-dir",
        str(run),
        log=tmp_path / "m.log",
    )
    spec = processes(
        "driver",
        "sim-spectrometer",
        "--config",
        str(cfg_path),
        "--speed",
        "1",
        "--data",
        ep[4],
        "--command",
        ep[5],
        "--wait-subscriber",
        "30",
        log=tmp_path / "s.log",
    )
    import time

    time.sleep(14)  # the Mn L scan at 0.05 s per point takes ~18 s of a 1x clock
    for proc in (spec, pstat):
        proc.stop(signal.SIGTERM)
    assert mon.stop(signal.SIGINT) == 0
    s = inspect_json(run)
    assert s["events"].get("clock_offset") == 1
    from operando.store import open_readonly

    conn = open_readonly(run)
    (detail,) = conn.execute("SELECT detail FROM events WHERE kind = 'clock_offset'").fetchone()
    assert json.loads(detail)["offset_s"] == pytest.approx(-skew_s, abs=0.05)
    # the offset is applied: stored rows sit the skew away from the potentiostat's own clock
    (last_row,) = conn.execute("SELECT max(t) FROM potentiostat").fetchone()
    (last_sent,) = conn.execute(
        "SELECT max(t_ns) FROM raw WHERE link = 'potentiostat' AND kind = 'potentiostat_batch'"
    ).fetchone()
    assert last_row - last_sent * 1e-9 == pytest.approx(-skew_s, abs=0.3)
    conn.close()
    # the offset measured live is part of the run: reprocess derives the same tables (it
    # dropped it before, and put the rows back at the potentiostat's own skewed clock)
    import operando

    with operando.open_run(run) as r:
        live_rows, live_spectra = r.potentiostat(), r.spectra()
    cli("reprocess", str(run))
    with operando.open_run(run) as r:
        again_rows, again_spectra = r.potentiostat(), r.spectra()
    assert len(live_rows) > 10 and len(live_spectra) == len(again_spectra)
    assert np.array_equal(live_rows["t"], again_rows["t"])  # what every alignment reads
    for column in ("t_start", "t_end", "Ewe", "I"):  # spectra finished in the time, if any
        live, again = (np.asarray(d[column], float) for d in (live_spectra, again_spectra))
        assert np.allclose(live, again, equal_nan=True), column
