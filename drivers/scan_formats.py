"""Beamline scan files read into scans (or RIXS rows) ready to publish: pure, no sockets.

Formats:
- ``columns``: column text (``#`` headers, SPEC-like, mda2ascii), one scan per file;
- ``rixs-columns``: column text holding one emission spectrum (emission or energy-loss axis,
  intensity) at one excitation energy (from the header's ``Energy = ... eV`` or the file name);
  the files of one map share a name apart from that energy;
- ``nxxas``: NeXus NXxas HDF5, one scan per NXentry (energy, the NXdata signal, each detector);
- ``h5-library``: an HDF5 spectra library of ``spectra/N/{x,y}`` groups whose attributes name
  element, edge, compound and detector (MAX IV FlexPES); the detectors measured on the same
  sample, edge and energy grid become the channels of one scan.

Channels: ``--column OURS=THEIRS`` names a file's column (by name or 1-based number) as one of
ours (energy, I0, TEY, TFY, PFY; for RIXS: emission, counts, excitation). Unmapped columns are
published under the file's own names: nothing in the file is dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from operando.analysis.normalize import EDGE_WINDOWS
from operando.scanfile import ScanFileError, pick, read_column_text

FORMATS = ("auto", "columns", "rixs-columns", "nxxas", "h5-library")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".nx")
ENERGY_NAMES = ("energy", "photon energy", "calculated ph energy", "energy_ev", "mono energy", "e")
CANONICAL = ("I0", "TEY", "TFY", "PFY")
_NXXAS_MODES = {
    "transmission": "mu",
    "fluorescence": "TFY",
    "total fluorescence yield": "TFY",
    "partial fluorescence yield": "PFY",
    "total electron yield": "TEY",
    "electron yield": "TEY",
}


@dataclass(frozen=True, slots=True)
class Scan:
    """One absorption scan from a file."""

    scan_id: str
    energy: np.ndarray
    channels: dict[str, np.ndarray]
    edge: str
    metadata: dict[str, Any] = field(default_factory=dict)
    start: dt.datetime | None = None  # when the file says the scan started
    complete: bool | None = None  # the file says whether all its points are in (mda2ascii)


@dataclass(frozen=True, slots=True)
class RixsRow:
    """One emission spectrum of a RIXS map at one excitation energy."""

    map_key: str
    scan_id: str
    excitation: float
    emission: np.ndarray
    counts: np.ndarray
    edge: str
    metadata: dict[str, Any] = field(default_factory=dict)


def guess_edge(energy: np.ndarray) -> str:
    """The absorption edge whose onset lies inside the scan's energy range ('' if none)."""
    lo, hi = float(np.min(energy)), float(np.max(energy))
    inside = [
        (min(hi, w.e0_search[1]) - max(lo, w.e0_search[0]), name)
        for name, w in EDGE_WINDOWS.items()
        if w.e0_search[0] < hi and w.e0_search[1] > lo
    ]
    return max(inside)[1] if inside else ""


def read_scan_file(
    path: Path, fmt: str, columns: Mapping[str, str], edge: str | None = None
) -> list[Scan | RixsRow]:
    """Everything one file holds; ScanFileError names the file and what is wrong."""
    try:
        return _read(path, fmt, columns, edge)
    except ScanFileError:
        raise
    except Exception as e:
        # A damaged HDF5 file fails anywhere in h5py's layers (OSError, RuntimeError,
        # KeyError, ValueError...) or hands back None for a dangling link: one bad file is
        # refused with what was found, and the watcher reads the next file as usual.
        raise ScanFileError(f"{path}: unreadable as {fmt} ({type(e).__name__}: {e})") from e


def _read(
    path: Path, fmt: str, columns: Mapping[str, str], edge: str | None
) -> list[Scan | RixsRow]:
    if fmt == "auto":
        fmt = _sniff(path)
    if fmt == "columns":
        return [_column_scan(path, columns, edge)]
    if fmt == "rixs-columns":
        return [_rixs_row(path, columns, edge)]
    if fmt == "nxxas":
        return list(_nxxas_scans(path, columns, edge))
    if fmt == "h5-library":
        return list(_library_scans(path, columns, edge))
    raise ScanFileError(f"{path}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _sniff(path: Path) -> str:
    if path.suffix.lower() not in HDF5_SUFFIXES:
        return "columns"
    h5py = _h5py()
    with _open_h5(h5py, path) as f:
        if any(_nx_class(g) == "NXentry" for g in f.values()):
            return "nxxas"
        if isinstance(f.get("spectra"), h5py.Group):
            return "h5-library"
        raise ScanFileError(
            f"{path}: HDF5 with neither NXentry groups nor a 'spectra' library "
            f"(top level: {sorted(f)[:10]})"
        )


# -- column text ---------------------------------------------------------------------------
def _column(path: Path, names: list[str], wanted: str, what: str) -> int:
    i = pick(names, wanted)
    if i is None or not 0 <= i < len(names):
        raise ScanFileError(f"{path}: no column {wanted!r} for {what} (columns: {names})")
    return i


def _channels(
    path: Path, names: list[str], data: np.ndarray, columns: Mapping[str, str], skip: set[int]
) -> dict[str, np.ndarray]:
    """Mapped columns under our names, the rest under the file's (canonical case for I0/TEY...)."""
    out: dict[str, np.ndarray] = {}
    taken = set(skip)
    for ours, theirs in columns.items():
        if ours in ("energy", "excitation", "emission", "counts"):
            continue
        i = _column(path, names, theirs, ours)
        out[ours] = data[:, i]
        taken.add(i)
    canonical = {c.lower(): c for c in CANONICAL}
    for i, name in enumerate(names):
        if i not in taken:
            key = canonical.get(name.lower(), name)
            out.setdefault(key, data[:, i])
    return out


def _column_scan(path: Path, columns: Mapping[str, str], edge: str | None) -> Scan:
    text = read_column_text(path)
    names, data = text.names, text.data
    if "energy" in columns:
        ie = _column(path, names, columns["energy"], "energy")
    else:
        found = pick(names, None, ENERGY_NAMES)
        ie = 0 if found is None else found
    energy = data[:, ie]
    if len(energy) < 2:
        raise ScanFileError(f"{path}: {len(energy)} point(s): a scan needs at least 2")
    channels = _channels(path, names, data, columns, {ie})
    if not channels:
        raise ScanFileError(f"{path}: only an energy column, no signal")
    meta: dict[str, Any] = {"file": str(path), "format": "columns", "energy_column": names[ie]}
    meta.update({f"file_{k}": v for k, v in text.header.items() if k in _HEADER_FACTS})
    return Scan(
        scan_id=path.stem,
        energy=energy,
        channels=channels,
        edge=edge or guess_edge(energy),
        metadata=meta,
        start=_mda_time(text.header.get("Scan time")),
        complete=text.complete,
    )


_HEADER_FACTS = ("Scan number", "Scan time", "Points completed", "Scanner", "Energy")


def _mda_time(text: str | None) -> dt.datetime | None:
    """'Mar 14, 2024 03:00:55.941426' (mda2ascii's Scan time, the IOC's local time)."""
    if not text:
        return None
    for fmt in ("%b %d, %Y %H:%M:%S.%f", "%b %d, %Y %H:%M:%S"):
        try:
            return dt.datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


_EXCITATION_IN_NAME = re.compile(r"[_-]?(\d+(?:\.\d+)?)\s*eV", re.IGNORECASE)


def _rixs_row(path: Path, columns: Mapping[str, str], edge: str | None) -> RixsRow:
    text = read_column_text(path)
    names, data = text.names, text.data
    ie = _column(path, names, columns.get("emission", "1"), "emission")
    ic = _column(path, names, columns.get("counts", "2"), "counts")
    excitation = _excitation(path, text.header, columns.get("excitation"))
    m = _EXCITATION_IN_NAME.search(path.stem)
    map_key = (path.stem[: m.start()] + path.stem[m.end() :]) if m else path.parent.name
    return RixsRow(
        map_key=map_key.strip("_- ") or path.parent.name,
        scan_id=path.stem,
        excitation=excitation,
        emission=data[:, ie],
        counts=data[:, ic],
        # the edge whose onset is near: L2 lies ~11-17 eV above the L3 onset
        edge=edge or guess_edge(np.array([excitation - 15.0, excitation + 15.0])),
        metadata={"file": str(path), "format": "rixs-columns", "emission_axis": names[ie]},
    )


def _excitation(path: Path, header: Mapping[str, str], given: str | None) -> float:
    """The excitation energy: given, from the header's 'Energy = X eV', or the file name."""
    for text in (given, header.get("Energy")):
        if text:
            m = re.match(r"\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", text)
            if m:
                return float(m.group(1))
    m = _EXCITATION_IN_NAME.search(path.stem)
    if m:
        return float(m.group(1))
    raise ScanFileError(
        f"{path}: no excitation energy (no '# Energy = ... eV' line, no '<energy>eV' in the "
        "name); give --column excitation=VALUE"
    )


# -- HDF5 ----------------------------------------------------------------------------------
def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency; a broken install says so
        raise ScanFileError("HDF5 scan files need h5py (pip install h5py)") from None
    return h5py


def _open_h5(h5py: Any, path: Path) -> Any:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise ScanFileError(f"{path}: no such file") from None
    except OSError as e:
        raise ScanFileError(f"{path}: not a readable HDF5 file ({e})") from None


def _nx_class(obj: Any) -> str:
    v = obj.attrs.get("NX_class", b"")
    return v.decode() if isinstance(v, bytes) else str(v)


def _text(obj: Any, default: str = "") -> str:
    if obj is None:
        return default
    v = obj[()] if hasattr(obj, "shape") else obj
    if isinstance(v, np.ndarray):
        v = v.flat[0] if v.size else default
    return v.decode() if isinstance(v, bytes) else str(v)


def _edge_name(element: str, edge: str) -> str:
    """'Fe' + 'K' -> 'Fe-K'; 'Cu' + 'L2,3 (2p)' -> 'Cu-L' (the project's edge names)."""
    shell = re.match(r"\s*([KLMN])", edge)
    return f"{element.strip()}-{shell.group(1)}" if element.strip() and shell else ""


def _rename(channels: dict[str, np.ndarray], columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``--column OURS=THEIRS`` applied to named datasets."""
    theirs_to_ours = {v: k for k, v in columns.items()}
    return {theirs_to_ours.get(k, k): v for k, v in channels.items()}


def _nxxas_scans(path: Path, columns: Mapping[str, str], edge: str | None) -> list[Scan]:
    h5py = _h5py()
    scans = []
    with _open_h5(h5py, path) as f:
        for name, entry in f.items():
            if _nx_class(entry) != "NXentry":
                continue
            where = f"{path}:/{name}"
            energy_ds = entry.get("energy")
            if energy_ds is None:
                raise ScanFileError(f"{where}: an NXentry without 'energy'")
            energy = np.asarray(energy_ds[()], float)
            channels: dict[str, np.ndarray] = {}
            signal = entry.get("intensity")
            if signal is not None:
                mode = _text(entry.get("mode"), "").strip().lower()
                channels[_NXXAS_MODES.get(mode, "intensity")] = np.asarray(signal[()], float)
            instrument = entry.get("instrument")
            for det_name, det in (instrument or {}).items():
                if _nx_class(det) == "NXdetector" and "data" in det:
                    key = "I0" if det_name.lower() == "i0" else det_name
                    channels[key] = np.asarray(det["data"][()], float)
            channels = {k: v for k, v in channels.items() if v.shape == energy.shape}
            if not channels:
                raise ScanFileError(f"{where}: no signal or detector data of the energy's shape")
            element = _text(entry.get("element/symbol"))
            edge_label = _text(entry.get("edge/name"))
            scans.append(
                Scan(
                    scan_id=f"{path.stem}:{name}",
                    energy=energy,
                    channels=_rename(channels, columns),
                    edge=edge or _edge_name(element, edge_label) or guess_edge(energy),
                    metadata={
                        "file": str(path),
                        "entry": name,
                        "format": "nxxas",
                        "definition": _text(entry.get("definition")),
                        "sample": _text(entry.get("sample/name")),
                        "mode": _text(entry.get("mode")),
                    },
                )
            )
    if not scans:
        raise ScanFileError(f"{path}: no NXentry groups")
    return scans


def _library_scans(path: Path, columns: Mapping[str, str], edge: str | None) -> list[Scan]:
    h5py = _h5py()
    groups: dict[tuple[str, ...], list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]] = {}
    with _open_h5(h5py, path) as f:
        spectra = f.get("spectra")
        if not isinstance(spectra, h5py.Group):
            raise ScanFileError(f"{path}: no 'spectra' group")
        for name, g in spectra.items():
            if "x" not in g or "y" not in g:
                raise ScanFileError(f"{path}:/spectra/{name}: needs datasets 'x' and 'y'")
            attrs = {k: _text(v) for k, v in g.attrs.items()}
            x, y = np.asarray(g["x"][()], float), np.asarray(g["y"][()], float)
            key = (attrs.get("element", ""), attrs.get("edge", ""), attrs.get("compound", ""))
            groups.setdefault(key, []).append((name, x, y, attrs))
    scans = []
    for (element, edge_label, compound), members in groups.items():
        # detectors on one grid form one scan; another grid starts another scan
        by_grid: list[tuple[np.ndarray, list[tuple[str, np.ndarray, dict[str, Any]]]]] = []
        for name, x, y, attrs in members:
            for grid, chans in by_grid:
                if grid.shape == x.shape and np.array_equal(grid, x):
                    chans.append((name, y, attrs))
                    break
            else:
                by_grid.append((x, [(name, y, attrs)]))
        for grid, chans in by_grid:
            channels = {a.get("detector") or name: y for name, y, a in chans}
            ids = "+".join(name for name, _, _ in chans)
            scans.append(
                Scan(
                    scan_id=f"{path.stem}:{ids}",
                    energy=grid,
                    channels=_rename(channels, columns),
                    edge=edge or _edge_name(element, edge_label) or guess_edge(grid),
                    metadata={
                        "file": str(path),
                        "format": "h5-library",
                        "groups": [name for name, _, _ in chans],
                        "compound": compound,
                        "labels": [a.get("label", "") for _, _, a in chans],
                        "normalization": chans[0][2].get("post_normalization", ""),
                    },
                )
            )
    return scans
