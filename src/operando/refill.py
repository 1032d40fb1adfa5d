"""Gap refill: the monitor asks a driver to send again the messages it missed.

Every gap the sequence tracker reports (messages lost on the way, a monitor restart, a link
that went down, the tail a killed driver's spool still holds) becomes a ``resend`` command to
that source's command socket. The driver publishes the messages again, byte for byte, on its
data socket; the monitor records them marked as refills. What the driver no longer holds, or
a driver that does not answer, becomes a ``gap_unrecoverable`` event with the exact range:
the one kind of loss that raises an alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq.asyncio

from operando.config import SourceConfig
from operando.events import EventKind, Recorder
from operando.transport import CommandClient, CommandError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RefillRequest:
    link: str
    session: str
    first: int
    last: int


class Refiller:
    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        sources: Sequence[SourceConfig],
        event: Recorder,
        curve: dict[str, dict[str, bytes]] | None = None,
        *,
        attempts: int = 5,
        timeout_s: float = 2.0,
        resend_timeout_s: float = 30.0,
    ) -> None:
        self.ctx = ctx
        self.sources = {s.name: s for s in sources}
        self.event = event
        self.curve = curve or {}
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.resend_timeout_s = resend_timeout_s
        self.queue: asyncio.Queue[RefillRequest] = asyncio.Queue()
        self.clients: dict[str, CommandClient] = {}
        self.requested = 0
        self.resent = 0
        self.unrecoverable = 0

    def on_event(self, kind: EventKind, link: str | None, detail: dict[str, Any]) -> None:
        if kind == EventKind.GAP and link in self.sources:
            self.queue.put_nowait(
                RefillRequest(
                    link, str(detail["session"]), int(detail["first"]), int(detail["last"])
                )
            )

    async def run(self) -> None:
        while True:
            req = await self.queue.get()
            try:
                await self._refill(req)
            except Exception as e:  # a bug here must not stop later refills
                log.exception("refill of %s failed", req)
                self._unrecoverable(req, req.first, req.last, f"{type(e).__name__}: {e}")

    async def _refill(self, req: RefillRequest) -> None:
        src = self.sources[req.link]
        if not src.command:
            self._unrecoverable(req, req.first, req.last, "no command endpoint for this source")
            return
        client = self.clients.get(req.link)
        if client is None:
            client = self.clients[req.link] = CommandClient(
                self.ctx,
                src.command,
                "monitor",
                timeout_s=self.timeout_s,
                retries=0,
                curve=self.curve.get(req.link),
            )
        args = {"session": req.session, "first": req.first, "last": req.last}
        self.requested += 1
        error = ""
        for attempt in range(self.attempts):
            try:
                # a driver reads its spool before it answers: that may take seconds
                ack = await client.request("resend", args, timeout_s=self.resend_timeout_s)
            except CommandError as e:  # the driver is down or restarting: ask again
                error = str(e)
                await asyncio.sleep(min(2.0**attempt, 10.0))
                continue
            if not ack.ok:
                self._unrecoverable(req, req.first, req.last, f"the driver refused: {ack.error}")
                return
            resent = int(ack.result.get("resent", 0))
            unavailable = [list(r) for r in ack.result.get("unavailable", [])]
            self.resent += resent
            self.event(
                EventKind.REFILL,
                req.link,
                None,
                session=req.session,
                first=req.first,
                last=req.last,
                resent=resent,
                unavailable=unavailable,
            )
            for first, last in unavailable:
                self._unrecoverable(req, first, last, "no longer held by the driver")
            return
        self._unrecoverable(req, req.first, req.last, f"the driver did not answer: {error}")

    def _unrecoverable(self, req: RefillRequest, first: int, last: int, reason: str) -> None:
        self.unrecoverable += last - first + 1
        self.event(
            EventKind.GAP_UNRECOVERABLE,
            req.link,
            None,
            session=req.session,
            first=first,
            last=last,
            count=last - first + 1,
            reason=reason,
        )

    def status(self) -> dict[str, int]:
        return {
            "requested": self.requested,
            "resent": self.resent,
            "unrecoverable": self.unrecoverable,
            "waiting": self.queue.qsize(),
        }

    async def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
