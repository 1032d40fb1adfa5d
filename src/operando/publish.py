"""``operando publish RUN --nats URL``: the run's event-model documents on NATS JetStream, live
(``--tiled URI``: into a Tiled server, ``operando.tiledbus``).

A process of its own beside the monitor (or after it): it follows the run store, gives out each
document once it is final (``operando.export.compose``: the same documents ``export --format
documents`` writes) and publishes it in bluesky-nats's layout, so a bluesky callback behind
bluesky-nats's ``NATSDispatcher`` reads the run like any bluesky run:

- subject ``<prefix>.<document name>`` (``events.volatile.start``, ``...event_page``), in the
  JetStream stream ``bluesky`` (made if missing, with the subjects ``<prefix>.>``);
- payload: the document as MessagePack; header ``run_id``: the run's uid;
- header ``Nats-Msg-Id``: the document's uid (a page: its first and last event's), so JetStream
  drops a document sent twice within its duplicate window.

At least once, in order, nothing lost: documents go in batches, each acknowledged by the
broker before the next is sent; the cursor (``RUN/publish/nats.json``, ``tiled.json``) is
saved after each stored batch, so a publisher killed, or a broker restarted, sends again from
there what it cannot prove stored, and the uids make those copies duplicates (Tiled: rows
read back). Recording never waits for any of it: the publisher only
reads the run store.

The run has ended (so the rest and the stop go out) when no writer holds it and either every
source closed its series, or nothing has arrived for ``end_grace_s`` (a killed monitor may be
restarted on the run within that time).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from operando.export.compose import Composer, Cursor, Document
from operando.store.files import PUBLISH_DIR
from operando.store.reader import Run
from operando.store.writer_process import being_recorded

log = logging.getLogger("operando.publish")

NATS_MISSING = "publishing to NATS needs nats-py: pip install 'operando[nats]'"
BATCH = 200  # documents sent before the cursor is saved


class PublishError(RuntimeError):
    pass


class BusUnavailable(RuntimeError):
    """The broker did not store a document (away, restarting, slow): send it again."""


class Bus(Protocol):
    """Where documents go: ``JetStream`` here, ``operando.tiledbus.TiledRun``; Kafka in
    bluesky-kafka's layout would be a third (decision 0014)."""

    name: str

    @property
    def target(self) -> dict[str, str]:
        """Where it sends: a saved cursor is for this target only."""
        ...

    async def connect(self) -> None: ...

    async def send(self, batch: list[Document]) -> int:
        """Return once the broker has stored every document, in order, with how many it had
        already; raise BusUnavailable when it did not store them all."""
        ...

    async def close(self) -> None: ...


class JetStream:
    """bluesky-nats's layout on one JetStream stream; reconnects by itself (nats-py)."""

    name = "nats"

    def __init__(
        self,
        url: str,
        run_uid: str,
        *,
        prefix: str = "events.volatile",
        stream: str = "bluesky",
        duplicate_window_s: float = 3600.0,
        ack_timeout_s: float = 2.0,
    ) -> None:
        self.url, self.run_uid, self.prefix, self.stream = url, run_uid, prefix, stream
        self.duplicate_window_s, self.ack_timeout_s = duplicate_window_s, ack_timeout_s
        self.nc: Any = None
        self.js: Any = None
        self.closing = False
        self.encode = msgspec.msgpack.Encoder().encode

    @property
    def target(self) -> dict[str, str]:
        return {"url": self.url, "stream": self.stream, "prefix": self.prefix}

    async def connect(self) -> None:
        try:
            import nats
            from nats.js.api import StreamConfig
            from nats.js.errors import NotFoundError
        except ImportError:
            raise PublishError(NATS_MISSING) from None
        self.nc = await nats.connect(
            self.url,
            connect_timeout=2,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,  # a broker restart is waited for, never given up on
            allow_reconnect=True,
            error_cb=self._quiet,
            disconnected_cb=self._said("disconnected from"),
            reconnected_cb=self._said("reconnected to"),
        )
        self.js = self.nc.jetstream(timeout=self.ack_timeout_s)
        subjects = [f"{self.prefix}.>"]
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            await self.js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=subjects,
                    duplicate_window=self.duplicate_window_s,
                )
            )
            return
        if not set(subjects) & set(info.config.subjects or ()):
            raise PublishError(
                f"{self.url}: stream {self.stream!r} holds {info.config.subjects}, "
                f"not {subjects[0]} (choose another --prefix or --stream)"
            )

    async def send(self, batch: list[Document]) -> int:
        from nats.errors import Error as NatsError

        duplicates = 0
        try:
            for name, doc in batch:  # each acknowledged before the next: the order holds
                ack = await self.js.publish(
                    f"{self.prefix}.{name}",
                    self.encode(doc),
                    headers={"Nats-Msg-Id": message_id(doc), "run_id": self.run_uid},
                )
                duplicates += bool(ack.duplicate)
        except (NatsError, TimeoutError, ConnectionError) as e:
            raise BusUnavailable(f"{type(e).__name__}: {e}") from None
        return duplicates

    async def close(self) -> None:
        self.closing = True
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5.0)

    async def _quiet(self, e: Exception) -> None:
        log.debug("nats: %s", e)

    def _said(self, what: str):
        async def said() -> None:
            if not self.closing:
                log.warning("%s %s", what, self.url)

        return said


def message_id(doc: dict[str, Any]) -> str:
    """The document's uid (an event page's: its first and last event's)."""
    uid = doc["uid"]
    return f"{uid[0]}..{uid[-1]}" if isinstance(uid, list) else str(uid)


@dataclass
class Published:
    """What a publisher sent: documents by name, how many the broker had already (sent again
    after an outage or a restart), the outages it waited through."""

    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    retries: int = 0
    stopped: bool = False  # the run's stop went out

    def line(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts.items()) or "no documents"
        end = "the run's stop included" if self.stopped else "the run not ended"
        return (
            f"published {kinds} ({end}); {self.duplicates} already stored, "
            f"{self.retries} sends retried"
        )


class Publisher:
    def __init__(
        self,
        run_dir: str | Path,
        bus: Bus,
        *,
        poll_s: float = 1.0,
        end_grace_s: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.bus, self.poll_s, self.end_grace_s = bus, poll_s, end_grace_s
        self.cursor_path = self.run_dir / PUBLISH_DIR / f"{bus.name}.json"
        self.report = Published()
        self.stopping = asyncio.Event()

    async def run(self, *, follow: bool = True) -> Published:
        """Publish until the run's stop went out (``follow``: wait for the run to end;
        otherwise what is final now, then return) or ``stopping`` is set."""
        run = await asyncio.to_thread(Run, self.run_dir)
        try:
            composer = Composer(run, await asyncio.to_thread(self._load_cursor))
            await self._connect()
            while not self.stopping.is_set():
                ended = await asyncio.to_thread(self._ended, run)
                await self._publish(composer, ended)
                if composer.cursor.stopped or not follow:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.poll_s)
            self.report.stopped = composer.cursor.stopped
            return self.report
        finally:
            await self.bus.close()
            await asyncio.to_thread(run.close)

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.bus.connect()
                return
            except PublishError:
                raise
            except Exception as e:  # the broker is not up yet: wait for it as for an outage
                if self.stopping.is_set():
                    raise PublishError(f"{self.bus.target['url']}: {e}") from None
                log.warning("cannot reach %s (%s): trying again", self.bus.target["url"], e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _publish(self, composer: Composer, ended: bool) -> None:
        docs = composer.documents(ended=ended)
        while True:
            # the store is read off the event loop; the cursor is saved once a batch is stored
            batch = await asyncio.to_thread(list, itertools.islice(docs, BATCH))
            if not batch:
                return
            await self._send(batch)
            await asyncio.to_thread(self._save_cursor, composer.cursor)

    async def _send(self, batch: list[Document]) -> None:
        delay = 0.1
        while True:
            try:
                self.report.duplicates += await self.bus.send(batch)
                break
            except BusUnavailable as e:  # all again: what was stored is a duplicate
                self.report.retries += 1
                log.warning("%d documents not all stored (%s): sending again", len(batch), e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for name, _ in batch:
            self.report.counts[name] = self.report.counts.get(name, 0) + 1

    def _ended(self, run: Run) -> bool:
        if being_recorded(self.run_dir):
            return False
        if not run.sources_not_closed():
            return True
        last = run.last_received()
        return last is None or time.time() - last > self.end_grace_s

    # -- the durable cursor ---------------------------------------------------------------------
    def _load_cursor(self) -> Cursor:
        if not self.cursor_path.exists():
            return Cursor()
        saved = msgspec.json.decode(self.cursor_path.read_bytes())
        if saved.get("target") != self.bus.target:  # sent elsewhere before: all of it here
            log.warning("%s was for %s: publishing from the start", self.cursor_path, saved)
            return Cursor()
        return msgspec.convert(saved["cursor"], Cursor)

    def _save_cursor(self, cursor: Cursor) -> None:
        self.cursor_path.parent.mkdir(exist_ok=True)
        tmp = self.cursor_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode({"target": self.bus.target, "cursor": cursor}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cursor_path)
