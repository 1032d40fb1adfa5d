"""Per-source sequence tracking: how PUB/SUB loss, duplicates and reordering become visible.

Every message a source sends carries ``(session, seq)``: seq counts up from 0 for one driver
process lifetime (its session). The tracker classifies each arrival and keeps the set of
sequence numbers still missing, so a late arrival that fills a gap is told apart from a
duplicate. Pure book-keeping: no sockets, no clocks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum


class Arrival(Enum):
    IN_ORDER = "in_order"
    GAP = "gap"  # arrived, but one or more sequence numbers before it are missing
    OUT_OF_ORDER = "out_of_order"  # fills a gap seen earlier
    DUPLICATE = "duplicate"
    NEW_SESSION = "new_session"  # the source restarted (or the monitor joined it)


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers first..last (inclusive) of one session were not received (yet)."""

    session: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Verdict:
    arrival: Arrival
    gap: Gap | None = None
    previous_session: str | None = None


_IN_ORDER = Verdict(Arrival.IN_ORDER)  # the common case, shared (a Verdict is immutable)


def missing_ranges(held: Collection[int], first: int, last: int) -> list[list[int]]:
    """The [first, last] ranges of first..last not in ``held``; from what is held, never by
    counting through the range (a bad seq can make one span 2**63 numbers)."""
    out: list[list[int]] = []
    expected = first
    for seq in sorted(s for s in held if first <= s <= last):
        if seq > expected:
            out.append([expected, seq - 1])
        expected = seq + 1
    if expected <= last:
        out.append([expected, last])
    return out


@dataclass(slots=True)
class SequenceTracker:
    """Tracks one source. ``missing`` holds ranges still outstanding, as [first, last] lists."""

    session: str | None = None
    next_seq: int = 0
    messages: int = 0
    gaps: int = 0
    lost: int = 0  # sequence numbers counted missing (some may arrive later, see recovered)
    recovered: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    restarts: int = 0
    missing: list[list[int]] = field(default_factory=list)
    # Earlier sessions of this source: (next seq, missing ranges). A driver that kept its
    # messages on disk can still send what a previous process of it sent.
    past: dict[str, tuple[int, list[list[int]]]] = field(default_factory=dict)
    keep_past: int = 8

    def resume(self, session: str, last_seq: int, missing: list[list[int]] | None = None) -> None:
        """Continue a session already recorded (the monitor restarted on an existing run)."""
        self.session, self.next_seq = session, last_seq + 1
        self.missing = [list(r) for r in missing or []]

    def is_missing(self, session: str, seq: int) -> bool:
        """Was this message counted missing (an arrival now fills a gap)?"""
        if session == self.session:
            ranges = self.missing
        elif session in self.past:
            next_seq, ranges = self.past[session]
            if seq >= next_seq:
                return False
        else:
            return False
        return bool(ranges) and any(a <= seq <= b for a, b in ranges)

    def any_missing(self, session: str, first: int, last: int) -> bool:
        """Is any of first..last of ``session`` still missing?"""
        ranges = self.missing if session == self.session else self.past.get(session, (0, []))[1]
        return any(a <= last and b >= first for a, b in ranges)

    def expect(self, session: str, last_seq: int) -> Gap | None:
        """A source says ``session`` ended at ``last_seq``: what this side never saw of its
        tail becomes a gap."""
        if session == self.session:
            next_seq = self.next_seq
        elif session in self.past:
            next_seq = self.past[session][0]
        else:
            return None
        if last_seq < next_seq:
            return None
        gap = Gap(session, next_seq, last_seq)
        self.gaps += 1
        self.lost += gap.count
        if session == self.session:
            self.next_seq = last_seq + 1
            self.missing.append([next_seq, last_seq])
        else:
            self.past[session] = (last_seq + 1, [*self.past[session][1], [next_seq, last_seq]])
        return gap

    def observe(self, session: str, seq: int) -> Verdict:
        self.messages += 1
        if session != self.session and session in self.past:
            return self._observe_past(session, seq)
        if session != self.session:
            previous = self.session
            if previous is not None:
                self.restarts += 1
                self.past[previous] = (self.next_seq, self.missing)
                while len(self.past) > self.keep_past:
                    self.past.pop(next(iter(self.past)))
            self.session, self.next_seq, self.missing = session, seq + 1, []
            # A session first seen above 0 was joined late: its head is missing from this run.
            gap = Gap(session, 0, seq - 1) if seq > 0 else None
            if gap:
                self._count_gap(gap)
            return Verdict(Arrival.NEW_SESSION, gap, previous)
        if seq == self.next_seq:
            self.next_seq += 1
            return _IN_ORDER
        if seq > self.next_seq:
            gap = Gap(session, self.next_seq, seq - 1)
            self._count_gap(gap)
            self.next_seq = seq + 1
            return Verdict(Arrival.GAP, gap)
        if self._fill(seq):
            self.out_of_order += 1
            self.recovered += 1
            return Verdict(Arrival.OUT_OF_ORDER)
        self.duplicates += 1
        return Verdict(Arrival.DUPLICATE)

    def _observe_past(self, session: str, seq: int) -> Verdict:
        """A message of an earlier session (resent from a driver's spool)."""
        next_seq, ranges = self.past[session]
        gap = None
        if seq >= next_seq:  # beyond what was seen of it: its tail
            if seq > next_seq:
                gap = Gap(session, next_seq, seq - 1)
                self.gaps += 1
                self.lost += gap.count
                ranges.append([gap.first, gap.last])
            self.past[session] = (seq + 1, ranges)
            self.out_of_order += 1
            return Verdict(Arrival.OUT_OF_ORDER, gap)
        if _fill(ranges, seq):
            self.out_of_order += 1
            self.recovered += 1
            return Verdict(Arrival.OUT_OF_ORDER)
        self.duplicates += 1
        return Verdict(Arrival.DUPLICATE)

    def _count_gap(self, gap: Gap) -> None:
        self.gaps += 1
        self.lost += gap.count
        self.missing.append([gap.first, gap.last])

    def _fill(self, seq: int) -> bool:
        return _fill(self.missing, seq)

    @property
    def outstanding(self) -> int:
        ranges = [*self.missing, *(r for _, rs in self.past.values() for r in rs)]
        return sum(last - first + 1 for first, last in ranges)


def _fill(ranges: list[list[int]], seq: int) -> bool:
    """Take ``seq`` out of the missing ``ranges``; False when it was not missing."""
    for i, (first, last) in enumerate(ranges):
        if first <= seq <= last:
            pieces = [[first, seq - 1]] if seq > first else []
            pieces += [[seq + 1, last]] if seq < last else []
            ranges[i : i + 1] = pieces
            return True
    return False
