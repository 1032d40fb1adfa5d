"""Ingest: record -> decode -> track sequence -> derive -> route, for one run. No sockets here.

The monitor feeds it frames from its subscriptions; ``operando reprocess`` feeds it the raw
log. Both therefore derive exactly the same tables from the same messages. What it derives goes
to its collaborators, each given at construction: the run store (typed rows), the event log,
the aligner (``alignment``), the live analysis and the orchestrator.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import msgspec
import numpy as np

from operando.align import Alignment, PotentiostatHistory
from operando.alignment import MALFORMED_BATCH, Aligner, PendingSpectrum, PotentiostatGap
from operando.analysis.rest import rest_voltage
from operando.analysis_thread import AnalysisThread
from operando.analyze import Analyzer, SpectrumInput
from operando.config import AlignmentConfig, AnalysisConfig, ElectrochemistryConfig, SourceConfig
from operando.doseledger import DoseLedger
from operando.electrochem import Electrochemistry
from operando.events import EventKind, EventLog
from operando.protocol import (
    Ack,
    Command,
    Message,
    PotentiostatBatch,
    ProtocolError,
    Refused,
    RIXSRows,
    SeriesEnd,
    SeriesStart,
    XASScan,
    decode,
    kind_of,
    peek_envelope,
    plain,
)
from operando.rawlog import RawRecord, frame_sizes
from operando.sequence import Arrival, Gap, SequenceTracker
from operando.store.rows import PotentiostatRow, SpectrumRow
from operando.store.writer import RunStore, Summary

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]


class Orchestration(Protocol):
    """What ingest tells the orchestrator (``orchestrate.Orchestrator``)."""

    def on_message(
        self, link: str, msg: Message, soc: np.ndarray | None, q: np.ndarray | None
    ) -> None: ...

    def on_spots(self, spots: list[str]) -> None: ...

    def on_replay(self, link: str, replayed_from: str) -> None: ...


_json = msgspec.json.Encoder(enc_hook=plain)
# a SOC outside this is a calibration error (capacity or starting SOC), not a cell state
SOC_RANGE = (-0.02, 1.02)


def _number(v: object) -> TypeGuard[float | int]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def spectrum_input(spectrum_id: int, h: XASScan | RIXSRows) -> SpectrumInput:
    return SpectrumInput(
        spectrum_id=spectrum_id,
        kind=kind_of(type(h)),
        edge=h.edge,
        spot=h.spot.id if h.spot else None,
        flux_ph_s=h.flux_ph_s,
        exposure_s=h.exposure_s,
        extra=dict(h.extra),
        scan_id=h.scan_id,
        map_id=h.map_id if isinstance(h, RIXSRows) else "",
        row_offset=h.row_offset if isinstance(h, RIXSRows) else 0,
        rows_total=h.rows_total if isinstance(h, RIXSRows) else 0,
    )


def _summary(msg: Message | None, error: str | None, frames: Sequence[Any]) -> Summary:
    """The raw index row's identification of a message: from its header, or its error (and
    where it sat in its stream, when the header still says)."""
    if msg is None:
        env = peek_envelope(frames)
        if env is None or env.seq < 0:
            return ("malformed", error, None, None, None, None, None)
        return ("malformed", error, None, env.session or None, env.seq, env.kind or None, None)
    h = msg.header
    return ("ok", None, h.source, h.session, h.seq, msg.kind, h.t_ns)


@dataclass(slots=True)
class LinkState:
    config: SourceConfig
    # added to the source's timestamps: configured, or measured at start (ping). The link's
    # own, never written back into the shared configuration (reprocess reads the measured
    # one back from the run's clock_offset event).
    clock_offset_s: float = 0.0
    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    malformed: int = 0
    late: int = 0
    not_derived: int = 0  # recorded, but its rows could not be derived (derive_error)
    refused: int = 0  # inputs the driver refused (its Refused messages)
    # who speaks on this link (driver, host), pinned at first sight; sessions of any other
    # source are refused: recorded, never derived, never taken as a restart
    identity: tuple[str, str] | None = None
    strangers: set[str] = field(default_factory=set)
    stranger_messages: int = 0
    last_t: float = -math.inf  # newest source time seen (reference clock)
    last_seen_wall: float = 0.0
    last_message_t: float = -math.inf  # t_ns of the previous message, for gap time ranges
    series: str = ""
    series_ended: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


class Ingest:
    """Everything that happens to a received message, in order, for one run."""

    def __init__(
        self,
        store: RunStore,
        sources: Sequence[SourceConfig],
        alignment: AlignmentConfig,
        publish: Publish | None = None,
        analysis: AnalysisConfig | None = None,
        base_dir: Path | None = None,
        *,
        events: EventLog | None = None,
        orchestrator: Orchestration | None = None,
        experiment: str = "",
        electrochemistry: ElectrochemistryConfig | None = None,
    ) -> None:
        """``events``: the run's event log (default: one writing to ``store`` and
        ``publish``); ``orchestrator``: what acts on rows, maps, doses and damage (None:
        nothing acts, as in reprocess); ``experiment``: the run's experiment name, against
        which each source's announced identity is checked; ``electrochemistry``: how
        half-cycles and current steps are derived (default: the defaults)."""
        self.store = store
        self.experiment = experiment
        self.cfg = alignment
        self.publish: Publish = publish or (lambda topic, body: None)
        self.events = events or EventLog(store, self.publish)
        self.orchestrator = orchestrator
        self.links = {s.name: LinkState(s, s.clock_offset_s) for s in sources}
        self.pstat_link = next((s.name for s in sources if s.role == "potentiostat"), None)
        self.history = PotentiostatHistory(alignment.current_step_mA, alignment.retain_s)
        self.soc_out_of_range = False  # said once a potentiostat series
        self.aligner = Aligner(
            alignment,
            self.history,
            self.pstat_link is not None,
            store.put,
            self.events,
            self._aligned,
        )
        self.now = -math.inf  # newest source time seen from any source (reference clock)
        self.counts: Counter[str] = Counter()
        derived = self.events.derived
        self.analyzer = (
            Analyzer(analysis, base_dir or Path.cwd(), store.put, derived, self.publish)
            if analysis is not None and analysis.enabled
            else None
        )
        # doses count on arrival, for the spot rotation (None: analysis is off)
        self.dose = (
            DoseLedger(analysis, store.put, derived)
            if analysis is not None and self.analyzer is not None
            else None
        )
        self.electrochem = Electrochemistry(
            electrochemistry or ElectrochemistryConfig(),
            analysis.rest_current_mA if analysis is not None else AnalysisConfig().rest_current_mA,
            store.put,
            self.publish,
        )
        # set by the monitor once its loop runs: analysis beside it (None: here, in order)
        self.analysis_thread: AnalysisThread | None = None
        self.cell: dict[str, Any] = {}  # the newest potentiostat row, for status displays
        self._refilling = False  # the message being processed fills a gap (sent again)
        # while live analysis is behind: [first spectrum not analysed live, how many]
        self._skipped_live: list[int] | None = None

    @property
    def pending(self) -> list[PendingSpectrum]:
        return self.aligner.pending

    @property
    def capacity_mAh(self) -> float | None:
        return self.aligner.capacity_mAh

    def set_clock_offset(self, link: str, offset_s: float) -> None:
        """The link's clock offset from now on (measured by ping, or read back from the run)."""
        if link in self.links:
            self.links[link].clock_offset_s = offset_s

    # -- entry points ----------------------------------------------------------------------
    def receive(
        self, link: str, frames: Sequence[Any], recv_ns: int | None = None, *, refill: bool = False
    ) -> Message | None:
        """A message off the socket: record it exactly as received, then derive from it.

        The record is queued whatever the decoding says (a malformed message is kept, marked
        with its error), and before anything derived from it.
        """
        recv_ns = recv_ns or time.time_ns()
        raw_id = self.store.take_raw_id()
        sizes = frame_sizes(frames)
        msg, error = self._decode(link, frames, sizes)
        refill = refill or self._fills_gap(link, msg)
        summary = _summary(msg, error, frames)
        self.store.append_raw(raw_id, recv_ns, link, frames, summary, refill, sizes)
        return self._process(raw_id, recv_ns, link, frames, msg, error, refill)

    def process_record(self, rec: RawRecord) -> Message | None:
        """A message already in the raw log (recovery after a crash, reprocess): index, derive."""
        msg, error = self._decode(rec.link, rec.frames)
        refill = self._fills_gap(rec.link, msg)
        self.store.index_raw(rec, _summary(msg, error, rec.frames), refill)
        return self._process(rec.raw_id, rec.recv_ns, rec.link, rec.frames, msg, error, refill)

    def _fills_gap(self, link: str, msg: Message | None) -> bool:
        """Was this message counted missing when it arrived (sent again on request)?"""
        state = self.links.get(link)
        if msg is None or state is None:
            return False
        return state.tracker.is_missing(msg.header.session, msg.header.seq)

    def _decode(
        self, link: str, frames: Sequence[Any], sizes: Sequence[int] | None = None
    ) -> tuple[Message | None, str | None]:
        if link not in self.links:
            return None, f"message on unknown link {link!r}"
        try:
            return decode(frames, sizes), None
        except ProtocolError as e:
            return None, str(e)

    def _process(
        self,
        raw_id: int,
        recv_ns: int,
        link: str,
        frames: Sequence[Any],
        msg: Message | None,
        error: str | None,
        refill: bool = False,
    ) -> Message | None:
        self.events.recv_ns, self._refilling = recv_ns, refill
        state = self.links.get(link)
        try:
            if msg is None or state is None:
                self.events.derived(EventKind.MALFORMED, link, None, raw_id=raw_id, error=error)
                if state is not None:
                    state.malformed += 1
                    self._track_malformed(raw_id, link, state, frames)
                return None
            try:
                self._derive(raw_id, link, state, msg)
            except Exception as e:  # a bug must not stop ingest: keep the message, say why
                log.exception("deriving %s message %d failed", link, raw_id)
                state.not_derived += 1
                self.events.derived(
                    EventKind.DERIVE_ERROR,
                    link,
                    None,
                    raw_id=raw_id,
                    error=f"{type(e).__name__}: {e}",
                )
            return msg
        finally:
            self.events.recv_ns, self._refilling = 0, False

    def _derive(self, raw_id: int, link: str, state: LinkState, msg: Message) -> None:
        h = msg.header
        offset = state.clock_offset_s
        t_src = h.t_ns * 1e-9 + offset
        state.last_seen_wall = time.monotonic()
        if isinstance(h, (Command, Ack)):  # not part of a data stream: audit only
            return
        if h.session in state.strangers or self._refuse_stranger(link, state, h, t_src):
            state.stranger_messages += 1
            return
        first_row_t = t_src
        if isinstance(h, PotentiostatBatch) and len(msg.arrays["t"]):
            first_row_t = float(msg.arrays["t"][0]) + offset
        if not self._track(raw_id, link, state, h.session, h.seq, t_src, first_row_t):
            return
        state.last_t = max(state.last_t, t_src)
        self.now = max(self.now, t_src)

        if isinstance(h, PotentiostatBatch):
            self._potentiostat(raw_id, link, state, msg, offset)
        elif isinstance(h, XASScan | RIXSRows):
            self._spectrum(raw_id, link, msg, offset)
            if self.orchestrator is not None and isinstance(h, RIXSRows):
                self.orchestrator.on_message(link, msg, None, None)
        elif isinstance(h, SeriesStart):
            self._series_start(link, state, h, t_src)
        elif isinstance(h, Refused):
            state.refused += 1
            self.events.derived(EventKind.DRIVER_REFUSED, link, t_src, what=h.what, why=h.why)
        elif isinstance(h, SeriesEnd):
            state.series_ended = True
            if link == self.pstat_link:
                self.aligner.potentiostat_ended = True
            self.events.derived(EventKind.SERIES_END, link, t_src, series=h.series, reason=h.reason)

    def _refuse_stranger(self, link: str, state: LinkState, h: Any, t: float) -> bool:
        """A series start from a source that is not this link's: refuse its session."""
        if not isinstance(h, SeriesStart):  # re-announces too: a stranger met mid-series
            return False
        ident = h.metadata.get("identity")
        ident = ident if isinstance(ident, dict) else {}
        driver, host = str(ident.get("driver", "")), str(ident.get("host", ""))
        experiment = str(ident.get("experiment", ""))
        why = ""
        if experiment and self.experiment and experiment != self.experiment:
            why = f"it publishes for experiment {experiment!r}, this run is {self.experiment!r}"
        elif state.config.driver and driver and driver != state.config.driver:
            why = f"a {driver} driver, where the experiment file names {state.config.driver}"
        elif driver and state.identity is not None and (driver, host) != state.identity:
            why = (
                f"{driver} on {host}, where this link's source is "
                f"{state.identity[0]} on {state.identity[1]}"
            )
        if not why:
            if driver and state.identity is None:
                state.identity = (driver, host)
            return False
        state.strangers.add(h.session)
        self.events.derived(
            EventKind.STRANGER_REFUSED,
            link,
            t,
            session=h.session,
            series=h.series,
            identity=ident,
            why=why,
        )
        return True

    def _track_malformed(
        self, raw_id: int, link: str, state: LinkState, frames: Sequence[Any]
    ) -> None:
        """A malformed message that still names its session and seq takes its place in the
        stream: it was received and recorded, so its seq is not reported lost.

        The rows of a malformed potentiostat batch are missing from the cell record all the
        same: spectra over its time are marked partial, as for a gap that is never filled."""
        env = peek_envelope(frames)
        if env is None or env.kind in ("command", "ack") or not env.session or env.seq < 0:
            return
        if env.session in state.strangers:
            return
        t = env.t_ns * 1e-9 + state.clock_offset_s if env.t_ns > 0 else state.last_message_t
        watermark = self.history.watermark
        if self._track(raw_id, link, state, env.session, env.seq, t, t) and link == self.pstat_link:
            self.aligner.missing(PotentiostatGap(env.seq, env.seq, watermark, t, MALFORMED_BATCH))

    def _track(
        self,
        raw_id: int,
        link: str,
        state: LinkState,
        session: str,
        seq: int,
        t_src: float,
        first_row_t: float,
    ) -> bool:
        """Place a message in its source's sequence: report restarts, gaps and reordering.
        False for a duplicate (already recorded: nothing to derive)."""
        verdict = state.tracker.observe(session, seq)
        if verdict.arrival is Arrival.DUPLICATE:
            self.events.derived(
                EventKind.DUPLICATE, link, t_src, raw_id=raw_id, session=session, seq=seq
            )
            return False
        if verdict.arrival is Arrival.NEW_SESSION and verdict.previous_session is not None:
            self.events.derived(
                EventKind.SOURCE_RESTARTED,
                link,
                t_src,
                session=session,
                previous_session=verdict.previous_session,
            )
        if verdict.gap is not None:
            self._gap(link, verdict.gap, state.last_message_t, t_src, first_row_t)
        if verdict.arrival is Arrival.OUT_OF_ORDER:
            if not self._refilling:  # a refill is asked for: the "refill" event says it
                self.events.derived(EventKind.OUT_OF_ORDER, link, t_src, session=session, seq=seq)
            if link == self.pstat_link:
                self.aligner.forget_filled_gaps(state.tracker)
        else:
            state.last_message_t = t_src
        return True

    def _gap(
        self,
        link: str,
        g: Gap,
        t_before: float | None,
        t_after: float,
        first_row_t: float,
        *,
        tail: bool = False,
    ) -> None:
        """Messages missing on ``link``: an event (the refiller asks for them); for the
        potentiostat, its rows are missing from the record between the newest row held and
        the first row (or the clock) of the message that revealed the gap."""
        detail: dict[str, Any] = {"tail": True} if tail else {}
        self.events.derived(
            EventKind.GAP,
            link,
            t_after,
            session=g.session,
            first=g.first,
            last=g.last,
            count=g.count,
            t_before=t_before,
            t_after=t_after,
            **detail,
        )
        if link == self.pstat_link:
            mark = self.history.watermark
            self.aligner.missing(PotentiostatGap(g.first, g.last, mark, first_row_t, g.session))

    # -- kinds -----------------------------------------------------------------------------
    def _series_start(self, link: str, state: LinkState, h: SeriesStart, t: float) -> None:
        if h.reannounce and h.series == state.series:
            return  # a re-announce for late joiners: nothing new
        self.series_metadata(link, h.series, h.metadata)
        previous = h.metadata.get("previous_session")
        if isinstance(previous, dict):  # a restarted driver says where its last process ended
            gap = state.tracker.expect(
                str(previous.get("session", "")), int(previous.get("last_seq", -1))
            )
            if gap is not None:  # the tail its last process sent to nobody
                self._gap(link, gap, None, t, t, tail=True)
        self.events.derived(
            EventKind.SERIES_START,
            link,
            t,
            series=h.series,
            instrument=h.instrument,
            metadata=h.metadata,
        )
        spots = h.metadata.get("spots")
        if self.orchestrator is not None and isinstance(spots, dict):
            self.orchestrator.on_spots(sorted(spots))

    def series_metadata(self, link: str, series: str, metadata: Mapping[str, Any]) -> None:
        """A source's series started (or, on restore, had started): what it says of itself.
        The potentiostat's announced capacity and starting SOC count unless the experiment
        sets them; so does how it samples its current (for coulomb counting)."""
        state = self.links[link]
        new_series = series != state.series
        state.series, state.series_ended, state.metadata = series, False, dict(metadata)
        replayed_from = metadata.get("replayed_from")
        if replayed_from:
            self.aligner.replayed = True
            if self.orchestrator is not None:
                self.orchestrator.on_replay(link, str(replayed_from))
        if link == self.pstat_link:
            al = self.aligner
            al.potentiostat_ended = False
            self.soc_out_of_range = False
            if new_series:  # a new experiment; a restarted driver of this one continues it
                self.electrochem.restart()
            cap = metadata.get("capacity_mAh")
            if self.cfg.capacity_mAh is None and _number(cap) and cap > 0:
                al.capacity_mAh, al.capacity_from = float(cap), f"potentiostat {link}"
            soc0 = metadata.get("initial_soc")
            if self.cfg.initial_soc is None and _number(soc0) and -0.05 <= soc0 <= 1.05:
                al.initial_soc, al.initial_soc_from = float(soc0), f"potentiostat {link}"
            if metadata.get("current_sampling") in ("instant", "interval_average"):
                self.history.current_sampling = str(metadata["current_sampling"])

    def _potentiostat(
        self, raw_id: int, link: str, state: LinkState, msg: Message, offset: float
    ) -> None:
        a = msg.arrays
        t = a["t"].astype(np.float64) + offset
        q = a.get("Q")
        late, soc, q_rows = False, [None] * len(t), np.zeros(0)
        mark_before = self.history.watermark
        if link == self.pstat_link:
            late = self.history.extend(t, a["Ewe"], a["I"], a["mode"], a["step"], a["cycle"], q)
            if len(t) and not late:  # late rows merge into the history: no tail to read
                q_rows = self.history.record().q[-len(t) :]
                if np.any(np.diff(t) < 0):  # the history holds them sorted: back to arrival order
                    order = np.argsort(t, kind="stable")
                    q_rows = q_rows[np.argsort(order, kind="stable")]
                soc = self._soc(q_rows, t)
                self.electrochem.add(t, a["Ewe"], a["I"], a["mode"], q_rows, soc)
        rows = list(
            map(
                PotentiostatRow._make,
                zip(
                    [raw_id] * len(t),
                    [link] * len(t),
                    t.tolist(),
                    a["Ewe"].tolist(),
                    a["I"].tolist(),
                    q.tolist() if q is not None else [None] * len(t),
                    a["mode"].tolist(),
                    a["step"].tolist(),
                    a["cycle"].tolist(),
                    soc,
                    strict=True,
                ),
            )
        )
        self.store.put_rows(rows)
        self.counts["potentiostat_rows"] += len(t)
        if link != self.pstat_link:
            return
        t_lo, t_hi = (float(t[0]), float(t[-1])) if len(t) else (0.0, -1.0)
        if len(t) and (late or self.aligner.covers_partial(t_lo, t_hi)):  # already aligned
            state.late += 1
            self.events.derived(
                EventKind.LATE,
                link,
                float(t[-1]),
                t_first=float(t[0]),
                t_last=float(t[-1]),
                rows=len(t),
            )
            self.aligner.realign_overlapping(float(t[0]), float(t[-1]))
        if len(t) and not late:
            # a spectrum that timed out before the record reached its end is covered now by
            # rows that lie after it (the row past its end closes the window)
            self.aligner.realign_ended(mark_before, t_hi)
        if len(t):
            self.cell = {
                "t": float(t[-1]),
                "Ewe_V": float(a["Ewe"][-1]),
                "I_mA": float(a["I"][-1]),
                "soc": soc[-1],
                "mode": int(a["mode"][-1]),
                "step": int(a["step"][-1]),
                "cycle": int(a["cycle"][-1]),
            }
            self.publish("potentiostat", {"rows": len(t), "t_last": float(t[-1])})
            if self.orchestrator is not None and not late:  # triggers look at fresh rows only
                self.orchestrator.on_message(link, msg, np.asarray(soc), q_rows)

    def _soc(self, q: np.ndarray, t: np.ndarray) -> list[float]:
        al = self.aligner
        if not al.capacity_mAh:
            return [math.nan] * len(q)
        soc = al.initial_soc + q / al.capacity_mAh
        outside = np.flatnonzero((soc < SOC_RANGE[0]) | (soc > SOC_RANGE[1]))
        if len(outside) and not self.soc_out_of_range:
            # once a series: the SOC plot would be empty or the trigger never reached; the
            # cause is a number the operator can change
            self.soc_out_of_range = True
            k = int(outside[0])
            self.events.derived(
                EventKind.SOC_OUT_OF_RANGE,
                self.pstat_link,
                float(t[k]),
                soc=float(soc[k]),
                q_mAh=float(q[k]),
                capacity_mAh=al.capacity_mAh,
                capacity_from=al.capacity_from,
                initial_soc=al.initial_soc,
                initial_soc_from=al.initial_soc_from,
                likely=(
                    f"the starting SOC (the cell did not start at {al.initial_soc:g}: set "
                    "[alignment] initial_soc) or the capacity (it holds more than "
                    f"{al.capacity_mAh:g} mAh: set [alignment] capacity_mAh)"
                    if soc[k] < SOC_RANGE[0]
                    else f"the capacity (the cell holds more than {al.capacity_mAh:g} mAh: set "
                    "[alignment] capacity_mAh) or the starting SOC ([alignment] initial_soc)"
                ),
            )
        return soc.tolist()

    def _spectrum(self, raw_id: int, link: str, msg: Message, offset: float) -> None:
        h = msg.header
        assert isinstance(h, XASScan | RIXSRows)
        sid = self.store.take_spectrum_id()
        kind = msg.kind
        if isinstance(h, XASScan):
            n_points, channels = msg.arrays.shape("energy")[0], list(h.channels)
        else:
            n_points, channels = math.prod(msg.arrays.shape("counts")), ["counts"]
        spot = h.spot
        t0, t1 = h.t_start_ns * 1e-9 + offset, h.t_end_ns * 1e-9 + offset
        self.store.put(
            SpectrumRow(
                sid,
                raw_id,
                link,
                h.source,
                kind,
                h.scan_id,
                h.series,
                h.edge,
                t0,
                t1,
                spot.id if spot else None,
                spot.x_mm if spot else None,
                spot.y_mm if spot else None,
                h.flux_ph_s,
                h.exposure_s,
                h.trigger_id or None,
                n_points,
                _json.encode(channels).decode(),
                _json.encode(h.extra).decode() if h.extra else "{}",
            )
        )
        self.counts["spectra"] += 1
        analysis = None
        if self.analyzer is not None:  # what the analysis needs; nothing when it is off
            analysis = spectrum_input(sid, h)
            self.count_dose(analysis, msg.arrays)
        pt = msg.arrays.get("point_t")
        info = {
            "edge": h.edge,
            "spot": spot.id if spot else None,
            "trigger_id": h.trigger_id,
            "channels": channels,
            "raw_id": raw_id,
        }
        self.aligner.add(
            PendingSpectrum(
                sid,
                link,
                h.scan_id,
                kind,
                t0,
                t1,
                None if pt is None else pt.astype(np.float64) + offset,
                info,
                analysis,
                msg.arrays if analysis is not None else None,
            )
        )

    def count_dose(self, s: SpectrumInput, arrays: Mapping[str, np.ndarray]) -> None:
        if self.dose is not None:
            energy = arrays["excitation" if s.kind == "rixs_rows" else "energy"]
            s.dose_before_Gy, s.dose_after_Gy = self.dose.count(s, np.asarray(energy, float))

    # -- alignment -------------------------------------------------------------------------
    def align_due(self, *, final: bool = False) -> int:
        """Align every pending spectrum whose window is covered or timed out (all: ``final``);
        rows the electrochemistry holds back are worked when they have waited long enough."""
        self.electrochem.flush_due()
        return self.aligner.align_due(self.now, final=final)

    def _aligned(self, p: PendingSpectrum, al: Alignment, revision: int) -> None:
        """A spectrum aligned (or realigned): on the state stream; analysed the first time."""
        if revision == 0:
            self._analyse(p, al)
        self.publish(
            "alignment",
            {"spectrum_id": p.spectrum_id, "raw_id": p.info["raw_id"], "revision": revision},
        )

    def _analyse(self, p: PendingSpectrum, al: Alignment) -> None:
        if self.analyzer is None or p.analysis is None or p.arrays is None:
            return
        s, arrays, p.arrays = p.analysis, p.arrays, None
        rest = rest_voltage(self.history.record(), al, self.analyzer.rest_criterion)
        if self.analysis_thread is not None:
            queued = self.analysis_thread.put(s, arrays, copy.copy(al), rest)
            self._analysis_behind(s, behind=not queued)
            return
        try:
            self.analyzer.on_spectrum(s, arrays, al, rest)
        except Exception as e:  # analysis must never stop ingest; say what failed
            log.exception("analysing spectrum %d failed", s.spectrum_id)
            self.analysis_failed(s, e)

    def _analysis_behind(self, s: SpectrumInput, *, behind: bool) -> None:
        """Live analysis fell behind (its backlog is full): spectra are recorded, not analysed
        live, until it catches up. One event when that starts, one when it ends."""
        skipped = self._skipped_live
        if behind:
            if skipped is None:
                self._skipped_live = skipped = [s.spectrum_id, 0]
                thread = self.analysis_thread
                assert thread is not None
                self.events.derived(
                    EventKind.ANALYSIS_BEHIND,
                    None,
                    None,
                    spectrum_id=s.spectrum_id,
                    backlog=thread.backlog,
                    backlog_MB=round(thread.backlog_bytes / 2**20, 1),
                )
            skipped[1] += 1
            self.counts["analysis_skipped_live"] += 1
        elif skipped is not None:
            self._skipped_live = None
            self.events.derived(
                EventKind.ANALYSIS_CAUGHT_UP,
                None,
                None,
                first=skipped[0],
                last=s.spectrum_id - 1,
                skipped=skipped[1],
            )

    def analysis_failed(self, s: SpectrumInput, e: Exception) -> None:
        self.events.derived(
            EventKind.ANALYSIS_ERROR,
            None,
            None,
            spectrum_id=s.spectrum_id,
            error=f"{type(e).__name__}: {e}",
        )

    def finish(self) -> None:
        """End of input: align what is still waiting, with what there is; a rest still going
        gets its last relaxation fit; a half-cycle still running is recorded as incomplete."""
        self.align_due(final=True)
        self.electrochem.finish()
        if self.analysis_thread is not None:
            self.analysis_thread.finish()
        elif self.analyzer is not None:
            self.analyzer.finish()

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        sources = {}
        now_wall = time.monotonic()
        for name, s in self.links.items():
            tr = s.tracker
            sources[name] = {
                "role": s.config.role,
                "session": tr.session,
                "messages": tr.messages,
                "gaps": tr.gaps,
                "lost": tr.lost,
                "outstanding": tr.outstanding,
                "recovered": tr.recovered,
                "duplicates": tr.duplicates,
                "out_of_order": tr.out_of_order,
                "late": s.late,
                "malformed": s.malformed,
                "not_derived": s.not_derived,
                "refused": s.refused,
                "stranger_messages": s.stranger_messages,
                "restarts": tr.restarts,
                "series": s.series,
                "silent_s": now_wall - s.last_seen_wall if s.last_seen_wall else None,
            }
        return {
            "sources": sources,
            "spectra": {
                "total": self.counts["spectra"],
                "aligned": self.aligner.counts["aligned"],
                "partial": self.aligner.counts["partial"],
                "pending": len(self.pending),
            },
            "potentiostat_rows": self.counts["potentiostat_rows"],
            "cell": self.cell,
            "events": {str(k): n for k, n in self.events.counts.items()},
            "source_time": self.now if math.isfinite(self.now) else None,
            "store_backlog_bytes": self.store.backlog_bytes,
            "analysis_backlog": self.analysis_thread.backlog if self.analysis_thread else 0,
            "analysis_skipped_live": self.counts["analysis_skipped_live"],
            "valence": self.analyzer.latest_valence if self.analyzer is not None else {},
            "electrochemistry": self.electrochem.status(),
            "store_error": self.store.last_error,
            "store_writer_restarts": self.store.writer_restarts,
            "store_rows_refused": self.store.rows_refused,
        }
