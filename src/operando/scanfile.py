"""Scan files as column tables: a header line naming the columns, then numbers.

Accepts comma, tab or whitespace separated columns; ``#`` comment lines before the header are
skipped (the last comment line is taken as the header when no plain header line exists, as
SPEC-like files name their columns in a comment). mda2ascii files (EPICS sscan) list their
columns in ``#  N  [1-D Detector  k]  PV, description, unit`` lines: those name the columns
(the description, or the PV where the description is empty), and ``# Points completed = N of
M`` says whether the scan is finished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ScanFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ColumnText:
    """A column text file: names, data[rows, columns], and what its comments say."""

    names: list[str]
    data: np.ndarray
    header: dict[str, str] = field(default_factory=dict)  # "key = value" comment lines

    @property
    def complete(self) -> bool | None:
        """mda2ascii: all points of the scan are in the file (None: the file does not say)."""
        m = re.fullmatch(r"\s*(\d+)\s+of\s+(\d+)\s*", self.header.get("Points completed", ""))
        return None if m is None else m.group(1) == m.group(2)


_MDA_COLUMN = re.compile(r"#\s+(\d+)\s+\[([^\]]*)\]\s*(.*)$")
_KEY_VALUE = re.compile(r"#\s*([A-Za-z][\w .-]*?)\s*=\s*(.*)$")


def _split(line: str) -> list[str]:
    line = line.strip().lstrip("#").strip()
    if "," in line:
        return [c.strip() for c in line.split(",")]
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    return line.split()


def _numeric(parts: list[str]) -> bool:
    try:
        [float(p) for p in parts]
        return bool(parts)
    except ValueError:
        return False


def _mda_name(described: str, bracket: str) -> str:
    """'PV, description, unit' -> the description, else the PV, else the bracket ('Index')."""
    parts = [p.strip() for p in described.split(",")]
    if len(parts) > 1 and parts[1]:
        return parts[1]
    return parts[0] or bracket.strip()


def read_column_text(path: str | Path) -> ColumnText:
    """Parse a column text file; errors name the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise ScanFileError(f"{path}: no such file") from None
    header: list[str] | None = None
    rows: list[list[float]] = []
    last_comment: list[str] = []
    described: dict[int, str] = {}
    facts: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            last_comment = _split(line)
            if m := _MDA_COLUMN.match(line.strip()):
                described[int(m.group(1))] = _mda_name(m.group(3), m.group(2))
            elif m := _KEY_VALUE.match(line.strip()):
                facts.setdefault(m.group(1), m.group(2).strip())
            continue
        parts = _split(line)
        if _numeric(parts):
            if header is None:
                header = _names(parts, last_comment, described)
            if len(parts) != len(header):
                raise ScanFileError(
                    f"{path}:{n}: {len(parts)} values, header has {len(header)} columns"
                )
            rows.append([float(p) for p in parts])
        elif header is None and not rows:
            header = parts
        else:
            raise ScanFileError(f"{path}:{n}: not a row of numbers: {line.strip()[:60]!r}")
    if header is None or not rows:
        raise ScanFileError(f"{path}: no numeric rows found")
    return ColumnText(header, np.asarray(rows), facts)


def _names(parts: list[str], last_comment: list[str], described: dict[int, str]) -> list[str]:
    if len(described) == len(parts):
        return [described.get(i + 1, f"col{i + 1}") for i in range(len(parts))]
    # a comment of names (not of numbers: '# file.txt -0.2' is a note, not a header)
    if len(last_comment) == len(parts) and not any(_numeric([c]) for c in last_comment):
        return last_comment
    return [f"col{i + 1}" for i in range(len(parts))]


def read_columns(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(column names, data[rows, columns]) of a column text file."""
    text = read_column_text(path)
    return text.names, text.data


def pick(names: list[str], wanted: str | None, fallbacks: tuple[str, ...] = ()) -> int | None:
    """Index of a column by name (case-insensitive), 1-based number, or fallbacks."""
    if wanted is not None and re.fullmatch(r"\d+", wanted):
        return int(wanted) - 1
    lower = [n.lower() for n in names]
    for w in ((wanted,) if wanted else ()) + fallbacks:
        if w and w.lower() in lower:
            return lower.index(w.lower())
    return None
