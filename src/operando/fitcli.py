"""``operando fit``: the live analysis, run on scan files (a whole beamtime in one call)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from operando.analysis.lcf import FitError
from operando.analysis.references import References
from operando.analysis.valence import fit_scan
from operando.protocol import plain
from operando.scanfile import ScanFileError, pick, read_columns


def fit_files(
    files: list[str],
    references: str,
    *,
    channel: str,
    edge: str | None,
    fit_range: tuple[float, float] | None,
    self_absorption: bool,
    energy_col: str | None,
    i0_col: str | None,
    as_json: bool,
) -> int:
    refs = References.from_file(references)
    failures = 0
    for f in files:
        try:
            out = _fit_one(
                Path(f),
                refs,
                channel,
                edge or "",
                fit_range,
                self_absorption,
                energy_col,
                i0_col,
            )
        except (ScanFileError, FitError, ValueError) as e:
            failures += 1
            if as_json:
                print(json.dumps({"file": f, "error": str(e)}), flush=True)
            else:
                print(f"{f}: error: {e}", file=sys.stderr)
            continue
        if as_json:
            print(json.dumps(out), flush=True)
        else:
            fr = "  ".join(
                f"{k} {v:.3f}±{out['uncertainties'][k]:.3f}" for k, v in out["fractions"].items()
            )
            sa = (
                f"  beta {out['self_absorption_beta']:.1f}"
                if out["self_absorption_beta"] is not None
                else ""
            )
            print(
                f"{f}: {fr}  valence {out['average_valence']:.3f}  shift "
                f"{out['shift_eV']:+.3f} eV  chi2_red {out['chi2_red']:.2f}{sa}"
            )
    return 1 if failures else 0


def _fit_one(
    path: Path,
    refs: References,
    channel: str,
    edge: str,
    fit_range: tuple[float, float] | None,
    self_absorption: bool,
    energy_col: str | None,
    i0_col: str | None,
) -> dict[str, Any]:
    names, data = read_columns(path)
    ie = pick(names, energy_col, ("energy", "energy_ev", "energy(ev)", "e"))
    ie = 0 if ie is None else ie
    isig = pick(names, channel)
    if isig is None:
        if len(names) < 2:
            raise ScanFileError(f"{path}: no column {channel!r} (columns: {names})")
        isig = 1
    ii0 = pick(names, i0_col, ("i0", "izero"))
    arrays = {"energy": data[:, ie], channel: data[:, isig]}
    if ii0 is not None and ii0 != isig:
        arrays["I0"] = data[:, ii0]
    fit = fit_scan(
        arrays, channel, refs, edge=edge, fit_range=fit_range, self_absorption=self_absorption
    )
    out = msgspec.to_builtins(fit, enc_hook=plain)
    return {"file": str(path), "channel": names[isig], **out}
