"""The one physical address range type of the project.

Every range in kdump-coalesce is half-open, ``[start, end)`` in bytes, whatever
its source prints: /proc/iomem and the kernel's ``resource`` lines are
inclusive (``100000000-13fffffff``), e820 entries and ELF program headers are
address + size.  Each parser converts at its boundary (:meth:`PhysRange.from_inclusive`,
:meth:`PhysRange.from_size`), and only the renderers that must match a
kernel-facing format print the inclusive end (``str()`` does, as /proc/iomem
and kexec-tools' messages do), so ``end - 1`` and ``end + 1`` appear nowhere
else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class RangeError(ValueError):
    """A range whose end is not above its start, or that starts below 0."""


@dataclass(frozen=True, slots=True, order=True)
class PhysRange:
    """A half-open physical address range ``[start, end)`` in bytes."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise RangeError(f"invalid physical range [{self.start:#x}, {self.end:#x})")

    @classmethod
    def from_inclusive(cls, start: int, last: int) -> PhysRange:
        """From the ``start-last`` form of /proc/iomem (``last`` inclusive)."""
        return cls(start, last + 1)

    @classmethod
    def from_size(cls, start: int, size: int) -> PhysRange:
        """From an address + size (e820, ELF program headers, kexec segments)."""
        return cls(start, start + size)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def last(self) -> int:
        """The last byte in the range: what /proc/iomem prints as the end."""
        return self.end - 1

    def contains(self, other: PhysRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: PhysRange) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.last:#x}"

    def subtract(self, cut: PhysRange) -> tuple[PhysRange, ...]:
        """What is left of this range with ``cut`` taken out: itself when they
        do not overlap, else the zero, one or two pieces on either side."""
        if not self.overlaps(cut):
            return (self,)
        pieces = []
        if self.start < cut.start:
            pieces.append(PhysRange(self.start, cut.start))
        if cut.end < self.end:
            pieces.append(PhysRange(cut.end, self.end))
        return tuple(pieces)


def subtract_all(ranges: Iterable[PhysRange], cuts: Iterable[PhysRange]) -> tuple[PhysRange, ...]:
    """``ranges`` with every range of ``cuts`` taken out, in their order."""
    pieces = tuple(ranges)
    for cut in cuts:
        pieces = tuple(piece for r in pieces for piece in r.subtract(cut))
    return pieces
