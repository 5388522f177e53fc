"""A set of half-open integer ranges, kept sorted, disjoint and merged.

Used for physical memory (bytes) and, with ``[cpu, cpu + 1)``, for CPU ids.
Two parallel sorted lists and ``bisect`` keep every operation O(log n + k),
and the common case of a resize (each block adjacent to the last) is an
append or an in-place extension.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator


class RangeSet:
    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with overlapping and adjacent ranges."""
        if start >= end:
            raise ValueError(f"empty or inverted range [{start}, {end})")
        starts, ends = self._starts, self._ends
        if not ends or start > ends[-1]:
            starts.append(start)
            ends.append(end)
            return
        if start == ends[-1]:
            ends[-1] = end if end > ends[-1] else ends[-1]
            return
        i = bisect_left(ends, start)  # first range ending at or after start: touches
        j = bisect_right(starts, end)  # ranges starting at or before end: touch
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            return
        new_start = starts[i] if starts[i] < start else start
        new_end = ends[j - 1] if ends[j - 1] > end else end
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]

    def remove(self, start: int, end: int) -> None:
        """Remove ``[start, end)``, splitting ranges that straddle its edges."""
        if start >= end:
            raise ValueError(f"empty or inverted range [{start}, {end})")
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)  # first range ending after start
        j = bisect_left(starts, end)  # ranges starting before end
        if i >= j:
            return
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[i] < start:
            new_starts.append(starts[i])
            new_ends.append(start)
        if ends[j - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[j - 1])
        starts[i:j] = new_starts
        ends[i:j] = new_ends

    def overlap(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` that are in the set."""
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)
        j = bisect_left(starts, end)
        return [(max(starts[k], start), min(ends[k], end)) for k in range(i, j)]

    def contains(self, start: int, end: int) -> bool:
        """True when all of ``[start, end)`` is in the set."""
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def copy(self) -> RangeSet:
        other = RangeSet()
        other._starts = self._starts.copy()
        other._ends = self._ends.copy()
        return other

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"[{s:#x}, {e:#x})" for s, e in self)
        return f"RangeSet({inner})"
