"""Series analysis for when references are missing: SVD rank and MCR-ALS (pyMCR).

Warning that always applies: MCR-ALS components are determined only up to a rotation
(rotational ambiguity); non-negativity and closure narrow it but do not remove it. Seed with
known references where there are any, and read the components as hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from pymcr.constraints import ConstraintNonneg, ConstraintNorm
from pymcr.mcr import McrAR
from pymcr.regressors import NNLS

ROTATIONAL_AMBIGUITY = (
    "MCR-ALS components are unique only up to a rotation: non-negativity and closure narrow "
    "the set of solutions but do not make it one; treat components as hypotheses and seed "
    "with known references where possible"
)


def svd_rank(series: np.ndarray, noise: float | None = None) -> tuple[int, np.ndarray]:
    """Number of components above the noise, and the singular values.

    ``series`` is (n_spectra, n_energy). With ``noise`` (per-point standard deviation), a
    component counts when its singular value exceeds the noise floor sqrt(n_spectra) +
    sqrt(n_energy) times noise (random-matrix edge); otherwise the largest gap in log s.
    """
    s = np.linalg.svd(np.asarray(series, float), compute_uv=False)
    if noise is not None:
        floor = noise * (np.sqrt(series.shape[0]) + np.sqrt(series.shape[1]))
        return max(int(np.sum(s > floor)), 1), s
    ls = np.log(np.maximum(s, 1e-300))
    gaps = ls[:-1] - ls[1:]
    return int(np.argmax(gaps[: max(len(gaps) - 1, 1)]) + 1), s


@dataclass(frozen=True)
class MCRResult:
    concentrations: np.ndarray  # (n_spectra, k), rows sum to one
    components: np.ndarray  # (k, n_energy)
    n_iter: int
    residual: float  # relative, ||D - C S|| / ||D||
    warning: str = ROTATIONAL_AMBIGUITY


def mcr_als(
    series: np.ndarray, n_components: int, *, seed: np.ndarray | None = None, max_iter: int = 200
) -> MCRResult:
    """MCR-ALS with non-negative spectra and concentrations, concentrations closed to one.

    ``seed``: initial component spectra (k, n_energy), e.g. known references; without one the
    spectra at the extremes of the first SVD scores start the iteration.
    """
    d = np.asarray(series, float)
    if seed is None:
        u, _, _ = np.linalg.svd(d, full_matrices=False)
        picks = np.unique(
            np.concatenate([np.argsort(u[:, j])[[0, -1]] for j in range(n_components)])
        )[:n_components]
        seed = d[picks]
    mcr = McrAR(
        max_iter=max_iter,
        c_regr=cast(Any, NNLS()),  # pymcr declares its regressors as OLS only
        st_regr=cast(Any, NNLS()),
        tol_increase=2.0,
        c_constraints=[ConstraintNonneg(), ConstraintNorm()],
        st_constraints=[ConstraintNonneg()],
    )
    mcr.fit(d, ST=np.asarray(seed, float), verbose=False)
    c, st, n_iter = mcr.C_opt_, mcr.ST_opt_, mcr.n_iter
    assert c is not None and st is not None and n_iter is not None  # set by fit
    fit = c @ st
    return MCRResult(c, st, int(n_iter), float(np.linalg.norm(d - fit) / np.linalg.norm(d)))
