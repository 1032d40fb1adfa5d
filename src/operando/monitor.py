"""The monitor service: subscribe to the instruments, record, align, publish the run's state.

The only module that knows every other one. One asyncio process:
- one ``Subscriber`` per configured source feeds ``Ingest`` (record -> decode -> align);
- the state stream (a PUB socket) carries the monitor's status and "these tables changed"
  notices (``{"topic": "alignment", "spectrum_id": 12, ...}``), never the data: a dashboard
  reads the data from the run store (``store.follow``), so what it shows is what was recorded.
  Notices go out in batches and are dropped (never blocking ingest) for a dashboard too slow
  to keep up: state messages are numbered, so a dashboard sees what it missed and reads again;
- a command socket answers status queries and manual actions;
- a periodic task aligns spectra whose timeout passed, watches for silent sources and
  publishes status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from operando.alarms import Alarms
from operando.analysis_thread import AnalysisThread
from operando.config import Action, ExperimentConfig, SourceConfig
from operando.events import EventKind, EventLog
from operando.ingest import Ingest
from operando.orchestrate.orchestrator import Orchestrator
from operando.protocol import Command, StateUpdate, encode
from operando.refill import Refiller
from operando.restore import restore
from operando.sinks import finish_publishers, start_publishers
from operando.store.files import write_monitor_file
from operando.store.reader import Run
from operando.store.writer import RunStore, save_run_config
from operando.transport import (
    CommandClient,
    CommandError,
    CommandServer,
    Subscriber,
    bind,
    client_curve,
    configure,
    new_session,
)

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: ExperimentConfig, run_dir: str | Path | None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    name = cfg.run.name or f"{cfg.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    return Path(cfg.run.root) / name


class StatePublisher:
    """Batches status and table-changed notices and publishes them without ever blocking
    ingest."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, hwm: int = 2000) -> None:
        self.sock = ctx.socket(zmq.PUB)
        configure(self.sock, hwm=hwm)
        bind(self.sock, endpoint)
        self._sync = zmq.Socket.shadow(self.sock.underlying)
        self.session = new_session()
        self.seq = 0
        self.buffer: list[tuple[str, dict[str, Any]]] = []
        self.dropped = 0

    def __call__(self, topic: str, body: dict[str, Any]) -> None:
        self.buffer.append((topic, body))

    def flush(self) -> None:
        if not self.buffer:
            return
        updates, self.buffer = self.buffer, []
        header = StateUpdate(
            source="monitor",
            session=self.session,
            seq=self.seq,
            t_ns=time.time_ns(),
            topic="batch",
            body={"updates": [{"topic": t, **b} for t, b in updates]},
        )
        self.seq += 1
        try:
            self._sync.send_multipart(encode(header), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1  # a stalled dashboard; it sees the seq gap and reloads

    def close(self) -> None:
        self.sock.close(linger=0)


class Monitor:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = zmq.asyncio.Context()
        self.store = RunStore(self.run_dir)
        save_run_config(self.run_dir, cfg)
        self.state = StatePublisher(self.ctx, cfg.monitor.state_endpoint)
        # one event log for the run: store, state stream, and the services that react to it
        self.events = EventLog(self.store, self.state)
        self.alarms = Alarms(self.events.own)
        orch_cfg = cfg.orchestration
        spectrometers = [s for s in cfg.sources if s.role == "spectrometer"]
        curve = {
            s.name: client_curve(orch_cfg.client_secret, s.command_key)
            for s in cfg.sources
            if s.command_key
        }
        self.orchestrator = Orchestrator(
            orch_cfg,
            self.ctx,
            cfg.potentiostat,
            spectrometers[0] if spectrometers else None,
            self.events.own,
            curve,
            self.alarms,
            dose_budget_Gy=cfg.analysis.dose_budget_Gy,
            rest=cfg.analysis.rest,
            control_dose_fraction=cfg.analysis.damage.control_dose_fraction,
        )
        self.refiller = Refiller(self.ctx, cfg.sources, self.events.own, curve)
        self.ingest = Ingest(
            self.store,
            cfg.sources,
            cfg.alignment,
            self.state,
            cfg.analysis,
            self.run_dir,
            events=self.events,
            orchestrator=self.orchestrator,
            experiment=cfg.name,
            electrochemistry=cfg.electrochemistry,
        )
        if self.store.reopened:
            self._restore()
        self.events.listeners += [self.alarms.on_event, self.refiller.on_event]
        if self.ingest.dose is not None:
            self.ingest.dose.on_dose.append(self.orchestrator.on_dose)
        if self.ingest.analyzer is not None:
            self.ingest.analyzer.on_finding.append(self.orchestrator.on_finding)
        self.subscribers: list[Subscriber] = []
        self.commands = CommandServer(
            self.ctx,
            cfg.monitor.command_endpoint,
            "monitor",
            {
                "status": self._status,
                "ping": self._ping,
                "acquire": self._manual,
                "rixs_map": self._manual,
                "hold": self._manual,
                "resume": self._manual,
                "pause": self._manual,
                "move": self._manual,
                "pause_scans": self._manual,
                "resume_scans": self._manual,
                "acknowledge": self._acknowledge,
            },
        )
        self.commands.on_command = self._audit
        self._manual_count = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._silent: set[str] = set()
        self._rows_refused = 0  # how many the store has refused, as last alarmed
        self.stopping = asyncio.Event()

    def _restore(self) -> None:
        """The run was recorded before (a restarted monitor): continue it. What was recorded
        is derived again but not acted on (no trigger fires twice, no alarm is raised again:
        the recorded ones are restored)."""
        self.orchestrator.closed = True
        with Run(self.run_dir) as run:
            restore(self.ingest, run)
            self.orchestrator.resume_spots(run.spot_changes())
        for rec in self.store.unindexed:  # in the log, not yet indexed when it crashed
            self.ingest.process_record(rec)
        self.ingest.align_due()
        self.orchestrator.closed = False
        self.events.own(
            EventKind.MONITOR_RESTARTED,
            None,
            None,
            pid=os.getpid(),
            recovered=len(self.store.unindexed),
            torn_record=self.store.torn,
        )
        with Run(self.run_dir) as run:
            self.alarms.restore(run.alarm_events())

    async def _status(self, cmd: Command) -> dict[str, Any]:
        return self.status()

    async def _ping(self, cmd: Command) -> dict[str, Any]:
        return {"t_ns": time.time_ns()}

    async def _manual(self, cmd: Command) -> dict[str, Any]:
        """A manual action (operando trigger ...): through the orchestrator, audited."""
        orch = self.orchestrator
        self._manual_count += 1
        tid = str(cmd.args.get("trigger_id") or f"manual-{self._manual_count}")
        if cmd.action in ("acquire", "rixs_map", "pause"):
            action = Action(
                type=cmd.action,
                edge=str(cmd.args.get("edge", "")),  # type: ignore[arg-type]
                spot=str(cmd.args.get("spot", "")),
            )
            ack = await orch.act(action, tid)
        elif cmd.action == "resume_scans":
            ack = await orch.resume_scans(tid)
        else:
            client = orch.spec if cmd.action in ("move", "pause_scans") else orch.pstat
            ack = await orch.command(client, cmd.action, dict(cmd.args), tid)
        if ack is None:
            raise RuntimeError(f"{cmd.action}: the driver did not answer (see alarms)")
        if not ack.ok:
            raise RuntimeError(f"{cmd.action} refused: {ack.error}")
        return {"trigger_id": tid, **ack.result}

    async def _acknowledge(self, cmd: Command) -> dict[str, Any]:
        alarm = int(cmd.args["alarm"])
        if not self.alarms.acknowledge(alarm):
            raise KeyError(f"no open alarm {alarm}")
        return {"acknowledged": alarm}

    def _audit(self, cmd: Any, ack: Any) -> None:
        if cmd.action not in ("status", "ping"):
            self.events.own(
                EventKind.COMMAND,
                "monitor",
                None,
                id=cmd.id,
                action=cmd.action,
                args=cmd.args,
                ok=ack.ok,
                error=ack.error,
            )

    def status(self) -> dict[str, Any]:
        st = self.ingest.status()
        st["orchestration"] = self.orchestrator.status()
        st["refill"] = self.refiller.status()
        st["run_dir"] = str(self.run_dir)
        st["state_dropped"] = self.state.dropped
        return st

    def _handle(self, link: str, frames: list[zmq.Frame]) -> None:
        self.ingest.receive(link, frames)

    def _after_batch(self) -> None:
        """After each drained batch: align what became due, then publish state once."""
        self.ingest.align_due()
        self.state.flush()

    async def start(self) -> None:
        self._write_monitor_file()
        if self.ingest.analyzer is not None:  # off the loop: commands and sockets stay prompt
            self.ingest.analysis_thread = AnalysisThread(
                self.ingest.analyzer,
                asyncio.get_running_loop(),
                self.ingest.analysis_failed,
                max_bytes=int(self.cfg.analysis.live_backlog_MB * 2**20),
            )
        for src in self.cfg.sources:
            if src.clock == "ping" and src.command:
                await self._estimate_clock(src)
        for src in self.cfg.sources:
            sub = Subscriber(
                self.ctx,
                src.data,
                src.name,
                self._handle,
                hwm=src.rcvhwm,
                hold=lambda: self.store.over_backlog,
            )
            sub.after_batch = self._after_batch
            self.subscribers.append(sub)
            self._tasks.append(asyncio.create_task(sub.run(), name=f"subscribe-{src.name}"))
        self.commands.start()
        self._tasks.append(asyncio.create_task(self._tick(), name="monitor-tick"))
        self._tasks.append(asyncio.create_task(self.refiller.run(), name="refill"))
        log.info("monitor recording to %s", self.run_dir)

    async def _estimate_clock(self, src: SourceConfig) -> None:
        """NTP-style offset from pings over the command channel: median of 5 round trips."""
        client = CommandClient(self.ctx, src.command, "monitor", timeout_s=1.0, retries=1)
        offsets = []
        try:
            for _ in range(5):
                t0 = time.time_ns()
                ack = await client.request("ping")
                t1 = time.time_ns()
                offsets.append(((t0 + t1) / 2 - ack.result["t_ns"]) * 1e-9)
        except (CommandError, KeyError) as e:
            self.events.own(EventKind.CLOCK_ESTIMATE_FAILED, src.name, None, error=str(e))
            return
        finally:
            await client.close()
        offset = statistics.median(offsets)
        self.ingest.set_clock_offset(src.name, offset)  # recorded below: reprocess reads it
        self.events.own(
            EventKind.CLOCK_OFFSET,
            src.name,
            None,
            offset_s=offset,
            spread_s=max(offsets) - min(offsets),
        )

    def _write_monitor_file(self) -> None:
        info = {
            "pid": os.getpid(),
            "state_endpoint": self.cfg.monitor.state_endpoint,
            "command_endpoint": self.cfg.monitor.command_endpoint,
            "sources": {
                s.name: {"data": s.data, "command": s.command, "role": s.role}
                for s in self.cfg.sources
            },
        }
        write_monitor_file(self.run_dir, info)

    async def _tick(self) -> None:
        interval = self.cfg.monitor.status_interval_s
        while True:
            await asyncio.sleep(interval)
            self.ingest.align_due()
            self._watch_silence()
            if self.store.last_error:
                self.events.own(EventKind.STORE_ERROR, None, None, error=self.store.last_error)
            if self.store.rows_refused > self._rows_refused:  # a bug: a person should know
                self._rows_refused = self.store.rows_refused
                error = f"{self._rows_refused} row(s) refused, the last: {self.store.last_refused}"
                self.events.own(EventKind.STORE_ERROR, None, None, error=error)
            self.state("status", self.status())
            self.state.flush()

    def _watch_silence(self) -> None:
        limit = self.cfg.monitor.heartbeat_timeout_s
        for name, link in self.ingest.links.items():
            if not link.last_seen_wall:
                continue
            silent = time.monotonic() - link.last_seen_wall > limit
            if silent and name not in self._silent:
                self._silent.add(name)
                self.events.own(EventKind.DISCONNECTED, name, None, silent_s=limit)
            elif not silent and name in self._silent:
                self._silent.discard(name)
                self.events.own(EventKind.RECONNECTED, name, None)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.commands.close()
        await self.orchestrator.close()
        await self.refiller.close()
        self.ingest.finish()
        if self.ingest.analysis_thread is not None:
            await asyncio.to_thread(self.ingest.analysis_thread.close)
            for _ in range(3):  # what the analysis handed back to the loop, run it
                await asyncio.sleep(0)
        self.state.flush()
        for sub in self.subscribers:
            sub.close()
        self.state.close()
        await asyncio.to_thread(self.store.flush)
        self.store.close()
        self.ctx.destroy(linger=0)


async def run_monitor(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    duration_s: float | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> Path:
    """Run until SIGINT/SIGTERM (or ``duration_s``), then align what waits and close cleanly.

    ``on_start`` hears the run directory once the monitor records to it (not before: a run
    that another process records is refused when the store opens)."""
    run_dir = Path(run_dir)
    monitor = Monitor(cfg, run_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, monitor.stopping.set)
    await monitor.start()
    publishers = await start_publishers(cfg.publish, run_dir)
    if on_start is not None:
        on_start(run_dir)
    try:
        await asyncio.wait_for(monitor.stopping.wait(), duration_s)
    except TimeoutError:
        pass
    finally:
        await monitor.stop()
        await finish_publishers(publishers, cfg.publish.finish_s)
    return run_dir


async def command_monitor(
    endpoint: str, action: str, args: dict[str, Any] | None = None, timeout_s: float = 2.0
) -> dict[str, Any]:
    """One command to a running monitor; its result, or CommandError with its reason."""
    ctx = zmq.asyncio.Context()
    client = CommandClient(ctx, endpoint, "cli", timeout_s=timeout_s, retries=0)
    try:
        ack = await client.request(action, args or {})
        if not ack.ok:
            raise CommandError(f"{action}: {ack.error}")
        return ack.result
    finally:
        await client.close()
        ctx.destroy(linger=0)


async def query_status(endpoint: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """Ask a running monitor (its command endpoint) for its status."""
    return await command_monitor(endpoint, "status", None, timeout_s)
