"""The monitor's sinks beyond this machine (``[publish]`` in the experiment file): each a
process of its own that only reads the run store (``operando publish``), so a broker that is
slow or away never slows recording. Started once the monitor records; when the monitor stops,
given ``finish_s`` to send the run's last documents and its stop, then stopped (its cursor is
saved: ``operando publish RUN --nats URL`` sends the rest later)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from operando.config import PublishConfig
from operando.store.files import LOGS_DIR

log = logging.getLogger("operando.sinks")


async def start_publishers(cfg: PublishConfig, run_dir: Path) -> list[asyncio.subprocess.Process]:
    """A publisher process for each sink the experiment file names."""
    sinks = []
    if cfg.nats:
        sinks.append(("nats", ["--nats", cfg.nats, "--stream", cfg.stream, "--prefix", cfg.prefix]))
    if cfg.tiled:  # its API key from $TILED_API_KEY, inherited (never on a command line)
        sinks.append(("tiled", ["--tiled", cfg.tiled]))
    logs = run_dir / LOGS_DIR
    procs = []
    for name, args in sinks:
        logs.mkdir(exist_ok=True)
        log_path = logs / f"publish-{name}.log"
        with open(log_path, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "operando.cli", "-v", "publish", str(run_dir), *args],
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C stops the monitor, which stops it
            )
        log.info("publishing to %s (pid %d, log %s)", args[1], proc.pid, log_path)
        procs.append(proc)
    return procs


async def finish_publishers(procs: list[asyncio.subprocess.Process], finish_s: float) -> None:
    await asyncio.gather(*(finish_publisher(p, finish_s) for p in procs))


async def finish_publisher(proc: asyncio.subprocess.Process, finish_s: float) -> None:
    """Wait for the publisher to send the stop; past ``finish_s`` stop it where it is."""
    try:
        await asyncio.wait_for(proc.wait(), finish_s)
    except TimeoutError:
        log.warning(
            "the publisher had not sent the run's last documents after %.0f s: stopped; "
            "'operando publish RUN --nats URL' (or --tiled) sends the rest",
            finish_s,
        )
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if proc.returncode:
        log.warning("the publisher ended with status %s (see logs/publish-*.log)", proc.returncode)
