"""Beam damage: suspected by statistics at a known state, confirmed against a control spot.

A change of the spectrum is attributed to dose only when the electrochemical state is
accounted for. A battery keeps changing after its current stops (LiFePO4 relaxes for half an
hour), so "no current" is not "constant state". Two states count as known:
- a *settled* rest, one that has lasted ``settle_taus`` relaxation times of the rest's own
  fits (and at least ``settle_s``): scans of one settled rest, or of settled rests at the
  same SOC, are compared;
- under current, a *matched* state: the same current (sign, magnitude within 10 %), the same
  SOC and the same time into the step, as a cell cycled the same way is at each cycle.

Three tests, each at false-alarm probability ``alpha`` per comparison, raise a *suspicion*:
- repeat (settled rests only): consecutive scans at one spot in one rest; the later against
  the earlier (a scale and offset allowed), chi-square against counting noise.
- dose slope (settled rests only): the lowest-valence fraction (the photoreduction product)
  against dose over the recent scans of one rest at this spot; one-sided t-test.
- low-dose spot: the lowest-valence fraction against a scan of a spot that had taken at most
  ``control_dose_fraction`` of this one's dose, at the same known state; one-sided z-test
  with the fits' uncertainties and a systematic floor (two spots of one electrode differ).

A suspicion is not a verdict. The next scan of the same edge from a low-dose spot (the
orchestrator takes it on purpose: one scan on a control spot) decides by the low-dose test at
``confirm_alpha``: ``damage`` or ``electrochemistry``. In a settled rest the control is
compared with the suspect's newest scan; under current the state moves between scans, so the
verdict waits for the suspect spot's next scan and compares the control with the suspect
interpolated to the control's time (a bracket). ``inconclusive`` when the control was not at
the suspect's state (or the current changed within the bracket), ``unconfirmed`` when no
control came within ``confirm_within_s``. The verdict carries its evidence. The decision uses
only the scans' own times and values, so a replay decides as the live run did.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import Any, Literal

import msgspec
import numpy as np
from scipy import stats

from operando.analysis.rest import RestCriterion


class DamageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The tests' own settings (``[analysis.damage]``); 'at rest' is the run's one
    ``RestCriterion``, not a threshold of their own."""

    alpha: float = 1e-3
    soc_tolerance: float = 0.005  # SOC difference allowed between compared scans
    slope_window: int = 6  # recent scans in the dose-slope regression
    systematic: float = 0.01  # added in quadrature to fit uncertainties (spot to spot)
    # a rest is settled after this many of its longest fitted relaxation time (3: 95 % of an
    # exponential), and never sooner than settle_s after the current stopped
    settle_taus: float = 3.0
    settle_s: float = 300.0
    # a control (or low-dose) spot has taken at most this fraction of the suspect's dose
    control_dose_fraction: float = 0.5
    # the confirmation's own false-alarm probability: it only ever runs after a suspicion
    confirm_alpha: float = 0.01
    confirm_within_s: float = 1800.0
    # A spot scanned past check_from_Gy is checked against a control spot every
    # check_every_scans of its scans, suspected or not (0: never): the tests above need a
    # settled rest or a matched state, and under current a spot can take all its damage
    # between two of those. 20 MGy: the stated default critical dose (decision 0008), so a
    # budget below it (every preset but one) never pays for a check.
    check_from_Gy: float = 2e7
    check_every_scans: int = 3


class ScanSummary(msgspec.Struct, kw_only=True):
    spectrum_id: int
    spot: str
    edge: str
    dose_before_Gy: float
    dose_after_Gy: float
    soc: float
    i_mean_mA: float
    mode: int = -1  # the alignment's control mode (-1: not known)
    lowest: str  # name of the lowest valence
    lowest_fraction: float
    lowest_uncertainty: float
    energy: np.ndarray
    y: np.ndarray  # I0-normalised surface signal over the fit range
    sigma: np.ndarray
    t: float = math.nan  # source time of the scan's end
    # when the rest it was taken in began (nan: not at rest) and whether it had settled
    rest_start: float = math.nan
    settled: bool = False
    since_change_s: float = math.nan  # how long the present current had flowed (or not)
    step_start: float = math.nan  # when the present current began (source time)


# the "test" of a control scan due by dose alone: recorded as a damage_check, not a suspicion
DOSE_CHECK = "dose_check"


class DamageSuspicion(msgspec.Struct, kw_only=True):
    """A reason to take a control scan: a test's suspicion, or a check due by dose
    (``test == DOSE_CHECK``, shown as a check, never as a suspicion)."""

    spectrum_id: int
    spot: str
    edge: str
    test: str
    statistic: float
    p_value: float
    dose_Gy: float
    t_scan: float = math.nan  # the suspect scan's end (source time)
    detail: dict[str, float] = {}
    # whether a control scan would decide it: not when another of its edge waits for one
    # (the spot policy asks for controls only for these, so both wait for the same one)
    awaits_control: bool = True


Verdict = Literal["damage", "electrochemistry", "inconclusive", "unconfirmed"]


class DamageVerdict(msgspec.Struct, kw_only=True):
    verdict: Verdict
    spot: str  # the suspect spot
    edge: str
    suspicion: DamageSuspicion
    suspect_spectrum: int  # the newest scan of the suspect spot, the one compared
    control_spectrum: int = -1
    control_spot: str = ""
    t_scan: float = math.nan  # the deciding scan's end (source time)
    why: str = ""
    evidence: dict[str, float] = {}


def settled(
    at_rest: bool, since_s: float, taus_s: list[float], s: DamageSettings
) -> tuple[bool, str]:
    """Whether a scan taken ``since_s`` after the current stopped saw a settled state, by the
    rest's own relaxation fits (``taus_s``: the resolved relaxation times of its series so
    far); with why not, for people."""
    if not at_rest or not math.isfinite(since_s):
        return False, "current flowing"
    if not taus_s:
        return False, "no relaxation time determined for this rest yet"
    need = max(s.settle_s, s.settle_taus * max(taus_s))
    if since_s < need:
        return False, f"{since_s:.0f} s into the rest, settled after {need:.0f} s"
    return True, ""


def compare_low_dose(
    scan: ScanSummary, low: ScanSummary, systematic: float
) -> tuple[float, float, float]:
    """(z, one-sided p, difference) of the lowest-valence fraction of ``scan`` above that
    of a low-dose scan ``low``."""
    sig = math.sqrt(scan.lowest_uncertainty**2 + low.lowest_uncertainty**2 + 2 * systematic**2)
    diff = scan.lowest_fraction - low.lowest_fraction
    z = diff / sig
    return z, float(stats.norm.sf(z)), diff


class DamageDetector:
    def __init__(
        self, settings: DamageSettings | None = None, rest: RestCriterion | None = None
    ) -> None:
        self.s = settings or DamageSettings()
        self.rest = rest or RestCriterion()
        self.history: dict[tuple[str, str], deque[ScanSummary]] = defaultdict(
            lambda: deque(maxlen=max(self.s.slope_window, 2))
        )
        # settled scans by edge, the low-dose comparisons' candidates (bounded: a week of
        # scans at one per minute is 10k; the newest matter)
        self.settled: dict[str, deque[ScanSummary]] = defaultdict(lambda: deque(maxlen=2000))
        # edge -> (suspicion, newest scan of its spot before the control, the control once
        # taken): under current the verdict waits for the suspect's next scan (a bracket)
        self.pending: dict[str, tuple[DamageSuspicion, ScanSummary, ScanSummary | None]] = {}
        # scans under current by edge, for the low-dose comparison at a matched state
        self.moving: dict[str, deque[ScanSummary]] = defaultdict(lambda: deque(maxlen=2000))
        self.since_check: dict[str, int] = {}  # spot -> its scans since its last control
        self.lingered: set[str] = set()  # edges whose beam stayed on the control a scan

    def _same_state(self, a: ScanSummary, b: ScanSummary) -> bool:
        """Both settled, in one rest or at the same SOC; or both under the same current
        (sign, and magnitude within 10 %) at the same SOC, the same time into the step
        (within 10 %, at least a minute): a cell cycled the same way is then where it was,
        lag and all."""
        if a.settled and b.settled:
            same_rest = abs(a.rest_start - b.rest_start) <= 2.0
            return same_rest or abs(a.soc - b.soc) <= self.s.soc_tolerance
        return self._same_current(a, b) and abs(a.soc - b.soc) <= self.s.soc_tolerance

    def _same_current(self, a: ScanSummary, b: ScanSummary) -> bool:
        """One current, the same time into its step (a matched state, cycle to cycle)."""
        into = max(60.0, 0.1 * max(a.since_change_s, b.since_change_s))
        return self._one_current(a, b) and abs(a.since_change_s - b.since_change_s) <= into

    def _same_step(self, a: ScanSummary, b: ScanSummary) -> bool:
        """Both in one step, under one current or in one rest: the bracket's scans (a rest
        not yet settled moves as a current does, only slower)."""
        one = self._one_current(a, b) or (self._at_rest(a) and self._at_rest(b))
        if math.isnan(a.step_start) and math.isnan(b.step_start):
            return one  # neither saw the current change: both in the run's first step
        return one and abs(a.step_start - b.step_start) <= 5.0

    def _one_current(self, a: ScanSummary, b: ScanSummary) -> bool:
        """Both under current, in one control mode, of one sign and within 10 %."""
        if self._at_rest(a) or self._at_rest(b) or a.mode != b.mode:
            return False
        ia, ib = a.i_mean_mA, b.i_mean_mA
        return ia * ib > 0 and abs(ia - ib) <= 0.1 * max(abs(ia), abs(ib))

    def _at_rest(self, a: ScanSummary) -> bool:
        return bool(self.rest(a.mode, a.i_mean_mA))

    def _low_dose(self, scan: ScanSummary, other: ScanSummary) -> bool:
        return (
            other.spot != scan.spot
            and scan.dose_before_Gy > 0
            and other.dose_before_Gy <= self.s.control_dose_fraction * scan.dose_before_Gy
        )

    def add(self, scan: ScanSummary) -> list[DamageSuspicion | DamageVerdict]:
        """The findings one scan brings: suspicions, and a verdict when it was the control
        (or the last chance) of a pending suspicion."""
        out: list[DamageSuspicion | DamageVerdict] = []
        verdict = self._confirm(scan)
        if verdict is not None:
            out.append(verdict)
            if verdict.verdict in ("inconclusive", "unconfirmed"):
                self.since_check.pop(verdict.spot, None)  # undecided: check it again now
        if scan.settled:
            out.extend(self._tests(scan))
            self.settled[scan.edge].append(scan)
        else:
            self.history[(scan.spot, scan.edge)].clear()  # a new run of settled scans later
            if not self._at_rest(scan):  # under current: only the matched low-dose test
                out.extend(filter(None, [self._versus_low_dose(scan, self.moving[scan.edge])]))
                self.moving[scan.edge].append(scan)
        if verdict is not None and verdict.spot == scan.spot:
            # the scan that closed a bracket: its verdict answers what the tests say of it
            # (a suspicion kept here became the 'control' of the next spot's first scan)
            return [verdict]
        was_control = verdict is not None and verdict.control_spectrum == scan.spectrum_id
        if not was_control and not any(isinstance(f, DamageSuspicion) for f in out):
            out.extend(filter(None, [self._check_due(scan)]))
        for found in out:
            if isinstance(found, DamageSuspicion):
                self.since_check[scan.spot] = 0  # a suspicion's control checks it as well
                found.awaits_control = self._may_pend(scan)
                if found.awaits_control:
                    self.pending[scan.edge] = (found, scan, None)
        return out

    def _may_pend(self, scan: ScanSummary) -> bool:
        """Whether a suspicion on ``scan`` waits for a control: unless one of its edge has its
        control in (a bracket open). The newest suspicion replaces one no control answered
        yet: the policy may have declined that one (its limit, no control spot, the beam
        gone), and waiting on it kept later ones from being decided for ``confirm_within_s``."""
        waiting = self.pending.get(scan.edge)
        return waiting is None or waiting[2] is None

    def _check_due(self, scan: ScanSummary) -> DamageSuspicion | None:
        """A check: not a suspicion, a control scan due by dose (``check_from_Gy``, then every
        ``check_every_scans`` of the spot's scans). None while a confirmation is pending."""
        every, n = self.s.check_every_scans, self.since_check.get(scan.spot)
        if n is not None:
            self.since_check[scan.spot] = n = n + 1
        # the dose the scan began at: a control is compared with that (``_low_dose``)
        due = scan.dose_before_Gy >= self.s.check_from_Gy and (n is None or n >= every)
        if every <= 0 or not due or not self._may_pend(scan):
            return None
        detail = {"check_from_Gy": self.s.check_from_Gy, "every_scans": every}
        return self._suspicion(scan, DOSE_CHECK, scan.dose_after_Gy / 1e6, math.nan, detail)

    def _tests(self, scan: ScanSummary) -> list[DamageSuspicion | DamageVerdict]:
        found: list[DamageSuspicion | DamageVerdict] = []
        past = self.history[(scan.spot, scan.edge)]
        if past and abs(past[-1].rest_start - scan.rest_start) > 2.0:
            past.clear()  # another rest
        if past:
            found += filter(None, [self._repeat(past[-1], scan)])
            if len(past) >= 2:
                found += filter(None, [self._slope([*past, scan], scan)])
        found += filter(None, [self._versus_low_dose(scan, self.settled[scan.edge])])
        past.append(scan)
        return found

    # -- confirmation ---------------------------------------------------------------------
    def _confirm(self, scan: ScanSummary) -> DamageVerdict | None:
        waiting = self.pending.get(scan.edge)
        if waiting is None:
            return None
        suspicion, suspect, control = waiting
        if scan.spot == suspect.spot:
            if control is None:
                self.pending[scan.edge] = (suspicion, scan, None)  # compare the newest
                return None
            self._close(scan.edge)  # the bracket's second half
            return self._bracket(suspicion, suspect, control, scan)
        if control is not None and scan.spot == control.spot and scan.edge not in self.lingered:
            # one more scan on the control spot: a free-running spectrometer began it before
            # the move back came (the demo at 120x, every time)
            self.lingered.add(scan.edge)
            return None
        if control is not None:
            # the beam went elsewhere, not back (the suspect left for its budget): the
            # bracket cannot close, and holding it kept later suspicions from being decided
            self._close(scan.edge)
            verdict = self._verdict(suspicion, suspect)
            verdict.why = f"the beam did not go back to {suspect.spot} after the control"
            return verdict
        is_control = control is None and self._low_dose(suspect, scan)
        if not is_control and scan.t - suspicion.t_scan <= self.s.confirm_within_s:
            return None  # another dosed spot (or a second control): no decision
        if is_control and not suspect.settled and self._same_step(suspect, scan):
            self.pending[scan.edge] = (suspicion, suspect, scan)  # the state moves: bracket
            return None
        self._close(scan.edge)
        verdict = self._verdict(suspicion, suspect)
        if not is_control:
            return verdict
        self._evidence(verdict, suspect, scan)
        if not self._same_state(suspect, scan):
            verdict.verdict = "inconclusive"
            verdict.why = "the control was not taken at the suspect's state"
            return verdict
        z, p, diff = compare_low_dose(suspect, scan, self.s.systematic)
        return self._decide(verdict, suspect.lowest, z, p, diff)

    def _close(self, edge: str) -> None:
        """The edge's pending suspicion is decided (or given up): nothing waits on it."""
        del self.pending[edge]
        self.lingered.discard(edge)

    def _verdict(self, suspicion: DamageSuspicion, suspect: ScanSummary) -> DamageVerdict:
        return DamageVerdict(
            verdict="unconfirmed",
            spot=suspect.spot,
            edge=suspect.edge,
            suspicion=suspicion,
            suspect_spectrum=suspect.spectrum_id,
            t_scan=suspect.t,
            why=f"no control scan within {self.s.confirm_within_s:.0f} s of the suspicion",
        )

    def _evidence(self, v: DamageVerdict, suspect: ScanSummary, control: ScanSummary) -> None:
        v.control_spectrum, v.control_spot, v.t_scan = control.spectrum_id, control.spot, control.t
        v.evidence = {
            "suspect_dose_Gy": suspect.dose_before_Gy,
            "control_dose_Gy": control.dose_before_Gy,
            "suspect_fraction": suspect.lowest_fraction,
            "suspect_uncertainty": suspect.lowest_uncertainty,
            "control_fraction": control.lowest_fraction,
            "control_uncertainty": control.lowest_uncertainty,
            "soc_difference": control.soc - suspect.soc,
            "seconds_apart": control.t - suspect.t,
        }

    def _decide(
        self, v: DamageVerdict, lowest: str, z: float, p: float, diff: float
    ) -> DamageVerdict:
        v.evidence |= {"z": z, "p_value": p, "difference": diff, "alpha": self.s.confirm_alpha}
        if p < self.s.confirm_alpha:
            v.verdict = "damage"
            v.why = f"{lowest} {diff:+.3f} above the control spot (p {p:.1e})"
        else:
            v.verdict = "electrochemistry"
            v.why = f"the control spot shows the same {lowest} (p {p:.2g})"
        return v

    def _bracket(
        self,
        suspicion: DamageSuspicion,
        before: ScanSummary,
        control: ScanSummary,
        after: ScanSummary,
    ) -> DamageVerdict:
        """Under current the state moves between scans: the suspect spot, scanned before and
        after the control, interpolated to the control's time, against the control."""
        verdict = self._verdict(suspicion, after)
        self._evidence(verdict, after, control)
        if not (self._same_step(before, control) and self._same_step(control, after)):
            verdict.verdict = "inconclusive"
            verdict.why = "the current changed (or stopped) while the control was taken"
            return verdict
        w = (control.t - before.t) / (after.t - before.t) if after.t > before.t else 0.5
        w = min(max(w, 0.0), 1.0)
        f = (1 - w) * before.lowest_fraction + w * after.lowest_fraction
        sig = math.hypot((1 - w) * before.lowest_uncertainty, w * after.lowest_uncertainty)
        spot = msgspec.structs.replace(after, lowest_fraction=f, lowest_uncertainty=sig)
        z, p, diff = compare_low_dose(spot, control, self.s.systematic)
        verdict.evidence |= {
            "suspect_before_fraction": before.lowest_fraction,
            "suspect_after_fraction": after.lowest_fraction,
            "suspect_interpolated": f,
            "before_spectrum": before.spectrum_id,
        }
        return self._decide(verdict, after.lowest, z, p, diff)

    # -- the tests ----------------------------------------------------------------------------
    def _suspicion(
        self, scan: ScanSummary, test: str, statistic: float, p: float, detail: dict[str, Any]
    ) -> DamageSuspicion:
        return DamageSuspicion(
            spectrum_id=scan.spectrum_id,
            spot=scan.spot,
            edge=scan.edge,
            test=test,
            statistic=statistic,
            p_value=p,
            dose_Gy=scan.dose_before_Gy,
            t_scan=scan.t,
            detail={k: float(v) for k, v in detail.items()},
        )

    def _repeat(self, a: ScanSummary, b: ScanSummary) -> DamageSuspicion | None:
        ya = np.interp(b.energy, a.energy, a.y)
        sa = np.interp(b.energy, a.energy, a.sigma)
        # b ~ p + q a (beam and background may differ); weighted least squares, then chi2
        w = 1.0 / np.sqrt(b.sigma**2 + sa**2)
        design = np.column_stack([np.ones_like(ya), ya]) * w[:, None]
        coef, *_ = np.linalg.lstsq(design, b.y * w, rcond=None)
        q = coef[1]
        resid = (b.y - coef[0] - q * ya) / np.sqrt(b.sigma**2 + (q * sa) ** 2)
        chi2 = float(resid @ resid)
        dof = len(resid) - 2
        p = float(stats.chi2.sf(chi2, dof))
        if p >= self.s.alpha:
            return None
        detail = {"chi2": chi2, "dof": dof, "previous_spectrum": a.spectrum_id}
        return self._suspicion(b, "repeat", chi2 / dof, p, detail)

    def _slope(self, run: list[ScanSummary], scan: ScanSummary) -> DamageSuspicion | None:
        dose = np.array([r.dose_before_Gy for r in run])
        f = np.array([r.lowest_fraction for r in run])
        if np.ptp(dose) <= 0:
            return None
        res: Any = stats.linregress(dose, f)  # scipy's result type is not declared
        slope, stderr = float(res.slope), float(res.stderr)
        if not np.isfinite(stderr) or stderr == 0:
            return None
        t = slope / stderr
        p = float(stats.t.sf(t, len(run) - 2))
        if p >= self.s.alpha:
            return None
        detail = {"slope_per_MGy": slope * 1e6, "scans": len(run)}
        return self._suspicion(scan, "dose_slope", t, p, detail)

    def _versus_low_dose(
        self, scan: ScanSummary, candidates: deque[ScanSummary]
    ) -> DamageSuspicion | None:
        same = [f for f in candidates if self._low_dose(scan, f) and self._same_state(scan, f)]
        if not same:
            return None
        ref = min(same, key=lambda f: (abs(f.soc - scan.soc), f.dose_before_Gy))
        z, p, diff = compare_low_dose(scan, ref, self.s.systematic)
        if p >= self.s.alpha:
            return None
        detail = {
            "low_dose_spectrum": ref.spectrum_id,
            "low_dose_Gy": ref.dose_before_Gy,
            "difference": diff,
        }
        return self._suspicion(scan, "low_dose_spot", z, p, detail)
