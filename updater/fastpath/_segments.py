"""Segments, their placement in the crash region, and the kexec_load rules they must keep.

The rules are the kernel's (kernel/kexec_core.c ``sanity_check_segment_list``
and kernel/kexec.c ``do_kexec_load``) for a KEXEC_ON_CRASH load:

* at most KEXEC_SEGMENT_MAX (16) segments;
* each segment's ``mem`` and ``mem + memsz`` page aligned, ``bufsz <= memsz``;
* no two segments overlap;
* every segment, and the entry point, inside the crash kernel region
  (-EADDRNOTAVAIL otherwise);
* free pages left in the region for what the kernel allocates there itself:
  the control code page (``kimage_alloc_control_pages`` in
  ``kimage_alloc_init``) and, since the vmcoreinfo safecopy moved into the
  crash image (``kimage_crash_copy_vmcoreinfo``, Linux 4.13, 1229384f5b85 by
  Xunlei Pang; its subject, "kdump: protect vmcoreinfo data under the crash
  memory", not verified), one more page.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ground.ranges import PhysRange, subtract_all

from ._errors import SegmentLayoutError
from ._memmap import PAGE_SIZE

KEXEC_SEGMENT_MAX = 16
KEXEC_ON_CRASH = 0x00000001
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_CRASH_FLAGS = KEXEC_ON_CRASH | KEXEC_ARCH_X86_64
# The kernel may rewrite the elfcorehdr segment on CPU/memory hotplug
# (include/uapi/linux/kexec.h; a72bbec70da2 "crash: hotplug support for
# kexec_load()", Linux 6.6): the loader has left that segment out of the
# purgatory's digest and sized it from /sys/kernel/crash_elfcorehdr_size.
# The generic KEXEC_CRASH_HOTPLUG_SUPPORT (0x8, 79365026f869 "crash: add a
# new kexec flag for hotplug support", Linux 6.10) means the same on x86 but
# kernels 6.6-6.9 reject it with EINVAL, so x86 loaders (kexec-tools
# get_hotplug_kexec_flag) pass 0x4 and so does the fast path.
KEXEC_UPDATE_ELFCOREHDR = 0x00000004
KEXEC_CRASH_HOTPLUG_SUPPORT = 0x00000008
# Pages the kernel takes from the crash region at load time: the control code
# page and the vmcoreinfo safecopy.
CONTROL_PAGES = 2


class SegmentKind(enum.Enum):
    BACKUP = "backup"
    ELFCOREHDR = "elfcorehdr"
    PURGATORY = "purgatory"
    SETUP = "setup"
    SETUP_DATA = "setup_data"
    KERNEL = "kernel"
    INITRD = "initrd"


@dataclass(frozen=True)
class Segment:
    """One kexec segment: ``buf`` is copied to physical ``mem``, the rest of ``memsz`` zero-filled."""

    buf: bytes
    mem: int
    memsz: int
    kind: SegmentKind

    @property
    def bufsz(self) -> int:
        return len(self.buf)

    @property
    def end(self) -> int:
        """Exclusive end address."""
        return self.mem + self.memsz


@dataclass(frozen=True)
class SegmentSet:
    """Everything one kexec_load(2) call takes, segments in ascending address order."""

    segments: tuple[Segment, ...]
    entry: int
    flags: int
    crash_region: PhysRange
    digest: bytes
    manifest: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def by_kind(self, kind: SegmentKind) -> Segment:
        for s in self.segments:
            if s.kind is kind:
                return s
        raise KeyError(kind)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


@dataclass(frozen=True)
class Placement:
    kind: SegmentKind
    mem: int
    memsz: int


@dataclass(frozen=True)
class PlacementRequest:
    kind: SegmentKind
    memsz: int
    align: int
    min_addr: int = 0


def place_top_down(region: PhysRange, requests: Sequence[PlacementRequest]) -> tuple[Placement, ...]:
    """Place each request, in order, at the highest free aligned address of ``region``.

    Placing in a fixed order from the top keeps every segment at the same
    address from one prepare to the next as long as the sizes do not change,
    and leaves the free space in one piece at the bottom of the region, where
    the kernel looks first for its control pages.
    """
    if len(requests) > KEXEC_SEGMENT_MAX:
        raise SegmentLayoutError("segment list", f"{len(requests)} segments exceed KEXEC_SEGMENT_MAX ({KEXEC_SEGMENT_MAX})")
    placed: list[Placement] = []
    free: tuple[PhysRange, ...] = (region,)
    for req in requests:
        memsz = align_up(req.memsz, PAGE_SIZE)
        align = max(req.align, PAGE_SIZE)
        base = -1
        for gap in reversed(free):
            candidate = align_down(gap.end - memsz, align)
            if candidate >= max(gap.start, req.min_addr):
                base = candidate
                break
        if base < 0:
            raise SegmentLayoutError(
                f"crash kernel region {region}",
                f"too small: no room for the {req.kind.value} segment ({memsz} bytes, aligned to 0x{align:x}) "
                f"after {sum(p.memsz for p in placed)} bytes of other segments",
            )
        placed.append(Placement(req.kind, base, memsz))
        free = subtract_all(free, [PhysRange.from_size(base, memsz)])
    if free_pages(region, [PhysRange.from_size(p.mem, p.memsz) for p in placed]) < CONTROL_PAGES:
        raise SegmentLayoutError(
            f"crash kernel region {region}",
            f"too small: fewer than {CONTROL_PAGES} free pages left for the kernel's control pages",
        )
    return tuple(placed)


def free_pages(region: PhysRange, used: Sequence[PhysRange]) -> int:
    """Whole free pages left in ``region`` around ``used``."""
    free = subtract_all([region], used)
    return sum(max(0, align_down(gap.end, PAGE_SIZE) - align_up(gap.start, PAGE_SIZE)) // PAGE_SIZE for gap in free)


def check_kexec_rules(segments: Sequence[Segment], entry: int, region: PhysRange) -> list[str]:
    """Every kexec_load rule ``segments`` break, as sentences (empty when the set is loadable)."""
    problems: list[str] = []
    if not segments:
        problems.append("no segments")
    if len(segments) > KEXEC_SEGMENT_MAX:
        problems.append(f"{len(segments)} segments exceed KEXEC_SEGMENT_MAX ({KEXEC_SEGMENT_MAX})")
    previous_end = None
    for s in segments:
        name = f"{s.kind.value} segment at 0x{s.mem:x}"
        if s.mem % PAGE_SIZE or s.memsz % PAGE_SIZE or s.memsz <= 0:
            problems.append(f"{name}: mem 0x{s.mem:x} / memsz 0x{s.memsz:x} not page aligned")
        if s.bufsz > s.memsz:
            problems.append(f"{name}: bufsz {s.bufsz} > memsz {s.memsz}")
        if s.mem < region.start or s.end > region.end:
            problems.append(f"{name}: outside the crash kernel region {region}")
        if previous_end is not None and s.mem < previous_end:
            problems.append(f"{name}: overlaps the previous segment or is out of order")
        previous_end = s.end
    if not region.start <= entry < region.end:
        problems.append(f"entry 0x{entry:x} outside the crash kernel region {region}")
    # A segment with no size (already a problem above) takes no page.
    if free_pages(region, [PhysRange(s.mem, s.end) for s in segments if s.memsz > 0]) < CONTROL_PAGES:
        problems.append(f"fewer than {CONTROL_PAGES} free pages left in the crash region for the control pages")
    return problems
