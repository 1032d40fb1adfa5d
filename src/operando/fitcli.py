"""``operando fit``: the live analysis, run on scan files (a whole beamtime in one call).

It refuses to guess: a channel that is not in a file is an error naming the file's columns;
a file without I0 is fitted unnormalised with a warning (and ``"normalised": false``); each
result carries the fit's quality and why, as the monitor's do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from operando.analysis.lcf import FitError
from operando.analysis.references import ReferenceError, References
from operando.analysis.valence import FLUORESCENCE, fit_scan
from operando.protocol import plain
from operando.scanfile import ScanFileError, pick, read_columns

# columns a scan file's signal may be called, tried when no --channel is given
SIGNALS = ("TEY", *FLUORESCENCE, "mu", "signal", "xas")


class FitInputError(ValueError):
    """The command cannot start (the references cannot be read): one line, exit 2."""


def fit_files(
    files: list[str],
    references: str,
    *,
    channels: list[str] | None,
    fit_range: tuple[float, float] | None,
    self_absorption: list[str],
    energy_col: str | None,
    i0_col: str | None,
    as_json: bool,
) -> int:
    # self_absorption: channel names fitted with saturation; "*" for every channel
    """Fit every file; print one line (or JSON object) per file and channel. Returns 0, or
    1 when any file failed."""
    try:
        refs = References.from_file(references)
    except (ReferenceError, OSError, UnicodeDecodeError) as e:
        raise FitInputError(f"references {references}: {_one_line(e)}") from None
    failures = 0
    for f in files:
        try:
            results = _fit_one(
                Path(f), refs, channels, fit_range, self_absorption, energy_col, i0_col
            )
        except (ScanFileError, OSError, UnicodeDecodeError) as e:
            failures += 1
            _report_error(f, None, e, as_json)
            continue
        for channel, out in results:
            if isinstance(out, Exception):
                failures += 1
                _report_error(f, channel, out, as_json)
            elif as_json:
                print(json.dumps(out), flush=True)
            else:
                print(_line(f, out), flush=True)
    return 1 if failures else 0


def _fit_one(
    path: Path,
    refs: References,
    channels: list[str] | None,
    fit_range: tuple[float, float] | None,
    self_absorption: list[str],
    energy_col: str | None,
    i0_col: str | None,
) -> list[tuple[str, dict[str, Any] | Exception]]:
    names, data = read_columns(path)
    ie = pick(names, energy_col, ("energy", "energy_ev", "energy(ev)", "e"))
    if ie is None:
        if energy_col is not None:
            raise ScanFileError(f"{path}: no energy column {energy_col!r} (columns: {names})")
        ie = 0
    ii0 = pick(names, i0_col, ("i0", "izero"))
    if i0_col is not None and ii0 is None:
        raise ScanFileError(f"{path}: no I0 column {i0_col!r} (columns: {names})")
    wanted = channels or [n for n in names if n.lower() in {s.lower() for s in SIGNALS}]
    if not wanted:
        raise ScanFileError(
            f"{path}: no signal column ({', '.join(SIGNALS)}); name one with --channel "
            f"(columns: {names})"
        )
    columns = []
    for channel in wanted:
        i = pick(names, channel)
        if i is None or not 0 <= i < len(names) or i in (ie, ii0):
            raise ScanFileError(f"{path}: no column {channel!r} to fit (columns: {names})")
        columns.append(i)
    if ii0 is None:
        print(
            f"{path}: warning: no I0 column (columns: {names}); fitting the signal unnormalised",
            file=sys.stderr,
            flush=True,
        )
    out: list[tuple[str, dict[str, Any] | Exception]] = []
    for i in columns:
        channel = names[i]
        arrays = {"energy": data[:, ie], channel: data[:, i]}
        if ii0 is not None:
            arrays["I0"] = data[:, ii0]
        sa = "*" in self_absorption or channel.lower() in {c.lower() for c in self_absorption}
        try:
            fit = fit_scan(arrays, channel, refs, fit_range=fit_range, self_absorption=sa)
        except (FitError, ValueError) as e:
            out.append((channel, e))
            continue
        doc = msgspec.to_builtins(fit, enc_hook=plain)
        out.append(
            (channel, {"file": str(path), "channel": channel, "normalised": ii0 is not None, **doc})
        )
    return out


def _line(f: str, out: dict[str, Any]) -> str:
    fr = "  ".join(
        f"{k} {v:.3f}±{out['uncertainties'][k]:.3f}" for k, v in out["fractions"].items()
    )
    beta = out["self_absorption_beta"]
    sa = (
        f"  beta {beta:.1f}±{out['self_absorption_beta_uncertainty']:.1f}"
        if beta is not None
        else ""
    )
    why = f": {'; '.join(out['notes'])}" if out["notes"] else ""
    unnormalised = "" if out["normalised"] else "  (not divided by I0)"
    return (
        f"{f} [{out['channel']}]: {fr}  valence {out['average_valence']:.3f}"
        f"±{out['valence_uncertainty']:.3f}  shift {out['shift_eV']:+.3f} eV  chi2_red "
        f"{out['chi2_red']:.2f} ({out['noise']}){sa}{unnormalised}  quality {out['quality']}{why}"
    )


def _report_error(f: str, channel: str | None, e: Exception, as_json: bool) -> None:
    where = f"{f} [{channel}]" if channel else f
    if as_json:
        print(json.dumps({"file": f, "channel": channel, "error": _one_line(e)}), flush=True)
    else:
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr, flush=True)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
