"""Continue a run recorded earlier: the monitor was restarted on the same run directory.

Everything comes from the run (``Run``), read-only: sequence trackers resume each source's
last session (what was still missing can still be refilled), the potentiostat history is
rebuilt from the recorded rows (so coulomb counting continues), counters are reloaded,
run-time facts are applied again (clock offsets measured by ping, the capacity a potentiostat
announced), and spectra that were recorded but never aligned wait again.
"""

from __future__ import annotations

import numpy as np

from operando.alignment import PendingSpectrum
from operando.events import EventKind
from operando.ingest import Ingest, spectrum_input
from operando.protocol import decode
from operando.store.reader import Run


def restore(ingest: Ingest, run: Run) -> None:
    for link, offset in run.clock_offsets().items():
        ingest.set_clock_offset(link, offset)
    _sequences(ingest, run)
    _potentiostat(ingest, run)
    counts = run.counts()
    ingest.counts.update(potentiostat_rows=counts["potentiostat_rows"], spectra=counts["spectra"])
    ingest.aligner.counts.update(aligned=counts["aligned"], partial=counts["partial"])
    if ingest.dose is not None:  # doses continue; the damage history starts afresh
        ingest.dose.totals.update(run.spot_doses())
    _waiting_spectra(ingest, run)


def _sequences(ingest: Ingest, run: Run) -> None:
    for link, session, seq in run.stream_heads():
        if link not in ingest.links:
            continue
        # what was still missing when the monitor stopped: a refill can still fill it
        lost = run.lost_ranges(link)
        tracker = ingest.links[link].tracker
        for past, last in run.past_sessions(link, session):
            ranges = lost.get(past, [])
            tracker.past[past] = (max([last, *(b for _, b in ranges)]) + 1, ranges)
        tracker.resume(session, seq, lost.get(session, []))
    for link, n in run.stream_messages().items():
        if link in ingest.links:
            ingest.links[link].tracker.messages = n
    # a stranger refused before the restart stays refused, and is still counted; the source
    # each link met first stays its source (else the next to announce itself would be)
    for link, sessions in run.stranger_sessions().items():
        if link in ingest.links:
            ingest.links[link].strangers.update(sessions)
            ingest.links[link].stranger_messages = sum(sessions.values())
    for link, state in ingest.links.items():
        start = run.last_series_start(link) or {}
        ident = (start.get("metadata") or {}).get("identity")
        if isinstance(ident, dict) and ident.get("driver"):
            state.identity = (str(ident["driver"]), str(ident.get("host", "")))
    for link, kind, n in run.event_counts():
        ingest.events.counts[kind] += n
        state = ingest.links.get(link) if link is not None else None
        if state is not None and kind == EventKind.GAP:
            state.tracker.gaps = n
        elif state is not None and kind in (EventKind.MALFORMED, EventKind.LATE):
            setattr(state, kind, n)


def _potentiostat(ingest: Ingest, run: Run) -> None:
    link = ingest.pstat_link
    if link is None:
        return
    start = run.last_series_start(link)
    if start is not None:  # the capacity it announced, as when its series started
        ingest.series_metadata(link, start.get("series", ""), start.get("metadata") or {})
    # the half-cycle and step in progress are rebuilt from the same rows, not written again
    ingest.electrochem.recording = False
    for a in run.potentiostat_chunks(link):
        q = None if np.isnan(a[:, 3]).any() else a[:, 3]
        late = ingest.history.extend(
            a[:, 0],
            a[:, 1],
            a[:, 2],
            a[:, 4].astype(np.int8),
            a[:, 5].astype(np.int32),
            a[:, 6].astype(np.int32),
            q,
        )
        if not late and len(a):
            q_rows = ingest.history.record().q[-len(a) :]
            ingest.electrochem.add(a[:, 0], a[:, 1], a[:, 2], a[:, 4], q_rows, a[:, 7].tolist())
    ingest.electrochem.flush()
    ingest.electrochem.recording = True


def _waiting_spectra(ingest: Ingest, run: Run) -> None:
    for w in run.unaligned():
        msg = decode(run.raw_message(w.raw_id).frames)  # one open run, not one per spectrum
        analysis = spectrum_input(w.spectrum_id, msg.header)  # type: ignore[arg-type]
        if w.dose is not None:  # counted before the restart
            analysis.dose_before_Gy, analysis.dose_after_Gy = w.dose
        else:  # received, but its dose row was not yet written
            ingest.count_dose(analysis, msg.arrays)
        pt = msg.arrays.get("point_t")
        state = ingest.links.get(w.link)
        offset = state.clock_offset_s if state is not None else 0.0
        ingest.aligner.add(
            PendingSpectrum(
                w.spectrum_id,
                w.link,
                w.scan_id,
                w.kind,
                w.t_start,
                w.t_end,
                None if pt is None else pt.astype(np.float64) + offset,
                {
                    "edge": w.edge,
                    "spot": w.spot,
                    "trigger_id": w.trigger_id or "",
                    "channels": w.channels,
                    "raw_id": w.raw_id,
                },
                analysis,
                msg.arrays,
            )
        )
