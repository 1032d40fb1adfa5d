"""The bluesky driver: a real RunEngine with ophyd.sim devices publishing through a real
bluesky 0MQ Proxy on 127.0.0.1, read as XAS scans by a live monitor."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
from conftest import (
    driver_endpoints,
    free_ports,
    live_cell_experiment,
    start_live_cell,
    store_count,
    wait_for,
)
from operando.drivers.bluesky import DocumentError, parse_message

import operando
from operando.protocol import decode
from operando.store import open_readonly, read_raw


def refused(run) -> list[tuple[str, str]]:
    """(what, why) of each refusal the driver sent the run."""
    with operando.open_run(run) as r:
        ev = r.events().query("kind == 'driver_refused'")
    return [(d["what"], d["why"]) for d in map(json.loads, ev["detail"])]


def _mn_l(e: float, centre: float) -> float:
    return float(0.1 + np.arctan(e - centre) / np.pi + 0.5 + 2.0 * np.exp(-((e - centre) ** 2)))


def test_messages_are_parsed_and_pickle_is_refused_with_the_fix():
    doc = {"uid": "abc", "time": 1.0, "x": [1, 2]}
    assert parse_message(b" ".join([b"", b"start", msgpack.packb(doc)])) == (b"", "start", doc)
    assert parse_message(b" ".join([b"p1", b"stop", json.dumps(doc).encode()]))[2] == doc
    import msgpack_numpy

    arr = {"data": {"spectrum": np.linspace(0, 1, 5)}}
    got = parse_message(b" ".join([b"", b"event", msgpack_numpy.packb(arr)]))[2]
    np.testing.assert_array_equal(got["data"]["spectrum"], np.linspace(0, 1, 5))
    for protocol in (2, 4, 5):
        with pytest.raises(DocumentError, match=r"start: .*serializer=msgpack.packb"):
            parse_message(b" ".join([b"", b"start", pickle.dumps(doc, protocol=protocol)]))
    with pytest.raises(DocumentError, match="payload is not msgpack"):
        parse_message(b" start " + msgpack.packb(doc)[:-3])
    with pytest.raises(DocumentError, match="expected 'prefix name payload'"):
        parse_message(b"nospaces")


def test_a_document_of_the_wrong_shape_is_refused_not_fatal():
    from operando.drivers.base import DriverOptions
    from operando.drivers.bluesky import BlueskyDocuments

    opts = DriverOptions("s", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    driver = BlueskyDocuments(opts, "tcp://127.0.0.1:3")

    def send(name: str, doc: dict) -> None:
        asyncio.run(driver.handle(b" ".join([b"", name.encode(), msgpack.packb(doc)])))

    send("start", {"uid": "r1", "time": 1.0})
    send("event", {"data": {}, "time": 1.0})  # no descriptor: refused, the driver goes on
    assert driver.counts["refused"] == 1 and "KeyError" in driver.last_refusal
    send("descriptor", {"uid": "d1", "run_start": "r1"})
    send("stop", {"run_start": "r1"})
    assert driver.runs == {} and driver.descriptor_run == {}  # nothing kept after the stop


@pytest.mark.slow
def test_runengine_scans_through_a_proxy_reach_the_monitor(tmp_path, processes):
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import Publisher
    from bluesky.plans import count, scan
    from ophyd.sim import SynAxis, SynSignal

    cfg, path = live_cell_experiment(tmp_path, "spectrometer")
    run = tmp_path / "run"
    start_live_cell(processes, cfg, path, run, tmp_path)
    p_in, p_out = free_ports(2)
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bluesky.commandline.zmq_proxy",
            "--in-address",
            f"127.0.0.1:{p_in}",
            "--out-address",
            f"127.0.0.1:{p_out}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        driver = processes(
            "driver",
            "bluesky",
            "--proxy",
            f"tcp://127.0.0.1:{p_out}",
            "--channel",
            "I0=i0_monitor",
            "--spot",
            "B2",
            *driver_endpoints(cfg, "spectrometer"),
            log=tmp_path / "bluesky.log",
        )
        rows = "SELECT count(*) FROM potentiostat"
        wait_for(lambda: store_count(run, rows) >= 2, 60, what="cell rows")
        time.sleep(1.0)  # the driver subscribes to the proxy once the monitor has it

        energy = SynAxis(name="energy")
        tey = SynSignal(func=lambda: _mn_l(energy.position, 641.0), name="tey")
        tfy = SynSignal(func=lambda: 0.8 * _mn_l(energy.position, 642.0), name="tfy")
        i0 = SynSignal(func=lambda: 1.0 + 0.001 * energy.position, name="i0_monitor")
        RE = RunEngine({})
        emitted: list[tuple[str, dict]] = []
        RE.subscribe(lambda name, doc: emitted.append((name, doc)))
        publishers = [
            Publisher(f"127.0.0.1:{p_in}", serializer=msgpack.packb),
            Publisher(f"127.0.0.1:{p_in}", serializer=lambda d: json.dumps(d).encode()),
            Publisher(f"127.0.0.1:{p_in}"),  # bluesky's default: pickle
        ]
        time.sleep(1.0)  # PUB -> proxy connections settle before the first document
        for pub in publishers:
            token = RE.subscribe(pub)
            RE(scan([tey, tfy, i0], energy, 635.0, 650.0, 31), sample="LNMO")
            RE.unsubscribe(token)
        # a fly scan: each event carries the whole spectrum as arrays (msgpack-numpy)
        import msgpack_numpy

        e_axis = np.linspace(635.0, 650.0, 61)
        fly_e = SynSignal(func=lambda: e_axis, name="energy")
        fly_tey = SynSignal(func=lambda: np.array([_mn_l(x, 643.0) for x in e_axis]), name="tey")
        arrays = Publisher(f"127.0.0.1:{p_in}", serializer=msgpack_numpy.packb)
        time.sleep(0.5)
        RE.subscribe(arrays)
        RE(count([fly_e, fly_tey], num=2))
        wait_for(
            lambda: store_count(run, "SELECT count(*) FROM alignment WHERE partial = 0") == 4,
            60,
            what="two step scans and two fly-scan events aligned",
        )
        time.sleep(1.0)
        assert store_count(run, "SELECT count(*) FROM spectra") == 4  # pickle: nothing
        assert (
            "never unpickles" in driver.output() and "serializer=msgpack.packb" in driver.output()
        )
        # a count plan (no energy): no spectrum, and the run says so, as it says each pickle
        token = RE.subscribe(publishers[0])
        RE(count([tey, i0], num=3))
        RE.unsubscribe(token)
        wait_for(lambda: any("count" in w for w, _ in refused(run)), 30, what="count refused")
        whys = [why for what, why in refused(run) if "(count," in what]
        assert len(whys) == 1 and "no energy field in its events" in whys[0]
        pickles = [why for what, why in refused(run) if what.startswith("a bluesky document")]
        assert pickles and all("serializer=msgpack.packb" in why for why in pickles)
        for pub in (*publishers, arrays):
            pub.close()
    finally:
        proxy.terminate()
        proxy.wait(10)

    conn = open_readonly(run)
    try:
        got = conn.execute("SELECT raw_id, edge, spot_id FROM spectra ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [(edge, spot) for _, edge, spot in got] == [("Mn-L", "B2")] * 4
    step_events = [d for n, d in emitted if n == "event" and "tey" in d["data"]][:31]
    msg = decode(read_raw(run, got[0][0]).frames)
    # tey/tfy recognised, i0_monitor mapped, the rest (the motor's setpoint) kept as it is
    assert set(msg.header.channels) == {"TEY", "TFY", "I0", "energy_setpoint"}
    np.testing.assert_allclose(msg.arrays["energy"], [d["data"]["energy"] for d in step_events])
    np.testing.assert_allclose(msg.arrays["TEY"], [d["data"]["tey"] for d in step_events])
    np.testing.assert_allclose(msg.arrays["point_t"], [d["time"] for d in step_events])
    assert msg.header.extra["sample"] == "LNMO" and msg.header.extra["exit_status"] == "success"
    fly = decode(read_raw(run, got[3][0]).frames)
    np.testing.assert_allclose(fly.arrays["energy"], e_axis)
