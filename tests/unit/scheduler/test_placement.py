"""Splitting a batch over the branches of the preference tree (water-filling)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.placement import water_fill


@pytest.mark.parametrize(
    ("counts", "n", "expected"),
    [
        ([3, 0, 1], 4, [0, 3, 1]),
        ([0, 0, 0], 4, [2, 1, 1]),  # the remainder goes to the first branches
        ([0, 0, 0], 2, [1, 1, 0]),
        ([2, 2, 0], 1, [0, 0, 1]),
        ([1, 0], 3, [1, 2]),
        ([5], 3, [3]),
        ([0, 7], 3, [3, 0]),
        ([4, 4], 0, [0, 0]),
        ([], 3, []),
    ],
)
def test_water_fill_table(counts: list[int], n: int, expected: list[int]) -> None:
    assert water_fill(counts, n) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.integers(0, 200))
def test_water_fill_places_everything_and_only_raises_the_lowest(counts: list[int], n: int) -> None:
    alloc = water_fill(counts, n)
    assert sum(alloc) == n
    assert all(a >= 0 for a in alloc)
    totals = [c + a for c, a in zip(counts, alloc, strict=True)]
    lowest = min(totals)
    # A branch that was given tasks ends at most one above the lowest branch.
    assert all(t <= lowest + 1 for t, a in zip(totals, alloc, strict=True) if a > 0)
