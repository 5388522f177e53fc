"""The elfcorehdr: an ELF64 core header the capture kernel's /proc/vmcore reads.

Built as kexec-tools builds it for x86_64 (``kexec/crashdump-elf.c``,
``crash_create_elf64_headers``, fed by ``kexec/arch/i386/crashdump-x86.c``):

- ELF header: ET_CORE, EM_X86_64, ELFOSABI_NONE, e_phoff 64, no sections;
- one PT_NOTE per CPU crash-notes buffer (p_offset = p_paddr = address,
  p_vaddr 0, p_filesz = p_memsz = size, flags 0, align 0), by CPU number;
- one PT_NOTE for vmcoreinfo;
- one PT_LOAD (RWX) for the kernel text: p_offset = p_paddr = "Kernel code"
  start, p_vaddr = the kcore text mapping rounded down to 1 MiB;
- one PT_LOAD (RWX) per System RAM line with the crash kernel cut out,
  p_vaddr = page_offset + start; the RAM range that the backup segment saves
  (the first one below 640 KiB) has p_offset = the backup segment's address.

The buffer is zero-padded to 1 KiB (ELF_CORE_HEADER_ALIGN).  kexec-tools sizes
its buffer for sysconf(_SC_NPROCESSORS_CONF) CPUs and for every iomem line it
collected (ACPI, reserved, ...), so its padding can be longer; the ELF header
and the program headers are the same bytes.

Where kexec-tools and the kernel (kexec_file_load, ``prepare_elf_headers`` in
``arch/x86/kernel/crash.c``) differ, :class:`HeaderOptions` says which one to
follow: a note per *present* CPU (kexec-tools reads ``crash_notes`` of every
CPU that has one: offline CPUs keep theirs) or per *possible* CPU (kernel); the
low 1 MiB kept (kexec-tools, with its backup region) or cut (kernel: it is
always reserved).  ``online`` notes, one per online CPU, follow neither: it
makes every CPU online/offline a header change, for tests and for capture
kernels that choke on empty notes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ground.ranges import PhysRange

from ._errors import HeaderTooLargeError, SnapshotError
from ._parse import ELF64_EHDR, ELF64_IDENT_PREFIX, ELF64_PHDR, EM_X86_64, ET_CORE, PN_XNUM
from ._parse import PT_LOAD as PT_LOAD  # re-exported: the header's program header types
from ._parse import PT_NOTE as PT_NOTE
from ._snapshot import SystemSnapshot

if TYPE_CHECKING:
    from ._config import UpdaterSettings

ELF_CORE_HEADER_ALIGN = 1024
ELFCOREHDR_MIN_MEMSZ = 16 * 1024  # kexec-tools pads the segment to 16 KiB
PAGE_SIZE = 4096
EHDR_SIZE = ELF64_EHDR.size
PHDR_SIZE = ELF64_PHDR.size
PF_RWX = 0x7
# kexec-tools' backup source is the first RAM range that ends at or below
# 640 KiB; it compares the inclusive end (get_backup_area: "range.end > 0xa0000"
# skips a range), hence PhysRange.last.
BACKUP_SRC_LIMIT = 0xA0000

_IDENT = ELF64_IDENT_PREFIX + bytes([1, 0]) + bytes(8)  # + EV_CURRENT, ELFOSABI_NONE (SYSV)

CPU_NOTE_CHOICES = ("present", "possible", "online")


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class HeaderOptions:
    """What the header contains where loaders differ; see the module doc."""

    cpu_notes: str = "present"
    cut_low_1m: bool = False
    driver_managed: bool = True
    # Physical address of the backup segment (kexec_load path): the RAM range
    # it saves is read from there.  None: not placed (dry-run, kexec-tools
    # builds its own), p_offset stays the range's own address.
    backup_offset: int | None = None

    def __post_init__(self) -> None:
        if self.cpu_notes not in CPU_NOTE_CHOICES:
            raise ValueError(f"cpu_notes must be one of {', '.join(CPU_NOTE_CHOICES)}, got {self.cpu_notes!r}")

    @classmethod
    def for_loader(cls, load_path: str, **overrides: Any) -> HeaderOptions:
        """The defaults of the loader in use: kexec-tools (kexec_load) or the
        kernel (kexec_file_load, or the kernel's own hotplug update).  The one
        place that rule lives."""
        kernel_like = load_path in ("kexec_file_load", "kernel")
        base: dict[str, Any] = {"cpu_notes": "possible" if kernel_like else "present", "cut_low_1m": kernel_like}
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_settings(cls, settings: UpdaterSettings, load_path: str) -> HeaderOptions:
        """The options ``[updater]`` asks for with ``load_path``: ``cpu-notes``
        and ``low-1m`` set to ``auto`` follow the loader (:meth:`for_loader`)."""
        overrides: dict[str, Any] = {"driver_managed": settings.driver_managed}
        if settings.cpu_notes != "auto":
            overrides["cpu_notes"] = settings.cpu_notes
        if settings.low_1m != "auto":
            overrides["cut_low_1m"] = settings.low_1m == "cut"
        return cls.for_loader(load_path, **overrides)

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu_notes": self.cpu_notes,
            "cut_low_1m": self.cut_low_1m,
            "driver_managed": self.driver_managed,
            "backup_offset": self.backup_offset,
        }


@dataclass(frozen=True, slots=True)
class ProgramHeader:
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int = 0

    def pack(self) -> bytes:
        return ELF64_PHDR.pack(self.p_type, self.p_flags, self.p_offset, self.p_vaddr, self.p_paddr, self.p_filesz, self.p_memsz, self.p_align)

    @property
    def phys(self) -> PhysRange:
        return PhysRange.from_size(self.p_paddr, self.p_memsz)


def header_bytes_for(n_phdrs: int) -> int:
    """Buffer size (bufsz) of a header with ``n_phdrs`` program headers."""
    return _align(EHDR_SIZE + n_phdrs * PHDR_SIZE, ELF_CORE_HEADER_ALIGN)


def segment_size_for(n_phdrs: int, headroom_phdrs: int = 0) -> int:
    """The elfcorehdr segment's memsz for ``n_phdrs`` plus room for
    ``headroom_phdrs`` more (ranges and CPUs that may be hot-added), at least
    kexec-tools' 16 KiB, page aligned (segments must be)."""
    return _align(max(ELFCOREHDR_MIN_MEMSZ, header_bytes_for(n_phdrs + headroom_phdrs)), PAGE_SIZE)


@dataclass(frozen=True)
class ElfCoreHeader:
    phdrs: tuple[ProgramHeader, ...]
    note_cpus: tuple[int, ...] = ()
    missing_note_cpus: tuple[int, ...] = ()
    options: HeaderOptions | None = None
    _bytes: bytes = field(default=b"", repr=False, compare=False)

    # -- building ---------------------------------------------------------------

    @classmethod
    def build(cls, snapshot: SystemSnapshot, options: HeaderOptions | None = None, capacity: int | None = None) -> ElfCoreHeader:
        """The header for ``snapshot``.  Deterministic: the same snapshot and
        options give the same bytes.  Raises :class:`HeaderTooLargeError` when
        it needs more than ``capacity`` bytes (the segment it must fit in)."""
        opts = options or HeaderOptions()
        phdrs: list[ProgramHeader] = []

        notes = {n.cpu: n for n in snapshot.cpu_notes}
        wanted = {
            "present": snapshot.cpus_present,
            "possible": snapshot.cpus_possible,
            "online": snapshot.cpus_online,
        }[opts.cpu_notes]
        note_cpus, missing = [], []
        for cpu in sorted(wanted):
            note = notes.get(cpu)
            if note is None:
                missing.append(cpu)
                continue
            note_cpus.append(cpu)
            phdrs.append(ProgramHeader(PT_NOTE, 0, note.address, 0, note.address, note.size, note.size))

        if snapshot.vmcoreinfo is not None:
            addr, size = snapshot.vmcoreinfo
            phdrs.append(ProgramHeader(PT_NOTE, 0, addr, 0, addr, size, size))

        text = snapshot.kernel_text
        if text is not None and text.size:
            phdrs.append(ProgramHeader(PT_LOAD, PF_RWX, text.paddr, text.vaddr, text.paddr, text.size, text.size))

        ranges = snapshot.dump_ranges(cut_low_1m=opts.cut_low_1m, driver_managed=opts.driver_managed)
        backup = next((r for r in ranges if r.last <= BACKUP_SRC_LIMIT), None)
        for r in ranges:
            offset = r.start
            if opts.backup_offset is not None and r == backup:
                offset = opts.backup_offset
            phdrs.append(ProgramHeader(PT_LOAD, PF_RWX, offset, (snapshot.page_offset + r.start) & 0xFFFFFFFFFFFFFFFF, r.start, r.size, r.size))

        if len(phdrs) >= PN_XNUM:
            raise HeaderTooLargeError(header_bytes_for(len(phdrs)), header_bytes_for(PN_XNUM - 1), f"{len(phdrs)} program headers exceed ELF's e_phnum")
        header = cls(tuple(phdrs), tuple(note_cpus), tuple(missing), opts)
        if capacity is not None and header.size > capacity:
            raise HeaderTooLargeError(
                header.size,
                capacity,
                f"{len(phdrs)} program headers ({len(ranges)} RAM ranges, {len(note_cpus)} CPU notes) outgrow the segment; raise [updater] headroom-ranges/headroom-cpus",
            )
        return header

    # -- bytes ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        if self._bytes:
            return self._bytes
        ehdr = ELF64_EHDR.pack(_IDENT, ET_CORE, EM_X86_64, 1, 0, EHDR_SIZE, 0, 0, EHDR_SIZE, PHDR_SIZE, len(self.phdrs), 0, 0, 0)
        body = ehdr + b"".join(p.pack() for p in self.phdrs)
        data = body + bytes(header_bytes_for(len(self.phdrs)) - len(body))
        object.__setattr__(self, "_bytes", data)
        return data

    @property
    def size(self) -> int:
        return header_bytes_for(len(self.phdrs))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def parse(cls, data: bytes, source: str = "elfcorehdr") -> ElfCoreHeader:
        """Read back a header (ours, or one kexec-tools wrote, or the front of
        /proc/vmcore).  CPU numbers are not in the bytes: notes before the last
        one are numbered 0.. in order (kexec-tools writes them by CPU)."""
        if len(data) < EHDR_SIZE:
            raise SnapshotError(source, f"truncated ELF header ({len(data)} bytes)")
        ident, e_type, e_machine, _v, _e, e_phoff, _s, _f, _eh, e_phentsize, e_phnum, *_ = ELF64_EHDR.unpack_from(data)
        if ident[:6] != _IDENT[:6]:
            raise SnapshotError(source, "not a little-endian ELF64 file")
        if e_type != ET_CORE or e_machine != EM_X86_64:
            raise SnapshotError(source, f"not an x86_64 ELF core header (e_type {e_type}, e_machine {e_machine})")
        if e_phentsize != PHDR_SIZE or e_phoff + e_phnum * PHDR_SIZE > len(data):
            raise SnapshotError(source, f"{e_phnum} program headers at {e_phoff} do not fit in {len(data)} bytes")
        phdrs = tuple(ProgramHeader(*ELF64_PHDR.unpack_from(data, e_phoff + i * PHDR_SIZE)) for i in range(e_phnum))
        n_notes = sum(1 for p in phdrs if p.p_type == PT_NOTE)
        return cls(phdrs, tuple(range(max(n_notes - 1, 0))))

    # -- contents -----------------------------------------------------------------

    @property
    def cpu_note_phdrs(self) -> tuple[ProgramHeader, ...]:
        notes = [p for p in self.phdrs if p.p_type == PT_NOTE]
        return tuple(notes[: len(self.note_cpus)])

    @property
    def vmcoreinfo_phdr(self) -> ProgramHeader | None:
        notes = [p for p in self.phdrs if p.p_type == PT_NOTE]
        return notes[len(self.note_cpus)] if len(notes) > len(self.note_cpus) else None

    @property
    def text_phdr(self) -> ProgramHeader | None:
        # The text mapping is the only PT_LOAD outside the direct map (its
        # vaddr is in the kernel image map, above the direct map's).
        loads = [p for p in self.phdrs if p.p_type == PT_LOAD]
        return loads[0] if loads and loads[0].p_vaddr >= 0xFFFFFFFF80000000 else None

    @property
    def ram_phdrs(self) -> tuple[ProgramHeader, ...]:
        text = self.text_phdr
        return tuple(p for p in self.phdrs if p.p_type == PT_LOAD and p is not text)

    @property
    def ram_ranges(self) -> tuple[PhysRange, ...]:
        return tuple(p.phys for p in self.ram_phdrs)

    @property
    def covered_cpus(self) -> tuple[int, ...]:
        """CPUs the header is meant to cover: those with a note and those whose
        note the snapshot lacked (flagged in :attr:`missing_note_cpus`)."""
        return tuple(sorted(set(self.note_cpus) | set(self.missing_note_cpus)))

    def identity(self) -> tuple[str, tuple[int, ...]]:
        """What a reload would change: the bytes, plus the CPUs meant to be
        covered (which differ without the bytes differing on a kernel that
        has no crash notes)."""
        return self.sha256, self.covered_cpus

    def summary(self) -> dict[str, Any]:
        ranges = self.ram_ranges
        return {
            "phnum": len(self.phdrs),
            "size": self.size,
            "sha256": self.sha256,
            "ranges": len(ranges),
            "ram_bytes": sum(r.size for r in ranges),
            "ram": [str(r) for r in ranges],
            "note_cpus": list(self.note_cpus),
            "missing_note_cpus": list(self.missing_note_cpus),
            "vmcoreinfo": self.vmcoreinfo_phdr is not None,
            "kernel_text": self.text_phdr is not None,
            "options": self.options.to_json() if self.options else None,
        }


@dataclass(frozen=True)
class HeaderDiff:
    """What changed between two headers (or two snapshots' headers)."""

    ranges_added: tuple[PhysRange, ...]
    ranges_removed: tuple[PhysRange, ...]
    cpus_added: tuple[int, ...]
    cpus_removed: tuple[int, ...]
    notes_moved: tuple[int, ...]
    vmcoreinfo_changed: bool
    text_changed: bool
    bytes_equal: bool

    @property
    def empty(self) -> bool:
        return self.bytes_equal and not (self.cpus_added or self.cpus_removed)

    def describe(self) -> str:
        if self.empty:
            return "no change"
        parts = []
        if self.ranges_added:
            parts.append(f"+{len(self.ranges_added)} range(s) {sum(r.size for r in self.ranges_added) / (1 << 30):g} GiB [{' '.join(map(str, self.ranges_added))}]")
        if self.ranges_removed:
            parts.append(f"-{len(self.ranges_removed)} range(s) {sum(r.size for r in self.ranges_removed) / (1 << 30):g} GiB [{' '.join(map(str, self.ranges_removed))}]")
        if self.cpus_added:
            parts.append(f"+cpu {','.join(map(str, self.cpus_added))}")
        if self.cpus_removed:
            parts.append(f"-cpu {','.join(map(str, self.cpus_removed))}")
        if self.notes_moved:
            parts.append(f"note moved cpu {','.join(map(str, self.notes_moved))}")
        if self.vmcoreinfo_changed:
            parts.append("vmcoreinfo changed")
        if self.text_changed:
            parts.append("kernel text changed")
        if not parts:
            parts.append("bytes changed")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ranges_added": [str(r) for r in self.ranges_added],
            "ranges_removed": [str(r) for r in self.ranges_removed],
            "cpus_added": list(self.cpus_added),
            "cpus_removed": list(self.cpus_removed),
            "notes_moved": list(self.notes_moved),
            "vmcoreinfo_changed": self.vmcoreinfo_changed,
            "text_changed": self.text_changed,
            "bytes_equal": self.bytes_equal,
        }


def diff_headers(old: ElfCoreHeader | None, new: ElfCoreHeader) -> HeaderDiff:
    """Compare ``new`` to ``old`` (``None``: nothing known to be loaded)."""
    if old is None:
        return HeaderDiff(new.ram_ranges, (), new.covered_cpus, (), (), new.vmcoreinfo_phdr is not None, new.text_phdr is not None, False)
    old_r, new_r = set(old.ram_ranges), set(new.ram_ranges)
    old_c, new_c = set(old.covered_cpus), set(new.covered_cpus)
    old_notes: Mapping[int, ProgramHeader] = dict(zip(old.note_cpus, old.cpu_note_phdrs))
    new_notes: Mapping[int, ProgramHeader] = dict(zip(new.note_cpus, new.cpu_note_phdrs))
    moved = tuple(sorted(c for c in set(old_notes) & set(new_notes) if old_notes[c] != new_notes[c]))
    return HeaderDiff(
        ranges_added=tuple(sorted(new_r - old_r)),
        ranges_removed=tuple(sorted(old_r - new_r)),
        cpus_added=tuple(sorted(new_c - old_c)),
        cpus_removed=tuple(sorted(old_c - new_c)),
        notes_moved=moved,
        vmcoreinfo_changed=old.vmcoreinfo_phdr != new.vmcoreinfo_phdr,
        text_changed=old.text_phdr != new.text_phdr,
        bytes_equal=old.to_bytes() == new.to_bytes(),
    )


def diff_snapshots(old: SystemSnapshot, new: SystemSnapshot, options: HeaderOptions | None = None) -> HeaderDiff:
    """What the headers built from two snapshots differ in."""
    return diff_headers(ElfCoreHeader.build(old, options), ElfCoreHeader.build(new, options))
