"""Valence reference spectra: one column per valence on a common energy axis, from a file.

Files: CSV (a header line; the first column the energy in eV, then one column per valence,
named like ``Mn2+``) or NPZ (an ``energy`` array and one array per valence). The simulator
exports its references in this format (``operando references export``).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline

_OXIDATION = re.compile(r"(\d+)\s*\+?\s*$")
SHIFTED_AXES_KEPT = 8  # energy axes whose shifted references are kept (a few edges at once)


class ReferenceError(ValueError):
    pass


@dataclass(frozen=True)
class References:
    energy: np.ndarray  # (n,) eV, increasing
    names: tuple[str, ...]
    spectra: np.ndarray  # (n, k), one column per valence
    source: str = ""

    def __post_init__(self) -> None:
        if self.spectra.shape != (len(self.energy), len(self.names)):
            raise ReferenceError(
                f"{self.source}: spectra shape {self.spectra.shape} does not "
                f"match {len(self.energy)} energies x {len(self.names)} names"
            )
        if len(self.names) < 2:
            raise ReferenceError(
                f"{self.source}: need at least two references, got {list(self.names)}"
            )
        if np.any(np.diff(self.energy) <= 0):
            raise ReferenceError(f"{self.source}: energy column must increase strictly")

    @cached_property
    def _table(self) -> tuple[float, float, np.ndarray]:
        """(start, step, values): the references and their slopes on a fine even grid.

        Cubic, not linear, between the tabulated points: a reference tabulated every 0.1 eV
        and read 0.03 eV off its points (any shift) lost up to 0.004 in the fractions on the
        multiplet validation sets to the corners of a linear interpolation. The spline is
        sampled once on a grid 50 times finer, so a fit reads it by index arithmetic (a
        spline call per fit iteration cost more than the fit's own algebra)."""
        spline = CubicSpline(self.energy, self.spectra, axis=0)
        span = float(self.energy[-1] - self.energy[0])
        step = max(float(np.min(np.diff(self.energy))) / 50.0, span / 200_000)
        grid = np.arange(self.energy[0], self.energy[-1] + step / 2, step)
        return float(grid[0]), step, np.hstack([spline(grid), spline(grid, 1)])

    def _at(self, energy: np.ndarray, shift: float, with_slope: bool) -> np.ndarray:
        """The fine table at ``energy - shift`` (held at its ends): the references' columns,
        then (``with_slope``) their slopes'."""
        start, step, table = self._table
        u = (np.asarray(energy, float) - shift - start) / step
        u = np.minimum(np.maximum(u, 0.0), len(table) - 1.0)
        j = np.minimum(u.astype(np.intp), len(table) - 2)
        t = table if with_slope else self._values
        lo = np.take(t, j, axis=0)
        return lo + (np.take(t, j + 1, axis=0) - lo) * (u - j)[..., None]

    @cached_property
    def _values(self) -> np.ndarray:
        return np.ascontiguousarray(self._table[2][:, : len(self.names)])

    @cached_property
    def oxidation(self) -> np.ndarray:
        """Oxidation state of each reference, from its name (``Mn3+`` -> 3); NaN if none."""
        out = []
        for name in self.names:
            m = _OXIDATION.search(name.replace("+", " +"))
            out.append(float(m.group(1)) if m else np.nan)
        states = np.asarray(out)
        states.flags.writeable = False  # read by every fit: computed once, shared
        return states

    def on(self, energy: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """The references at ``energy - shift`` (a spectrum shifted by +shift eV), (n, k)."""
        return self._at(energy, shift, with_slope=False)

    def on_shifted(self, energy: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """The references at ``energy - s`` for every s in ``shifts``, a row per reference:
        (shifts, k, n), read-only.

        Kept for the last few energy axes: a beamline scans an edge on one programmed
        axis all week, and the shift search reads the same grid of shifts each time."""
        e = np.asarray(energy, float)
        s = np.asarray(shifts, float)
        key = (e.tobytes(), s.tobytes())
        cache = self._shifted_cache
        hit = cache.pop(key, None)
        if hit is None:
            pts = (e[None, :] - s[:, None]).ravel()
            hit = self.on(pts).reshape(len(s), len(e), -1).transpose(0, 2, 1).copy()
            hit.flags.writeable = False
            if len(cache) >= SHIFTED_AXES_KEPT:
                cache.pop(next(iter(cache)))  # the least recently used
        cache[key] = hit  # (re)inserted last: the most recently used
        return hit

    @cached_property
    def _shifted_cache(self) -> dict[tuple[bytes, bytes], np.ndarray]:
        return {}

    def on_with_derivative(
        self, energy: np.ndarray, shift: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """References and their energy derivatives (d ref / dE) at ``energy - shift``."""
        k = len(self.names)
        both = self._at(energy, shift, with_slope=True)
        return both[..., :k], both[..., k:]

    @classmethod
    def from_mapping(
        cls, energy: np.ndarray, spectra: dict[str, np.ndarray], source: str = ""
    ) -> References:
        names = tuple(spectra)
        return cls(
            np.asarray(energy, dtype=np.float64),
            names,
            np.column_stack([np.asarray(spectra[n], dtype=np.float64) for n in names]),
            source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> References:
        path = Path(path)
        if not path.exists():
            raise ReferenceError(f"{path}: no such reference file")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "energy" not in z:
                        raise ReferenceError(f"{path}: NPZ needs an 'energy' array; has {z.files}")
                    return cls.from_mapping(
                        z["energy"], {k: z[k] for k in z.files if k != "energy"}, str(path)
                    )
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                if isinstance(e, ReferenceError):
                    raise
                raise ReferenceError(f"{path}: not a readable NPZ file ({e})") from None
        try:
            with open(path, encoding="utf-8") as f:
                header = f.readline().strip().lstrip("#").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ReferenceError(f"{path}: not a readable text table ({e})") from None
        names = [h.strip() for h in re.split(r"[,\t;]|\s{2,}", header) if h.strip()]
        try:
            with warnings.catch_warnings():  # an empty table is this error, not a warning
                warnings.simplefilter("ignore", UserWarning)
                data = np.loadtxt(
                    path, delimiter="," if "," in header else None, skiprows=1, ndmin=2
                )
        except ValueError as e:
            raise ReferenceError(f"{path}: not a numeric table after the header: {e}") from None
        if data.size == 0:
            raise ReferenceError(f"{path}: no rows after the header line")
        if data.shape[1] != len(names):
            raise ReferenceError(
                f"{path}: header names {len(names)} columns ({names}) but the "
                f"table has {data.shape[1]}"
            )
        return cls(data[:, 0], tuple(names[1:]), data[:, 1:], str(path))
