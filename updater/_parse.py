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
- ``/proc/kcore``: an ELF64 core file; only its program headers are read.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._errors import SnapshotError

_IOMEM_LINE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


@dataclass(frozen=True, slots=True)
class IomemEntry:
    """One /proc/iomem line.  ``end`` is inclusive, as the file prints it."""

    start: int
    end: int
    name: str
    depth: int
    line: int

    @property
    def is_system_ram(self) -> bool:
        # "System RAM" and the driver-managed kinds added by
        # add_memory_driver_managed() (Linux 5.8, 7b7b27214bba):
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
        start, end = int(s, 16), int(e, 16)
        if end < start:
            raise SnapshotError(path, f"range ends before it starts: {s}-{e}", lineno)
        if depth > len(depth_stack):
            raise SnapshotError(path, f"nested {depth} levels deep under a {len(depth_stack)}-level parent", lineno)
        del depth_stack[depth:]
        entry = IomemEntry(start, end, name.strip(), depth, lineno)
        # A child lies inside its parent, except in the all-zero view of an
        # unprivileged reader (every address 0): the caller reports that.
        if depth_stack and (start, end) != (0, 0):
            parent = depth_stack[-1]
            if start < parent.start or end > parent.end:
                raise SnapshotError(path, f"{s}-{e} lies outside its parent {parent.start:x}-{parent.end:x}", lineno)
        depth_stack.append(entry)
        entries.append(entry)
    if not entries:
        raise SnapshotError(path, "empty: no resource lines")
    return tuple(entries)


def iomem_hides_addresses(entries: tuple[IomemEntry, ...]) -> bool:
    """True when every address reads 0: the file was read without CAP_SYS_ADMIN."""
    return all(e.start == 0 and e.end == 0 for e in entries)


def parse_cpu_list(text: str, path: str) -> tuple[int, ...]:
    line = text.strip()
    if not line:
        return ()
    cpus: set[int] = set()
    for part in line.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if m is None:
            raise SnapshotError(path, f"not a CPU list (like 0-3,8): {line[:60]!r}", 1)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SnapshotError(path, f"descending CPU range {part!r}", 1)
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


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


# -- /proc/kcore ---------------------------------------------------------------

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD = 1
PT_NOTE = 4


@dataclass(frozen=True, slots=True)
class KcoreLoad:
    vaddr: int
    paddr: int
    memsz: int


def parse_kcore_loads(data: bytes, path: str = "/proc/kcore") -> tuple[KcoreLoad, ...]:
    """The PT_LOAD program headers of /proc/kcore's first bytes (kexec-tools
    reads the first KCORE_ELF_HEADERS_SIZE = 64 KiB the same way)."""
    if len(data) < _EHDR.size:
        raise SnapshotError(path, f"truncated ELF header ({len(data)} bytes)")
    ident, e_type, e_machine, _v, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum, *_ = _EHDR.unpack_from(data)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise SnapshotError(path, "not a little-endian ELF64 file")
    if e_type != 4:
        raise SnapshotError(path, f"not an ELF core file (e_type {e_type})")
    if e_phentsize != _PHDR.size:
        raise SnapshotError(path, f"e_phentsize {e_phentsize}, expected {_PHDR.size}")
    end = e_phoff + e_phnum * e_phentsize
    if end > len(data):
        raise SnapshotError(path, f"program headers end at {end}, only {len(data)} bytes read")
    loads = []
    for i in range(e_phnum):
        p_type, _pf, _off, vaddr, paddr, _filesz, memsz, _align = _PHDR.unpack_from(data, e_phoff + i * e_phentsize)
        if p_type == PT_LOAD:
            loads.append(KcoreLoad(vaddr, paddr, memsz))
    if not loads:
        raise SnapshotError(path, "no PT_LOAD program headers")
    return tuple(loads)


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
    kcore fills in p_paddr for the text mapping (fs/proc/kcore.c, since 4.19's
    kcore rework), and that identifies it without any symbol."""

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
