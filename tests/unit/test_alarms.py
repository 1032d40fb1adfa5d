"""Events that mean data are at risk become alarms a person sees (and acknowledges)."""

from __future__ import annotations

from operando.alarms import Alarms
from operando.events import EventKind


def test_a_message_whose_rows_could_not_be_derived_is_an_alarm_per_source():
    """Recorded but not derived (a potentiostat batch that lost its rows) was only a log line
    and an event; inspect said lost 0. Now it is one alarm a source, counting repeats."""
    recorded: list[tuple] = []
    alarms = Alarms(lambda kind, link, t, **detail: recorded.append((kind, detail)))
    for raw_id in (10, 18):
        alarms.on_event(
            EventKind.DERIVE_ERROR,
            "potentiostat",
            {"raw_id": raw_id, "error": "ValueError: zip() argument 10 is shorter"},
        )
    (alarm,) = alarms.items
    assert alarm["category"] == "not derived" and alarm["count"] == 2
    assert "message 18 was recorded but its rows could not be derived" in alarm["message"]
    assert all(kind == EventKind.ALARM for kind, _ in recorded)


def test_a_soc_outside_its_range_is_a_calibration_alarm_naming_the_numbers():
    alarms = Alarms(lambda kind, link, t, **detail: None)
    alarms.on_event(
        EventKind.SOC_OUT_OF_RANGE,
        "potentiostat",
        {
            "soc": -0.45,
            "likely": "the starting SOC (...) or the capacity (...)",
            "capacity_mAh": 0.45,
            "capacity_from": "potentiostat potentiostat",
            "initial_soc": 0.0,
            "initial_soc_from": "assumed",
        },
    )
    (alarm,) = alarms.items
    assert alarm["category"] == "soc calibration"
    assert alarm["message"].startswith("SOC -0.450 is outside 0..1: likely the starting SOC")
    assert (
        "capacity 0.45 mAh (from potentiostat potentiostat), starting SOC 0.0 (assumed)"
        in (alarm["message"])
    )
