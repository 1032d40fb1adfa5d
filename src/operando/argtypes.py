"""Argparse types for the command line's numbers: a mistyped value is refused by the parser
with one line naming the option, instead of starting a process that fails later (a demo at
speed 0 died in its simulator; a negative duration ran and recorded nothing)."""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


def positive(text: str) -> float:
    """A number above 0: a duration, a speed, a rate, a timeout, a capacity."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def non_negative(text: str) -> float:
    """A number of at least 0: a wait, a settle time, a speed where 0 means at once."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1: a state of charge."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from 0 to 1")
    return value
