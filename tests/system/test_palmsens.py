"""PalmSens MethodSCRIPT: the protocol's pure parts, our instrument simulator on a TCP port
(including its errors), and the driver through a live monitor."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest
from conftest import free_ports, store_count, wait_for
from hypothesis import example, given
from hypothesis import strategies as st
from operando.drivers.methodscript import (
    PREFIXES,
    MethodScriptError,
    constant_current_script,
    decode_value,
    encode_value,
    parse_error,
    parse_package,
)
from operando.drivers.palmsens import parse_step, potential_and_current

from operando.config import load_config, preset_path
from operando.demo import localize
from operando.protocol import MODE_CC, MODE_CV, MODE_OCV
from operando.store import open_readonly


def test_values_and_packages_follow_the_manual():
    assert decode_value("800000Am") == pytest.approx(0.01)  # the manual's example
    assert decode_value("7FFFFF6m") == pytest.approx(-0.01)
    pkg = parse_package("Pab8000E10m;ba7FFFC18u,14,288")
    assert pkg.values["ab"] == pytest.approx(3.6) and pkg.values["ba"] == pytest.approx(-1e-3)
    assert pkg.status == {"ba": 4}
    assert (
        parse_error("!0004: Line 3, Col 1") == "instrument error 0x0004 at script line 3, column 1"
    )
    for bad in ("Pab80000m", "Pzz800000Xm", "Qab800000Am", "Pab80G000Am"):
        with pytest.raises(MethodScriptError):
            parse_package(bad)
    with pytest.raises(MethodScriptError, match="expected cc:I_mA:SECONDS:VMIN:VMAX"):
        parse_step("cc:0.5:600")


@given(st.floats(min_value=-100.0, max_value=100.0, allow_nan=False))
@example(0.1796875)  # hypothesis found it in a full local run (the tolerance was 1e-6)
def test_encoded_values_decode_to_themselves(x):
    """To half a unit of the finest SI prefix whose 27 bits hold the value: a relative
    3.7e-6 at worst (0.1796875 is 179687.5 u, sent as 179688 u)."""
    encoded = encode_value(x)
    unit = PREFIXES[encoded[7]]
    assert abs(decode_value(encoded) - x) <= unit / 2 * (1 + 1e-12)
    assert decode_value(encoded) == pytest.approx(x, rel=3.8e-6, abs=1e-15)


def test_scripts_say_what_the_step_means():
    script = constant_current_script(5e-4, 1.0, 600.0, 3.0, 4.2)
    assert script[0] == "e" and script[-1] == ""
    assert "meas_loop_cp p c 500u 1 600" in script and "if p > 4200m" in script


def _simulator(processes, tmp_path, speed: str, *extra: str) -> int:
    """``operando instrument palmsens-sim`` on a free port; returns the port."""
    (port,) = free_ports(1)
    processes(
        "instrument",
        "palmsens-sim",
        "--listen",
        f"127.0.0.1:{port}",
        "--speed",
        speed,
        *extra,
        log=tmp_path / "sim.log",
    )
    return port


async def _talk(port: int, text: str, until: str) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(text.encode())
        await writer.drain()
        lines: list[str] = []
        while True:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip("\n")
            lines.append(line)
            if line == until or line.startswith("!"):
                return lines
    finally:
        writer.close()


def test_simulator_answers_like_the_device_and_refuses_unknown_commands(processes, tmp_path):
    port = _simulator(processes, tmp_path, "1000")

    async def scenario():
        for _ in range(100):  # the simulator process is starting
            try:
                return (
                    await _talk(port, "t\n", "R*"),
                    await _talk(port, "e\nvar p\nfly_to_the_moon\n\n", ""),
                    await _talk(
                        port, "\n".join(constant_current_script(1e-3, 1, 5, 2, 5)) + "\n", ""
                    ),
                )
            except OSError:
                await asyncio.sleep(0.1)
        raise AssertionError("simulator never listened")

    version, refused, ran = asyncio.run(scenario())
    assert version[-1] == "R*"
    assert refused == ["e", "!0004: Line 2, Col 1"]
    assert ran[:2] == ["e", "M0000"] and ran[-2:] == ["*", ""]
    packages = [parse_package(line) for line in ran if line.startswith("P")]
    assert len(packages) == 5 and all(p.values["ba"] == pytest.approx(1e-3) for p in packages)


@pytest.mark.slow
def test_driver_runs_the_protocol_through_a_monitor(processes, tmp_path):
    cfg = localize(load_config(preset_path("eclab-potentiostat")))
    cfg = msgspec.structs.replace(
        cfg, alignment=msgspec.structs.replace(cfg.alignment, capacity_mAh=0.45)
    )
    path = tmp_path / "experiment.json"
    path.write_bytes(msgspec.json.encode(cfg))
    run = tmp_path / "run"
    port = _simulator(processes, tmp_path, "200", "--soc", "0.2")
    processes("monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "mon.log")
    src = cfg.source("potentiostat")
    driver = processes(
        "driver",
        "palmsens",
        "--tcp",
        f"127.0.0.1:{port}",
        "--step",
        "cc:0.45:3600:3.0:3.9",
        "--step",
        "cv:3.9:120",
        "--step",
        "ocv:60",
        "--interval",
        "2",
        "--data",
        src.data,
        "--command",
        src.command,
        log=tmp_path / "driver.log",
    )
    assert driver.p.wait(120) == 0, driver.output()
    conn_rows = "SELECT count(*) FROM potentiostat"
    wait_for(lambda: store_count(run, conn_rows) > 0, 30, what="rows recorded")
    conn = open_readonly(run)
    rows = np.array(
        conn.execute("SELECT t, ewe, i, mode, step FROM potentiostat ORDER BY t").fetchall()
    )
    conn.close()
    t, _ewe, _i, mode, step = rows.T
    cc, cv, ocv = (rows[step == k] for k in range(3))
    assert set(mode[step == 0]) == {MODE_CC} and set(mode[step == 1]) == {MODE_CV}
    assert set(mode[step == 2]) == {MODE_OCV}
    np.testing.assert_allclose(cc[:, 2], 0.45, rtol=1e-6)  # 1C on 0.45 mAh, to the ppm
    # the 3.9 V limit stopped the charge before its hour: the last CC row is at the limit
    assert len(cc) < 1800 and cc[-1, 1] > 3.9 and np.all(np.diff(cc[:, 1]) > -1e-3)
    np.testing.assert_allclose(cv[:, 1], 3.9, atol=2e-3)  # the hold
    assert cv[-1, 2] < cv[0, 2]  # its current decays
    assert np.all(ocv[:, 2] == 0) and len(ocv) == 30  # 60 s at one package per 2 s
    assert np.all(np.diff(t) > 0)


def test_a_status_word_that_is_not_hex_is_refused_with_the_package():
    with pytest.raises(MethodScriptError, match="status '1x9' of ba is not hexadecimal"):
        parse_package("Pda8012345u;ba7F85E36p,1x9,288")


def test_a_package_the_monitor_would_refuse_is_refused_alone():
    """MethodSCRIPT encodes values up to ~1e26; one beyond what the monitor takes would make
    the whole batch malformed, so the driver refuses that package (a bad line) instead."""
    line = "Pda8012345m;ba7F85E36p"
    assert potential_and_current(parse_package(line), line) == pytest.approx((74.565, -5.0017e-4))
    huge = "Pda8012345E;ba7F85E36p"  # 74565 x 1e18 V
    with pytest.raises(MethodScriptError, match="potential 7.4565e.22 is not measured"):
        potential_and_current(parse_package(huge), huge)
    no_potential = "Pba7F85E36p"
    with pytest.raises(MethodScriptError, match="without a potential"):
        potential_and_current(parse_package(no_potential), no_potential)
