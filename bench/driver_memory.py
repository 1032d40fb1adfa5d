"""Drivers' memory once their replay buffers are full: bounded, not growing.

    python bench/driver_memory.py [--speed 3000] [--after 60]

The 72 h soak (bench/dashboard.py) sends ~4,000 potentiostat messages: too few to fill a
driver's replay buffer (20,000 messages / 32 MB by default), so its drivers were still growing
when it ended. Here the simulated potentiostat (peo-nmc, cycling without end) and
spectrometer (free-running, a 7 s scan every 10 s of experiment time) run as their own
processes at ``--speed`` until each one's ``status`` says its buffer is at a bound, then
``--after`` seconds more. RSS (VmRSS from
/proc) and the buffer's own count are sampled every second. Printed (JSON, one line per
driver): RSS at start, when full and at the end; growth after full; the buffer's messages and
MB. The goal is growth after warm-up < 50 MB; here warm-up is the filling of the buffer.
The transport baseline of the same run (``shared/bench/bare_zmq.py``, 8 KB PUSH/PULL) is
printed beside it, for the machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from baseline import load_bare_zmq

from operando.config import preset_path
from operando.demo import cli_command
from operando.monitor import query_status
from operando.replaybuffer import ReplayLimits

LIMITS = ReplayLimits()  # the drivers' default bounds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def replay(endpoint: str) -> dict[str, Any]:
    return asyncio.run(query_status(endpoint, 5.0))["replay"]


def full(r: dict[str, Any], messages: int, mb: float) -> bool:
    return r["in_memory"] >= messages or r["memory_MB"] >= 0.98 * mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=3000.0)
    ap.add_argument("--after", type=float, default=60.0, help="seconds to run once full")
    ap.add_argument("--limit", type=float, default=900.0, help="give up after this long")
    ap.add_argument("--port", type=int, default=27400)
    a = ap.parse_args()
    base = load_bare_zmq().measure("8KB", "pushpull", "sync", repeat=1, port=a.port)
    p = a.port + 10
    ep = {k: f"tcp://127.0.0.1:{p + i}" for i, k in enumerate(("pd", "pc", "sd", "sc"))}
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "exp.toml"
        text = preset_path("peo-nmc").read_text()
        for old, new in (  # cycle on and on; a short scan every 10 s
            ("repeat = 5", "repeat = 100000"),
            ("interval_s = 150.0", "interval_s = 10.0"),
            ("dwell_s = 0.3", "dwell_s = 0.02"),
        ):
            assert old in text, old
            text = text.replace(old, new)
        cfg.write_text(text)
        common = ["--config", str(cfg), "--speed", str(a.speed), "--wait-subscriber", "0"]
        op = cli_command("driver")
        procs = {
            "potentiostat": subprocess.Popen(
                [*op, "sim-potentiostat", *common, "--data", ep["pd"], "--command", ep["pc"]]
            ),
            "spectrometer": subprocess.Popen(
                [
                    *op,
                    "sim-spectrometer",
                    *common,
                    "--section",
                    "spectrometer",
                    "--data",
                    ep["sd"],
                    "--command",
                    ep["sc"],
                    "--cell-data",
                    ep["pd"],
                ]
            ),
        }
        commands = {"potentiostat": ep["pc"], "spectrometer": ep["sc"]}
        try:
            results = _sample(procs, commands, a)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=30)
    for name, r in results.items():
        print(json.dumps({"bench": "driver_memory", "driver": name, **r}), flush=True)
    print(json.dumps({"bench": "bare_zmq_8KB", "msgs_per_s": base["msgs_per_s"]}), flush=True)


def _sample(
    procs: dict[str, subprocess.Popen[bytes]], commands: dict[str, str], a: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    time.sleep(5.0)  # imports and the first messages
    for n, p in procs.items():
        if p.poll() is not None:
            raise RuntimeError(f"{n} exited with {p.returncode}")
    t0 = time.monotonic()
    start = {n: rss_mb(p.pid) for n, p in procs.items()}
    filled: dict[str, tuple[float, float]] = {}  # name -> (time, RSS) when its buffer was full
    last: dict[str, dict[str, Any]] = {}
    peak = dict(start)
    while time.monotonic() - t0 < a.limit:
        time.sleep(1.0)
        for n, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{n} exited with {p.returncode}")
            peak[n] = max(peak[n], rss_mb(p.pid))
            last[n] = replay(commands[n])
            if n not in filled and full(last[n], LIMITS.messages, LIMITS.bytes / 2**20):
                filled[n] = (time.monotonic() - t0, rss_mb(p.pid))
        if (
            len(filled) == len(procs)
            and time.monotonic() - t0 > max(t for t, _ in filled.values()) + a.after
        ):
            break
    out = {}
    for n, p in procs.items():
        end = rss_mb(p.pid)
        t_full, rss_full = filled.get(n, (None, None))
        out[n] = {
            "rss_start_MB": round(start[n], 1),
            "full_after_s": None if t_full is None else round(t_full, 1),
            "rss_when_full_MB": None if rss_full is None else round(rss_full, 1),
            "rss_end_MB": round(end, 1),
            "rss_peak_MB": round(peak[n], 1),
            "growth_after_full_MB": None if rss_full is None else round(end - rss_full, 1),
            "growth_from_start_MB": round(end - start[n], 1),
            "buffer_messages": last[n]["in_memory"],
            "buffer_MB": last[n]["memory_MB"],
        }
    return out


if __name__ == "__main__":
    main()
