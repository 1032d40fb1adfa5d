"""Experiment configuration: TOML validated against typed structs, errors naming the key.

One file describes one experiment: where the run is recorded, the monitor's endpoints, how
spectra are aligned, the instruments (sources) to subscribe to, and the drivers' own settings
(``[drivers.NAME]``, validated by each driver, opaque here).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from operando.analysis.cycling import CyclingSettings
from operando.analysis.damage import DamageSettings
from operando.analysis.gitt import GittSettings
from operando.analysis.resistance import ResistanceSettings
from operando.analysis.rest import RestCriterion
from operando.analysis.valence import FLUORESCENCE


class ConfigError(ValueError):
    """A configuration that cannot be used; the text names the file and the key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# What a trigger does and when (``[[orchestration.triggers]]``; operando.orchestrate.triggers
# detects the crossings).
class Action(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    type: Literal["acquire", "rixs_map", "pause"] = "acquire"
    edge: str = ""
    spot: str = ""  # empty: the orchestrator's current spot


class TriggerSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    quantity: Literal["voltage", "soc", "charge", "rest_time"] = "voltage"
    target: float
    direction: Literal["charge", "discharge", "either"] = "either"
    hysteresis: float = 0.02  # in the quantity's unit (V, SOC, mAh, s)
    tolerance: float = 0.001  # 'reached' when the running mean is within this of the target
    debounce: int = 5  # samples in the running mean
    repeat: Literal["per_cycle", "once"] = "per_cycle"
    action: Action = msgspec.field(default_factory=Action)


class RunConfig(_Section):
    root: str = "runs"  # run directories are created under here
    name: str = ""  # default: <experiment>-<UTC timestamp>


class MonitorConfig(_Section):
    state_endpoint: str = "tcp://127.0.0.1:5600"  # dashboards subscribe here
    command_endpoint: str = "tcp://127.0.0.1:5601"  # status queries and manual commands
    status_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0  # a source silent this long (wall time) is 'disconnected'


class AlignmentConfig(_Section):
    timeout_s: float = 30.0  # source time a spectrum waits for the potentiostat to cover it
    capacity_mAh: float | None = None  # None: take it from the potentiostat's series metadata
    # the SOC when the potentiostat's charge count starts; None: what the potentiostat's series
    # says of the cell (``initial_soc``), else 0 (and the run's events say it was assumed)
    initial_soc: float | None = None
    current_step_mA: float = 0.01  # a jump in current larger than this is a 'current change'
    cover_tolerance_s: float = 0.2  # slack when deciding that rows cover a window
    retain_s: float = 6 * 3600.0  # potentiostat history kept in memory for alignment


class SourceConfig(_Section):
    name: str
    role: Literal["potentiostat", "spectrometer"]
    data: str  # the driver's PUB endpoint
    command: str = ""  # the driver's command (ROUTER) endpoint
    clock_offset_s: float = 0.0  # added to the source's timestamps to reach the reference clock
    clock: Literal["configured", "ping"] = "configured"  # ping: estimate the offset at start
    command_key: str = ""  # the driver's public key file: talk CURVE to its command socket
    rcvhwm: int = 10_000
    # the driver expected on this link (e.g. "eclab"); empty: whichever speaks first is pinned
    driver: str = ""


class AnalysisConfig(_Section):
    enabled: bool = True
    channels: list[str] = msgspec.field(default_factory=lambda: ["TEY", "TFY"])
    # channels fitted with the self-absorption model (default: every fluorescence channel)
    self_absorption: list[str] = msgspec.field(default_factory=lambda: list(FLUORESCENCE))
    references: dict[str, str] = msgspec.field(default_factory=dict)  # edge -> CSV/NPZ file
    fit_ranges: dict[str, tuple[float, float]] = msgspec.field(default_factory=dict)
    sample_formula: str = ""  # default: from each scan's metadata
    sample_density_g_cm3: float = 0.0
    spot_area_mm2: float = 0.0
    # per spot; 0: no budget. The one home of the budget: the dose warnings, the spot
    # rotation and the dashboard's budget line all read it here. The default is stated for a
    # solid whose own threshold is not known: 15 % of the 20 MGy half-damage dose, ~90 %
    # intact for first-order damage (docs/decisions/0008)
    dose_budget_Gy: float = 3e6
    budget_warning_fraction: float = 0.8
    damage: DamageSettings = msgspec.field(default_factory=DamageSettings)
    # The run's one rest criterion: open circuit, or |I| below this. Relaxation, the damage
    # tests, rest_time triggers and the dashboard's rest shading all use it.
    rest_current_mA: float = 0.005
    relaxation_min_points: int = 5
    # Spectra waiting for the live analysis hold their arrays (8 MB a RIXS row): past this,
    # spectra are recorded but not analysed live until it catches up (reprocess analyses them)
    live_backlog_MB: float = 256.0

    @property
    def rest(self) -> RestCriterion:
        return RestCriterion(current_mA=self.rest_current_mA)


class ElectrochemistryConfig(_Section):
    """Half-cycles, dQ/dV, resistance, titration pulses and current interruptions from the
    potentiostat's rows. 'At rest' is the run's one criterion, ``[analysis] rest_current_mA``."""

    enabled: bool = True
    cycling: CyclingSettings = msgspec.field(default_factory=CyclingSettings)
    resistance: ResistanceSettings = msgspec.field(default_factory=ResistanceSettings)
    # titration pulses (GITT) and current interruptions (ICI, analysis.ici); the diffusion
    # coefficient needs the material's inputs here and cycling.active_mass_mg
    gitt: GittSettings = msgspec.field(default_factory=GittSettings)


class OrchestrationConfig(_Section):
    triggers: list[TriggerSpec] = msgspec.field(default_factory=list)
    spots: list[str] = msgspec.field(default_factory=list)  # default: the spectrometer's
    rotate_on_damage: bool = True
    # a damage suspicion is confirmed by one scan on a control spot before anything moves;
    # at most this many control scans per hour of the run
    confirm_damage: bool = True
    confirmations_per_hour: int = 2
    # every spot spent: pause the scans (a scan on a spent spot measures damage) until the
    # operator resumes them, or continue on the spot in use
    when_spots_run_out: Literal["pause", "continue"] = "pause"
    command_timeout_s: float = 2.0
    retries: int = 2
    client_secret: str = ""  # the monitor's own .key_secret, for drivers that use CURVE


class PublishConfig(_Section):
    """The run's documents beyond this machine: ``operando publish``, started by the monitor."""

    nats: str = ""  # e.g. nats://broker.facility:4222 (empty: not published)
    stream: str = "bluesky"  # the JetStream stream (bluesky-nats's default)
    prefix: str = "events.volatile"  # subjects PREFIX.<document name> (bluesky-nats's default)
    tiled: str = ""  # e.g. http://tiled.facility:8000 (its API key: $TILED_API_KEY)
    finish_s: float = 30.0  # after the monitor stops: time to send the run's last documents


class ExperimentConfig(_Section):
    name: str = "experiment"
    description: str = ""
    run: RunConfig = msgspec.field(default_factory=RunConfig)
    monitor: MonitorConfig = msgspec.field(default_factory=MonitorConfig)
    alignment: AlignmentConfig = msgspec.field(default_factory=AlignmentConfig)
    sources: list[SourceConfig] = msgspec.field(default_factory=list)
    analysis: AnalysisConfig = msgspec.field(default_factory=AnalysisConfig)
    electrochemistry: ElectrochemistryConfig = msgspec.field(default_factory=ElectrochemistryConfig)
    orchestration: OrchestrationConfig = msgspec.field(default_factory=OrchestrationConfig)
    publish: PublishConfig = msgspec.field(default_factory=PublishConfig)
    drivers: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(f"no source named {name!r} (have: {[s.name for s in self.sources]})")

    @property
    def potentiostat(self) -> SourceConfig | None:
        found = [s for s in self.sources if s.role == "potentiostat"]
        return found[0] if found else None


def parse_config(data: dict[str, Any], where: str = "config") -> ExperimentConfig:
    _one_dose_budget(data, where)
    try:
        cfg = msgspec.convert(data, ExperimentConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{where}: {_keyed(str(e))}") from None
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: sources: names must be unique, got {names}")
    if sum(s.role == "potentiostat" for s in cfg.sources) > 1:
        raise ConfigError(f"{where}: sources: at most one potentiostat is aligned against")
    cap = cfg.alignment.capacity_mAh
    if cap is not None and cap <= 0:
        raise ConfigError(f"{where}: alignment.capacity_mAh: must be > 0, got {cap}")
    return cfg


def _one_dose_budget(data: dict[str, Any], where: str) -> None:
    """The dose budget has one home, ``[analysis] dose_budget_Gy``. Earlier files could also
    set it under ``[orchestration]``: with only that set, spots rotated but no budget warning
    fired; with both set differently, rotation and warnings disagreed. Such a file is refused,
    naming both places, rather than read one way or the other."""
    orch = data.get("orchestration")
    if not isinstance(orch, dict) or "dose_budget_Gy" not in orch:
        return
    theirs = orch["dose_budget_Gy"]
    analysis = data.get("analysis")
    ours = analysis.get("dose_budget_Gy") if isinstance(analysis, dict) else None
    if ours is not None:
        raise ConfigError(
            f"{where}: the dose budget is set twice, analysis.dose_budget_Gy = {ours} and "
            f"orchestration.dose_budget_Gy = {theirs}: keep one, under [analysis]"
        )
    raise ConfigError(
        f"{where}: orchestration.dose_budget_Gy: the dose budget lives in [analysis] "
        f"(analysis.dose_budget_Gy = {theirs}), which the warnings and the spot rotation both read"
    )


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a TOML experiment file (or the JSON copy a run directory or the demo writes)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = msgspec.json.decode(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (tomllib.TOMLDecodeError, msgspec.DecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {e}") from None
    cfg = parse_config(data, str(path))
    # Reference files are named relative to the experiment file.
    refs = {edge: str((path.parent / f).resolve()) for edge, f in cfg.analysis.references.items()}
    return msgspec.structs.replace(
        cfg, analysis=msgspec.structs.replace(cfg.analysis, references=refs)
    )


def preset_path(name: str) -> Path:
    """A configuration shipped in ``configs/`` (installed as ``operando.configs``)."""
    from importlib.resources import files

    path = Path(str(files("operando.configs") / f"{name}.toml"))
    if not path.exists():
        raise ConfigError(f"no preset {name!r}; presets: {', '.join(list_presets())}")
    return path


def list_presets() -> list[str]:
    from importlib.resources import files

    return sorted(
        p.name.removesuffix(".toml")
        for p in files("operando.configs").iterdir()
        if p.name.endswith(".toml")
    )


def demo_presets() -> list[str]:
    """The presets ``operando demo`` can run: those whose drivers it starts (simulators)."""
    return [name for name in list_presets() if load_config(preset_path(name)).drivers]


def _keyed(message: str) -> str:
    """msgspec says '... - at `$.sources[0].role`'; put the key first, as a TOML user reads it."""
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return message
    key = path.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    return f"{key}: {text}"
