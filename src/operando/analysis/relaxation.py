"""Relaxation after the current stops: rest detection and exponential fits chosen by AIC.

Models of a quantity y (a valence fraction, or Ewe) against time since the current stopped:
  single:     y_inf + (y0 - y_inf) exp(-t / tau)
  stretched:  y_inf + (y0 - y_inf) exp(-(t / tau)^beta)
  double:     y_inf + a1 exp(-t / tau1) + a2 exp(-t / tau2)
The one with the lowest AIC (n ln(RSS/n) + 2k, corrected for small n) among those the data
determine is reported (no tau over three times the rest or uncertain by more than itself, no
double component of insignificant amplitude); when none is, the result says tau is not
determined. The stretched and double models are tried only with two points per parameter. A
spectrum takes minutes, so a tau shorter than the scan duration cannot be resolved: the result
says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import msgspec
import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


def _single(t, y_inf, y0, tau):
    return y_inf + (y0 - y_inf) * np.exp(-t / tau)


def _stretched(t, y_inf, y0, tau, beta):
    return y_inf + (y0 - y_inf) * np.exp(-((t / tau) ** beta))


def _double(t, y_inf, a1, tau1, a2, tau2):
    return y_inf + a1 * np.exp(-t / tau1) + a2 * np.exp(-t / tau2)


class ModelFit(msgspec.Struct):
    model: str
    params: dict[str, float]
    errors: dict[str, float]
    aic: float
    rss: float


class RelaxationResult(msgspec.Struct):
    best: str
    tau_s: float  # of the best model (the slower one for a double exponential)
    tau_err_s: float
    fits: list[ModelFit]
    n_points: int
    resolved: bool
    note: str = ""
    # the data fix tau (a tau shorter than a scan is determined, only not resolved)
    determined: bool = True


TAU_BOUND = 100.0  # the longest tau fitted, in spans of the rest: beyond, a straight line
# The longest tau a rest determines, in spans of it: a slower decay has not yet bent the
# curve (a third of its amplitude gone by the end at most) and a straight line fits as well.
TAU_SEEN = 3.0

MODELS: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "single": (_single, ("y_inf", "y0", "tau")),
    "stretched": (_stretched, ("y_inf", "y0", "tau", "beta")),
    "double": (_double, ("y_inf", "a1", "tau1", "a2", "tau2")),
}


def series_name(edge: str, channel: str) -> str:
    """What a rest's valence series is called: "Mn-L TEY" (an edge's channel), "Ewe"."""
    return f"{edge} {channel}" if edge else channel


def split_series(name: str) -> tuple[str, str]:
    """(edge, channel) of a series name; no edge for "Ewe", or for a run recorded before
    series named their edge ("TEY")."""
    edge, _, channel = name.rpartition(" ")
    return edge, channel


def evaluate(fit: ModelFit, t: np.ndarray) -> np.ndarray:
    """A fitted model at ``t`` (seconds since the current stopped)."""
    func, names = MODELS[fit.model]
    return func(np.asarray(t, float), *(fit.params[n] for n in names))


def fit_relaxation(
    t: np.ndarray, y: np.ndarray, sigma: np.ndarray | None = None, *, scan_duration_s: float = 0.0
) -> RelaxationResult:
    """Fit y(t) (t: seconds since the current stopped) with each model; pick by AICc."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    n = len(t)
    if n < 4:
        raise ValueError(f"relaxation fit needs at least 4 points, got {n}")
    span = float(t.max() - t.min()) or 1.0
    y0, yl = float(y[np.argmin(t)]), float(y[np.argmax(t)])
    amp = y0 - yl
    starts = {
        "single": (
            [yl, y0, span / 3],
            ([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, TAU_BOUND * span]),
        ),
        "stretched": (
            [yl, y0, span / 3, 0.8],
            ([-np.inf, -np.inf, 1e-3, 0.2], [np.inf, np.inf, TAU_BOUND * span, 1.5]),
        ),
        "double": (
            [yl, amp / 2, span / 20, amp / 2, span / 3],
            (
                [-np.inf, -np.inf, 1e-3, -np.inf, 1e-3],
                [np.inf, np.inf, TAU_BOUND * span, np.inf, TAU_BOUND * span],
            ),
        ),
    }
    fits = []
    for name, (f, names) in MODELS.items():
        k = len(names)
        # the richer models only from two points per parameter: with fewer, AICc rejects
        # them anyway, after thousands of evaluations chasing a degenerate minimum
        if n <= k + 1 or (k > 3 and n < 2 * k):
            continue
        p0, bounds = starts[name]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                p, cov = curve_fit(
                    f,
                    t,
                    y,
                    p0=p0,
                    bounds=bounds,
                    sigma=sigma,
                    absolute_sigma=sigma is not None,
                    maxfev=2000,
                )
        except (RuntimeError, ValueError):
            continue
        resid = (f(t, *p) - y) / (sigma if sigma is not None else 1.0)
        rss = float(resid @ resid)
        aic = n * math.log(max(rss, 1e-300) / n) + 2 * k
        aic += 2 * k * (k + 1) / max(n - k - 1, 1)  # small-sample correction (AICc)
        err = (
            np.sqrt(np.clip(np.diag(cov), 0, None))
            if np.all(np.isfinite(cov))
            else np.full(k, np.nan)
        )
        fits.append(
            ModelFit(
                name,
                dict(zip(names, map(float, p), strict=True)),
                dict(zip(names, map(float, err), strict=True)),
                aic,
                rss,
            )
        )
    if not fits:
        raise ValueError("no relaxation model converged")
    # AICc picks among the fits the data determine; a time constant far beyond the rest or
    # known to no better than itself, or a double's component of no significant amplitude,
    # says nothing about the rest (seen: a tau of 183,600 +- 27,848,649 s, a straight line)
    why = {m.model: why_undetermined(m, span) for m in fits}
    determined = [m for m in fits if not why[m.model]]
    best = min(determined or fits, key=lambda m: m.aic)
    if best.model == "double":
        slow = "tau1" if best.params["tau1"] > best.params["tau2"] else "tau2"
        tau, tau_err = best.params[slow], best.errors[slow]
    else:
        tau, tau_err = best.params["tau"], best.errors["tau"]
    resolved = bool(determined) and tau > scan_duration_s
    if not determined:
        note = f"tau not determined by {span:.0f} s of rest: {why[best.model]}"
    elif not resolved:
        note = f"tau {tau:.0f} s is shorter than one scan ({scan_duration_s:.0f} s): not resolved"
    else:
        note = ""
    return RelaxationResult(best.model, tau, tau_err, fits, n, resolved, note, bool(determined))


def why_undetermined(fit: ModelFit, span: float) -> str:
    """Why the data do not determine this fit's time constants ('' when they do)."""
    for name in ("tau", "tau1", "tau2"):
        if name not in fit.params:
            continue
        tau, err = fit.params[name], fit.errors[name]
        if tau > TAU_SEEN * span:
            return f"{fit.model} {name} {tau:.0f} s, over {TAU_SEEN:g} times the rest"
        if not err <= tau:  # NaN too
            return f"{fit.model} {name} {tau:.3g} +- {err:.3g} s"
    for name in ("a1", "a2"):
        if name in fit.params and not abs(fit.params[name]) > fit.errors[name]:
            return f"{fit.model} amplitude {name} {fit.params[name]:.3g} +- {fit.errors[name]:.3g}"
    return ""
