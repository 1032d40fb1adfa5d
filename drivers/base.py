"""What every driver process shares: publisher, command socket, clock, series, clean shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zmq.asyncio

from operando.argtypes import non_negative, positive
from operando.clock import ExperimentClock
from operando.config import ConfigError
from operando.protocol import Command, Refused
from operando.replaybuffer import ReplayLimits
from operando.transport import (
    CommandHandler,
    CommandServer,
    Publisher,
    load_keypair,
    start_authenticator,
)

log = logging.getLogger(__name__)

_REPLAY = ReplayLimits()  # the replay buffer's default bounds: one source for both below


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """Options every driver takes on its command line."""

    name: str
    data: str  # PUB endpoint to bind
    command: str  # command (ROUTER) endpoint to bind
    speed: float = 1.0
    t0_ns: int | None = None  # experiment time at start; shared by the demo's simulators
    clock_skew_s: float = 0.0  # this instrument's clock error (fault injection, tests)
    curve_secret: str | None = None  # this driver's .key_secret: encrypt the command socket
    curve_clients: str | None = None  # folder of the public keys allowed to command it
    drop_acks: int = 0  # fault injection: the first N acks are lost
    wait_subscriber_s: float = 10.0
    hwm: int = 10_000
    state_file: str | None = None  # where the driver keeps what must survive a restart
    replay_messages: int = _REPLAY.messages  # sent messages kept for a recorder that missed some
    replay_mb: float = _REPLAY.bytes / 2**20
    spool: str | None = None  # folder: keep sent messages on disk too (survives a restart)
    # who this is, announced in every series: a monitor of another experiment refuses it
    experiment: str = ""  # the experiment it publishes for
    kind: str = ""  # the driver (operando driver KIND)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser, default_name: str) -> None:
        g = p.add_argument_group("common driver options")
        g.add_argument("--name", default=default_name, help="source name in every message")
        g.add_argument("--data", default="tcp://127.0.0.1:5555", help="PUB endpoint to bind")
        g.add_argument("--command", default="tcp://127.0.0.1:5556", help="command endpoint to bind")
        g.add_argument(
            "--speed",
            type=non_negative,
            default=1.0,
            help="experiment seconds per wall second (simulators)",
        )
        g.add_argument(
            "--t0-ns",
            type=int,
            default=None,
            help="experiment clock at start, ns since epoch (default: now)",
        )
        g.add_argument(
            "--wait-subscriber",
            type=non_negative,
            default=10.0,
            help="seconds to wait for a subscriber before the series starts",
        )
        g.add_argument(
            "--clock-skew",
            type=float,
            default=0.0,
            help="seconds this instrument's clock is off (to test clock-offset handling)",
        )
        g.add_argument(
            "--curve-secret",
            default=None,
            help="this driver's secret key file (operando keys generate): CURVE",
        )
        g.add_argument(
            "--curve-clients",
            default=None,
            help="folder of client public keys allowed on the command socket",
        )
        g.add_argument(
            "--drop-acks", type=int, default=0, help="fault injection: do not send the first N acks"
        )
        g.add_argument(
            "--state-file",
            default=None,
            help="JSON file that keeps state across restarts (a simulated cell continues "
            "where it was, as a real one would)",
        )
        g.add_argument(
            "--replay-messages",
            type=int,
            default=_REPLAY.messages,
            help="sent messages kept in memory for the monitor to ask again (resend)",
        )
        g.add_argument(
            "--replay-mb",
            type=positive,
            default=_REPLAY.bytes / 2**20,
            help="memory bound of those messages, MB",
        )
        g.add_argument(
            "--experiment",
            default="",
            help="the experiment this driver publishes for (its file's name): a monitor "
            "recording another experiment refuses its stream",
        )
        g.add_argument(
            "--spool",
            default=None,
            help="folder where sent messages are also kept on disk: a restarted driver can "
            "still resend what its previous process sent",
        )

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> DriverOptions:
        return cls(
            name=a.name,
            data=a.data,
            command=a.command,
            speed=a.speed,
            t0_ns=a.t0_ns,
            clock_skew_s=a.clock_skew,
            curve_secret=a.curve_secret,
            curve_clients=a.curve_clients,
            drop_acks=a.drop_acks,
            wait_subscriber_s=a.wait_subscriber,
            state_file=a.state_file,
            replay_messages=a.replay_messages,
            replay_mb=a.replay_mb,
            spool=a.spool,
            experiment=a.experiment,
            kind=str(getattr(a, "driver_name", "") or ""),
        )


class Driver:
    """Base class: subclasses set ``instrument``, implement ``produce`` and add handlers."""

    instrument = "other"

    def __init__(self, opts: DriverOptions) -> None:
        self.opts = opts
        if opts.speed <= 0:  # file replays take 0 as "at once" and run their clock at 1
            raise ConfigError(
                f"--speed {opts.speed:g}: this driver keeps an experiment clock; give a speed "
                "above 0 (experiment seconds per wall second)"
            )
        self.clock = ExperimentClock(
            opts.speed, opts.t0_ns or time.time_ns(), int(opts.clock_skew_s * 1e9)
        )
        self.ctx: zmq.asyncio.Context | None = None
        self.pub: Publisher | None = None
        self.commands: CommandServer | None = None
        self.finished = asyncio.Event()
        self.series = ""
        self.resumed = False
        self.auth: Any = None  # the ZAP authenticator when the command socket uses CURVE

    # -- to override -------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {}

    def handlers(self) -> dict[str, CommandHandler]:
        return {
            "ping": self._ping,
            "status": self._status,
            "shutdown": self._shutdown,
            "resend": self._resend,
        }

    async def produce(self) -> None:
        raise NotImplementedError

    async def _say_progress(self, every_s: float = 10.0) -> None:
        """At -v: what has been published, every ``every_s`` while it grows."""
        said = -1
        while True:
            await asyncio.sleep(every_s)
            if self.pub is not None and self.pub.seq != said:
                said = self.pub.seq
                log.info(
                    "%s: %d messages published, %d subscriber(s)",
                    self.opts.name,
                    said,
                    self.pub.subscribers,
                )

    def identity(self) -> dict[str, str]:
        """Who publishes: the monitor pins a link to one source and refuses another's stream
        (a second experiment's driver on the same ports is not a restart of this one)."""
        return {
            "driver": self.opts.kind or type(self).__name__,
            "host": socket.gethostname(),
            "experiment": self.opts.experiment,
        }

    async def refuse(self, what: str, why: str) -> None:
        """Tell the run what this driver could not turn into data, and why: the monitor
        records, counts and shows it (the driver's log alone reached nobody)."""
        if self.pub is not None:
            await self.pub.send(Refused(source=self.opts.name, what=what, why=why))

    async def prepare(self) -> None:
        """Wait for what the series' metadata needs (a file to appear): the sockets are up,
        so status and ping are answered meanwhile; stopping ends the wait (override)."""

    def status(self) -> dict[str, Any]:
        replay = self.pub.buffer.status() if self.pub is not None else None
        return {"series": self.series, "replay": replay}

    def state(self) -> dict[str, Any]:
        """What must survive a restart of this process (override)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what ``state`` returned before the restart (override)."""

    # -- persistence ---------------------------------------------------------------------------
    def persist(self) -> None:
        """Write ``state()`` atomically. A few hundred bytes: cheap enough for the loop."""
        if self.opts.state_file is None:
            return
        path = Path(self.opts.state_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.state()))
        os.replace(tmp, path)

    def _load_state(self) -> bool:
        if self.opts.state_file is None or not Path(self.opts.state_file).exists():
            return False
        self.restore(msgspec.json.decode(Path(self.opts.state_file).read_bytes()))
        log.warning("%s: resumed from %s", self.opts.name, self.opts.state_file)
        return True

    # -- shared ------------------------------------------------------------------------------
    async def _ping(self, cmd: Command) -> dict[str, Any]:
        return {"t_ns": self.clock.now_ns()}

    async def _status(self, cmd: Command) -> dict[str, Any]:
        return self.status()

    async def _resend(self, cmd: Command) -> dict[str, Any]:
        """A recorder missed messages: publish them again from the replay buffer."""
        assert self.pub is not None
        a = cmd.args
        return await self.pub.resend(str(a["session"]), int(a["first"]), int(a.get("last", -1)))

    async def _shutdown(self, cmd: Command) -> dict[str, Any]:
        self.finished.set()
        return {"shutting_down": True}

    async def sleep(self, experiment_s: float) -> None:
        await asyncio.sleep(self.clock.wall_seconds(experiment_s))

    async def run(self) -> int:
        self.resumed = self._load_state()
        self.ctx = zmq.asyncio.Context()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.finished.set)
        o = self.opts
        replay = ReplayLimits(
            messages=o.replay_messages,
            bytes=int(o.replay_mb * 2**20),
            spool=Path(o.spool) / o.name if o.spool else None,
        )
        self.pub = Publisher(
            self.ctx, o.data, o.name, hwm=o.hwm, clock=self.clock.now_ns, replay=replay
        )
        curve = None
        if self.opts.curve_secret:
            if not self.opts.curve_clients:
                raise ValueError("--curve-secret needs --curve-clients (who may command)")
            self.auth = start_authenticator(self.ctx, self.opts.curve_clients)
            curve = load_keypair(self.opts.curve_secret)
        self.commands = CommandServer(
            self.ctx,
            self.opts.command,
            self.opts.name,
            self.handlers(),
            clock=self.clock.now_ns,
            curve=curve,
            drop_acks=self.opts.drop_acks,
        )
        self.pub.start()
        self.commands.start()
        reason = "completed"
        try:
            if not await self.pub.wait_for_subscriber(self.opts.wait_subscriber_s):
                log.warning(
                    "%s: no subscriber after %.0f s, publishing anyway",
                    self.opts.name,
                    self.opts.wait_subscriber_s,
                )
            preparing = asyncio.create_task(self.prepare(), name=f"{self.opts.name}-prepare")
            stop = asyncio.create_task(self.finished.wait())
            await asyncio.wait({preparing, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not preparing.done():  # stopped before there was anything to publish
                preparing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await preparing
                return 0
            preparing.result()  # a failure to prepare is the driver's failure
            self.series = f"{self.opts.name}-{uuid.uuid4().hex[:8]}"
            meta = {**self.metadata(), "resumed": self.resumed, "identity": self.identity()}
            if self.pub.buffer.previous is not None:  # what the killed process sent last
                session, last_seq = self.pub.buffer.previous
                meta["previous_session"] = {"session": session, "last_seq": last_seq}
            await self.pub.start_series(self.series, self.instrument, meta)
            log.info(
                "%s: publishing %s series %s on %s (commands on %s)",
                self.opts.name,
                self.instrument,
                self.series,
                self.opts.data,
                self.opts.command,
            )
            progress = asyncio.create_task(self._say_progress(), name=f"{self.opts.name}-progress")
            producer = asyncio.create_task(self.produce(), name=f"{self.opts.name}-produce")
            stop = asyncio.create_task(self.finished.wait())
            done, _ = await asyncio.wait({producer, stop}, return_when=asyncio.FIRST_COMPLETED)
            if producer in done:
                producer.result()  # re-raise a driver failure
            else:
                reason = "stopped"
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
            stop.cancel()
            progress.cancel()
            await self.pub.end_series(reason)
            log.info(
                "%s: series ended (%s) after %d messages", self.opts.name, reason, self.pub.seq
            )
        finally:
            await self.commands.close()
            await self.pub.close()
            if self.auth is not None:
                self.auth.stop()
            self.ctx.destroy(linger=500)
        return 0
