"""The same 8 KB spectra through bluesky's 0MQ path and through ours, in one run.

    python bench/bluesky_path.py [--n 5000] [--repeat 3]

- bluesky: a RunEngine counts a detector whose reading is one spectrum (energy, I0, TEY, TFY:
  4 x 256 float64, 8 KB), each event published by ``bluesky.callbacks.zmq.Publisher``
  (msgpack-numpy) to a ``Proxy`` (its own process) and received by a ``RemoteDispatcher`` in
  another process, which counts events until the stop document.
- ours: a driver-side Publisher sends the same spectra to the monitor's path (Subscriber ->
  Ingest -> raw log + SQLite, committed): ``bench/ingest.py``'s measurement.
- the bare pyzmq baseline (``shared/bench/bare_zmq.py``, 8 KB, XPUB_NODROP), same run.
Prints one JSON line: events/s and loss of each, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from baseline import load_bare_zmq
from ingest import _receive


class Spectrometer:
    """A bluesky readable whose every reading is a whole spectrum (a fly scan's event)."""

    name = "spec"
    parent = None

    def __init__(self) -> None:
        self.hints: dict = {}
        e = np.linspace(630, 660, 256)
        self.arrays = {"energy": e, "I0": np.ones(256), "TEY": e / 600, "TFY": e / 700}

    def read(self) -> dict:
        t = time.time()
        return {k: {"value": v, "timestamp": t} for k, v in self.arrays.items()}

    def describe(self) -> dict:
        return {k: {"source": "bench", "dtype": "array", "shape": [256]} for k in self.arrays}

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}


def _engine(n: int, port_in: int) -> None:
    """The RunEngine side (its own process)."""
    import msgpack_numpy
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import Publisher
    from bluesky.plans import count

    RE = RunEngine({})
    RE.subscribe(Publisher(f"127.0.0.1:{port_in}", serializer=msgpack_numpy.packb))
    time.sleep(1.0)  # PUB -> proxy connection settles before the first document
    RE(count([Spectrometer()], num=n))


def _dispatcher(port_out: int, result: Path) -> None:
    """The RemoteDispatcher side (its own process): counts events until the stop document."""
    import msgpack_numpy
    from bluesky.callbacks.zmq import RemoteDispatcher

    d = RemoteDispatcher(f"127.0.0.1:{port_out}", deserializer=msgpack_numpy.unpackb)
    marks = {"events": 0, "first": 0.0, "last": 0.0, "bytes_ok": 0}

    def on(name: str, doc: dict) -> None:
        if name == "event":
            if not marks["first"]:
                marks["first"] = time.perf_counter()
            marks["events"] += 1
            marks["bytes_ok"] += int(len(doc["data"]["TEY"]) == 256)
        elif name == "stop":
            marks["last"] = time.perf_counter()
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps(marks))
            tmp.rename(result)  # the parent reads it, then ends this process

    d.subscribe(on)
    d.start()


def bluesky_run(n: int, port: int) -> dict:
    p_in, p_out = port, port + 1
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "dispatcher.json"
        procs = [
            subprocess.Popen(
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
            ),
            subprocess.Popen([sys.executable, __file__, "--dispatcher", str(p_out), str(result)]),
        ]
        try:
            time.sleep(1.5)  # proxy and dispatcher listening
            engine = subprocess.run(
                [sys.executable, __file__, "--engine", str(n), str(p_in)], timeout=1200
            )
            deadline = time.monotonic() + 120
            while not result.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            marks = json.loads(result.read_text())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
        assert engine.returncode == 0
    events = marks["events"]
    return {
        "events": events,
        "lost": n - events,
        "per_s": events / (marks["last"] - marks["first"]) if events > 1 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--port", type=int, default=27500)
    a = ap.parse_args()
    bare = load_bare_zmq().measure("8KB", "xpub_nodrop", "sync", repeat=a.repeat, port=a.port)
    port = a.port + 10
    blue, ours = [], []
    for _ in range(a.repeat):
        blue.append(bluesky_run(a.n, port))
        port += 2
        with tempfile.TemporaryDirectory() as d:
            ours.append(_receive("xas", a.n, port, 0.0, Path(d)))
        port += 1
    b = statistics.median(r["per_s"] for r in blue)
    o = statistics.median(r["per_s_committed"] for r in ours)
    print(
        json.dumps(
            {
                "bench": "bluesky_side_by_side_8KB",
                "n": a.n,
                "bluesky_events_per_s": b,
                "bluesky_lost": max(r["lost"] for r in blue),
                "ours_per_s_committed": o,
                "ours_lost": max(r["lost"] for r in ours),
                "bare_zmq_per_s": bare["msgs_per_s"],
                "ours_over_bluesky": o / b if b else None,
                "bluesky_over_bare": b / bare["msgs_per_s"],
                "ours_over_bare": o / bare["msgs_per_s"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--engine":
        _engine(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--dispatcher":
        _dispatcher(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
