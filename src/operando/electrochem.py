"""The run's electrochemistry as rows arrive: half-cycles (capacity, energy, dQ/dV and its
peaks) and the resistance of every current step, recorded as derived tables.

Fed by ingest with the potentiostat's fresh rows and the charge the history counted for them
(the instrument's own counter, or coulomb counting by the run's one rule), so the capacity
agrees with the SOC shown beside it. Reprocess feeds it the same rows in the same order, and
derives the same tables; a restarted monitor replays the recorded rows without writing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from operando.analysis.cycling import HalfCycle, HalfCycleTracker
from operando.analysis.resistance import CurrentStep, StepResistance
from operando.config import ElectrochemistryConfig
from operando.protocol import MODE_CV
from operando.store.rows import CurrentStepRow, HalfCycleRow, Row

_json = msgspec.json.Encoder()


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def half_cycle_row(h: HalfCycle) -> HalfCycleRow:
    return HalfCycleRow(
        h.index,
        h.cycle,
        h.direction,
        h.t_start,
        h.t_end,
        h.capacity_mAh,
        h.energy_mWh,
        _finite(h.mean_voltage_V),  # type: ignore[arg-type]
        int(h.complete),
        _json.encode(h).decode(),
    )


def current_step_row(s: CurrentStep) -> CurrentStepRow:
    return CurrentStepRow(
        s.t_step,
        s.i_before_mA,
        s.i_after_mA,
        _finite(s.soc),
        s.r_first_ohm,
        _finite(s.r_0_ohm),
        _finite(s.r_unc_ohm),
        _json.encode(s).decode(),
    )


class Electrochemistry:
    def __init__(
        self,
        cfg: ElectrochemistryConfig,
        rest_current_mA: float,
        put: Callable[[Row], None],
        publish: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.enabled = cfg.enabled
        self.halves = HalfCycleTracker(cfg.cycling, rest_current_mA)
        self.steps = StepResistance(cfg.resistance)
        self.put, self.publish = put, publish
        self.recording = True  # False while a restarted monitor replays what is recorded
        self.counts = {"half_cycles": 0, "current_steps": 0}
        self.last_step: CurrentStep | None = None

    def add(
        self,
        t: np.ndarray,
        ewe: np.ndarray,
        i_mA: np.ndarray,
        mode: np.ndarray,
        q: np.ndarray,
        soc: list[Any],
    ) -> None:
        if not self.enabled or not len(t):
            return
        soc_a = np.array([math.nan if s is None else s for s in soc], dtype=np.float64)
        cv = np.asarray(mode) == MODE_CV
        if np.any(np.diff(t) < 0):  # the trackers read rows in time order
            order = np.argsort(t, kind="stable")
            t, ewe, i_mA, cv, q = t[order], ewe[order], i_mA[order], cv[order], q[order]
            soc_a = soc_a[order]
        self._halves(self.halves.add(t, ewe, q, cv))
        self._steps(self.steps.add(t, ewe, i_mA, soc_a))

    def restart(self) -> None:
        """The potentiostat's series restarted: its counters may start again."""
        if self.enabled:
            self._halves(self.halves.restart())
            self._steps(self.steps.restart())

    def finish(self) -> None:
        """End of input: the half-cycle still running is recorded as incomplete."""
        if self.enabled:
            self._halves(self.halves.finish())
            self._steps(self.steps.finish())

    def _halves(self, done: list[HalfCycle]) -> None:
        for h in done:
            self.counts["half_cycles"] += h.complete
            if self.recording:
                self.put(half_cycle_row(h))
                self.publish("half_cycle", {"idx": h.index, "complete": h.complete})

    def _steps(self, done: list[CurrentStep]) -> None:
        for s in done:
            self.counts["current_steps"] += 1
            self.last_step = s
            if self.recording:
                self.put(current_step_row(s))
        if done and self.recording:
            self.publish("current_step", {"t_step": done[-1].t_step, "steps": len(done)})

    def status(self) -> dict[str, Any]:
        """The half-cycle in progress and the newest step's resistance, for status displays."""
        h = self.halves.current()
        out: dict[str, Any] = dict(self.counts)
        if h is not None:
            out["half_cycle"] = {
                "idx": h.index,
                "cycle": h.cycle,
                "direction": h.direction,
                "capacity_mAh": h.capacity_mAh,
                "since": h.t_start,
            }
        s = self.last_step
        if s is not None:
            out["last_step"] = {
                "t_step": s.t_step,
                "r_0_ohm": _finite(s.r_0_ohm),
                "r_0_unc_ohm": _finite(s.r_0_unc_ohm),
                "r_first_ohm": s.r_first_ohm,
            }
        return out
