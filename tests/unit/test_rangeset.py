from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalescer import RangeSet

UNIVERSE = 64


def as_points(rs: RangeSet) -> set[int]:
    return {p for s, e in rs for p in range(s, e)}


def test_add_merges_adjacent_and_overlapping() -> None:
    rs = RangeSet()
    rs.add(0, 10)
    rs.add(10, 20)  # adjacent
    rs.add(30, 40)
    rs.add(15, 35)  # bridges
    assert list(rs) == [(0, 40)]


def test_remove_splits() -> None:
    rs = RangeSet([(0, 100)])
    rs.remove(40, 60)
    assert list(rs) == [(0, 40), (60, 100)]
    rs.remove(0, 100)
    assert not rs


def test_overlap_and_contains() -> None:
    rs = RangeSet([(0, 10), (20, 30)])
    assert rs.overlap(5, 25) == [(5, 10), (20, 25)]
    assert rs.contains(20, 30)
    assert not rs.contains(5, 25)


def test_rejects_empty_range() -> None:
    with pytest.raises(ValueError):
        RangeSet().add(5, 5)


ops = st.lists(
    st.tuples(st.booleans(), st.integers(0, UNIVERSE - 1), st.integers(1, 16)),
    max_size=60,
)


@given(ops)
@settings(max_examples=300)
def test_matches_a_set_of_points(operations: list[tuple[bool, int, int]]) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for add, start, length in operations:
        end = start + length
        if add:
            rs.add(start, end)
            model |= set(range(start, end))
        else:
            rs.remove(start, end)
            model -= set(range(start, end))
        assert as_points(rs) == model
        spans = list(rs)
        # sorted, disjoint, and never two adjacent ranges left unmerged
        assert all(s < e for s, e in spans)
        assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))
    assert rs.total() == len(model)
