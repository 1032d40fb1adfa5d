"""``operando demo``: simulated instruments + monitor (+ dashboard), supervised, in one command.

Every component is its own process, started exactly as a user would start it by hand
(``operando driver ...``, ``operando monitor ...``), on free loopback ports. The supervisor
restarts a driver that dies (the simulated cell resumes from its state file, as a real cell
keeps cycling while its driver restarts) and shuts everything down in order on Ctrl-C or at
``--duration``: drivers first (they end their series), then the monitor (it aligns what is
still waiting and commits), leaving a complete run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from operando.config import ExperimentConfig, load_config, preset_path
from operando.store.files import DEMO_FILE, LOGS_DIR, REFERENCES_DIR

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
MAX_RESTARTS = 5  # within CRASH_WINDOW_S: more is a crash loop, not a hiccup
CRASH_WINDOW_S = 60.0


def free_ports(n: int) -> list[int]:
    """Ports the OS says are free on 127.0.0.1 now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def localize(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment on fresh loopback ports (so demos and tests never collide)."""
    ports = iter(free_ports(2 + 2 * len(cfg.sources)))

    def ep() -> str:
        return f"tcp://127.0.0.1:{next(ports)}"

    sources = [msgspec.structs.replace(s, data=ep(), command=ep()) for s in cfg.sources]
    monitor = msgspec.structs.replace(cfg.monitor, state_endpoint=ep(), command_endpoint=ep())
    return msgspec.structs.replace(cfg, sources=sources, monitor=monitor)


def with_simulator_references(cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """The simulated spectrometer's reference spectra, exported into the run for the analysis
    (the monitor reads files, as it would a beamline's measured references)."""
    from operando.drivers.sim.spectra import EDGES, export_references

    refs = dict(cfg.analysis.references)
    folder = run_dir / REFERENCES_DIR
    folder.mkdir(exist_ok=True)
    for edge in EDGES:
        if edge not in refs:
            refs[edge] = str(export_references(edge, folder / f"{edge}.csv").resolve())
    return msgspec.structs.replace(
        cfg, analysis=msgspec.structs.replace(cfg.analysis, references=refs)
    )


@dataclass
class Child:
    """One supervised process: its command line, log file and restart policy."""

    name: str
    argv: list[str]
    log_path: Path
    restart: bool = True
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: list[float] = field(default_factory=list)

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # Own session: a terminal's Ctrl-C reaches only the demo, which then stops the
            # children in order; the parent-death signal reaps them if the demo itself dies.
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        finally:
            logf.close()
        self.started.append(time.monotonic())

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        p = self.proc
        if p is None or p.returncode is not None:
            return None if p is None else p.returncode
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(p.wait(), timeout)
        except TimeoutError:
            log.error("%s did not stop within %.0f s: killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            return await p.wait()


def _terminate_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the demo process dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: children are still stopped by the demo on any orderly exit


def cli_command(*args: str) -> list[str]:
    """The command line of ``operando ARGS`` run by this Python (a venv's, in a subprocess)."""
    return [sys.executable, "-m", "operando.cli", *args]


class Demo:
    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        *,
        speed: float,
        with_dashboard: bool = False,
        dashboard_port: int | None = None,
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = with_simulator_references(localize(cfg), run_dir)
        self.run_dir = run_dir
        self.speed = speed
        self.t0_ns = time.time_ns()
        self.config_path = run_dir / "demo-config.json"
        self.config_path.write_bytes(msgspec.json.format(msgspec.json.encode(self.cfg)))
        logs = run_dir / LOGS_DIR
        self.monitor = Child(
            "monitor",
            cli_command("monitor", "--config", str(self.config_path), "--run-dir", str(run_dir)),
            logs / "monitor.log",
            restart=True,
        )
        self.drivers = [
            self._driver_child(src.name, logs)
            for src in self.cfg.sources
            if src.name in self.cfg.drivers
        ]
        self.dashboard: Child | None = None
        self.dashboard_url = ""
        if with_dashboard:
            port = dashboard_port or free_ports(1)[0]
            self.dashboard_url = f"http://127.0.0.1:{port}/"
            self.dashboard = Child(
                "dashboard",
                cli_command(
                    "dashboard",
                    "--monitor",
                    self.cfg.monitor.state_endpoint,
                    "--run-dir",
                    str(run_dir),
                    "--port",
                    str(port),
                    "--command",
                    self.cfg.monitor.command_endpoint,
                ),
                logs / "dashboard.log",
            )
        self.stopping = asyncio.Event()
        self.events: list[str] = []  # restarts, for the closing summary
        self.failures: list[str] = []

    def _driver_child(self, name: str, logs: Path) -> Child:
        src = self.cfg.source(name)
        settings: dict[str, Any] = self.cfg.drivers[name]
        driver = str(settings.get("driver", ""))
        argv = cli_command(
            "driver",
            driver,
            "--config",
            str(self.config_path),
            "--section",
            name,
            "--name",
            name,
            "--data",
            src.data,
            "--command",
            src.command,
            "--speed",
            str(self.speed),
            "--t0-ns",
            str(self.t0_ns),
            "--state-file",
            str(self.run_dir / "sim-state" / f"{name}.json"),
            "--experiment",
            self.cfg.name,
        )
        if driver == "sim-spectrometer":
            pstat = self.cfg.potentiostat
            if pstat is not None:
                argv += ["--cell-data", pstat.data]
        return Child(name, argv, logs / f"{name}.log")

    @property
    def children(self) -> list[Child]:
        extra = [self.dashboard] if self.dashboard else []
        return [self.monitor, *self.drivers, *extra]

    async def start(self) -> None:
        (self.run_dir / "sim-state").mkdir(exist_ok=True)
        await self.monitor.start()
        await self._wait_for_monitor()
        for d in self.drivers:
            await d.start()
        if self.dashboard is not None:
            await self.dashboard.start()
        self._write_pids()

    def _write_pids(self) -> None:
        """demo.json: who is running (for operators, and for fault-injection tests)."""
        info = {
            "pids": {c.name: c.proc.pid for c in self.children if c.proc is not None},
            "monitor": {
                "state": self.cfg.monitor.state_endpoint,
                "command": self.cfg.monitor.command_endpoint,
            },
            "dashboard": self.dashboard_url,
            "speed": self.speed,
            "t0_ns": self.t0_ns,
        }
        (self.run_dir / DEMO_FILE).write_text(json.dumps(info, indent=2))

    async def _wait_for_monitor(self, timeout: float = 30.0) -> None:
        from operando.monitor import query_status
        from operando.transport import CommandError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitor.proc is not None and self.monitor.proc.returncode is not None:
                raise RuntimeError(
                    f"monitor exited with {self.monitor.proc.returncode}; see "
                    f"{self.monitor.log_path}"
                )
            with contextlib.suppress(CommandError):
                await query_status(self.cfg.monitor.command_endpoint, 0.5)
                return
        raise RuntimeError(
            f"monitor did not answer within {timeout} s; see {self.monitor.log_path}"
        )

    async def supervise(self) -> None:
        """Restart children that die while the demo runs; give up on a crash loop."""
        while not self.stopping.is_set():
            for c in self.children:
                p = c.proc
                if p is None or p.returncode is None or not c.restart:
                    continue
                recent = [t for t in c.started if t > time.monotonic() - CRASH_WINDOW_S]
                if len(recent) > MAX_RESTARTS:
                    msg = (
                        f"{c.name} exited {len(recent)} times within {CRASH_WINDOW_S:.0f} s "
                        f"(last code {p.returncode}): giving up; see {c.log_path}"
                    )
                    log.error(msg)
                    self.failures.append(msg)
                    self.stopping.set()
                    return
                c.restarts += 1
                msg = f"{c.name} exited with {p.returncode}: restarting ({c.restarts})"
                log.warning(msg)
                self.events.append(msg)
                await c.start()
                self._write_pids()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.2)

    async def stop(self) -> dict[str, int | None]:
        self.stopping.set()
        codes: dict[str, int | None] = {}
        if self.dashboard is not None:
            codes["dashboard"] = await self.dashboard.stop()
        results = await asyncio.gather(*(d.stop() for d in self.drivers))
        codes.update({d.name: rc for d, rc in zip(self.drivers, results, strict=True)})
        codes["monitor"] = await self.monitor.stop(60.0)
        return codes


async def run_demo(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    speed: float,
    duration: float | None,
    headless: bool,
    with_dashboard: bool,
    dashboard_port: int | None = None,
) -> int:
    demo = Demo(
        cfg, run_dir, speed=speed, with_dashboard=with_dashboard, dashboard_port=dashboard_port
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, demo.stopping.set)
    await demo.start()
    print(f"operando demo: {cfg.name} at {speed:g}x, recording to {run_dir}", flush=True)
    if demo.dashboard_url:
        print(f"dashboard: {demo.dashboard_url}", flush=True)
    supervisor = asyncio.create_task(demo.supervise())
    progress = None if headless else asyncio.create_task(_progress(demo))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(demo.stopping.wait(), duration)
    codes = await demo.stop()
    for task in (supervisor, progress):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    bad = {k: v for k, v in codes.items() if v not in (0, None, -signal.SIGTERM)}
    if progress is not None:
        print()  # below the live table
    print(f"operando demo: stopped; run directory {run_dir}", flush=True)
    for line in demo.events:
        print(f"operando demo: {line}", flush=True)
    if bad or demo.failures:
        for line in demo.failures:
            print(f"operando demo: {line}", file=sys.stderr)
        if bad:
            print(f"operando demo: components exited abnormally: {bad}", file=sys.stderr)
        return 1
    return 0


async def _progress(demo: Demo) -> None:
    """A live line per second in the terminal: spectra, cell, gaps."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from operando.monitor import query_status
    from operando.transport import CommandError

    console = Console()
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            await asyncio.sleep(1.0)
            try:
                st = await query_status(demo.cfg.monitor.command_endpoint, 1.0)
            except CommandError:
                continue
            table = Table(title=f"operando demo - {demo.cfg.name}", expand=False)
            for col in ("source", "messages", "gaps", "malformed", "restarts"):
                table.add_column(col)
            for name, s in st["sources"].items():
                table.add_row(
                    name,
                    str(s["messages"]),
                    str(s["gaps"]),
                    str(s["malformed"]),
                    str(s["restarts"]),
                )
            sp, cell = st["spectra"], st.get("cell") or {}
            ewe, soc = cell.get("Ewe_V"), cell.get("soc")
            valence = "   ".join(
                f"{k} {v['valence']:.3f}±{v['valence_unc']:.3f} ({v['quality']})"
                for k, v in sorted((st.get("valence") or {}).items())
            )
            alarms = (st.get("orchestration") or {}).get("alarms") or []
            said = [f"ALARM #{a['id']} [{a['category']}] {a['message']}" for a in alarms[-3:]]
            table.caption = "\n".join(
                [
                    f"spectra {sp['total']} ({sp['aligned']} aligned, {sp['partial']} partial, "
                    f"{sp['pending']} waiting)",
                    f"Ewe {'-' if ewe is None else f'{ewe:.3f} V'}   "
                    f"SOC {'-' if soc is None else f'{soc:.3f}'}",
                    f"valence {valence or '- (no fit yet)'}",
                    *(said or ["no open alarms"]),
                    f"run {demo.run_dir}",
                ]
            )
            live.update(table)


def demo_config(preset: str) -> ExperimentConfig:
    return load_config(preset_path(preset))
