"""The science against known truth: simulated scans from known fractions, dose and tau."""

from __future__ import annotations

import numpy as np
import pytest
from operando.drivers.sim.cell import PRESETS, Cell
from operando.drivers.sim.cycling import Controller, parse_protocol
from operando.drivers.sim.sample import MODELS, lag, photoreduce
from operando.drivers.sim.sim_spectrometer import dose_per_point
from operando.drivers.sim.spectra import (
    EDGES,
    Realism,
    export_references,
    references,
    rixs_axes,
    rixs_map,
    synthesize_xas,
)

from operando.analysis.damage import (
    DOSE_CHECK,
    DamageDetector,
    DamageSettings,
    DamageSuspicion,
    DamageVerdict,
    ScanSummary,
    settled,
)
from operando.analysis.dose import scan_dose_Gy
from operando.analysis.lcf import FitError, fit_spectrum, model_curve
from operando.analysis.normalize import NormalizationError, normalize
from operando.analysis.references import ReferenceError, References
from operando.analysis.relaxation import fit_relaxation
from operando.analysis.rest import RestCriterion
from operando.analysis.rixs import MapAccumulator, reduce_map
from operando.analysis.series import ROTATIONAL_AMBIGUITY, mcr_als, svd_rank
from operando.protocol import MODE_CC, MODE_OCV

ALL_ON = Realism()  # noise 1 %, I0 drift, sloped background, energy drift, self-absorption


def refs_for(edge: str) -> References:
    ed = EDGES[edge]
    return References.from_mapping(ed.axis(), references(edge), "simulator")


def scan(edge, f_surf, f_bulk, rng, shift=0.0, realism=ALL_ON):
    """One simulated scan with constant fractions; returns energy and channel counts."""
    ed = EDGES[edge]
    e = ed.axis()
    r = references(edge, e - shift)
    mat = np.column_stack([r[v] for v in ed.names])
    n = len(e)
    fs = np.tile([f_surf[v] for v in ed.names], (n, 1))
    fb = np.tile([f_bulk[v] for v in ed.names], (n, 1))
    return e, synthesize_xas(e, np.zeros(n), mat, fs, fb, realism, rng)


def fit_channel(edge, e, ch, name, refs):
    y = ch[name] / ch["I0"]
    sigma = y * np.sqrt(1 / ch[name] + 1 / ch["I0"])
    if name == "TFY":
        return fit_spectrum(e, y, refs, sigma=sigma, self_absorption=True)
    return fit_spectrum(e, y, refs, fit_range=EDGES[edge].fit_range, sigma=sigma)


def cycle_states(preset: str, hours: float, dt: float = 30.0):
    """(soc, voltage) along a full cycle of the preset's cell."""
    steps = [
        {"type": "cc", "c_rate": 1.0, "until_V": PRESETS[preset].v_max - 0.05},
        {"type": "cc", "c_rate": -1.0, "until_V": PRESETS[preset].v_min + 0.05},
    ]
    cell = Cell(PRESETS[preset])
    ctl = Controller(cell, parse_protocol(steps))
    out = []
    for _ in range(int(hours * 3600 / dt)):
        s = ctl.advance(dt)
        out.append((cell.state.soc, s.v))
    return out


@pytest.mark.parametrize(
    ("preset", "chemistry", "edge"), [("na-mno2", "na044mno2", "Mn-L"), ("peo-lfp", "lfp", "Fe-L")]
)
def test_fractions_within_002_of_truth_over_a_full_cycle(preset, chemistry, edge):
    rng = np.random.default_rng(7)
    model, refs = MODELS[chemistry], refs_for(edge)
    states = cycle_states(preset, 2.2)[::6]
    worst = {"TEY": 0.0, "TFY": 0.0}
    for k, (soc, volt) in enumerate(states):
        truth = {"TEY": model.surface(edge, soc, volt), "TFY": model.bulk(edge, soc, volt)}
        shift = 0.05 * k / len(states) + rng.uniform(-0.2, 0.2)  # drift + calibration offset
        e, ch = scan(edge, truth["TEY"], truth["TFY"], rng, shift)
        for channel in ("TEY", "TFY"):
            fit = fit_channel(edge, e, ch, channel, refs)
            err = max(abs(fit.fractions[v] - truth[channel][v]) for v in refs.names)
            worst[channel] = max(worst[channel], err)
            assert abs(fit.shift_eV - shift) < 0.05
    assert worst["TEY"] <= 0.02 and worst["TFY"] <= 0.02, worst
    assert len(states) >= 20


@pytest.mark.parametrize("mu_bg", [24.0, 6.0])
def test_self_absorption_model_removes_the_bulk_bias(mu_bg):
    """Ignoring saturation biases bulk fractions (more the stronger it is); the model fixes it."""
    rng = np.random.default_rng(3)
    f = {"Mn2+": 0.0, "Mn3+": 0.5, "Mn4+": 0.5}
    naive_err, fixed_err = [], []
    for _ in range(6):
        e, ch = scan("Mn-L", f, f, rng, realism=Realism(self_absorption_mu_bg=mu_bg))
        y = ch["TFY"] / ch["I0"]
        naive = fit_spectrum(e, y, refs_for("Mn-L"), fit_range=EDGES["Mn-L"].fit_range)
        fixed = fit_channel("Mn-L", e, ch, "TFY", refs_for("Mn-L"))
        naive_err.append(max(abs(naive.fractions[v] - f[v]) for v in f))
        fixed_err.append(max(abs(fixed.fractions[v] - f[v]) for v in f))
        assert fixed.self_absorption_beta == pytest.approx(mu_bg, rel=0.3)
    assert np.median(naive_err) > 3 * np.median(fixed_err)  # ~0.013 at mu_bg 24
    assert np.median(naive_err) > (0.02 if mu_bg < 10 else 0.008)  # ~0.028 at mu_bg 6
    assert max(fixed_err) < 0.01


def test_uncertainties_and_chi2_are_honest():
    rng = np.random.default_rng(11)
    f = {"Mn2+": 0.2, "Mn3+": 0.3, "Mn4+": 0.5}
    pulls, chi2 = [], []
    for _ in range(60):
        e, ch = scan("Mn-L", f, f, rng, realism=Realism(self_absorption_mu_bg=0))
        fit = fit_channel("Mn-L", e, ch, "TEY", refs_for("Mn-L"))
        pulls.append((fit.fractions["Mn4+"] - 0.5) / fit.uncertainties["Mn4+"])
        chi2.append(fit.chi2_red)
        assert fit.average_valence == pytest.approx(
            sum(fit.fractions[v] * int(v[2]) for v in f), abs=1e-12
        )
    assert 0.8 < np.median(chi2) < 1.5
    assert 0.4 < np.std(pulls) < 2.5  # uncertainties of the right size, not 10x off


def test_fit_errors_name_the_problem():
    refs = refs_for("Mn-L")
    e = np.linspace(600, 610, 50)
    with pytest.raises(FitError, match="usable points"):
        fit_spectrum(e, np.ones(50), refs, fit_range=(637, 647))
    e = np.linspace(560, 700, 1400)
    with pytest.raises(FitError, match="outside the references"):
        fit_spectrum(e, np.ones_like(e), refs, fit_range=(600, 690))


def test_references_from_csv_and_npz(tmp_path):
    csv = export_references("Fe-L", tmp_path / "fe.csv")
    r = References.from_file(csv)
    assert r.names == ("Fe2+", "Fe3+") and list(r.oxidation) == [2.0, 3.0]
    np.savez(
        tmp_path / "fe.npz", energy=r.energy, **{"Fe2+": r.spectra[:, 0], "Fe3+": r.spectra[:, 1]}
    )
    assert References.from_file(tmp_path / "fe.npz").names == ("Fe2+", "Fe3+")
    (tmp_path / "bad.csv").write_text("energy,a,b\n1,2\n")
    with pytest.raises(ReferenceError, match="header names 3 columns"):
        References.from_file(tmp_path / "bad.csv")


def test_lfp_relaxation_tau_within_10_percent():
    """Fractions fitted from simulated scans after a 1C pulse stops recover the model's tau."""
    rng = np.random.default_rng(5)
    model, refs = MODELS["lfp"], refs_for("Fe-L")
    tau = model.bulk_tau_s
    y, soc, t = 0.0, 0.0, 0.0
    while t < 1200:  # 20 min at 1C: the bulk lags the charge
        soc += 10 / 3600
        y = lag(y, soc, 10, tau)
        t += 10
    times, fractions, sigmas = [], [], []
    for k in range(40):  # scans every 75 s over 50 min of rest
        ts = 75.0 * k + 30.0
        yk = lag(y, soc, ts, tau)
        f = model.bulk("Fe-L", yk, 3.4)
        e, ch = scan("Fe-L", f, f, rng)
        fit = fit_channel("Fe-L", e, ch, "TFY", refs)
        times.append(ts)
        fractions.append(fit.fractions["Fe3+"])
        sigmas.append(fit.uncertainties["Fe3+"])
    res = fit_relaxation(
        np.array(times), np.array(fractions), np.array(sigmas), scan_duration_s=70.0
    )
    assert res.tau_s == pytest.approx(tau, rel=0.10)
    assert res.resolved and res.best in ("single", "stretched", "double")


def test_relaxation_says_when_tau_is_unresolved():
    t = np.arange(0, 1200, 120.0)
    y = 0.5 + 0.1 * np.exp(-t / 30.0)
    res = fit_relaxation(
        t, y + np.random.default_rng(0).normal(0, 1e-3, t.size), scan_duration_s=120.0
    )
    assert not res.resolved and "not resolved" in res.note


def test_relaxation_says_when_the_rest_does_not_determine_tau():
    """A drift with no visible decay: every model's tau runs to the fit's bound (a straight
    line), which must not be reported as a time constant."""
    t = np.linspace(0, 1800, 400)
    y = 4.9 - 1e-5 * t + np.random.default_rng(2).normal(0, 1e-4, t.size)
    res = fit_relaxation(t, y)
    assert not res.resolved, (res.best, res.tau_s, res.tau_err_s)
    assert res.note.startswith("tau not determined by 1800 s of rest")
    # a decay the rest does show is still found, with its drift-free tail
    y = 4.88 + 0.012 * np.exp(-t / 120.0) + np.random.default_rng(2).normal(0, 1e-4, t.size)
    res = fit_relaxation(t, y)
    assert res.resolved and res.tau_s == pytest.approx(120.0, rel=0.05)


def test_rest_periods_are_open_circuit_or_no_current():
    """One rest criterion: open circuit, or |I| below the threshold (a CC step at 0 mA, a CV
    hold whose current has decayed), as the relaxation, damage, triggers and dashboard use."""
    t = np.arange(0, 100.0)
    i = np.where((t < 30) | ((t >= 60) & (t < 80)), 1.0, 0.0)
    mode = np.where(t < 90, MODE_CC, MODE_OCV)
    i[95:] = 0.5  # open circuit whatever a noisy current column says
    rest = RestCriterion(current_mA=0.01)
    assert rest.periods(t, mode, i) == [(30, 59), (80, 99)]
    assert not rest(MODE_CC, 0.02) and rest(MODE_CC, 0.005) and rest(MODE_OCV, 3.0)


def test_dose_within_1_percent_of_the_analytic_formula():
    e = EDGES["Mn-L"].axis()
    expected = float(dose_per_point(1e12, 0.3, e, "LiNi0.5Mn1.5O4", 4.4, 0.0025).sum())
    got = scan_dose_Gy(1e12, 0.3 * len(e), e, "LiNi0.5Mn1.5O4", 4.4, 0.0025)
    assert got == pytest.approx(expected, rel=0.01)
    # and by hand at one energy: N E mu / (rho A), mu = 1 / 0.26 um for LNMO at 645 eV
    one = scan_dose_Gy(1e12, 1.0, np.array([645.0]), "LiNi0.5Mn1.5O4", 4.4, 0.01)
    hand = 1e12 * 645 * 1.602176634e-19 / 0.261e-6 / (4400 * 0.01e-6)
    assert one == pytest.approx(hand, rel=0.01)


def _summary(k, fit, e, ch, spot, dose0, dose1, soc=0.5, settled=True, rest_start=0.0):
    y = ch["TEY"] / ch["I0"]
    m = (e >= EDGES["Mn-L"].fit_range[0]) & (e <= EDGES["Mn-L"].fit_range[1])
    sig = y * np.sqrt(1 / ch["TEY"] + 1 / ch["I0"])
    return ScanSummary(
        spectrum_id=k,
        spot=spot,
        edge="Mn-L",
        dose_before_Gy=dose0,
        dose_after_Gy=dose1,
        soc=soc,
        i_mean_mA=0.0,
        mode=MODE_OCV,
        lowest="Mn2+",
        lowest_fraction=fit.fractions["Mn2+"],
        lowest_uncertainty=fit.uncertainties["Mn2+"],
        energy=e[m],
        y=y[m],
        sigma=sig[m],
        t=60.0 * k,
        rest_start=rest_start,
        settled=settled,
    )


BASE = {"Mn2+": 0.05, "Mn3+": 0.45, "Mn4+": 0.50}


def _scan_summary(k, f, refs, rng, spot, d0, d1, **kw):
    e, ch = scan("Mn-L", f, BASE, rng)
    return _summary(k, fit_channel("Mn-L", e, ch, "TEY", refs), e, ch, spot, d0, d1, **kw)


def test_damage_suspected_within_two_scans_of_onset_and_confirmed_by_a_control_spot():
    rng = np.random.default_rng(2)
    # the tests alone: no check by dose (the spot passes 20 MGy before the onset)
    refs, det = refs_for("Mn-L"), DamageDetector(DamageSettings(check_every_scans=0))
    per_scan, critical, rate = 1e7, 5.5e7, 4e-9
    suspected_at, onset = None, None
    for k in range(14):
        d0, d1 = k * per_scan, (k + 1) * per_scan
        f = photoreduce(BASE, "Mn2+", 0.5 * (d0 + d1), critical, rate)
        if onset is None and d1 > critical:
            onset = k
        found = det.add(_scan_summary(k, f, refs, rng, "A1", d0, d1))
        assert not any(isinstance(x, DamageVerdict) for x in found)  # no control yet
        if found and suspected_at is None:
            suspected_at, evidence = k, found[0]
            break
    assert onset is not None and suspected_at is not None
    assert onset <= suspected_at <= onset + 2
    assert isinstance(evidence, DamageSuspicion)
    assert evidence.p_value < 1e-3 and evidence.dose_Gy > 0
    # the orchestrator's control scan: a fresh spot, at the same settled state
    k = suspected_at + 1
    found = det.add(_scan_summary(k, BASE, refs, rng, "A2", 0.0, per_scan))
    (verdict,) = [x for x in found if isinstance(x, DamageVerdict)]
    assert verdict.verdict == "damage" and verdict.spot == "A1"
    assert verdict.control_spot == "A2" and verdict.evidence["p_value"] < 0.01
    assert verdict.evidence["suspect_dose_Gy"] > verdict.evidence["control_dose_Gy"]


def test_a_relaxing_state_is_not_tested_and_a_settled_change_is_told_by_the_control():
    """LiFePO4 keeps changing after the current stops: scans before the rest settles are not
    tested at all; a change a test does suspect in a settled rest is electrochemistry when a
    fresh spot at the same state shows the same."""
    rng = np.random.default_rng(5)
    refs, det = refs_for("Mn-L"), DamageDetector()
    for k in range(8):  # relaxing: Mn2+ climbs 0.05 -> 0.40, not settled
        f = {"Mn2+": 0.05 + 0.05 * k, "Mn3+": 0.45, "Mn4+": 0.50 - 0.05 * k}
        assert (
            det.add(_scan_summary(k, f, refs, rng, "A1", k * 1e6, (k + 1) * 1e6, settled=False))
            == []
        )
    # settled, but the state still creeps: a test may suspect; the control decides
    found: list = []
    for k in range(8, 14):
        f = {"Mn2+": 0.40 + 0.03 * (k - 8), "Mn3+": 0.45, "Mn4+": 0.15 - 0.03 * (k - 8)}
        found += det.add(_scan_summary(k, f, refs, rng, "A1", k * 1e6, (k + 1) * 1e6))
        if found:
            break
    assert found and all(isinstance(x, DamageSuspicion) for x in found)
    control = found[-1].spectrum_id + 1
    k = control - 8
    f = {"Mn2+": 0.40 + 0.03 * k, "Mn3+": 0.45, "Mn4+": 0.15 - 0.03 * k}
    (verdict,) = det.add(_scan_summary(control, f, refs, rng, "B1", 0.0, 1e6))
    assert isinstance(verdict, DamageVerdict) and verdict.verdict == "electrochemistry"


def test_under_current_a_bracket_of_the_suspect_decides():
    """Under current the state moves between scans: a fresh spot at the same current and
    SOC, the same time into the step, is the reference; the verdict interpolates the suspect
    (scanned before and after the control) to the control's time."""
    rng = np.random.default_rng(8)
    refs, det = refs_for("Mn-L"), DamageDetector()

    def moving(k, f, spot, d0, since):
        summary = _scan_summary(k, f, refs, rng, spot, d0, d0 + 1e7, settled=False)
        summary.mode, summary.i_mean_mA, summary.since_change_s = MODE_CC, 0.5, since
        summary.rest_start, summary.soc = float("nan"), 0.2 + since / 36000
        summary.step_start = summary.t - since  # cycle 1's step, and cycle 2's
        return summary

    # cycle 1 at a fresh spot: the reference under current, Mn2+ falling as it charges
    for k in range(5):
        f = {"Mn2+": 0.30 - 0.02 * k, "Mn3+": 0.40, "Mn4+": 0.30 + 0.02 * k}
        assert det.add(moving(k, f, "A1", 0.0 if k == 0 else 1e6 * k, 600.0 * k)) == []
    # cycle 2 at a dosed spot, photoreduced: Mn2+ 0.12 above where it was at that point
    damaged = {"Mn2+": 0.38, "Mn3+": 0.40, "Mn4+": 0.22}
    found = det.add(moving(10, damaged, "B1", 5e7, 1200.0))
    assert [type(x) for x in found] == [DamageSuspicion] and found[0].test == "low_dose_spot"
    control = {"Mn2+": 0.25, "Mn3+": 0.40, "Mn4+": 0.35}
    assert det.add(moving(11, control, "C1", 0.0, 1260.0)) == []  # the bracket is open
    found = det.add(moving(12, damaged, "B1", 6e7, 1320.0))
    (verdict,) = [x for x in found if isinstance(x, DamageVerdict)]
    assert verdict.verdict == "damage" and verdict.suspect_spectrum == 12
    assert verdict.control_spot == "C1" and "suspect_interpolated" in verdict.evidence


def test_a_control_at_another_state_is_inconclusive():
    rng = np.random.default_rng(6)
    refs, det = refs_for("Mn-L"), DamageDetector()
    det.pending["Mn-L"] = (
        DamageSuspicion(
            spectrum_id=1,
            spot="A1",
            edge="Mn-L",
            test="repeat",
            statistic=9,
            p_value=1e-5,
            dose_Gy=5e7,
            t_scan=60.0,
        ),
        _scan_summary(1, BASE, refs, rng, "A1", 5e7, 6e7),
        None,
    )
    (verdict,) = det.add(_scan_summary(2, BASE, refs, rng, "A2", 0.0, 1e7, settled=False))
    assert verdict.verdict == "inconclusive" and "state" in verdict.why


def test_settled_by_the_rest_s_own_relaxation_time():
    s = DamageSettings()
    assert settled(True, 1000.0, [], s) == (
        False,
        "no relaxation time determined for this rest yet",
    )
    assert not settled(True, 1700.0, [600.0], s)[0]  # 3 tau = 1800 s
    assert settled(True, 1900.0, [600.0, 120.0], s)[0]
    assert not settled(True, 200.0, [10.0], s)[0]  # never before settle_s
    assert not settled(False, 5000.0, [10.0], s)[0]


def test_damage_false_positive_rate_below_1_percent():
    rng = np.random.default_rng(4)
    refs, det = refs_for("Mn-L"), DamageDetector()
    flagged = 0
    n = 520
    for k in range(n):
        spot = f"S{k // 40}"  # 13 spots, 40 repeats each, dose rising, no damage
        d0 = (k % 40) * 1e6
        found = det.add(_scan_summary(k, BASE, refs, rng, spot, d0, d0 + 1e6))
        flagged += any(isinstance(x, DamageSuspicion) and x.test != DOSE_CHECK for x in found)
    assert flagged / n < 0.01, flagged


def test_a_spot_past_check_from_is_checked_by_dose_alone_every_few_scans():
    """No test suspects anything (no damage), yet a spot past check_from_Gy gets a control
    scan every check_every_scans of its scans: the tests need a settled rest or a matched
    state, and under current a spot can take all its damage between two of those."""
    rng = np.random.default_rng(11)
    refs = refs_for("Mn-L")
    det = DamageDetector(DamageSettings(check_from_Gy=2e7, check_every_scans=3))
    checks, verdicts = [], []
    dose = 0.0
    for k in range(8):
        if k == 3:  # the control the first check asks for, on a fresh spot
            verdicts += det.add(_scan_summary(100, BASE, refs, rng, "A2", 0.0, 1e7))
        found = det.add(_scan_summary(k, BASE, refs, rng, "A1", dose, dose + 1e7))
        dose += 1e7
        checks += [x.spectrum_id for x in found if isinstance(x, DamageSuspicion)]
        assert all(x.test == DOSE_CHECK and np.isnan(x.p_value) for x in found)
    assert checks == [2, 5]  # begun at 20 MGy, then every third scan of A1
    (verdict,) = verdicts
    assert verdict.verdict == "electrochemistry" and verdict.suspicion.test == DOSE_CHECK
    quiet = DamageDetector(DamageSettings(check_every_scans=0))
    assert not any(
        quiet.add(_scan_summary(k, BASE, refs, rng, "A1", k * 1e7, (k + 1) * 1e7)) for k in range(8)
    )


def test_a_bracket_the_beam_did_not_come_back_to_ends_and_frees_the_next():
    """Under current the verdict needs the suspect's scan after the control. When the beam
    stays on the control spot (the suspect was left for its budget), the pending suspicion
    ends there, unconfirmed, and the next spot's check is not blocked for half an hour."""
    rng = np.random.default_rng(12)
    refs = refs_for("Mn-L")
    det = DamageDetector(DamageSettings(check_from_Gy=2e7, check_every_scans=3))

    def moving(k, spot, d0):
        summary = _scan_summary(k, BASE, refs, rng, spot, d0, d0 + 3e7, settled=False)
        summary.mode, summary.i_mean_mA, summary.since_change_s = MODE_CC, 0.5, 600.0 + 60 * k
        summary.rest_start, summary.step_start = float("nan"), 0.0
        return summary

    (check,) = det.add(moving(1, "A1", 3e7))
    assert check.test == DOSE_CHECK
    assert det.add(moving(2, "A2", 0.0)) == []  # the control: the bracket is open
    # one more scan on the control is waited out: a free-running spectrometer began it
    # before the move back came
    assert det.add(moving(3, "A2", 3e7)) == []
    found = det.add(moving(4, "A2", 6e7))  # the beam stayed on A2
    verdict = next(x for x in found if isinstance(x, DamageVerdict))
    assert verdict.verdict == "unconfirmed" and "did not go back to A1" in verdict.why
    assert any(isinstance(x, DamageSuspicion) and x.spot == "A2" for x in found)
    assert det.pending["Mn-L"][0].spot == "A2"
    # and back to the suspect after that one extra scan: the bracket closes
    det = DamageDetector(DamageSettings(check_from_Gy=2e7, check_every_scans=3))
    det.add(moving(1, "A1", 3e7))
    assert det.add(moving(2, "A2", 0.0)) == [] and det.add(moving(3, "A2", 3e7)) == []
    (verdict,) = det.add(moving(4, "A1", 6e7))
    assert verdict.verdict == "electrochemistry" and verdict.control_spot == "A2"


def test_svd_rank_and_mcr_recover_three_components():
    rng = np.random.default_rng(9)
    refs = refs_for("Mn-L")
    e = np.arange(637.0, 647.0, 0.1)
    s = refs.on(e)
    c = rng.dirichlet(np.ones(3), size=40)
    d = c @ s.T + rng.normal(0, 0.01, (40, len(e)))
    rank, _ = svd_rank(d, noise=0.01)
    assert rank == 3
    res = mcr_als(d, 3, seed=s.T * 1.1 + 0.05)
    assert np.abs(res.concentrations - c).max() < 0.05
    assert res.warning == ROTATIONAL_AMBIGUITY and res.residual < 0.02


def test_rixs_roi_ratio_follows_the_oxidised_oxygen_feature():
    ex, em = rixs_axes()
    low = reduce_map(ex, em, rixs_map(ex, em, 0.0))
    high = reduce_map(ex, em, rixs_map(ex, em, 1.0))
    assert high.ratio > 1.5 * low.ratio and "531" in high.cuts
    acc = MapAccumulator(len(ex), em)
    full = rixs_map(ex, em, 1.0)
    for j in range(0, len(ex), 5):
        acc.add(j, ex[j : j + 5], full[j : j + 5], em)
    assert acc.complete and acc.reduce().ratio == pytest.approx(high.ratio)
    # a map of unknown size (rows from files) grows; a row on another emission grid is refused
    growing = MapAccumulator(0, em)
    for j in range(len(ex)):
        growing.add(j, ex[j : j + 1], full[j : j + 1], em)
    assert not growing.complete and growing.reduce().ratio == pytest.approx(high.ratio)
    with pytest.raises(ValueError, match=rf"emission axis of 10 points, the map's has {len(em)}"):
        growing.add(len(ex), ex[:1], full[:1, :10], em[:10])
    shifted = em.copy()
    shifted[7] += 0.5
    with pytest.raises(ValueError, match=rf"differs from the map's at point 7: {shifted[7]:g} eV"):
        growing.add(len(ex), ex[:1], full[:1], shifted)


def test_normalisation_follows_larch_conventions_and_names_bad_windows():
    e = EDGES["Mn-L"].axis()
    mu = 0.02 * (e - 630) + 3.0 * references("Mn-L", e)["Mn3+"]
    norm = normalize(e, mu, "Mn-L")
    assert 640.0 <= norm.e0 <= 642.5 and norm.mu[-1] == pytest.approx(1.0, abs=0.05)
    short = e < 650
    with pytest.raises(NormalizationError, match="post-edge window .* outside the scan"):
        normalize(e[short], mu[short], "Mn-L")


@pytest.mark.parametrize("channel", ["TEY", "TFY"])
def test_model_curve_is_the_fitted_model(channel):
    """The curve a dashboard draws beside the data reproduces the fit's own chi-square."""
    rng = np.random.default_rng(11)
    refs = refs_for("Mn-L")
    f = {"Mn2+": 0.2, "Mn3+": 0.5, "Mn4+": 0.3}
    e, ch = scan("Mn-L", f, f, rng, shift=0.15)
    fit = fit_channel("Mn-L", e, ch, channel, refs)
    y = ch[channel] / ch["I0"]
    sigma = y * np.sqrt(1 / ch[channel] + 1 / ch["I0"])
    lo, hi = fit.fit_range
    m = (e >= lo) & (e <= hi)
    chi2 = np.sum(((model_curve(e[m], refs, fit) - y[m]) / sigma[m]) ** 2) / m.sum()
    assert chi2 == pytest.approx(fit.chi2_red, rel=0.15)
    assert 0.7 < chi2 < 1.5  # at the counting noise: the curve is the model, not a lookalike
