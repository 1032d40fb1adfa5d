"""Simulated potentiostat: runs a cycling protocol on a cell model and publishes its rows.

Rows (t, Ewe, I, Q, mode, step, cycle) are sampled every ``sample_interval_s`` of experiment
time and published in batches every ``publish_interval_s`` of wall time. Ewe and I carry
measurement noise; Q is the instrument's own charge counter (integral of the true current,
like EC-Lab's ``(Q-Qo)/mA.h``). Current is positive on charge.

Commands: ``hold`` (CV at the present or a given voltage), ``pause`` (open circuit),
``resume``, ``jump`` (to a step), ``stop`` (end the protocol, rest at open circuit).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import msgspec
import numpy as np
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.sim.cell import PRESETS, Cell
from operando.drivers.sim.cycling import Controller, parse_protocol

from operando.config import ConfigError, load_config
from operando.protocol import Command, PotentiostatBatch
from operando.transport import CommandHandler

DEFAULT_NAME = "potentiostat"

DEFAULT_PROTOCOL: list[dict[str, Any]] = [
    {"type": "cc", "c_rate": 0.5, "until_V": 4.2},
    {"type": "cv", "voltage_V": 4.2, "until_mA": 0.02, "max_s": 1800},
    {"type": "rest", "duration_s": 600},
    {"type": "cc", "c_rate": -0.5, "until_V": 3.0},
    {"type": "rest", "duration_s": 600},
    {"type": "loop", "to_step": 0, "repeat": 1},
]


class PotentiostatSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    driver: str = "sim-potentiostat"
    preset: str = "peo-nmc"
    protocol: list[dict[str, Any]] = msgspec.field(default_factory=lambda: DEFAULT_PROTOCOL)
    sample_interval_s: float = 1.0  # experiment seconds between rows
    publish_interval_s: float = 0.1  # wall seconds between batches
    initial_soc: float | None = None
    end: str = "rest"  # after the last step: rest at open circuit, or stop the series
    seed: int = 1


class SimPotentiostat(Driver):
    instrument = "potentiostat"

    def __init__(self, opts: DriverOptions, settings: PotentiostatSettings) -> None:
        super().__init__(opts)
        if settings.preset not in PRESETS:
            raise ConfigError(f"unknown cell preset {settings.preset!r}; have {sorted(PRESETS)}")
        self.settings = settings
        self.preset = PRESETS[settings.preset]
        self.cell = Cell(self.preset, settings.initial_soc)
        self.initial_soc = self.cell.state.soc
        steps = parse_protocol(settings.protocol, "drivers.potentiostat.protocol")
        self.controller = Controller(
            self.cell, steps, end="stop" if settings.end == "stop" else "rest"
        )
        self.rng = np.random.default_rng(settings.seed)
        self.q_mAh = 0.0
        self.t_last: float | None = None  # experiment time of the last row published

    def metadata(self) -> dict[str, Any]:
        p = self.preset
        return {
            "preset": p.name,
            "chemistry": p.chemistry,
            "cell": p.description,
            "capacity_mAh": p.capacity_mAh,
            "initial_soc": self.initial_soc,
            "sample_interval_s": self.settings.sample_interval_s,
            "current_sign": "positive on charge",
            "protocol": self.settings.protocol,
            "simulated": True,
        }

    def handlers(self) -> dict[str, CommandHandler]:
        return {
            **super().handlers(),
            "hold": self._hold,
            "pause": self._pause,
            "resume": self._resume,
            "jump": self._jump,
            "stop": self._stop_protocol,
        }

    async def _hold(self, cmd: Command) -> dict[str, Any]:
        v = cmd.args.get("voltage_V")
        return {"holding_V": self.controller.hold(None if v is None else float(v))}

    async def _pause(self, cmd: Command) -> dict[str, Any]:
        self.controller.pause()
        return {"paused": True}

    async def _resume(self, cmd: Command) -> dict[str, Any]:
        self.controller.resume()
        return {"step": self.controller.step}

    async def _jump(self, cmd: Command) -> dict[str, Any]:
        self.controller.jump(int(cmd.args["step"]))
        return {"step": self.controller.step}

    async def _stop_protocol(self, cmd: Command) -> dict[str, Any]:
        self.controller.stop()
        return {"stopped": True}

    def status(self) -> dict[str, Any]:
        c = self.controller
        return {
            **super().status(),
            "step": c.step,
            "cycle": c.cycle,
            "soc": self.cell.state.soc,
            "voltage_V": c.last_v,
            "current_mA": c.last_i,
            "override": c.override,
            "finished": c.finished,
        }

    def rows(self, t_from: float, n: int) -> dict[str, np.ndarray]:
        """The next ``n`` samples after experiment time ``t_from`` (s)."""
        dt = self.settings.sample_interval_s
        p, out = self.preset, np.empty((n, 6))
        q_before = self.q_mAh
        for k in range(n):
            s = self.controller.advance(dt)
            out[k] = (t_from + (k + 1) * dt, s.v, s.i_mA, s.mode, s.step, s.cycle)
        ewe = out[:, 1] + self.rng.normal(0.0, p.noise_V, n)
        i = out[:, 2]
        i_meas = i + self.rng.normal(0.0, 1.0, n) * (p.noise_rel_I * np.abs(i) + p.noise_abs_mA)
        q = q_before + np.cumsum(i * dt / 3600.0)  # the instrument integrates true current
        self.q_mAh = float(q[-1])
        return {
            "t": out[:, 0],
            "Ewe": ewe,
            "I": i_meas,
            "Q": q,
            "mode": out[:, 3].astype(np.int8),
            "step": out[:, 4].astype(np.int32),
            "cycle": out[:, 5].astype(np.int32),
        }

    def state(self) -> dict[str, Any]:
        c, cell = self.controller, self.cell.state
        return {
            "t_last": self.t_last,
            "q_mAh": self.q_mAh,
            "soc": cell.soc,
            "v1": cell.v1,
            "v2": cell.v2,
            "step": c.step,
            "cycle": c.cycle,
            "t_in_step": c.t_in_step,
            "loops_done": {str(k): v for k, v in c.loops_done.items()},
            "override": list(c.override) if c.override else None,
            "finished": c.finished,
            "last_i": c.last_i,
            "last_v": c.last_v,
            "initial_soc": self.initial_soc,
        }

    def restore(self, st: dict[str, Any]) -> None:
        c, cell = self.controller, self.cell.state
        self.t_last, self.q_mAh = st["t_last"], st["q_mAh"]
        cell.soc, cell.v1, cell.v2 = st["soc"], st["v1"], st["v2"]
        c.step, c.cycle, c.t_in_step, c.finished = (
            st["step"],
            st["cycle"],
            st["t_in_step"],
            st["finished"],
        )
        c.loops_done = {int(k): v for k, v in st["loops_done"].items()}
        c.override = tuple(st["override"]) if st["override"] else None  # type: ignore[assignment]
        c.last_i, c.last_v, self.initial_soc = st["last_i"], st["last_v"], st["initial_soc"]

    async def produce(self) -> None:
        """Publish rows up to the experiment clock; after a restart, first the rows missed
        while the driver was down (the cell kept cycling)."""
        assert self.pub is not None
        dt = self.settings.sample_interval_s
        t_last = self.t_last if self.t_last is not None else self.clock.now()
        max_rows = max(1, int(60.0 / dt))  # bound a batch (a long catch-up goes in pieces)
        while True:
            if self.clock.now() - t_last < 2 * max_rows * dt:  # not catching up: pace
                await asyncio.sleep(self.settings.publish_interval_s)
            n = min(int((self.clock.now() - t_last) / dt), max_rows)
            if n <= 0:
                continue
            rows = self.rows(t_last, n)
            t_last += n * dt
            await self.pub.send(PotentiostatBatch(source=self.opts.name), rows)
            self.t_last = t_last
            self.persist()
            if self.controller.finished and self.settings.end == "stop":
                return


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment TOML with a [drivers.SECTION] table")
    p.add_argument("--section", default="potentiostat", help="which [drivers.*] table to use")
    p.add_argument("--preset", help=f"cell preset ({', '.join(PRESETS)}); overrides the config")
    p.add_argument("--sample-interval", type=float, help="experiment seconds between rows")


def settings_from(config: str | None, section: str, cls: type[Any]) -> Any:
    raw: dict[str, Any] = {}
    if config:
        raw = dict(load_config(config).drivers.get(section, {}))
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{config}: drivers.{section}: {e}") from None


def from_args(a: argparse.Namespace, opts: DriverOptions) -> SimPotentiostat:
    s = settings_from(a.config, a.section, PotentiostatSettings)
    if a.preset:
        s = msgspec.structs.replace(s, preset=a.preset)
    if a.sample_interval:
        s = msgspec.structs.replace(s, sample_interval_s=a.sample_interval)
    return SimPotentiostat(opts, s)
