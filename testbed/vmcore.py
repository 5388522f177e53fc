"""What the capture kernel saw: /proc/vmcore's ELF headers and notes, parsed on the host.

The capture side (tools/vm/capture) prints the first bytes of /proc/vmcore (ELF
header, program headers and every PT_NOTE segment) gzip'd and base64'd between
``@@KDC-VMCORE-BEGIN N@@`` and ``@@KDC-VMCORE-END@@`` on the serial console.
This module turns that console text into a :class:`VmcoreHeader`.

The capture kernel rewrites the header it was handed (``fs/proc/vmcore.c``):
all PT_NOTEs of the elfcorehdr are merged into one, with the notes' real sizes
(walked until an empty note), and offsets are recomputed.  So the number of
CPUs is the number of NT_PRSTATUS notes *inside* that segment, not the number
of PT_NOTE headers.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
ELF_MAGIC = b"\x7fELF"


class VmcoreParseError(ValueError):
    """The console held no capture, or a capture that does not parse."""


@dataclass(frozen=True, slots=True)
class LoadSegment:
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int

    @property
    def end(self) -> int:
        """One past the last physical address."""
        return self.paddr + self.memsz


@dataclass(frozen=True, slots=True)
class NoteSegment:
    offset: int
    filesz: int


@dataclass(frozen=True, slots=True)
class ElfNote:
    name: str
    type: int
    descsz: int


@dataclass(frozen=True, slots=True)
class VmcoreHeader:
    loads: tuple[LoadSegment, ...]
    note_segments: tuple[NoteSegment, ...]
    notes: tuple[ElfNote, ...]
    raw: bytes

    @property
    def cpu_notes(self) -> int:
        """NT_PRSTATUS notes: one per CPU whose registers were saved at the crash."""
        return sum(1 for n in self.notes if n.type == NT_PRSTATUS and n.name == "CORE")

    @property
    def has_vmcoreinfo(self) -> bool:
        return any(n.name == "VMCOREINFO" for n in self.notes)

    @property
    def note_bytes(self) -> int:
        return sum(s.filesz for s in self.note_segments)

    def ranges(self) -> list[tuple[int, int]]:
        """Merged physical ranges [start, end) covered by PT_LOADs."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted((s.paddr, s.end) for s in self.loads if s.memsz):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def covers(self, start: int, end: int) -> bool:
        """Is all of [start, end) inside the PT_LOADs?"""
        return any(s <= start and end <= e for s, e in self.ranges())

    def overlaps(self, start: int, end: int) -> bool:
        """Is any byte of [start, end) inside a PT_LOAD?"""
        return any(s < end and start < e for s, e in self.ranges())

    def describe(self) -> str:
        loads = ", ".join(f"{s.paddr:#x}-{s.end - 1:#x}" for s in self.loads)
        return f"PT_LOAD [{loads}]; {len(self.note_segments)} PT_NOTE ({self.note_bytes:#x} bytes), {self.cpu_notes} CPU notes"


def parse_vmcore_header(data: bytes) -> VmcoreHeader:
    """Parse an ELF64 little-endian core header followed by its note segments."""
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise VmcoreParseError(f"not an ELF header ({len(data)} bytes, starts {data[:4]!r})")
    if data[4] != 2 or data[5] != 1:
        raise VmcoreParseError(f"not ELF64 little-endian (class {data[4]}, data {data[5]})")
    e_type, = struct.unpack_from("<H", data, 16)
    if e_type != 4:
        raise VmcoreParseError(f"not an ET_CORE file (e_type {e_type})")
    e_phoff, = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_phentsize != 56 or e_phoff + e_phnum * e_phentsize > len(data):
        raise VmcoreParseError(f"program headers out of range (phoff {e_phoff}, phnum {e_phnum}, {len(data)} bytes)")
    loads: list[LoadSegment] = []
    note_segs: list[NoteSegment] = []
    notes: list[ElfNote] = []
    for i in range(e_phnum):
        p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * 56)
        if p_type == PT_LOAD:
            loads.append(LoadSegment(paddr=paddr, vaddr=vaddr, offset=off, filesz=filesz, memsz=memsz))
        elif p_type == PT_NOTE:
            if off + filesz > len(data):
                raise VmcoreParseError(f"PT_NOTE at {off:#x}+{filesz:#x} is past the captured {len(data):#x} bytes")
            note_segs.append(NoteSegment(offset=off, filesz=filesz))
            notes.extend(_parse_notes(data[off : off + filesz]))
    return VmcoreHeader(tuple(loads), tuple(note_segs), tuple(notes), data)


def _parse_notes(seg: bytes) -> list[ElfNote]:
    notes: list[ElfNote] = []
    pos = 0
    while pos + 12 <= len(seg):
        namesz, descsz, ntype = struct.unpack_from("<III", seg, pos)
        if namesz == 0 and descsz == 0:
            break
        pos += 12
        name = seg[pos : pos + namesz].rstrip(b"\0").decode("ascii", "replace")
        pos += (namesz + 3) & ~3
        pos += (descsz + 3) & ~3
        if pos > len(seg):
            raise VmcoreParseError(f"note {name!r} runs past its segment")
        notes.append(ElfNote(name, ntype, descsz))
    return notes


_BEGIN = re.compile(rb"@@KDC-VMCORE-BEGIN (\d+)@@")
_B64_LINE = re.compile(rb"^[A-Za-z0-9+/=]+$")
_PRINTK = re.compile(rb"\[ *\d+\.\d{6}\] [^\r\n]*(?:\r?\n)?")


def vmcore_bytes_from_console(console: bytes) -> bytes:
    """The raw header bytes the capture kernel printed (the last capture in the log)."""
    starts = list(_BEGIN.finditer(console))
    if not starts:
        raise VmcoreParseError("no @@KDC-VMCORE-BEGIN marker on the console: the capture kernel did not run")
    m = starts[-1]
    size = int(m.group(1))
    end = console.find(b"@@KDC-VMCORE-END@@", m.end())
    if end < 0:
        raise VmcoreParseError("capture output is truncated (no @@KDC-VMCORE-END@@)")
    # A late printk of the capture kernel (e.g. "[    2.29] tsc: Refined TSC
    # clocksource calibration") can land in the middle of a base64 line on
    # the shared serial console: cut the kernel's records out, not the line.
    body = _PRINTK.sub(b"", console[m.end() : end])
    lines = [ln.strip() for ln in body.splitlines()]
    b64 = b"".join(ln for ln in lines if ln and _B64_LINE.match(ln))
    try:
        raw = gzip.decompress(base64.b64decode(b64, validate=True))
    except (binascii.Error, OSError, EOFError) as e:
        raise VmcoreParseError(f"capture output does not decode: {e}") from e
    if len(raw) != size:
        raise VmcoreParseError(f"capture announced {size} bytes, decoded {len(raw)}")
    return raw


def parse_capture_console(console: bytes) -> VmcoreHeader:
    return parse_vmcore_header(vmcore_bytes_from_console(console))
