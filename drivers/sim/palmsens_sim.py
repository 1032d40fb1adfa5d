"""A PalmSens MethodSCRIPT instrument on a TCP port, driving the simulated cell.

It answers as ``drivers/methodscript.py`` describes the device: ``t`` (version), ``e`` + script
+ empty line (run it), ``Z`` (abort). It understands the commands our scripts use (``var``,
``set_*``, ``cell_on/off``, ``meas_loop_cp/ca/ocp``, ``pck_*``, ``if p > X`` / ``if p < X`` /
``breakloop`` / ``endif``, ``endloop``, ``on_finished:``); any other command is a script error
``!0004: Line L, Col 1``, as a real device refuses what it does not know. Time runs ``speed``
times faster than the wall clock; one data package per ``t_interval``.

Run: ``operando instrument palmsens-sim --listen 127.0.0.1:4001 [--cell peo-nmc] [--speed 60]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field

from operando.drivers.methodscript import encode_value
from operando.drivers.sim.cell import PRESETS, Cell

log = logging.getLogger(__name__)

VERSION = ["tsim4.1 operando MethodSCRIPT simulator", "R*"]
_KNOWN = ("var", "set_", "cell_on", "cell_off", "pck_", "endif", "endloop", "breakloop")
_SI = {"": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12, "k": 1e3}
_LOOP = re.compile(r"meas_loop_(cp|ca|ocp)\s+(.*)$")
_IF = re.compile(r"if\s+p\s*([<>])\s*(\S+)$")


class ScriptError(ValueError):
    def __init__(self, code: int, line: int) -> None:
        super().__init__(f"!{code:04X}: Line {line}, Col 1")


def si_number(text: str, line: int) -> float:
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)([a-zA-Z]?)", text)
    if m is None or m.group(2) not in _SI:
        raise ScriptError(0x0005, line)  # an argument that is not a number
    return float(m.group(1)) * _SI[m.group(2)]


@dataclass
class Loop:
    technique: str  # cp | ca | ocp
    setpoint: float  # A (cp) or V (ca)
    interval_s: float
    duration_s: float
    limits: list[tuple[str, float]] = field(default_factory=list)  # (">" or "<", V)


def parse_script(lines: list[str]) -> list[Loop]:
    loops: list[Loop] = []
    current: Loop | None = None
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text == "on_finished:":
            continue
        if m := _LOOP.match(text):
            args = m.group(2).split()
            need = 3 if m.group(1) == "cp" or m.group(1) == "ca" else 2
            values = args[-need:]
            if len(args) < need + 1:
                raise ScriptError(0x0004, n)
            nums = [si_number(v, n) for v in values]
            if m.group(1) == "ocp":
                current = Loop("ocp", 0.0, nums[0], nums[1])
            else:
                current = Loop(m.group(1), nums[0], nums[1], nums[2])
            loops.append(current)
        elif m := _IF.match(text):
            if current is None:
                raise ScriptError(0x0004, n)
            current.limits.append((m.group(1), si_number(m.group(2), n)))
        elif not text.startswith(_KNOWN):
            raise ScriptError(0x0004, n)  # unknown command
    return loops


class Instrument:
    def __init__(self, cell: Cell, speed: float) -> None:
        self.cell, self.speed = cell, speed
        self.abort = asyncio.Event()
        self.busy = asyncio.Lock()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                cmd = line.decode("ascii", errors="replace").rstrip("\r\n")
                if cmd == "t":
                    writer.write(("\n".join(VERSION) + "\n").encode())
                elif cmd == "Z":
                    self.abort.set()
                elif cmd == "e":
                    script = []
                    while (more := await reader.readline()) and more.strip():
                        script.append(more.decode("ascii", errors="replace"))
                    writer.write(b"e\n")
                    await self._run(script, writer)
                elif cmd:
                    writer.write(b"!0001\n")  # not a command the device knows
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _run(self, script: list[str], writer: asyncio.StreamWriter) -> None:
        async with self.busy:
            self.abort.clear()
            try:
                loops = parse_script(script)
            except ScriptError as e:
                writer.write(f"{e}\n".encode())
                return
            for k, loop in enumerate(loops):
                writer.write(f"M{k:04X}\n".encode())
                await self._loop(loop, writer)
                writer.write(b"*\n")
                if self.abort.is_set():
                    break
            writer.write(b"\n")

    async def _loop(self, loop: Loop, writer: asyncio.StreamWriter) -> None:
        n = max(1, round(loop.duration_s / loop.interval_s))
        for _ in range(n):
            if self.abort.is_set():
                return
            await asyncio.sleep(loop.interval_s / self.speed)
            if loop.technique == "cp":
                i_ma = loop.setpoint * 1e3
                v = self.cell.step_current(i_ma, loop.interval_s)
            elif loop.technique == "ca":
                i_ma, v = self.cell.step_voltage(loop.setpoint, loop.interval_s)
            else:
                i_ma, v = 0.0, self.cell.step_current(0.0, loop.interval_s)
            package = f"Pab{encode_value(v)}"
            if loop.technique != "ocp":
                package += f";ba{encode_value(i_ma * 1e-3)},10"
            writer.write((package + "\n").encode())
            await writer.drain()
            if any((op == ">" and v > lim) or (op == "<" and v < lim) for op, lim in loop.limits):
                return


async def run_simulator(host: str, port: int, cell_preset: str, speed: float, soc: float) -> None:
    preset = PRESETS[cell_preset]
    instrument = Instrument(Cell(preset, soc), speed)
    server = await asyncio.start_server(instrument.serve, host, port)
    log.warning("MethodSCRIPT simulator on %s:%d (%s cell, %gx)", host, port, cell_preset, speed)
    async with server:
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever()
