"""Ingest: record -> decode -> track sequence -> derive -> align, for one run. No sockets here.

The monitor feeds it frames from its subscriptions; ``operando reprocess`` feeds it the raw
table. Both therefore derive exactly the same tables from the same messages.

Watermark: a spectrum is aligned once the potentiostat's data are known complete past its
window end (newest row, or a heartbeat with no gap outstanding, or the end of the potentiostat's
series). If that has not happened when the newest source time seen from any source passes
``t_end + timeout_s``, it is aligned with what there is and marked partial. Potentiostat data
arriving late for a window already aligned as partial re-aligns that spectrum (revision + 1).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operando.align import Alignment, PotentiostatHistory, _unaligned, align_windows
from operando.analysis_thread import AnalysisThread
from operando.analyze import Analyzer, SpectrumInput, rest_voltage
from operando.config import AlignmentConfig, AnalysisConfig, SourceConfig
from operando.doseledger import DoseLedger
from operando.protocol import (
    Ack,
    Command,
    Message,
    PotentiostatBatch,
    ProtocolError,
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
from operando.sequence import Arrival, SequenceTracker
from operando.store import RunStore, Summary, lost_ranges, read_raw

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, Any]], None]


_json = msgspec.json.Encoder(enc_hook=plain)


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


MALFORMED_BATCH = "(malformed)"  # in place of a session: potentiostat rows that never decoded


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
class PendingSpectrum:
    spectrum_id: int
    link: str
    scan_id: str
    kind: str
    t_start: float  # reference clock, s
    t_end: float
    point_t: np.ndarray | None
    info: dict[str, Any]
    analysis: SpectrumInput | None = None  # what the analyzer needs, once aligned
    arrays: Mapping[str, np.ndarray] | None = None  # dropped after analysis


@dataclass(slots=True)
class LinkState:
    config: SourceConfig
    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    malformed: int = 0
    late: int = 0
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
    ) -> None:
        self.store = store
        self.cfg = alignment
        self.publish: Publish = publish or (lambda topic, body: None)
        self.links = {s.name: LinkState(s) for s in sources}
        self.pstat_link = next((s.name for s in sources if s.role == "potentiostat"), None)
        self.history = PotentiostatHistory(alignment.current_step_mA, alignment.retain_s)
        self.pending: list[PendingSpectrum] = []
        self.partial: deque[tuple[PendingSpectrum, Alignment]] = deque(maxlen=2000)
        # potentiostat messages missing: first, last, t0, t1, session
        self.pstat_gaps: list[tuple[int, int, float, float, str]] = []
        self.capacity_mAh = alignment.capacity_mAh
        self.now = -math.inf  # newest source time seen from any source (reference clock)
        self.counts: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.analyzer = (
            Analyzer(analysis, base_dir or Path.cwd(), self.store.submit, self.event, self.publish)
            if analysis is not None and analysis.enabled
            else None
        )
        # doses count on arrival, for the spot rotation (None: analysis is off)
        self.dose = (
            DoseLedger(analysis, self.store.submit, self.event)
            if analysis is not None and self.analyzer is not None
            else None
        )
        # set by the monitor: analysis runs beside the event loop (None: here, in order)
        self.analysis_thread: AnalysisThread | None = None
        self.orchestrator: Any = None  # set by the monitor: acts on rows, maps, dose, damage
        self.on_event: list[Callable[[str, str | None, dict[str, Any]], None]] = []
        self.cell: dict[str, Any] = {}  # the newest potentiostat row, for status displays
        self._recv_ns = 0  # receive time of the message being processed (0: use the wall clock)
        self._refilling = False  # the message being processed fills a gap (sent again)
        # while live analysis is behind: [first spectrum not analysed live, how many]
        self._skipped_live: list[int] | None = None

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
        self._recv_ns, self._refilling = recv_ns, refill
        state = self.links.get(link)
        try:
            if msg is None or state is None:
                self.event("malformed", link, None, raw_id=raw_id, error=error)
                if state is not None:
                    state.malformed += 1
                    self._track_malformed(raw_id, link, state, frames)
                return None
            try:
                self._derive(raw_id, link, state, msg)
            except Exception as e:  # a bug must not stop ingest: keep the message, say why
                log.exception("deriving %s message %d failed", link, raw_id)
                self.event(
                    "derive_error", link, None, raw_id=raw_id, error=f"{type(e).__name__}: {e}"
                )
            return msg
        finally:
            self._recv_ns, self._refilling = 0, False

    def _derive(self, raw_id: int, link: str, state: LinkState, msg: Message) -> None:
        h = msg.header
        offset = state.config.clock_offset_s
        t_src = h.t_ns * 1e-9 + offset
        state.last_seen_wall = time.monotonic()
        if isinstance(h, (Command, Ack)):  # not part of a data stream: audit only
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
        elif isinstance(h, SeriesEnd):
            state.series_ended = True
            self.event("series_end", link, t_src, series=h.series, reason=h.reason)

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
        t = env.t_ns * 1e-9 + state.config.clock_offset_s if env.t_ns > 0 else state.last_message_t
        watermark = self.history.watermark
        if self._track(raw_id, link, state, env.session, env.seq, t, t) and link == self.pstat_link:
            self.pstat_gaps.append((env.seq, env.seq, watermark, t, MALFORMED_BATCH))

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
            self.event("duplicate", link, t_src, raw_id=raw_id, session=session, seq=seq)
            return False
        if verdict.arrival is Arrival.NEW_SESSION and verdict.previous_session is not None:
            self.event(
                "source_restarted",
                link,
                t_src,
                session=session,
                previous_session=verdict.previous_session,
            )
        if verdict.gap is not None:
            g = verdict.gap
            self.event(
                "gap",
                link,
                t_src,
                session=g.session,
                first=g.first,
                last=g.last,
                count=g.count,
                t_before=state.last_message_t,
                t_after=t_src,
            )
            if link == self.pstat_link:
                # The rows lost lie between the newest row held and the first row (or the
                # clock) of the message that revealed the gap.
                self.pstat_gaps.append(
                    (g.first, g.last, self.history.watermark, first_row_t, g.session)
                )
        if verdict.arrival is Arrival.OUT_OF_ORDER:
            if not self._refilling:  # a refill is asked for: the "refill" event says it
                self.event("out_of_order", link, t_src, session=session, seq=seq)
            if link == self.pstat_link:
                self._forget_filled_gaps(state.tracker)
        else:
            state.last_message_t = t_src
        return True

    # -- kinds -----------------------------------------------------------------------------
    def _series_start(self, link: str, state: LinkState, h: SeriesStart, t: float) -> None:
        if h.reannounce and h.series == state.series:
            return  # a re-announce for late joiners: nothing new
        state.series, state.series_ended, state.metadata = h.series, False, dict(h.metadata)
        previous = h.metadata.get("previous_session")
        if isinstance(previous, dict):  # a restarted driver says where its last process ended
            gap = state.tracker.expect(
                str(previous.get("session", "")), int(previous.get("last_seq", -1))
            )
            if gap is not None:
                self.event(
                    "gap",
                    link,
                    t,
                    session=gap.session,
                    first=gap.first,
                    last=gap.last,
                    count=gap.count,
                    t_before=None,
                    t_after=t,
                    tail=True,
                )
                if link == self.pstat_link:
                    self.pstat_gaps.append(
                        (gap.first, gap.last, self.history.watermark, t, gap.session)
                    )
        if link == self.pstat_link and self.cfg.capacity_mAh is None:
            cap = h.metadata.get("capacity_mAh")
            if isinstance(cap, int | float) and cap > 0:
                self.capacity_mAh = float(cap)
        self.event(
            "series_start", link, t, series=h.series, instrument=h.instrument, metadata=h.metadata
        )
        spots = h.metadata.get("spots")
        if self.orchestrator is not None and isinstance(spots, dict):
            self.orchestrator.on_spots(sorted(spots))

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
                soc = self._soc(q_rows)
        rows = list(
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
            )
        )
        self.store.submit("rows", ("potentiostat", rows))
        self.counts["potentiostat_rows"] += len(t)
        if link != self.pstat_link:
            return
        t_lo, t_hi = (float(t[0]), float(t[-1])) if len(t) else (0.0, -1.0)
        covers_partial = any(p.t_start <= t_hi and p.t_end >= t_lo for p, _ in self.partial)
        if len(t) and (late or covers_partial):  # rows for windows already aligned
            state.late += 1
            self.event(
                "late", link, float(t[-1]), t_first=float(t[0]), t_last=float(t[-1]), rows=len(t)
            )
            self._realign_overlapping(float(t[0]), float(t[-1]))
        if len(t) and not late:
            # a spectrum that timed out before the record reached its end is covered now by
            # rows that lie after it (the row past its end closes the window)
            self._realign_ended(mark_before, t_hi)
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
            self.publish(
                "potentiostat",
                {
                    "t": t.tolist(),
                    "Ewe": a["Ewe"].tolist(),
                    "I": a["I"].tolist(),
                    "soc": soc,
                    "mode": a["mode"].tolist(),
                },
            )
            if self.orchestrator is not None and not late:  # triggers look at fresh rows only
                self.orchestrator.on_message(link, msg, np.asarray(soc), q_rows)

    def _soc(self, q: np.ndarray) -> list[float]:
        if not self.capacity_mAh:
            return [math.nan] * len(q)
        return (self.cfg.initial_soc + q / self.capacity_mAh).tolist()

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
        self.store.submit(
            "spectrum",
            (
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
            ),
        )
        self.counts["spectra"] += 1
        analysis = None
        if self.analyzer is not None:  # what the analysis needs; nothing when it is off
            analysis = spectrum_input(sid, h)
            self._count_dose(analysis, msg.arrays)
        pt = msg.arrays.get("point_t")
        info = {
            "edge": h.edge,
            "spot": spot.id if spot else None,
            "trigger_id": h.trigger_id,
            "channels": channels,
            "raw_id": raw_id,
        }
        self.pending.append(
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

    def _count_dose(self, s: SpectrumInput, arrays: Mapping[str, np.ndarray]) -> None:
        if self.dose is not None:
            energy = arrays["excitation" if s.kind == "rixs_rows" else "energy"]
            s.dose_before_Gy, s.dose_after_Gy = self.dose.count(s, np.asarray(energy, float))

    # -- alignment -------------------------------------------------------------------------
    @property
    def pstat_watermark(self) -> float:
        if self.pstat_link is None:
            return math.inf
        if self.links[self.pstat_link].series_ended:
            return math.inf
        # Only rows cover a window: a heartbeat at H does not mean the rows up to H were sent
        # (a potentiostat samples every few seconds), and a window aligned on it lacked its
        # last row. A quiet potentiostat makes spectra wait for its next row or the timeout.
        return self.history.watermark

    def align_due(self, *, final: bool = False) -> int:
        """Align every pending spectrum whose window is covered or timed out (all: ``final``).

        Called once per received batch, not per message: the due windows are aligned together
        in one vectorised pass.
        """
        if not self.pending:
            return 0
        mark, deadline = self.pstat_watermark, self.now - self.cfg.timeout_s
        due = [p for p in self.pending if final or p.t_end <= mark or p.t_end <= deadline]
        if not due:
            return 0
        done = {p.spectrum_id for p in due}
        self.pending = [p for p in self.pending if p.spectrum_id not in done]
        self._align(due, timed_out=[p.t_end > mark for p in due])
        return len(due)

    def _align(
        self, due: list[PendingSpectrum], *, timed_out: list[bool], revision: int = 0
    ) -> list[Alignment]:
        try:
            results = self._alignments(due, timed_out)
        except Exception as e:  # never lose a spectrum to a bug: store it unaligned, say why
            log.exception("aligning %d spectra failed", len(due))
            error = f"{type(e).__name__}: {e}"
            results = [_unaligned(p.t_start, p.t_end, f"alignment failed: {error}") for p in due]
            for p in due:
                self.event("align_error", p.link, p.t_end, spectrum_id=p.spectrum_id, error=error)
        return [self._record_alignment(p, al, revision) for p, al in zip(due, results, strict=True)]

    def _alignments(self, due: list[PendingSpectrum], timed_out: list[bool]) -> list[Alignment]:
        if self.pstat_link is None:
            return [_unaligned(p.t_start, p.t_end, "no potentiostat configured") for p in due]
        results = align_windows(
            self.history.record(),
            [p.t_start for p in due],
            [p.t_end for p in due],
            capacity_mAh=self.capacity_mAh,
            initial_soc=self.cfg.initial_soc,
            point_ts=[p.point_t for p in due],
            cover_tolerance_s=self.cfg.cover_tolerance_s,
        )
        gaps = self.pstat_gaps
        for p, al, late in zip(due, results, timed_out, strict=True):
            gap = None
            if gaps:  # most batches: none outstanding
                gap = next((g for g in gaps if g[2] < p.t_end and g[3] > p.t_start), None)
            if gap is not None:
                al.partial = True
                al.reason = f"potentiostat messages {gap[0]}-{gap[1]} missing in this window"
            elif al.partial and late:
                al.reason = f"timed out after {self.cfg.timeout_s} s: " + al.reason
        return results

    def _record_alignment(self, p: PendingSpectrum, al: Alignment, revision: int) -> Alignment:
        if al.partial:
            self.partial.append((p, al))
        doc = _json.encode(al).decode()
        self.store.submit(
            "alignment",
            (
                p.spectrum_id,
                int(al.partial),
                al.reason,
                al.ewe_mean_V,
                al.soc,
                al.i_mean_mA,
                al.mode,
                al.step,
                al.cycle,
                doc,
            ),
        )
        if revision == 0:
            self.counts["aligned"] += 1
            self.counts["partial"] += al.partial
            self._analyse(p, al)
        self.publish(
            "aligned",
            {
                "spectrum_id": p.spectrum_id,
                "link": p.link,
                "scan_id": p.scan_id,
                "kind": p.kind,
                "revision": revision,
                **p.info,
                "alignment": msgspec.to_builtins(al, enc_hook=plain),
            },
        )
        return al

    def _analyse(self, p: PendingSpectrum, al: Alignment) -> None:
        if self.analyzer is None or p.analysis is None or p.arrays is None:
            return
        s, arrays, p.arrays = p.analysis, p.arrays, None
        rest = rest_voltage(self.history.record(), al, self.analyzer.cfg.rest_current_mA)
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
                self.event(
                    "analysis_behind",
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
            self.event(
                "analysis_caught_up",
                None,
                None,
                first=skipped[0],
                last=s.spectrum_id - 1,
                skipped=skipped[1],
            )

    def analysis_failed(self, s: SpectrumInput, e: Exception) -> None:
        self.event(
            "analysis_error",
            None,
            None,
            spectrum_id=s.spectrum_id,
            error=f"{type(e).__name__}: {e}",
        )

    def _realign_overlapping(self, t0: float, t1: float) -> None:
        redo = [(p, al) for p, al in self.partial if p.t_start <= t1 and p.t_end >= t0]
        for p, old in redo:
            self.partial.remove((p, old))
        if not redo:
            return
        fresh = self._align([p for p, _ in redo], timed_out=[False] * len(redo), revision=1)
        self.counts["partial"] -= sum(not new.partial for new in fresh)

    def _realign_ended(self, mark_before: float, mark_now: float) -> None:
        ended = [
            (p, al)
            for p, al in self.partial
            if mark_before < p.t_end <= mark_now and al.reason.endswith("does not cover the window")
        ]
        for p, _ in ended:
            self._realign_overlapping(p.t_start, p.t_end)

    def _forget_filled_gaps(self, tracker: SequenceTracker) -> None:
        before = len(self.pstat_gaps)
        self.pstat_gaps = [
            g
            for g in self.pstat_gaps
            if g[4] == MALFORMED_BATCH or tracker.any_missing(g[4], g[0], g[1])
        ]
        if len(self.pstat_gaps) != before:
            filled = [(p, al) for p, al in self.partial if al.reason.startswith("potentiostat")]
            for p, _ in filled:
                self._realign_overlapping(p.t_start, p.t_end)

    # -- events ----------------------------------------------------------------------------
    def event(self, kind: str, link: str | None, t: float | int | None, **detail: Any) -> None:
        """Record an event derived from the messages (gap, malformed, damage flag...) and put
        it on the state stream."""
        self._record_event("ingest", kind, link, t, detail)

    def own_event(self, kind: str, link: str | None, t: float | int | None, **detail: Any) -> None:
        """Record an event of the monitor's own (a trigger fired, a spot moved, an alarm, a
        command): reprocess keeps these, it cannot derive them from the messages."""
        self._record_event("monitor", kind, link, t, detail)

    def _record_event(
        self, origin: str, kind: str, link: str | None, t: float | int | None, detail: Any
    ) -> None:
        t_val = None if t is None or not math.isfinite(t) else float(t)
        recv_ns = self._recv_ns or time.time_ns()
        body = _json.encode(detail).decode()
        self.store.submit("event", (recv_ns, t_val, kind, link, body, origin))
        self.events[kind] += 1
        self.publish("event", {"kind": kind, "link": link, "t": t_val, "detail": detail})
        for listener in self.on_event:
            listener(kind, link, detail)

    def finish(self) -> None:
        """End of input: align what is still waiting, with what there is; a rest still going
        gets its last relaxation fit."""
        self.align_due(final=True)
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
                "restarts": tr.restarts,
                "series": s.series,
                "silent_s": now_wall - s.last_seen_wall if s.last_seen_wall else None,
            }
        return {
            "sources": sources,
            "spectra": {
                "total": self.counts["spectra"],
                "aligned": self.counts["aligned"],
                "partial": self.counts["partial"],
                "pending": len(self.pending),
            },
            "potentiostat_rows": self.counts["potentiostat_rows"],
            "cell": self.cell,
            "events": dict(self.events),
            "source_time": self.now if math.isfinite(self.now) else None,
            "store_backlog_bytes": self.store.backlog_bytes,
            "analysis_backlog": self.analysis_thread.backlog if self.analysis_thread else 0,
            "analysis_skipped_live": self.counts["analysis_skipped_live"],
            "store_error": self.store.last_error,
            "store_writer_restarts": self.store.writer_restarts,
            "store_rows_refused": self.store.rows_refused,
        }


def restore(ingest: Ingest, conn: Any, run_dir: Path) -> None:
    """Continue a run recorded earlier (the monitor was restarted on the same run directory).

    Sequence trackers resume each source's last session, the potentiostat history is rebuilt
    from the recorded rows (so coulomb counting continues), counters are reloaded, and spectra
    that were recorded but never aligned wait again.
    """
    stream = "seq IS NOT NULL AND kind NOT IN ('command', 'ack')"
    for link, session, seq in conn.execute(
        f"SELECT r.link, r.session, (SELECT max(seq) FROM raw WHERE link = r.link AND "
        f"session = r.session AND {stream}) FROM raw r WHERE r.id IN "
        f"(SELECT max(id) FROM raw WHERE {stream} GROUP BY link)"
    ):
        if link in ingest.links:
            # what was still missing when the monitor stopped: a refill can still fill it
            lost = lost_ranges(conn, link)
            tracker = ingest.links[link].tracker
            for past, last in conn.execute(
                f"SELECT session, max(seq) FROM raw WHERE link = ? AND session != ? AND {stream} "
                "GROUP BY session ORDER BY max(id)",
                (link, session),
            ):
                ranges = lost.get(past, [])
                tracker.past[past] = (max([last, *(b for _, b in ranges)]) + 1, ranges)
            tracker.resume(session, seq, lost.get(session, []))
    for link, n in conn.execute(f"SELECT link, count(*) FROM raw WHERE {stream} GROUP BY link"):
        if link in ingest.links:
            ingest.links[link].tracker.messages = n
    for link, kind, n in conn.execute(
        "SELECT link, kind, count(*) FROM events GROUP BY link, kind"
    ):
        ingest.events[kind] += n
        state = ingest.links.get(link)
        if state is not None and kind == "gap":
            state.tracker.gaps = n
        elif state is not None and kind in ("malformed", "late"):
            setattr(state, kind, n)
    if ingest.pstat_link is not None:
        cur = conn.execute(
            "SELECT t, ewe, i, q, mode, step, cycle FROM potentiostat WHERE link = ? "
            "ORDER BY rowid",
            (ingest.pstat_link,),
        )
        while rows := cur.fetchmany(100_000):
            a = np.array(rows, dtype=np.float64)
            q = None if np.isnan(a[:, 3]).any() else a[:, 3]
            ingest.history.extend(
                a[:, 0],
                a[:, 1],
                a[:, 2],
                a[:, 4].astype(np.int8),
                a[:, 5].astype(np.int32),
                a[:, 6].astype(np.int32),
                q,
            )
    (n_rows,) = conn.execute("SELECT count(*) FROM potentiostat").fetchone()
    ingest.counts["potentiostat_rows"] = n_rows
    (n_spectra,) = conn.execute("SELECT count(*) FROM spectra").fetchone()
    (n_aligned, n_partial) = conn.execute(
        "SELECT count(*), coalesce(sum(partial), 0) FROM alignment"
    ).fetchone()
    ingest.counts.update(spectra=n_spectra, aligned=n_aligned, partial=n_partial)
    counted: dict[int, tuple[float, float]] = {}  # waiting spectra's doses, before and after
    if ingest.dose is not None:  # doses continue; the damage history starts afresh
        for spot, dose in conn.execute("SELECT spot, max(after_Gy) FROM dose GROUP BY spot"):
            ingest.dose.totals[spot] = dose
        counted = {
            sid: (before, after)
            for sid, before, after in conn.execute(
                "SELECT spectrum_id, before_Gy, after_Gy FROM dose "
                "WHERE spectrum_id NOT IN (SELECT spectrum_id FROM alignment)"
            )
        }
    waiting = conn.execute(
        "SELECT s.id, s.link, s.scan_id, s.kind, s.t_start, s.t_end, s.edge, s.spot_id, "
        "s.trigger_id, s.channels, s.raw_id FROM spectra s "
        "WHERE s.id NOT IN (SELECT spectrum_id FROM alignment)"
    ).fetchall()
    for sid, link, scan_id, kind, t0, t1, edge, spot, trig, chans, raw_id in waiting:
        msg = decode(read_raw(run_dir, raw_id).frames)
        analysis = spectrum_input(sid, msg.header)  # type: ignore[arg-type]
        if sid in counted:  # counted before the restart
            analysis.dose_before_Gy, analysis.dose_after_Gy = counted[sid]
        else:  # received, but its dose row was not yet written
            ingest._count_dose(analysis, msg.arrays)
        pt = msg.arrays.get("point_t")
        offset = ingest.links[link].config.clock_offset_s if link in ingest.links else 0.0
        ingest.pending.append(
            PendingSpectrum(
                sid,
                link,
                scan_id,
                kind,
                t0,
                t1,
                None if pt is None else pt.astype(np.float64) + offset,
                {
                    "edge": edge,
                    "spot": spot,
                    "trigger_id": trig or "",
                    "channels": msgspec.json.decode(chans or "[]"),
                    "raw_id": raw_id,
                },
                analysis,
                msg.arrays,
            )
        )
