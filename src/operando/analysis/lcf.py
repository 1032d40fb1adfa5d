"""Valence fractions by linear combination of references, robust to real soft X-ray scans.

Soft X-ray pre-edges are short and backgrounds sloped, and I0 division leaves a few-percent
drift, so a fixed normalisation followed by NNLS errs by ~0.02-0.09 in the fractions
(docs/decisions/0005). Instead the background and scale are fitted
together with the weights:

    y(E) = sum_v c_v ref_v(E - shift) * (1 + t x) + b0 + b1 x,   c_v >= 0,   x in [-1, 1]

The fractions are c_v / sum(c) (non-negative, summing to one); sum(c) is the edge-step scale.
The multiplicative drift ``t`` enters linearly through the previous iterate's mixture, and the
energy shift by Gauss-Newton on the references' derivative, so a fit is a handful of NNLS
solves (non-negative weights, free-sign background via split columns).

Fluorescence (TFY) of a concentrated sample saturates: I ~ mu (1 + beta) / (mu + beta) with mu
normalised to a unit edge step. ``self_absorption=True`` fits beta as well (scipy
least_squares from the linear fit's answer); references must then be edge-step normalised.

Uncertainties come from the linearised model's covariance at the solution, propagated to the
fractions: in the units of the given counting noise (scaled by the reduced chi-square when that
exceeds 1), or, with no noise given, scaled by the residual scatter (``weighted`` says which).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from scipy.optimize import least_squares, nnls

from operando.analysis.references import References
from operando.analysis.signal import MAX_SIGNAL


class FitError(ValueError):
    pass


class FitResult(msgspec.Struct, kw_only=True):
    fractions: dict[str, float]
    uncertainties: dict[str, float]
    average_valence: float
    valence_uncertainty: float
    shift_eV: float
    chi2_red: float
    scale: float  # edge-step scale of the mixture, in signal units
    background: tuple[float, float]  # offset and slope (per unit x) in signal units
    tilt: float  # multiplicative drift across the fit range, relative
    self_absorption_beta: float | None = None
    fit_range: tuple[float, float]
    n_points: int
    method: str = "linear"
    weighted: bool = False  # chi2_red is against given noise (True) or the scatter (False)


def _solve(a: np.ndarray, y: np.ndarray, n_pos: int) -> np.ndarray:
    """Least squares with the first ``n_pos`` coefficients >= 0 and the rest free."""
    free = a[:, n_pos:]
    split = np.hstack([a[:, :n_pos], free, -free])
    coef, _ = nnls(split, y, maxiter=50 * split.shape[1])
    k = free.shape[1]
    return np.concatenate([coef[:n_pos], coef[n_pos : n_pos + k] - coef[n_pos + k :]])


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
    e, y = e_all[m], y_all[m]
    w = 1.0 / np.asarray(sigma, dtype=np.float64)[m] if sigma is not None else np.ones_like(y)
    x = (e - 0.5 * (e[0] + e[-1])) / (0.5 * (e[-1] - e[0]))
    deriv = refs.derivative

    shift, c = 0.0, np.full(k, max(float(np.ptp(y)), 1e-12) / k)
    for _ in range(6):
        r, dr = refs.on_with_derivative(e, shift)
        mix = r @ c
        grad = -(dr @ c)  # d model / d shift
        a = np.column_stack([r, np.ones_like(e), x, x * mix, grad])
        coef = _solve(a * w[:, None], y * w, k)
        c = coef[:k]
        if not np.any(c > 0):
            raise FitError("no positive combination of the references fits this spectrum")
        step = min(max(float(coef[-1]), -0.5), 0.5)
        shift = min(max(shift + step, -max_shift_eV), max_shift_eV)
        if abs(step) < 2e-3:  # far below the 0.1 eV scan step
            break
    r, dr = refs.on_with_derivative(e, shift)
    mix = r @ c
    a = np.column_stack([r, np.ones_like(e), x, x * mix])
    coef = _solve(a * w[:, None], y * w, k)
    c, (b0, b1, tilt_c) = coef[:k], coef[k:]
    total = float(c.sum())
    if total <= 0:
        raise FitError("no positive combination of the references fits this spectrum")
    resid = (a @ coef - y) * w
    grad = -(dr @ c)
    jac = np.column_stack([a, grad]) * w[:, None]
    result = _result(
        refs,
        c,
        jac,
        resid,
        active=c > 0,
        n_extra=4,
        shift=shift,
        scale=total,
        background=(float(b0), float(b1)),
        tilt=float(tilt_c * mix.sum() / (r @ c).sum()),
        fit_range=(lo, hi),
        weighted=sigma is not None,
    )
    if not self_absorption:
        return result
    return _fit_self_absorbed(e, y, w, x, refs, deriv, result, max_shift_eV)


def _result(
    refs: References,
    c: np.ndarray,
    jac: np.ndarray,
    resid: np.ndarray,
    *,
    active: np.ndarray,
    n_extra: int,
    shift: float,
    scale: float,
    background: tuple[float, float],
    tilt: float,
    fit_range: tuple[float, float],
    weighted: bool,
    beta: float | None = None,
    method: str = "linear",
) -> FitResult:
    k = len(c)
    n = len(resid)
    dof = max(n - int(active.sum()) - n_extra, 1)
    chi2_red = float(resid @ resid / dof)
    keep = np.concatenate([active, np.ones(jac.shape[1] - k, dtype=bool)])
    cov_all = np.zeros((jac.shape[1], jac.shape[1]))
    j = jac[:, keep]
    try:
        cov = np.linalg.pinv(j.T @ j)
    except np.linalg.LinAlgError:
        cov = np.full((j.shape[1], j.shape[1]), np.nan)
    # Given noise (counts): the covariance is in its units, widened when the fit is worse
    # than that noise. No noise given (currents, or I0 not in counts): the residual scatter
    # is the only noise estimate, so the covariance scales with it; kept at 1 it assumed
    # unit noise per point and reported sigmas ~1000 times the real errors.
    cov_all[np.ix_(keep, keep)] = cov * (max(chi2_red, 1.0) if weighted else chi2_red)
    cov_c = cov_all[:k, :k]
    total = float(c.sum())
    fr = c / total
    dfrac = (np.eye(k) * total - c[:, None]) / total**2  # d fraction_i / d c_j
    cov_f = dfrac @ cov_c @ dfrac.T
    unc = np.sqrt(np.clip(np.diag(cov_f), 0, None))
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
        self_absorption_beta=beta,
        fit_range=fit_range,
        n_points=n,
        method=method,
        weighted=weighted,
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
    return fit.scale * mu * (1.0 + fit.tilt * x) + b0 + b1 * x


def saturate(mu: np.ndarray, beta: float) -> np.ndarray:
    """Self-absorbed fluorescence of a thick sample, post-edge level kept at 1."""
    return mu * (1.0 + beta) / (np.maximum(mu, 0.0) + beta)


def _fit_self_absorbed(
    e: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    x: np.ndarray,
    refs: References,
    deriv: References,
    start: FitResult,
    max_shift_eV: float,
) -> FitResult:
    k = len(refs.names)
    f0 = np.array([start.fractions[n] for n in refs.names])
    p0 = np.concatenate(
        [
            np.maximum(f0, 1e-3),
            [start.scale, *start.background, start.tilt, math.log(20.0), start.shift_eV],
        ]
    )
    lb = np.concatenate([np.zeros(k), [0.0, -np.inf, -np.inf, -0.5, math.log(0.3), -max_shift_eV]])
    ub = np.concatenate(
        [np.full(k, np.inf), [np.inf, np.inf, np.inf, 0.5, math.log(1e4), max_shift_eV]]
    )

    def model(p: np.ndarray) -> np.ndarray:
        c, (s, b0, b1, t, lnb, shift) = p[:k], p[k:]
        mu = refs.on(e, shift) @ c / max(c.sum(), 1e-12)
        return s * saturate(mu, math.exp(lnb)) * (1 + t * x) + b0 + b1 * x

    def residuals(p: np.ndarray) -> np.ndarray:
        # The last row pins sum(c) = 1: fractions are c, the scale is s.
        return np.append((model(p) - y) * w, 1e3 * (p[:k].sum() - 1.0))

    sol = least_squares(
        residuals, np.clip(p0, lb + 1e-9, ub - 1e-9), bounds=(lb, ub), x_scale="jac", max_nfev=400
    )
    p = sol.x
    c = p[:k] / p[:k].sum()
    resid = (model(p) - y) * w
    jac = sol.jac[:-1]
    active = c > 1e-6
    s, b0, b1, t, lnb, shift = p[k:]
    return _result(
        refs,
        c,
        jac,
        resid,
        active=active,
        n_extra=6,
        shift=float(shift),
        scale=float(s),
        background=(float(b0), float(b1)),
        tilt=float(t),
        fit_range=start.fit_range,
        weighted=start.weighted,
        beta=float(math.exp(lnb)),
        method="self_absorption",
    )
