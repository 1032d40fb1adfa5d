"""Experiment time: what every timestamp in a message means, also when simulated fast.

A simulator run at ``speed`` 60 lives a 2 h charge in 2 min of wall time; its messages carry
experiment time, and the monitor aligns and times out on source time only, never on wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class ExperimentClock:
    """Experiment time that starts at ``t0_ns`` (a wall-clock instant) and runs ``speed`` x.

    Defined from the wall clock, not from this process's start, so every process given the
    same ``t0_ns`` and ``speed`` (the demo's simulators) reads the same experiment time.
    """

    speed: float = 1.0
    t0_ns: int = field(default_factory=time.time_ns)
    skew_ns: int = 0  # a clock that is simply wrong by this much (as instrument clocks are)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")

    def now_ns(self) -> int:
        return self.t0_ns + int((time.time_ns() - self.t0_ns) * self.speed) + self.skew_ns

    def now(self) -> float:
        return self.now_ns() * 1e-9

    def wall_seconds(self, experiment_seconds: float) -> float:
        """How long to sleep for ``experiment_seconds`` of experiment time to pass."""
        return experiment_seconds / self.speed


def utc_text(t: float) -> str:
    """Seconds since the epoch as people read them: ``2026-12-04 12:24:19 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
