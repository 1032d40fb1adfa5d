"""Cycling protocols (from TOML) and the controller that runs them on a cell.

A protocol is a list of steps, as on a potentiostat's technique sequence:

    [[drivers.potentiostat.protocol]]
    type = "cc"        # constant current; c_rate > 0 charges (or current_mA)
    c_rate = 0.5
    until_V = 4.2      # cut-off in the direction of the current
    [[drivers.potentiostat.protocol]]
    type = "cv"        # constant voltage until |I| falls below until_mA (or max_s)
    voltage_V = 4.2
    until_mA = 0.02
    [[drivers.potentiostat.protocol]]
    type = "rest"      # open circuit
    duration_s = 600
    [[drivers.potentiostat.protocol]]
    type = "gitt"      # current pulses separated by rests
    c_rate = 0.2
    pulse_s = 600
    rest_s = 1800
    pulses = 10                # (with rest_s = 10 and pulse_s = 300: ICI, current interruptions)
    [[drivers.potentiostat.protocol]]
    type = "loop"      # back to step to_step, repeat more times (cycle number + 1 each)
    to_step = 0
    repeat = 2

Step numbers (``Ns``) count from 0 in the order written. Commands from the monitor can hold the
cell at its present voltage (CV), pause it at open circuit, resume, jump to a step, or stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from operando.drivers.sim.cell import Cell

from operando.protocol import MODE_CC, MODE_CV, MODE_OCV


class _Step(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    max_s: float = math.inf


class CC(_Step, tag="cc", kw_only=True):
    c_rate: float | None = None
    current_mA: float | None = None
    until_V: float | None = None


class CV(_Step, tag="cv", kw_only=True):
    voltage_V: float
    until_mA: float = 0.0


class Rest(_Step, tag="rest", kw_only=True):
    duration_s: float


class GITT(_Step, tag="gitt", kw_only=True):
    c_rate: float | None = None
    current_mA: float | None = None
    pulse_s: float
    rest_s: float
    pulses: int
    until_V: float | None = None


class Loop(_Step, tag="loop", kw_only=True):
    to_step: int = 0
    repeat: int = 1


Step = CC | CV | Rest | GITT | Loop


class ProtocolConfigError(ValueError):
    pass


def parse_protocol(steps: list[dict[str, Any]], where: str = "protocol") -> list[Step]:
    try:
        parsed = msgspec.convert(steps, list[Step])
    except msgspec.ValidationError as e:
        raise ProtocolConfigError(f"{where}: {e}") from None
    for n, s in enumerate(parsed):
        if isinstance(s, CC | GITT) and (s.c_rate is None) == (s.current_mA is None):
            raise ProtocolConfigError(f"{where}[{n}]: give exactly one of c_rate or current_mA")
        if isinstance(s, Loop) and not 0 <= s.to_step < n:
            raise ProtocolConfigError(f"{where}[{n}]: to_step must name an earlier step")
    if not parsed:
        raise ProtocolConfigError(f"{where}: no steps")
    return parsed


@dataclass(slots=True)
class Sample:
    """One potentiostat reading (true values; the driver adds measurement noise)."""

    i_mA: float
    v: float
    mode: int
    step: int
    cycle: int


class Controller:
    """Runs a protocol on a cell one sample at a time, and obeys commands between samples."""

    def __init__(self, cell: Cell, steps: list[Step], *, end: Literal["rest", "stop"] = "rest"):
        self.cell = cell
        self.steps = steps
        self.end = end
        self.step = 0
        self.cycle = 0
        self.t_in_step = 0.0
        self.loops_done: dict[int, int] = {}
        self.override: tuple[str, float] | None = None  # ("hold", V) or ("pause", 0)
        self.finished = False
        self.last_i = 0.0
        self.last_v = cell.voltage(0.0)

    # -- commands ----------------------------------------------------------------------------
    def hold(self, voltage: float | None = None) -> float:
        v = self.last_v if voltage is None else voltage
        self.override = ("hold", v)
        return v

    def pause(self) -> None:
        self.override = ("pause", 0.0)

    def resume(self) -> None:
        self.override = None

    def jump(self, step: int) -> None:
        if not 0 <= step < len(self.steps):
            raise ValueError(f"step {step} out of range 0..{len(self.steps) - 1}")
        self.step, self.t_in_step, self.finished = step, 0.0, False

    def stop(self) -> None:
        self.finished = True

    # -- stepping ----------------------------------------------------------------------------
    def _current(self, s: CC | GITT) -> float:
        if s.current_mA is not None:
            return s.current_mA
        assert s.c_rate is not None  # one of the two: checked when the protocol is read
        return s.c_rate * self.cell.p.capacity_mAh

    def advance(self, dt: float) -> Sample:
        """Step the cell by ``dt`` s under the present step (or hold/pause override)."""
        cell, p = self.cell, self.cell.p
        if self.override is not None:
            kind, v = self.override
            if kind == "hold":
                i, volt = cell.step_voltage(v, dt)
                return self._sample(i, volt, MODE_CV)
            return self._sample(0.0, cell.step_current(0.0, dt), MODE_OCV)
        self._skip_loops()
        if self.finished:
            return self._sample(0.0, cell.step_current(0.0, dt), MODE_OCV)
        s = self.steps[self.step]
        self.t_in_step += dt
        mode = MODE_CC
        if isinstance(s, CC):
            i = self._current(s)
            v = cell.step_current(i, dt)
            limit = s.until_V if s.until_V is not None else (p.v_max if i > 0 else p.v_min)
            done = (v >= limit) if i > 0 else (v <= limit)
            done |= v >= p.v_max or v <= p.v_min
        elif isinstance(s, CV):
            mode = MODE_CV
            i, v = cell.step_voltage(s.voltage_V, dt)
            done = abs(i) <= s.until_mA
        elif isinstance(s, Rest):
            mode = MODE_OCV
            i, v = 0.0, cell.step_current(0.0, dt)
            done = self.t_in_step >= s.duration_s
        else:  # GITT: pulse k runs from k*period to k*period + pulse_s
            assert isinstance(s, GITT)  # loops are unrolled by _skip_loops
            period = s.pulse_s + s.rest_s
            on = (self.t_in_step - dt) % period < s.pulse_s
            i = self._current(s) if on else 0.0
            mode = MODE_CC if on else MODE_OCV
            v = cell.step_current(i, dt)
            hit = s.until_V is not None and on and ((v >= s.until_V) if i > 0 else (v <= s.until_V))
            done = hit or self.t_in_step >= s.pulses * period
        sample = self._sample(i, v, mode)
        if done or self.t_in_step >= s.max_s:
            self._next()
        return sample

    def _sample(self, i: float, v: float, mode: int) -> Sample:
        self.last_i, self.last_v = i, v
        return Sample(i, v, mode, self.step, self.cycle)

    def _next(self) -> None:
        self.step += 1
        self.t_in_step = 0.0
        self._skip_loops()

    def _skip_loops(self) -> None:
        while not self.finished:
            if self.step >= len(self.steps):
                self.finished = True
                self.step = len(self.steps) - 1
                return
            s = self.steps[self.step]
            if not isinstance(s, Loop):
                return
            done = self.loops_done.get(self.step, 0)
            if done < s.repeat:
                self.loops_done[self.step] = done + 1
                self.cycle += 1
                self.step, self.t_in_step = s.to_step, 0.0
            else:
                self.loops_done[self.step] = 0
                self.step += 1
