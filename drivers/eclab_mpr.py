"""EC-Lab binary files (.mpr), read with galvani into the same rows as the text export.

galvani is GPL-3 licensed, so it is an optional extra (``pip install 'operando[mpr]'``): the
project's own code stays BSD, and only those who read .mpr files install it.

A .mpr carries other columns than the .mpt of the same run (galvani issue 59): GCPL files may
lack the current. It is then rebuilt from the charge passed per row (``dq/mA.h`` or ``dQ/C``:
the average current over the interval that ends at the row, as EC-Lab's ``<I>/mA``), or from
the ``(Q-Qo)`` counter; a file with neither (open circuit) has no current. The control mode
comes from the row flags, the cycle from ``cycle number`` or ``half cycle`` // 2.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from operando.drivers.eclab import COLUMNS, MODES, MptFormatError

from operando.protocol import MODE_OCV

GALVANI_MISSING = (
    "reading .mpr files needs galvani (GPL-3, an optional extra): pip install 'operando[mpr]'; "
    "or export the run as text (.mpt) from EC-Lab"
)
_CHARGE_STEPS = (("dq/mA.h", 1.0), ("dQ/C", 1.0 / 3.6))  # charge since the previous row


def read_mpr(path: Path) -> tuple[dt.datetime | None, list[str], dict[str, np.ndarray]]:
    """(acquisition start, the file's column names, rows in our units)."""
    try:
        from galvani import BioLogic
    except ImportError:
        raise MptFormatError(f"{path}: {GALVANI_MISSING}") from None
    try:
        mpr = BioLogic.MPRfile(str(path))
    except FileNotFoundError:
        raise MptFormatError(f"{path}: no such file") from None
    except Exception as e:  # galvani raises bare ValueError/NotImplementedError on odd files
        raise MptFormatError(
            f"{path}: galvani cannot read it ({type(e).__name__}: {' '.join(str(e).split())}); "
            "export it from EC-Lab as text (.mpt) and give that file"
        ) from None
    data = mpr.data
    names = list(data.dtype.names or ())
    if len(data) == 0:
        raise MptFormatError(f"{path}: no rows")

    def column(quantity: str) -> np.ndarray | None:
        for name, factor in COLUMNS[quantity]:
            if name in names:
                return np.asarray(data[name], np.float64) * factor
        return None

    t, ewe = column("t"), column("Ewe")
    if t is None or ewe is None:
        raise MptFormatError(f"{path}: no time or potential column (the file has {names})")
    rows = {"t": t, "Ewe": ewe}
    current = column("I")
    rows["I"] = current if current is not None else _current(data, names, t, column("Q"))
    q = column("Q")
    rows["Q"] = q if q is not None else np.full(len(t), np.nan)
    # no flags: a technique without control (open circuit)
    modes = np.asarray(mpr.get_flag("mode"), int) if "flags" in names else np.full(len(t), 3)
    rows["mode"] = np.array([MODES.get(m, MODE_OCV) for m in modes], dtype=np.int8)
    rows["step"] = np.asarray(data["Ns"], np.int32) if "Ns" in names else np.zeros(len(t), np.int32)
    cycle = column("cycle")
    if cycle is None and "half cycle" in names:
        cycle = np.asarray(data["half cycle"], np.float64) // 2
    rows["cycle"] = (cycle if cycle is not None else np.zeros(len(t))).astype(np.int32)
    rows["x"] = np.full(len(t), np.nan)
    start = getattr(mpr, "timestamp", None)
    return start, names, rows


def _current(data: np.ndarray, names: list[str], t: np.ndarray, q: np.ndarray | None) -> np.ndarray:
    """mA from the charge passed per row, or from the charge counter; 0 without either."""
    dq = None
    for name, factor in _CHARGE_STEPS:
        if name in names:
            dq = np.asarray(data[name], np.float64) * factor
            break
    if dq is None and q is not None:
        dq = np.diff(q, prepend=q[0])
    if dq is None or len(t) < 2:
        return np.zeros(len(t))
    dt_s = np.diff(t, prepend=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        current = np.where(dt_s > 0, dq * 3600.0 / dt_s, np.nan)
    # the first row closes no interval: it carries the next row's current
    current[0] = current[1]
    return np.nan_to_num(current, nan=0.0)
