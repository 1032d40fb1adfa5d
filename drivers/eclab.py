"""EC-Lab text exports (.mpt): the header, the columns, and rows as they appear.

EC-Lab writes an ASCII export as ``Nb header lines : N`` header lines (latin-1, the last of them
the tab-separated column names), then one tab-separated row per line. Numbers use the Windows
locale's decimal separator: a comma in many European installations. Column names vary with
the technique and the options: ``Ewe/V`` or ``<Ewe>/V`` or ``Ecell/V``, ``I/mA`` or ``<I>/mA``
(absent at open circuit), ``(Q-Qo)/mA.h`` or ``(Q-Qo)/C``. The acquisition start in the header
(``MM/DD/YYYY HH:MM:SS.fff``, the instrument PC's local time) makes ``time/s`` absolute.

``MptReader`` takes bytes as they are appended to the file and returns the complete rows, so
the same code follows a file EC-Lab is still writing and replays a finished one.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import numpy as np

from operando.config import ConfigError
from operando.protocol import MODE_CC, MODE_CV, MODE_OCV


class MptFormatError(ConfigError):
    """The file is not an EC-Lab text export we can read; says where and why."""


# our quantity -> EC-Lab column names it may have (first found wins), and the factor to our unit
COLUMNS: dict[str, tuple[tuple[str, float], ...]] = {
    "t": (("time/s", 1.0),),
    # the spellings EC-Lab writes (galvani's column table; EC-Lab 11.50's OCV export has
    # <Ewe/V>)
    "Ewe": (
        ("Ewe/V", 1.0),
        ("<Ewe>/V", 1.0),
        ("<Ewe/V>", 1.0),
        ("Ecell/V", 1.0),
        ("<Ecell>/V", 1.0),
        ("<Ecell/V>", 1.0),
    ),
    "I": (("I/mA", 1.0), ("<I>/mA", 1.0), ("<I/mA>", 1.0)),
    "Q": (("(Q-Qo)/mA.h", 1.0), ("(Q-Qo)/C", 1.0 / 3.6)),  # 1 mA.h = 3.6 C
    "mode": (("mode", 1.0),),
    "step": (("Ns", 1.0),),
    "cycle": (("cycle number", 1.0),),
    "x": (("x", 1.0),),
}
REQUIRED = ("t", "Ewe")
_COUNTERS = ("mode", "step", "cycle")  # whole numbers, stored as int32
# EC-Lab's mode column: 1 galvanostatic, 2 potentiostatic, 3 open circuit
MODES = {1: MODE_CC, 2: MODE_CV, 3: MODE_OCV}
_HEADER_LINES = re.compile(r"Nb header lines\s*:\s*(\d+)")
_STARTED = re.compile(r"Acquisition started on\s*:\s*(\S+ \S+)")


@dataclass
class MptHeader:
    lines: int
    names: list[str]
    start: dt.datetime | None  # naive: the instrument PC's local time
    technique: str
    where: dict[str, tuple[int, float]] = field(default_factory=dict)  # ours -> (index, factor)

    def epoch(self, tz: dt.tzinfo | None = None) -> float:
        """The acquisition start in seconds since the epoch (``tz``: the PC's zone; default
        this machine's local zone)."""
        if self.start is None:
            raise MptFormatError("no 'Acquisition started on' line: give the start time")
        start = self.start.replace(tzinfo=tz) if tz is not None else self.start.astimezone()
        return start.timestamp()


def parse_header(text: str, source: str = "mpt") -> MptHeader:
    """The header of an export (``text`` holds at least its header lines)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("EC-Lab ASCII FILE"):
        raise MptFormatError(f"{source}: line 1 is not 'EC-Lab ASCII FILE'")
    m = _HEADER_LINES.search(lines[1] if len(lines) > 1 else "")
    if m is None:
        raise MptFormatError(f"{source}: line 2 has no 'Nb header lines : N'")
    n = int(m.group(1))
    if len(lines) < n:
        raise MptFormatError(f"{source}: header says {n} lines, the file has {len(lines)}")
    names = [c.strip() for c in lines[n - 1].rstrip("\r\n").split("\t") if c.strip()]
    started = next((_STARTED.search(ln) for ln in lines[:n] if _STARTED.search(ln)), None)
    start = None
    if started is not None:
        try:
            start = dt.datetime.strptime(started.group(1), "%m/%d/%Y %H:%M:%S.%f")
        except ValueError as e:
            raise MptFormatError(f"{source}: acquisition start {started.group(1)!r}: {e}") from e
    technique = lines[3].strip() if n > 3 else ""
    header = MptHeader(n, names, start, technique)
    for ours, candidates in COLUMNS.items():
        for name, factor in candidates:
            if name in names:
                header.where[ours] = (names.index(name), factor)
                break
    missing = [q for q in REQUIRED if q not in header.where]
    if missing:
        raise MptFormatError(
            f"{source}: no column for {missing} (looked for "
            f"{[c for q in missing for c, _ in COLUMNS[q]]}; the file has {names})"
        )
    return header


def current_sampling(names: list[str]) -> str:
    """How the current the driver sends was sampled: ``I/mA`` is a reading at each row
    ("instant"); ``<I>/mA``, or (binary files without a current) the current made from the
    charge passed per row, is the mean over the interval ending at the row
    ("interval_average")."""
    return "instant" if "I/mA" in names else "interval_average"


def _number(text: str) -> float:
    return float(text.replace(",", "."))


class MptReader:
    """Rows of an export from its bytes, fed in any pieces; a partial last line waits.

    A header that is not EC-Lab's raises ``MptFormatError`` (the wrong file). A data line
    that cannot be read is left out and kept in ``refused`` with its line number and why: one
    damaged row of a week-long file must not stop the driver, nor vanish unsaid."""

    def __init__(self, source: str = "mpt") -> None:
        self.source = source
        self.header: MptHeader | None = None
        self._pending = b""
        self._head: list[bytes] = []
        self.line_no = 0  # lines consumed, for error messages
        self.refused: list[tuple[int, str]] = []  # (line number, why) since last taken

    def take_refused(self) -> list[tuple[int, str]]:
        """The data lines left out since the last call (the driver reports each)."""
        out, self.refused = self.refused, []
        return out

    def feed(self, data: bytes) -> dict[str, np.ndarray]:
        """Complete rows in ``data`` (and what waited before it), as arrays in our units."""
        buf = self._pending + data
        *lines, self._pending = buf.split(b"\n")
        rows: list[list[float]] = []
        for raw in lines:
            self.line_no += 1
            if self.header is None:
                self._head.append(raw)
                if len(self._head) == 1 and not raw.startswith(b"EC-Lab ASCII FILE"):
                    raise MptFormatError(f"{self.source}: line 1 is not 'EC-Lab ASCII FILE'")
                if len(self._head) >= 2:
                    m = _HEADER_LINES.search(self._head[1].decode("latin-1"))
                    if m is None:
                        raise MptFormatError(f"{self.source}: line 2 has no 'Nb header lines : N'")
                    if len(self._head) == int(m.group(1)):
                        text = b"\n".join(self._head).decode("latin-1")
                        self.header = parse_header(text, self.source)
                continue
            text = raw.decode("latin-1").rstrip("\r")
            if not text.strip():
                continue
            fields = text.split("\t")
            try:
                rows.append([self._value(fields, q) for q in COLUMNS])
            except (ValueError, IndexError) as e:
                self.refused.append((self.line_no, str(e)))
        return self._arrays(rows)

    def pending_is_row(self) -> bool:
        """The text after the last newline holds a whole row (every column's field)."""
        if self.header is None or not self._pending.strip():
            return False
        fields = self._pending.decode("latin-1").rstrip("\r").split("\t")
        needed = max(index for index, _ in self.header.where.values()) + 1
        return len(fields) >= needed and all(f.strip() for f in fields[:needed])

    def _value(self, fields: list[str], quantity: str) -> float:
        assert self.header is not None
        where = self.header.where.get(quantity)
        if where is None:
            return np.nan
        index, factor = where
        value = _number(fields[index]) * factor
        if not np.isfinite(value) or (quantity in _COUNTERS and abs(value) >= 2**31):
            name = self.header.names[index]
            raise ValueError(f"{name} = {fields[index]!r} is not a value EC-Lab writes")
        return value

    def _arrays(self, rows: list[list[float]]) -> dict[str, np.ndarray]:
        a = np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
        out: dict[str, np.ndarray] = {q: a[:, k] for k, q in enumerate(COLUMNS)}
        out["I"] = np.nan_to_num(out["I"], nan=0.0)  # no current column: open circuit
        modes = np.nan_to_num(out["mode"], nan=3).astype(int)
        out["mode"] = np.array([MODES.get(m, MODE_OCV) for m in modes], dtype=np.int8)
        out["step"] = np.nan_to_num(out["step"], nan=0).astype(np.int32)
        out["cycle"] = np.nan_to_num(out["cycle"], nan=0).astype(np.int32)
        return out
