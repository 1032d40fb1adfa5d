"""``operando driver palmsens``: a PalmSens instrument (EmStat4, Nexus, EmStat Pico) that runs
MethodSCRIPT, over a serial port or TCP, as a potentiostat source.

The driver uploads one script per protocol step (constant current with potential limits, a
potential hold, open circuit), reads the instrument's answers line by line and publishes the
data packages as potentiostat rows. A script error (``!XXXX``) stops the driver with the code
and the script line it names; a line that is not MethodSCRIPT is logged and counted, and the
run goes on. The protocol is in ``drivers/methodscript.py``; ``palmsens_sim`` is an instrument
that answers the same way, for tests and demos without hardware.

    operando driver palmsens --port /dev/ttyUSB0 --step cc:0.2:3600:3.0:4.2 --step ocv:600
    operando driver palmsens --tcp 127.0.0.1:4001 --step cv:4.2:1800 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from operando.drivers.base import Driver, DriverOptions
from operando.drivers.methodscript import (
    CURRENT,
    POTENTIALS,
    MethodScriptError,
    Package,
    constant_current_script,
    open_circuit_script,
    parse_error,
    parse_package,
    potential_hold_script,
)

from operando.argtypes import positive
from operando.protocol import MAX_MAGNITUDE, MODE_CC, MODE_CV, MODE_OCV, PotentiostatBatch

log = logging.getLogger(__name__)

DEFAULT_NAME = "potentiostat"
BATCH_ROWS = 20
SERIAL_BAUD = 230400  # EmStat4 / Pico default


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # cc | cv | ocv
    duration_s: float
    current_mA: float = 0.0
    potential_V: float = 0.0
    v_min: float = -10.0
    v_max: float = 10.0

    @property
    def mode(self) -> int:
        return {"cc": MODE_CC, "cv": MODE_CV, "ocv": MODE_OCV}[self.kind]

    def script(self, interval_s: float) -> list[str]:
        if self.kind == "cc":
            return constant_current_script(
                self.current_mA * 1e-3, interval_s, self.duration_s, self.v_min, self.v_max
            )
        if self.kind == "cv":
            return potential_hold_script(self.potential_V, interval_s, self.duration_s)
        return open_circuit_script(interval_s, self.duration_s)


def parse_step(text: str) -> Step:
    """``cc:I_mA:SECONDS:VMIN:VMAX``, ``cv:VOLTS:SECONDS`` or ``ocv:SECONDS``."""
    kind, *args = text.split(":")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        nums = []
    if kind == "cc" and len(nums) == 4:
        return Step("cc", nums[1], current_mA=nums[0], v_min=nums[2], v_max=nums[3])
    if kind == "cv" and len(nums) == 2:
        return Step("cv", nums[1], potential_V=nums[0])
    if kind == "ocv" and len(nums) == 1:
        return Step("ocv", nums[0])
    raise MethodScriptError(
        f"--step {text!r}: expected cc:I_mA:SECONDS:VMIN:VMAX, cv:VOLTS:SECONDS or ocv:SECONDS"
    )


class PalmSens(Driver):
    instrument = "potentiostat"

    def __init__(
        self,
        opts: DriverOptions,
        *,
        tcp: str | None,
        port: str | None,
        steps: list[Step],
        interval_s: float,
        repeat: int,
        capacity_mAh: float | None,
    ) -> None:
        super().__init__(opts)
        if (tcp is None) == (port is None):
            raise MethodScriptError("give the instrument's --port (serial) or --tcp HOST:PORT")
        if not steps:
            raise MethodScriptError("no --step given: what should the instrument do?")
        self.tcp, self.port, self.steps = tcp, port, steps
        self.interval_s, self.repeat, self.capacity_mAh = interval_s, repeat, capacity_mAh
        self.version = ""
        self.counts = {"packages": 0, "bad_lines": 0, "scripts": 0}

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "instrument": "PalmSens MethodSCRIPT",
            "connection": self.tcp or self.port,
            "steps": [s.kind for s in self.steps],
        }
        if self.capacity_mAh:
            meta["capacity_mAh"] = self.capacity_mAh
        return meta

    def status(self) -> dict[str, Any]:
        return {**super().status(), **self.counts, "version": self.version}

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.tcp is not None:
            host, _, port = self.tcp.rpartition(":")
            return await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
        import serial_asyncio_fast  # pyserial-asyncio-fast: the serial port as asyncio streams

        return await serial_asyncio_fast.open_serial_connection(url=self.port, baudrate=SERIAL_BAUD)

    async def produce(self) -> None:
        reader, writer = await self._open()
        try:
            writer.write(b"t\n")
            await writer.drain()
            lines = []
            while not (line := await self._line(reader)).endswith("*"):
                lines.append(line)
            self.version = " ".join([*lines, line.rstrip("*")]).strip()
            for cycle in range(self.repeat):
                for number, step in enumerate(self.steps):
                    await self._run_step(reader, writer, step, number, cycle)
        finally:
            writer.close()

    async def _line(self, reader: asyncio.StreamReader) -> str:
        raw = await reader.readline()
        if not raw:
            raise ConnectionError("the instrument closed the connection")
        return raw.decode("ascii", errors="replace").rstrip("\r\n")

    async def _run_step(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        step: Step,
        number: int,
        cycle: int,
    ) -> None:
        script = step.script(self.interval_s)
        writer.write(("\n".join(script) + "\n").encode("ascii"))
        await writer.drain()
        self.counts["scripts"] += 1
        rows: list[tuple[float, float, float]] = []
        loop_start, k = time.time(), 0
        while True:
            line = await self._line(reader)
            if line == "":
                break  # the script has finished
            if line.startswith("!"):
                where = parse_error(line)
                raise MethodScriptError(f"{where}; the script was:\n" + "\n".join(script))
            if line.startswith("M"):
                loop_start, k = time.time(), 0
            elif line.startswith("P"):
                try:
                    package = parse_package(line)
                    k += 1  # a package read is a sampling interval, whatever its values
                    v, i_mA = potential_and_current(package, line)
                except MethodScriptError as e:
                    await self._bad_line("MethodSCRIPT data package", str(e))
                    continue
                rows.append((loop_start + k * self.interval_s, v, i_mA))
                self.counts["packages"] += 1
                if len(rows) >= BATCH_ROWS:
                    await self._publish(rows, step, number, cycle)
                    rows = []
            elif line not in ("e", "*"):
                await self._bad_line("instrument line", f"not a MethodSCRIPT line: {line[:60]!r}")
        await self._publish(rows, step, number, cycle)

    async def _bad_line(self, what: str, why: str) -> None:
        """A line the driver cannot read: counted, logged and refused to the run."""
        self.counts["bad_lines"] += 1
        log.warning("%s: %s", what, why)
        await self.refuse(what, why)

    async def _publish(
        self, rows: list[tuple[float, float, float]], step: Step, number: int, cycle: int
    ) -> None:
        if not rows:
            return
        assert self.pub is not None
        t, v, i = (np.array(c) for c in zip(*rows, strict=True))
        n = len(t)
        await self.pub.send(
            PotentiostatBatch(source=self.opts.name),
            {
                "t": t,
                "Ewe": v,
                "I": i,
                "mode": np.full(n, step.mode, np.int8),
                "step": np.full(n, number, np.int32),
                "cycle": np.full(n, cycle, np.int32),
            },
        )


def potential_and_current(package: Package, line: str) -> tuple[float, float]:
    """A data package's potential (V) and current (mA, 0 without one). A value the monitor
    would refuse (MethodSCRIPT encodes up to ~1e26) is refused here with its package: sent,
    it would make the whole batch of rows malformed."""
    v = next((package.values[p] for p in POTENTIALS if p in package.values), None)
    if v is None:
        raise MethodScriptError(f"data package without a potential: {line[:60]!r}")
    i_mA = package.values.get(CURRENT, 0.0) * 1e3
    for name, x in (("potential", v), ("current (mA)", i_mA)):
        if not abs(x) < MAX_MAGNITUDE:
            raise MethodScriptError(f"data package {line[:60]!r}: {name} {x:g} is not measured")
    return v, i_mA


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the instrument, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", help="HOST:PORT of an instrument (or simulator) on the network")
    p.add_argument(
        "--step",
        action="append",
        default=[],
        help="cc:I_mA:SECONDS:VMIN:VMAX | cv:VOLTS:SECONDS | ocv:SECONDS (repeat, in order)",
    )
    p.add_argument("--interval", type=positive, default=1.0, help="seconds between data packages")
    p.add_argument("--repeat", type=int, default=1, help="run the steps this many times")
    p.add_argument("--capacity", type=positive, help="cell capacity in mAh (for the SOC)")


def from_args(a: argparse.Namespace, opts: DriverOptions) -> PalmSens:
    return PalmSens(
        opts,
        tcp=a.tcp,
        port=a.port,
        steps=[parse_step(s) for s in a.step],
        interval_s=a.interval,
        repeat=a.repeat,
        capacity_mAh=a.capacity,
    )
