"""``operando export RUN --format nexus``: the run as one NeXus/HDF5 file.

Layout (one NXentry, every group with its NX_class; the default plot is the first spectra):

    entry/                      start_time, end_time, title, experiment_description
      sample/ (NXsample)
      electrochemistry/ (NXdata)   time (s since start), Ewe, I, Q, soc, mode, step, cycle
      <Edge>_<Channel>/ (NXdata)   one per edge and channel, e.g. Mn_L_TEY:
          mu (spectrum, energy)    the I0-normalised signal (the raw channel where no I0)
          raw, I0                  as recorded
          energy                   (energy,) when every scan shares a grid, else (spectrum,
                                   energy) padded with NaN
          per spectrum: scan_id, time, t_start, t_end, Ewe_mean, I_mean, soc, cycle, mode,
          partial, spot, dose_Gy, valence, valence_uncertainty, chi2_red, fit_quality,
          fit_notes,
          fraction_<component>
      rixs_<map>/ (NXdata)         counts (excitation, emission), excitation, emission
      events/ (NXcollection)       id, t, kind, source, detail (JSON)
      configuration/ (NXnote)      the experiment file the run was recorded with (JSON)

Times inside are seconds since ``entry/start_time`` (ISO 8601, UTC); names follow NeXus's
[A-Za-z0-9_] rule.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operando import __version__
from operando.analysis.signal import signal
from operando.export import Progress
from operando.export.tables import cycling_tables, units_of
from operando.store.reader import RecordedSpectrum, Run

_STR = "utf-8"


def nexus_name(text: str) -> str:
    """A NeXus-valid group/field name: [A-Za-z0-9_], not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "unnamed"
    return f"_{name}" if name[0].isdigit() else name


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _group(parent: Any, name: str, nx_class: str, **attrs: Any) -> Any:
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    for k, v in attrs.items():
        g.attrs[k] = v
    return g


def _field(g: Any, name: str, data: Any, units: str | None = None, **attrs: Any) -> Any:
    arr = np.asarray(data)
    if arr.dtype.kind in "OUS":
        import h5py

        ds = g.create_dataset(name, data=[str(x) for x in arr.ravel()], dtype=h5py.string_dtype())
    else:
        ds = g.create_dataset(name, data=arr, compression="gzip" if arr.size > 4096 else None)
    if units:
        ds.attrs["units"] = units
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def export_nexus(run_dir: str | Path, out: str | Path, progress: Progress | None = None) -> Path:
    import h5py

    out = Path(out)
    with Run(run_dir) as run, h5py.File(out, "w") as f:
        t0, t1 = run.time_range()
        f.attrs.update(
            NX_class="NXroot",
            default="entry",
            file_name=out.name,
            file_time=dt.datetime.now(dt.UTC).isoformat(),
            creator=f"operando {__version__}",
            HDF5_Version=h5py.version.hdf5_version,
        )
        entry = _group(f, "entry", "NXentry")
        _field(entry, "title", run.config.name)
        _field(entry, "experiment_description", run.config.description or run.config.name)
        _field(entry, "start_time", _iso(t0))
        _field(entry, "end_time", _iso(t1))
        _field(entry, "program_name", "operando", version=__version__)
        _field(entry, "run", run.name)
        sample = _group(entry, "sample", "NXsample")
        _field(sample, "name", run.config.name)
        _write_electrochemistry(entry, run, t0)
        xas, rixs = collect_spectra(run, progress)
        first = None
        for (edge, channel), spectra in xas.items():
            name = nexus_name(f"{edge or 'unknown_edge'}_{channel}")
            _write_xas(entry, name, spectra, channel, t0)
            first = first or name
        for map_id, rows in rixs.items():
            _write_rixs(entry, nexus_name(f"rixs_{map_id}"), rows, t0)
        entry.attrs["default"] = first or "electrochemistry"
        _write_events(entry, run, t0)
        _write_cycling(entry, run, t0)
        note = _group(entry, "configuration", "NXnote")
        _field(note, "type", "application/json")
        _field(note, "data", msgspec.json.encode(run.config).decode())
    return out


def collect_spectra(
    run: Run, progress: Progress | None
) -> tuple[dict[tuple[str, str], list[RecordedSpectrum]], dict[str, list[RecordedSpectrum]]]:
    total = run.count_spectra()
    xas: dict[tuple[str, str], list[RecordedSpectrum]] = {}
    rixs: dict[str, list[RecordedSpectrum]] = {}
    for n, s in enumerate(run.iter_spectra(), 1):
        if s.kind == "rixs_rows":
            rixs.setdefault(s.map_id or s.scan_id, []).append(s)
        else:
            for channel in s.channels:
                if channel != "I0":
                    xas.setdefault((s.edge, channel), []).append(s)
        if progress is not None:
            progress(n, total)
    return xas, rixs


def _write_electrochemistry(entry: Any, run: Run, t0: float) -> None:
    df = run.potentiostat()
    g = _group(entry, "electrochemistry", "NXdata", signal="Ewe", axes="time")
    _field(g, "time", df["t"].to_numpy() - t0, "s", start=_iso(t0))
    _field(g, "Ewe", df["Ewe"].to_numpy(), "V", long_name="working electrode potential")
    _field(g, "I", df["I"].to_numpy(), "mA", long_name="current (positive on charge)")
    _field(g, "Q", df["Q"].to_numpy(dtype=float, na_value=np.nan), "mA*h")
    _field(g, "soc", df["soc"].to_numpy(dtype=float, na_value=np.nan), long_name="state of charge")
    for name in ("mode", "step", "cycle"):
        _field(g, name, df[name].to_numpy())
    g["mode"].attrs["long_name"] = "control mode: 1 CC, 2 CV, 3 open circuit"


def _write_cycling(entry: Any, run: Run, t0: float) -> None:
    """Half-cycles, cycles, current steps and dQ/dV: one NXdata each (a column a field, its
    unit beside it) under ``cycling``; times in s since the start."""
    tables = cycling_tables(run, t0)
    g = _group(entry, "cycling", "NXcollection")
    signals = {
        "half_cycles": ("capacity_mAh", "idx"),
        "cycles": ("discharge_mAh", "cycle"),
        "current_steps": ("r_0_ohm", "t_step"),
        "dqdv": ("dQdV", "Ewe"),
        "dqdv_peaks": ("voltage_V", "cycle"),
        "gitt": ("d_cm2_s", "t_start"),
        "interruptions": ("r_ohm", "t_start"),
    }
    for name, table in tables.items():
        signal, axis = signals[name]
        d = _group(g, name, "NXdata", signal=signal, axes=axis)
        units = units_of(table)
        for column in table.columns:
            _field(d, str(column), table[column].to_numpy(), units.get(str(column)))
        if "r_0_unc_ohm" in table:  # NeXus: the signal's 1-sigma beside it
            _field(d, "r_0_ohm_errors", table["r_0_unc_ohm"].to_numpy(), "ohm")
        if "r_unc_ohm" in table and signal == "r_ohm":
            _field(d, "r_ohm_errors", table["r_unc_ohm"].to_numpy(), "ohm")


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass(frozen=True, slots=True)
class ChannelStack:
    """One edge and channel's spectra stacked (rows padded with NaN to the longest scan), and
    one value per spectrum of everything known about it: what NeXus and Tiled both write."""

    energy: np.ndarray  # (energy,) when every scan shares a grid, else (spectrum, energy)
    mu: np.ndarray  # channel / I0 (the channel where there is no I0)
    raw: np.ndarray
    i0: np.ndarray
    has_i0: bool
    per_spectrum: dict[str, tuple[np.ndarray, str | None]]  # name -> (values, units)
    labels: dict[str, str]  # long names where the name alone loses something (Mn2+ -> Mn2)


def stack_channel(spectra: list[RecordedSpectrum], channel: str, t0: float) -> ChannelStack:
    energies = [np.asarray(s.arrays["energy"], float) for s in spectra]
    mu, raw, i0 = [], [], []
    for s in spectra:
        y, r, norm = signal(s.arrays, channel)
        mu.append(y)
        raw.append(r)
        i0.append(norm if norm is not None else np.full(len(r), np.nan))
    common = all(len(e) == len(energies[0]) and np.array_equal(e, energies[0]) for e in energies)
    labels: dict[str, str] = {}
    table: dict[str, tuple[Any, str | None]] = {
        "scan_id": ([s.scan_id for s in spectra], None),
        "source": ([s.source for s in spectra], None),
        "spot": ([s.spot or "" for s in spectra], None),
        "time": ([0.5 * (s.t_start + s.t_end) - t0 for s in spectra], "s"),
        "t_start": ([s.t_start - t0 for s in spectra], "s"),
        "t_end": ([s.t_end - t0 for s in spectra], "s"),
    }
    al = [s.alignment or {} for s in spectra]
    for key, name, units in (
        ("ewe_mean_V", "Ewe_mean", "V"),
        ("i_mean_mA", "I_mean", "mA"),
        ("soc", "soc", None),
        ("q_mAh", "Q", "mA*h"),
        ("t_since_current_change_s", "t_since_current_change", "s"),
    ):
        table[name] = ([_num(a.get(key)) for a in al], units)
    for key in ("mode", "step", "cycle"):
        table[key] = ([int(a.get(key) or 0) for a in al], None)
    table["partial"] = ([bool(a.get("partial", True)) for a in al], None)
    table["dose_Gy"] = ([_num((s.dose or {}).get("after_Gy")) for s in spectra], "Gy")
    fits = [s.fits.get(channel) or {} for s in spectra]
    if any(fits):
        for key, name in (
            ("average_valence", "valence"),
            ("valence_uncertainty", "valence_uncertainty"),
            ("chi2_red", "chi2_red"),
        ):
            table[name] = ([_num(f.get(key)) for f in fits], None)
        # what the numbers cannot say: "good", "check" or "poor", and why ("" unfitted;
        # "unjudged": fitted before fits were judged)
        table["fit_quality"] = ([f.get("quality", "unjudged") if f else "" for f in fits], None)
        table["fit_notes"] = (["; ".join(f.get("notes", ())) for f in fits], None)
        for c in sorted({c for f in fits for c in f.get("fractions", {})}):
            key = nexus_name(f"fraction_{c}")
            table[key] = ([_num(f.get("fractions", {}).get(c)) for f in fits], None)
            labels[key] = f"fraction of {c}"
    return ChannelStack(
        energy=energies[0] if common else _padded(energies),
        mu=_padded(mu),
        raw=_padded(raw),
        i0=_padded(i0),
        has_i0=any("I0" in s.arrays for s in spectra),
        per_spectrum={k: (np.asarray(v), u) for k, (v, u) in table.items()},
        labels=labels,
    )


def _write_xas(
    entry: Any, name: str, spectra: list[RecordedSpectrum], channel: str, t0: float
) -> None:
    st = stack_channel(spectra, channel, t0)
    g = _group(entry, name, "NXdata", signal="mu")
    if st.energy.ndim == 1:
        g.attrs["axes"] = ["spectrum", "energy"]
    else:
        g.attrs["axes"] = ["spectrum", "."]
        g.attrs["energy_indices"] = [0, 1]
    g.attrs["spectrum_indices"] = 0
    _field(g, "energy", st.energy, "eV")
    _field(g, "mu", st.mu, long_name=f"{channel} / I0" if st.has_i0 else channel)
    _field(g, "raw", st.raw, long_name=f"{channel} as recorded")
    _field(g, "I0", st.i0)
    _field(g, "spectrum", np.arange(len(spectra)))
    for key, (values, units) in st.per_spectrum.items():
        ds = _field(g, key, values, units)
        if key in st.labels:
            ds.attrs["long_name"] = st.labels[key]


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _write_rixs(entry: Any, name: str, rows: list[RecordedSpectrum], t0: float) -> None:
    rows = sorted(rows, key=lambda s: s.row_offset)
    g = _group(entry, name, "NXdata", signal="counts", axes=["excitation", "emission"])
    g.attrs["excitation_indices"] = 0
    g.attrs["emission_indices"] = 1
    _field(g, "counts", np.vstack([s.arrays["counts"] for s in rows]))
    _field(g, "excitation", np.concatenate([s.arrays["excitation"] for s in rows]), "eV")
    _field(g, "emission", rows[0].arrays["emission"], "eV")
    _field(g, "time", [0.5 * (s.t_start + s.t_end) - t0 for s in rows], "s")
    _field(g, "soc", [_num((s.alignment or {}).get("soc")) for s in rows])


def _write_events(entry: Any, run: Run, t0: float) -> None:
    ev = run.events()
    g = _group(entry, "events", "NXcollection")
    _field(g, "id", ev["id"].to_numpy())
    _field(g, "t", ev["t"].to_numpy(dtype=float, na_value=np.nan) - t0, "s")
    _field(g, "received", ev["recv_ns"].to_numpy() / 1e9 - t0, "s")
    _field(g, "kind", ev["kind"].astype(str).to_numpy())
    _field(g, "source", ev["source"].fillna("").astype(str).to_numpy())
    _field(g, "detail", ev["detail"].astype(str).to_numpy(), type="application/json")
