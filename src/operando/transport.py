"""ZeroMQ transport (asyncio): a lossless publisher, a draining subscriber, a command channel.

Measured facts this rests on (docs/decisions/0002): plain PUB drops silently under load; XPUB with
``XPUB_NODROP`` is lossless at PUSH-like rates, and under asyncio ``send`` raises ``zmq.Again``
at the high-water mark instead of waiting, so we wait for POLLOUT and retry. Each small message
costs ~20-30 us of asyncio overhead, so the subscriber drains whatever else is queued with a
synchronous shadow socket after each wake-up (a NOBLOCK receive on the asyncio socket returns a
Future and never raises Again: a drain loop on it spins forever).

Slow joiners: the publisher sees every subscription (``XPUB_VERBOSE``), can wait for its first
subscriber before a series starts, and re-announces the current series start to each new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import numpy as np
import zmq
import zmq.asyncio

from operando.protocol import (
    Ack,
    Command,
    Header,
    Heartbeat,
    ProtocolError,
    SeriesEnd,
    SeriesStart,
    decode,
    encode,
)
from operando.replaybuffer import Frames, ReplayBuffer, ReplayLimits, Spooled
from operando.sequence import missing_ranges

log = logging.getLogger(__name__)

LINGER_MS = 500  # how long close() may wait to flush; never forever
# A refill reads the spool this many bytes at a time while it sends: a driver asked for a whole
# spool (2 GiB of RIXS images by default) holds a chunk, plus what its socket's HWM queues.
REFILL_CHUNK_BYTES = 64 * 2**20


def new_session() -> str:
    return uuid.uuid4().hex[:12]


class EndpointInUse(RuntimeError):
    """An endpoint this process must bind is bound by another: another driver or monitor,
    perhaps another experiment's on the same machine."""


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """``sock.bind``, and when the port is taken a one-line error naming who holds it (two
    experiments on one machine must not share a port: the second one's driver would fail
    deep in a traceback, or worse, a monitor would record the first one's stream)."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno != zmq.EADDRINUSE:
            raise
        raise EndpointInUse(
            f"{endpoint} is already in use{_holder(endpoint)}: another driver or monitor, "
            f"perhaps another experiment's, is bound there; stop it or choose another port"
        ) from None


def _holder(endpoint: str) -> str:
    """' by pid N (command line)' for the process listening on a tcp endpoint's port, when
    the system tells (another user's process may be hidden): else ''."""
    import psutil  # only on this error path

    try:
        port = int(endpoint.rsplit(":", 1)[1])
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return ""
                cmd = " ".join(" ".join(psutil.Process(conn.pid).cmdline()).split())[:120]
                return f" by pid {conn.pid} ({cmd})"
    except (ValueError, IndexError, psutil.Error, OSError):
        pass
    return ""


def configure(sock: zmq.Socket, *, hwm: int | None = None) -> None:
    sock.linger = LINGER_MS
    if hwm is not None:
        sock.sndhwm = hwm
        sock.rcvhwm = hwm


class Publisher:
    """Publishes one source's messages, stamping session, sequence number and send time.

    ``clock`` returns the source's time in ns (experiment time for simulators running faster
    than real time). Every message, heartbeats included, takes the next sequence number, so a
    subscriber sees loss at the latest with the next heartbeat.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        source: str,
        *,
        hwm: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
        heartbeat_s: float = 1.0,
        replay: ReplayLimits | None = None,
    ) -> None:
        self.source = source
        self.session = new_session()
        self.buffer = ReplayBuffer(self.session, replay or ReplayLimits())
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.seq = 0
        self.series = ""
        self.sock = ctx.socket(zmq.XPUB)
        configure(self.sock, hwm=hwm)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        bind(self.sock, endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscribers = 0
        self._subscribed = asyncio.Event()
        self._series_start: SeriesStart | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_subscriptions(), name=f"{self.source}-subs"),
            asyncio.create_task(self._heartbeats(), name=f"{self.source}-heartbeat"),
        ]

    async def wait_for_subscriber(self, timeout: float) -> bool:
        """True once a recorder subscribed; False after ``timeout`` s (then publish anyway).

        A recorder subscribes to every topic (the monitor does); a listener that takes only
        some topics (e.g. a spectrometer following the cell) does not start the series, so
        the recorder never misses its head.
        """
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def send(self, header: Header, arrays: Mapping[str, np.ndarray] | None = None) -> int:
        """Stamp and publish; waits (never drops) while subscribers are at their HWM."""
        async with self._send_lock:
            seq = self.seq
            stamped = _stamp(header, self.source, self.session, seq, self.clock(), self.series)
            frames = encode(stamped, arrays)
            await self._send_frames(frames)
            self.buffer.add(seq, frames)
            self.seq += 1
            return seq

    async def resend(self, session: str, first: int, last: int) -> dict[str, Any]:
        """Publish again, byte for byte, what this source sent as first..last of ``session``
        (last < 0: up to the newest); say which ranges it no longer holds.

        Answers once it knows what it holds (the spool's record headers); the messages follow
        in the background, read from the spool a bounded chunk at a time, so a refill of a
        whole spool of RIXS images never sits in the driver's memory at once."""
        buf = self.buffer
        found, last = buf.from_memory(session, first, last)
        spooled = Spooled(None)
        if len(found) < last - first + 1 or last < 0:
            in_thread = buf.spool_thread.submit(buf.spooled, session, first, last)
            spooled = await asyncio.wrap_future(in_thread)
            if last < 0:
                last = max(spooled.places, default=first - 1)
        held = found.keys() | spooled.places.keys()
        seqs = sorted(held)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(
            asyncio.create_task(self._resend(seqs, found, spooled), name=f"{self.source}-resend")
        )
        return {"resent": len(seqs), "unavailable": missing_ranges(held, first, last)}

    async def _resend(self, seqs: list[int], found: dict[int, Frames], spooled: Spooled) -> None:
        try:
            i = 0
            while i < len(seqs):
                if seqs[i] in found:
                    await self.send_raw(found[seqs[i]])
                    i += 1
                    continue
                chunk, nbytes = [], 0  # the next records from disk, up to the chunk's bytes
                while i < len(seqs) and seqs[i] not in found:
                    length = spooled.places[seqs[i]][2]
                    if chunk and nbytes + length > REFILL_CHUNK_BYTES:
                        break
                    chunk.append(seqs[i])
                    nbytes += length
                    i += 1
                reading = self.buffer.spool_thread.submit(spooled.read, chunk)
                read = await asyncio.wrap_future(reading)
                for seq in chunk:
                    if seq in read:
                        await self.send_raw(read.pop(seq))
        finally:
            # closed on the spool thread, after any read still under way there
            self.buffer.spool_thread.submit(spooled.close)

    async def send_raw(self, frames: list[Any]) -> None:
        """Publish frames exactly as given, unstamped (a replay of input recorded as
        malformed: the subscriber meets the same bad message)."""
        async with self._send_lock:
            await self._send_frames(frames)

    async def _send_frames(self, frames: list[Any]) -> None:
        while True:
            try:
                # copy=False: pyzmq copies each frame under its copy_threshold (64 KiB) and
                # sends larger ones (RIXS images) from their own buffers
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:  # a subscriber is at its high-water mark: wait, do not drop
                # pyzmq's _future.pyi leaves out poll's flags (the code has them)
                await self.sock.poll(100, zmq.POLLOUT)  # pyright: ignore[reportCallIssue]

    async def start_series(self, series: str, instrument: str, metadata: dict[str, Any]) -> None:
        self.series = series
        self._series_start = SeriesStart(
            source=self.source,
            instrument=instrument,  # type: ignore[arg-type]
            metadata=metadata,
        )
        await self.send(self._series_start)

    async def end_series(self, reason: str = "completed") -> None:
        await self.send(SeriesEnd(source=self.source, reason=reason, last_seq=self.seq - 1))

    async def _watch_subscriptions(self) -> None:
        while True:
            msg = await self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscribers += 1
                if msg == b"\x01":
                    self._subscribed.set()
                if self._series_start is not None:
                    start = self._series_start
                    await self.send(
                        SeriesStart(
                            source=start.source,
                            instrument=start.instrument,
                            metadata=start.metadata,
                            reannounce=True,
                        )
                    )
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    async def _heartbeats(self) -> None:
        # Beat only once a recorder listens: a heartbeat sent to nobody takes a sequence
        # number that no recorder can ever see, and would be counted as lost.
        await self._subscribed.wait()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.send(Heartbeat(source=self.source))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.sock.close(linger=LINGER_MS)
        await asyncio.to_thread(self.buffer.close)


def _stamp(header: Header, source: str, session: str, seq: int, t_ns: int, series: str) -> Any:
    return msgspec.structs.replace(
        header,
        source=source,
        session=session,
        seq=seq,
        t_ns=t_ns,
        series=header.series or series,
    )


Handler = Callable[[str, list[zmq.Frame]], None]


class Subscriber:
    """Receives every message from one endpoint and hands its frames to ``handler``, as
    ``zmq.Frame`` buffers (``len`` is their size in bytes) exactly as libzmq received them.

    After each asyncio wake-up it drains up to ``drain`` more messages with a synchronous shadow
    socket, then yields to the loop. While ``hold()`` is true (e.g. a full store) it reads
    nothing, and stops a drain: the lossless publisher then holds its messages.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        link: str,
        handler: Handler,
        *,
        hwm: int = 10_000,
        drain: int = 500,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.link = link
        self.handler = handler
        self.sock = ctx.socket(zmq.SUB)
        configure(self.sock, hwm=hwm)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self._shadow = zmq.Socket.shadow(self.sock.underlying)
        self.drain = drain
        self.hold = hold or (lambda: False)
        self.received = 0
        self.after_batch: Callable[[], None] | None = None  # e.g. flush derived state

    async def run(self) -> None:
        handler, link, hold = self.handler, self.link, self.hold
        recv = self._shadow.recv
        while True:
            while hold():
                await asyncio.sleep(0.005)
            handler(link, await self.sock.recv_multipart(copy=False))
            n = 1
            while n < self.drain and not hold():
                # Frames, not bytes: no copy of what libzmq received, and a frame says itself
                # whether more follow (recv_multipart asks the socket, through an enum
                # conversion, after every part: together half the receive cost of 8 KB scans).
                try:
                    frame = recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                frames = [frame]
                while frame.more:  # the rest of a multipart message is already here
                    frame = recv(copy=False)
                    frames.append(frame)
                handler(link, frames)
                n += 1
            self.received += n
            if self.after_batch is not None:
                self.after_batch()
            await asyncio.sleep(0)

    def close(self) -> None:
        self.sock.close(linger=0)


# -- commands ------------------------------------------------------------------------------

CommandHandler = Callable[[Command], Awaitable[dict[str, Any]]]


class CommandError(RuntimeError):
    """A command was refused by the driver, or no ack came after all retries."""


class CommandServer:
    """A driver's command socket (ROUTER): decode, dispatch by action, ack every command.

    Commands are idempotent by id: a retried command (same id) gets the ack of the first
    execution again, it is not executed twice (a retried acquire must not take two scans).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        source: str,
        handlers: Mapping[str, CommandHandler],
        *,
        clock: Callable[[], int] = time.time_ns,
        remember: int = 10_000,
        curve: tuple[bytes, bytes] | None = None,
        drop_acks: int = 0,
    ) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        configure(self.sock)
        if curve is not None:  # (public, secret): encrypted, and only allowed clients (ZAP)
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = curve
        bind(self.sock, endpoint)
        self.drop_acks = drop_acks  # fault injection: acks that are lost (tests, benches)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.source = source
        self.handlers = dict(handlers)
        self.clock = clock
        self._done: dict[str, list[Any]] = {}
        self._running: dict[str, asyncio.Task[list[Any]]] = {}
        self._remember = remember
        self.seq = 0
        self.on_command: Callable[[Command, Ack], None] | None = None  # audit hook
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve(), name=f"{self.source}-commands")

    async def _serve(self) -> None:
        while True:
            identity, *frames = await self.sock.recv_multipart()
            task = asyncio.create_task(self._handle(identity, frames))
            self._handlers.add(task)  # keep a reference until done; cancelled on close
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as e:
            await self._reply(
                identity, Ack(source=self.source, id="", ok=False, error=f"malformed command: {e}")
            )
            return
        cmd = msg.header
        if not isinstance(cmd, Command):
            await self._reply(
                identity,
                Ack(
                    source=self.source, id="", ok=False, error=f"expected a command, got {msg.kind}"
                ),
            )
            return
        if cmd.id in self._done:  # a retry: answer again, do not execute again
            await self.sock.send_multipart([identity, *self._done[cmd.id]])
            return
        task = self._running.get(cmd.id)
        if task is None:
            task = asyncio.create_task(self._execute(cmd))
            self._running[cmd.id] = task
        frames_out = await task
        self._running.pop(cmd.id, None)
        if self.drop_acks > 0:
            self.drop_acks -= 1
            log.warning(
                "%s: dropping the ack of %s %s (fault injection)", self.source, cmd.action, cmd.id
            )
            return
        await self.sock.send_multipart([identity, *frames_out])

    async def _execute(self, cmd: Command) -> list[Any]:
        handler = self.handlers.get(cmd.action)
        if handler is None:
            ack = Ack(
                source=self.source,
                id=cmd.id,
                ok=False,
                error=f"unknown action {cmd.action!r}; this driver knows {sorted(self.handlers)}",
            )
        else:
            try:
                result = await handler(cmd)
                ack = Ack(source=self.source, id=cmd.id, ok=True, result=result)
            except Exception as e:  # the driver refuses; the client sees why
                ack = Ack(source=self.source, id=cmd.id, ok=False, error=f"{type(e).__name__}: {e}")
        self.seq += 1
        stamped = _stamp(ack, self.source, "", self.seq, self.clock(), "")
        frames = encode(stamped)
        self._done[cmd.id] = frames
        if len(self._done) > self._remember:
            self._done.pop(next(iter(self._done)))
        if self.on_command is not None:
            self.on_command(cmd, stamped)
        return frames

    async def _reply(self, identity: bytes, ack: Ack) -> None:
        await self.sock.send_multipart([identity, *encode(ack)])

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._handlers) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.sock.close(linger=0)


def start_authenticator(ctx: zmq.asyncio.Context, allowed_keys_dir: str) -> Any:
    """ZAP handler for CURVE sockets of this context: only the public keys in the folder."""
    from zmq.auth.asyncio import AsyncioAuthenticator

    auth = AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=allowed_keys_dir)
    return auth


def load_keypair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a key file written by ``operando keys generate``."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path}: holds no secret key (use the .key_secret file)")
    return public, secret


def client_curve(secret_file: str, server_public_file: str) -> dict[str, bytes]:
    """CommandClient socket options for talking to a CURVE server."""
    import zmq.auth

    public, secret = load_keypair(secret_file)
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    return {"curve_publickey": public, "curve_secretkey": secret, "curve_serverkey": server_public}


class CommandClient:
    """Sends commands to one command socket (DEALER); waits for the ack; retries by id."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        source: str = "client",
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        curve: dict[str, bytes] | None = None,
    ) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        configure(self.sock)
        for opt, value in (curve or {}).items():
            setattr(self.sock, opt, value)
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.source = source
        self.timeout_s = timeout_s
        self.retries = retries
        self.seq = 0
        self._waiting: dict[str, asyncio.Future[Ack]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def request(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        timeout_s: float | None = None,
    ) -> Ack:
        """Send a command and return its ack; raise CommandError when none comes back."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        cid = id or uuid.uuid4().hex
        cmd = Command(
            source=self.source,
            id=cid,
            action=action,
            args=args or {},
            seq=self.seq,
            t_ns=time.time_ns(),
        )
        self.seq += 1
        timeout = timeout_s or self.timeout_s
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        sent = 0
        try:
            for _attempt in range(self.retries + 1):
                try:
                    # bounded too: a DEALER with no peer (a server that refuses our CURVE key
                    # drops every handshake) cannot send, and its send waited forever
                    await asyncio.wait_for(self.sock.send_multipart(encode(cmd)), timeout)
                except TimeoutError:
                    continue
                sent += 1
                done, _ = await asyncio.wait({fut}, timeout=timeout)
                if done:
                    return fut.result()
            unsent = "" if sent else " (not sent: no connection to it)"
            raise CommandError(
                f"{action}: no ack from {self.endpoint} after {self.retries + 1} attempt(s) of "
                f"{timeout} s{unsent}"
            )
        finally:
            self._waiting.pop(cid, None)

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                msg = decode(frames)
            except ProtocolError as e:
                log.warning("malformed ack from %s: %s", self.endpoint, e)
                continue
            ack = msg.header
            if isinstance(ack, Ack):
                fut = self._waiting.get(ack.id)
                if fut is not None and not fut.done():
                    fut.set_result(ack)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.sock.close(linger=0)
