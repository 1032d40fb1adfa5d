"""Trigger latency: a crossing sample's arrival at the monitor -> the driver's ack.

    python bench/trigger_latency.py [--firings 200]

A synthetic potentiostat (this process) publishes 10-row batches whose voltage swings across
a 3.80 V target (a new cycle each swing); the monitor's own path (Subscriber -> Ingest ->
TriggerEngine -> Orchestrator -> CommandClient) sends an ``acquire`` to a command server in
another process, which acks at once. Printed beside it: the bare ZeroMQ DEALER/ROUTER round
trip measured in the same run (the floor). Goal: p99 <= 20 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
import zmq.asyncio

from operando.config import AlignmentConfig, OrchestrationConfig, SourceConfig, TriggerSpec
from operando.demo import free_ports
from operando.ingest import Ingest
from operando.orchestrate.orchestrator import Orchestrator
from operando.protocol import MODE_CC, Command, PotentiostatBatch
from operando.store import RunStore
from operando.transport import CommandClient, CommandServer, Publisher, Subscriber


def _driver(endpoint: str) -> None:
    async def run() -> None:
        ctx = zmq.asyncio.Context()

        async def acquire(cmd: Command) -> dict:
            return {"scan_id": cmd.id}

        server = CommandServer(ctx, endpoint, "spectrometer", {"acquire": acquire})
        server.start()
        await asyncio.sleep(3600)

    asyncio.run(run())


def bare_round_trip(n: int = 2000) -> dict[str, float]:
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        dealer.send(b"ping")
        ident, msg = router.recv_multipart()
        router.send_multipart([ident, msg])
        dealer.recv()
        times.append(time.perf_counter() - t0)
    ctx.destroy(linger=0)
    ms = np.array(times[100:]) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def measure(firings: int) -> dict[str, float]:
    data, cmd_ep = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    driver = subprocess.Popen([sys.executable, __file__, "--driver", cmd_ep])
    ctx = zmq.asyncio.Context()
    arrival: dict[str, float] = {}
    latency: list[float] = []
    state = {"arrived": 0.0}

    def event(kind, link, t, **detail):  # the orchestrator's events, timed here
        if kind == "trigger":
            arrival[detail["trigger_run_id"]] = state["arrived"]
        elif kind == "ack" and detail.get("trigger_id") in arrival:
            latency.append(time.perf_counter() - arrival.pop(detail["trigger_id"]))

    with tempfile.TemporaryDirectory() as d:
        store = RunStore(Path(d))
        src = SourceConfig(name="potentiostat", role="potentiostat", data=data)
        spec = SourceConfig(name="spectrometer", role="spectrometer", data="", command=cmd_ep)
        orch = Orchestrator(
            OrchestrationConfig(
                triggers=[TriggerSpec(id="x", target=3.8, direction="either", debounce=3)]
            ),
            ctx,
            None,
            spec,
            event,
        )
        ingest = Ingest(store, [src], AlignmentConfig(capacity_mAh=1.0), orchestrator=orch)

        def handle(link, frames):
            state["arrived"] = time.perf_counter()
            ingest.receive(link, frames)

        sub = Subscriber(ctx, data, "potentiostat", handle)
        task = asyncio.create_task(sub.run())
        pub = Publisher(ctx, data, "potentiostat")
        pub.start()
        await pub.wait_for_subscriber(10)
        # The driver process takes a second or two to start here: firings sent before it
        # answers time its start-up, not the path (two such were the p99 of one run, 1.4 s)
        probe = CommandClient(ctx, cmd_ep, "bench", timeout_s=1.0, retries=60)
        await probe.request("acquire", {})
        await probe.close()
        await asyncio.sleep(0.5)  # the orchestrator's own client reconnects within 0.1 s
        t, k = 0.0, 0
        while len(latency) < firings and k < firings * 20:
            phase = np.arange(10) + 10 * (k % 6)
            ewe = 3.7 + 0.2 * (1 - np.abs(phase / 30.0 - 1))  # 3.7 -> 3.9 -> 3.7
            times = t + 0.1 * np.arange(1, 11)
            t = float(times[-1])
            await pub.send(
                PotentiostatBatch(source="potentiostat"),
                {
                    "t": times,
                    "Ewe": ewe,
                    "I": np.where(phase < 30, 0.1, -0.1),
                    "mode": np.full(10, MODE_CC, np.int8),
                    "step": np.zeros(10, np.int32),
                    "cycle": np.full(10, k // 3, np.int32),
                },
            )
            k += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        task.cancel()
        await orch.close()
        await pub.close()
        sub.close()
        store.close()
    ctx.destroy(linger=0)
    driver.kill()
    driver.wait(10)
    ms = np.array(latency) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firings", type=int, default=200)
    a = ap.parse_args()
    ours = asyncio.run(measure(a.firings))
    bare = bare_round_trip()
    print(
        json.dumps(
            {
                "bench": "trigger_latency",
                **ours,
                "goal_p99_ms": 20.0,
                "bare_zmq_round_trip_p50_ms": bare["p50_ms"],
                "bare_zmq_round_trip_p99_ms": bare["p99_ms"],
                "ratio_p50": ours["p50_ms"] / bare["p50_ms"],
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        _driver(sys.argv[2])
        sys.exit(0)
    main()
