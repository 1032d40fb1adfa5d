"""Scan files as column tables: a header line naming the columns, then numbers.

Accepts comma, tab or whitespace separated columns; ``#`` comment lines before the header are
skipped (the last comment line is taken as the header when no plain header line exists, as
SPEC-like and mda2ascii files name their columns in a comment).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


class ScanFileError(ValueError):
    pass


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


def read_columns(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(column names, data[rows, columns]) of a column text file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise ScanFileError(f"{path}: no such file") from None
    header: list[str] | None = None
    rows: list[list[float]] = []
    last_comment: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            last_comment = _split(line)
            continue
        parts = _split(line)
        if _numeric(parts):
            if header is None:
                header = (
                    last_comment
                    if len(last_comment) == len(parts)
                    else [f"col{i + 1}" for i in range(len(parts))]
                )
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
    return header, np.asarray(rows)


def pick(names: list[str], wanted: str | None, fallbacks: tuple[str, ...] = ()) -> int | None:
    """Index of a column by name (case-insensitive), 1-based number, or fallbacks."""
    if wanted is not None and re.fullmatch(r"\d+", wanted):
        return int(wanted) - 1
    lower = [n.lower() for n in names]
    for w in ((wanted,) if wanted else ()) + fallbacks:
        if w and w.lower() in lower:
            return lower.index(w.lower())
    return None
