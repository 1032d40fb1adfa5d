"""Relaxation after the current stops: rest detection and exponential fits chosen by AIC.

Models of a quantity y (a valence fraction, or Ewe) against time since the current stopped:
  single:     y_inf + (y0 - y_inf) exp(-t / tau)
  stretched:  y_inf + (y0 - y_inf) exp(-(t / tau)^beta)
  double:     y_inf + a1 exp(-t / tau1) + a2 exp(-t / tau2)
The one with the lowest AIC (n ln(RSS/n) + 2k, corrected for small n) is reported; the
stretched and double models are tried only with two points per parameter. A spectrum
takes minutes, so a tau shorter than the scan duration cannot be resolved: the result says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import msgspec
import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


class RestPeriod(msgspec.Struct, frozen=True):
    t_stop: float  # when |I| fell below the threshold
    t_end: float  # last sample still at rest (or the end of the record)


def rest_periods(
    t: np.ndarray, current_mA: np.ndarray, threshold_mA: float, min_duration_s: float = 0.0
) -> list[RestPeriod]:
    """Intervals with |I| below ``threshold_mA`` that follow a current step."""
    rest = np.abs(np.asarray(current_mA)) < threshold_mA
    out = []
    k, n = 1, len(t)
    while k < n:
        if rest[k] and not rest[k - 1]:
            j = k
            while j + 1 < n and rest[j + 1]:
                j += 1
            if t[j] - t[k] >= min_duration_s:
                out.append(RestPeriod(float(t[k]), float(t[j])))
            k = j + 1
        else:
            k += 1
    return out


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


MODELS: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "single": (_single, ("y_inf", "y0", "tau")),
    "stretched": (_stretched, ("y_inf", "y0", "tau", "beta")),
    "double": (_double, ("y_inf", "a1", "tau1", "a2", "tau2")),
}


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
        "single": ([yl, y0, span / 3], ([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 100 * span])),
        "stretched": (
            [yl, y0, span / 3, 0.8],
            ([-np.inf, -np.inf, 1e-3, 0.2], [np.inf, np.inf, 100 * span, 1.5]),
        ),
        "double": (
            [yl, amp / 2, span / 20, amp / 2, span / 3],
            (
                [-np.inf, -np.inf, 1e-3, -np.inf, 1e-3],
                [np.inf, np.inf, 100 * span, np.inf, 100 * span],
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
    best = min(fits, key=lambda m: m.aic)
    if best.model == "double":
        slow = "tau1" if best.params["tau1"] > best.params["tau2"] else "tau2"
        tau, tau_err = best.params[slow], best.errors[slow]
    else:
        tau, tau_err = best.params["tau"], best.errors["tau"]
    resolved = tau > scan_duration_s
    note = (
        ""
        if resolved
        else (f"tau {tau:.0f} s is shorter than one scan ({scan_duration_s:.0f} s): not resolved")
    )
    return RelaxationResult(best.model, tau, tau_err, fits, n, resolved, note)
