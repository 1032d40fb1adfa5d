"""The orchestrator: turns trigger firings, dose and damage into commands to the drivers.

It lives in the monitor. Potentiostat rows feed the trigger engine; a firing becomes an
action: acquire a scan (tagged with the trigger id), a RIXS map with the cell held at its
present voltage (hold, map, resume when the map's last row arrives), or a pause. Which spot
the beam is on is the spot policy's (``orchestrate.spots``): a fresh spot before the next
scan would pass the dose budget, a control scan to confirm a damage suspicion, a spent spot
never used again. Doses arrive as scans do, each naming the spot the beam was on: scans
still coming from a spent spot, beyond the one in flight when the move was sent, mean the
move did not take, and it is sent again. Every command and ack is recorded (audit);
a command that is refused or never acked raises an ``alarm`` event that stays until
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np
import zmq.asyncio

from operando.alarms import Alarms
from operando.analysis.damage import DamageSuspicion, DamageVerdict
from operando.analysis.rest import RestCriterion
from operando.config import Action, OrchestrationConfig, SourceConfig
from operando.events import EventKind, Recorder
from operando.orchestrate.spots import SpotPolicy
from operando.orchestrate.triggers import Firing, TriggerEngine, firing_detail
from operando.protocol import Ack, Message, PotentiostatBatch, RIXSRows
from operando.transport import CommandClient, CommandError

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(
        self,
        cfg: OrchestrationConfig,
        ctx: zmq.asyncio.Context,
        potentiostat: SourceConfig | None,
        spectrometer: SourceConfig | None,
        event: Recorder,
        curve: dict[str, dict[str, bytes]] | None = None,
        alarms: Alarms | None = None,
        *,
        dose_budget_Gy: float = 0.0,
        rest: RestCriterion | None = None,
        control_dose_fraction: float = 0.5,
    ) -> None:
        """``dose_budget_Gy``: per spot, the run's one budget (``[analysis]``; 0: none);
        ``rest``: the run's rest criterion, for ``rest_time`` triggers;
        ``control_dose_fraction``: the damage tests' own (``[analysis.damage]``)."""
        self.cfg = cfg
        self.event = event
        self.engine = TriggerEngine(list(cfg.triggers), rest)
        curve = curve or {}

        def client(src: SourceConfig | None) -> CommandClient | None:
            if src is None or not src.command:
                return None
            return CommandClient(
                ctx,
                src.command,
                "monitor",
                timeout_s=cfg.command_timeout_s,
                retries=cfg.retries,
                curve=curve.get(src.name),
            )

        self.pstat, self.spec = client(potentiostat), client(spectrometer)
        self.alarms = alarms or Alarms(event)
        self.policy = SpotPolicy(
            list(cfg.spots),
            dose_budget_Gy=dose_budget_Gy,
            move=lambda spot: self._move(),
            acquire=self._confirm_scan,
            event=event,
            alarm=lambda category, message, key: self.alarms.raise_(category, message, key),
            rotate_on_damage=cfg.rotate_on_damage,
            confirm_damage=cfg.confirm_damage,
            confirmations_per_hour=cfg.confirmations_per_hour,
            control_dose_fraction=control_dose_fraction,
            pause=self._pause_scans if cfg.when_spots_run_out == "pause" else None,
        )
        self.strays = 0  # scans from a spent spot since the last move was sent
        self.moving: asyncio.Task[Ack | None] | None = None
        self.holds: dict[str, str] = {}  # map trigger id -> map id being taken while held
        self.tasks: set[asyncio.Task[Any]] = set()
        self.fired = 0
        # closed with the monitor: what the analysis says while it drains moves nothing
        self.closed = False
        # a replayed run's instruments are not ours to command: from its first replayed
        # series on, commands are recorded as what would have been sent, never sent
        self.dry_run_from: str | None = None

    # -- inputs (called synchronously from ingest) ----------------------------------------------
    def on_message(
        self, link: str, msg: Message, soc: np.ndarray | None, q: np.ndarray | None
    ) -> None:
        if self.closed:
            return
        h = msg.header
        if isinstance(h, PotentiostatBatch):
            a = msg.arrays
            rows = {
                "t": a["t"],
                "Ewe": a["Ewe"],
                "I": a["I"],
                "mode": a["mode"],
                "cycle": a["cycle"],
                "soc": soc,
                "q": q,
            }
            for firing in self.engine.feed(rows):
                self._fire(firing)
        elif (
            isinstance(h, RIXSRows)
            and h.trigger_id in self.holds
            and h.row_offset + len(msg.arrays["excitation"]) >= h.rows_total
        ):
            self.holds.pop(h.trigger_id)
            self._spawn(self.command(self.pstat, "resume", {}, h.trigger_id))

    def on_replay(self, link: str, replayed_from: str) -> None:
        """A source replays a recorded run: orchestration becomes a dry run, for good."""
        if self.dry_run_from is None:
            self.dry_run_from = replayed_from
            self.event(
                EventKind.DRY_RUN,
                link,
                None,
                replayed_from=replayed_from,
                reason="a replayed run: commands are recorded, never sent to an instrument",
            )

    @property
    def spot(self) -> str | None:
        return self.policy.spot

    def on_spots(self, spots: list[str]) -> None:
        self.policy.on_spots(spots)

    def resume_spots(self, changes: list[tuple[str | None, str, bool]]) -> None:
        """A restarted monitor continues where the run was (before, it began again at the
        first spot, and the beam's spot, not the one it tracked, took dose past its budget
        unchecked)."""
        self.policy.resume(changes)

    def on_dose(self, spot: str, scan_dose_Gy: float, total_Gy: float) -> None:
        if self.closed:
            return
        p = self.policy
        if p.spot is not None and spot != p.spot:
            # not where the beam was sent: spent, or a control spot the move back from did
            # not leave (it took scan after scan, unchecked against its budget)
            self._stray(spot, total_Gy)
            if spot in p.spent:
                p.last_scan_dose[spot], p.totals[spot] = scan_dose_Gy, total_Gy
                return
        p.on_dose(spot, scan_dose_Gy, total_Gy)

    def _stray(self, spot: str, total_Gy: float) -> None:
        """A scan from a spot the beam was sent away from: the one in flight at the move is
        expected; more are not. A replayed spectrometer goes where the recorded run went:
        nothing to retry."""
        self.strays += 1
        if self.dry_run_from is not None:
            return
        if self.strays < 2 or self.spot is None:
            return
        if self.moving is not None and not self.moving.done():
            return  # the move is still being sent (retries): it answers for itself
        self.event(
            EventKind.SPOT_MOVE_RETRY,
            None,
            None,
            spot=spot,
            dose_Gy=total_Gy,
            target=self.spot,
            scans_since_move=self.strays,
        )
        self._move()

    def _move(self) -> None:
        self.strays = 0
        self.moving = self._spawn(self.command(self.spec, "move", {"spot": self.spot}, ""))

    def _confirm_scan(self, edge: str, spot: str, trigger_id: str) -> None:
        self.strays = 0
        args = {"edge": edge, "spot": spot, "trigger_id": trigger_id}
        self._spawn(self.command(self.spec, "acquire", args, trigger_id))

    def _pause_scans(self) -> None:
        self._spawn(self.command(self.spec, "pause_scans", {}, ""))

    async def resume_scans(self, trigger_id: str) -> Ack | None:
        """The operator goes on after the spots ran out: the scans resume where the beam is,
        and the spot policy does not pause them again."""
        ack = await self.command(self.spec, "resume_scans", {}, trigger_id)
        if ack is not None and ack.ok:
            self.policy.on_resumed()
        return ack

    def on_finding(self, found: DamageSuspicion | DamageVerdict) -> None:
        """A damage suspicion or verdict from the analysis."""
        if not self.closed:
            self.policy.on_finding(found)

    # -- actions ---------------------------------------------------------------------------
    def _fire(self, f: Firing) -> None:
        self.fired += 1
        tid = f"{f.trigger_id}-c{f.cycle}"
        # no fresh spot: a triggered scan would land on a spent one (a manual one is sent)
        held_back = self.policy.paused and f.action.type in ("acquire", "rixs_map")
        why = {"not_sent": "the scans are paused (no fresh spot)"} if held_back else {}
        self.event(EventKind.TRIGGER, None, f.t, **firing_detail(f), trigger_run_id=tid, **why)
        if not held_back:
            self._spawn(self.act(f.action, tid))

    async def act(self, action: Action, trigger_id: str) -> Ack | None:
        """Carry out one action (also used by manual commands); returns the driver's ack."""
        if action.type == "pause":
            return await self.command(self.pstat, "pause", {}, trigger_id)
        if action.type == "rixs_map":
            held = await self.command(self.pstat, "hold", {}, trigger_id)
            if held is None or not held.ok:
                return held
            self.holds[trigger_id] = trigger_id
            ack = await self.command(
                self.spec,
                "acquire",
                {"mode": "rixs", "trigger_id": trigger_id, **self._spot_arg(action)},
                trigger_id,
            )
            if ack is None or not ack.ok:  # no map coming: do not leave the cell held
                self.holds.pop(trigger_id, None)
                await self.command(self.pstat, "resume", {}, trigger_id)
            return ack
        args = {"edge": action.edge, "trigger_id": trigger_id, **self._spot_arg(action)}
        if action.spot and action.spot != self.spot:
            self.strays = 0  # a scan asked for elsewhere (by hand) is no stray
        return await self.command(self.spec, "acquire", args, trigger_id)

    def _spot_arg(self, action: Action) -> dict[str, str]:
        spot = action.spot or self.spot
        return {"spot": spot} if spot else {}

    async def command(
        self, client: CommandClient | None, action: str, args: dict[str, Any], trigger_id: str
    ) -> Ack | None:
        """Send one command to a driver, audited; a refusal or no answer raises an alarm.
        In a dry run (a replayed run) nothing is sent: the command is recorded, as acked."""
        endpoint = None if client is None else client.endpoint
        if self.dry_run_from is not None:
            ack = Ack(id="dry-run", source="monitor", result={"dry_run": True})
            self._record_ack(action, args, ack, trigger_id, endpoint, dry_run=True)
            return ack
        if client is None:
            self.alarms.raise_(
                "command", f"{action}: no command endpoint configured for its driver"
            )
            return None
        try:
            ack = await client.request(action, args)
        except CommandError as e:
            self.alarms.raise_("command", str(e), trigger_id=trigger_id)
            return None
        self._record_ack(action, args, ack, trigger_id, endpoint)
        if not ack.ok:
            self.alarms.raise_(
                "command",
                f"{action} refused by {client.endpoint}: {ack.error}",
                trigger_id=trigger_id,
            )
        return ack

    def _record_ack(
        self,
        action: str,
        args: dict[str, Any],
        ack: Ack,
        trigger_id: str,
        endpoint: str | None,
        **extra: Any,
    ) -> None:
        self.event(
            EventKind.ACK,
            None,
            None,
            action=action,
            args=args,
            ok=ack.ok,
            error=ack.error,
            result=ack.result,
            trigger_id=trigger_id,
            endpoint=endpoint,
            **extra,
        )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def status(self) -> dict[str, Any]:
        return {
            "spot": self.spot,
            "spent": sorted(self.policy.spent),
            "scans_paused": self.policy.paused,
            "fired": self.fired,
            "holding": sorted(self.holds),
            "alarms": self.alarms.open(),
        }

    async def close(self) -> None:
        self.closed = True
        for t in list(self.tasks):
            t.cancel()
        for t in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for c in (self.pstat, self.spec):
            if c is not None:
                await c.close()
