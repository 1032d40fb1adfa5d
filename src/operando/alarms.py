"""Alarms: what needs a person, kept until someone acknowledges it.

An alarm is raised by the orchestrator (a command refused or never acked, no fresh spot left)
or from an event that means data are at risk (damage confirmed, messages lost, a driver silent,
the store failing, a stage move that did not take). A gap in a source's messages is an alarm
only once the monitor could not get it sent again (``gap_unrecoverable``). Every alarm, repeat
and acknowledgement is an event in the run store, so a dashboard opened later, or a monitor
restarted, sees the same open alarms. A condition that repeats while its alarm is open (damage
flagged again on the same spot) counts up on that alarm instead of burying the operator under
copies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from operando.events import EventKind, Recorder


def _dose(d: dict[str, Any]) -> str:
    dose = d.get("dose_Gy")
    return f" ({dose / 1e6:.0f} MGy so far)" if isinstance(dose, int | float) else ""


def _damage(d: dict[str, Any]) -> str | None:
    """A confirmed verdict is an alarm; a suspicion, or a verdict of electrochemistry, not."""
    if d.get("verdict") != "damage":
        return None
    ev = d.get("evidence") or {}
    return (
        f"beam damage confirmed on spot {d.get('spot')} ({d.get('edge')}): {d.get('why')}; "
        f"control spot {d.get('control_spot')} at {ev.get('control_dose_Gy', 0) / 1e6:.2f} "
        f"MGy vs {ev.get('suspect_dose_Gy', 0) / 1e6:.2f} MGy"
    )


# event kind -> (alarm category, what makes two occurrences the same condition, message;
# no message: not an alarm)
FROM_EVENTS: dict[
    EventKind, tuple[str, str, Callable[[str | None, dict[str, Any]], str | None]]
] = {
    EventKind.DAMAGE_VERDICT: ("damage", "spot", lambda link, d: _damage(d)),
    EventKind.SOC_OUT_OF_RANGE: (
        "soc calibration",
        "link",
        lambda link, d: (
            f"SOC {d.get('soc', float('nan')):.3f} is outside 0..1: likely {d.get('likely')}; "
            f"capacity {d.get('capacity_mAh')} mAh (from {d.get('capacity_from') or '?'}), "
            f"starting SOC {d.get('initial_soc')} ({d.get('initial_soc_from')})"
        ),
    ),
    EventKind.STRANGER_REFUSED: (
        "stranger",
        "link",
        lambda link, d: (
            f"{link}: a stream from another source was refused ({d.get('why')}): recorded, "
            "not taken as data; check the ports in the experiment file"
        ),
    ),
    EventKind.DERIVE_ERROR: (
        "not derived",
        "link",
        lambda link, d: (
            f"{link}: message {d.get('raw_id')} was recorded but its rows could not be derived "
            f"({d.get('error')}); it is kept in the raw log"
        ),
    ),
    EventKind.ANALYSIS_BEHIND: (
        "analysis",
        "",
        lambda link, d: (
            f"live analysis is behind ({d.get('backlog')} spectra, {d.get('backlog_MB')} MB "
            f"waiting): from spectrum {d.get('spectrum_id')} on, spectra are recorded but not "
            "analysed live (no fits, no damage tests) until it catches up; "
            "operando reprocess analyses them"
        ),
    ),
    # A gap alone is not an alarm: the monitor asks the driver to send it again (refill).
    EventKind.GAP_UNRECOVERABLE: (
        "gap",
        "link",
        lambda link, d: (
            f"{link}: {d.get('count')} messages lost (seq {d.get('first')}-{d.get('last')}): "
            f"{d.get('reason')}"
        ),
    ),
    EventKind.DISCONNECTED: (
        "disconnected",
        "link",
        lambda link, d: f"{link} silent for {d.get('silent_s', 0):.0f} s",
    ),
    EventKind.STORE_ERROR: ("store", "", lambda link, d: f"run store: {d.get('error')}"),
    # the stage acked a move but the scans still come from the spent spot: check the stage
    EventKind.SPOT_MOVE_RETRY: (
        "stage",
        "spot",
        lambda link, d: (
            f"scans still come from spent spot {d.get('spot')}{_dose(d)} after a move to "
            f"{d.get('target')}: the move was sent again; check the sample stage"
        ),
    ),
}


class Alarms:
    def __init__(self, event: Recorder) -> None:
        self.event = event
        self.items: list[dict[str, Any]] = []

    def raise_(self, category: str, message: str, key: str = "", **detail: Any) -> dict[str, Any]:
        for a in self.items:
            if not a["acknowledged"] and a["category"] == category and key and a["key"] == key:
                a["count"] += 1
                a["message"] = message
                self.event(EventKind.ALARM, None, None, **a)
                return a
        alarm = {
            "id": len(self.items) + 1,
            "category": category,
            "key": key,
            "message": message,
            "count": 1,
            "acknowledged": False,
            **detail,
        }
        self.items.append(alarm)
        self.event(EventKind.ALARM, None, None, **alarm)
        return alarm

    def on_event(self, kind: EventKind, link: str | None, detail: dict[str, Any]) -> None:
        rule = FROM_EVENTS.get(kind)
        if rule is None:
            return
        category, key_field, message = rule
        text = message(link, detail)
        if text is None:
            return
        key = str(link if key_field == "link" else detail.get(key_field, "")) if key_field else ""
        self.raise_(category, text, key or category)

    def acknowledge(self, alarm_id: int) -> bool:
        for a in self.items:
            if a["id"] == alarm_id and not a["acknowledged"]:
                a["acknowledged"] = True
                self.event(EventKind.ALARM_ACKNOWLEDGED, None, None, id=alarm_id)
                return True
        return False

    def open(self) -> list[dict[str, Any]]:
        return [a for a in self.items if not a["acknowledged"]]

    def restore(self, events: Iterable[tuple[str, str]]) -> None:
        """Rebuild from the run's ``alarm``/``alarm_acknowledged`` events (kind, detail JSON)."""
        by_id: dict[int, dict[str, Any]] = {}
        for kind, detail in events:
            d = json.loads(detail)
            if kind == EventKind.ALARM:
                by_id[int(d["id"])] = d
            elif kind == EventKind.ALARM_ACKNOWLEDGED and int(d["id"]) in by_id:
                by_id[int(d["id"])]["acknowledged"] = True
        self.items = [by_id[k] for k in sorted(by_id)]
