"""Drivers and monitor on separate hosts: two network namespaces joined by a veth pair.

The test makes the hosts and removes them (needs CAP_NET_ADMIN; skipped with the reason
where the machine does not allow it). Over that real network path the potentiostat's link goes
down and comes back, and the monitor is killed and restarted; every message still ends up in
the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
from conftest import (
    free_ports,
    inspect_json,
    live_cell_experiment,
    seqs_by_session,
    store_count,
    wait_for,
)

DRIVER_IP, MONITOR_IP = "10.213.0.1", "10.213.0.2"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts():
    """(driver host, monitor host): namespaces with a veth pair between them."""
    tag = f"{os.getpid() % 100000}"
    drv, mon = f"opd{tag}", f"opm{tag}"
    r = _ip("netns", "add", drv)
    if r.returncode != 0:
        pytest.skip(f"cannot create network namespaces here (needs CAP_NET_ADMIN): {r.stderr}")
    try:
        for cmd in (
            ("netns", "add", mon),
            ("link", "add", f"vd{tag}", "type", "veth", "peer", "name", f"vm{tag}"),
            ("link", "set", f"vd{tag}", "netns", drv),
            ("link", "set", f"vm{tag}", "netns", mon),
            ("-n", drv, "addr", "add", f"{DRIVER_IP}/24", "dev", f"vd{tag}"),
            ("-n", mon, "addr", "add", f"{MONITOR_IP}/24", "dev", f"vm{tag}"),
            ("-n", drv, "link", "set", f"vd{tag}", "up"),
            ("-n", mon, "link", "set", f"vm{tag}", "up"),
            ("-n", drv, "link", "set", "lo", "up"),
            ("-n", mon, "link", "set", "lo", "up"),
        ):
            r = _ip(*cmd)
            if r.returncode != 0:
                pytest.skip(f"cannot build the test network (ip {' '.join(cmd)}): {r.stderr}")
        yield drv, mon, f"vd{tag}"
    finally:
        _ip("netns", "del", drv)  # removes the veth pair with it
        _ip("netns", "del", mon)


def _to_hosts(cfg, path: Path):
    """The experiment with the potentiostat on the driver host's address."""
    pot = cfg.source("potentiostat")
    data_port, cmd_port = free_ports(2)
    pot = msgspec.structs.replace(
        pot, data=f"tcp://{DRIVER_IP}:{data_port}", command=f"tcp://{DRIVER_IP}:{cmd_port}"
    )
    cfg = msgspec.structs.replace(cfg, sources=[pot])
    path.write_bytes(msgspec.json.encode(cfg))
    return cfg


def test_across_a_real_network_a_link_down_and_a_monitor_crash_lose_nothing(
    tmp_path, two_hosts, processes
):
    drv_ns, mon_ns, veth = two_hosts
    cfg, path = live_cell_experiment(tmp_path)
    cfg = _to_hosts(cfg, path)
    pot = cfg.source("potentiostat")
    run = tmp_path / "run"
    monitor_args = ("monitor", "--config", str(path), "--run-dir", str(run))
    monitor = processes(*monitor_args, log=tmp_path / "mon1.log", netns=mon_ns)
    driver = processes(
        "driver",
        "sim-potentiostat",
        "--config",
        str(path),
        "--section",
        "potentiostat",
        "--speed",
        "20",
        "--name",
        "potentiostat",
        "--data",
        pot.data,
        "--command",
        pot.command,
        log=tmp_path / "pot.log",
        netns=drv_ns,
    )
    rows = "SELECT count(*) FROM potentiostat"
    wait_for(lambda: store_count(run, rows) >= 30, 60, what="rows over the veth pair")

    # the link goes down for 5 s and comes back
    assert _ip("-n", drv_ns, "link", "set", veth, "down").returncode == 0
    before = store_count(run, rows)
    time.sleep(5.0)
    assert store_count(run, rows) <= before + 20  # (what was in flight) nothing gets through
    assert _ip("-n", drv_ns, "link", "set", veth, "up").returncode == 0
    wait_for(lambda: store_count(run, rows) > before + 100, 60, what="rows after the link")

    # the monitor host's recorder dies and comes back: what it missed is sent again
    monitor.stop(signal.SIGKILL)
    time.sleep(2.0)
    processes(*monitor_args, log=tmp_path / "mon2.log", netns=mon_ns)
    wait_for(lambda: store_count(run, rows) > before + 200, 60, what="rows after the restart")

    assert driver.stop(signal.SIGINT) == 0
    wait_for(
        lambda: (
            all(n == top for n, top in seqs_by_session(run, "potentiostat").values())
            and store_count(run, "SELECT count(*) FROM raw WHERE kind = 'series_end'")
        ),
        60,
        what="every message recorded",
        show=lambda: (
            f"{seqs_by_session(run, 'potentiostat')}\n{(tmp_path / 'mon2.log').read_text()[-2000:]}"
        ),
    )
    s = inspect_json(run)["sources"]["potentiostat"]
    assert s["lost"] == 0 and s["refilled"] > 0, s  # the restart's gap came back by refill
