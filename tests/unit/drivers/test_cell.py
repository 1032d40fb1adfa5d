"""The cell model and cycling controller: plateaus, cut-offs, CV taper, charge balance."""

from __future__ import annotations

import numpy as np
import pytest
from operando.drivers.sim.cell import PRESETS, Cell
from operando.drivers.sim.cycling import (
    Controller,
    ProtocolConfigError,
    parse_protocol,
)

from operando.protocol import MODE_CC, MODE_CV, MODE_OCV


def run(preset: str, steps: list[dict], seconds: float, dt: float = 1.0, soc=None):
    cell = Cell(PRESETS[preset], soc)
    ctl = Controller(cell, parse_protocol(steps))
    out = [ctl.advance(dt) for _ in range(int(seconds / dt))]
    return cell, ctl, out


# LFP: one two-phase plateau; LNMO: the Ni2+/3+ and Ni3+/4+ plateaus ~50 mV apart.
@pytest.mark.parametrize(
    ("preset", "lo", "hi", "spread"),
    [("peo-lfp", 3.38, 3.45, 0.03), ("lnmo-liquid", 4.66, 4.80, 0.08)],
)
def test_plateau_voltage_at_half_charge(preset, lo, hi, spread):
    p = PRESETS[preset]
    assert lo <= float(p.ocv(0.5)) <= hi
    v = p.ocv(np.linspace(0.2, 0.8, 61))  # flat over the middle 60 % of SOC
    assert np.ptp(v) < spread


def test_ocv_curves_rise_with_soc():
    for p in PRESETS.values():
        v = p.ocv(np.linspace(0, 1, 201))
        assert np.all(np.diff(v) >= -1e-9), p.name


def test_cc_charge_stops_at_cut_off():
    _cell, _ctl, out = run(
        "peo-nmc",
        [{"type": "cc", "c_rate": 0.5, "until_V": 4.2}, {"type": "rest", "duration_s": 600}],
        4 * 3600,
    )
    v = np.array([s.v for s in out])
    modes = np.array([s.mode for s in out])
    first_rest = int(np.argmax(modes == MODE_OCV))
    assert 4.2 <= v[first_rest - 1] < 4.21  # the crossing sample ends the step
    assert np.all(v[: first_rest - 1] < 4.2)
    assert v[first_rest + 100] < 4.2  # relaxes once the current stops


def test_cv_hold_tapers_the_current():
    _, _, out = run(
        "peo-nmc", [{"type": "cv", "voltage_V": 4.0, "until_mA": 0.0, "max_s": 3600}], 3600, soc=0.3
    )
    i = np.array([s.i_mA for s in out])
    v = np.array([s.v for s in out])
    assert np.allclose(v, 4.0, atol=2e-3)
    assert i[0] > 0 and np.all(np.diff(i[5:]) <= 1e-9) and i[-1] < 0.2 * i[5]
    assert all(s.mode == MODE_CV for s in out)


def test_full_cycle_returns_charge_and_counts_cycles():
    steps = [
        {"type": "cc", "c_rate": 1.0, "until_V": 4.2},
        {"type": "cc", "c_rate": -1.0, "until_V": 3.0},
        {"type": "loop", "to_step": 0, "repeat": 1},
    ]
    cell, ctl, out = run("peo-nmc", steps, 6 * 3600, dt=2.0)
    i = np.array([s.i_mA for s in out])
    q = np.cumsum(i) * 2.0 / 3600.0
    assert q[-1] / cell.p.capacity_mAh == pytest.approx(cell.state.soc, abs=1e-9)
    assert {s.cycle for s in out} == {0, 1} and ctl.finished


def test_gitt_pulses_and_rests():
    steps = [{"type": "gitt", "c_rate": 0.2, "pulse_s": 60, "rest_s": 240, "pulses": 3}]
    _, ctl, out = run("peo-lfp", steps, 1200, soc=0.3)
    modes = [s.mode for s in out[:900]]
    assert modes[:60] == [MODE_CC] * 60 and modes[60:300] == [MODE_OCV] * 240
    assert sum(m == MODE_CC for m in modes) == 180 and ctl.finished


def test_hold_pause_resume_and_jump():
    cell = Cell(PRESETS["peo-nmc"], 0.2)
    ctl = Controller(
        cell,
        parse_protocol(
            [{"type": "cc", "c_rate": 0.5, "until_V": 4.2}, {"type": "rest", "duration_s": 100}]
        ),
    )
    for _ in range(100):
        ctl.advance(1.0)
    v = ctl.hold()
    held = [ctl.advance(1.0) for _ in range(300)]
    assert all(s.mode == MODE_CV and abs(s.v - v) < 1e-6 for s in held)
    ctl.pause()
    assert ctl.advance(1.0).mode == MODE_OCV
    ctl.resume()
    assert ctl.advance(1.0).mode == MODE_CC and ctl.step == 0
    ctl.jump(1)
    assert ctl.advance(1.0).mode == MODE_OCV
    with pytest.raises(ValueError, match="out of range"):
        ctl.jump(5)


def test_protocol_errors_name_the_step():
    with pytest.raises(ProtocolConfigError, match=r"protocol\[0\]: give exactly one"):
        parse_protocol([{"type": "cc", "until_V": 4.2}])
    with pytest.raises(ProtocolConfigError, match="Invalid value 'ccc'"):
        parse_protocol([{"type": "ccc"}])
    with pytest.raises(ProtocolConfigError, match="to_step must name an earlier step"):
        parse_protocol([{"type": "rest", "duration_s": 1}, {"type": "loop", "to_step": 3}])
