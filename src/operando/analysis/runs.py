"""Potentiostat rows read a run of like rows at a time: a rest (|I| below the run's rest
current), or one held current (within a fraction of it). Titration pulses (GITT) and current
interruptions (ICI) both work this way; the electrochemistry cuts each chunk once for both."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from operando.analysis.gitt import GittSettings

T = TypeVar("T")
Runs = tuple[np.ndarray, list[int]]  # at rest, per row; where each run of like rows begins


def current_runs(i_mA: np.ndarray, rest_current_mA: float, hold_fraction: float) -> Runs:
    """Rows cut into runs of like rows."""
    rest = np.abs(i_mA) < rest_current_mA
    tol = np.maximum(rest_current_mA, hold_fraction * np.abs(i_mA[1:]))
    cut = (rest[1:] != rest[:-1]) | (~rest[1:] & (np.abs(np.diff(i_mA)) > tol))
    return rest, [0, *(np.flatnonzero(cut) + 1).tolist(), len(i_mA)]


class RunReader(Generic[T]):
    """Feeds rows to ``_part`` a run at a time; ``add`` returns what the parts finished.
    Titration's settings and the material's diffusion length ``L`` (None without the
    material inputs) are the subclasses' to read; their own state they set in ``_clear``."""

    def __init__(
        self, settings: GittSettings, rest_current_mA: float, active_mass_mg: float | None
    ) -> None:
        self.s = settings
        self.rest_current_mA = rest_current_mA
        self.hold_fraction = settings.hold_fraction
        self.length_cm = settings.diffusion_length_cm(active_mass_mg)
        self._clear()

    def _clear(self) -> None:
        raise NotImplementedError

    def held(self, i: float, j: float) -> bool:
        """Current ``i`` is current ``j`` held (``current_runs``' rule, for one pair)."""
        return abs(i - j) <= max(self.rest_current_mA, self.hold_fraction * abs(j))

    def add(
        self,
        t: np.ndarray,
        ewe: np.ndarray,
        i_mA: np.ndarray,
        soc: np.ndarray,
        runs: Runs | None = None,
    ) -> list[T]:
        """Rows in time order (``runs``: ``current_runs`` of these rows, if known)."""
        t, ewe, i_mA, soc = (np.asarray(a, dtype=np.float64) for a in (t, ewe, i_mA, soc))
        if not len(t):
            return []
        rest, bounds = runs or current_runs(i_mA, self.rest_current_mA, self.hold_fraction)
        done: list[T] = []
        for a, b in itertools.pairwise(bounds):
            found = self._part(bool(rest[a]), t[a:b], ewe[a:b], float(i_mA[a]), soc[a:b])
            if found is not None:
                done.append(found)
        return done

    def _part(
        self, at_rest: bool, t: np.ndarray, v: np.ndarray, i: float, soc: np.ndarray
    ) -> T | None:
        raise NotImplementedError
