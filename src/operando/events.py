"""The run's event log: one typed record of what happened, for the store, the state stream and
every service that reacts (alarms, refills).

Two origins. Events derived from the messages (a gap, a malformed message, a damage flag)
are ``derived``: ``operando reprocess`` derives them again from the raw log. Events of the
monitor's own (a trigger fired, a spot moved, an alarm, a command, a measured clock offset)
happened at the time, not in the messages: they are ``own`` and reprocess keeps them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, Protocol

import msgspec

from operando.protocol import plain
from operando.store.rows import EventRow

_json = msgspec.json.Encoder(enc_hook=plain)

Origin = Literal["ingest", "monitor"]
Publish = Callable[[str, dict[str, Any]], None]


class EventKind(StrEnum):
    """Every kind of event a run records (the ``events`` table's ``kind``)."""

    # from the messages: sequence, decoding, derivation
    MALFORMED = "malformed"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    GAP = "gap"
    LATE = "late"
    SOURCE_RESTARTED = "source_restarted"
    SERIES_START = "series_start"
    SERIES_END = "series_end"
    DERIVE_ERROR = "derive_error"
    DRIVER_REFUSED = "driver_refused"  # a driver refused input: what and why
    STRANGER_REFUSED = "stranger_refused"  # another source's stream on a link: not recorded as data
    ALIGN_ERROR = "align_error"
    # from the analysis
    ANALYSIS_ERROR = "analysis_error"
    ANALYSIS_BEHIND = "analysis_behind"
    ANALYSIS_CAUGHT_UP = "analysis_caught_up"
    ANALYSIS_SKIPPED = "analysis_skipped"
    FIT_FAILED = "fit_failed"
    SERIES_SKIPPED = "series_skipped"
    SERIES_FAILED = "series_failed"
    DAMAGE_FLAG = "damage_flag"  # runs recorded before suspicions and verdicts: a suspicion
    DAMAGE_SUSPICION = "damage_suspicion"  # a test suspects damage: shown, acted on by no one
    DAMAGE_CHECK = "damage_check"  # a spot past check_from_Gy is due a control scan (no suspicion)
    DAMAGE_VERDICT = "damage_verdict"  # a control scan decided: damage, or electrochemistry
    DOSE_ERROR = "dose_error"
    DOSE_BUDGET_WARNING = "dose_budget_warning"
    DOSE_BUDGET_EXCEEDED = "dose_budget_exceeded"
    SOC_OUT_OF_RANGE = "soc_out_of_range"
    RIXS_ERROR = "rixs_error"
    # the monitor's own
    ACK = "ack"
    ALARM = "alarm"
    ALARM_ACKNOWLEDGED = "alarm_acknowledged"
    CLOCK_ESTIMATE_FAILED = "clock_estimate_failed"
    CLOCK_OFFSET = "clock_offset"
    COMMAND = "command"
    DAMAGE_CONFIRMATION = "damage_confirmation"  # a control scan taken, or why not
    SCANS_PAUSED = "scans_paused"  # every spot spent: no scan until the operator resumes
    DRY_RUN = "dry_run"  # the orchestration of a replayed run commands nothing
    DISCONNECTED = "disconnected"
    GAP_UNRECOVERABLE = "gap_unrecoverable"
    MONITOR_RESTARTED = "monitor_restarted"
    RECONNECTED = "reconnected"
    REFILL = "refill"
    SPOT_CHANGE = "spot_change"
    SPOT_MOVE_RETRY = "spot_move_retry"
    STORE_ERROR = "store_error"
    STORE_WRITER_RESTARTED = "store_writer_restarted"
    STORE_ROW_REFUSED = "store_row_refused"  # written by the store's writer process itself
    TRIGGER = "trigger"


class Recorder(Protocol):
    """Records one event (``EventLog.derived`` or ``EventLog.own``): what services are given."""

    def __call__(
        self, kind: EventKind, link: str | None, t: float | int | None, /, **detail: Any
    ) -> None: ...


class EventListener(Protocol):
    def __call__(self, kind: EventKind, link: str | None, detail: dict[str, Any]) -> None: ...


class EventSink(Protocol):
    """Where recorded events go: the run store."""

    def put(self, row: EventRow) -> None: ...


class EventLog:
    def __init__(self, sink: EventSink, publish: Publish | None = None) -> None:
        self.sink = sink
        self.publish: Publish = publish or (lambda topic, body: None)
        self.counts: Counter[str] = Counter()
        self.listeners: list[EventListener] = []
        # receive time of the message being processed (0: the wall clock at recording)
        self.recv_ns = 0

    def derived(
        self, kind: EventKind, link: str | None, t: float | int | None, **detail: Any
    ) -> None:
        """An event derived from the messages (reprocess derives it again)."""
        self._record("ingest", kind, link, t, detail)

    def own(self, kind: EventKind, link: str | None, t: float | int | None, **detail: Any) -> None:
        """An event of the monitor's own (reprocess keeps it)."""
        self._record("monitor", kind, link, t, detail)

    def _record(
        self,
        origin: Origin,
        kind: EventKind,
        link: str | None,
        t: float | int | None,
        detail: dict[str, Any],
    ) -> None:
        kind = EventKind(kind)  # a kind nobody declared is a bug: say so here, not in a reader
        t_val = None if t is None or not math.isfinite(t) else float(t)
        recv_ns = self.recv_ns or time.time_ns()
        self.sink.put(
            EventRow(recv_ns, t_val, kind.value, link, _json.encode(detail).decode(), origin)
        )
        self.counts[kind] += 1
        self.publish("events", {"kind": kind.value, "link": link})
        for listener in self.listeners:
            listener(kind, link, detail)
