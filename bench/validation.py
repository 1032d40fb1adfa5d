"""Valence fits on spectra our simulator did not make: the Fe L and Ni L validation sets.

    python bench/validation.py [--set fe|ni|both] [--json]

``shared/data/validation`` (beside the checkout) holds multiplet-calculated Fe L2,3 and Ni
L2,3 spectra with known truth, distorted as real scans are (shifts, sloped backgrounds, I0
drift, Poisson noise, TFY self-absorption, glitches, uneven grids); its README describes them.
Each spectrum's column-text file is fitted with ``operando.fit_scan``, exactly as the monitor
would (its channel is the file's signal column; fluorescence channels with self-absorption as
the default ``[analysis] self_absorption`` says; the edge's default fit window), against the
set's references. The error of a spectrum is max_i |fraction_i - truth_i|.

Prints, per set and subset (the README's rows): median / p95 / max error, how many fits
failed, the share of spectra whose every fraction lies within 2 sigma of the truth
(coverage), the median reported sigma against the median actual error, and how many results
sit at a bound (a fraction at 0 or 1, the shift at its limit). The README's two baselines are
the numbers to beat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from operando.analysis.lcf import FitError
from operando.analysis.references import References
from operando.analysis.valence import fit_scan
from operando.config import AnalysisConfig

VALIDATION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "validation"
SETS = {"fe": ("fe_L23", "Fe-L"), "ni": ("ni_L23", "Ni-L")}
MAX_SHIFT_EV = 1.5  # fit_spectrum's default limit


def subsets(truth: dict[str, Any], noise: np.ndarray) -> dict[str, list[int]]:
    clean = truth["subsets"]["clean"]
    return {
        "clean, noise <= 1 %": [k for k in clean if noise[k] <= 0.01],
        "clean, noise 1-3 %": [k for k in clean if noise[k] > 0.01],
        "self-absorbed (TFY)": truth["subsets"]["self_absorbed"],
        "glitch": truth["subsets"]["glitch"],
        "uneven grid": truth["subsets"]["uneven_grid"],
    }


def fit_set(name: str) -> dict[str, Any]:
    folder, edge = SETS[name]
    root = VALIDATION / folder
    d = np.load(root / f"{name}_validation.npz", allow_pickle=False)
    truth = json.loads((root / f"{name}_validation_truth.json").read_text())
    refs = References.from_file(root / f"{name}_references.csv")
    self_absorbed = set(AnalysisConfig().self_absorption)
    rows = []
    t0 = time.perf_counter()
    for k, fname in enumerate(d["file_name"]):
        data = np.loadtxt(root / "spectra" / str(fname))
        channel = str(d["mode"][k])
        arrays = {"energy": data[:, 0], "I0": data[:, 1], channel: data[:, 2]}
        true = d["true_fractions"][k]
        try:
            fit = fit_scan(
                arrays, channel, refs, edge=edge, self_absorption=channel in self_absorbed
            )
        except (FitError, ValueError, np.linalg.LinAlgError) as e:
            rows.append({"k": k, "error": str(e)})
            continue
        f = np.array([fit.fractions[n] for n in refs.names])
        u = np.array([fit.uncertainties[n] for n in refs.names])
        err = np.abs(f - true)
        rows.append(
            {
                "k": k,
                "max_error": float(err.max()),
                "sigma": float(u[np.argmax(err)]),
                "covered": bool(np.all(err <= 2 * u)),
                "at_bound": bool(
                    np.any((f <= 1e-9) | (f >= 1 - 1e-9))
                    or abs(fit.shift_eV) >= MAX_SHIFT_EV - 1e-6
                ),
                "shift_error": float(fit.shift_eV - d["true_shift"][k]),
                "chi2_red": fit.chi2_red,
            }
        )
    elapsed = time.perf_counter() - t0
    table = {}
    for subset, members in subsets(truth, d["true_noise_level"]).items():
        ok = [r for r in rows if r["k"] in members and "error" not in r]
        errors = [r["max_error"] for r in ok]
        table[subset] = {
            "n": len(members),
            "failed": len(members) - len(ok),
            "median": statistics.median(errors) if errors else None,
            "p95": float(np.percentile(errors, 95)) if errors else None,
            "max": max(errors) if errors else None,
            "coverage_2sigma": sum(r["covered"] for r in ok) / len(ok) if ok else None,
            "median_sigma_over_median_error": (
                statistics.median(r["sigma"] for r in ok) / statistics.median(errors)
                if errors and statistics.median(errors) > 0
                else None
            ),
            "at_bound": sum(r["at_bound"] for r in ok),
            "median_abs_shift_error_eV": statistics.median(abs(r["shift_error"]) for r in ok)
            if ok
            else None,
        }
    return {"set": name, "edge": edge, "ms_per_fit": elapsed / len(rows) * 1e3, "subsets": table}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["fe", "ni", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="one JSON object per set")
    a = ap.parse_args()
    if not VALIDATION.is_dir():
        print(f"no validation data at {VALIDATION}: run beside shared/", file=sys.stderr)
        return 2
    for name in ("fe", "ni") if a.set == "both" else (a.set,):
        result = fit_set(name)
        if a.json:
            print(json.dumps(result), flush=True)
            continue
        print(f"\n{result['edge']} ({result['ms_per_fit']:.1f} ms a fit)")
        head = "| subset | n | failed | median / p95 / max | within 2 sigma | sigma / error |"
        print(head + " at bound |")
        print("|---|---|---|---|---|---|---|")
        for subset, r in result["subsets"].items():

            def f(v: float | None, fmt: str = ".4f") -> str:
                return "-" if v is None else format(v, fmt)

            print(
                f"| {subset} | {r['n']} | {r['failed']} | {f(r['median'])} / {f(r['p95'])} / "
                f"{f(r['max'])} | {f(r['coverage_2sigma'], '.0%')} | "
                f"{f(r['median_sigma_over_median_error'], '.1f')} | {r['at_bound']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
