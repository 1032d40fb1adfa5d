"""Fault injection with real processes: a full disk, a killed store writer, a flooding publisher.

Each test ends with the same accounting: every sequence number a driver sent is in the run's
raw log (or listed as lost), and the raw log reads back without a damaged record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import zmq.asyncio
from conftest import (
    all_recorded,
    inspect_json,
    live_cell_experiment,
    monitor_config,
    recorded_events,
    sim_potentiostat,
    store_count,
    wait_for,
)

from operando.monitor import query_status
from operando.protocol import XASScan
from operando.store import iter_raw
from operando.transport import Publisher


def _flood_scan(i: int) -> XASScan:
    """Scan ``i`` of a flood: 8 KB of arrays (``FLOOD_ARRAYS``), 0.5 us windows 1 us apart."""
    return XASScan(
        source="spectrometer",
        scan_id=f"f{i}",
        t_start_ns=i * 1000,
        t_end_ns=i * 1000 + 500,
        channels=("I0", "TEY", "TFY"),
    )


@contextlib.asynccontextmanager
async def _spectrometer(cfg) -> AsyncIterator[Publisher]:
    """A spectrometer's publisher with a small send queue, its series started; the series
    ended and the publisher closed after."""
    ctx = zmq.asyncio.Context()
    pub = Publisher(ctx, cfg.source("spectrometer").data, "spectrometer", hwm=50)
    pub.start()
    try:
        assert await pub.wait_for_subscriber(20)
        await pub.start_series("flood", "spectrometer", {})
        yield pub
        await pub.end_series()
    finally:
        await pub.close()
        ctx.destroy(linger=0)


_E = np.linspace(630, 660, 256)
FLOOD_ARRAYS = {"energy": _E, "I0": np.ones(256), "TEY": _E / 600, "TFY": _E / 700}  # 8 KB


def _status(cfg) -> dict:
    try:
        return asyncio.run(query_status(cfg.monitor.command_endpoint, timeout_s=2.0))
    except Exception:
        return {}


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs of the test's own (mount needs CAP_SYS_ADMIN: skipped without it)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_raises_an_alarm_and_loses_nothing(tmp_path, small_disk, processes):
    """The run directory's disk fills up while the cell is cycled: the monitor says so (store
    error on its status, an alarm), holds what it received, makes the driver wait instead of
    dropping, and once space is freed writes everything, in order, with no torn record."""
    cfg, path = live_cell_experiment(tmp_path)
    run = small_disk / "run"
    filler = small_disk / "someone-elses-data"
    processes("monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "mon.log")
    driver = processes(*sim_potentiostat(cfg, path, "--speed", "50"), log=tmp_path / "pot.log")
    wait_for(lambda: store_count(run, "SELECT count(*) FROM potentiostat") >= 20, 60, what="rows")
    # another program fills the disk, leaving a few hundred kB
    free = shutil.disk_usage(small_disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - 300_000))

    def store_alarm() -> dict | None:
        s = _status(cfg)
        alarms = s.get("orchestration", {}).get("alarms", [])
        return s if s.get("store_error") and any(a["category"] == "store" for a in alarms) else None

    status = wait_for(store_alarm, 60, what="the monitor to report the full disk, with an alarm")
    assert "No space left" in status["store_error"] or "full" in status["store_error"]
    time.sleep(3.0)  # the driver goes on; the monitor must neither crash nor drop
    assert _status(cfg)["store_error"], "still full"
    filler.unlink()
    wait_for(lambda: _status(cfg).get("store_error") is None, 60, what="the store to recover")
    assert driver.stop(signal.SIGINT) == 0
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM raw WHERE kind = 'series_end'"),
        60,
        what="the end of the series",
    )
    assert all_recorded(run, "potentiostat")
    s = inspect_json(run)
    assert s["sources"]["potentiostat"]["lost"] == 0
    assert recorded_events(run, "store_error"), "the full disk is in the run's record"
    # the raw log reads back whole: every indexed message, no damaged record
    logged = sum(1 for _ in iter_raw(run))
    assert logged == store_count(run, "SELECT count(*) FROM raw")


def _store_writer_of(monitor_pid: int) -> int:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == monitor_pid and b"operando.store.writer_process" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no store writer process under the monitor (pid {monitor_pid})")


def test_a_killed_store_writer_is_restarted_and_loses_nothing(tmp_path, processes):
    """The run store's writer process is SIGKILLed mid-run (as the OOM killer would): the
    monitor starts a new one and sends it again what was not committed; the run records the
    restart, and ends with every message the driver sent recorded exactly once."""
    cfg, path = live_cell_experiment(tmp_path)
    run = tmp_path / "run"
    mon = processes("monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "m.log")
    driver = processes(*sim_potentiostat(cfg, path, "--speed", "50"), log=tmp_path / "pot.log")
    count_rows = "SELECT count(*) FROM potentiostat"
    wait_for(lambda: store_count(run, count_rows) >= 20, 60, what="rows")
    os.kill(_store_writer_of(mon.p.pid), signal.SIGKILL)
    status = wait_for(
        lambda: (s := _status(cfg)).get("store_writer_restarts") == 1 and s, 30, what="a restart"
    )
    rows = store_count(run, count_rows)
    wait_for(lambda: store_count(run, count_rows) > rows, 30, what="rows written after it")
    assert driver.stop(signal.SIGINT) == 0
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM raw WHERE kind = 'series_end'"),
        60,
        what="the end of the series",
    )
    assert mon.stop(signal.SIGINT) == 0
    assert status["store_error"] is None or "restarting" in status["store_error"]
    assert all_recorded(run, "potentiostat")
    assert inspect_json(run)["sources"]["potentiostat"]["lost"] == 0
    (restart,) = recorded_events(run, "store_writer_restarted")
    assert restart["exit_code"] == -signal.SIGKILL
    logged = [r.raw_id for r in iter_raw(run)]  # the log holds each message once, in order
    assert logged == sorted(set(logged))
    assert len(logged) == store_count(run, "SELECT count(*) FROM raw")


def test_a_flooding_publisher_is_slowed_down_never_dropped(tmp_path, processes):
    """A spectrometer sends 8 KB scans as fast as it can (far beyond 10x any nominal rate)
    with a small send queue: the monitor records them all; the sender is made to wait."""
    cfg, path = monitor_config(tmp_path)
    run = tmp_path / "run"
    mon = processes("monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "m.log")
    n = 20_000

    async def flood() -> tuple[float, int]:
        async with _spectrometer(cfg) as pub:
            t0 = time.perf_counter()
            for i in range(n):
                await pub.send(_flood_scan(i), FLOOD_ARRAYS)
            elapsed = time.perf_counter() - t0
        return elapsed, pub.seq

    elapsed, sent = asyncio.run(flood())
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM raw WHERE kind = 'series_end'"),
        120,
        what="the flood recorded to its end",
    )
    assert mon.stop(signal.SIGINT) == 0
    assert all_recorded(run, "spectrometer")
    spectra = store_count(run, "SELECT count(*) FROM spectra")
    assert spectra == n, f"{spectra} of {n} scans recorded ({n / elapsed:.0f} sent per s)"
    s = inspect_json(run)["sources"]["spectrometer"]
    assert s["lost"] == 0 and s["gaps"] == 0 and s["messages"] >= sent


def test_the_raw_log_cuts_a_failed_write_back_and_writes_it_again(small_disk):
    """On a full disk a flush fails part-way: the file is cut back to where it started, the
    records wait, and once there is space they land at the offsets they were given."""
    from operando.rawlog import RawLogWriter, read_record, scan

    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 40_000))
    log = RawLogWriter(small_disk / "run")
    frames = [b"topic", b"h" * 100, bytes(range(256)) * 40]  # ~10 kB a record
    written = []
    for i in range(3):
        written.append(log.append(i, i, "spectrometer", frames))
    log.flush()
    with pytest.raises(OSError):
        for i in range(3, 10):
            written.append(log.append(i, i, "spectrometer", frames))
        log.flush()
    # nothing torn on disk: the intact records are exactly those flushed before
    assert [r.raw_id for r in scan(small_disk / "run")] == [0, 1, 2]
    filler.unlink()
    log.flush()  # the waiting records, again
    assert [r.raw_id for r in scan(small_disk / "run")] == list(range(len(written)))
    for i, where in enumerate(written):
        rec = read_record(small_disk / "run", *where)
        assert rec.raw_id == i and [bytes(f) for f in rec.frames] == frames
    log.close()


def test_live_analysis_that_falls_behind_skips_spectra_says_so_and_records_them_all(
    tmp_path, processes
):
    """A flood of scans faster than the live analysis (its backlog bounded to 50 kB here):
    every scan is recorded; those the analysis could not take are counted, an event and an
    alarm say so while it is behind, and an event says how many once it caught up."""
    cfg, path = monitor_config(tmp_path)
    data = json.loads(path.read_text())
    data["analysis"] = {"live_backlog_MB": 0.05}  # six 8 KB scans
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    mon = processes("monitor", "--config", str(path), "--run-dir", str(run), log=tmp_path / "m.log")
    n, late = 3000, 3

    async def scans() -> None:
        async with _spectrometer(cfg) as pub:
            for i in range(n + late):
                if i == n:  # the analysis catches up before the last few
                    for _ in range(600):
                        status = await query_status(cfg.monitor.command_endpoint, 2.0)
                        if status["analysis_backlog"] == 0 and status["spectra"]["total"] == n:
                            break
                        await asyncio.sleep(0.1)
                await pub.send(_flood_scan(i), FLOOD_ARRAYS)

    asyncio.run(scans())
    wait_for(
        lambda: store_count(run, "SELECT count(*) FROM alignment") == n + late,
        120,
        what="every scan recorded and aligned",
    )
    skipped = wait_for(
        lambda: _status(cfg).get("analysis_skipped_live"), 30, what="the count of skipped"
    )
    assert mon.stop(signal.SIGINT) == 0
    assert store_count(run, "SELECT count(*) FROM spectra") == n + late
    behind = recorded_events(run, "analysis_behind")
    caught_up = recorded_events(run, "analysis_caught_up")
    assert behind and len(caught_up) == len(behind)
    assert sum(c["skipped"] for c in caught_up) == skipped > 0
    alarms = [a for a in recorded_events(run, "alarm") if a["category"] == "analysis"]
    assert alarms and "operando reprocess analyses them" in alarms[0]["message"]
