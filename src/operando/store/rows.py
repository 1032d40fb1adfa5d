"""One typed row per table of the run store. The INSERT statements are made from these
(``schema.SQL``), and every writer builds its rows with them: no positional tuples built by
hand in several modules and read back by index.

A field's name is its column's name; its order is the order of the statement's values.
"""

from __future__ import annotations

from typing import NamedTuple


class PotentiostatRow(NamedTuple):
    raw_id: int
    link: str
    t: float  # s, reference clock
    ewe: float  # V
    i: float  # mA, positive on charge
    q: float | None  # mAh, the instrument's own charge counter (None: not sent)
    mode: int
    step: int
    cycle: int
    soc: float | None


class SpectrumRow(NamedTuple):
    id: int
    raw_id: int
    link: str
    source: str
    kind: str
    scan_id: str
    series: str
    edge: str
    t_start: float
    t_end: float
    spot_id: str | None
    spot_x: float | None
    spot_y: float | None
    flux: float
    exposure: float
    trigger_id: str | None
    n_points: int
    channels: str  # JSON list
    extra: str  # JSON object


class AlignmentRow(NamedTuple):
    spectrum_id: int
    partial: int
    reason: str
    ewe_mean: float
    soc: float
    i_mean: float
    mode: int
    step: int
    cycle: int
    doc: str  # the whole alignment, JSON


class EventRow(NamedTuple):
    recv_ns: int
    t: float | None
    kind: str
    link: str | None
    detail: str  # JSON object
    origin: str  # 'ingest' (derived again by reprocess) or 'monitor' (kept)


class AnalysisRow(NamedTuple):
    spectrum_id: int
    channel: str
    method: str
    valence: float
    valence_unc: float
    chi2_red: float
    shift_eV: float
    beta: float | None
    fractions: str  # JSON object
    uncertainties: str  # JSON object
    doc: str  # the whole fit, JSON
    quality: str  # "good", "check" or "poor" (lcf.FitResult.quality)
    notes: str  # JSON list: why the quality is not good (FitResult.notes), bounds included


class DoseRow(NamedTuple):
    spectrum_id: int
    spot: str
    dose_Gy: float
    before_Gy: float
    after_Gy: float
    rate_Gy_s: float


class RelaxationRow(NamedTuple):
    rest_start: float | None
    channel: str
    quantity: str
    model: str
    tau_s: float | None
    tau_err_s: float | None
    resolved: int
    n_points: int
    doc: str


class SeriesRow(NamedTuple):
    edge: str
    channel: str
    spectra: int
    rank: int
    components: int
    residual: float
    doc: str


class RixsRow(NamedTuple):
    map_id: str
    rows: int
    rows_total: int
    roi: float
    reference: float
    ratio: float
    soc: float
    doc: str


class HalfCycleRow(NamedTuple):
    idx: int  # 1, 2, ... in the run
    cycle: int
    direction: str  # "charge" or "discharge"
    t_start: float
    t_end: float
    capacity_mAh: float
    energy_mWh: float
    mean_voltage_V: float
    complete: int  # 0: the record ended (or the series restarted) inside it
    doc: str  # the whole half-cycle (cycling.HalfCycle): dQ/dV curve and peaks, JSON


class CurrentStepRow(NamedTuple):
    t_step: float
    i_before_mA: float
    i_after_mA: float
    soc: float | None
    r_first_ohm: float
    r_0_ohm: float | None
    r_unc_ohm: float | None
    doc: str  # the whole step (resistance.CurrentStep), JSON


class GittPulseRow(NamedTuple):
    t_start: float
    tau_s: float
    i_mA: float
    ocv_after_V: float
    d_cm2_s: float | None
    doc: str  # the whole pulse (gitt.GittPulse), JSON


class InterruptionRow(NamedTuple):
    t_start: float
    duration_s: float
    i_mA: float
    r_ohm: float
    d_cm2_s: float | None
    doc: str  # the whole interruption (ici.Interruption), JSON


Row = (
    PotentiostatRow
    | SpectrumRow
    | AlignmentRow
    | EventRow
    | AnalysisRow
    | DoseRow
    | RelaxationRow
    | SeriesRow
    | RixsRow
    | HalfCycleRow
    | CurrentStepRow
    | GittPulseRow
    | InterruptionRow
)

# row type -> (the writer's op, its table)
OPS: dict[type, tuple[str, str]] = {
    PotentiostatRow: ("potentiostat", "potentiostat"),
    SpectrumRow: ("spectrum", "spectra"),
    AlignmentRow: ("alignment", "alignment"),
    EventRow: ("event", "events"),
    AnalysisRow: ("analysis", "analysis"),
    DoseRow: ("dose", "dose"),
    RelaxationRow: ("relaxation", "relaxation"),
    SeriesRow: ("series", "series"),
    RixsRow: ("rixs", "rixs"),
    HalfCycleRow: ("half_cycle", "half_cycles"),
    CurrentStepRow: ("current_step", "current_steps"),
    GittPulseRow: ("gitt_pulse", "gitt_pulses"),
    InterruptionRow: ("interruption", "interruptions"),
}


def insert(row_type: type, verb: str = "INSERT OR REPLACE", suffix: str = "") -> str:
    """The statement that writes rows of ``row_type`` (named columns, in field order)."""
    _, table = OPS[row_type]
    fields: tuple[str, ...] = row_type._fields  # type: ignore[attr-defined]
    marks = ", ".join("?" * len(fields))
    return f"{verb} INTO {table} ({', '.join(fields)}) VALUES ({marks}){suffix}"
