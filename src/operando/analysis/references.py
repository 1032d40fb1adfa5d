"""Valence reference spectra: one column per valence on a common energy axis, from a file.

Files: CSV (a header line; the first column the energy in eV, then one column per valence,
named like ``Mn2+``) or NPZ (an ``energy`` array and one array per valence). The simulator
exports its references in this format (``operando references export``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

_OXIDATION = re.compile(r"(\d+)\s*\+?\s*$")


class ReferenceError(ValueError):
    pass


def _interp_columns(grid: np.ndarray, table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """np.interp of every column of ``table`` at ``x`` (held at the ends), vectorised."""
    # np.minimum/np.maximum: np.clip costs several times more on arrays this small
    j = np.minimum(np.maximum(np.searchsorted(grid, x, side="right"), 1), len(grid) - 1)
    x0, x1 = grid[j - 1], grid[j]
    w = np.minimum(np.maximum((x - x0) / (x1 - x0), 0.0), 1.0)[:, None]
    return table[j - 1] * (1.0 - w) + table[j] * w


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
    def derivative(self) -> References:
        """d ref / dE on the same axis (for fitting the energy shift)."""
        d = np.gradient(self.spectra, self.energy, axis=0)
        return References(self.energy, self.names, d, self.source + " (derivative)")

    @property
    def oxidation(self) -> np.ndarray:
        """Oxidation state of each reference, from its name (``Mn3+`` -> 3); NaN if none."""
        out = []
        for name in self.names:
            m = _OXIDATION.search(name.replace("+", " +"))
            out.append(float(m.group(1)) if m else np.nan)
        return np.asarray(out)

    def on(self, energy: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """The references at ``energy - shift`` (a spectrum shifted by +shift eV), (n, k)."""
        return _interp_columns(self.energy, self.spectra, np.asarray(energy, float) - shift)

    def on_with_derivative(
        self, energy: np.ndarray, shift: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """References and their energy derivatives at ``energy - shift``, in one pass."""
        both = _interp_columns(self.energy, self._stacked, np.asarray(energy, float) - shift)
        k = len(self.names)
        return both[:, :k], both[:, k:]

    @cached_property
    def _stacked(self) -> np.ndarray:
        return np.hstack([self.spectra, self.derivative.spectra])

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
            with np.load(path, allow_pickle=False) as z:
                if "energy" not in z:
                    raise ReferenceError(f"{path}: NPZ needs an 'energy' array; has {z.files}")
                return cls.from_mapping(
                    z["energy"], {k: z[k] for k in z.files if k != "energy"}, str(path)
                )
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().lstrip("#").strip()
        names = [h.strip() for h in re.split(r"[,\t;]|\s{2,}", header) if h.strip()]
        try:
            data = np.loadtxt(path, delimiter="," if "," in header else None, skiprows=1, ndmin=2)
        except ValueError as e:
            raise ReferenceError(f"{path}: not a numeric table after the header: {e}") from None
        if data.shape[1] != len(names):
            raise ReferenceError(
                f"{path}: header names {len(names)} columns ({names}) but the "
                f"table has {data.shape[1]}"
            )
        return cls(data[:, 0], tuple(names[1:]), data[:, 1:], str(path))
