"""The /proc/iomem ranges a crash load needs, and the memory map handed to the capture kernel.

The capture kernel must only use the crash region (plus the low 640 KiB whose
contents purgatory saved to the backup segment), and must still see the
firmware ranges it needs to boot (ACPI tables and NVS so that it can map and
parse them, reserved ranges so that it does not treat them as free).  The
backup and elfcorehdr segments are cut out so that it never allocates over
what it is about to dump.  This is kexec-tools' ``load_crashdump_segments``
(kexec/arch/i386/crashdump-x86.c) with ``add_memmap``/``delete_memmap``; the
result goes into the zero page's e820 table, as kexec-tools does by default
(without ``--pass-memmap-cmdline``).

Every range is a half-open :class:`~ground.ranges.PhysRange`; only the zero
page's e820 entries (address + size) and kexec-tools' inclusive comparisons
are rendered in their own form.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ground.ranges import PhysRange

from .._elfcorehdr import BACKUP_SRC_LIMIT
from ._errors import SegmentLayoutError

PAGE_SIZE = 4096
E820_MAX_ENTRIES = 128  # zero page e820_table[]; more would need SETUP_E820_EXT setup_data

# kexec-tools' backup source when /proc/iomem has no System RAM below 640 KiB
# (BACKUP_SRC_START..BACKUP_SRC_END, 0x0-0x9ffff).
BACKUP_SRC_DEFAULT = PhysRange(0x0, 0xA0000)


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
class IomemRange:
    """One /proc/iomem line of a kind that matters here (nested lines included)."""

    range: PhysRange
    kind: RangeKind


@dataclass(frozen=True)
class E820Entry:
    """One entry of the zero page's e820 table (written there as address, size, type)."""

    range: PhysRange
    type: E820Type


def backup_source(iomem: Iterable[IomemRange]) -> PhysRange:
    """The low RAM that purgatory copies to the backup segment: the first System RAM range ending below 640 KiB."""
    for r in sorted(iomem):
        if r.kind is RangeKind.SYSTEM_RAM and r.range.last <= BACKUP_SRC_LIMIT:
            return r.range
    return BACKUP_SRC_DEFAULT


def firmware_ranges(iomem: Iterable[IomemRange]) -> tuple[IomemRange, ...]:
    """The ranges the capture kernel must see as they are (everything but System RAM), sorted."""
    return tuple(sorted(r for r in iomem if r.kind is not RangeKind.SYSTEM_RAM))


class _MemMap:
    """An ordered, non-overlapping list of typed ranges, edited like kexec-tools' memmap_p."""

    def __init__(self) -> None:
        self.entries: list[E820Entry] = []

    def add(self, r: PhysRange, kind: E820Type) -> bool:
        """Insert; an overlap with an existing entry is skipped (kexec-tools' add_memmap fails silently)."""
        if any(e.range.overlaps(r) for e in self.entries):
            return False
        self.entries.append(E820Entry(r, kind))
        self.entries.sort(key=lambda e: (e.range, e.type))
        return True

    def delete(self, r: PhysRange, what: str) -> None:
        """Cut ``r`` out of the one entry that contains it."""
        for i, e in enumerate(self.entries):
            if e.range.contains(r):
                self.entries[i : i + 1] = [E820Entry(piece, e.type) for piece in e.range.subtract(r)]
                return
        raise SegmentLayoutError(what, f"{r} is not inside one range of the capture kernel's memory map")


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
    hi = backup_src.end & ~1023
    if hi > lo:
        mm.add(PhysRange(lo, hi), E820Type.RAM)
    for region in crash_regions:
        if not mm.add(region, E820Type.RAM):
            raise SegmentLayoutError(f"crash kernel region {region}", "overlaps the low memory or another crash region")
    for what, r in cut_out:
        mm.delete(r, what)
    for f in firmware:
        mm.add(f.range, _E820_OF_KIND[f.kind])
    if len(mm.entries) > E820_MAX_ENTRIES:
        raise SegmentLayoutError(
            "capture kernel memory map",
            f"{len(mm.entries)} entries do not fit the zero page's {E820_MAX_ENTRIES} (SETUP_E820_EXT is not supported)",
        )
    return tuple(mm.entries)
