"""Analysis benchmark: time per valence fit, against a bare NNLS in the same run.

    python bench/analysis.py [--n 500]

Prints JSON lines: the median time per fit of
- ``nnls_sum_to_one``: scipy nnls on the L3 fit range with a heavily weighted sum-to-one row
  (the baseline docs/decisions/0005 quotes at ~0.07 ms, no background, scale, drift or shift);
- ``fit_linear``: our TEY fit (background, scale, multiplicative drift, energy shift,
  uncertainties), with its ratio to the baseline; target <= 0.2 ms;
- ``fit_self_absorption``: our TFY fit with the saturation parameter (least squares).
Scans are simulated Mn L3 spectra with 1 % noise and every distortion switched on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from operando.drivers.sim.spectra import EDGES, Realism, references, synthesize_xas
from scipy.optimize import nnls

from operando.analysis.lcf import fit_spectrum
from operando.analysis.references import References


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args()
    ed = EDGES["Mn-L"]
    e = ed.axis()
    refs = References.from_mapping(e, references("Mn-L"))
    rng = np.random.default_rng(0)
    scans = []
    for _ in range(a.n):
        f = rng.dirichlet(np.ones(3))
        r = references("Mn-L", e - rng.uniform(-0.2, 0.2))
        mat = np.column_stack([r[v] for v in ed.names])
        frac = np.tile(f, (len(e), 1))
        ch = synthesize_xas(e, np.zeros(len(e)), mat, frac, frac, Realism(), rng)
        y = ch["TEY"] / ch["I0"]
        scans.append((y, y * np.sqrt(1 / ch["TEY"] + 1 / ch["I0"]), ch["TFY"] / ch["I0"], f))
    m = (e >= ed.fit_range[0]) & (e <= ed.fit_range[1])
    a_base = np.vstack([refs.on(e[m]), 1e3 * np.ones(3)])

    def timed(fn) -> float:
        times = []
        for y, sig, tfy, _ in scans:
            t0 = time.perf_counter()
            fn(y, sig, tfy)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    base = timed(lambda y, s, t: nnls(a_base, np.append(y[m] / y[m].max(), 1e3)))
    lin = timed(lambda y, s, t: fit_spectrum(e, y, refs, fit_range=ed.fit_range, sigma=s))
    sa = timed(lambda y, s, t: fit_spectrum(e, t, refs, self_absorption=True))
    errs = [
        max(
            abs(v - f[k])
            for k, v in enumerate(
                fit_spectrum(e, y, refs, fit_range=ed.fit_range, sigma=s).fractions.values()
            )
        )
        for y, s, _, f in scans[:100]
    ]
    print(json.dumps({"bench": "nnls_sum_to_one", "ms_per_fit": base}))
    print(
        json.dumps(
            {
                "bench": "fit_linear",
                "ms_per_fit": lin,
                "ratio_to_nnls": lin / base,
                "target_ms": 0.2,
                "max_fraction_error_100_scans": max(errs),
            }
        )
    )
    print(
        json.dumps({"bench": "fit_self_absorption", "ms_per_fit": sa, "ratio_to_nnls": sa / base})
    )


if __name__ == "__main__":
    main()
