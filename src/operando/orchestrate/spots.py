"""Which sample spot the beam should be on: the dose budget, and damage confirmed, not guessed.

The policy decides; it does no I/O. The orchestrator gives it ``move`` and ``acquire`` (which
send commands), the event recorder and the alarms; ``bench/damage.py`` gives it a simulated
beamline's, so what the bench measures is what the monitor does.

- A spot is left *before* a scan would take it past the dose budget (not after).
- A damage *suspicion* on the spot the beam is on is confirmed by one scan of the same edge on
  a control spot: one not spent, with room in its budget for a scan, and at most
  ``control_dose_fraction`` of the suspect's dose (the least dosed such spot); with no such
  spot left, the least dosed spot spent for its budget (never a damaged one). Once the
  control scan is in, the beam goes back to the suspect: under current its next scan closes
  the bracket the verdict needs. ``damage`` spends the suspect spot and moves on (the damage
  alarm is raised from the verdict's event); any other verdict leaves the beam where it is.
  At most ``confirmations_per_hour`` control scans are spent per hour of the run's own time;
  a suspicion beyond that, or with no control spot left, stays a suspicion and says why in a
  ``damage_confirmation`` event.
- A spot past the analysis's ``check_from_Gy`` is also checked by dose alone (a
  ``dose_check``, every few of its scans): the same control scan, counted in the same limit.
- A verdict of damage that no confirmation of ours asked for (a replay decides from the
  recorded control scans) spends the spot all the same when the beam is on it.
- With every spot spent, the scans are paused (``when_spots_run_out = "pause"``, the
  default): more scans on spent spots would only measure damage. The alarm says so and how
  to go on; an operator's ``resume_scans`` goes on where the beam is, and nothing pauses
  them again. ``"continue"`` keeps scanning on the spot in use (the least dosed undamaged
  one after a damage verdict).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operando.analysis.damage import DOSE_CHECK, DamageSuspicion, DamageVerdict
from operando.events import EventKind, Recorder

Move = Callable[[str], None]
Acquire = Callable[[str, str, str], None]  # edge, spot, trigger id
Alarm = Callable[[str, str, str], object]  # category, message, key
Pause = Callable[[], None]


@dataclass(slots=True)
class Confirming:
    suspect: str
    control: str
    edge: str
    t: float
    trigger_id: str
    scans: int = 0  # scans since the control was asked for (the control is the first)


class SpotPolicy:
    def __init__(
        self,
        spots: list[str],
        *,
        dose_budget_Gy: float,
        move: Move,
        acquire: Acquire,
        event: Recorder,
        alarm: Alarm,
        rotate_on_damage: bool = True,
        confirm_damage: bool = True,
        confirmations_per_hour: int = 2,
        control_dose_fraction: float = 0.5,
        pause: Pause | None = None,
    ) -> None:
        """``pause``: stop the scans once no fresh spot is left (None: keep scanning)."""
        self.spots = list(spots)
        self.spot: str | None = self.spots[0] if self.spots else None
        self.spent: set[str] = set()
        self.damaged: set[str] = set()
        self.totals: dict[str, float] = {}
        self.last_scan_dose: dict[str, float] = {}
        self.budget = dose_budget_Gy
        self.move, self.acquire, self.event, self.alarm = move, acquire, event, alarm
        self.rotate_on_damage = rotate_on_damage
        self.confirm_damage = confirm_damage
        self.per_hour = confirmations_per_hour
        self.control_fraction = control_dose_fraction
        self.confirming: Confirming | None = None
        self.confirmed_at: deque[float] = deque()  # the run's times of control scans sent
        self.pause = pause
        self.paused = False
        self.counts = {"confirmations": 0, "rotations": 0}

    # -- spots ---------------------------------------------------------------------------------
    def on_spots(self, spots: list[str]) -> None:
        """The spectrometer announced its spots and none were configured."""
        if not self.spots and spots:
            self.spots = list(spots)
            if self.spot is None:  # not one a restarted monitor resumed
                self.spot = self.spots[0]

    def resume(self, changes: list[tuple[str | None, str, bool]]) -> None:
        """A restarted monitor continues where the run was: on the spot of the last recorded
        change, every spot left for good spent (a control scan's visit is not)."""
        for old, new, spent in changes:
            if old and spent:
                self.spent.add(old)
            self.spot = new

    def _fits_budget(self, spot: str) -> bool:
        total = self.totals.get(spot, 0.0)
        scan = self.last_scan_dose.get(spot, max(self.last_scan_dose.values(), default=0.0))
        return self.budget <= 0 or total + scan <= self.budget

    def _over_budget(self, spot: str) -> str:
        """Why the beam leaves ``spot`` for its budget (the spot-change event's reason)."""
        return (
            f"spot {spot} at {self.totals.get(spot, 0.0) / 1e6:.2f} MGy: the next scan would "
            f"pass the {self.budget / 1e6:.2f} MGy budget"
        )

    # -- dose ----------------------------------------------------------------------------------
    def on_dose(self, spot: str, scan_dose_Gy: float, total_Gy: float) -> None:
        self.last_scan_dose[spot] = scan_dose_Gy
        self.totals[spot] = total_Gy
        c = self.confirming
        if c is not None and spot == c.control and c.scans == 0:
            # the control is taken: back to the suspect, whose next scan closes a bracket
            # under current and is the one a verdict of damage would spare
            c.scans += 1
            if not self._fits_budget(c.suspect):
                # scans still landing on the suspect while the beam was sent to the control
                # brought it to its budget: it cannot take the bracket's scan (the lnmo demo
                # went back, and the suspect ended 92 MGy past a 500 MGy budget)
                self.confirming = None
                self._confirmation_over(c, f"spot {c.suspect} reached its dose budget")
                self.spot = c.suspect  # spent from where the policy stands, not the control
                self.rotate(self._over_budget(c.suspect))
                return
            self._go(c.suspect, f"back from the control scan on {c.control}", spent=False)
            return
        if c is not None and spot == c.suspect and self.spot == c.suspect:
            c.scans += 1
            if c.scans > 4:  # no verdict came (the control lost, not analysed)
                self.confirming = None
                self._confirmation_over(c, "no verdict after 3 scans since the control")
        if spot == self.spot and not self._fits_budget(spot):
            self.rotate(self._over_budget(spot))

    def rotate(self, reason: str, *, t: float | None = None, damaged: bool = False) -> None:
        """Spend the spot in use and move to the first fresh one (an alarm when none is).
        Off a damaged spot with none fresh, the beam goes to the least dosed undamaged spot:
        staying would measure damage, scan after scan."""
        if self.spot is not None:
            self.spent.add(self.spot)
        fresh = [s for s in self.spots if s not in self.spent]
        if not fresh and self.paused:
            return  # the scan in flight at the pause landed: the alarm is up already
        if not fresh:
            pause = self.pause
            then = (
                "scans paused: 'operando trigger resume_scans' goes on (on spent spots), "
                "'move --spot' chooses one"
                if pause
                else "scanning goes on"
            )
            self.alarm(
                "spots",
                f"{reason}; no fresh spot left ({len(self.spent)} spent): {then}",
                "no fresh spot",  # one alarm, counting up, until someone acts on it
            )
            if pause:
                self.paused = True
                self.event(EventKind.SCANS_PAUSED, None, t, reason=reason, spent=len(self.spent))
                pause()
                return
            spare = [s for s in self.spots if s not in self.damaged and s != self.spot]
            if damaged and spare:
                least = min(spare, key=lambda s: (self.totals.get(s, 0.0), s))
                self._go(least, f"{reason}; the least dosed undamaged spot, already spent", t=t)
            return
        self._go(fresh[0], reason, t=t)

    def _go(self, spot: str, reason: str, *, spent: bool = True, t: float | None = None) -> None:
        old, self.spot = self.spot, spot
        self.counts["rotations"] += spent
        self.event(EventKind.SPOT_CHANGE, None, t, old=old, new=spot, reason=reason, spent=spent)
        self.move(spot)

    def on_resumed(self) -> None:
        """The operator resumed the scans on spent spots: never paused again this run."""
        self.pause, self.paused = None, False

    # -- damage --------------------------------------------------------------------------------
    def on_finding(self, found: DamageSuspicion | DamageVerdict) -> None:
        if isinstance(found, DamageSuspicion):
            self.on_suspicion(found)
        else:
            self.on_verdict(found)

    def _confirmation(self, s: DamageSuspicion, status: str, **detail: Any) -> None:
        self.event(
            EventKind.DAMAGE_CONFIRMATION,
            None,
            s.t_scan,
            spot=s.spot,
            edge=s.edge,
            spectrum_id=s.spectrum_id,
            status=status,
            **detail,
        )

    def _decline(self, s: DamageSuspicion, why: str) -> None:
        self._confirmation(s, "not taken", why=why)

    def on_suspicion(self, s: DamageSuspicion) -> None:
        if not (self.confirm_damage and self.rotate_on_damage):
            return self._decline(s, "confirmation is off ([orchestration] confirm_damage)")
        c = self.confirming
        if c is not None and c.suspect not in self.spent:
            return  # one at a time: its verdict answers this one too
        if c is not None:
            # the suspect was left (its budget) and no verdict came of the scans it had:
            # none will, and waiting for it dropped every later suspicion unseen
            self.confirming = None
            self._confirmation_over(c, f"no verdict came before the beam left {c.suspect}")
        if not s.awaits_control:
            return self._decline(s, f"the control of another {s.edge} suspicion is in")
        if s.spot != self.spot:
            return self._decline(s, f"the beam has left spot {s.spot}")
        if self.paused:
            return self._decline(s, "the scans are paused (no fresh spot)")
        while self.confirmed_at and self.confirmed_at[0] <= s.t_scan - 3600.0:
            self.confirmed_at.popleft()
        if len(self.confirmed_at) >= self.per_hour:
            return self._decline(
                s, f"{len(self.confirmed_at)} control scans in the last hour (the limit)"
            )
        suspect_dose = self.totals.get(s.spot, s.dose_Gy)
        low = [
            spot
            for spot in self.spots
            if spot != s.spot
            and spot not in self.damaged
            and self.totals.get(spot, 0.0) <= self.control_fraction * suspect_dose
        ]
        fresh = [spot for spot in low if spot not in self.spent and self._fits_budget(spot)]
        # with no fresh spot left, a spot spent for its budget (its data taken) is the
        # next best control: one more scan on it beats never deciding
        candidates = fresh or low
        if not candidates:
            return self._decline(
                s,
                f"no spot for a control: none undamaged at most {self.control_fraction:.0%} "
                f"of the suspect's {suspect_dose / 1e6:.2f} MGy",
            )
        control = min(candidates, key=lambda spot: (self.totals.get(spot, 0.0), spot))
        self.counts["confirmations"] += 1
        self.confirmed_at.append(s.t_scan)
        tid = f"confirm-{self.counts['confirmations']}"
        self.confirming = Confirming(s.spot, control, s.edge, s.t_scan, tid)
        self._confirmation(
            s,
            "control scan requested",
            control=control,
            control_dose_Gy=self.totals.get(control, 0.0),
            control_within_budget=bool(fresh),
            suspect_dose_Gy=suspect_dose,
            trigger_id=tid,
            test=s.test,
            p_value=s.p_value,
        )
        old, self.spot = self.spot, control
        self.event(
            EventKind.SPOT_CHANGE,
            None,
            s.t_scan,
            old=old,
            new=control,
            reason=(
                f"a control scan for the dose check of {s.spot}"
                if s.test == DOSE_CHECK
                else f"a control scan for the damage suspicion on {s.spot} ({s.test})"
            ),
            spent=False,
        )
        self.acquire(s.edge, control, tid)

    def on_verdict(self, v: DamageVerdict) -> None:
        c = self.confirming
        if c is not None and c.suspect == v.spot and c.edge == v.edge:
            self.confirming = None
        if v.verdict != "damage":
            return
        self.damaged.add(v.spot)
        self.spent.add(v.spot)
        if self.rotate_on_damage and v.spot == self.spot:
            self.rotate(f"beam damage confirmed on {v.spot}: {v.why}", t=v.t_scan, damaged=True)

    def _confirmation_over(self, c: Confirming, why: str) -> None:
        self.event(
            EventKind.DAMAGE_CONFIRMATION,
            None,
            None,
            spot=c.suspect,
            edge=c.edge,
            status="abandoned",
            control=c.control,
            why=why,
        )
