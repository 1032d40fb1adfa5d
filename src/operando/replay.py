"""``operando replay RUN``: publish a recorded run again through the wire protocol, so a monitor
and its dashboard can show or debug a beamtime afterwards.

Each recorded source gets a publisher on the data endpoint the run's configuration (or
``--config``) gives it, under its own name; messages leave in the order received, spaced as
they arrived divided by ``speed`` (0: as fast as the subscribers take them). Headers keep every
recorded field, times included (a replayed spectrum aligns as it did), apart from what a
publisher stamps: session, sequence number and send time, which is the recorded time of the
message being replayed. Heartbeats and re-announcements are the replaying publisher's own.
Messages recorded as malformed go out again exactly as received, so the monitor meets the
same bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import zmq.asyncio

from operando.config import ExperimentConfig
from operando.export import Progress
from operando.protocol import (
    Heartbeat,
    ProtocolError,
    SeriesEnd,
    SeriesStart,
    StateUpdate,
    decode,
)
from operando.store.reader import Run, iter_raw, load_run_config
from operando.transport import Publisher

log = logging.getLogger(__name__)


class Replay:
    def __init__(
        self,
        run_dir: Path,
        cfg: ExperimentConfig | None = None,
        *,
        speed: float = 1.0,
        wait_subscriber_s: float = 10.0,
    ) -> None:
        if speed < 0:
            raise ValueError(f"--speed must be >= 0, got {speed}")
        self.run_dir = run_dir
        self.cfg = cfg or load_run_config(run_dir)
        self.speed = speed
        self.wait_subscriber_s = wait_subscriber_s
        self.now_ns = 0  # the recorded time of the message being replayed
        self.sent: dict[str, int] = {}

    def _recorded(self) -> tuple[list[str], int]:
        with Run(self.run_dir) as run:
            return run.links(), run.raw_count()

    async def run(self, progress: Progress | None = None) -> dict[str, int]:
        links, total = self._recorded()
        endpoints = {s.name: s.data for s in self.cfg.sources}
        missing = [link for link in links if link not in endpoints]
        if missing:
            log.warning("no endpoint configured for %s: not replayed", ", ".join(missing))
        ctx = zmq.asyncio.Context()
        pubs = {
            link: Publisher(ctx, endpoints[link], link, clock=lambda: self.now_ns)
            for link in links
            if link in endpoints
        }
        try:
            for p in pubs.values():
                p.start()
            waits = [p.wait_for_subscriber(self.wait_subscriber_s) for p in pubs.values()]
            for link, ok in zip(pubs, await asyncio.gather(*waits), strict=True):
                if not ok:
                    log.warning(
                        "%s: no subscriber after %.0f s, replaying anyway",
                        link,
                        self.wait_subscriber_s,
                    )
            await self._replay(pubs, total, progress)
        finally:
            for p in pubs.values():
                with contextlib.suppress(Exception):
                    await p.close()
            ctx.destroy(linger=2000)
        return self.sent

    async def _replay(
        self, pubs: dict[str, Publisher], total: int, progress: Progress | None
    ) -> None:
        loop = asyncio.get_running_loop()
        first_recv: int | None = None
        wall0 = loop.time()
        open_series: set[str] = set()
        records = iter_raw(self.run_dir)
        n = 0
        while (rec := await asyncio.to_thread(next, records, None)) is not None:
            n += 1
            if progress is not None and (n % 200 == 0 or n == total):
                progress(n, total)
            pub = pubs.get(rec.link)
            if pub is None:  # a source without an endpoint (warned about above)
                continue
            first_recv = rec.recv_ns if first_recv is None else first_recv
            if self.speed > 0:
                due = wall0 + (rec.recv_ns - first_recv) / 1e9 / self.speed
                await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                msg = decode(rec.frames)
            except ProtocolError:
                await pub.send_raw([bytes(f) for f in rec.frames])
                self._count(rec.link)
                continue
            h = msg.header
            self.now_ns = h.t_ns or rec.recv_ns
            if isinstance(h, Heartbeat | StateUpdate) or (
                isinstance(h, SeriesStart) and h.reannounce
            ):
                continue
            if isinstance(h, SeriesStart):
                meta = {**h.metadata, "replayed_from": str(self.run_dir)}
                await pub.start_series(h.series, h.instrument, meta)
                open_series.add(rec.link)
            elif isinstance(h, SeriesEnd):
                await pub.end_series(h.reason)
                open_series.discard(rec.link)
            else:
                await pub.send(h, {k: msg.arrays[k] for k in msg.arrays})
            self._count(rec.link)
        for link in open_series:  # the recording ended without them (a stopped monitor)
            await pubs[link].end_series("replay finished")
        if progress is not None:
            progress(n, total)

    def _count(self, link: str) -> None:
        self.sent[link] = self.sent.get(link, 0) + 1
