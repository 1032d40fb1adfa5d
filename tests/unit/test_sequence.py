"""Sequence tracking: every loss, duplicate and reordering is counted exactly."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from operando.sequence import Arrival, SequenceTracker, missing_ranges


def test_in_order_stream_has_no_gaps():
    tr = SequenceTracker()
    verdicts = [tr.observe("s", i).arrival for i in range(100)]
    assert verdicts[0] is Arrival.NEW_SESSION
    assert set(verdicts[1:]) == {Arrival.IN_ORDER}
    assert (tr.gaps, tr.lost, tr.duplicates, tr.out_of_order) == (0, 0, 0, 0)


def test_gap_then_late_fill_then_duplicate():
    tr = SequenceTracker()
    for i in (0, 1, 2):
        tr.observe("s", i)
    v = tr.observe("s", 6)
    assert v.arrival is Arrival.GAP and (v.gap.first, v.gap.last, v.gap.count) == (3, 5, 3)
    assert tr.observe("s", 4).arrival is Arrival.OUT_OF_ORDER
    assert tr.missing == [[3, 3], [5, 5]]
    assert tr.observe("s", 4).arrival is Arrival.DUPLICATE
    assert tr.observe("s", 6).arrival is Arrival.DUPLICATE
    assert (tr.gaps, tr.lost, tr.recovered, tr.outstanding) == (1, 3, 1, 2)


def test_new_session_is_a_restart_and_a_late_join_is_a_gap():
    tr = SequenceTracker()
    assert tr.observe("a", 5).gap.count == 5  # joined late: 0..4 never seen
    tr.observe("a", 6)
    v = tr.observe("b", 0)
    assert v.arrival is Arrival.NEW_SESSION and v.previous_session == "a" and v.gap is None
    assert tr.restarts == 1


def test_resume_continues_a_recorded_session():
    tr = SequenceTracker()
    tr.resume("a", 41)
    assert tr.observe("a", 42).arrival is Arrival.IN_ORDER
    assert tr.observe("a", 45).gap.count == 2


@given(st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=120))
def test_counts_match_ground_truth(events):
    """Deliver 0..N-1 with drops, duplicates and swaps: the tracker's books must balance."""
    sent = list(range(61))
    delivered = []
    for seq, dup in events:
        delivered.append(seq)
        if dup:
            delivered.append(seq)
    tr = SequenceTracker()
    for seq in delivered:
        tr.observe("s", seq)
    unique = set(delivered)
    if not unique:
        return
    top = max(unique)
    missing = {s for s in sent if s <= top} - unique
    assert tr.outstanding == len(missing)
    assert tr.duplicates == len(delivered) - len(unique)
    assert tr.messages == len(delivered)
    assert tr.lost - tr.recovered == len(missing)


@given(st.sets(st.integers(-5, 60)), st.integers(-3, 40), st.integers(-3, 50))
def test_missing_ranges_are_what_is_not_held(held, first, last):
    expected = [s for s in range(first, last + 1) if s not in held]
    ranges = missing_ranges(held, first, last)
    assert [s for a, b in ranges for s in range(a, b + 1)] == expected
    assert all(b + 1 < a2 for (_, b), (a2, _) in itertools.pairwise(ranges))  # kept apart


def test_missing_ranges_of_a_range_as_wide_as_a_bad_seq_makes():
    assert missing_ranges({3, 4, 9}, 0, 2**63 - 1) == [[0, 2], [5, 8], [10, 2**63 - 1]]
