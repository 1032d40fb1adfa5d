"""The live electrochemistry records the same rows however the potentiostat batches them
(one row a message at real time, hundreds in a replay) and whenever its chunks are worked."""

from __future__ import annotations

import numpy as np
from operando.drivers.sim.cell import PRESETS, Cell

from operando.config import ElectrochemistryConfig
from operando.electrochem import Electrochemistry
from operando.protocol import MODE_CC, MODE_OCV


def _rows(hours: float) -> np.ndarray:
    """t, Ewe, I, Q, mode of a cell cycled at C/2 with 10 min rests, a row a second."""
    p = PRESETS["na-mno2"]
    cell, i_mA, rest, q = Cell(p, 0.0), p.capacity_mAh / 2, 0, 0.0
    out = []
    for k in range(int(hours * 3600)):
        current = 0.0 if rest > 0 else i_mA
        v = cell.step_current(current, 1.0)
        rest -= 1
        if current and not (p.v_min + 0.1 < v < p.v_max - 0.05):
            i_mA, rest = -i_mA, 600
        q += current / 3600
        out.append((k + 1.0, v, current, q, MODE_CC if current else MODE_OCV))
    return np.array(out)


def _recorded(rows: np.ndarray, sizes: list[int]) -> list:
    put: list = []
    e = Electrochemistry(ElectrochemistryConfig(), 0.005, put.append, lambda *a: None)
    k, n = 0, 0
    while k < len(rows):
        part = rows[k : k + sizes[n % len(sizes)]]
        e.add(part[:, 0], part[:, 1], part[:, 2], part[:, 4], part[:, 3], part[:, 1] * 0 + 0.5)
        k, n = k + len(part), n + 1
    e.finish()
    # what each table holds: the order between tables depends on when chunks are worked
    return sorted(put, key=lambda r: (type(r).__name__, r[0]))


def test_the_same_rows_whatever_the_batches():
    rows = _rows(8)
    whole = _recorded(rows, [len(rows)])
    assert {type(r).__name__ for r in whole} >= {"HalfCycleRow", "CurrentStepRow"}
    assert _recorded(rows, [1]) == whole
    assert _recorded(rows, [7, 500, 1, 4096, 60]) == whole
