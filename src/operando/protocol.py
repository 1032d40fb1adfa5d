"""The wire protocol: one typed schema that both encodes and validates.

A message is a ZeroMQ multipart ``[topic, header, *array_frames]``. The header is MessagePack of
one of the ``Header`` structs below (a tagged union on ``kind``); each array frame is a raw
C-contiguous buffer whose name, dtype and shape the header lists in ``arrays``. Nothing is ever
pickled: a frame is only ever read as numbers of a whitelisted numeric dtype.

Conventions (stated once, used everywhere):
- times in headers are integer nanoseconds since the Unix epoch on the *source's* clock;
  the potentiostat's row times ``t`` are float64 seconds on that same clock.
- current ``I`` is in mA, positive on charge (EC-Lab's convention); ``Ewe`` in V; ``Q`` in mAh.
- control ``mode`` follows EC-Lab: 1 = constant current (CC), 2 = constant voltage (CV),
  3 = open circuit / rest (OCV).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import numpy as np

from operando.rawlog import frame_sizes

PROTOCOL_VERSION = 1

MODE_CC, MODE_CV, MODE_OCV = 1, 2, 3
MODE_NAMES = {MODE_CC: "CC", MODE_CV: "CV", MODE_OCV: "OCV"}

# Numeric dtypes only: an object or void dtype could smuggle anything; these are plain numbers.
_DTYPES = {
    np.dtype(d).str: np.dtype(d)
    for d in ("f8", "f4", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1", "c16", "c8")
}
ALLOWED_DTYPES = frozenset(_DTYPES)
MAX_ARRAYS = 64

# What SQLite's INTEGER holds (signed 64 bits): a header with a larger number is malformed here,
# never a row the store cannot write (a seq of 2**64 - 1 once stopped the recording for good).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class ProtocolError(ValueError):
    """A message that does not follow the wire protocol; the text says which field and why."""


class ArraySpec(msgspec.Struct, array_like=True, frozen=True):
    """Describes one array frame: its name, little-endian dtype string and shape."""

    name: str
    dtype: str
    shape: tuple[Int64, ...]


class Spot(msgspec.Struct, frozen=True, kw_only=True):
    """A sample position: the id that dose book-keeping uses, and motor coordinates."""

    id: str
    x_mm: float = 0.0
    y_mm: float = 0.0


class _Header(msgspec.Struct, tag_field="kind", kw_only=True, frozen=True):
    v: Int64 = PROTOCOL_VERSION
    source: str
    session: str = ""  # one driver process lifetime: seq restarts at 0 with a new session
    seq: Int64 = 0
    t_ns: Int64 = 0  # when the source sent it, source clock
    series: str = ""  # the run/series this message belongs to
    arrays: tuple[ArraySpec, ...] = ()

    required_arrays: ClassVar[tuple[str, ...]] = ()


class SeriesStart(_Header, tag="series_start", frozen=True, kw_only=True):
    """Opens a series (a run of one instrument). Re-sent with ``reannounce`` to late joiners."""

    instrument: Literal["potentiostat", "spectrometer", "other"] = "other"
    metadata: dict[str, Any] = {}
    reannounce: bool = False


class SeriesEnd(_Header, tag="series_end", frozen=True, kw_only=True):
    reason: str = "completed"
    last_seq: Int64 = -1


class PotentiostatBatch(_Header, tag="potentiostat_batch", frozen=True, kw_only=True):
    """Rows of the potentiostat: arrays t, Ewe, I, mode, step, cycle and optionally Q."""

    required_arrays: ClassVar[tuple[str, ...]] = ("t", "Ewe", "I", "mode", "step", "cycle")
    optional_arrays: ClassVar[tuple[str, ...]] = ("Q",)


class _SpectrumHeader(_Header, frozen=True, kw_only=True):
    scan_id: str
    edge: str = ""
    t_start_ns: Int64
    t_end_ns: Int64
    spot: Spot | None = None
    flux_ph_s: float = 0.0
    exposure_s: float = 0.0  # dwell on the spot summed over the scan
    trigger_id: str = ""
    extra: dict[str, Any] = {}


class XASScan(_SpectrumHeader, tag="xas_scan", frozen=True, kw_only=True):
    """One absorption scan: ``energy`` (eV), one array per channel, optional ``point_t`` (s)."""

    channels: tuple[str, ...]
    required_arrays: ClassVar[tuple[str, ...]] = ("energy",)


class RIXSRows(_SpectrumHeader, tag="rixs_rows", frozen=True, kw_only=True):
    """Rows of a RIXS map: ``excitation`` (n, eV), ``emission`` (m, eV), ``counts`` (n, m)."""

    map_id: str
    row_offset: Int64 = 0
    rows_total: Int64 = 0
    required_arrays: ClassVar[tuple[str, ...]] = ("excitation", "emission", "counts")


class Command(_Header, tag="command", frozen=True, kw_only=True):
    id: str
    action: str
    args: dict[str, Any] = {}


class Ack(_Header, tag="ack", frozen=True, kw_only=True):
    id: str
    ok: bool = True
    error: str = ""
    result: dict[str, Any] = {}


class Heartbeat(_Header, tag="heartbeat", frozen=True, kw_only=True):
    """Sent every second or so: proves the source is alive and carries its clock and last seq."""

    state: str = "running"


class Refused(_Header, tag="refused", frozen=True, kw_only=True):
    """A driver could not turn something it was given into data (a bluesky document, a scan
    file, a line): what and why, so the run holds every refusal, not only the driver's log."""

    what: str
    why: str


class StateUpdate(_Header, tag="state", frozen=True, kw_only=True):
    """The monitor's derived state for dashboards (topic: aligned, potentiostat, status, event)."""

    topic: str
    body: dict[str, Any] = {}


Header = (
    SeriesStart
    | SeriesEnd
    | PotentiostatBatch
    | XASScan
    | RIXSRows
    | Command
    | Ack
    | Heartbeat
    | Refused
    | StateUpdate
)
SPECTRUM_KINDS = (XASScan, RIXSRows)

_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(Header)


class _Version(msgspec.Struct):
    v: int = -1
    kind: str = ""


_version_decoder = msgspec.msgpack.Decoder(_Version)


class Envelope(msgspec.Struct, frozen=True):
    """Where a message sits in its stream, read from a header that failed validation."""

    kind: str
    session: str
    seq: Int64
    t_ns: Int64 = 0


_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def peek_envelope(frames: Sequence[bytes | memoryview]) -> Envelope | None:
    """The kind, session and seq of a malformed message, when its header still states them.

    A message recorded as malformed was received, not lost: its seq must not open a gap.
    """
    if len(frames) < 2:
        return None
    try:
        return _envelope_decoder.decode(frames[1])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: the validated header and its arrays (read-only views of the frames)."""

    header: Header
    arrays: LazyArrays

    @property
    def kind(self) -> str:
        return _KINDS[type(self.header)]


def kind_of(header_type: type[_Header]) -> str:
    return header_type.__struct_config__.tag  # type: ignore[return-value]


_KINDS: dict[type[Any], str] = {t: kind_of(t) for t in Header.__args__}  # type: ignore[attr-defined]


def topic_for(header: _Header) -> bytes:
    return f"{kind_of(type(header))}/{header.source}".encode()


def encode(header: Header, arrays: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Frames for the wire: topic, MessagePack header, then the arrays as raw buffers.

    The array specs in the header are filled in here from the arrays themselves, so a sender
    cannot describe an array differently from what it sends.
    """
    arrays = arrays or {}
    if len(arrays) > MAX_ARRAYS:
        raise ProtocolError(f"{len(arrays)} arrays: at most {MAX_ARRAYS} per message")
    specs = []
    buffers = []
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.str not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {a.dtype} is not a plain numeric dtype")
        specs.append(ArraySpec(name, a.dtype.str, tuple(int(n) for n in a.shape)))
        buffers.append(a)
    header = msgspec.structs.replace(header, arrays=tuple(specs))
    return [topic_for(header), _encoder.encode(header), *buffers]


def decode(frames: Sequence[bytes | memoryview], sizes: Sequence[int] | None = None) -> Message:
    """Validate and decode a multipart message; raise ProtocolError naming what is wrong.

    ``sizes``: the frames' sizes in bytes, when the caller has them already."""
    if len(frames) < 2:
        raise ProtocolError(f"expected [topic, header, *arrays], got {len(frames)} frame(s)")
    raw_header = frames[1]
    try:
        header = _header_decoder.decode(raw_header)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        # Decode again leniently only on failure, to say which kind/version was meant.
        version = _peek_version(raw_header)
        _check_version(version.v, version.kind)
        raise ProtocolError(f"{version.kind or 'header'}: {e}") from None
    kind = _KINDS[type(header)]
    _check_version(header.v, kind)
    specs = header.arrays
    if len(frames) - 2 != len(specs):
        raise ProtocolError(
            f"{kind}: header lists {len(specs)} array(s) but {len(frames) - 2} "
            "array frame(s) followed"
        )
    layout = _layout(header, kind)
    sizes = frame_sizes(frames)[2:] if sizes is None else list(sizes[2:])
    if sizes != layout.nbytes:
        for spec, expected, size in zip(specs, layout.nbytes, sizes, strict=True):
            if size != expected:
                raise ProtocolError(
                    f"{kind}.arrays[{spec.name!r}]: frame has {size} bytes, shape {spec.shape} "
                    f"of {spec.dtype} needs {expected}"
                )
    if layout.error:
        raise ProtocolError(layout.error)
    if isinstance(header, SPECTRUM_KINDS) and header.t_end_ns < header.t_start_ns:
        raise ProtocolError(f"{kind}.t_end_ns: {header.t_end_ns} is before t_start_ns")
    arrays = LazyArrays(specs, frames[2:], layout.index)
    if isinstance(header, PotentiostatBatch):
        _check_measured(kind, arrays)
    return Message(header, arrays)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a header's array specs were found to need: each frame's size, or what is wrong."""

    nbytes: list[int]  # a list, to compare with the frames' sizes as they come
    index: dict[str, int]  # array name -> frame
    error: str = ""


# A stream repeats a few layouts (the same channels, the same shapes) for hours: each one is
# checked once, then only frame sizes are compared (the checks were a fifth of ingest's time).
_LAYOUTS: dict[tuple[Any, ...], _Layout] = {}
_MAX_LAYOUTS = 256  # a stream of ever-new shapes is checked every time, never hoarded


def _layout(header: Header, kind: str) -> _Layout:
    channels = header.channels if isinstance(header, XASScan) else ()
    key = (type(header), header.arrays, channels)
    layout = _LAYOUTS.get(key)
    if layout is None:
        sizes = [_frame_nbytes(kind, spec) for spec in header.arrays]
        index = {spec.name: i for i, spec in enumerate(header.arrays)}
        try:
            _check_shapes(header, {spec.name: spec.shape for spec in header.arrays})
            _check_real(header, kind)
            layout = _Layout(sizes, index)
        except ProtocolError as e:
            layout = _Layout(sizes, index, str(e))
        if len(_LAYOUTS) < _MAX_LAYOUTS:
            _LAYOUTS[key] = layout
    return layout


class LazyArrays(Mapping[str, np.ndarray]):
    """Array frames already checked against their specs, viewed as numpy only when asked for.

    The monitor needs few of a spectrum's arrays live (point times), so most are never
    materialised on the hot path; the frames stay exactly as received.
    """

    __slots__ = ("_cache", "_frames", "_index", "_specs")

    def __init__(
        self,
        specs: tuple[ArraySpec, ...],
        frames: Sequence[Any],
        index: Mapping[str, int] | None = None,
    ) -> None:
        self._specs, self._frames = specs, frames
        self._index = index if index is not None else {s.name: i for i, s in enumerate(specs)}
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._cache.get(name)
        if a is None:
            i = self._index[name]
            spec = self._specs[i]
            a = np.frombuffer(self._frames[i], dtype=_DTYPES[spec.dtype]).reshape(spec.shape)
            self._cache[name] = a
        return a

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        # Mapping.get goes through a KeyError for a missing name: 10x the cost of this
        return self[name] if name in self._index else default

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._specs[self._index[name]].shape

    @property
    def nbytes(self) -> int:
        """The bytes the arrays' frames hold."""
        return sum(frame_sizes(self._frames))


def _peek_version(raw_header: bytes | memoryview) -> _Version:
    try:
        return _version_decoder.decode(raw_header)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"header is not a MessagePack map: {e}") from None


def _check_version(v: int, kind: str) -> None:
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {v} in a {kind or 'message'} "
            f"(this build speaks version {PROTOCOL_VERSION})"
        )


def _frame_nbytes(kind: str, spec: ArraySpec) -> int:
    dtype = _DTYPES.get(spec.dtype)
    if dtype is None:
        raise ProtocolError(
            f"{kind}.arrays[{spec.name!r}]: dtype {spec.dtype!r} is not an allowed numeric dtype"
        )
    if min(spec.shape, default=0) < 0:
        raise ProtocolError(f"{kind}.arrays[{spec.name!r}]: negative dimension in {spec.shape}")
    return math.prod(spec.shape) * dtype.itemsize


def _check_shapes(header: _Header, shapes: dict[str, tuple[int, ...]]) -> None:
    kind = kind_of(type(header))
    missing = [n for n in header.required_arrays if n not in shapes]
    if isinstance(header, XASScan):
        missing += [c for c in header.channels if c not in shapes]
    if missing:
        raise ProtocolError(f"{kind}: missing array(s) {', '.join(missing)}")
    if isinstance(header, PotentiostatBatch):
        n = shapes["t"]
        if len(n) != 1:
            raise ProtocolError(f"{kind}.arrays['t']: need a 1-D column, got shape {n}")
        for name in (*header.required_arrays, *header.optional_arrays):
            if name in shapes and shapes[name] != n:
                raise ProtocolError(
                    f"{kind}.arrays[{name!r}]: shape {shapes[name]}, expected {n} like 't'"
                )
    elif isinstance(header, XASScan):
        n = shapes["energy"]
        if len(n) != 1 or n[0] < 2:
            raise ProtocolError(f"{kind}.arrays['energy']: need a 1-D axis, got shape {n}")
        for name in (*header.channels, "point_t"):
            if name in shapes and shapes[name] != n:
                raise ProtocolError(
                    f"{kind}.arrays[{name!r}]: shape {shapes[name]}, expected {n} like 'energy'"
                )
    elif isinstance(header, RIXSRows):
        ex, em, counts = shapes["excitation"], shapes["emission"], shapes["counts"]
        if len(ex) != 1 or len(em) != 1 or counts != (ex[0], em[0]):
            raise ProtocolError(
                f"{kind}.arrays['counts']: shape {counts}, expected "
                f"(len(excitation), len(emission)) = ({ex[0] if ex else '?'}, "
                f"{em[0] if em else '?'})"
            )


def _check_real(header: _Header, kind: str) -> None:
    """The arrays a kind names (columns, axes, channels) hold real numbers: a complex or
    boolean one would be cast silently, or reach the store as values it cannot hold."""
    named = {*header.required_arrays, *getattr(header, "optional_arrays", ()), "point_t"}
    if isinstance(header, XASScan):
        named.update(header.channels)
    for spec in header.arrays:
        if spec.name in named and _DTYPES[spec.dtype].kind not in "fiu":
            raise ProtocolError(
                f"{kind}.arrays[{spec.name!r}]: {_DTYPES[spec.dtype]} values, "
                "expected real numbers (float or int)"
            )


# A potentiostat's time, potential, current and charge enter running integrals: one NaN, one
# infinity or one number so large that its products overflow would spoil every alignment after
# it. Such a batch is malformed. (1e15 s, V, mA or mAh is beyond any measurement.)
_MEASURED_COLUMNS = ("t", "Ewe", "I", "Q")
MAX_MAGNITUDE = 1e15


def _check_measured(kind: str, arrays: LazyArrays) -> None:
    for name in _MEASURED_COLUMNS:
        if name in arrays:
            values = arrays[name]
            bad = ~(np.abs(values) < MAX_MAGNITUDE)  # NaN compares false: bad as well
            if bad.any():
                row = int(bad.argmax())
                raise ProtocolError(
                    f"{kind}.arrays[{name!r}][{row}]: {values[row]} is not a measured value "
                    f"(a finite number of magnitude below {MAX_MAGNITUDE:g})"
                )


def plain(obj: Any) -> Any:
    """msgspec ``enc_hook``: numpy scalars (from arithmetic on arrays) as plain numbers."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")
