"""Valence fractions by linear combination of references, robust to real soft X-ray scans.

Soft X-ray pre-edges are short and backgrounds sloped, and I0 division leaves a few-percent
drift, so a fixed normalisation followed by NNLS errs by ~0.02-0.09 in the fractions
(docs/decisions/0005). Instead the background, scale and drift are fitted with the weights:

    y(E) = sum_v c_v ref_v(E - shift) * (1 + t x + q (x^2 - 1/3)) + b0 + b1 x,
    c_v >= 0,   x in [-1, 1] over the fit range

The fractions are c_v / sum(c) (non-negative, summing to one); sum(c) is the edge-step scale.
The shift is found on a grid over +-max_shift (each grid shift solved exactly), then refined
by Gauss-Newton on the references' derivative; the drift enters linearly through the previous
iterate's mixture, so a fit is a batched solve and a handful of NNLS solves.

Fluorescence (TFY) of a concentrated sample saturates: I ~ mu (1 + beta) / (mu + beta) with mu
normalised to a unit edge step. ``self_absorption=True`` fits beta as well (scipy
least_squares with an analytic Jacobian, from the linear fit's answer); references must then
be edge-step normalised, which is checked.

Uncertainties are in units of the noise the result names (``noise``): the given counting noise
(widened when chi2_red exceeds 1), or the data's point-to-point scatter (sandwich covariance);
both widened for a correlated residual. Every result is judged (``quality``, ``notes``,
``at_bound``), and isolated detector spikes are left out and named (``left_out_eV``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import msgspec
import numpy as np
from scipy.optimize import least_squares, nnls

from operando.analysis.references import References
from operando.analysis.signal import MAX_SIGNAL


class FitError(ValueError):
    pass


SHIFT_GRID_EV = 0.2  # the coarse shift search step: under half the narrowest L3 line (~0.45 eV)
GLITCH_SCORE = 8.0  # a point this many local robust sigmas off its neighbours' line is a spike
MAX_GLITCH_ROUNDS = 2
MAX_GLITCHES, GLITCH_SHARE = 4, 0.02  # more than this in one scan are not glitches
GLITCH_WINDOW = 21  # points around a candidate whose spread it is judged against
ISOLATED = 0.75  # a spike's neighbours score at most this share of its own (about half)


class FitResult(msgspec.Struct, kw_only=True):
    fractions: dict[str, float]
    uncertainties: dict[str, float]
    average_valence: float
    valence_uncertainty: float
    shift_eV: float
    chi2_red: float  # residual variance over the noise that ``noise`` names
    scale: float  # edge-step scale of the mixture, in signal units
    background: tuple[float, float]  # offset and slope (per unit x) in signal units
    tilt: float  # multiplicative drift across the fit range, relative
    # its curvature, on (x^2 - 1/3): I0 normalisation leaves slow, not only linear, drifts
    curvature: float = 0.0
    self_absorption_beta: float | None = None
    self_absorption_beta_uncertainty: float | None = None
    fit_range: tuple[float, float]
    n_points: int
    method: str = "linear"
    weighted: bool = False  # counting noise was given (True), or estimated (False)
    # what chi2_red is relative to: "counting noise" (given) or "point scatter" (estimated
    # from the data's point-to-point differences, independent of the model)
    noise: str = "point scatter"
    # lag-1 autocorrelation of the residual: near 0 for noise; near 1 when the model misses
    # a shape (the uncertainties are widened by (1 + r) / (1 - r))
    residual_correlation: float = 0.0
    at_bound: tuple[str, ...] = ()  # parameters the fit left at a limit, e.g. "Ni4+ = 0"
    quality: str = "good"  # "good", "check" (read the notes) or "poor" (do not act on it)
    notes: tuple[str, ...] = ()  # why the quality is not "good", one phrase each
    left_out_eV: tuple[float, ...] = ()  # glitch points detected and left out of the fit


def _solve(a: np.ndarray, y: np.ndarray, n_pos: int) -> np.ndarray:
    """Least squares with the first ``n_pos`` coefficients >= 0 and the rest free."""
    # The unconstrained optimum, when it meets the constraints, is the constrained one: the
    # normal equations cost a third of an NNLS, and most iterations end here.
    try:
        coef = np.linalg.solve(a.T @ a, a.T @ y)
    except np.linalg.LinAlgError:
        coef = np.full(a.shape[1], -1.0)
    if np.all(coef[:n_pos] >= 0):
        return coef
    free = a[:, n_pos:]
    split = np.hstack([a[:, :n_pos], free, -free])
    coef, _ = nnls(split, y, maxiter=50 * split.shape[1])
    k = free.shape[1]
    return np.concatenate([coef[:n_pos], coef[n_pos : n_pos + k] - coef[n_pos + k :]])


def point_scatter(e: np.ndarray, y: np.ndarray) -> float:
    """The noise of one point, from the data alone: the robust spread of each point's
    departure from the line through its two neighbours (curvature at sharp peaks is a few
    points, which the median absolute deviation ignores)."""
    if len(y) < 5:
        return float("nan")
    d, a = _departure(e, y)
    # d = noise_i - a noise_(i-1) - (1 - a) noise_(i+1): variance (1 + a^2 + (1-a)^2) sigma^2
    var_factor = 1.0 + a**2 + (1 - a) ** 2
    z = d / np.sqrt(var_factor)
    return 1.4826 * _median(np.abs(z - _median(z)))


def _median(a: np.ndarray) -> float:
    """np.median of finite values, by partition (np.median's own overhead was a third of
    the glitch check)."""
    h = len(a) // 2
    if len(a) % 2:
        return float(np.partition(a, h)[h])
    part = np.partition(a, [h - 1, h])
    return float(0.5 * (part[h - 1] + part[h]))


def _departure(e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each inner point's departure from the line through its two neighbours, and the
    weight ``a`` of the left neighbour in that line (uneven grids included)."""
    h0, h1 = np.diff(e)[:-1], np.diff(e)[1:]
    a = h1 / (h0 + h1)
    return y[1:-1] - (a * y[:-2] + (1 - a) * y[2:]), a


def _coarse_shift(
    e: np.ndarray, y: np.ndarray, w: np.ndarray, x: np.ndarray, refs: References, max_shift: float
) -> tuple[float, float]:
    """The shift on a grid over +-max_shift whose best non-negative combination fits best,
    refined by a parabola through its neighbours; and the grid step to refine within.

    Gauss-Newton from 0 stalls in the nearest minimum (a near-pure Mn4+ scan shifted -0.25 eV
    came out a three-valence mixture); every grid shift is tried instead, each solved exactly
    (weights >= 0, a linear background, a drift of the mean reference) on the normal
    equations: unconstrained first, and where that gives a negative weight, every support of
    the weights, all shifts and supports in one batched solve."""
    k = len(refs.names)
    n_steps = max(math.floor(max_shift / SHIFT_GRID_EV + 1e-9), 0)
    if n_steps == 0:
        return 0.0, max_shift
    shifts = SHIFT_GRID_EV * np.arange(-n_steps, n_steps + 1)
    r = refs.on_shifted(e, shifts)  # (n_shift, k, n)
    n_s, n = len(shifts), len(e)
    # columns along the last axis of a (shift, column, point) array: the normal equations
    # are then one contiguous batched product (the other layout cost twice the whole search)
    a = np.empty((n_s, k + 3, n))
    a[:, :k] = r
    a[:, k] = 1.0
    a[:, k + 1] = x
    a[:, k + 2] = r.mean(axis=1) * x
    a *= w
    yw = y * w
    yy = float(yw @ yw)
    g = a @ a.transpose(0, 2, 1)  # (s, p, p)
    h = a @ yw  # (s, p)
    p = k + 3
    g += 1e-12 * (np.trace(g, axis1=1, axis2=2) / p)[:, None, None] * np.eye(p)
    try:
        c = np.linalg.solve(g, h[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return 0.0, max_shift
    rss = yy - np.einsum("sp,sp->s", c, h)
    # Where a weight came out negative the constrained residual is needed; the unconstrained
    # one is a lower bound of it, so a shift whose bound already loses to a feasible shift
    # cannot win (it is solved only if it is the winner's neighbour, for the parabola).
    bad = np.any(c[:, :k] < 0, axis=1)
    best_feasible = float(rss[~bad].min()) if (~bad).any() else np.inf
    todo = bad & (rss < best_feasible)
    exact = ~bad
    while todo.any():
        if k <= 5:
            rss[todo] = _rss_on_supports(g[todo], h[todo], k, yy)
        else:  # many references: one NNLS for each such shift
            at = a[todo].transpose(0, 2, 1)
            rss[todo] = [float(np.sum((a_s @ _solve(a_s, yw, k) - yw) ** 2)) for a_s in at]
        exact |= todo
        i = int(np.argmin(rss))
        todo = np.zeros_like(bad)
        todo[max(i - 1, 0) : i + 2] = True
        todo &= ~exact
    if not np.isfinite(rss).any():
        return 0.0, max_shift
    i = int(np.argmin(rss))
    best = float(shifts[i])
    if 0 < i < n_s - 1 and np.all(np.isfinite(rss[i - 1 : i + 2])):
        lo, mid, hi = rss[i - 1 : i + 2]
        curve = lo - 2 * mid + hi
        if curve > 0:
            best += SHIFT_GRID_EV * min(max(0.5 * (lo - hi) / curve, -0.5), 0.5)
    return best, SHIFT_GRID_EV


def _rss_on_supports(g: np.ndarray, h: np.ndarray, k: int, yy: float) -> np.ndarray:
    """The non-negative least-squares residual of each system (normal equations ``g``,
    ``h``; the first ``k`` unknowns >= 0): the best least-squares solution, over every
    support of those unknowns, that is feasible (the NNLS optimum is one of them)."""
    p = g.shape[1]
    supports = np.array([[(m >> v) & 1 for v in range(k)] for m in range(1, 2**k)], bool)
    keep = np.hstack([supports, np.ones((len(supports), p - k), bool)])  # (m, p)
    both = keep[:, :, None] & keep[:, None, :]
    gm = np.where(both[None], g[:, None], np.eye(p))  # (s, m, p, p)
    hm = np.where(keep[None], h[:, None], 0.0)  # (s, m, p)
    c = np.linalg.solve(gm, hm[..., None])[..., 0]
    rss = yy - np.einsum("smp,smp->sm", c, hm)
    feasible = np.all((c[..., :k] >= 0) | ~keep[None, :, :k], axis=2)
    feasible &= c[..., :k].sum(axis=2) > 0
    return np.where(feasible, rss, np.inf).min(axis=1)


def _glitches(e: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Isolated points far off their neighbours' residual (detector spikes): a boolean mask.

    The residual of a model that misses a broad shape is smooth, so a point is judged against
    the line through its neighbours' residuals, on the robust spread of that departure among
    the points around it (counting noise is larger on the white line than before the edge)."""
    n = len(resid)
    out = np.zeros(n, dtype=bool)
    if n < 7:
        return out
    size = np.abs(_departure(e, resid)[0])
    floor = 0.5 * _median(size)  # no local spread below half the scan's
    if not floor > 0:
        return out
    score = size / (1.4826 * floor)
    # the local spread only where a spike is possible at all (a sliding median over every
    # point cost a third of the whole fit)
    half = GLITCH_WINDOW // 2
    for i in np.flatnonzero(score > GLITCH_SCORE):
        local = _median(size[max(i - half, 0) : i + half + 1])
        score[i] = size[i] / (1.4826 * max(local, floor))
    # a spike at i also moves the departures of i-1 and i+1, by about half and the other way;
    # a shape the model misses moves several points alike: a spike stands out of its
    # neighbours' scores
    left = np.concatenate([[0.0], score[:-1]])
    right = np.concatenate([score[1:], [0.0]])
    peak = score > GLITCH_SCORE
    peak &= np.maximum(left, right) < ISOLATED * score + 2.0
    out[1:-1] = peak
    # the end points have one neighbour: against the robust spread of the residual itself
    r_spread = 1.4826 * _median(np.abs(resid - _median(resid)))
    for i, j in ((0, 1), (n - 1, n - 2)):
        if r_spread > 0 and abs(resid[i] - resid[j]) > 2 * GLITCH_SCORE * r_spread:
            out[i] = True
    return out


def fit_spectrum(
    energy: np.ndarray,
    signal: np.ndarray,
    refs: References,
    *,
    fit_range: tuple[float, float] | None = None,
    sigma: np.ndarray | None = None,
    self_absorption: bool = False,
    max_shift_eV: float = 1.5,
) -> FitResult:
    """Fit one spectrum (already divided by I0) as a mixture of the references."""
    e_all = np.asarray(energy, dtype=np.float64)
    y_all = np.asarray(signal, dtype=np.float64)
    lo, hi = fit_range if fit_range is not None else (e_all.min(), e_all.max())
    lo, hi = float(lo), float(hi)
    # usable: inside the range, finite (NaN compares false), of a magnitude whose squares
    # cannot overflow
    m = (e_all >= lo) & (e_all <= hi) & (np.abs(y_all) < MAX_SIGNAL)
    if sigma is not None:
        m &= np.isfinite(sigma) & (np.asarray(sigma) > 0)
    k = len(refs.names)
    if m.sum() < k + 6:
        raise FitError(
            f"fit range {lo:.1f}-{hi:.1f} eV holds {int(m.sum())} usable points; "
            f"need at least {k + 6}"
        )
    if lo < refs.energy[0] - 1e-9 or hi > refs.energy[-1] + 1e-9:
        raise FitError(
            f"fit range {lo:.1f}-{hi:.1f} eV is outside the references "
            f"({refs.energy[0]:.1f}-{refs.energy[-1]:.1f} eV)"
        )
    in_range = (e_all >= lo) & (e_all <= hi)
    unusable = int(in_range.sum() - m.sum())
    e, y = e_all[m], y_all[m]
    if sigma is not None:
        s = np.asarray(sigma, dtype=np.float64)[m]
        noise = "counting noise"
    else:
        s = np.full_like(y, point_scatter(e, y))
        noise = "point scatter"
        if not (np.isfinite(s[0]) and s[0] > 0):
            s = np.ones_like(y)  # a noiseless (model) spectrum: the residual sets the scale
    left_out: list[float] = []
    shift, within = _coarse_shift(e, y, 1.0 / s, _unit_x(e, (lo, hi)), refs, max_shift_eV)
    for _ in range(MAX_GLITCH_ROUNDS + 1):
        linear, resid = _fit_linear(e, y, s, refs, shift, within, max_shift_eV, (lo, hi), noise)
        spikes = _glitches(e, resid)
        if not spikes.any() or len(e) - spikes.sum() < k + 6:
            break
        if len(left_out) + spikes.sum() > max(MAX_GLITCHES, GLITCH_SHARE * len(e_all)):
            # so many "spikes" are features the references lack, not detector glitches:
            # all kept, and the fit's residual says the rest
            break
        index = np.searchsorted(e_all, e[spikes])
        earlier = np.searchsorted(e_all, left_out)
        if np.isin(index, np.concatenate([earlier - 1, earlier + 1])).any():
            break  # next to a point already left out: a feature, not an isolated spike
        left_out += e[spikes].tolist()
        e, y, s = e[~spikes], y[~spikes], s[~spikes]
        shift, within = linear.shift_eV, SHIFT_GRID_EV / 2
    if self_absorption:
        _check_edge_step(refs)
        linear = _fit_self_absorbed(e, y, 1.0 / s, _unit_x(e, (lo, hi)), refs, linear, max_shift_eV)
    return _judge(linear, refs, max_shift_eV, sorted(left_out), unusable)


def _check_edge_step(refs: References) -> None:
    """The saturation model reads mu in units of the edge step: each reference must start
    near 0 and end near 1 (pre-edge 0, post-edge 1)."""
    n = max(len(refs.energy) // 20, 1)
    pre = refs.spectra[:n].mean(axis=0)
    post = refs.spectra[-n:].mean(axis=0)
    off = [
        f"{name} (pre-edge {a:.2f}, post-edge {b:.2f})"
        for name, a, b in zip(refs.names, pre, post, strict=True)
        if abs(a) > 0.15 or abs(b - 1.0) > 0.15
    ]
    if off:
        raise FitError(
            f"self-absorption needs references normalised to a unit edge step (pre-edge 0, "
            f"post-edge 1); {refs.source or 'the references'}: {', '.join(off)}"
        )


def _unit_x(e: np.ndarray, fit_range: tuple[float, float]) -> np.ndarray:
    """Energy mapped to [-1, 1] over the fit range: the drift and background coordinate."""
    lo, hi = fit_range
    return (e - 0.5 * (lo + hi)) / (0.5 * (hi - lo))


def _fit_linear(
    e: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    refs: References,
    shift: float,
    within: float,
    max_shift: float,
    fit_range: tuple[float, float],
    noise: str,
) -> tuple[FitResult, np.ndarray]:
    """Refine from the coarse shift: Gauss-Newton on the shift (kept within ``within`` eV
    of it), the weights, background and drift linear at each step. Also the residual in
    units of the noise."""
    k = len(refs.names)
    w = 1.0 / s
    yw = y * w
    x = _unit_x(e, fit_range)
    wx, x2 = w * x, x * x - 1.0 / 3.0
    lo_s, hi_s = max(shift - within, -max_shift), min(shift + within, max_shift)

    def design(r: np.ndarray, dr: np.ndarray, c: np.ndarray | None, drift: bool) -> np.ndarray:
        """The weighted columns: references, offset, slope, [drift of the mixture ``c``
        times x and (x^2 - 1/3)], [d model / d shift]; filled in place (stacking the
        columns anew each iteration cost a fifth of the fit)."""
        m = k + 2 + (2 * drift if c is not None else 0) + (c is not None)
        a = np.empty((len(w), m))
        np.multiply(r, w[:, None], out=a[:, :k])
        a[:, k], a[:, k + 1] = w, wx
        if c is not None:
            if drift:
                wmix = a[:, :k] @ c  # the mixture, weighted
                a[:, k + 2], a[:, k + 3] = x * wmix, x2 * wmix
            a[:, -1] = -(dr @ c) * w
        return a

    # the first mixture without the drift: the drift columns are the previous mixture times
    # x, and from a guessed mixture they could carry the whole spectrum with no weight at all
    r, dr = refs.on_with_derivative(e, shift)
    c = _solve(design(r, dr, None, False), yw, k)[:k]
    if not np.any(c > 0):
        raise FitError("no positive combination of the references fits this spectrum")
    drift = True
    for _ in range(5):
        mix = r @ c
        coef = _solve(design(r, dr, c, drift), yw, k)
        if drift and not _drift_plausible(coef, k, r, mix):
            drift = False  # a drift this large is not I0: fit the weights without it
            continue
        c = coef[:k]
        step = float(coef[-1])
        new = min(max(shift + step, lo_s), hi_s)
        step, shift = new - shift, new
        r, dr = refs.on_with_derivative(e, shift)
        if abs(step) < 2e-3:  # far below the 0.1 eV scan step
            break
    mix = r @ c
    jac = design(r, dr, c, drift)
    coef = _solve(jac[:, :-1], yw, k)
    if drift and not _drift_plausible(coef, k, r, mix):
        drift, jac = False, design(r, dr, c, False)
        coef = _solve(jac[:, :-1], yw, k)
    a = jac[:, :-1]
    c, (b0, b1) = coef[:k], coef[k : k + 2]
    tilt_c, curv_c = coef[k + 2 :] if drift else (0.0, 0.0)
    total = float(c.sum())
    if total <= 0:
        raise FitError("no positive combination of the references fits this spectrum")
    resid = a @ coef - yw
    jac[:, -1] = -(dr @ c) * w  # the shift's column at the final weights
    per_unit = float(mix.sum() / (r @ c).sum())
    fit = _result(
        refs,
        c,
        jac,
        resid,
        n_extra=a.shape[1] - k + 1,
        shift=shift,
        scale=total,
        background=(float(b0), float(b1)),
        # the drift columns multiply the previous iterate's mixture: per unit of this one
        tilt=float(tilt_c * per_unit),
        curvature=float(curv_c * per_unit),
        fit_range=fit_range,
        noise=noise,
    )
    return fit, resid


MAX_DRIFT = 0.5  # relative: I0 normalisation leaves a few percent, never half the signal


def _drift_plausible(coef: np.ndarray, k: int, r: np.ndarray, mix: np.ndarray) -> bool:
    new = float((r @ coef[:k]).sum())
    if new <= 0:
        return False
    per_unit = float(mix.sum()) / new
    return bool(
        abs(coef[k + 2]) * per_unit <= MAX_DRIFT and abs(coef[k + 3]) * per_unit <= MAX_DRIFT
    )


def _result(
    refs: References,
    c: np.ndarray,
    jac: np.ndarray,
    resid: np.ndarray,
    *,
    n_extra: int,
    shift: float,
    scale: float,
    background: tuple[float, float],
    tilt: float,
    curvature: float,
    fit_range: tuple[float, float],
    noise: str,
    beta: float | None = None,
    method: str = "linear",
) -> FitResult:
    # with ``beta``, the Jacobian's second-to-last column is d model / d ln(beta)
    """Fractions and their uncertainties from the weighted residual and Jacobian.

    The covariance is in units of the noise (``noise``), widened when the fit is worse than
    that noise (chi2_red > 1) and when its residual is correlated (a shape the model misses
    is not averaged away by more points). Every reference's column takes part, also one
    whose weight sits at 0: its sigma then says how large it could be, not 0."""
    k = len(c)
    n = len(resid)
    active = c > 0
    dof = max(n - int(active.sum()) - n_extra, 1)
    chi2_red = float(resid @ resid / dof)
    rho = _lag1(resid)
    correlated = (1.0 + max(rho, 0.0)) / (1.0 - min(max(rho, 0.0), 0.9))
    jtj = jac.T @ jac
    inv = np.full_like(jtj, np.nan)
    try:
        if beta is None:  # the linear model's columns are independent: an inverse
            inv = np.linalg.inv(jtj)
        ok = beta is None and bool(np.all(np.diag(inv) > 0))
        if not ok:
            # the self-absorption Jacobian is singular along the weights' common scale (the
            # model reads c / sum(c)), and near-twin references nearly so: an inverse
            # returns noise there, the pseudo-inverse leaves that direction out
            inv = np.linalg.pinv(jtj)
    except np.linalg.LinAlgError:
        pass
    if noise == "counting noise":
        cov = inv * max(chi2_red, 1.0) * correlated
    else:
        # An estimated, constant noise misses that it is larger on the white line (counts,
        # or a current's shot noise, grow with the signal): the sandwich covariance takes
        # each point's own residual instead (HC1).
        meat = (jac * resid[:, None] ** 2).T @ jac
        cov = inv @ meat @ inv * (n / dof) * correlated
    cov_c = cov[:k, :k]
    total = float(c.sum())
    fr = c / total
    dfrac = (np.eye(k) * total - c[:, None]) / total**2  # d fraction_i / d c_j
    cov_f = dfrac @ cov_c @ dfrac.T
    unc = np.sqrt(np.clip(np.diag(cov_f), 0, None))
    beta_unc = None if beta is None else beta * math.sqrt(max(float(cov[-2, -2]), 0.0))
    ox = refs.oxidation
    valence = float(fr @ ox) if np.all(np.isfinite(ox)) else math.nan
    val_unc = float(math.sqrt(max(ox @ cov_f @ ox, 0.0))) if np.all(np.isfinite(ox)) else math.nan
    return FitResult(
        fractions=dict(zip(refs.names, fr.tolist(), strict=True)),
        uncertainties=dict(zip(refs.names, unc.tolist(), strict=True)),
        average_valence=valence,
        valence_uncertainty=val_unc,
        shift_eV=shift,
        chi2_red=chi2_red,
        scale=scale,
        background=background,
        tilt=tilt,
        curvature=curvature,
        self_absorption_beta=beta,
        self_absorption_beta_uncertainty=beta_unc,
        fit_range=fit_range,
        n_points=n,
        method=method,
        weighted=noise == "counting noise",
        noise=noise,
        residual_correlation=rho,
    )


def _lag1(resid: np.ndarray) -> float:
    r = resid - resid.mean()
    den = float(r @ r)
    return float(r[1:] @ r[:-1] / den) if den > 0 else 0.0


CHI2_POOR = 4.0  # residual rms twice the noise: the model does not describe the spectrum
CHI2_CHECK = 2.0
CORRELATION_POOR = 0.8  # the residual is a shape, not noise
CORRELATION_CHECK = 0.5
BETA_LIMITS = (0.3, 1e4)


def _judge(
    fit: FitResult, refs: References, max_shift: float, left_out: list[float], unusable: int
) -> FitResult:
    """Say what the numbers cannot: parameters at a limit, a fit worse than the noise, a
    residual with structure, points left out."""
    at_bound = [f"{n} = {round(v)}" for n, v in fit.fractions.items() if v <= 0 or v >= 1]
    poor: list[str] = []
    check: list[str] = []
    if abs(fit.shift_eV) >= max_shift - 1e-6:
        at_bound.append(f"shift = {fit.shift_eV:+.2f} eV")
        poor.append(f"energy shift at its limit ({fit.shift_eV:+.2f} eV): wrong references?")
    beta = fit.self_absorption_beta
    if beta is not None and beta <= BETA_LIMITS[0] * 1.001:
        at_bound.append(f"beta = {beta:.3g}")
        poor.append("self-absorption at its strongest limit (beta)")
    elif beta is not None and beta >= BETA_LIMITS[1] * 0.999:
        at_bound.append(f"beta = {beta:.3g}")
        check.append("no self-absorption resolved (beta at its upper limit)")
    bounded = [b for b in at_bound if b.split(" = ")[0] in fit.fractions]
    if bounded:
        check.append(f"at a bound: {', '.join(bounded)} (sigma: how far it could be)")
    label = f"chi2_red {fit.chi2_red:.1f} against the {fit.noise}"
    if fit.chi2_red > CHI2_POOR:
        poor.append(f"{label}: the references do not describe this spectrum")
    elif fit.chi2_red > CHI2_CHECK:
        check.append(label)
    rho = fit.residual_correlation
    if rho > CORRELATION_POOR:
        poor.append(f"residual is a shape, not noise (correlation {rho:.2f})")
    elif rho > CORRELATION_CHECK:
        check.append(f"residual has structure (correlation {rho:.2f})")
    if left_out:
        check.append(f"{len(left_out)} glitch point(s) left out")
    if unusable:
        check.append(f"{unusable} unusable point(s) (NaN, I0 = 0) left out")
    quality = "poor" if poor else "check" if check else "good"
    return msgspec.structs.replace(
        fit,
        at_bound=tuple(at_bound),
        quality=quality,
        notes=tuple(poor + check),
        left_out_eV=tuple(left_out),
    )


def model_curve(energy: np.ndarray, refs: References, fit: FitResult) -> np.ndarray:
    """The fitted spectrum on ``energy`` (to draw beside the data, and its residual)."""
    e = np.asarray(energy, dtype=np.float64)
    lo, hi = fit.fit_range
    x = (e - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    f = np.array([fit.fractions[n] for n in refs.names])
    mu = refs.on(e, fit.shift_eV) @ f
    if fit.self_absorption_beta is not None:
        mu = saturate(mu, fit.self_absorption_beta)
    b0, b1 = fit.background
    return fit.scale * mu * _drift(x, fit.tilt, fit.curvature) + b0 + b1 * x


def _drift(x: np.ndarray, tilt: float, curvature: float) -> np.ndarray:
    return 1.0 + tilt * x + curvature * (x * x - 1.0 / 3.0)


def saturate(mu: np.ndarray, beta: float) -> np.ndarray:
    """Self-absorbed fluorescence of a thick sample, post-edge level kept at 1."""
    return mu * (1.0 + beta) / (np.maximum(mu, 0.0) + beta)


class _Saturated(NamedTuple):
    """The self-absorption model's pieces at one parameter vector (model and Jacobian)."""

    c: np.ndarray
    r: np.ndarray
    dr: np.ndarray
    total: float
    mu: np.ndarray
    mu_pos: np.ndarray
    beta: float
    sat: np.ndarray
    drift: np.ndarray
    model: np.ndarray


def _fit_self_absorbed(
    e: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    x: np.ndarray,
    refs: References,
    start: FitResult,
    max_shift_eV: float,
) -> FitResult:
    k = len(refs.names)
    f0 = np.array([start.fractions[n] for n in refs.names])
    p0 = np.concatenate(
        [
            np.maximum(f0, 1e-3),
            [
                start.scale,
                *start.background,
                start.tilt,
                start.curvature,
                math.log(20.0),
                start.shift_eV,
            ],
        ]
    )
    ln_lo, ln_hi = math.log(BETA_LIMITS[0]), math.log(BETA_LIMITS[1])
    lb = np.concatenate([np.zeros(k), [0, -np.inf, -np.inf, -0.5, -0.5, ln_lo, -max_shift_eV]])
    ub = np.concatenate(
        [np.full(k, np.inf), [np.inf, np.inf, np.inf, 0.5, 0.5, ln_hi, max_shift_eV]]
    )

    x2 = x * x - 1.0 / 3.0
    pin = np.concatenate([np.full(k, 1e3), np.zeros(7)])  # the row that pins sum(c) = 1

    last: list[tuple[bytes, _Saturated]] = []

    def parts(p: np.ndarray) -> _Saturated:
        # least_squares asks for the Jacobian at the point whose residual it has just had:
        # the model's pieces are kept for that one point (half the evaluations)
        key = p.tobytes()
        if last and last[0][0] == key:
            return last[0][1]
        c, (s, b0, b1, t, q, lnb, shift) = p[:k].copy(), p[k:]
        r, dr = refs.on_with_derivative(e, shift)
        total = max(float(c.sum()), 1e-12)
        mu = r @ c / total
        beta = math.exp(lnb)
        mp = np.maximum(mu, 0.0)
        sat = mu * (1.0 + beta) / (mp + beta)
        drift = 1.0 + t * x + q * x2
        model = s * sat * drift + b0 + b1 * x
        last[:] = [(key, _Saturated(c, r, dr, total, mu, mp, beta, sat, drift, model))]
        return last[0][1]

    def residuals(p: np.ndarray) -> np.ndarray:
        # The last row pins sum(c) = 1: fractions are c, the scale is s.
        return np.append((parts(p).model - y) * w, 1e3 * (p[:k].sum() - 1.0))

    def jacobian(p: np.ndarray) -> np.ndarray:
        # Analytic: a finite-difference Jacobian cost 12 model evaluations an iteration.
        m = parts(p)
        s, beta, mu, mp = p[k], m.beta, m.mu, m.mu_pos
        d_sat = (1.0 + beta) * beta / (mp + beta) ** 2  # d sat / d mu
        sd = s * m.drift * d_sat
        cols = [
            sd[:, None] * (m.r - mu[:, None]) / m.total,  # each c
            m.sat * m.drift,  # s
            np.ones_like(e),  # b0
            x,  # b1
            s * m.sat * x,  # t
            s * m.sat * x2,  # q
            s * m.drift * beta * mu * (mu - 1.0) / (mp + beta) ** 2,  # ln beta
            -sd * (m.dr @ m.c) / m.total,  # shift
        ]
        jac = np.column_stack(cols) * w[:, None]
        return np.vstack([jac, pin])

    sol = least_squares(
        residuals,
        np.clip(p0, lb + 1e-9, ub - 1e-9),
        jac=cast(Any, jacobian),  # scipy's stubs know only the string options
        bounds=(lb, ub),
        x_scale="jac",
        max_nfev=200,
    )
    p = sol.x
    c = p[:k] / p[:k].sum()
    resid = (parts(p).model - y) * w
    jac = sol.jac[:-1]
    c = np.where(c > 1e-6, c, 0.0)
    s, b0, b1, t, q, lnb, shift = p[k:]
    return _result(
        refs,
        c,
        jac,
        resid,
        n_extra=7,
        shift=float(shift),
        scale=float(s),
        background=(float(b0), float(b1)),
        tilt=float(t),
        curvature=float(q),
        fit_range=start.fit_range,
        noise=start.noise,
        beta=float(math.exp(lnb)),
        method="self_absorption",
    )
