"""Pure parsers for the kernel files a snapshot is read from.

Each takes the file's text (or bytes) and the path it came from, so that a
malformed input raises a :class:`SnapshotError` naming ``path:line``.  They do
no I/O: the tests feed them files captured from real hosts
(``tests/fixtures/host``, ``tests/fixtures/vm``).

Formats, as the kernel prints them:

- ``/proc/iomem``: ``%0*llx-%0*llx : %s`` per resource, two spaces of indent
  per nesting level (``kernel/resource.c``, ``r_show``).  Unprivileged readers
  see every address as 0.
- CPU lists (``present``, ``online``, ``possible``): ``%*pbl``, e.g. ``0-3,8``;
  ``offline`` may be an empty line.
- ``cpuN/crash_notes``: ``%llx`` (physical address, no ``0x``);
  ``crash_notes_size``: ``%zu`` decimal (``drivers/base/cpu.c``).
- ``/sys/kernel/vmcoreinfo``: ``%pa %x``: ``0x`` + 16 hex digits, then the
  size in hex *without* ``0x`` (``kernel/ksysfs.c``); kexec-tools reads both
  with ``%Lx``.
- ``memory/block_size_bytes``: ``%lx`` (hex, no ``0x``).
- ``/proc/kcore``: an ELF64 core file; only its ELF header and program
  headers are read, as many as ``e_phnum`` says.

CPU lists and the block size are parsed by :mod:`ground.sysfs` (the probes
read them too); the wrappers here only name the file in a
:class:`SnapshotError`.  Every range is converted to a half-open
:class:`~ground.ranges.PhysRange` here, at the boundary.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ground import sysfs
from ground.ranges import PhysRange

from ._errors import SnapshotError

_IOMEM_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


@dataclass(frozen=True, slots=True)
class IomemEntry:
    """One /proc/iomem line: its range, name, nesting depth and line number."""

    range: PhysRange
    name: str
    depth: int
    line: int

    @property
    def is_system_ram(self) -> bool:
        # "System RAM" and the driver-managed kinds added by
        # add_memory_driver_managed() (Linux 5.8, 7b7b27214bba
        # "mm/memory_hotplug: introduce add_memory_driver_managed()"):
        # "System RAM (kmem)" (dax/kmem), "System RAM (virtio_mem)".
        return self.name == "System RAM" or (self.name.startswith("System RAM (") and self.name.endswith(")"))

    @property
    def driver_managed(self) -> bool:
        return self.is_system_ram and self.name != "System RAM"


def parse_iomem(text: str, path: str = "/proc/iomem") -> tuple[IomemEntry, ...]:
    entries: list[IomemEntry] = []
    depth_stack: list[IomemEntry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        m = _IOMEM_LINE.match(raw)
        if m is None:
            raise SnapshotError(path, f"not a resource line ('START-END : NAME'): {raw[:60]!r}", lineno)
        indent, s, e, name = m.groups()
        if len(indent) % 2:
            raise SnapshotError(path, f"odd indentation ({len(indent)} spaces)", lineno)
        depth = len(indent) // 2
        start, last = int(s, 16), int(e, 16)
        if last < start:
            raise SnapshotError(path, f"range ends before it starts: {s}-{e}", lineno)
        if depth > len(depth_stack):
            raise SnapshotError(path, f"nested {depth} levels deep under a {len(depth_stack)}-level parent", lineno)
        del depth_stack[depth:]
        entry = IomemEntry(PhysRange.from_inclusive(start, last), name.strip(), depth, lineno)
        # A child lies inside its parent, except in the all-zero view of an
        # unprivileged reader (every address 0): the caller reports that.
        if depth_stack and (start, last) != (0, 0):
            parent = depth_stack[-1]
            if not parent.range.contains(entry.range):
                raise SnapshotError(path, f"{s}-{e} lies outside its parent {parent.range.start:x}-{parent.range.last:x}", lineno)
        depth_stack.append(entry)
        entries.append(entry)
    if not entries:
        raise SnapshotError(path, "empty: no resource lines")
    return tuple(entries)


def iomem_hides_addresses(entries: tuple[IomemEntry, ...]) -> bool:
    """True when every address reads 0 (``00000000-00000000``): the file was
    read without CAP_SYS_ADMIN."""
    return all(e.range.start == 0 and e.range.last == 0 for e in entries)


def parse_cpu_list(text: str, path: str) -> tuple[int, ...]:
    try:
        return sysfs.parse_cpu_list(text, path)
    except sysfs.SysfsFormatError as exc:
        raise SnapshotError(path, exc.message, 1) from None


def parse_block_size(text: str, path: str) -> int:
    try:
        return sysfs.parse_block_size_bytes(_one_line(text, path), path)
    except sysfs.SysfsFormatError as exc:
        raise SnapshotError(path, exc.message, 1) from None


def _one_line(text: str, path: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise SnapshotError(path, f"expected one line, got {len(lines)}")
    return lines[0].strip()


def parse_hex(text: str, path: str) -> int:
    value = _one_line(text, path)
    try:
        return int(value, 16)
    except ValueError:
        raise SnapshotError(path, f"not a hex number: {value[:40]!r}", 1) from None


def parse_decimal(text: str, path: str) -> int:
    value = _one_line(text, path)
    if not value.isdigit():
        raise SnapshotError(path, f"not a decimal number: {value[:40]!r}", 1)
    return int(value)


def parse_vmcoreinfo(text: str, path: str = "/sys/kernel/vmcoreinfo") -> tuple[int, int]:
    """``(address, size)``; both hex (the size without ``0x``: ``1024`` is 4132 bytes)."""
    fields = _one_line(text, path).split()
    if len(fields) != 2:
        raise SnapshotError(path, f"expected 'ADDR SIZE', got {len(fields)} field(s)", 1)
    try:
        addr, size = int(fields[0], 16), int(fields[1], 16)
    except ValueError:
        raise SnapshotError(path, f"not hex 'ADDR SIZE': {' '.join(fields)[:60]!r}", 1) from None
    if size == 0:
        raise SnapshotError(path, "vmcoreinfo size is 0", 1)
    return addr, size


def parse_meminfo(text: str, path: str = "/proc/meminfo") -> dict[str, int]:
    """Values in kB (or plain counts for the HugePages_* lines)."""
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        m = re.fullmatch(r"([\w()]+):\s+(\d+)(?: kB)?\s*", raw)
        if m is None:
            raise SnapshotError(path, f"not 'Key: value [kB]': {raw[:60]!r}", lineno)
        out[m.group(1)] = int(m.group(2))
    return out


def parse_kallsyms(text: str, wanted: frozenset[str], path: str = "/proc/kallsyms") -> dict[str, int]:
    """Addresses of the ``wanted`` symbols.  Symbols hidden by kptr_restrict
    (address 0) are left out."""
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if len(fields) < 3:
            if raw.strip():
                raise SnapshotError(path, f"not 'ADDR TYPE NAME': {raw[:60]!r}", lineno)
            continue
        if fields[2] in wanted and fields[2] not in out:
            try:
                addr = int(fields[0], 16)
            except ValueError:
                raise SnapshotError(path, f"not a hex address: {fields[0][:20]!r}", lineno) from None
            if addr:
                out[fields[2]] = addr
    return out


# -- ELF64, little-endian: /proc/kcore and the elfcorehdr ----------------------

ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
ELF64_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
ELF64_IDENT_PREFIX = b"\x7fELF\x02\x01"  # ELFMAG, ELFCLASS64, ELFDATA2LSB
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
# gABI extended numbering: e_phnum == PN_XNUM means the count is in section
# header 0's sh_info (binfmt_elf core dumps write it since Linux 2.6.34,
# 8d9032bbe467 "elf coredump: add extended numbering support").
PN_XNUM = 0xFFFF
_SH_INFO = 7  # index of sh_info in ELF64_SHDR
# More program headers than any kernel's /proc/kcore has (one PT_LOAD per
# RAM range and per vmemmap range, plus a few): refuse a corrupt count
# before reading gigabytes for it.
MAX_KCORE_PHDRS = 1 << 20


@dataclass(frozen=True, slots=True)
class KcoreLoad:
    vaddr: int
    paddr: int
    memsz: int


def read_kcore_loads(read: Callable[[int, int], bytes], path: str = "/proc/kcore") -> tuple[KcoreLoad, ...]:
    """The PT_LOAD program headers of /proc/kcore, given ``read(offset, size)``
    (the bytes there, fewer at the end of the file).

    Reads the ELF header, then exactly ``e_phnum`` program headers (or
    section header 0's ``sh_info`` of them when ``e_phnum`` is PN_XNUM).
    kexec-tools reads a fixed KCORE_ELF_HEADERS_SIZE (64 KiB) instead, which
    holds about 1,150 program headers: fewer than a host with thousands of
    memory ranges (virtio-mem after partial unplug, hundreds of DIMMs) has."""
    ehdr = read(0, ELF64_EHDR.size)
    if len(ehdr) < ELF64_EHDR.size:
        raise SnapshotError(path, f"truncated ELF header ({len(ehdr)} bytes)")
    ident, e_type, _machine, _v, _entry, e_phoff, e_shoff, _flags, _ehsize, e_phentsize, e_phnum, e_shentsize, *_ = ELF64_EHDR.unpack(ehdr)
    if not ident.startswith(ELF64_IDENT_PREFIX):
        raise SnapshotError(path, "not a little-endian ELF64 file")
    if e_type != ET_CORE:
        raise SnapshotError(path, f"not an ELF core file (e_type {e_type})")
    if e_phentsize != ELF64_PHDR.size:
        raise SnapshotError(path, f"e_phentsize {e_phentsize}, expected {ELF64_PHDR.size}")
    count = e_phnum
    if e_phnum == PN_XNUM:
        if e_shoff == 0 or e_shentsize != ELF64_SHDR.size:
            raise SnapshotError(path, f"e_phnum is PN_XNUM but there is no section header 0 (e_shoff {e_shoff}, e_shentsize {e_shentsize})")
        shdr = read(e_shoff, ELF64_SHDR.size)
        if len(shdr) < ELF64_SHDR.size:
            raise SnapshotError(path, f"section header 0 at {e_shoff} is truncated ({len(shdr)} bytes)")
        count = ELF64_SHDR.unpack(shdr)[_SH_INFO]
    if count > MAX_KCORE_PHDRS:
        raise SnapshotError(path, f"{count} program headers: more than any kernel writes ({MAX_KCORE_PHDRS})")
    size = count * ELF64_PHDR.size
    data = read(e_phoff, size)
    if len(data) < size:
        raise SnapshotError(path, f"program headers end at {e_phoff + size}, only {e_phoff + len(data)} bytes read")
    loads = []
    for p_type, _pf, _off, vaddr, paddr, _filesz, memsz, _align in ELF64_PHDR.iter_unpack(data):
        if p_type == PT_LOAD:
            loads.append(KcoreLoad(vaddr, paddr, memsz))
    if not loads:
        raise SnapshotError(path, "no PT_LOAD program headers")
    return tuple(loads)


def parse_kcore_loads(data: bytes, path: str = "/proc/kcore") -> tuple[KcoreLoad, ...]:
    """:func:`read_kcore_loads` over the first bytes of the file."""
    return read_kcore_loads(lambda offset, size: data[offset : offset + size], path)


PUD_SIZE = 1 << 30
KERN_VADDR_ALIGN = 1 << 20  # kexec-tools X86_64_KERN_VADDR_ALIGN
START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86_64 __START_KERNEL_map
KERNEL_TEXT_SIZE = 512 << 20  # kexec-tools X86_64_KERNEL_TEXT_SIZE
PAGE_SIZE = 4096


def kcore_page_offset(loads: tuple[KcoreLoad, ...]) -> int:
    """The lowest PT_LOAD, rounded down to 1 GiB: the direct map's base when
    KASLR randomizes it (kexec-tools ``get_kernel_vaddr_and_size``)."""
    return min(load.vaddr & ~(PUD_SIZE - 1) for load in loads)


def kcore_text_mapping(
    loads: tuple[KcoreLoad, ...], stext: int | None, code_paddr: int | None = None
) -> tuple[int, int] | None:
    """``(vaddr, size)`` of the kernel text PT_LOAD as kexec-tools computes it:
    the kcore PT_LOAD containing ``_stext`` (or, without it, the one inside the
    kernel text map), start rounded down to 1 MiB, size to a page.

    Without ``_stext`` (no readable /proc/kallsyms), kexec-tools takes the
    PT_LOAD that lies within 512 MiB of ``__START_KERNEL_map``.  With KASLR
    (CONFIG_RANDOMIZE_BASE, which raises KERNEL_IMAGE_SIZE to 1 GiB) the text
    can sit beyond that window, so first look for the PT_LOAD in the kernel
    text map whose physical address is the "Kernel code" start of /proc/iomem:
    kcore fills in p_paddr for the text mapping (fs/proc/kcore.c, since Linux
    4.11, 464920104bf7 "/proc/kcore: update physical address for kcore ram
    and text"; zero before), and that identifies it without any symbol."""

    def shape(load: KcoreLoad) -> tuple[int, int]:
        start = load.vaddr & ~(KERN_VADDR_ALIGN - 1)
        size = load.vaddr + load.memsz - start
        return start, (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

    if stext is not None:
        for load in loads:
            if load.vaddr <= stext < load.vaddr + load.memsz:
                return shape(load)
    if code_paddr is not None:
        for load in loads:
            if load.vaddr >= START_KERNEL_MAP and load.paddr <= code_paddr < load.paddr + load.memsz:
                return shape(load)
    for load in loads:
        if load.vaddr >= START_KERNEL_MAP and load.vaddr + load.memsz <= START_KERNEL_MAP + KERNEL_TEXT_SIZE:
            return shape(load)
    return None
