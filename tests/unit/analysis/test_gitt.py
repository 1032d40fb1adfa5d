"""GITT and ICI against a cell whose diffusion coefficient is known: Li diffusing in a slab
(finite volumes, implicit Euler; written here, not by the product), titrated by current pulses
or cycled with short interruptions. The product's pulses and interruptions recover D within
10 % (issue #23) and name the assumptions that fail."""

from __future__ import annotations

import numpy as np
import pytest
from operando.drivers.sim.cell import ocp_lfp_afshar2017, ocp_nmc_chen2020
from scipy.linalg import solve_banded

from operando.analysis.gitt import GittSettings, PulseTracker
from operando.analysis.ici import InterruptionTracker

F = 96485.0
L_CM, VM, AREA, MOLAR_MASS = 5e-4, 20.0, 1.0, 96.9  # 5 um slab of an NMC-like host
MOLES = AREA * L_CM / VM
MASS_MG = MOLES * MOLAR_MASS * 1e3
R0_OHM = 50.0


def titration(
    d_cm2_s,
    pulse_s,
    rest_s,
    pulses,
    i_mA,
    *,
    cells=200,
    sub=4,
    y0=0.9,
    noise=0.0,
    seed=0,
    ocp=ocp_nmc_chen2020,
):
    """Rows (t, Ewe, I) of a GITT on the slab: Li leaves through the face at x = L on charge
    (I > 0); Ewe = OCV(surface stoichiometry) + I R0; rows every second, ``sub`` steps each."""
    h, dt = L_CM / cells, 1.0 / sub
    k = d_cm2_s * dt / h**2
    ab = np.zeros((3, cells))
    ab[0, 1:], ab[2, :-1], ab[1, :] = -k, -k, 1 + 2 * k
    ab[1, 0] = ab[1, -1] = 1 + k  # no flux through either face but by the current
    y = np.full(cells, y0)
    rng = np.random.default_rng(seed)
    rows, t = [], 0.0
    steps = [(0.0, 60)] + [(i_mA, pulse_s), (0.0, rest_s)] * pulses  # at rest first
    for current, seconds in steps:
        for _ in range(int(seconds)):
            for _ in range(sub):
                rhs = y.copy()
                rhs[-1] -= current * 1e-3 * VM / (F * AREA * h) * dt
                y = solve_banded((1, 1), ab, rhs)
            t += 1.0
            v = float(ocp(np.array(y[-1]))) + current * 1e-3 * R0_OHM
            rows.append((t, v + rng.normal(0, noise) if noise else v, current))
    return np.array(rows)


def run(rows, tracker=PulseTracker, chunk=97, **settings):
    s = GittSettings(
        molar_mass_g_mol=MOLAR_MASS, molar_volume_cm3_mol=VM, electrode_area_cm2=AREA, **settings
    )
    t = tracker(s, 0.005, MASS_MG)
    out = []
    for k in range(0, len(rows), chunk):
        part = rows[k : k + chunk]
        out += t.add(part[:, 0], part[:, 1], part[:, 2], np.full(len(part), 0.5))
    return out + t.finish()


@pytest.mark.parametrize("d_cm2_s", [1e-10, 3e-10])
def test_diffusion_coefficient_within_10_percent_of_the_slabs(d_cm2_s):
    """Pulses of 60 s at C/10 (tau D / L^2 = 0.024 and 0.07), rests long enough to relax."""
    capacity_mA = MOLES * F / 3.6  # 1C, mA
    rest_s = 6 * 4 * L_CM**2 / (np.pi**2 * d_cm2_s)
    rows = titration(d_cm2_s, 60, rest_s, 6, capacity_mA / 10)
    pulses = run(rows)
    assert len(pulses) == 6
    for p in pulses:
        assert p.d_cm2_s == pytest.approx(d_cm2_s, rel=0.10), p
        assert p.notes == [], p
        assert p.tau_s == pytest.approx(60, abs=1.01)
        assert p.delta_es_V > 0 and p.delta_et_V > 0  # Li out of the host: its OCV rises
    # the equilibrium points climb the OCV as Li leaves
    ocv = [p.ocv_after_V for p in pulses]
    assert ocv == sorted(ocv)


def test_a_long_pulse_and_a_short_rest_are_named():
    d = 1e-10
    rows = titration(d, 900, 300, 3, MOLES * F / 3.6 / 10)
    notes = {n for p in run(rows) for n in p.notes}
    assert {"pulse long against L^2/D", "rest not relaxed"} <= notes


def test_without_the_material_inputs_the_pulses_still_stand():
    rows = titration(1e-10, 60, 3000, 2, MOLES * F / 3.6 / 10)
    tracker = PulseTracker(GittSettings(), 0.005, None)
    found = tracker.add(rows[:, 0], rows[:, 1], rows[:, 2], np.zeros(len(rows))) + tracker.finish()
    assert len(found) == 2 and all(np.isnan(p.d_cm2_s) for p in found)
    assert all(p.delta_et_V != 0 and p.sqrt_t_r2 > 0.99 for p in found)


def test_a_half_cycle_between_two_rests_is_not_a_titration_pulse():
    """A 50 min discharge between rests moves the SOC by 80 %: not a pulse (with the SOC
    known); Weppner and Huggins' linearisation does not hold over it."""
    rows = titration(1e-10, 60, 3000, 1, MOLES * F / 3.6 / 10)
    soc = np.full(len(rows), 0.5)  # a titration step: the SOC barely moves
    big = np.where(rows[:, 0] <= 60, 0.9, 0.1)  # ... or 80 % of it over the pulse
    for moved, expected in ((soc, 1), (big, 0)):
        tracker = PulseTracker(GittSettings(), 0.005, None)
        found = tracker.add(rows[:, 0], rows[:, 1], rows[:, 2], moved) + tracker.finish()
        assert len(found) == expected


@pytest.mark.parametrize(("pulse_s", "rest_s"), [(60, 6000), (900, 300)])
def test_equilibrium_points_come_from_the_relaxation_with_an_honest_sigma(pulse_s, rest_s):
    """Each titration point is where its rest relaxes to (the relaxation fits' asymptote),
    within 2 sigma of the slab's true equilibrium: the OCV at its mean stoichiometry. A rest
    too short to relax (300 s after 900 s) is named, and its sigma covers the models'
    disagreement (3 mV), not only one model's (0.05 mV); a relaxed rest knows it to 0.02 mV."""
    i_mA = MOLES * F / 3.6 / 10
    pulses = run(titration(1e-10, pulse_s, rest_s, 3, i_mA))
    assert len(pulses) == 3
    step = i_mA * 1e-3 * pulse_s / (F * MOLES)  # stoichiometry moved by one pulse
    for k, p in enumerate(pulses):
        truth = float(ocp_nmc_chen2020(np.array(0.9 - (k + 1) * step)))
        assert abs(p.ocv_after_V - truth) < 2 * p.ocv_unc_V, (p, truth)
        assert ("rest not relaxed" in p.notes) == (rest_s < 1000)
        assert p.ocv_unc_V < (5e-3 if rest_s < 1000 else 1e-4)


def test_a_short_interruption_is_not_a_titration_rest():
    """10 s without current between two minutes of current (an ICI protocol): no pulse."""
    i_mA = MOLES * F / 3.6 / 10
    rows = titration(1e-10, 120, 10, 4, i_mA)
    assert run(rows) == []


C10_MA = MOLES * F / 3.6 / 10


@pytest.mark.parametrize("d_cm2_s", [1e-10, 3e-10, 1e-9])
def test_ici_recovers_the_slabs_diffusion_coefficient_and_resistance(d_cm2_s):
    """Charging at C/10 for 300 s, then 10 s without current, ten times (Chien et al.'s
    protocol): every interruption once the current has run long against L^2/D gives D within
    10 % and R0 within 5 %; the ones before are named "current not yet steady" (their OCV
    slope is still the transient's: 3.4 times D at 1e-10)."""
    rows = titration(d_cm2_s, 300, 10, 10, C10_MA, cells=800, sub=8)
    found = run(rows, InterruptionTracker)
    assert len(found) == 9  # the last rest is not followed by current: no interruption
    trusted = [x for x in found if not x.notes]
    assert len(trusted) >= 5
    for x in found:
        assert x.notes in ([], ["current not yet steady"]), x
        assert x.duration_s == pytest.approx(10) and x.points == 10
        assert x.r_ohm == pytest.approx(R0_OHM, rel=0.05), x
    for x in trusted:
        assert x.d_cm2_s == pytest.approx(d_cm2_s, rel=0.10), x
        assert x.dedt_V_s > 0 and x.k_ohm_s05 > 0  # charging: the OCV rises
    ratio = [x.d_cm2_s / d_cm2_s for x in trusted]
    r = [x.r_ohm for x in found]
    print(  # the error table in docs/decisions/0012 (pytest -s)
        f"ICI D={d_cm2_s:.0e}: {len(found)} interruptions, {len(trusted)} trusted, D/truth "
        f"{min(ratio):.3f}..{max(ratio):.3f}, R {min(r):.1f}..{max(r):.1f} ohm, the first "
        f"one's D/truth {found[0].d_cm2_s / d_cm2_s:.2f}"
    )
    # the ones not steady are the first ones, and they are far off
    flagged = [x for x in found if x.notes]
    assert found[: len(flagged)] == flagged
    if flagged:
        assert flagged[0].d_cm2_s > 1.2 * d_cm2_s


def test_ici_sigma_is_honest_under_noise():
    """0.2 mV of noise at 1 Hz (a potentiostat's): one interruption's D is known to about
    25 %, and its 1-sigma says so. Over eight seeds, R and D against the slab's truth: at
    least 60 % within 1 sigma and 85 % within 2 sigma (a Gaussian's 68 and 95 %; D's sigma is
    first order in a squared ratio, a little short in the tails, and the method's own -4 %
    is in these errors)."""
    d = 3e-10
    z_d, z_r = [], []
    for seed in range(8):
        rows = titration(d, 600, 10, 10, C10_MA, noise=2e-4, seed=seed, cells=800, sub=8)
        for x in run(rows, InterruptionTracker):
            if not x.notes:
                z_d.append(abs(x.d_cm2_s - d) / x.d_unc_cm2_s)
                z_r.append(abs(x.r_ohm - R0_OHM) / x.r_unc_ohm)
    assert len(z_d) >= 60
    print(
        f"ICI under 0.2 mV noise: {len(z_d)} trusted interruptions; within 1 / 2 sigma: D "
        f"{np.mean(np.array(z_d) < 1):.2f} / {np.mean(np.array(z_d) < 2):.2f}, R "
        f"{np.mean(np.array(z_r) < 1):.2f} / {np.mean(np.array(z_r) < 2):.2f}"
    )
    for z in (np.array(z_d), np.array(z_r)):
        assert (z < 1).mean() >= 0.6 and (z < 2).mean() >= 0.85, np.round(np.sort(z), 2)


def test_ici_results_do_not_depend_on_how_rows_arrive():
    rows = titration(3e-10, 300, 10, 4, C10_MA)
    by_row = run(rows, InterruptionTracker, chunk=1)
    assert len(by_row) == 3
    assert run(rows, InterruptionTracker, chunk=len(rows)) == by_row
    assert run(rows, InterruptionTracker, chunk=97) == by_row
    # runs of current longer than the rows a slope is taken over (1200)
    rows = titration(3e-10, 3000, 10, 3, C10_MA / 10)
    by_row = run(rows, InterruptionTracker, chunk=1)
    assert len(by_row) == 2
    assert run(rows, InterruptionTracker, chunk=len(rows)) == by_row


def test_titration_rests_and_reversals_are_not_interruptions():
    """A GITT's hour-long rests are no interruption; nor is 10 s at rest between charge and
    discharge (the current does not resume)."""
    assert run(titration(1e-10, 60, 3000, 3, C10_MA), InterruptionTracker) == []
    rows = titration(3e-10, 300, 10, 2, C10_MA)
    rows[rows[:, 0] > 370, 2] *= -1  # after the interruption, the current reverses
    assert run(rows, InterruptionTracker) == []


def test_ici_without_the_material_inputs_still_gives_r_and_k():
    rows = titration(3e-10, 300, 10, 4, C10_MA)
    t = InterruptionTracker(GittSettings(), 0.005, None)
    found = t.add(rows[:, 0], rows[:, 1], rows[:, 2], np.zeros(len(rows)))
    assert len(found) == 3
    for x in found:
        assert np.isnan(x.d_cm2_s) and np.isnan(x.t_D_over_L2)
        assert x.r_ohm == pytest.approx(R0_OHM, rel=0.05) and x.k_ohm_s05 > 0


def test_ici_on_a_plateau_says_its_slope_is_not_resolved():
    """LiFePO4's flat OCV (20 mV over the whole composition) under 0.2 mV of noise: dE/dt
    under the current is not told from zero, and D from it would mean nothing: named."""
    rows = titration(3e-10, 300, 10, 8, C10_MA, y0=0.5, noise=2e-4, ocp=ocp_lfp_afshar2017)
    found = run(rows, InterruptionTracker)
    assert len(found) == 7
    unresolved = sum("dE/dt not resolved" in x.notes for x in found)
    assert unresolved >= 5, [x.notes for x in found]
