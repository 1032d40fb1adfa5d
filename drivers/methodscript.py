"""PalmSens MethodSCRIPT: the scripts we send and the lines the instrument answers. Pure.

Written from PalmSens's public MethodSCRIPT manual (v1.2), not from their example code:

- The host sends ``e`` and the script, one command a line, closed by an empty line; the device
  echoes ``e``, marks each measurement loop with ``M`` + 4 hex digits, sends one data package
  ``P...`` per loop iteration, ``*`` when a loop ends, and an empty line when the script has
  finished. ``t`` asks for the firmware version (lines closed by ``*``); ``Z`` aborts a script.
  A script error is ``!`` + a 4-hex-digit code, with ``: Line L, Col C`` where known.
- A data package is ``P`` and ``;``-separated variables; each is a 2-letter variable type, 7
  hex digits and an SI prefix letter: value = (int(hex) - 2**27) x prefix, e.g. ``800000Am`` =
  10 m = 0.01. A variable may carry metadata after ``,``: fields starting ``1`` (status, hex),
  ``2`` (current range) and ``4`` (noise).
- Variable types read here: ``ab`` measured WE potential or ``da`` set potential (V), ``ba``
  WE current (A). Packages carry no time: the device sends one per ``t_interval`` of the loop,
  so a package's time is the loop's start plus its index times the interval.
- Scripts: ``meas_loop_cp p c I t_interval t_run`` (chronopotentiometry), ``meas_loop_ca p c
  E t_interval t_run`` (potential hold), ``meas_loop_ocp p t_interval t_run`` (open circuit),
  with ``if p > LIMIT`` / ``breakloop`` / ``endif`` for potential limits.
Which variable types a given instrument sends for each loop is to be checked on the hardware:
the simulator (``palmsens_sim``) answers as described here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from operando.config import ConfigError

OFFSET = 1 << 27
PREFIXES = {
    "a": 1e-18,
    "f": 1e-15,
    "p": 1e-12,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    " ": 1.0,
    "i": 1.0,  # integer values (counters)
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
POTENTIALS, CURRENT = ("ab", "da"), "ba"
_VARIABLE = re.compile(r"([a-z]{2})([0-9A-Fa-f]{7})(.)(?:,(.*))?$")
_ERROR = re.compile(r"!([0-9A-Fa-f]{4})(?::\s*Line\s+(\d+),\s*Col\s+(\d+))?")


class MethodScriptError(ConfigError):
    """A line the instrument sent that does not follow MethodSCRIPT, a script error, or a
    protocol step we cannot turn into a script; says which and where."""


@dataclass(frozen=True, slots=True)
class Package:
    values: dict[str, float]
    status: dict[str, int] = field(default_factory=dict)  # variable type -> status word


def decode_value(text: str) -> float:
    """``800000Am`` -> 0.01."""
    if len(text) != 8 or text[7] not in PREFIXES:
        raise MethodScriptError(f"value {text!r}: expected 7 hex digits and an SI prefix")
    try:
        raw = int(text[:7], 16)
    except ValueError:
        raise MethodScriptError(f"value {text!r}: {text[:7]!r} is not hexadecimal") from None
    return (raw - OFFSET) * PREFIXES[text[7]]


def encode_value(value: float) -> str:
    """The inverse (for the device simulator): the finest prefix that fits 27 bits."""
    for prefix in ("f", "p", "n", "u", "m", " ", "k", "M"):
        n = round(value / PREFIXES[prefix])
        if -OFFSET < n < OFFSET:
            return f"{n + OFFSET:07X}{prefix}"
    raise MethodScriptError(f"value {value!r} does not fit a MethodSCRIPT variable")


def parse_package(line: str) -> Package:
    """``Pab7F85E36u;ba48D503Dp,14,288`` -> values and status per variable type."""
    if not line.startswith("P"):
        raise MethodScriptError(f"data package {line[:40]!r}: does not start with 'P'")
    values: dict[str, float] = {}
    status: dict[str, int] = {}
    for part in line[1:].split(";"):
        m = _VARIABLE.match(part.strip())
        if m is None:
            raise MethodScriptError(f"data package {line[:60]!r}: variable {part[:20]!r}")
        vt, digits, prefix, meta = m.groups()
        values[vt] = decode_value(digits + prefix)
        for item in (meta or "").split(","):
            if item.startswith("1") and len(item) > 1:
                try:
                    status[vt] = int(item[1:], 16)
                except ValueError:
                    raise MethodScriptError(
                        f"data package {line[:60]!r}: status {item[:20]!r} of {vt} is not "
                        "hexadecimal"
                    ) from None
    return Package(values, status)


def parse_error(line: str) -> str:
    """``!0004: Line 3, Col 1`` -> a sentence naming the code and place."""
    m = _ERROR.match(line)
    if m is None:
        return f"instrument error {line!r}"
    code, row, col = m.groups()
    where = f" at script line {row}, column {col}" if row else ""
    return f"instrument error 0x{code.upper()}{where}"


def _si(value: float) -> str:
    """A script argument with an SI prefix, as MethodSCRIPT writes numbers (``-500m``)."""
    for prefix, factor in (("", 1.0), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12)):
        n = value / factor
        if n == 0 or (abs(n) >= 1 and abs(n - round(n)) < 1e-9):
            return f"{round(n)}{prefix}"
    return f"{round(value / 1e-12)}p"


_HEAD = ["e", "var p", "var c", "set_pgstat_mode 3", "set_max_bandwidth 40"]
_PACKAGE = ["pck_start", "pck_add p", "pck_add c", "pck_end"]


def constant_current_script(
    current_A: float, interval_s: float, duration_s: float, v_min: float, v_max: float
) -> list[str]:
    """Chronopotentiometry that stops at either potential limit."""
    return [
        *_HEAD,
        "cell_on",
        f"meas_loop_cp p c {_si(current_A)} {_si(interval_s)} {_si(duration_s)}",
        *_PACKAGE,
        f"if p > {_si(v_max)}",
        "breakloop",
        "endif",
        f"if p < {_si(v_min)}",
        "breakloop",
        "endif",
        "endloop",
        "on_finished:",
        "cell_off",
        "",
    ]


def potential_hold_script(potential_V: float, interval_s: float, duration_s: float) -> list[str]:
    """Chronoamperometry: hold the potential."""
    return [
        *_HEAD,
        "cell_on",
        f"meas_loop_ca p c {_si(potential_V)} {_si(interval_s)} {_si(duration_s)}",
        *_PACKAGE,
        "endloop",
        "on_finished:",
        "cell_off",
        "",
    ]


def open_circuit_script(interval_s: float, duration_s: float) -> list[str]:
    return [
        *_HEAD,
        f"meas_loop_ocp p {_si(interval_s)} {_si(duration_s)}",
        "pck_start",
        "pck_add p",
        "pck_end",
        "endloop",
        "",
    ]
