"""Half-cycles, dQ/dV and step resistance against what others computed on data we did not
make: EC-Lab's own per-half-cycle charge columns and cellpy (its reader and its ICA) on the
real files in shared/data/eclab, and the simulator's cell model for the resistance."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED
from operando.drivers.eclab import MptReader
from operando.drivers.sim.cell import PRESETS, Cell

from operando.analysis.cycling import (
    CHARGE,
    DISCHARGE,
    CyclingSettings,
    HalfCycle,
    HalfCycleTracker,
    cycles,
    dqdv,
    peaks,
)
from operando.analysis.resistance import ResistanceSettings, StepResistance

ECLAB = SHARED / "data" / "eclab"
needs_files = pytest.mark.skipif(not ECLAB.is_dir(), reason=f"no EC-Lab files at {ECLAB}")
REST_MA = 0.005


def track(t, ewe, q, *, piece: int | None = None, cv=None, **settings) -> list[HalfCycle]:
    tr = HalfCycleTracker(CyclingSettings(**settings), REST_MA)
    out: list[HalfCycle] = []
    n = piece or len(t)
    for k in range(0, len(t), n):
        out += tr.add(
            t[k : k + n], ewe[k : k + n], q[k : k + n], None if cv is None else cv[k : k + n]
        )
    return out + tr.finish()


def read_rows(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".mpr":
        from operando.drivers.eclab_mpr import read_mpr

        return read_mpr(path)[2]
    return MptReader(path.name).feed(path.read_bytes())


def eclab_columns(path: Path) -> pd.DataFrame:
    """Every column of an EC-Lab text export, as EC-Lab wrote it (decimal commas)."""
    text = path.read_text(encoding="latin-1")
    header_lines = int(re.search(r"Nb header lines : (\d+)", text).group(1))
    return pd.read_csv(io.StringIO(text.replace(",", ".")), sep="\t", skiprows=header_lines - 1)


# -- capacity per half-cycle against EC-Lab's own counters -----------------------------------
@needs_files
@pytest.mark.parametrize("name", ["yadg_gcpl.issue_149.mpt", "yadg_gcpl.issue_149.mpr"])
@pytest.mark.parametrize("piece", [None, 1, 7])
def test_gcpl_half_cycles_match_ec_labs_own_charge_within_0_1_percent(name, piece):
    """EC-Lab's 'Q charge' / 'Q discharge' at the end of each of its half cycles is the
    reference; its cycle counter says 4 cycles (0..3), and the current says the same."""
    rows = read_rows(ECLAB / name)
    ref = eclab_columns(ECLAB / "yadg_gcpl.issue_149.mpt")
    found = track(rows["t"], rows["Ewe"], rows["Q"], piece=piece)
    assert [h.direction for h in found] == [CHARGE, DISCHARGE] * 4
    assert [h.cycle for h in found] == [1, 1, 2, 2, 3, 3, 4, 4]
    # the last discharge: nothing after it says it ended
    assert [h.complete for h in found] == [True] * 7 + [False]
    per_half = ref.groupby("half cycle").agg(
        charge=("Q charge/mA.h", "max"), discharge=("Q discharge/mA.h", "max")
    )
    for h, (_, theirs) in zip(found[:7], per_half.iterrows(), strict=False):
        expected = theirs["charge"] if h.direction == CHARGE else theirs["discharge"]
        assert h.capacity_mAh == pytest.approx(expected, rel=1e-3), h
    summary = cycles(found)
    assert [c.complete for c in summary] == [True, True, True, False]
    # coulombic efficiency against EC-Lab's own charges: within 0.1 %
    for c in summary[:3]:
        charge = per_half["charge"].iloc[2 * c.cycle - 2]
        discharge = per_half["discharge"].iloc[2 * c.cycle - 1]
        assert c.coulombic_efficiency == pytest.approx(discharge / charge, rel=1e-3)


@needs_files
def test_chronopotentiometry_is_one_discharge_of_ec_labs_charge():
    rows = read_rows(ECLAB / "yadg_cp.mpt")
    ref = eclab_columns(ECLAB / "yadg_cp.mpt")
    (h,) = track(rows["t"], rows["Ewe"], rows["Q"])
    assert h.direction == DISCHARGE and not h.complete
    assert h.capacity_mAh == pytest.approx(ref["Q discharge/mA.h"].max(), rel=1e-3)


@needs_files
def test_open_circuit_has_no_half_cycle():
    rows = read_rows(ECLAB / "yadg_ocv.mpt")
    assert track(rows["t"], rows["Ewe"], np.zeros(len(rows["t"]))) == []


# -- against cellpy, run on the same file ----------------------------------------------------
@pytest.fixture(scope="module")
def cellpy_biol():
    cellpy = pytest.importorskip("cellpy")
    if not (ECLAB / "cellpy_biol.mpr").exists():
        pytest.skip(f"no {ECLAB / 'cellpy_biol.mpr'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cellpy.get(str(ECLAB / "cellpy_biol.mpr"), instrument="biologics_mpr")


def test_cellpy_biol_capacity_and_dqdv_peaks_match_cellpy(cellpy_biol):
    """21 h of delithiation with rests and impedance sweeps: one half-cycle (the sweeps'
    alternating current moves no charge by EC-Lab's counter, so it splits nothing); its
    capacity equals cellpy's summary, its dQ/dV peaks lie within 5 mV of cellpy's ICA on the
    same rows (cellpy's default 10 mV full width, ours the same)."""
    from cellpy.utils import ica

    rows = read_rows(ECLAB / "cellpy_biol.mpr")
    (h,) = track(rows["t"], rows["Ewe"], rows["Q"], piece=5000)
    summary = cellpy_biol.data.summary
    theirs = float(summary["charge_capacity"].iloc[0] + summary["discharge_capacity"].iloc[0])
    assert h.capacity_mAh == pytest.approx(theirs, rel=1e-3)
    inside = (rows["t"] >= h.t_start) & (rows["t"] <= h.t_end) & (rows["I"] > REST_MA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v, curve = ica.dqdv_np(rows["Ewe"][inside], rows["Q"][inside], post_normalization=False)
    theirs_peaks = [p.voltage_V for p in peaks(np.asarray(v), np.asarray(curve), 0.05)]
    ours = [p.voltage_V for p in h.peaks]
    assert len(ours) == len(theirs_peaks) == 3
    for a, b in zip(ours, theirs_peaks, strict=True):
        assert abs(a - b) < 0.005, (ours, theirs_peaks)


# -- dQ/dV on sparse and noisy rows, against a known curve -----------------------------------
def _two_plateau_cell(every_s: float, noise_V: float, seed: int = 0):
    """A cell whose dQ/dV is known: Q(V) = two logistic steps at 3.70 V and 3.95 V (widths
    10 and 15 mV, 60 % / 40 % of 1 mAh), charged at 1 mA; rows every ``every_s`` (30 s at
    1C: 120 rows a half-cycle. At 60 s, 60 rows, the first peak lands 5.4 mV off)."""
    grid = np.linspace(3.4, 4.3, 20001)
    q_of_v = 0.6 / (1 + np.exp(-(grid - 3.70) / 0.010)) + 0.4 / (1 + np.exp(-(grid - 3.95) / 0.015))
    t = np.arange(0.0, 3600.0 + every_s, every_s)
    q = np.minimum(t / 3600.0, q_of_v[-1] - 1e-6) + 1e-4
    v = np.interp(q, q_of_v, grid)
    rng = np.random.default_rng(seed)
    return t, v + rng.normal(0, noise_V, len(t)), q


@pytest.mark.parametrize("every_s", [1.0, 10.0, 30.0])
@pytest.mark.parametrize("noise_V", [0.0, 0.001])
def test_dqdv_peaks_found_within_5_mV_on_sparse_noisy_rows(every_s, noise_V):
    t, v, q = _two_plateau_cell(every_s, noise_V)
    (h,) = track(t, v, q)
    big = sorted(h.peaks, key=lambda p: -p.height_mAh_V)[:2]
    assert sorted(p.voltage_V for p in big) == pytest.approx([3.70, 3.95], abs=0.005)
    assert h.capacity_mAh == pytest.approx(q[-1] - q[0], rel=1e-9)
    # the curve carries the charge: its integral is the capacity
    v_bins, curve = np.asarray(h.dqdv_V), np.asarray(h.dqdv_mAh_V)
    assert np.trapezoid(curve, v_bins) == pytest.approx(h.capacity_mAh, rel=0.01)


def test_constant_voltage_hold_counts_in_capacity_not_in_dqdv():
    t = np.arange(0.0, 200.0)
    v = np.where(t < 100, 3.5 + t * 0.005, 4.0)
    q = t / 3600.0 * 0.5
    cv = t >= 100
    (h,) = track(t, v, q, cv=cv)
    assert h.capacity_mAh == pytest.approx(q[-1], rel=1e-9)
    curve = np.asarray(h.dqdv_mAh_V)
    # the CC part: 0.5 mA over 5 mV/s -> 0.0278 mAh/V; no spike at the 4.0 V hold
    assert curve.max() < 0.05
    assert not any(abs(p.voltage_V - 4.0) < 0.01 for p in h.peaks)


def test_a_brief_opposite_pulse_does_not_end_the_half_cycle():
    """A 10 s current-interrupt pulse against a 1 h charge: 0.3 % of its charge, folded in."""
    t = np.arange(0.0, 3600.0)
    i = np.where((t > 1800) & (t < 1810), -1.0, 1.0)
    q = np.concatenate([[0.0], np.cumsum(i[1:]) / 3600.0])
    v = 3.5 + q
    (h,) = track(t, v, q)
    assert h.direction == CHARGE
    assert h.capacity_mAh == pytest.approx(q[-1], rel=1e-9)


def test_incremental_equals_all_at_once():
    t, v, q = _two_plateau_cell(1.0, 0.001)
    # charge, rest, discharge, twice
    t2 = np.concatenate([t, t[-1] + 600 + t])
    v2 = np.concatenate([v, v[::-1]])
    q2 = np.concatenate([q, q[::-1]])
    whole = track(t2, v2, q2)
    rng = np.random.default_rng(3)
    tr = HalfCycleTracker(CyclingSettings(), REST_MA)
    pieces, k = [], 0
    while k < len(t2):
        n = int(rng.integers(1, 400))
        pieces += tr.add(t2[k : k + n], v2[k : k + n], q2[k : k + n])
        k += n
    pieces += tr.finish()
    assert [(h.index, h.direction, h.capacity_mAh, h.complete) for h in pieces] == [
        (h.index, h.direction, h.capacity_mAh, h.complete) for h in whole
    ]
    assert pieces[1].peaks == whole[1].peaks


def test_dqdv_keeps_every_interval_charge():
    rng = np.random.default_rng(5)
    v0 = rng.uniform(3.0, 4.0, 500)
    v1 = v0 + rng.normal(0, 0.02, 500) * (rng.random(500) > 0.2)  # 20 % flat intervals
    dq = rng.uniform(0, 1e-3, 500)
    _v, curve = dqdv(v0, v1, dq, 0.002, 0.0)
    assert curve.sum() * 0.002 == pytest.approx(dq.sum(), rel=1e-9)


# -- resistance against the cell model's own R0 ----------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ohmic_resistance_within_5_percent_of_the_cell_models_and_says_how_sure(preset):
    """1C pulses of 60 s with 120 s rests, rows every second with the preset's noise: the
    mean of the extrapolated R0 within 5 % of the model's, and each step's stated 1-sigma
    within a factor 1.5 of the spread the steps actually show."""
    p = PRESETS[preset]
    cell, rng = Cell(p, 0.3), np.random.default_rng(11)
    rows, t = [], 0.0
    for _ in range(100):
        for i_mA, seconds in ((p.capacity_mAh, 60), (0.0, 120)):
            for _ in range(seconds):
                v = cell.step_current(i_mA, 1.0)
                t += 1.0
                i_read = i_mA * (1 + rng.normal(0, p.noise_rel_I)) + rng.normal(0, p.noise_abs_mA)
                rows.append((t, v + rng.normal(0, p.noise_V), i_read))
    a = np.array(rows)
    sr, steps = StepResistance(ResistanceSettings()), []
    for k in range(0, len(a), 37):
        chunk = a[k : k + 37]
        steps += sr.add(chunk[:, 0], chunk[:, 1], chunk[:, 2], np.full(len(chunk), 0.5))
    steps += sr.finish()
    assert len(steps) == 199  # every step but the last rest's end
    r0 = np.array([s.r_0_ohm for s in steps])
    assert all(s.r_0_rows == 3 for s in steps)
    assert np.mean(r0) == pytest.approx(p.r0_ohm, rel=0.05)
    stated = np.median([s.r_0_unc_ohm for s in steps])
    assert 1 / 1.5 < np.std(r0) / stated < 1.5
    # a second later the RC pairs have begun to charge: more than R0, less than all three
    r1 = np.median([s.r_at_s["1"] for s in steps])
    assert p.r0_ohm * 1.02 < r1 < p.r0_ohm + p.r1_ohm + p.r2_ohm


def test_impedance_sweep_and_cv_taper_give_no_steps():
    """A current that never holds (a sinusoid; a decaying CV current) is not a step."""
    t = np.arange(0.0, 300.0, 0.5)
    sweep = 0.1 * np.sin(2 * np.pi * t / 3.0)
    taper = 0.5 * np.exp(-t / 40.0)
    for i in (sweep, taper):
        sr = StepResistance(ResistanceSettings())
        found = sr.add(t, 3.7 + 0.01 * i, i, np.zeros(len(t))) + sr.finish()
        assert found == []


def test_peaks_keep_their_names_as_they_drift_and_say_how_flat_they_are():
    """Three cycles of the two-plateau cell, the 3.70 V plateau moving up 10 mV a cycle (as
    growing polarisation moves it): one feature each, with its shift."""
    halves = []
    for n in range(3):
        t, v, q = _two_plateau_cell(10.0, 0.0)
        (h,) = track(t, v + 0.010 * n * (v < 3.8), q)
        halves.append(h)
    from operando.analysis.cycling import track_peaks

    found = track_peaks(halves)
    first = [p for p in found if p.voltage_V < 3.8]
    assert [p.feature for p in first] == ["charge 1"] * 3
    assert [round(p.shift_V, 3) for p in first] == pytest.approx([0.0, 0.010, 0.020], abs=0.002)
    # the sharper (10 mV wide) plateau is better placed than the 15 mV one
    by_v = sorted(halves[0].peaks, key=lambda p: p.voltage_V)
    assert 0 < by_v[0].flat_V < by_v[1].flat_V
