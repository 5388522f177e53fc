"""Physical ranges and the memory map handed to the capture kernel.

The capture kernel must only use the crash region (plus the low 640 KiB whose
contents purgatory saved to the backup segment), and must still see the
firmware ranges it needs to boot (ACPI tables and NVS so that it can map and
parse them, reserved ranges so that it does not treat them as free).  The
backup and elfcorehdr segments are cut out so that it never allocates over
what it is about to dump.  This is kexec-tools' ``load_crashdump_segments``
(kexec/arch/i386/crashdump-x86.c) with ``add_memmap``/``delete_memmap``; the
result goes into the zero page's e820 table, as kexec-tools does by default
(without ``--pass-memmap-cmdline``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._errors import SegmentLayoutError

PAGE_SIZE = 4096
E820_MAX_ENTRIES = 128  # zero page e820_table[]; more would need SETUP_E820_EXT setup_data

# kexec-tools' defaults when /proc/iomem has no System RAM below 640 KiB.
BACKUP_SRC_DEFAULT_START = 0x0
BACKUP_SRC_DEFAULT_END = 0x9FFFF
_LOW_RAM_LIMIT = 0xA0000


class RangeKind(enum.Enum):
    """The /proc/iomem resource names that matter to a crash load (the value is the iomem name)."""

    SYSTEM_RAM = "System RAM"
    ACPI_TABLES = "ACPI Tables"
    ACPI_NVS = "ACPI Non-volatile Storage"
    RESERVED = "Reserved"
    PERSISTENT_MEMORY = "Persistent Memory"
    PERSISTENT_MEMORY_LEGACY = "Persistent Memory (legacy)"


class E820Type(enum.IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    PMEM = 7
    PRAM = 12


_E820_OF_KIND = {
    RangeKind.SYSTEM_RAM: E820Type.RAM,
    RangeKind.ACPI_TABLES: E820Type.ACPI,
    RangeKind.ACPI_NVS: E820Type.NVS,
    RangeKind.RESERVED: E820Type.RESERVED,
    RangeKind.PERSISTENT_MEMORY: E820Type.PMEM,
    RangeKind.PERSISTENT_MEMORY_LEGACY: E820Type.PRAM,
}


@dataclass(frozen=True, order=True)
class PhysRange:
    """A physical address range, ``end`` inclusive as /proc/iomem prints it."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise SegmentLayoutError("memory range", f"0x{self.start:x}-0x{self.end:x} is empty or negative")

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def __str__(self) -> str:
        return f"0x{self.start:x}-0x{self.end:x}"


@dataclass(frozen=True, order=True)
class IomemRange:
    """One /proc/iomem line of a kind that matters here (nested lines included)."""

    start: int
    end: int
    kind: RangeKind

    @property
    def range(self) -> PhysRange:
        return PhysRange(self.start, self.end)


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size - 1


def backup_source(iomem: Iterable[IomemRange]) -> PhysRange:
    """The low RAM that purgatory copies to the backup segment: the first System RAM range ending below 640 KiB."""
    for r in sorted(iomem):
        if r.kind is RangeKind.SYSTEM_RAM and r.end <= _LOW_RAM_LIMIT:
            return r.range
    return PhysRange(BACKUP_SRC_DEFAULT_START, BACKUP_SRC_DEFAULT_END)


def firmware_ranges(iomem: Iterable[IomemRange]) -> tuple[IomemRange, ...]:
    """The ranges the capture kernel must see as they are (everything but System RAM), sorted."""
    return tuple(sorted(r for r in iomem if r.kind is not RangeKind.SYSTEM_RAM))


class _MemMap:
    """An ordered, non-overlapping list of typed ranges, edited like kexec-tools' memmap_p."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, E820Type]] = []  # start, end (inclusive), type

    def add(self, start: int, end: int, kind: E820Type) -> bool:
        """Insert; an overlap with an existing entry is skipped (kexec-tools' add_memmap fails silently)."""
        for s, e, _ in self.entries:
            if s <= end and e >= start:
                return False
        self.entries.append((start, end, kind))
        self.entries.sort()
        return True

    def delete(self, start: int, end: int, what: str) -> None:
        """Cut ``[start, end]`` out of the one entry that contains it."""
        for i, (s, e, kind) in enumerate(self.entries):
            if s <= start and e >= end:
                pieces = []
                if s < start:
                    pieces.append((s, start - 1, kind))
                if end < e:
                    pieces.append((end + 1, e, kind))
                self.entries[i : i + 1] = pieces
                return
        raise SegmentLayoutError(what, f"0x{start:x}-0x{end:x} is not inside one range of the capture kernel's memory map")


def capture_memory_map(
    backup_src: PhysRange,
    crash_regions: Sequence[PhysRange],
    cut_out: Sequence[tuple[str, PhysRange]],
    firmware: Sequence[IomemRange],
) -> tuple[E820Entry, ...]:
    """The e820 table of the capture kernel.

    RAM is the low 640 KiB (its contents are in the backup segment by then)
    and the crash regions, minus ``cut_out`` (the backup and elfcorehdr
    segments); the firmware ranges are added with their e820 types.
    """
    mm = _MemMap()
    # add_memmap wants RAM ranges on 1 KiB boundaries; round inwards so the
    # capture kernel never gets a partial KiB it does not own.
    lo = (backup_src.start + 1023) & ~1023
    hi = ((backup_src.end + 1) & ~1023) - 1
    if hi > lo:
        mm.add(lo, hi, E820Type.RAM)
    for region in crash_regions:
        if not mm.add(region.start, region.end, E820Type.RAM):
            raise SegmentLayoutError(f"crash kernel region {region}", "overlaps the low memory or another crash region")
    for what, r in cut_out:
        mm.delete(r.start, r.end, what)
    for f in firmware:
        mm.add(f.start, f.end, _E820_OF_KIND[f.kind])
    if len(mm.entries) > E820_MAX_ENTRIES:
        raise SegmentLayoutError(
            "capture kernel memory map",
            f"{len(mm.entries)} entries do not fit the zero page's {E820_MAX_ENTRIES} (SETUP_E820_EXT is not supported)",
        )
    return tuple(E820Entry(s, e - s + 1, t) for s, e, t in mm.entries)
