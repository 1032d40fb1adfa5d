"""``operando driver bluesky --proxy ENDPOINT``: a bluesky RunEngine's documents as XAS scans.

Subscribes to the output of a ``bluesky.callbacks.zmq.Proxy``; every message there is one
frame ``prefix b' ' name b' ' payload``, the payload serialised by the Publisher. MessagePack
(with msgpack-numpy's array encoding) and JSON are read; pickle, bluesky's default, is refused
and never unpickled: the error names the fix (``Publisher(..., serializer=msgpack.packb)``).

Mapping (start / descriptor / event / event_page / stop):
- a step scan (``scan([tey, tfy, i0], energy, ...)``): each event of the chosen stream is one
  point; at the run's stop the points become one XAS scan (point times from the events);
- a fly scan whose events carry arrays: each event with an array energy field is one scan.
The energy field is ``--energy-field`` (default: a data key named like energy); channels are
the other numeric fields, renamed with ``--channel OURS=THEIRS`` (ours: I0, TEY, TFY, PFY) and
otherwise kept under bluesky's names (``tey`` -> TEY: the usual names are recognised).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.scan_formats import CANONICAL, ENERGY_NAMES, guess_edge

from operando.protocol import Spot, XASScan
from operando.transport import LINGER_MS

log = logging.getLogger(__name__)

DEFAULT_NAME = "spectrometer"
SERIALIZERS = ("auto", "msgpack", "json")
PICKLE_FIX = (
    "the Publisher sends pickle (bluesky's default), which operando never unpickles: publish "
    "with serializer=msgpack.packb (or msgpack_numpy.packb for arrays) or a JSON serializer, "
    "e.g. Publisher(address, serializer=msgpack.packb)"
)


class DocumentError(ValueError):
    """A message from the proxy that is not a document we can read; says why."""


def parse_message(message: bytes, serializer: str = "auto") -> tuple[bytes, str, dict[str, Any]]:
    """(prefix, document name, document) of one proxy message."""
    parts = message.split(b" ", 2)
    if len(parts) != 3:
        raise DocumentError(
            f"expected 'prefix name payload' separated by spaces, got {len(parts)} part(s)"
        )
    prefix, name_b, payload = parts
    name = name_b.decode("ascii", errors="replace")
    kind = serializer if serializer != "auto" else sniff(payload)
    if kind == "pickle":
        raise DocumentError(f"{name}: {PICKLE_FIX}")
    try:
        if kind == "json":
            doc = json.loads(payload)
        else:
            doc = msgpack.unpackb(payload, raw=False, object_hook=_numpy_hook, strict_map_key=False)
    except (ValueError, TypeError, IndexError) as e:  # msgpack's errors are ValueErrors;
        # TypeError: a map key it cannot hash, or an array's dtype or shape that is not one
        raise DocumentError(f"{name}: payload is not {kind}: {type(e).__name__}: {e}") from None
    if not isinstance(doc, dict):
        raise DocumentError(f"{name}: payload is a {type(doc).__name__}, not a document")
    return prefix, name, doc


def sniff(payload: bytes) -> str:
    """pickle (protocol 2+ opens with 0x80 and the protocol number), JSON ('{') or msgpack."""
    if len(payload) > 1 and payload[0] == 0x80 and 2 <= payload[1] <= 5:
        return "pickle"
    if payload[:1] in (b"(", b"}", b"]") and payload.rstrip().endswith(b"."):
        return "pickle"  # protocol 0/1: opcodes, ending in STOP '.'
    return "json" if payload.lstrip()[:1] == b"{" else "msgpack"


def _numpy_hook(obj: dict[Any, Any]) -> Any:
    """msgpack-numpy's array encoding ({nd: True, type, shape, data}) as numbers only."""
    nd = obj.get(b"nd", obj.get("nd"))
    if nd is None:
        return obj
    dtype = obj.get(b"type", obj.get("type"))
    data = obj.get(b"data", obj.get("data"))
    if isinstance(dtype, bytes):
        dtype = dtype.decode()
    dt = np.dtype(dtype)
    if dt.kind not in "biufc" or not isinstance(data, bytes):
        raise DocumentError(f"array of dtype {dtype!r}: only numeric arrays are accepted")
    arr = np.frombuffer(data, dtype=dt)
    if nd:
        arr = arr.reshape(obj.get(b"shape", obj.get("shape")))
    return arr if nd else arr[0]


@dataclasses.dataclass(slots=True)
class _Run:
    start: dict[str, Any]
    descriptors: dict[str, str] = dataclasses.field(default_factory=dict)  # uid -> stream
    times: list[float] = dataclasses.field(default_factory=list)
    points: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    scans: int = 0
    refused: bool = False  # said once a run: its events carry no energy to make spectra of


class BlueskyDocuments(Driver):
    instrument = "spectrometer"

    def __init__(
        self,
        opts: DriverOptions,
        proxy: str,
        *,
        prefix: bytes = b"",
        serializer: str = "auto",
        stream: str = "primary",
        energy_field: str | None = None,
        channels: dict[str, str] | None = None,
        edge: str | None = None,
        spot: str | None = None,
    ) -> None:
        super().__init__(dataclasses.replace(opts, speed=1.0))  # documents carry real times
        # a mistyped --proxy is refused now, not after the wait for a subscriber
        with zmq.Context() as ctx, ctx.socket(zmq.SUB) as probe:
            probe.setsockopt(zmq.LINGER, 0)
            probe.connect(proxy)
        self.proxy, self.prefix, self.serializer = proxy, prefix, serializer
        self.stream, self.energy_field, self.edge, self.spot = stream, energy_field, edge, spot
        self.rename = {theirs: ours for ours, theirs in (channels or {}).items()}
        self.runs: dict[str, _Run] = {}
        self.descriptor_run: dict[str, str] = {}
        self.counts = {"documents": 0, "scans": 0, "refused": 0}
        self.last_refusal = ""

    def metadata(self) -> dict[str, Any]:
        return {"proxy": self.proxy, "stream": self.stream, "serializer": self.serializer}

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.counts, "last_refusal": self.last_refusal}

    async def produce(self) -> None:
        assert self.ctx is not None
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.prefix + b" " if self.prefix else b"")
        sock.connect(self.proxy)
        try:
            while True:
                await self.handle(await sock.recv())
        finally:
            sock.close(linger=0)

    async def handle(self, message: bytes) -> None:
        """One message from the proxy; what cannot be read is refused, counted and logged."""
        try:
            _, name, doc = parse_message(message, self.serializer)
        except DocumentError as e:
            await self._refuse("a bluesky document", str(e))
            return
        try:
            await self.on_document(name, doc)
        except Exception as e:
            # A document of a shape no bluesky plan makes (a field of the wrong type, numbers
            # beyond 64 bits): refused and counted; the next document is read as usual.
            await self._refuse(f"a bluesky {name} document", f"{type(e).__name__}: {e}")

    async def _refuse(self, what: str, why: str) -> None:
        self.counts["refused"] += 1
        if why != self.last_refusal:  # once per kind of fault, not per message
            log.error("%s refused: %s", what, why)
        self.last_refusal = why
        await self.refuse(what, why)

    async def _no_spectrum(self, run: _Run, data: dict[str, Any], why: str) -> None:
        """A run whose events make no spectrum (a count plan, no energy field): said once."""
        if run.refused:
            return
        run.refused = True
        s = run.start
        what = f"bluesky run {s.get('scan_id', '')} ({s.get('plan_name', '?')}, {s['uid'][:8]})"
        await self._refuse(what, f"{why} (fields: {sorted(data)})")

    async def on_document(self, name: str, doc: dict[str, Any]) -> None:
        self.counts["documents"] += 1
        if name == "start":
            self.runs[doc["uid"]] = _Run(doc)
        elif name == "descriptor":
            run = self.runs.get(doc.get("run_start", ""))
            if run is not None:
                run.descriptors[doc["uid"]] = doc.get("name", "primary")
                self.descriptor_run[doc["uid"]] = doc["run_start"]
        elif name == "event":
            await self._event(doc["descriptor"], doc["data"], float(doc["time"]))
        elif name == "event_page":
            for i, t in enumerate(doc["time"]):
                data = {k: v[i] for k, v in doc["data"].items()}
                await self._event(doc["descriptor"], data, float(t))
        elif name == "stop":
            run = self.runs.pop(doc.get("run_start", ""), None)
            if run is None:
                return
            for uid in run.descriptors:  # a week of runs must not pile up here
                self.descriptor_run.pop(uid, None)
            if run.points:
                await self._send_step_scan(run, doc)

    async def _event(self, descriptor: str, data: dict[str, Any], t: float) -> None:
        run = self.runs.get(self.descriptor_run.get(descriptor, ""))
        if run is None or run.descriptors.get(descriptor) != self.stream:
            return
        energy_key = self._energy_key(data)
        if energy_key is None:
            await self._no_spectrum(run, data, self._no_energy())
            return
        if np.ndim(data[energy_key]) == 1:  # a fly scan: this event is a whole spectrum
            n = len(data[energy_key])
            channels = {
                k: np.asarray(v, float)
                for k, v in data.items()
                if k != energy_key and np.ndim(v) == 1 and len(v) == n and _numeric(v)
            }
            run.scans += 1
            await self._send(run, np.asarray(data[energy_key], float), channels, t, t, None)
        else:
            run.times.append(t)
            run.points.append(data)

    def _no_energy(self) -> str:
        if self.energy_field:
            return f"no {self.energy_field!r} field (--energy-field) in its events"
        return "no energy field in its events (name one with --energy-field)"

    def _energy_key(self, data: dict[str, Any]) -> str | None:
        if self.energy_field:
            return self.energy_field if self.energy_field in data else None
        lower = {k.lower(): k for k in data}
        for name in ENERGY_NAMES:
            if name in lower:
                return lower[name]
        return next((k for k in data if "energy" in k.lower()), None)

    async def _send_step_scan(self, run: _Run, stop: dict[str, Any]) -> None:
        energy_key = self._energy_key(run.points[0])
        if energy_key is None:
            await self._no_spectrum(run, run.points[0], self._no_energy())
            return
        if len(run.points) < 2:
            await self._no_spectrum(run, run.points[0], "one point is not a spectrum")
            return
        keys = [
            k
            for k, v in run.points[0].items()
            if k != energy_key and np.ndim(v) == 0 and _numeric(v)
        ]
        energy = np.array([p[energy_key] for p in run.points], float)
        channels = {k: np.array([p.get(k, np.nan) for p in run.points], float) for k in keys}
        t = np.array(run.times)
        run.scans += 1
        await self._send(run, energy, channels, float(t[0]), float(t[-1]), t, stop)

    async def _send(
        self,
        run: _Run,
        energy: np.ndarray,
        channels: dict[str, np.ndarray],
        t0: float,
        t1: float,
        point_t: np.ndarray | None,
        stop: dict[str, Any] | None = None,
    ) -> None:
        assert self.pub is not None
        canonical = {c.lower(): c for c in CANONICAL}
        named = {self.rename.get(k, canonical.get(k.lower(), k)): v for k, v in channels.items()}
        start = run.start
        scan_id = f"{start.get('scan_id', start['uid'][:8])}"
        if run.scans > 1 or point_t is None:
            scan_id += f"-{run.scans}"
        extra = {
            "run_uid": start["uid"],
            "plan_name": start.get("plan_name", ""),
            "bluesky_scan_id": start.get("scan_id"),
            **{
                k: v
                for k, v in start.items()
                if k in ("sample", "proposal", "operator", "beamline")
            },
        }
        if stop is not None:
            extra["exit_status"] = stop.get("exit_status", "")
        header = XASScan(
            source=self.opts.name,
            scan_id=scan_id,
            edge=self.edge or start.get("edge") or guess_edge(energy),
            t_start_ns=int(t0 * 1e9),
            t_end_ns=int(t1 * 1e9),
            spot=Spot(id=self.spot) if self.spot else None,
            exposure_s=t1 - t0,
            channels=tuple(named),
            extra=json.loads(json.dumps(extra, default=str)),
        )
        arrays = {"energy": energy, **named}
        if point_t is not None:
            arrays["point_t"] = point_t
        await self.pub.send(header, arrays)
        self.counts["scans"] += 1


def _numeric(v: Any) -> bool:
    return (
        isinstance(v, int | float | np.number | np.ndarray)
        and not isinstance(v, bool)
        and (not isinstance(v, np.ndarray) or v.dtype.kind in "iuf")
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proxy", required=True, help="the bluesky 0MQ Proxy's output, tcp://host:port")
    p.add_argument("--prefix", default="", help="only documents published with this prefix")
    p.add_argument("--serializer", choices=SERIALIZERS, default="auto")
    p.add_argument("--stream", default="primary", help="the event stream holding the scan")
    p.add_argument("--energy-field", help="data key of the energy (default: one named energy)")
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="OURS=THEIRS",
        help="name a data key as one of ours: I0, TEY, TFY, PFY (repeat)",
    )
    p.add_argument("--edge", help="edge of the scans, e.g. Mn-L (default: from the energy)")
    p.add_argument("--spot", help="sample spot id (for dose book-keeping)")


def from_args(a: argparse.Namespace, opts: DriverOptions) -> BlueskyDocuments:
    from operando.drivers.scan_files import column_map

    return BlueskyDocuments(
        opts,
        a.proxy,
        prefix=a.prefix.encode(),
        serializer=a.serializer,
        stream=a.stream,
        energy_field=a.energy_field,
        channels=column_map(a.channel, "--channel"),
        edge=a.edge,
        spot=a.spot,
    )
