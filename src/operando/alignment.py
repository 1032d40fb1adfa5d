"""Alignment of a run's spectra with its potentiostat record, as the record grows.

Watermark: a spectrum is aligned once the potentiostat's rows are known complete past its
window end (rows, not heartbeats: a heartbeat at H does not mean the rows up to H were sent,
and a window aligned on it lacked its last row), or once its series has ended. If that has not
happened when the newest source time seen from any source passes ``t_end + timeout_s``, it is
aligned with what there is and marked partial. Not in a replay: a recorded run replayed at
full speed reaches the monitor on one socket per source, so one source runs ahead of the
other in source time and every spectrum would time out; its potentiostat rows all come (the
log is complete), so spectra wait for them, and the analysis sees what the live run saw (it
analyses each spectrum once, at its first alignment). Potentiostat rows arriving late for a window
aligned as partial realign that spectrum (revision + 1), as does a gap filled by a refill.
Realignment decides on the typed cause (``align.Partial``), never on a reason's wording.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import numpy as np

from operando.align import Alignment, Partial, PotentiostatHistory, align_windows, unaligned
from operando.analyze import SpectrumInput
from operando.config import AlignmentConfig
from operando.events import EventKind, EventLog
from operando.protocol import LazyArrays, plain
from operando.sequence import SequenceTracker
from operando.store.rows import AlignmentRow

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder(enc_hook=plain)

MALFORMED_BATCH = "(malformed)"  # in place of a session: potentiostat rows that never decoded


class PotentiostatGap(NamedTuple):
    """Potentiostat messages missing (or malformed): their rows lie between ``t_from`` (the
    newest row held then) and ``t_to`` (the first row, or the clock, of the message after)."""

    first: int
    last: int
    t_from: float
    t_to: float
    session: str  # MALFORMED_BATCH: a batch that arrived but never decoded (never filled)


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
    arrays: LazyArrays | None = None  # dropped after analysis


# what to do with a spectrum once aligned: (spectrum, alignment, revision)
OnAligned = Callable[[PendingSpectrum, Alignment, int], None]


class Aligner:
    def __init__(
        self,
        cfg: AlignmentConfig,
        history: PotentiostatHistory,
        has_potentiostat: bool,
        put: Callable[[AlignmentRow], None],
        events: EventLog,
        on_aligned: OnAligned,
    ) -> None:
        self.cfg = cfg
        self.history = history
        self.has_potentiostat = has_potentiostat
        self.put, self.events, self.on_aligned = put, events, on_aligned
        self.capacity_mAh = cfg.capacity_mAh
        self.capacity_from = "configuration" if cfg.capacity_mAh is not None else ""
        # the SOC at the start of the charge count, and what said so
        self.initial_soc = cfg.initial_soc if cfg.initial_soc is not None else 0.0
        self.initial_soc_from = "configuration" if cfg.initial_soc is not None else "assumed"
        self.potentiostat_ended = False  # its series ended: its record is complete
        self.replayed = False  # a replayed run: no timeout (see above)
        self.pending: list[PendingSpectrum] = []
        self.partial: deque[tuple[PendingSpectrum, Alignment]] = deque(maxlen=2000)
        self.gaps: list[PotentiostatGap] = []
        self.counts: Counter[str] = Counter()  # aligned, partial

    # -- what arrives ------------------------------------------------------------------------
    def add(self, p: PendingSpectrum) -> None:
        self.pending.append(p)

    def missing(self, gap: PotentiostatGap) -> None:
        self.gaps.append(gap)

    @property
    def watermark(self) -> float:
        if not self.has_potentiostat or self.potentiostat_ended:
            return math.inf
        return self.history.watermark

    def covers_partial(self, t0: float, t1: float) -> bool:
        """Does [t0, t1] overlap a window aligned as partial?"""
        return any(p.t_start <= t1 and p.t_end >= t0 for p, _ in self.partial)

    # -- aligning ----------------------------------------------------------------------------
    def align_due(self, now: float, *, final: bool = False) -> int:
        """Align every pending spectrum whose window is covered or timed out (all: ``final``);
        ``now``: the newest source time seen from any source.

        Called once per received batch, not per message: the due windows are aligned together
        in one vectorised pass."""
        if not self.pending:
            return 0
        mark = self.watermark
        deadline = -math.inf if self.replayed else now - self.cfg.timeout_s
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
            results = [
                unaligned(p.t_start, p.t_end, f"alignment failed: {error}", Partial.ERROR)
                for p in due
            ]
            for p in due:
                self.events.derived(
                    EventKind.ALIGN_ERROR, p.link, p.t_end, spectrum_id=p.spectrum_id, error=error
                )
        return [self._record(p, al, revision) for p, al in zip(due, results, strict=True)]

    def _alignments(self, due: list[PendingSpectrum], timed_out: list[bool]) -> list[Alignment]:
        if not self.has_potentiostat:
            return [unaligned(p.t_start, p.t_end, "no potentiostat configured") for p in due]
        results = align_windows(
            self.history.record(),
            [p.t_start for p in due],
            [p.t_end for p in due],
            capacity_mAh=self.capacity_mAh,
            initial_soc=self.initial_soc,
            point_ts=[p.point_t for p in due],
            cover_tolerance_s=self.cfg.cover_tolerance_s,
        )
        for p, al, late in zip(due, results, timed_out, strict=True):
            gap = None
            if self.gaps:  # most batches: none outstanding
                gap = next(
                    (g for g in self.gaps if g.t_from < p.t_end and g.t_to > p.t_start), None
                )
            if gap is not None:
                al.partial, al.cause = True, Partial.GAP
                al.reason = f"potentiostat messages {gap.first}-{gap.last} missing in this window"
            elif al.partial and late:
                al.timed_out = True
                al.reason = f"timed out after {self.cfg.timeout_s} s: " + al.reason
        return results

    def _record(self, p: PendingSpectrum, al: Alignment, revision: int) -> Alignment:
        if al.partial:
            self.partial.append((p, al))
        self.put(
            AlignmentRow(
                p.spectrum_id,
                int(al.partial),
                al.reason,
                al.ewe_mean_V,
                al.soc,
                al.i_mean_mA,
                al.mode,
                al.step,
                al.cycle,
                _json.encode(al).decode(),
            )
        )
        if revision == 0:
            self.counts["aligned"] += 1
            self.counts["partial"] += al.partial
        self.on_aligned(p, al, revision)
        return al

    # -- realigning --------------------------------------------------------------------------
    def realign_overlapping(self, t0: float, t1: float) -> None:
        """Rows arrived for [t0, t1]: realign the partial spectra whose windows they touch."""
        redo = [(p, al) for p, al in self.partial if p.t_start <= t1 and p.t_end >= t0]
        for item in redo:
            self.partial.remove(item)
        if not redo:
            return
        fresh = self._align([p for p, _ in redo], timed_out=[False] * len(redo), revision=1)
        self.counts["partial"] -= sum(not new.partial for new in fresh)

    def realign_ended(self, mark_before: float, mark_now: float) -> None:
        """The record now reaches past windows that timed out before it covered them."""
        ended = [
            p
            for p, al in self.partial
            if mark_before < p.t_end <= mark_now and al.cause is Partial.NOT_COVERED
        ]
        for p in ended:
            self.realign_overlapping(p.t_start, p.t_end)

    def forget_filled_gaps(self, tracker: SequenceTracker) -> None:
        """Refills arrived: gaps no longer missing are forgotten and their spectra realigned."""
        before = len(self.gaps)
        self.gaps = [
            g
            for g in self.gaps
            if g.session == MALFORMED_BATCH or tracker.any_missing(g.session, g.first, g.last)
        ]
        if len(self.gaps) != before:
            causes = (Partial.GAP, Partial.NOT_COVERED)
            filled = [p for p, al in self.partial if al.cause in causes]
            for p in filled:
                self.realign_overlapping(p.t_start, p.t_end)
