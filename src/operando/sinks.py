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


async def start_publisher(cfg: PublishConfig, run_dir: Path) -> asyncio.subprocess.Process | None:
    if not cfg.nats:
        return None
    logs = run_dir / LOGS_DIR
    logs.mkdir(exist_ok=True)
    argv = ["publish", str(run_dir), "--nats", cfg.nats, "--stream", cfg.stream]
    with open(logs / "publish.log", "ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "operando.cli", "-v", *argv, "--prefix", cfg.prefix],
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C stops the monitor, which stops it
        )
    log.info("publishing to %s (pid %d, log %s)", cfg.nats, proc.pid, logs / "publish.log")
    return proc


async def finish_publisher(proc: asyncio.subprocess.Process | None, finish_s: float) -> None:
    """Wait for the publisher to send the stop; past ``finish_s`` stop it where it is."""
    if proc is None:
        return
    try:
        await asyncio.wait_for(proc.wait(), finish_s)
    except TimeoutError:
        log.warning(
            "the publisher had not sent the run's last documents after %.0f s: stopped; "
            "'operando publish RUN --nats URL' sends the rest",
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
        log.warning("the publisher ended with status %s (see logs/publish.log)", proc.returncode)
