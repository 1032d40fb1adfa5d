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
  counted and the plots are drawn;
- what each redraw of the open tab spent its server time on, per step (the header's
  ``data-steps``, sampled ~4/s).

At real time (``--speed 1``) the preset's scan every 150 s gives few spectra; ``--hours 0.17
--speed 1 --scan-interval 10`` takes a quick scan (7 s) every 10 s for 10 min.

    python bench/dashboard.py --switch [--preset lirich-rixs] [--hours 4] [--speed 120]

Under a RIXS preset's load (maps streaming rows), opens each tab in turn and picks each edge
of the fraction plots, and times the click to the page showing it: a tab until the header the
server sends with that tab's redraw reaches the page (it comes in the same document patch as
the tab's plots), an edge until a plot title names it.

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
from typing import Any

import numpy as np
from baseline import load_bare_zmq
from operando.dashboards.headless import drawn_titles, http_ready, launch, plotted_until
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


def long_config(hours: float, workdir: Path, scan_interval_s: float | None = None) -> Path:
    """peo-nmc, cycling long enough for ``hours`` (the preset loops 5 times), with a scan
    every ``scan_interval_s`` if given (the preset's ~105 s scan every 150 s otherwise): a
    quick scan then, ~350 points of 20 ms."""
    cfg = tomllib.loads(preset_path("peo-nmc").read_text())
    for step in cfg["drivers"]["potentiostat"]["protocol"]:
        if step["type"] == "loop":
            step["repeat"] = int(hours / 2) + 10  # a cycle takes ~2.5 h at 1C
    if scan_interval_s is not None:
        cfg["drivers"]["spectrometer"]["interval_s"] = scan_interval_s
        cfg["drivers"]["spectrometer"]["dwell_s"] = 0.02
    path = workdir / "long.json"
    path.write_text(json.dumps(cfg))
    return path


def start_demo(
    experiment: tuple[str, str], speed: float, wall_s: float, run: Path, port: int
) -> subprocess.Popen[bytes]:
    """``operando demo`` of ``experiment`` (``--preset NAME`` or ``--config FILE``) with its
    dashboard on ``port``, for ``wall_s`` seconds at ``speed``."""
    return subprocess.Popen(
        [
            *CLI,
            *("demo", *experiment, "--headless", "--speed", str(speed)),
            *("--duration", str(wall_s), "--run-dir", str(run), "--dashboard-port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def browser_page(playwright: Any, width: int = 1300) -> tuple[Any, Any]:
    """A headless Chromium and a page in it, ``width`` px wide."""
    browser = launch(playwright)
    return browser, browser.new_page(viewport={"width": width, "height": 1000})


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


# the newest spectrum the page's header shows, and when the server sent that header and read
# the store (a locator's evaluate: the header lives in a shadow root, out of document's reach)
_SHOWN_JS = """h => {
  const latest = h.querySelector("#op-latest"), redraw = h.querySelector(".op-redraw");
  return [Number(latest.dataset.spectrumId || 0), Number(redraw.dataset.sent),
          Number(redraw.dataset.refreshed)];
}"""


def wait_until(check: Any, timeout_s: float) -> float | None:
    """Seconds until ``check()`` is true, polled every 20 ms (None: not within the timeout)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if check():
            return time.perf_counter() - t0
        time.sleep(0.02)
    return None


def switches(preset: str, hours: float, speed: float, workdir: str) -> None:
    """Tab and edge switches timed under ``preset``'s load (see the module's description)."""
    from operando.dashboards.headless import TABS

    wall = hours * 3600 / speed
    tab_s: dict[str, list[float | None]] = {tab: [] for tab in TABS}
    # of which the page's own part: from the server sending the tab's redraw to the page
    # showing it (the browser lays out and paints the tab it opens before it takes the patch)
    page_s: dict[str, list[float | None]] = {tab: [] for tab in TABS}
    edge_s: list[float | None] = []
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        run, port = Path(d) / "run", free_ports(1)[0]
        demo = start_demo(("--preset", preset), speed, wall, run, port)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_http(url)
            with sync_playwright() as pw:
                browser, page = browser_page(pw, width=1600)
                page.goto(url)
                page.wait_for_selector("#op-latest", timeout=60_000)
                redraw = page.locator(".op-redraw")
                page.wait_for_timeout(10_000)  # the run under way: spectra and RIXS rows
                while demo.poll() is None:
                    try:
                        for i, tab in enumerate((*TABS[1:], TABS[0])):
                            index = (i + 1) % len(TABS)
                            page.get_by_text(tab, exact=True).click()
                            took = wait_until(
                                lambda index=index: (
                                    redraw.get_attribute("data-tab", timeout=5000) == str(index)
                                ),
                                15.0,
                            )
                            if demo.poll() is not None:  # the run ended: no server to answer
                                break
                            sent = float(redraw.get_attribute("data-sent") or "nan")
                            tab_s[tab].append(took)
                            page_s[tab].append(time.time() - sent if took else None)
                            page.wait_for_timeout(1000)
                        # the run ended during the tabs' tour: no server to answer an edge
                        # choice (before this check, such a choice was counted as never shown)
                        if demo.poll() is not None:
                            break
                        # the edge the fraction plots show now, named in their titles
                        shown = {
                            str(t).split(" fractions,")[0]
                            for t in drawn_titles(page)
                            if " fractions," in str(t)
                        }
                        if len(shown) != 1:
                            continue
                        (current,) = shown
                        edges = page.locator(".op-edge select")
                        options = edges.locator("option").all_inner_texts()
                        for edge in [o for o in options if o != current][:1]:
                            edges.select_option(label=edge)
                            took = wait_until(
                                lambda edge=edge: any(
                                    str(t).startswith(f"{edge} fractions")
                                    for t in drawn_titles(page)
                                ),
                                15.0,
                            )
                            if demo.poll() is None:  # else the server stopped while waiting
                                edge_s.append(took)
                    except Exception:  # the server is stopping at the end of the run
                        break
                browser.close()
            demo.wait(120)
        finally:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
                demo.wait(120)

    def summary(values: list[float | None]) -> dict[str, Any]:
        shown = [1e3 * v for v in values if v is not None]
        return {
            "n": len(values),
            "not_shown_within_15_s": len(values) - len(shown),
            "p50_ms": round(float(np.percentile(shown, 50)), 0) if shown else None,
            "p95_ms": round(float(np.percentile(shown, 95)), 0) if shown else None,
            "max_ms": round(max(shown), 0) if shown else None,
        }

    report = {
        "preset": preset,
        "experiment_hours": hours,
        "speed": speed,
        "tab_switch": {tab: summary(v) for tab, v in tab_s.items()},
        "tab_switch_page_part": {tab: summary(v) for tab, v in page_s.items()},
        "edge_switch": summary(edge_s),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=72.0, help="experiment hours to run")
    ap.add_argument("--speed", type=float, default=720.0, help="experiment s per wall s")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument(
        "--scan-interval", type=float, help="s between scans (experiment time; preset: 150)"
    )
    ap.add_argument("--switch", action="store_true", help="time tab and edge switches")
    ap.add_argument("--preset", default="lirich-rixs", help="the load for --switch")
    a = ap.parse_args()
    if a.switch:
        switches(a.preset, a.hours, a.speed, a.workdir)
        return

    bare = load_bare_zmq().measure("8KB", "pushpull", "sync", repeat=1, port=free_ports(1)[0])
    bare_ms = 1e3 / bare["msgs_per_s"]

    wall = a.hours * 3600 / a.speed
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        work = Path(d)
        run = work / "run"
        port = free_ports(1)[0]
        cfg = long_config(a.hours, work, a.scan_interval)
        demo = start_demo(("--config", str(cfg)), a.speed, wall, run, port)
        sampler = Sampler(run)
        # (spectrum id shown, wall time first seen, when the server sent that header, when the
        # view it was drawn from read the store)
        seen: list[tuple[int, float, float, float]] = []
        plotted: list[tuple[float, float | None]] = []  # (wall time, newest time plotted)
        spent: dict[str, list[float]] = {}  # ms per redraw step, as the page's header says
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_http(url)
            sampler.start()
            with sync_playwright() as pw:
                browser, page = browser_page(pw)
                page.goto(url)
                page.wait_for_selector("#op-latest", timeout=60_000)
                header = page.locator(".op-header")
                k = 0
                while demo.poll() is None:
                    try:
                        sid, sent, refreshed = header.evaluate(_SHOWN_JS, timeout=5000)
                        if k % 10 == 0:
                            plotted.append((time.time(), plotted_until(page)))
                            steps = page.locator(".op-redraw").get_attribute("data-steps")
                            for name, ms in json.loads(steps or "{}").items():
                                spent.setdefault(name, []).append(ms)
                    except Exception:  # the server is stopping at the end of the run
                        break
                    if not seen or sid > seen[-1][0]:
                        seen.append((sid, time.time(), sent, refreshed))
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
        latencies, arrived, parts = [], [], []
        shown = np.array([s[0] for s in seen])
        for sid, recv_ns in sorted(arrivals.items()):
            k = np.searchsorted(shown, sid)  # the first page state showing this spectrum
            if k < len(shown) and sid >= seen[0][0] + 1:  # after the page was open
                _, t_seen, t_sent, t_read = seen[k]
                latencies.append(t_seen - recv_ns * 1e-9)
                arrived.append(recv_ns * 1e-9)
                # arrival -> the view read it from the store -> the server sent the page
                # its redraw -> the page showed it
                parts.append((t_read - recv_ns * 1e-9, t_sent - t_read, t_seen - t_sent))
        lat = np.array(latencies) * 1e3
        legs = np.array(parts).reshape(-1, 3) * 1e3
        if lat.size < 2:
            raise SystemExit(
                f"only {lat.size} spectra arrived after the page opened: run longer (--hours)"
            )
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
                browser, page = browser_page(pw)
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
        # where the latency goes, p50 / p95 of each leg (ms): the monitor storing it and the
        # view reading the store; the page's server waiting for its next look and redrawing;
        # the patch reaching the page and the page applying it (and the bench's 20 ms poll)
        "latency_legs_ms": {
            leg: {
                "p50": round(float(np.percentile(legs[:, i], 50)), 1),
                "p95": round(float(np.percentile(legs[:, i], 95)), 1),
            }
            for i, leg in enumerate(("arrival_to_view", "view_to_sent", "sent_to_page"))
        },
        "plotted_trace_age_ms": {
            "n": len(age),
            "p50": round(float(np.percentile(age, 50)), 1) if len(age) else None,
            "p95": round(float(np.percentile(age, 95)), 1) if len(age) else None,
        },
        # sampled ~4/s from the header, so a step that runs often is sampled often
        "redraw_step_ms": {
            name: {
                "n": len(v),
                "p50": round(float(np.percentile(v, 50)), 1),
                "p95": round(float(np.percentile(v, 95)), 1),
            }
            for name, v in spent.items()
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
    if lat.size >= 2:
        print(
            f"latency arrival -> page p95 {statistics.quantiles(lat, n=20)[-1]:.0f} ms "
            f"({np.percentile(lat_warm, 95):.0f} ms after warm-up); "
            f"dashboard RSS growth after warm-up "
            f"{report['rss']['dashboard'].get('growth_after_warmup_MB')} MB; first paint "
            f"{first_paint_s:.1f} s for {n_spectra} spectra / {n_rows} rows"
        )


if __name__ == "__main__":
    main()
