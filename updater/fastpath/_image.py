"""Prepare a crash image once; per batch, drop in a new elfcorehdr, re-digest, verify.

What is prepared once (:func:`prepare`), because nothing in it depends on
which CPUs and memory blocks are online:

* the placement of every segment in the crash region (top-down, in the
  order elfcorehdr, purgatory, backup, setup, kernel, initrd, so that the
  elfcorehdr is the highest segment and therefore the last one hashed);
* the capture kernel's command line (``elfcorehdr=`` names a slot whose
  address and size never change) and e820 map, hence the whole setup segment;
* the kernel and initrd segments, and the zero-filled backup segment;
* the purgatory, relocated for its address, with every symbol set except
  ``sha256_digest`` (``sha256_regions`` lists the elfcorehdr slot's full size);
* the SHA-256 state over every hashed segment below the elfcorehdr.

With ``kernel_hotplug`` (the hand-over to the kernel's crash hotplug, Linux
6.6+) the elfcorehdr is left out of ``sha256_regions`` and of the digest, as
kexec-tools >= 2.0.28 ``--hotplug`` does (``arch_do_exclude_segment``), its
slot is at least the kernel's ``/sys/kernel/crash_elfcorehdr_size`` plus the
ELF header, and the load flags carry KEXEC_UPDATE_ELFCOREHDR: the kernel then
rewrites the header in place on every CPU/memory event without breaking the
digest purgatory checks at panic.  The digest is then the same for every
header; verification still recomputes it from the final buffers.

Per batch (:meth:`PreparedImage.build`): the new header bytes become the
elfcorehdr segment, the cached state is copied and fed the header plus the
zeros of its slot, and the 32-byte digest is patched into a copy of the
purgatory.  Then :meth:`PreparedImage.verify` recomputes the digest from the
final buffers with an independent implementation, re-reads what the purgatory
will act on, and only a :class:`VerifiedSegmentSet` can be loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ground.errors import InputError
from ground.ranges import PhysRange

from .._elfcorehdr import EHDR_SIZE, PHDR_SIZE
from .._parse import ELF64_IDENT_PREFIX, ET_CORE
from ._bootparams import (
    acpi_rsdp_from_boot_params,
    RNG_SEED_SIZE,
    build_setup_segment,
    capture_cmdline,
    rng_seed_setup_data,
    setup_cmdline_offset,
    setup_segment_size,
)
from ._bzimage import STARTUP_64_OFFSET, BzImage
from ._digest import AttestedPrefix, PrefixDigest, parse_sha256_regions, recompute_digest, sha256_regions
from ._errors import ElfcorehdrOverflowError, SegmentLayoutError, VerificationError, DigestMismatchError
from ._memmap import (
    PAGE_SIZE,
    E820Entry,
    IomemRange,
    backup_source,
    capture_memory_map,
    firmware_ranges,
)
from ._purgatory import PurgatoryBlob, RelocatedPurgatory, purgatory_footprint
from ._segments import (
    KEXEC_CRASH_FLAGS,
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_UPDATE_ELFCOREHDR,
    PlacementRequest,
    Segment,
    SegmentKind,
    SegmentSet,
    align_up,
    check_kexec_rules,
    place_top_down,
)

DEFAULT_ELFCOREHDR_CAPACITY = 64 * 1024
# Minimum addresses kexec-tools gives add_buffer (do_bzImage64_load,
# setup_linux_bootloader_parameters_high): nothing in the first pages, the
# kernel above 1 MiB, the initrd above 16 MiB.
_MIN_ADDR = {
    SegmentKind.PURGATORY: 0x3000,
    SegmentKind.SETUP: 0x3000,
    SegmentKind.SETUP_DATA: 0x100000,
    SegmentKind.KERNEL: 0x100000,
    SegmentKind.INITRD: 0x1000000,
}
_PLACEMENT_ORDER = (
    SegmentKind.ELFCOREHDR,
    SegmentKind.PURGATORY,
    SegmentKind.BACKUP,
    SegmentKind.SETUP,
    SegmentKind.SETUP_DATA,
    SegmentKind.KERNEL,
    SegmentKind.INITRD,
)
_ENTRY64_RBX, _ENTRY64_RSI, _ENTRY64_RSP, _ENTRY64_RIP = 1, 4, 6, 16


def elfcorehdr_capacity_for(cpus: int, ram_ranges: int, spare_headers: int = 64) -> int:
    """Bytes to reserve for an elfcorehdr with one note per CPU, one load per RAM range, and spare room.

    kexec-tools reserves max(16 KiB, header size); a fixed slot that fits the
    largest header expected keeps the layout, and therefore the setup segment
    and the cached digest, unchanged while CPUs and memory come and go.
    """
    headers = cpus + ram_ranges + 2 + spare_headers  # + vmcoreinfo note + kernel text load
    return max(16 * 1024, align_up(EHDR_SIZE + PHDR_SIZE * headers, PAGE_SIZE))


@dataclass(frozen=True)
class CaptureKernel:
    """The crash (capture) kernel, its initrd and its base command line (without elfcorehdr=)."""

    kernel: BzImage
    initrd: bytes | None
    cmdline: str


@dataclass(frozen=True)
class FastPathInputs:
    """Everything :func:`prepare` needs; all of it is stable across hotplug batches."""

    capture: CaptureKernel
    purgatory: PurgatoryBlob
    crash_regions: tuple[PhysRange, ...]  # every "Crash kernel" range; the image goes in the highest
    iomem: tuple[IomemRange, ...]  # System RAM and the firmware ranges (ACPI, NVS, reserved, pmem)
    boot_params: bytes | None  # /sys/kernel/boot_params/data
    elfcorehdr_capacity: int = DEFAULT_ELFCOREHDR_CAPACITY
    acpi_rsdp: int | None = None  # None: take it from boot_params
    rng_seed: bytes | None = None  # None: 32 fresh random bytes; b"": no SETUP_RNG_SEED setup_data
    # Hand the header to the kernel (KEXEC_UPDATE_ELFCOREHDR): 0 = no; else the
    # kernel's /sys/kernel/crash_elfcorehdr_size (program headers it may write,
    # without the ELF header), which the slot must hold with the ELF header.
    kernel_hotplug_size: int = 0


def hotplug_slot_size(crash_elfcorehdr_size: int) -> int:
    """The smallest elfcorehdr slot the kernel's own rewrite fits in.

    The kernel refuses an update whose header exceeds the segment's memsz
    ("update elfcorehdr elfsz N > memsz M", arch/x86/kernel/crash.c
    arch_crash_handle_hotplug_event).  ``crash_elfcorehdr_size`` is the
    program headers only (arch_crash_get_elfcorehdr_size: (2 + NR_CPUS_DEFAULT
    + CRASH_MAX_MEMORY_RANGES) * sizeof(Elf64_Phdr)); the header adds
    ``sizeof(Elf64_Ehdr)``, which kexec-tools' page rounding happens to absorb.
    """
    return align_up(crash_elfcorehdr_size + EHDR_SIZE, PAGE_SIZE)


@dataclass(frozen=True)
class Layout:
    """Where everything goes, fixed for the life of a :class:`PreparedImage`."""

    crash_region: PhysRange
    backup_source: PhysRange  # low RAM purgatory copies to the backup segment at panic
    backup: PhysRange
    elfcorehdr: PhysRange  # the slot: its size is the capacity
    purgatory: PhysRange
    setup: PhysRange
    setup_data: PhysRange | None
    kernel: PhysRange
    initrd: PhysRange | None
    entry: int
    cmdline: str
    e820: tuple[E820Entry, ...]

    @property
    def elfcorehdr_capacity(self) -> int:
        return self.elfcorehdr.size


@dataclass(frozen=True)
class PurgatoryView:
    """Offsets, in the purgatory segment's buffer, of what the verifier reads back."""

    sha256_digest: int
    sha256_regions: int
    sha256_regions_size: int
    entry64_regs: int
    backup_start: int
    backup_src_start: int
    backup_src_size: int
    panic_kernel: int
    skip_checks: int | None
    stack_end: int  # an address


@dataclass(frozen=True)
class VerifiedSegmentSet:
    """A segment set that passed :meth:`PreparedImage.verify`: the only thing the loader takes."""

    segment_set: SegmentSet
    digest: bytes
    mode: str  # "full" or "attested-prefix"
    seconds: float


def purgatory_view(purg: RelocatedPurgatory) -> PurgatoryView:
    """Where the verifier finds each symbol in a purgatory relocated like ``purg``."""
    return PurgatoryView(
        sha256_digest=purg.symbol_offset("sha256_digest"),
        sha256_regions=purg.symbol_offset("sha256_regions"),
        sha256_regions_size=len(purg.get_symbol("sha256_regions")),
        entry64_regs=purg.symbol_offset("entry64_regs"),
        backup_start=purg.symbol_offset("backup_start"),
        backup_src_start=purg.symbol_offset("backup_src_start"),
        backup_src_size=purg.symbol_offset("backup_src_size"),
        panic_kernel=purg.symbol_offset("panic_kernel"),
        skip_checks=purg.symbol_offset("skip_checks") if purg.has_symbol("skip_checks") else None,
        stack_end=purg.symbol_address("stack_end"),
    )


class PreparedImage:
    """A crash image laid out and hashed once, ready to take elfcorehdrs batch after batch."""

    def __init__(self, inputs: FastPathInputs) -> None:
        t0 = time.perf_counter()
        self.inputs = inputs
        if not inputs.crash_regions:
            raise SegmentLayoutError("crash kernel region", "none reserved (boot with crashkernel=)")
        if inputs.elfcorehdr_capacity <= EHDR_SIZE:
            raise SegmentLayoutError("elfcorehdr", f"capacity {inputs.elfcorehdr_capacity} is too small")
        self.kernel_hotplug = inputs.kernel_hotplug_size > 0
        self.hotplug_slot_min = hotplug_slot_size(inputs.kernel_hotplug_size) if self.kernel_hotplug else 0
        if inputs.elfcorehdr_capacity < self.hotplug_slot_min:
            raise SegmentLayoutError(
                "elfcorehdr",
                f"capacity {inputs.elfcorehdr_capacity} is smaller than the {self.hotplug_slot_min} bytes the kernel's "
                f"rewrite needs (crash_elfcorehdr_size {inputs.kernel_hotplug_size} + ELF header)",
            )
        self.flags = KEXEC_CRASH_FLAGS | (KEXEC_UPDATE_ELFCOREHDR if self.kernel_hotplug else 0)
        kernel = inputs.capture.kernel
        initrd = inputs.capture.initrd
        region = max(inputs.crash_regions, key=lambda r: r.start)  # kexec-tools loads into the highest
        src = backup_source(inputs.iomem)
        acpi_rsdp = inputs.acpi_rsdp if inputs.acpi_rsdp is not None else acpi_rsdp_from_boot_params(inputs.boot_params)
        purgatory_fp = purgatory_footprint(inputs.purgatory)
        backup_size = align_up(src.size, 1024)
        # The command line's length depends on the elfcorehdr address, which
        # is not known before placement; "elfcorehdr=<max digits>K" bounds it.
        worst_cmdline = capture_cmdline(inputs.capture.cmdline, (region.last // 1024) * 1024, acpi_rsdp)
        requests = {
            SegmentKind.ELFCOREHDR: PlacementRequest(SegmentKind.ELFCOREHDR, inputs.elfcorehdr_capacity, 1024),
            SegmentKind.PURGATORY: PlacementRequest(
                SegmentKind.PURGATORY, purgatory_fp.memsz, purgatory_fp.align, _MIN_ADDR[SegmentKind.PURGATORY]
            ),
            SegmentKind.BACKUP: PlacementRequest(SegmentKind.BACKUP, backup_size, 1024),
            SegmentKind.SETUP: PlacementRequest(
                SegmentKind.SETUP, setup_segment_size(kernel, worst_cmdline), 16, _MIN_ADDR[SegmentKind.SETUP]
            ),
            SegmentKind.KERNEL: PlacementRequest(
                SegmentKind.KERNEL, align_up(kernel.init_size, PAGE_SIZE), kernel.kernel_alignment, _MIN_ADDR[SegmentKind.KERNEL]
            ),
        }
        seed = os.urandom(RNG_SEED_SIZE) if inputs.rng_seed is None else inputs.rng_seed
        setup_data = rng_seed_setup_data(seed) if seed else b""
        if setup_data:
            requests[SegmentKind.SETUP_DATA] = PlacementRequest(
                SegmentKind.SETUP_DATA, len(setup_data), PAGE_SIZE, _MIN_ADDR[SegmentKind.SETUP_DATA]
            )
        if initrd:
            requests[SegmentKind.INITRD] = PlacementRequest(
                SegmentKind.INITRD, len(initrd), PAGE_SIZE, _MIN_ADDR[SegmentKind.INITRD]
            )
        placed = {p.kind: p for p in place_top_down(region, [requests[k] for k in _PLACEMENT_ORDER if k in requests])}

        elf_slot = PhysRange.from_size(placed[SegmentKind.ELFCOREHDR].mem, placed[SegmentKind.ELFCOREHDR].memsz)
        backup = PhysRange.from_size(placed[SegmentKind.BACKUP].mem, placed[SegmentKind.BACKUP].memsz)
        cmdline = capture_cmdline(inputs.capture.cmdline, elf_slot.start, acpi_rsdp)
        e820 = capture_memory_map(
            src,
            sorted(inputs.crash_regions),
            [("backup segment", backup), ("elfcorehdr segment", elf_slot)],
            firmware_ranges(inputs.iomem),
        )
        setup_mem = placed[SegmentKind.SETUP].mem
        kernel_mem = placed[SegmentKind.KERNEL].mem
        initrd_mem = placed[SegmentKind.INITRD].mem if initrd else 0
        setup_data_mem = placed[SegmentKind.SETUP_DATA].mem if setup_data else 0
        setup_buf = build_setup_segment(
            kernel, inputs.boot_params, setup_mem, cmdline, initrd_mem, len(initrd or b""), e820, acpi_rsdp,
            setup_data_mem,
        )

        static: dict[SegmentKind, Segment] = {
            # bufsz 0: the kernel zero-fills memsz itself, and the syscall
            # (the window) copies 640 KiB less than kexec-tools' zero buffer.
            SegmentKind.BACKUP: Segment(b"", backup.start, backup.size, SegmentKind.BACKUP),
            SegmentKind.SETUP: Segment(setup_buf, setup_mem, placed[SegmentKind.SETUP].memsz, SegmentKind.SETUP),
            SegmentKind.KERNEL: Segment(
                kernel.protected_mode_kernel, kernel_mem, placed[SegmentKind.KERNEL].memsz, SegmentKind.KERNEL
            ),
        }
        if initrd:
            static[SegmentKind.INITRD] = Segment(initrd, initrd_mem, placed[SegmentKind.INITRD].memsz, SegmentKind.INITRD)
        if setup_data:
            static[SegmentKind.SETUP_DATA] = Segment(
                setup_data, setup_data_mem, placed[SegmentKind.SETUP_DATA].memsz, SegmentKind.SETUP_DATA
            )

        purgatory_mem = placed[SegmentKind.PURGATORY].mem
        purg = RelocatedPurgatory(inputs.purgatory, purgatory_mem)
        # The hashed segments: every one but the purgatory, ascending; the
        # elfcorehdr slot is listed with its full size whatever the header's,
        # or not at all when the kernel is to rewrite it (kernel_hotplug).
        slot_placeholder = Segment(b"", elf_slot.start, elf_slot.size, SegmentKind.ELFCOREHDR)
        with_slot = [] if self.kernel_hotplug else [slot_placeholder]
        hashed = sorted([*static.values(), *with_slot], key=lambda s: s.mem)
        cmdline_end = setup_mem + setup_cmdline_offset(kernel) + len(cmdline.encode())
        self._set_purgatory_symbols(purg, setup_mem, kernel_mem, cmdline_end, src, backup, hashed)

        self.layout = Layout(
            crash_region=region,
            backup_source=src,
            backup=backup,
            elfcorehdr=elf_slot,
            purgatory=PhysRange.from_size(purgatory_mem, placed[SegmentKind.PURGATORY].memsz),
            setup=PhysRange.from_size(setup_mem, placed[SegmentKind.SETUP].memsz),
            setup_data=PhysRange.from_size(setup_data_mem, placed[SegmentKind.SETUP_DATA].memsz) if setup_data else None,
            kernel=PhysRange.from_size(kernel_mem, placed[SegmentKind.KERNEL].memsz),
            initrd=PhysRange.from_size(initrd_mem, placed[SegmentKind.INITRD].memsz) if initrd else None,
            entry=purg.entry,
            cmdline=cmdline,
            e820=e820,
        )
        self._static = static
        self._purgatory_buf = bytes(purg.buf)
        self._purgatory_memsz = placed[SegmentKind.PURGATORY].memsz
        self.view = purgatory_view(purg)
        slot_index = len(hashed) if self.kernel_hotplug else hashed.index(slot_placeholder)
        self._prefix_len = slot_index
        self._after_slot = tuple(hashed[slot_index + 1 :])
        prefix = hashed[:slot_index]
        self._prefix_digest = PrefixDigest(prefix)
        self._attested = AttestedPrefix(prefix)
        self._static_sha256 = {k: hashlib.sha256(s.buf).hexdigest() for k, s in static.items()}
        self.prepare_seconds = time.perf_counter() - t0

    @staticmethod
    def _set_purgatory_symbols(
        purg: RelocatedPurgatory,
        setup_mem: int,
        kernel_mem: int,
        cmdline_end: int,
        src: PhysRange,
        backup: PhysRange,
        hashed: Sequence[Segment],
    ) -> None:
        regs_struct = struct.Struct("<17Q")
        regs = list(regs_struct.unpack(purg.get_symbol("entry64_regs")))
        regs[_ENTRY64_RBX] = 0  # bootstrap processor
        regs[_ENTRY64_RSI] = setup_mem  # struct boot_params *
        regs[_ENTRY64_RSP] = purg.symbol_address("stack_end")
        regs[_ENTRY64_RIP] = kernel_mem + STARTUP_64_OFFSET
        purg.set_symbol("entry64_regs", regs_struct.pack(*regs))
        # kexec-tools' cmdline_end: the NUL that ends the command line.
        purg.set_symbol("cmdline_end", struct.pack("<Q", cmdline_end))
        purg.set_symbol("backup_src_start", struct.pack("<Q", src.start))
        purg.set_symbol("backup_src_size", struct.pack("<Q", src.size))
        purg.set_symbol("backup_start", struct.pack("<Q", backup.start))
        purg.set_symbol("panic_kernel", b"\x01")
        # arch_update_purgatory's defaults for the console and VGA options.
        for name, value in (
            ("reset_vga", b"\x00"),
            ("serial_base", struct.pack("<H", 0x3F8)),
            ("serial_baud", struct.pack("<I", 0)),
            ("console_vga", b"\x00"),
            ("console_serial", b"\x00"),
            ("skip_checks", struct.pack("<I", 0)),
        ):
            if purg.has_symbol(name):
                purg.set_symbol(name, value)
        try:
            purg.set_symbol("sha256_regions", sha256_regions(hashed))
        except ValueError as e:
            raise SegmentLayoutError("segment list", str(e)) from e

    # -- per batch --

    def build(self, elfcorehdr: bytes) -> SegmentSet:
        """The segment set for one batch: only the elfcorehdr and the purgatory's digest are new."""
        t0 = time.perf_counter()
        capacity = self.layout.elfcorehdr_capacity
        if len(elfcorehdr) > capacity:
            raise ElfcorehdrOverflowError(len(elfcorehdr), capacity)
        _check_elfcorehdr(elfcorehdr)
        header = Segment(bytes(elfcorehdr), self.layout.elfcorehdr.start, capacity, SegmentKind.ELFCOREHDR)
        tail = self._after_slot if self.kernel_hotplug else (header, *self._after_slot)
        digest = self._prefix_digest.digest_with(tail)
        pbuf = bytearray(self._purgatory_buf)
        pbuf[self.view.sha256_digest : self.view.sha256_digest + 32] = digest
        purgatory = Segment(bytes(pbuf), self.layout.purgatory.start, self._purgatory_memsz, SegmentKind.PURGATORY)
        segments = tuple(sorted([*self._static.values(), header, purgatory], key=lambda s: s.mem))
        build_seconds = time.perf_counter() - t0
        return SegmentSet(
            segments=segments,
            entry=self.layout.entry,
            flags=self.flags,
            crash_region=self.layout.crash_region,
            digest=digest,
            manifest=MappingProxyType(self._manifest(segments, digest, build_seconds)),
        )

    def _manifest(self, segments: Sequence[Segment], digest: bytes, build_seconds: float) -> dict[str, object]:
        rows = []
        for s in segments:
            sha = self._static_sha256.get(s.kind) or hashlib.sha256(s.buf).hexdigest()
            rows.append({"kind": s.kind.value, "mem": s.mem, "memsz": s.memsz, "bufsz": s.bufsz, "sha256": sha})
        return {
            "entry": self.layout.entry,
            "flags": self.flags,
            "kernel_hotplug": self.kernel_hotplug,
            "crash_region": [self.layout.crash_region.start, self.layout.crash_region.last],  # inclusive, as /proc/iomem
            "purgatory_digest": digest.hex(),
            "purgatory_source": self.inputs.purgatory.source,
            "kernel": self.inputs.capture.kernel.source,
            "kernel_version": self.inputs.capture.kernel.kernel_version,
            "cmdline": self.layout.cmdline,
            "e820": [[e.range.start, e.range.size, int(e.type)] for e in self.layout.e820],
            "segments": rows,
            "timings": {"prepare_s": self.prepare_seconds, "build_s": build_seconds},
        }

    def verify(self, segment_set: SegmentSet, *, reuse_attested_prefix: bool = False) -> VerifiedSegmentSet:
        """Check ``segment_set`` independently of how it was built; raise :class:`VerificationError`.

        By default the digest is recomputed over every byte of every hashed
        segment (hashlib, from the final buffers).  With
        ``reuse_attested_prefix`` an independent hashlib state over the
        unchanged prefix, tied to the exact buffer objects it hashed at
        prepare time, is resumed instead; anything else is still hashed in full.
        """
        return verify_segment_set(
            segment_set, self.view, self._attested if reuse_attested_prefix else None, hotplug_slot_min=self.hotplug_slot_min
        )

    def still_valid_for(self, crash_regions: Sequence[PhysRange], iomem: Sequence[IomemRange]) -> bool:
        """Whether a new snapshot leaves everything prepared here unchanged (else: prepare again)."""
        return (
            tuple(sorted(crash_regions)) == tuple(sorted(self.inputs.crash_regions))
            and backup_source(iomem) == self.layout.backup_source
            and firmware_ranges(iomem) == firmware_ranges(self.inputs.iomem)
        )


def _check_elfcorehdr(data: bytes) -> None:
    if len(data) < EHDR_SIZE or not data.startswith(ELF64_IDENT_PREFIX):
        raise InputError("elfcorehdr", "not a little-endian ELF64 header")
    (e_type,) = struct.unpack_from("<H", data, 16)
    if e_type != ET_CORE:
        raise InputError("elfcorehdr", f"ELF type {e_type} is not ET_CORE")


def prepare(inputs: FastPathInputs) -> PreparedImage:
    """Lay out, relocate and hash everything that does not change between batches."""
    return PreparedImage(inputs)


# -- verification ----------------------------------------------------------

_ELFCOREHDR_ARG = re.compile(rb"(?:^| )elfcorehdr=(\d+)K(?= |$)")


def verify_segment_set(
    segment_set: SegmentSet, view: PurgatoryView, attested: AttestedPrefix | None = None, *, hotplug_slot_min: int = 0
) -> VerifiedSegmentSet:
    """The check made before every load; see :meth:`PreparedImage.verify`.

    With KEXEC_UPDATE_ELFCOREHDR in the flags (the hand-over to the kernel's
    crash hotplug), the header segment, found from the zero page's
    ``elfcorehdr=``, must be the one segment the kernel will take for it
    (the only one starting with ELF magic: kernel/crash_core.c
    crash_handle_hotplug_event looks for that), at least ``hotplug_slot_min``
    bytes, and out of ``sha256_regions`` and the digest; every other segment
    but the purgatory is hashed exactly as without the flag."""
    t0 = time.perf_counter()
    segs = segment_set.segments
    problems = check_kexec_rules(segs, segment_set.entry, segment_set.crash_region)
    if problems:
        raise VerificationError("segment list", "; ".join(problems))
    extra_flags = segment_set.flags & ~(KEXEC_CRASH_FLAGS | KEXEC_UPDATE_ELFCOREHDR)
    if segment_set.flags & KEXEC_CRASH_FLAGS != KEXEC_CRASH_FLAGS or extra_flags:
        what = "KEXEC_CRASH_HOTPLUG_SUPPORT (0x8), which x86 kernels 6.6-6.9 reject" if extra_flags & KEXEC_CRASH_HOTPLUG_SUPPORT else f"0x{segment_set.flags:x}"
        raise VerificationError("kexec flags", f"{what} is not KEXEC_ON_CRASH|KEXEC_ARCH_X86_64 [|KEXEC_UPDATE_ELFCOREHDR]")
    hotplug = bool(segment_set.flags & KEXEC_UPDATE_ELFCOREHDR)
    # The purgatory is whatever segment the entry point is in: that is what
    # the kernel jumps to, whatever the segment claims to be.
    holders = [s for s in segs if s.mem <= segment_set.entry < s.mem + s.bufsz]
    if len(holders) != 1:
        raise VerificationError("entry point", f"0x{segment_set.entry:x} is not inside exactly one segment's contents")
    purg = holders[0].buf
    need = max(view.sha256_regions + view.sha256_regions_size, view.entry64_regs + 136, view.sha256_digest + 32)
    if len(purg) < need:
        raise VerificationError("purgatory segment", f"{len(purg)} bytes, too short for its symbols")
    others = [s for s in segs if s is not holders[0]]
    if hotplug:
        # Which segment is left out of the digest comes from the zero page,
        # the capture kernel's own view, never from the segments' labels.
        header_seg = _check_setup(others)
        magic = [s for s in segs if s.buf[:4] == b"\x7fELF"]
        if magic != [header_seg]:
            raise VerificationError(
                "elfcorehdr segment",
                f"the kernel rewrites the first page of the segment that starts with ELF magic; "
                f"{len(magic)} segment(s) do ({', '.join(hex(s.mem) for s in magic)}), the header is at 0x{header_seg.mem:x}",
            )
        if header_seg.memsz < hotplug_slot_min:
            raise VerificationError(
                "elfcorehdr segment", f"memsz {header_seg.memsz} < {hotplug_slot_min}: the kernel's rewrite would not fit"
            )
        hashed = [s for s in others if s is not header_seg]
    else:
        hashed = others
    regions = parse_sha256_regions(purg[view.sha256_regions : view.sha256_regions + view.sha256_regions_size])
    expected = [(s.mem, s.memsz) for s in hashed]
    if regions != expected:
        raise VerificationError(
            "purgatory sha256_regions",
            f"lists {[(hex(a), hex(b)) for a, b in regions]} but the hashed segments are "
            f"{[(hex(a), hex(b)) for a, b in expected]}",
        )
    patched = bytes(purg[view.sha256_digest : view.sha256_digest + 32])
    if attested is not None and attested.matches(hashed):
        recomputed = attested.digest_with(hashed[attested.length :])
        mode = "attested-prefix"
    else:
        recomputed = recompute_digest(hashed)
        mode = "full"
    if recomputed != patched:
        raise DigestMismatchError(patched, recomputed)
    if segment_set.digest != patched:
        raise VerificationError("segment set", "its recorded digest is not the one in the purgatory")
    _check_purgatory_symbols(purg, view, others, holders[0])
    _check_setup(others)
    return VerifiedSegmentSet(segment_set, recomputed, mode, time.perf_counter() - t0)


def _check_purgatory_symbols(purg: bytes, view: PurgatoryView, hashed: Sequence[Segment], purg_seg: Segment) -> None:
    regs = struct.unpack_from("<17Q", purg, view.entry64_regs)
    starts = {s.mem: s for s in hashed}
    kernel = starts.get(regs[_ENTRY64_RIP] - STARTUP_64_OFFSET)
    if kernel is None:
        raise VerificationError("purgatory entry64_regs", f"rip 0x{regs[_ENTRY64_RIP]:x} is not a loaded kernel's startup_64")
    setup = starts.get(regs[_ENTRY64_RSI])
    if setup is None or setup.buf[0x202:0x206] != b"HdrS":
        raise VerificationError("purgatory entry64_regs", f"rsi 0x{regs[_ENTRY64_RSI]:x} is not a loaded zero page")
    if regs[_ENTRY64_RSP] != view.stack_end or not purg_seg.mem < view.stack_end <= purg_seg.end:
        raise VerificationError("purgatory entry64_regs", f"rsp 0x{regs[_ENTRY64_RSP]:x} is not the purgatory's stack_end")
    if purg[view.panic_kernel] != 1:
        raise VerificationError("purgatory panic_kernel", "not set: purgatory would not save the low memory")
    if view.skip_checks is not None and struct.unpack_from("<I", purg, view.skip_checks)[0] != 0:
        raise VerificationError("purgatory skip_checks", "set: purgatory would not check the digest")
    (backup_start,) = struct.unpack_from("<Q", purg, view.backup_start)
    (src_size,) = struct.unpack_from("<Q", purg, view.backup_src_size)
    backup = starts.get(backup_start)
    if backup is None or backup.memsz < src_size or backup.buf.count(0) != backup.bufsz:
        raise VerificationError(
            "purgatory backup_start", f"0x{backup_start:x} is not a zero-filled segment of at least {src_size} bytes"
        )


def _check_setup(hashed: Sequence[Segment]) -> Segment:
    """Check the zero page; return the segment its ``elfcorehdr=`` names."""
    setups = [s for s in hashed if len(s.buf) >= 0x2D0 and s.buf[0x202:0x206] == b"HdrS"]
    if len(setups) != 1:
        raise VerificationError("setup segment", f"{len(setups)} zero pages among the segments, expected 1")
    setup = setups[0]
    (setup_data,) = struct.unpack_from("<Q", setup.buf, 0x250)
    if setup_data and not any(s.mem <= setup_data and setup_data + 16 <= s.mem + s.bufsz for s in hashed):
        raise VerificationError("setup segment", f"setup_data 0x{setup_data:x} is not inside a loaded segment")
    ptr = struct.unpack_from("<I", setup.buf, 0x228)[0] | struct.unpack_from("<I", setup.buf, 0xC8)[0] << 32
    off = ptr - setup.mem
    end = setup.buf.find(b"\0", off) if 0 <= off < setup.bufsz else -1
    if end < 0:
        raise VerificationError("setup segment", f"cmd_line_ptr 0x{ptr:x} does not point at a command line in it")
    found = _ELFCOREHDR_ARG.findall(setup.buf[off:end])
    if not found:
        raise VerificationError("capture kernel command line", "has no elfcorehdr=")
    addr = int(found[-1]) * 1024
    header = next((s for s in hashed if s.mem == addr), None)
    if header is None or header.buf[:4] != b"\x7fELF" or struct.unpack_from("<H", header.buf, 16)[0] != 4:
        raise VerificationError("capture kernel command line", f"elfcorehdr=0x{addr:x} is not where the ELF core header is")
    return header
