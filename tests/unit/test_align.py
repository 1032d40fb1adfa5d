"""Alignment is pure: exact window means, SOC, partial windows, order independence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.align import PotentiostatHistory, align_window
from operando.protocol import MODE_CC, MODE_OCV


def history(t, ewe, i, mode=None, step=None, q=None, current_step_mA=0.01):
    h = PotentiostatHistory(current_step_mA=current_step_mA)
    n = len(t)
    h.extend(
        np.asarray(t, float),
        np.asarray(ewe, float),
        np.asarray(i, float),
        np.full(n, MODE_CC, np.int8) if mode is None else np.asarray(mode, np.int8),
        np.zeros(n, np.int32) if step is None else np.asarray(step, np.int32),
        np.zeros(n, np.int32),
        q,
    )
    return h


def reference_mean(t, y, a, b):
    """Independent: integrate the interpolant on a fine grid."""
    grid = np.linspace(a, b, 200_001)
    return float(np.trapezoid(np.interp(grid, t, y), grid) / (b - a))


def test_linear_ramp_mean_is_exact_midpoint():
    t = np.arange(0, 100.0, 0.1)
    h = history(t, 3.0 + 0.01 * t, np.ones_like(t))
    al = align_window(h.record(), 12.34, 56.78, capacity_mAh=1.0)
    assert al.ewe_mean_V == pytest.approx(3.0 + 0.01 * (12.34 + 56.78) / 2, abs=1e-12)
    assert al.ewe_min_V == pytest.approx(3.1234) and al.ewe_max_V == pytest.approx(3.5678)
    assert not al.partial and al.coverage == 1.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.01, 5.0), min_size=2, max_size=60),
    st.lists(st.floats(2.5, 4.5), min_size=60, max_size=60),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_window_mean_matches_independent_integral(dts, volts, fa, fb):
    t = np.cumsum(dts)
    y = np.asarray(volts[: len(t)])
    a, b = sorted((t[0] + fa * (t[-1] - t[0]), t[0] + fb * (t[-1] - t[0])))
    if b - a < 1e-6:
        return
    al = align_window(history(t, y, np.zeros_like(t)).record(), a, b, capacity_mAh=1.0)
    mean, lo, hi = al.ewe_mean_V, al.ewe_min_V, al.ewe_max_V
    assert mean == pytest.approx(reference_mean(t, y, a, b), abs=1e-6)
    assert lo - 1e-12 <= mean <= hi + 1e-12


def test_soc_from_coulomb_counting_and_from_q_column():
    t = np.arange(0, 3600.0 + 1, 1.0)
    i = np.full_like(t, 0.5)  # 0.5 mA for 1 h = 0.5 mAh
    h = history(t, np.full_like(t, 3.7), i)
    al = align_window(h.record(), 3000, 3600, capacity_mAh=2.0, initial_soc=0.1)
    assert al.soc_end == pytest.approx(0.1 + 0.5 / 2.0, rel=1e-9)
    assert al.charge_mAh == pytest.approx(0.5 * 600 / 3600, rel=1e-9)
    hq = history(t, np.full_like(t, 3.7), i, q=np.full_like(t, 0.3))  # instrument's own Q
    assert align_window(hq.record(), 3000, 3600, capacity_mAh=1.0).soc == pytest.approx(0.3)


def test_out_of_order_batches_align_like_in_order_ones():
    rng = np.random.default_rng(1)
    t = np.arange(0, 600.0, 0.5)
    ewe, i = 3.5 + rng.normal(0, 0.01, t.size), rng.normal(0.2, 0.05, t.size)
    ordered = history(t, ewe, i)
    shuffled = PotentiostatHistory()
    chunks = np.array_split(np.arange(t.size), 12)
    for k in rng.permutation(len(chunks)):
        c = chunks[k]
        shuffled.extend(
            t[c],
            ewe[c],
            i[c],
            np.full(c.size, MODE_CC, np.int8),
            np.zeros(c.size, np.int32),
            np.zeros(c.size, np.int32),
        )
    a1 = align_window(ordered.record(), 100, 400, capacity_mAh=1.0)
    a2 = align_window(shuffled.record(), 100, 400, capacity_mAh=1.0)
    assert a2.ewe_mean_V == pytest.approx(a1.ewe_mean_V, abs=1e-12)
    assert a2.soc == pytest.approx(a1.soc, abs=1e-12)


def test_partial_window_is_marked_and_covered_fraction_reported():
    t = np.arange(0, 100.0)
    h = history(t, np.full_like(t, 3.0), np.zeros_like(t))
    al = align_window(h.record(), 50, 150, capacity_mAh=1.0)
    assert al.partial and al.coverage == pytest.approx(0.49, abs=0.011)


def test_per_point_voltage_and_time_since_current_change():
    t = np.arange(0, 200.0)
    i = np.where(t < 100, 1.0, 0.0)
    mode = np.where(t < 100, MODE_CC, MODE_OCV)
    step = np.where(t < 100, 0, 1)
    h = history(t, 3.0 + 0.001 * t, i, mode=mode, step=step)
    pts = np.array([120.5, 150.0, 999.0])
    al = align_window(h.record(), 120, 180, capacity_mAh=1.0, point_t=pts)
    assert al.ewe_points_V[:2] == pytest.approx([3.1205, 3.15])
    assert math.isnan(al.ewe_points_V[2])
    assert al.t_since_current_change_s == pytest.approx(150 - 100)
    assert (al.mode, al.step) == (MODE_OCV, 1) and not al.mode_changed


def test_history_memory_is_bounded():
    h = PotentiostatHistory(retain_s=100.0)
    for k in range(50):
        t = np.arange(k * 100.0, (k + 1) * 100.0, 0.1)
        h.extend(
            t,
            np.full_like(t, 3.0),
            np.ones_like(t),
            np.full(t.size, 1, np.int8),
            np.zeros(t.size, np.int32),
            np.zeros(t.size, np.int32),
        )
    assert len(h) < 4000
    # charge keeps counting across trims: 1 mA for 5000 s
    assert h.record().q[-1] == pytest.approx(5000 / 3600, rel=1e-3)
