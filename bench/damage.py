"""Damage verdicts measured, not asserted (issue #20): every preset x seeds, damage off and on.

Each configuration runs a simulated beamline for ``--hours`` of experiment time in one
process, on the run's own clock (no sockets, no wall clock: 72 h take about a minute): the
simulated potentiostat's rows (``SimPotentiostat.rows``), the simulated spectrometer's scans
(``simulate_xas``, photoreduction point by point above the critical dose), and on the
monitor's side the product's own code: alignment (``align_window``), the dose ledger, the
``Analyzer`` (valence fits, relaxation fits, the damage tests) and the ``SpotPolicy`` (budget
rotation, control scans, verdicts). Only the fluorescence fit is left out (the damage tests
read TEY), and RIXS maps are not scanned (lirich-rixs runs its XAS only).

Reported per configuration, and summed per preset and scenario:
- confirmed false verdicts per 72 h: a ``damage`` verdict on a scan whose true photoreduced
  fraction was under 1 % (goal <= 1);
- suspicions and dose checks per 72 h; control scans spent; spot moves for good; spots left
  at the end; when the scans were paused with every spot spent;
- for every spot whose photoreduced fraction reached 3 %: how many scans of that spot later
  the damage verdict came (goal <= 3), or why it did not (left for the budget first, ...).

    python bench/damage.py                    # every preset, 5 seeds, 72 h, 3 scenarios
    python bench/damage.py --grid preset      # the presets' own 12 spots: when scans pause
    python bench/damage.py --preset peo-lfp-relaxation --seeds 1 --hours 6
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from operando.drivers.base import DriverOptions
from operando.drivers.sim.sample import MODELS
from operando.drivers.sim.sim_potentiostat import PotentiostatSettings, SimPotentiostat
from operando.drivers.sim.sim_spectrometer import (
    CellView,
    SpectrometerSettings,
    sample_of,
    simulate_xas,
)
from operando.drivers.sim.spectra import EDGES

from operando.align import PotentiostatHistory, align_window
from operando.analysis.rest import rest_voltage
from operando.analyze import Analyzer, SpectrumInput
from operando.config import load_config, preset_path
from operando.demo import with_simulator_references
from operando.doseledger import DoseLedger
from operando.events import EventKind
from operando.orchestrate.spots import SpotPolicy
from operando.orchestrate.triggers import TriggerEngine

PRESETS = (
    "peo-nmc",
    "peo-nmc-triggered",
    "peo-lfp-relaxation",
    "lnmo-surface",
    "na-mno2",
    "lirich-rixs",
)
# scenario -> simulated damage on, critical dose (None: the preset's own)
SCENARIOS: dict[str, tuple[bool, float | None]] = {
    "off": (False, None),
    "on-20MGy": (True, 2e7),
    "on-5MGy": (True, 5e6),
}
CHUNK_S = 30.0  # potentiostat rows are generated (and triggers fed) this many seconds at a time


class Beamline:
    """One simulated experiment and the monitor's decisions on it."""

    def __init__(
        self,
        preset: str,
        seed: int,
        damage: bool,
        critical_Gy: float | None,
        grid: tuple[int, int] | None = None,
    ) -> None:
        cfg = load_config(preset_path(preset))
        self.refs_dir = tempfile.TemporaryDirectory()
        cfg = with_simulator_references(cfg, Path(self.refs_dir.name))
        pot = msgspec.convert(cfg.drivers["potentiostat"], PotentiostatSettings)
        pot = msgspec.structs.replace(pot, seed=seed)
        self.pot = SimPotentiostat(DriverOptions("potentiostat", "", ""), pot)
        spec = msgspec.convert(cfg.drivers["spectrometer"], SpectrometerSettings)
        realism = msgspec.structs.replace(spec.realism, damage=damage)
        self.spec = msgspec.structs.replace(
            spec,
            seed=seed,
            realism=realism,
            critical_dose_Gy=critical_Gy or spec.critical_dose_Gy,
        )
        if grid is not None:
            spots = msgspec.structs.replace(self.spec.spots, rows=grid[0], cols=grid[1])
            self.spec = msgspec.structs.replace(self.spec, spots=spots)
        self.rng = np.random.default_rng(seed + 1000)
        meta = self.pot.metadata()
        self.model = MODELS[meta["chemistry"]]
        self.capacity, self.initial_soc = meta["capacity_mAh"], meta["initial_soc"]
        self.view = CellView(keep_s=6 * 3600.0)
        self.view.start(meta, self.model.bulk_tau_s)
        self.history = PotentiostatHistory()
        self.t = 0.0  # experiment time of the newest potentiostat row
        self.spots = list(self.spec.spots.spots())
        self.beam_spot = self.spots[0]
        self.dose = dict.fromkeys(self.spots, 0.0)
        self.queue: list[tuple[str, str | None, str]] = []  # edge, spot, trigger id
        self.events: list[tuple[str, float | None, dict[str, Any]]] = []
        self.truth: dict[int, dict[str, Any]] = {}  # spectrum id -> spot, reduced fraction
        analysis = msgspec.structs.replace(cfg.analysis, channels=["TEY"])
        self.analyzer = Analyzer(analysis, Path("."), lambda row: None, self._event, _nothing)
        self.ledger = DoseLedger(analysis, lambda row: None, self._event)
        orch = cfg.orchestration
        self.policy = SpotPolicy(
            self.spots,
            dose_budget_Gy=analysis.dose_budget_Gy,
            move=self._move,
            acquire=lambda edge, spot, tid: self.queue.append((edge, spot, tid)),
            event=self._event,
            alarm=lambda category, message, key: self._event(
                EventKind.ALARM, None, None, category=category, message=message
            ),
            rotate_on_damage=orch.rotate_on_damage,
            confirm_damage=orch.confirm_damage,
            confirmations_per_hour=orch.confirmations_per_hour,
            control_dose_fraction=analysis.damage.control_dose_fraction,
            pause=self._pause if orch.when_spots_run_out == "pause" else None,
        )
        self.paused_at: float | None = None  # experiment time the scans were paused at
        self.ledger.on_dose.append(self.policy.on_dose)
        self.analyzer.on_finding.append(self.policy.on_finding)
        self.triggers = TriggerEngine(list(orch.triggers), analysis.rest) if orch.triggers else None
        self.free = self.spec.mode == "free"
        self.free_count = 0
        self.scans = 0

    def _event(self, kind: Any, link: Any, t: Any, /, **detail: Any) -> None:
        self.events.append((str(kind), t, detail))

    def _move(self, spot: str) -> None:
        self.beam_spot = spot

    def _pause(self) -> None:
        self.paused_at = self.t

    # -- the instruments -----------------------------------------------------------------------
    def advance_to(self, t_end: float) -> None:
        """Potentiostat rows up to ``t_end``, into the monitor's record and the triggers."""
        dt = self.pot.settings.sample_interval_s
        while self.t < t_end:
            n = max(1, round(CHUNK_S / dt))
            rows = self.pot.rows(self.t, n)
            self.t = float(rows["t"][-1])
            self.history.extend(
                rows["t"],
                rows["Ewe"],
                rows["I"],
                rows["mode"],
                rows["step"],
                rows["cycle"],
                rows["Q"],
            )
            self.view.add(rows["t"], rows["Q"], rows["Ewe"], rows["I"])
            if self.triggers is not None:
                soc = self.initial_soc + rows["Q"] / self.capacity
                feed = {**rows, "soc": soc, "q": rows["Q"]}
                for firing in self.triggers.feed(feed):
                    if firing.action.type == "acquire" and not self.policy.paused:
                        self.queue.append((firing.action.edge or "", None, firing.trigger_id))

    def scan(self, edge_name: str, spot: str | None, t_start: float, control: bool = False) -> None:
        if spot is not None:
            self.beam_spot = spot  # an acquire names its spot: the stage goes there
        spot = self.beam_spot
        edge, s = EDGES[edge_name], self.spec
        energy = edge.axis()
        n = len(energy)
        point_t = t_start + (np.arange(n) + 0.5) * s.dwell_s
        t_end = t_start + n * s.dwell_s
        self.advance_to(t_end)
        _soc, y, ewe = self.view.at(point_t)
        formula, density = sample_of(self.model.chemistry, s)
        scan = simulate_xas(
            self.model,
            edge_name,
            s,
            point_t,
            y,
            ewe,
            self.dose[spot],
            (formula, density),
            0.0,
            self.rng,
        )
        d0 = self.dose[spot]
        self.dose[spot] = scan.dose_after_Gy
        reduced = _reduced(0.5 * (d0 + scan.dose_after_Gy), s) if s.realism.damage else 0.0
        self.scans += 1
        sid = self.scans
        self.truth[sid] = {
            "spot": spot,
            "edge": edge_name,
            "reduced": reduced,
            "t": t_end,
            "control": control,
        }
        # -- the monitor's side: what ingest does with a scan
        arrays = {"energy": energy, **scan.channels, "point_t": point_t}
        rec = self.history.record()
        al = align_window(
            rec,
            t_start,
            t_end,
            capacity_mAh=self.capacity,
            initial_soc=self.initial_soc,
            point_t=point_t,
        )
        si = SpectrumInput(
            spectrum_id=sid,
            kind="xas",
            edge=edge_name,
            spot=spot,
            flux_ph_s=s.flux_ph_s,
            exposure_s=n * s.dwell_s,
            extra={
                "sample_formula": formula,
                "sample_density_g_cm3": density,
                "spot_area_mm2": s.spot_area_mm2,
            },
        )
        si.dose_before_Gy, si.dose_after_Gy = self.ledger.count(si, energy)
        rest = rest_voltage(rec, al, self.analyzer.rest_criterion)
        self.analyzer.on_spectrum(si, arrays, al, rest)

    def run(self, hours: float) -> None:
        end = hours * 3600.0
        next_free = 0.0
        edges = list(self.spec.edges or self.model.edges)
        while self.t < end:
            if self.queue:  # control scans and triggered acquisitions first
                edge, spot, tid = self.queue.pop(0)
                self.scan(edge or edges[0], spot, self.t, control=tid.startswith("confirm-"))
            elif not self.free or self.policy.paused:
                self.advance_to(self.t + CHUNK_S)
            elif self.t < next_free:
                self.advance_to(next_free)
            else:
                # a beamline that fell behind starts the next scan on time (as the driver)
                next_free = max(next_free + self.spec.interval_s, self.t)
                self.free_count += 1
                every = self.spec.rixs_every
                if every and self.free_count % every == 0:
                    continue  # a RIXS map: not simulated here, its time passes
                self.scan(edges[(self.free_count - 1) % len(edges)], None, self.t)
        self.analyzer.finish()
        self.refs_dir.cleanup()


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


def _reduced(dose_Gy: float, s: SpectrometerSettings) -> float:
    """The simulated photoreduced fraction of the higher valences at this dose."""
    if dose_Gy <= s.critical_dose_Gy:
        return 0.0
    return 1.0 - math.exp(-(dose_Gy - s.critical_dose_Gy) * s.damage_rate_per_Gy)


def score(b: Beamline, hours: float) -> dict[str, Any]:
    per72 = 72.0 / hours
    verdicts = [d for k, _, d in b.events if k == EventKind.DAMAGE_VERDICT]
    suspicions = [d for k, _, d in b.events if k == EventKind.DAMAGE_SUSPICION]
    false = [
        v
        for v in verdicts
        if v["verdict"] == "damage" and b.truth[v["suspect_spectrum"]]["reduced"] < 0.01
    ]
    # per spot: its scans while it was the spot in use (a control visit is not), in order,
    # and the first scan a damage verdict named
    order: dict[str, list[int]] = {}
    for sid, tr in sorted(b.truth.items()):
        if not tr["control"]:
            order.setdefault(tr["spot"], []).append(sid)
    confirmed_at = {}
    for v in verdicts:
        if v["verdict"] == "damage":
            confirmed_at.setdefault(v["spot"], v["suspect_spectrum"])
    latency: list[int] = []
    damaged_scans: list[int] = []  # per damaged spot: its scans at >= 3 % photoreduced
    outcome: Counter[str] = Counter()
    for spot, sids in order.items():
        hit = next((k for k, sid in enumerate(sids) if b.truth[sid]["reduced"] >= 0.03), None)
        if hit is None:
            continue
        damaged_scans.append(sum(b.truth[sid]["reduced"] >= 0.03 for sid in sids))
        at = confirmed_at.get(spot)
        if at in sids:
            latency.append(sids.index(at) - hit)
            outcome["confirmed"] += 1
        elif spot == b.policy.spot:
            outcome["still in use, unconfirmed"] += 1
        else:
            outcome["left unconfirmed"] += 1
    return {
        "scans": b.scans,
        "false_verdicts_per_72h": len(false) * per72,
        "suspicions_per_72h": len(suspicions) * per72,
        "verdicts": dict(Counter(v["verdict"] for v in verdicts)),
        "control_scans": b.policy.counts["confirmations"],
        "spot_moves_for_good": b.policy.counts["rotations"],
        "spots_left": len([s for s in b.spots if s not in b.policy.spent]),
        "paused_at_h": None if b.paused_at is None else round(b.paused_at / 3600.0, 2),
        "checks": sum(k == EventKind.DAMAGE_CHECK for k, _, _ in b.events),
        "damaged_spots": dict(outcome),
        "scans_from_3pct_to_verdict": latency,
        "scans_at_3pct_per_damaged_spot": damaged_scans,
        "false": [
            {k: v[k] for k in ("spot", "why")} | {"spectrum": v["suspect_spectrum"]} for v in false
        ],
    }


def one(job: tuple[str, int, str, float, tuple[int, int] | None]) -> dict[str, Any]:
    preset, seed, scenario, hours, grid = job
    damage, critical = SCENARIOS[scenario]
    t0 = time.perf_counter()
    b = Beamline(preset, seed, damage, critical, grid)
    b.run(hours)
    out = {"preset": preset, "seed": seed, "scenario": scenario, "hours": hours}
    out |= score(b, hours)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", choices=PRESETS)
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--hours", type=float, default=72.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every configuration's result here")
    ap.add_argument(
        "--grid",
        default="20x20",
        help="the sample's spots, ROWSxCOLS (at most 26 rows), or 'preset' for the preset's own "
        "(12: every preset spends them in 2-10 h and the scans pause; 400 keep it scanning "
        "for 72 h)",
    )
    a = ap.parse_args()
    grid = None if a.grid == "preset" else _grid(a.grid)
    jobs = [
        (p, seed, sc, a.hours, grid)
        for p in a.preset or PRESETS
        for sc in a.scenario or SCENARIOS
        for seed in range(1, a.seeds + 1)
    ]
    results = []
    with ProcessPoolExecutor(a.workers) as pool:
        for r in pool.map(one, jobs):
            results.append(r)
            print(json.dumps({k: r[k] for k in r if k != "false"}), file=sys.stderr, flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    print(table(results))


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(x) for x in text.lower().split("x"))
    except ValueError:
        sys.exit(f"--grid: expected ROWSxCOLS or 'preset', got {text!r}")
    if not (1 <= rows <= 26 and cols >= 1):
        sys.exit(f"--grid: 1 to 26 rows and at least 1 column, got {text!r}")
    return rows, cols


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | scenario | runs | false verdicts / 72 h | suspicions / 72 h | "
        "dose checks / 72 h | control scans | moves for good | spots left (min) | "
        "scans paused at h (median) | damaged spots | "
        "scans from 3 % to verdict (median, max) | scans at >= 3 % per damaged spot (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["preset"], r["scenario"]), []).append(r)
    for (p, sc), rs in groups.items():
        damaged: Counter[str] = Counter()
        for r in rs:
            damaged.update(r["damaged_spots"])
        lat = [x for r in rs for x in r["scans_from_3pct_to_verdict"]]
        harm = [x for r in rs for x in r["scans_at_3pct_per_damaged_spot"]]
        paused = [r["paused_at_h"] for r in rs if r["paused_at_h"] is not None]
        lines.append(
            f"| {p} | {sc} | {len(rs)} | "
            f"{np.mean([r['false_verdicts_per_72h'] for r in rs]):.2f} | "
            f"{np.mean([r['suspicions_per_72h'] for r in rs]):.1f} | "
            f"{np.mean([r['checks'] for r in rs]) * 72.0 / rs[0]['hours']:.1f} | "
            f"{np.mean([r['control_scans'] for r in rs]):.1f} | "
            f"{np.mean([r['spot_moves_for_good'] for r in rs]):.1f} | "
            f"{min(r['spots_left'] for r in rs)} | "
            f"{f'{np.median(paused):.1f} ({len(paused)} of {len(rs)})' if paused else '-'} | "
            f"{', '.join(f'{n} {k}' for k, n in damaged.items()) or '-'} | "
            f"{f'{np.median(lat):.0f}, {max(lat)}' if lat else '-'} | "
            f"{max(harm) if harm else '-'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
