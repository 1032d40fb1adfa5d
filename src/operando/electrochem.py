"""The run's electrochemistry as rows arrive: half-cycles (capacity, energy, dQ/dV and its
peaks), the resistance of every current step, titration pulses (GITT) and current
interruptions (ICI), recorded as derived tables.

Fed by ingest with the potentiostat's fresh rows and the charge the history counted for them
(the instrument's own counter, or coulomb counting by the run's one rule), so the capacity
agrees with the SOC shown beside it. Reprocess feeds it the same rows in the same order, and
derives the same tables; a restarted monitor replays the recorded rows without writing them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from operando.analysis.cycling import HalfCycle, HalfCycleTracker
from operando.analysis.gitt import GittPulse, PulseTracker
from operando.analysis.ici import Interruption, InterruptionTracker
from operando.analysis.resistance import CurrentStep, StepResistance
from operando.analysis.runs import current_runs
from operando.config import ElectrochemistryConfig
from operando.protocol import MODE_CV
from operando.store.rows import (
    CurrentStepRow,
    GittPulseRow,
    HalfCycleRow,
    InterruptionRow,
    Row,
)

_json = msgspec.json.Encoder()
CHUNK_ROWS = 4096
CHUNK_WAIT_S = 5.0  # wall time: a replay at 600x sends 60 rows a message, real time 1


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


def gitt_pulse_row(p: GittPulse) -> GittPulseRow:
    return GittPulseRow(
        p.t_start, p.tau_s, p.i_mA, p.ocv_after_V, _finite(p.d_cm2_s), _json.encode(p).decode()
    )


def interruption_row(x: Interruption) -> InterruptionRow:
    return InterruptionRow(
        x.t_start, x.duration_s, x.i_mA, x.r_ohm, _finite(x.d_cm2_s), _json.encode(x).decode()
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
        self.pulses = PulseTracker(cfg.gitt, rest_current_mA, cfg.cycling.active_mass_mg)
        self.interruptions = InterruptionTracker(
            cfg.gitt, rest_current_mA, cfg.cycling.active_mass_mg
        )
        self.put, self.publish = put, publish
        self.recording = True  # False while a restarted monitor replays what is recorded
        self.counts = {"half_cycles": 0, "current_steps": 0, "gitt_pulses": 0, "interruptions": 0}
        self.last_step: CurrentStep | None = None
        self._buffer: list[tuple[np.ndarray, ...]] = []  # rows not worked yet
        self._buffered = 0
        self._since = 0.0  # when the oldest buffered rows came

    def add(
        self,
        t: np.ndarray,
        ewe: np.ndarray,
        i_mA: np.ndarray,
        mode: np.ndarray,
        q: np.ndarray,
        soc: Any,
    ) -> None:
        """Fresh rows. They are worked in chunks (``CHUNK_ROWS`` rows, or what came in
        ``CHUNK_WAIT_S`` of wall time): numpy's cost is per call, and a potentiostat at real
        time sends one row a message. So a half-cycle or a step is recorded up to that late;
        the results do not depend on the chunks (tests/unit/analysis/test_cycling.py)."""
        if not self.enabled or not len(t):
            return
        if not self._buffer:
            self._since = time.monotonic()
        self._buffer.append((t, ewe, i_mA, mode, q, np.asarray(soc, dtype=np.float64)))
        self._buffered += len(t)
        if self._buffered >= CHUNK_ROWS:
            self.flush()
        else:
            self.flush_due()

    def flush_due(self) -> None:
        """Work the buffered rows if the oldest waited ``CHUNK_WAIT_S`` (the monitor asks each
        status tick too: the last rows of a finished file are not left waiting)."""
        if self._buffer and time.monotonic() - self._since >= CHUNK_WAIT_S:
            self.flush()

    def flush(self) -> None:
        """Work the buffered rows now."""
        if not self._buffer:
            return
        t, ewe, i_mA, mode, q, soc = (
            np.concatenate([part[k] for part in self._buffer]) for k in range(6)
        )
        self._buffer, self._buffered = [], 0
        cv = mode == MODE_CV
        if np.any(np.diff(t) < 0):  # the trackers read rows in time order
            order = np.argsort(t, kind="stable")
            t, ewe, i_mA, cv, q, soc = (a[order] for a in (t, ewe, i_mA, cv, q, soc))
        self._halves(self.halves.add(t, ewe, q, cv))
        self._steps(self.steps.add(t, ewe, i_mA, soc))
        runs = current_runs(i_mA, self.pulses.rest_current_mA, self.pulses.hold_fraction)
        self._pulses(self.pulses.add(t, ewe, i_mA, soc, runs))
        self._interruptions(self.interruptions.add(t, ewe, i_mA, soc, runs))

    def restart(self) -> None:
        """The potentiostat's series restarted: its counters may start again."""
        self._end("restart")

    def finish(self) -> None:
        """End of input: the half-cycle still running is recorded as incomplete."""
        self._end("finish")

    def _end(self, how: str) -> None:
        if self.enabled:
            self.flush()
            self._halves(getattr(self.halves, how)())
            self._steps(getattr(self.steps, how)())
            self._pulses(getattr(self.pulses, how)())
            self._interruptions(getattr(self.interruptions, how)())

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

    def _pulses(self, done: list[GittPulse]) -> None:
        for p in done:
            self.counts["gitt_pulses"] += 1
            if self.recording:
                self.put(gitt_pulse_row(p))

    def _interruptions(self, done: list[Interruption]) -> None:
        for x in done:
            self.counts["interruptions"] += 1
            if self.recording:
                self.put(interruption_row(x))

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
