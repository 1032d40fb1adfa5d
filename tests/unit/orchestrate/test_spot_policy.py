"""The spot policy: rotation before the budget is passed, damage acted on only when confirmed."""

from __future__ import annotations

from typing import Any

from operando.analysis.damage import DamageSuspicion, DamageVerdict
from operando.events import EventKind
from operando.orchestrate.spots import SpotPolicy


class Beamline:
    """What the policy commands, recorded (the orchestrator sends these as commands)."""

    def __init__(self, budget: float = 10e6, per_hour: int = 2, pause: bool = False) -> None:
        self.moves: list[str] = []
        self.pauses = 0
        self.scans: list[tuple[str, str, str]] = []
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.alarms: list[tuple[str, str]] = []
        self.policy = SpotPolicy(
            ["A1", "A2", "A3"],
            dose_budget_Gy=budget,
            move=self.moves.append,
            acquire=lambda edge, spot, tid: self.scans.append((edge, spot, tid)),
            event=lambda kind, link, t, **d: self.events.append((kind, d)),
            alarm=lambda category, message, key: self.alarms.append((category, message)),
            confirmations_per_hour=per_hour,
            pause=self._pause if pause else None,
        )

    def _pause(self) -> None:
        self.pauses += 1

    def kinds(self, kind: EventKind) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def _suspicion(spot: str, t: float, dose: float = 6e6) -> DamageSuspicion:
    return DamageSuspicion(
        spectrum_id=7,
        spot=spot,
        edge="Mn-L",
        test="dose_slope",
        statistic=5.0,
        p_value=1e-5,
        dose_Gy=dose,
        t_scan=t,
    )


def _verdict(verdict: str, s: DamageSuspicion, control: str = "A2") -> DamageVerdict:
    return DamageVerdict(
        verdict=verdict,
        spot=s.spot,
        edge=s.edge,
        suspicion=s,
        suspect_spectrum=7,
        control_spectrum=8,
        control_spot=control,
        t_scan=s.t_scan + 60,
        why="test",
    )


def test_rotates_before_a_scan_would_pass_the_budget():
    b = Beamline(budget=10e6)
    for total in (3e6, 6e6, 9e6):
        b.policy.on_dose("A1", 3e6, total)
    assert b.moves == ["A2"]  # at 9 MGy the next 3 MGy scan would pass 10
    assert b.policy.spent == {"A1"}


def test_a_suspect_at_its_budget_is_not_gone_back_to_after_the_control():
    """Scans of the suspect still came in while the beam was sent to the control; the policy
    went back all the same and the suspect passed its budget by most of a scan."""
    b = Beamline(budget=10e6)
    b.policy.on_dose("A1", 3e6, 6e6)
    b.policy.on_finding(_suspicion("A1", 1000.0))
    assert b.policy.spot == "A2"  # the control
    b.policy.on_dose("A1", 3e6, 9e6)  # a scan already under way on the suspect
    b.policy.on_dose("A2", 3e6, 3e6)  # the control scan
    assert b.policy.confirming is None and "A1" in b.policy.spent
    assert b.moves == ["A2"] and b.policy.spot == "A2"  # the first fresh spot: the control's
    over = b.kinds(EventKind.DAMAGE_CONFIRMATION)[-1]
    assert over["status"] == "abandoned" and "budget" in over["why"]
    change = b.kinds(EventKind.SPOT_CHANGE)[-1]
    assert change["old"] == "A1" and change["spent"] is True


def test_a_suspicion_moves_nothing_for_good_until_a_control_confirms():
    b = Beamline()
    b.policy.on_dose("A1", 2e6, 6e6)
    s = _suspicion("A1", 1000.0)
    b.policy.on_finding(s)
    assert b.scans == [("Mn-L", "A2", "confirm-1")] and b.policy.spent == set()
    (asked,) = b.kinds(EventKind.DAMAGE_CONFIRMATION)
    assert asked["status"] == "control scan requested" and asked["control"] == "A2"
    b.policy.on_dose("A2", 2e6, 2e6)  # the control scan is in: back to the suspect
    assert b.policy.spot == "A1" and b.moves == ["A1"]
    b.policy.on_finding(_verdict("electrochemistry", s))
    assert b.policy.spot == "A1" and b.policy.spent == set() and b.policy.confirming is None
    assert all(d["spent"] is False for d in b.kinds(EventKind.SPOT_CHANGE))
    # a second suspicion later, confirmed as damage: the suspect is spent, the beam moves on
    s2 = _suspicion("A1", 2000.0)
    b.policy.on_finding(s2)
    assert b.scans[-1] == ("Mn-L", "A3", "confirm-2")  # the least dosed spot now
    b.policy.on_dose("A3", 2e6, 2e6)
    b.policy.on_dose("A1", 2e6, 8e6)  # the suspect's next scan (closes a bracket)
    b.policy.on_finding(_verdict("damage", s2))
    assert b.policy.spent == {"A1"} and b.policy.damaged == {"A1"}
    assert b.policy.spot == "A2" and b.moves[-1] == "A2"
    last = b.kinds(EventKind.SPOT_CHANGE)[-1]
    assert last["spent"] is True and "damage confirmed" in last["reason"]


def test_a_verdict_that_never_comes_ends_the_confirmation():
    b = Beamline()
    b.policy.on_dose("A1", 1e6, 4e6)
    b.policy.on_finding(_suspicion("A1", 100.0))
    b.policy.on_dose("A2", 1e6, 1e6)
    for k in range(4):
        b.policy.on_dose("A1", 1e6, 5e6 + k)
    assert b.policy.confirming is None
    assert b.kinds(EventKind.DAMAGE_CONFIRMATION)[-1]["status"] == "abandoned"


def test_control_scans_are_limited_per_hour_of_the_run():
    b = Beamline(per_hour=1)
    b.policy.on_dose("A1", 2e6, 6e6)
    s = _suspicion("A1", 100.0)
    b.policy.on_finding(s)
    b.policy.on_dose("A2", 1e6, 1e6)  # the control, then back on A1
    b.policy.on_finding(_verdict("inconclusive", s))
    b.policy.on_finding(_suspicion("A1", 900.0))
    assert len(b.scans) == 1
    assert "last hour" in b.kinds(EventKind.DAMAGE_CONFIRMATION)[-1]["why"]
    b.policy.on_finding(_suspicion("A1", 3800.0))  # an hour later
    assert len(b.scans) == 2 and b.scans[-1][1] == "A3"  # A2 has taken dose by now


def test_no_control_spot_leaves_a_suspicion_a_suspicion():
    b = Beamline(budget=4e6)
    for spot in ("A2", "A3"):
        b.policy.on_dose(spot, 2e6, 3e6)  # more than half the suspect's dose
    b.policy.on_dose("A1", 1e6, 2e6)
    b.policy.on_finding(_suspicion("A1", 100.0))
    assert b.scans == [] and b.policy.spot == "A1" and not b.alarms
    assert "no spot for a control" in b.kinds(EventKind.DAMAGE_CONFIRMATION)[-1]["why"]


def test_with_every_spot_spent_the_least_dosed_serves_as_the_control():
    b = Beamline(budget=4e6)
    b.policy.on_dose("A1", 1.5e6, 3e6)  # A1 spent: the next scan would pass 4 MGy
    b.policy.on_dose("A2", 1.5e6, 3e6)
    assert b.policy.spot == "A3"
    b.policy.on_dose("A3", 1.5e6, 3e6)  # A3 spent too: no fresh spot, an alarm, stays
    assert b.alarms and b.policy.spot == "A3"
    b.policy.on_dose("A3", 1.5e6, 9e6)
    b.policy.on_finding(_suspicion("A3", 100.0, dose=9e6))
    assert b.scans == [("Mn-L", "A1", "confirm-1")]
    (asked,) = b.kinds(EventKind.DAMAGE_CONFIRMATION)
    assert asked["control_within_budget"] is False
    b.policy.on_dose("A1", 1.5e6, 4.5e6)  # the control; back to A3
    b.policy.on_finding(_verdict("damage", _suspicion("A3", 100.0, dose=9e6), "A1"))
    # damaged, no fresh spot: not staying on it, but on the least dosed undamaged one
    assert b.policy.spot == "A2" and b.moves[-1] == "A2"


def test_a_verdict_nobody_asked_for_still_spends_the_spot_the_beam_is_on():
    """A replay decides from the recorded control scans: its verdict acts (as a dry run)."""
    b = Beamline()
    b.policy.on_finding(_verdict("damage", _suspicion("A1", 100.0)))
    assert b.policy.spent == {"A1"} and b.policy.spot == "A2" and b.moves == ["A2"]


def test_with_every_spot_spent_the_scans_pause_until_the_operator_resumes():
    """More scans on spent spots only measure damage: the scans pause, the alarm says how to
    go on, and a resume by the operator is not undone by the next spent spot."""
    b = Beamline(budget=4e6, pause=True)
    for spot in ("A1", "A2"):
        b.policy.on_dose(spot, 1.5e6, 3e6)
    assert b.pauses == 0 and b.policy.spot == "A3"
    b.policy.on_dose("A3", 1.5e6, 3e6)  # the last fresh spot spent
    assert b.pauses == 1 and b.policy.paused and b.policy.spot == "A3"
    ((category, message),) = b.alarms
    assert category == "spots" and "scans paused" in message and "resume_scans" in message
    (paused,) = b.kinds(EventKind.SCANS_PAUSED)
    assert paused["spent"] == 3
    b.policy.on_finding(_suspicion("A3", 100.0, dose=3e6))  # no scan can be taken for it
    assert b.scans == [] and "paused" in b.kinds(EventKind.DAMAGE_CONFIRMATION)[-1]["why"]
    b.policy.on_resumed()
    assert not b.policy.paused
    b.policy.on_dose("A3", 1.5e6, 4.5e6)  # a scan after the resume: it goes on
    assert b.pauses == 1 and "scanning goes on" in b.alarms[-1][1]


def test_leaving_the_suspect_for_its_budget_ends_its_confirmation():
    """The suspect left for its budget before its verdict: the confirmation ends there (it
    once stayed open for good, and every later suspicion was dropped unseen)."""
    b = Beamline(budget=10e6, per_hour=10)
    b.policy.on_dose("A1", 3e6, 6e6)
    b.policy.on_finding(_suspicion("A1", 100.0))
    b.policy.on_dose("A2", 3e6, 3e6)  # the control; back to A1
    b.policy.on_dose("A1", 3e6, 9e6)  # no room for another: A1 is left, no verdict came
    assert b.policy.spot == "A2"
    b.policy.on_dose("A2", 1e6, 4e6)
    b.policy.on_finding(_suspicion("A2", 300.0, dose=4e6))  # a later suspicion is answered
    assert b.scans[-1] == ("Mn-L", "A3", "confirm-2") and b.policy.confirming is not None
    over = [d for d in b.kinds(EventKind.DAMAGE_CONFIRMATION) if d["status"] == "abandoned"]
    assert len(over) == 1 and "before the beam left A1" in over[0]["why"]
