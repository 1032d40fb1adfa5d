"""``operando inspect``: when a run began and ended, whether it ended cleanly, what is open."""

from __future__ import annotations

import json

from operando.store import RunStore
from operando.store.rows import EventRow
from operando.store.summary import format_summary, summarize


def event(kind: str, link: str | None, origin: str = "ingest", **detail) -> EventRow:
    return EventRow(0, None, kind, link, json.dumps(detail), origin)


def test_an_unclosed_series_and_an_open_alarm_are_said(tmp_path):
    """After SIGHUP a source's series has no end and nothing said so; an alarm raised and
    not acknowledged was only in the dashboard."""
    store = RunStore(tmp_path)
    store.put_rows(
        [
            event("series_start", "potentiostat", series="p1"),
            event("series_start", "spectrometer", series="s1"),
            event("series_end", "spectrometer", series="s1", reason="completed"),
            event("alarm", None, "monitor", id=1, category="gap", message="lost 3", count=1),
            event("alarm", None, "monitor", id=2, category="damage", message="spot A1", count=1),
            event("alarm_acknowledged", None, "monitor", id=1),
        ]
    )
    store.flush()
    store.close()
    s = summarize(tmp_path)
    assert s["sources_not_closed"] == ["potentiostat"]
    assert [a["id"] for a in s["open_alarms"]] == [2]
    text = format_summary(s)
    assert "OPEN ALARMS (1):" in text and "#2 [damage] spot A1" in text


def test_a_closed_run_says_it_ended_cleanly(tmp_path):
    store = RunStore(tmp_path)
    store.put_rows(
        [
            event("series_start", "potentiostat", series="p1"),
            event("series_end", "potentiostat", series="p1", reason="completed"),
            event("series_start", "potentiostat", series="p2"),  # restarted
            event("series_end", "potentiostat", series="p2", reason="stopped"),
        ]
    )
    store.flush()
    store.close()
    s = summarize(tmp_path)
    assert s["sources_not_closed"] == [] and s["open_alarms"] == []
    assert "no open alarms" in format_summary(s)
