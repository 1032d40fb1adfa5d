"""Triggers: conditions on the electrochemistry that fire an action exactly once per crossing.

A voltage trigger fires when Ewe reaches its target in the configured direction (charge:
rising while the current is positive; discharge: falling while it is negative; either).
Noise is handled twice: the signal is a running mean over ``debounce`` samples, and after
firing the trigger re-arms only once that mean has gone back past ``target -/+ hysteresis``,
so a noisy 10 Hz signal crossing 4.2 V - or held at 4.2 V by a CV step - fires once. With
``per_cycle`` it fires at most once per cycle; with ``once``, once in the run. A trigger whose
quantity starts beyond the target waits for a real crossing. SOC, charge passed and time in
rest (the run's one ``RestCriterion``) work the same way. Pure: rows in, firings out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from operando.analysis.rest import RestCriterion
from operando.config import Action, TriggerSpec


@dataclass(frozen=True, slots=True)
class Firing:
    trigger_id: str
    t: float  # time of the sample that completed the crossing
    value: float
    cycle: int
    reason: str
    action: Action


@dataclass(slots=True)
class _State:
    armed: bool | None = None  # None until the first sample says which side we are on
    recent: deque[float] = field(default_factory=deque)
    fired_cycles: set[int] = field(default_factory=set)
    fired_ever: bool = False


class TriggerEngine:
    def __init__(self, specs: list[TriggerSpec], rest: RestCriterion | None = None) -> None:
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"trigger ids must be unique, got {ids}")
        self.specs = specs
        self.state = {s.id: _State() for s in specs}
        self.rest = rest or RestCriterion()  # when 'time in rest' counts
        self.rest_start: float | None = None

    def feed(self, rows: dict[str, np.ndarray]) -> list[Firing]:
        """Rows: t, Ewe, I, mode, cycle and (when known) soc, q. Returns what fired."""
        t, ewe, cur = rows["t"], rows["Ewe"], rows["I"]
        mode, cycle = rows["mode"], rows["cycle"]
        soc, q = rows.get("soc"), rows.get("q")
        out: list[Firing] = []
        resting = self.rest(mode, cur)
        for k in range(len(t)):
            if resting[k]:
                if self.rest_start is None:
                    self.rest_start = float(t[k])
            else:
                self.rest_start = None
            values = {
                "voltage": float(ewe[k]),
                "soc": float(soc[k]) if soc is not None else math.nan,
                "charge": float(q[k]) if q is not None else math.nan,
                "rest_time": float(t[k]) - self.rest_start
                if self.rest_start is not None
                else math.nan,
            }
            for spec in self.specs:
                f = self._step(
                    spec, values[spec.quantity], float(cur[k]), int(cycle[k]), float(t[k])
                )
                if f is not None:
                    out.append(f)
        return out

    def _step(
        self, spec: TriggerSpec, v: float, current: float, cycle: int, t: float
    ) -> Firing | None:
        st = self.state[spec.id]
        if math.isnan(v):
            return None
        st.recent.append(v)
        while len(st.recent) > spec.debounce:
            st.recent.popleft()
        mean = sum(st.recent) / len(st.recent)
        if spec.quantity == "rest_time":
            rising = True
        elif spec.direction == "either":
            rising = current >= 0
        else:
            rising = spec.direction == "charge"
            if (current > 0) != rising or current == 0:  # not moving the way this one wants
                return None
        reached = (
            mean >= spec.target - spec.tolerance
            if rising
            else (mean <= spec.target + spec.tolerance)
        )
        back = (
            mean < spec.target - spec.hysteresis
            if rising
            else (mean > spec.target + spec.hysteresis)
        )
        if st.armed is None:
            st.armed = not reached
        if back:
            st.armed = True
            return None
        if not (st.armed and reached and len(st.recent) >= spec.debounce):
            return None
        st.armed = False
        if (spec.repeat == "once" and st.fired_ever) or (
            spec.repeat == "per_cycle" and cycle in st.fired_cycles
        ):
            return None
        st.fired_ever = True
        st.fired_cycles.add(cycle)
        word = "reached" if rising else "fell to"
        return Firing(
            spec.id,
            t,
            mean,
            cycle,
            f"{spec.quantity} {word} {spec.target:g} (mean of {spec.debounce} "
            f"samples {mean:.4g}) in cycle {cycle}",
            spec.action,
        )


def firing_detail(f: Firing) -> dict[str, Any]:
    return {
        "trigger_id": f.trigger_id,
        "value": f.value,
        "cycle": f.cycle,
        "reason": f.reason,
        "action": msgspec.to_builtins(f.action),
    }
