"""Shared helpers: free loopback ports, the CLI as a subprocess, a monitor config."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from operando.config import ExperimentConfig, parse_config
from operando.demo import free_ports
from operando.store import open_readonly
from operando.tiledbus import server_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"


def monitor_config(
    tmp_path: Path, *, potentiostat: dict[str, Any] | None = None, **alignment: Any
) -> tuple[ExperimentConfig, Path]:
    """Config for a monitor with a potentiostat and a spectrometer on free ports.

    ``potentiostat``: extra keys for that source (e.g. ``clock``); ``alignment``: overrides.
    """
    p = free_ports(6)
    data = {
        "name": "test",
        "monitor": {
            "state_endpoint": f"tcp://127.0.0.1:{p[0]}",
            "command_endpoint": f"tcp://127.0.0.1:{p[1]}",
            "status_interval_s": 0.2,
        },
        "alignment": {"capacity_mAh": 1.0, "timeout_s": 5.0, **alignment},
        "sources": [
            {
                "name": "potentiostat",
                "role": "potentiostat",
                "data": f"tcp://127.0.0.1:{p[2]}",
                "command": f"tcp://127.0.0.1:{p[3]}",
                **(potentiostat or {}),
            },
            {
                "name": "spectrometer",
                "role": "spectrometer",
                "data": f"tcp://127.0.0.1:{p[4]}",
                "command": f"tcp://127.0.0.1:{p[5]}",
            },
        ],
    }
    cfg = parse_config(data)
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(data))
    return cfg, path


def endpoints(cfg: ExperimentConfig) -> list[str]:
    """[monitor state, monitor command, potentiostat data, command, spectrometer data, command]."""
    p, s = cfg.source("potentiostat"), cfg.source("spectrometer")
    return [
        cfg.monitor.state_endpoint,
        cfg.monitor.command_endpoint,
        p.data,
        p.command,
        s.data,
        s.command,
    ]


def cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "operando.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"operando {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def inspect_json(run_dir: Path) -> dict[str, Any]:
    return json.loads(cli("inspect", str(run_dir), "--json").stdout)


class Process:
    """A CLI subprocess that is always reaped (SIGTERM, then SIGKILL)."""

    def __init__(self, *args: str, log: Path, netns: str | None = None) -> None:
        self.log = log
        self._logf = open(log, "ab")  # noqa: SIM115 - closed in stop()
        # ip netns exec execs the command: the pid is the CLI's own, signals reach it
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.p = subprocess.Popen(
            [*prefix, sys.executable, "-m", "operando.cli", *args],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._logf.close()
        return self.p.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(*args: str, log: Path, netns: str | None = None) -> Process:
        proc = Process(*args, log=log, netns=netns)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL if proc.p.poll() is None else signal.SIGTERM)


def wait_for(
    predicate,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
    show=None,
):
    """Poll `predicate` until true; on timeout `show()` says what was seen instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    seen = f"\n{show()}" if show is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def record_demo(
    run: Path,
    duration_s: float,
    *experiment: str,
    speed: float = 120.0,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """A complete run directory from ``operando demo`` (no dashboard, no terminal table);
    ``experiment``: e.g. ``"--preset", "lnmo-surface"`` or ``"--config", path`` (default:
    the default preset)."""
    args = ["demo", *experiment, "--headless", "--no-dashboard"]
    args += ["--duration", str(duration_s), "--speed", str(speed), "--run-dir", str(run)]
    return cli(*args, timeout=timeout or duration_s + 120)


def live_cell_experiment(tmp_path: Path, *names: str) -> tuple[ExperimentConfig, Path]:
    """peo-nmc's simulated potentiostat with real-instrument sources ``names`` (role
    spectrometer) in place of the simulated spectrometer, all on free ports."""
    import msgspec

    from operando.config import load_config, preset_path
    from operando.demo import localize

    cfg = localize(load_config(preset_path("peo-nmc")))
    spectrometer = cfg.source("spectrometer")
    p = iter(free_ports(2 * len(names)))
    sources = [
        msgspec.structs.replace(
            spectrometer,
            name=name,
            data=f"tcp://127.0.0.1:{next(p)}",
            command=f"tcp://127.0.0.1:{next(p)}",
        )
        for name in names
    ]
    cfg = msgspec.structs.replace(
        cfg,
        sources=[cfg.source("potentiostat"), *sources],
        drivers={"potentiostat": cfg.drivers["potentiostat"]},
    )
    path = tmp_path / "experiment.json"
    path.write_bytes(msgspec.json.encode(cfg))
    return cfg, path


def driver_endpoints(cfg: ExperimentConfig, name: str) -> list[str]:
    """The command-line options that put a driver on source ``name``'s endpoints."""
    src = cfg.source(name)
    return ["--name", src.name, "--data", src.data, "--command", src.command]


def sim_potentiostat(cfg: ExperimentConfig, path: Path, *extra: str) -> list[str]:
    """The command line of the experiment's simulated potentiostat on its source's endpoints."""
    return [
        "driver",
        "sim-potentiostat",
        "--config",
        str(path),
        "--section",
        "potentiostat",
        *extra,
        *driver_endpoints(cfg, "potentiostat"),
    ]


def start_live_cell(processes, cfg: ExperimentConfig, path: Path, run: Path, logs: Path) -> None:
    """A monitor recording to ``run`` and the simulated potentiostat, in real time."""
    processes("monitor", "--config", str(path), "--run-dir", str(run), log=logs / "mon.log")
    processes(*sim_potentiostat(cfg, path), log=logs / "pot.log")


def seqs_by_session(run: Path, link: str) -> dict[str, tuple[int, int]]:
    """Per session of ``link``: (distinct seqs recorded, highest seq + 1)."""
    conn = open_readonly(run)
    try:
        return {
            s: (n, top)
            for s, n, top in conn.execute(
                "SELECT session, count(DISTINCT seq), max(seq) + 1 FROM raw WHERE link = ? "
                "AND seq IS NOT NULL AND kind NOT IN ('command', 'ack') GROUP BY session",
                (link,),
            )
        }
    finally:
        conn.close()


def all_recorded(run: Path, link: str) -> bool:
    """``link`` has sent something and the run holds every seq of each of its sessions."""
    sessions = seqs_by_session(run, link)
    return bool(sessions) and all(n == top for n, top in sessions.values())


def store_count(run: Path, sql: str) -> int:
    """One number from the run store (0 while the store is still being created)."""
    try:
        conn = open_readonly(run)
    except Exception:
        return 0
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # the file exists, its schema not yet
            return 0
        raise
    finally:
        conn.close()


def recorded_events(run: Path, kind: str) -> list[dict[str, Any]]:
    """The details of a run's events of one kind, in the order they were recorded."""
    conn = open_readonly(run)
    try:
        rows = conn.execute("SELECT detail FROM events WHERE kind = ? ORDER BY id", (kind,))
        return [json.loads(d) for (d,) in rows]
    finally:
        conn.close()


# Runs several test modules read: recorded once per session (each takes a minute).
@pytest.fixture(scope="session")
def lfp_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lfp") / "run"
    record_demo(run, 55, "--preset", "peo-lfp-relaxation")
    return run


@pytest.fixture(scope="session")
def lirich_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lirich") / "run"
    record_demo(run, 45, "--preset", "lirich-rixs")
    return run


def replay_into_new_monitor(recorded: Path, tmp_path: Path, processes: Any) -> tuple[Path, Any]:
    """A fresh monitor with the recorded run's experiment on free ports, and ``operando replay
    --speed 0`` of the run into it. Returns the new run directory and the monitor process."""
    import msgspec

    from operando.config import load_config
    from operando.demo import localize

    cfg = localize(load_config(recorded / "config.json"))
    path = tmp_path / "experiment.json"
    path.write_bytes(msgspec.json.encode(cfg))
    again = tmp_path / "again"
    monitor = processes(
        "monitor", "--config", str(path), "--run-dir", str(again), log=tmp_path / "mon.log"
    )
    out = cli("replay", str(recorded), "--speed", "0", "--config", str(path), timeout=300)
    assert "potentiostat: " in out.stdout and "spectrometer: " in out.stdout, out.stdout
    return again, monitor


class ServerProcess:
    """A server the tests start, kill (SIGKILL: an outage, nothing said to clients) and start
    again."""

    p: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


class TiledServer(ServerProcess):
    """A Tiled server whose catalog (SQLite, or a PostgreSQL database: ``catalog``) and data
    (files; tables in SQLite, or PostgreSQL: ``tables``) live on, so it can be killed and
    started again with what it held; ``cache`` (a Redis URI) serves its websocket streaming."""

    def __init__(
        self,
        where: Path,
        catalog: str | None = None,
        cache: str | None = None,
        tables: str | None = None,
    ) -> None:
        self.where, self.port = where, free_ports(1)[0]
        # not DuckDB: tiled 0.2.20 shares one DuckDB connection among its requests, and a
        # remote view's read during a publisher's table creation lost the table for good
        self.tables = tables or f"sqlite:///{where / 'tables.sqlite'}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.catalog = catalog or f"sqlite:///{where / 'catalog.db'}"
        self.cache = cache
        self.log = where / "tiled.log"
        where.mkdir(exist_ok=True)

    def start(self) -> None:
        import urllib.request

        tiled = Path(sys.executable).with_name("tiled")
        config = self.where / "config.yml"
        storage = [str(self.where / "data"), self.tables]
        config.write_text(json.dumps(server_config(self.catalog, storage, self.cache)))
        args = [str(tiled), "serve", "config", str(config), "--api-key", "secret"]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        (self.where / "data").mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.p = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/", timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, 60, 0.2, what="the Tiled server")
