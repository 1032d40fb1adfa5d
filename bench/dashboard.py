"""The dashboard over a long experiment: memory, arrival -> page latency, first paint.

    python bench/dashboard.py [--hours 72] [--speed 1080]

Runs ``operando demo`` (the peo-nmc cell cycling for ``--hours`` of experiment time at
``--speed``, so 72 h take 6 min) with its dashboard, and keeps one Chromium page open on it the
whole time. Measured in this one run:

- RSS of the dashboard (and of the monitor and the drivers) every 2 s: growth after warm-up
  (the first 20 % of the run), and the slope over the rest;
- latency of every spectrum: its arrival at the monitor (``recv_ns`` of its raw message) to the
  first time the page shows it (the page's ``#op-latest`` spectrum id reaching it, polled every
  20 ms by Playwright: that is the resolution); p50/p95/max;
- age of the plotted cell trace (polled every ~0.25 s: now minus the arrival at the monitor of
  the message holding the newest row the page's plots hold), so a plot that stopped updating
  while the header moves on would show;
- first paint of the finished run in a fresh page on a fresh dashboard: until all spectra are
  counted and the plots are drawn.

The transport baseline, measured in the same invocation: ``shared/bench/bare_zmq.py`` (8 KB
PUSH/PULL): the time one bare message takes, to put the latency beside.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
from baseline import load_bare_zmq
from operando.dashboards.headless import http_ready, launch, plotted_until
from playwright.sync_api import sync_playwright

from operando.config import preset_path
from operando.demo import cli_command, free_ports
from operando.store import open_readonly

CLI = cli_command()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def long_config(hours: float, workdir: Path) -> Path:
    """peo-nmc, cycling long enough for ``hours`` (the preset loops 5 times)."""
    cfg = tomllib.loads(preset_path("peo-nmc").read_text())
    for step in cfg["drivers"]["potentiostat"]["protocol"]:
        if step["type"] == "loop":
            step["repeat"] = int(hours / 2) + 10  # a cycle takes ~2.5 h at 1C
    path = workdir / "long.json"
    path.write_text(json.dumps(cfg))
    return path


def wait_http(url: str, timeout: float = 90.0) -> None:
    """Until the server answers: on /liveness, which builds no page (every GET of / builds a
    whole session; on a loaded machine those probes timed out, piled up and kept the server
    busy for over 90 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ready(url + "liveness"):
            return
        time.sleep(0.5)
    raise SystemExit(f"no dashboard at {url} within {timeout} s")


class Sampler(threading.Thread):
    """RSS of the demo's processes every ``interval`` seconds."""

    def __init__(self, run: Path, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.interval = run, interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:  # type: ignore[override]
        while not self.stop.wait(self.interval):
            try:
                pids = json.loads((self.run_dir / "demo.json").read_text())["pids"]
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            now = {name: rss_mb(pid) for name, pid in pids.items()}
            self.samples.append((time.monotonic(), {k: v for k, v in now.items() if v}))


def growth(samples: list[tuple[float, dict[str, float]]], name: str) -> dict[str, float]:
    pts = [(t, s[name]) for t, s in samples if name in s]
    if len(pts) < 5:
        return {}
    t0, t1 = pts[0][0], pts[-1][0]
    warm = [p for p in pts if p[0] >= t0 + 0.2 * (t1 - t0)]
    t, r = np.array([p[0] for p in warm]), np.array([p[1] for p in warm])
    slope = float(np.polyfit(t - t[0], r, 1)[0]) if len(t) > 2 else float("nan")
    late = [p[1] for p in pts if p[0] >= t0 + 0.5 * (t1 - t0)]
    if os.environ.get("BENCH_VERBOSE"):
        print(name, "RSS MB every ~20 s:", [round(p[1]) for p in pts[::10]])
    return {
        "growth_second_half_MB": round(late[-1] - late[0], 1),
        "after_warmup_MB": round(float(r[0]), 1),
        "end_MB": round(float(r[-1]), 1),
        "max_MB": round(float(r.max()), 1),
        "growth_after_warmup_MB": round(float(r[-1] - r[0]), 1),
        "slope_MB_per_wall_min": round(slope * 60, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=72.0, help="experiment hours to run")
    ap.add_argument("--speed", type=float, default=720.0, help="experiment s per wall s")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    a = ap.parse_args()

    bare = load_bare_zmq().measure("8KB", "pushpull", "sync", repeat=1, port=free_ports(1)[0])
    bare_ms = 1e3 / bare["msgs_per_s"]

    wall = a.hours * 3600 / a.speed
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        work = Path(d)
        run = work / "run"
        port = free_ports(1)[0]
        cfg = long_config(a.hours, work)
        demo = subprocess.Popen(
            [
                *CLI,
                *("demo", "--config", str(cfg), "--headless", "--speed", str(a.speed)),
                *("--duration", str(wall), "--run-dir", str(run), "--dashboard-port", str(port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sampler = Sampler(run)
        seen: list[tuple[int, float]] = []  # (spectrum id shown, wall time first seen)
        plotted: list[tuple[float, float | None]] = []  # (wall time, newest time plotted)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_http(url)
            sampler.start()
            with sync_playwright() as pw:
                browser = launch(pw)
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.goto(url)
                page.wait_for_selector("#op-latest", timeout=60_000)
                latest = page.locator("#op-latest")
                k = 0
                while demo.poll() is None:
                    try:
                        sid = int(latest.get_attribute("data-spectrum-id", timeout=5000) or 0)
                        if k % 10 == 0:
                            plotted.append((time.time(), plotted_until(page)))
                    except Exception:  # the server is stopping at the end of the run
                        break
                    if not seen or sid > seen[-1][0]:
                        seen.append((sid, time.time()))
                    k += 1
                    time.sleep(0.02)
                browser.close()
            demo.wait(120)
        finally:
            sampler.stop.set()
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
                demo.wait(120)

        conn = open_readonly(run)
        arrivals = dict(
            conn.execute("SELECT s.id, r.recv_ns FROM spectra s JOIN raw r ON r.id = s.raw_id")
        )
        (n_spectra,) = conn.execute("SELECT count(*) FROM alignment").fetchone()
        # age of the plotted cell trace: now - arrival of the message holding its newest row
        ages = []
        for wall_t, until in plotted:
            row = (
                conn.execute(
                    "SELECT r.recv_ns FROM potentiostat p JOIN raw r ON r.id = p.raw_id "
                    "WHERE p.t >= ? ORDER BY p.t LIMIT 1",
                    (until - 1e-3,),
                ).fetchone()
                if until
                else None
            )
            if row:
                ages.append((wall_t - row[0] * 1e-9) * 1e3)
        age = np.array(ages)
        (n_rows,) = conn.execute("SELECT count(*) FROM potentiostat").fetchone()
        (t_span,) = conn.execute("SELECT max(t) - min(t) FROM potentiostat").fetchone()
        conn.close()
        latencies, arrived = [], []
        shown = np.array([s for s, _ in seen])
        times = np.array([t for _, t in seen])
        for sid, recv_ns in sorted(arrivals.items()):
            k = np.searchsorted(shown, sid)  # the first page state showing this spectrum
            if k < len(shown) and sid >= seen[0][0] + 1:  # after the page was open
                latencies.append(times[k] - recv_ns * 1e-9)
                arrived.append(recv_ns * 1e-9)
        lat = np.array(latencies) * 1e3
        # after warm-up: the same first 20 % of the run the RSS figures leave out
        t_warm = arrived[0] + 0.2 * (arrived[-1] - arrived[0]) if arrived else 0.0
        lat_warm = lat[np.array(arrived) >= t_warm] if arrived else lat
        if os.environ.get("BENCH_VERBOSE"):
            print("latencies (ms, in arrival order):", np.round(lat).astype(int).tolist())

        # first paint of the whole run, in a fresh page on a fresh dashboard
        port2 = free_ports(1)[0]
        dash = subprocess.Popen(
            [*CLI, "dashboard", "--run-dir", str(run), "--port", str(port2)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url2 = f"http://127.0.0.1:{port2}/"
            wait_http(url2)
            with sync_playwright() as pw:
                browser = launch(pw)
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                t0 = time.perf_counter()
                page.goto(url2)
                count = page.locator(".op-spectra")
                count.wait_for(timeout=120_000)
                while int(count.get_attribute("data-count") or 0) < n_spectra:
                    time.sleep(0.02)
                while page.locator("canvas").count() < 6:  # the plots drawn
                    time.sleep(0.02)
                first_paint_s = time.perf_counter() - t0
                browser.close()
            dash_rss = rss_mb(dash.pid)
        finally:
            dash.send_signal(signal.SIGTERM)
            dash.wait(30)

    report = {
        "experiment_hours": round(t_span / 3600, 1),
        "wall_s": round(wall, 0),
        "spectra": n_spectra,
        "potentiostat_rows": n_rows,
        "latency_ms": {
            "n": len(lat),
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1),
            "after_warmup_p50": round(float(np.percentile(lat_warm, 50)), 1),
            "after_warmup_p95": round(float(np.percentile(lat_warm, 95)), 1),
            "poll_resolution_ms": 20,
        },
        "plotted_trace_age_ms": {
            "n": len(age),
            "p50": round(float(np.percentile(age, 50)), 1) if len(age) else None,
            "p95": round(float(np.percentile(age, 95)), 1) if len(age) else None,
        },
        "bare_zmq_8KB_ms_per_message": round(bare_ms, 4),
        "latency_p95_over_bare_message": round(float(np.percentile(lat, 95)) / bare_ms, 0),
        "rss": {name: growth(sampler.samples, name) for name in ("dashboard", "monitor")}
        | {name: growth(sampler.samples, name) for name in ("potentiostat", "spectrometer")},
        "first_paint_full_history_s": round(first_paint_s, 2),
        "fresh_dashboard_rss_after_first_paint_MB": dash_rss,
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
    }
    print(json.dumps(report, indent=2))
    if lat.size:
        print(
            f"latency arrival -> page p95 {statistics.quantiles(lat, n=20)[-1]:.0f} ms "
            f"({np.percentile(lat_warm, 95):.0f} ms after warm-up); "
            f"dashboard RSS growth after warm-up "
            f"{report['rss']['dashboard'].get('growth_after_warmup_MB')} MB; first paint "
            f"{first_paint_s:.1f} s for {n_spectra} spectra / {n_rows} rows"
        )


if __name__ == "__main__":
    main()
