"""The kexec-tools purgatory: find it, check it, lay it out, relocate it, set its symbols.

kexec-tools (``purgatory/``) links a small x86_64 relocatable object (ET_REL)
and embeds it as a byte array in the ``kexec`` binary.  At panic the crashing
kernel jumps to it (``purgatory_start``); it re-hashes every segment listed in
``sha256_regions`` and spins forever if the result differs from
``sha256_digest``, copies the first 640 KiB to ``backup_start``, then loads
``entry64_regs`` and jumps to the capture kernel's 64-bit entry.

What this module does mirrors kexec-tools' ``elf_rel_load`` (kexec/kexec-elf-rel.c)
and ``machine_apply_elf_rel`` (kexec/arch/x86_64/kexec-elf-rel-x86_64.c):

* SHF_ALLOC sections with contents are packed in section header order, each
  at its own alignment; SHF_ALLOC NOBITS sections (.bss, the stack) follow
  after padding to their largest alignment.  The segment's bufsz covers the
  sections with contents, its memsz the whole thing.
* RELA sections whose target is SHF_ALLOC are applied once the load address
  is known.  Unlike kexec-tools, a relocation against an undefined symbol, a
  PC-relative result that does not fit in 32 bits, or an unknown type is an
  error here rather than silently skipped or truncated.

The object is parsed with pyelftools; the raw scan that finds it in the
container only reads ELF identification and section header bounds.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection as _ElfRelocationSection
from elftools.elf.sections import SymbolTableSection

from ._errors import PurgatoryError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_REL = 1
EM_X86_64 = 62
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
_MAX_SECTIONS = 4096

SHA256_REGIONS = 16  # purgatory's struct sha256_region sha256_regions[16]: KEXEC_SEGMENT_MAX
SHA256_REGION_SIZE = 16  # {unsigned long start, len}
ENTRY64_REGS_SIZE = 17 * 8  # rax..r15 then rip

# Symbols a loader must find, with the size it writes (None: only the address
# is used).  kexec-tools dies when one of these is missing; so do we, but
# before anything is loaded and naming all of them at once.
REQUIRED_SYMBOLS: Mapping[str, int | None] = MappingProxyType(
    {
        "purgatory_start": None,
        "stack_end": None,
        "entry64_regs": ENTRY64_REGS_SIZE,
        "sha256_digest": 32,
        "sha256_regions": SHA256_REGIONS * SHA256_REGION_SIZE,
        "cmdline_end": 8,
        "backup_start": 8,
        "backup_src_start": 8,
        "backup_src_size": 8,
        "panic_kernel": 1,
    }
)
# Symbols kexec-tools' arch_update_purgatory also writes (console and VGA
# options).  Checked for size when present and set to kexec-tools' defaults.
OPTIONAL_SYMBOLS: Mapping[str, int] = MappingProxyType(
    {
        "reset_vga": 1,
        "serial_base": 2,
        "serial_baud": 4,
        "console_vga": 1,
        "console_serial": 1,
        "skip_checks": 4,
    }
)

R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
_RELOC_NAMES = {
    0: "R_X86_64_NONE",
    1: "R_X86_64_64",
    2: "R_X86_64_PC32",
    3: "R_X86_64_GOT32",
    4: "R_X86_64_PLT32",
    5: "R_X86_64_COPY",
    6: "R_X86_64_GLOB_DAT",
    7: "R_X86_64_JUMP_SLOT",
    8: "R_X86_64_RELATIVE",
    9: "R_X86_64_GOTPCREL",
    10: "R_X86_64_32",
    11: "R_X86_64_32S",
    12: "R_X86_64_16",
    13: "R_X86_64_PC16",
    14: "R_X86_64_8",
    15: "R_X86_64_PC8",
    24: "R_X86_64_PC64",
    41: "R_X86_64_GOTPCRELX",
    42: "R_X86_64_REX_GOTPCRELX",
}


def relocation_name(r_type: int) -> str:
    return _RELOC_NAMES.get(r_type, f"R_X86_64_{r_type}")


@dataclass(frozen=True)
class ElfSection:
    index: int
    name: str
    type: str  # pyelftools' name: SHT_PROGBITS, SHT_NOBITS, SHT_RELA, ...
    flags: int
    addralign: int
    size: int
    link: int
    info: int
    data: bytes  # empty for NOBITS

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def nobits(self) -> bool:
        return self.type == "SHT_NOBITS"


@dataclass(frozen=True)
class ElfSymbol:
    name: str
    value: int
    size: int
    shndx: int
    bind: str
    type: str


@dataclass(frozen=True)
class Relocation:
    offset: int
    type: int
    symbol: int
    addend: int


@dataclass(frozen=True)
class RelocationSection:
    name: str
    target: int  # section index the relocations patch
    symtab: int
    entries: tuple[Relocation, ...]


@dataclass(frozen=True)
class PurgatoryBlob:
    """A validated x86_64 ET_REL purgatory object, as found in its container file."""

    source: str  # e.g. "/sbin/kexec@0x1d8e0"
    offset: int  # where it starts in the container
    data: bytes
    entry: int  # e_entry (section relative in an ET_REL)
    sections: tuple[ElfSection, ...]
    symbols: tuple[ElfSymbol, ...]  # the whole symbol table, in order
    relocations: tuple[RelocationSection, ...]
    _globals: Mapping[str, ElfSymbol] = field(default_factory=dict, repr=False, compare=False)

    def global_symbol(self, name: str) -> ElfSymbol | None:
        """The STB_GLOBAL symbol called ``name`` (what kexec-tools' elf_rel_find_symbol finds)."""
        return self._globals.get(name)

    @property
    def sha256_regions_count(self) -> int:
        sym = self._globals["sha256_regions"]
        return sym.size // SHA256_REGION_SIZE


def find_elf_rel_candidates(container: bytes) -> Iterator[int]:
    """Offsets of every ELF header in ``container`` that claims to be a little-endian x86_64 ET_REL."""
    pos = container.find(ELF_MAGIC)
    while pos >= 0:
        if len(container) - pos >= 64:
            e_type, e_machine = struct.unpack_from("<HH", container, pos + 16)
            if (
                container[pos + 4] == ELFCLASS64
                and container[pos + 5] == ELFDATA2LSB
                and e_type == ET_REL
                and e_machine == EM_X86_64
            ):
                yield pos
        pos = container.find(ELF_MAGIC, pos + 1)


def _extent(container: bytes, pos: int) -> int:
    """Bytes the ELF object at ``pos`` spans, after checking its section headers fit in ``container``."""
    avail = len(container) - pos
    e_shoff = int(struct.unpack_from("<Q", container, pos + 0x28)[0])
    e_ehsize, _phentsize, _phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(
        "<HHHHHH", container, pos + 0x34
    )
    if e_ehsize != 64 or e_shentsize != 64:
        raise ValueError(f"header sizes {e_ehsize}/{e_shentsize} are not ELF64's 64/64")
    if not 0 < e_shnum <= _MAX_SECTIONS or e_shstrndx >= e_shnum:
        raise ValueError(f"{e_shnum} sections with the name table at index {e_shstrndx}")
    table_end = e_shoff + e_shnum * e_shentsize
    if e_shoff < 64 or table_end > avail:
        raise ValueError(f"section header table ends at 0x{table_end:x}, past the {avail} bytes available")
    extent: int = int(table_end)
    for i in range(e_shnum):
        sh = pos + e_shoff + i * e_shentsize
        sh_type, = struct.unpack_from("<I", container, sh + 4)
        sh_offset, sh_size = struct.unpack_from("<QQ", container, sh + 0x18)
        if sh_type in (0, 8):  # SHT_NULL, SHT_NOBITS: no bytes in the file
            continue
        if sh_offset + sh_size > avail:
            raise ValueError(f"section {i} ends at 0x{sh_offset + sh_size:x}, past the {avail} bytes available")
        extent = max(extent, int(sh_offset + sh_size))
    return extent


def _parse(data: bytes, source: str, offset: int) -> PurgatoryBlob:
    try:
        elf = ELFFile(io.BytesIO(data))
        sections: list[ElfSection] = []
        for i, s in enumerate(elf.iter_sections()):
            nobits = s["sh_type"] == "SHT_NOBITS"
            sections.append(
                ElfSection(
                    index=i,
                    name=s.name,
                    type=str(s["sh_type"]),
                    flags=int(s["sh_flags"]),
                    addralign=max(1, int(s["sh_addralign"])),
                    size=int(s["sh_size"]),
                    link=int(s["sh_link"]),
                    info=int(s["sh_info"]),
                    data=b"" if nobits or s["sh_type"] == "SHT_NULL" else bytes(s.data()),
                )
            )
        symtabs = [s for s in elf.iter_sections() if isinstance(s, SymbolTableSection) and s["sh_type"] == "SHT_SYMTAB"]
        if len(symtabs) != 1:
            raise PurgatoryError(source, f"{len(symtabs)} symbol tables (need exactly one: the purgatory's symbols were stripped?)")
        symbols = tuple(
            ElfSymbol(
                name=sym.name,
                value=int(sym["st_value"]),
                size=int(sym["st_size"]),
                shndx=_shndx(sym["st_shndx"]),
                bind=str(sym["st_info"]["bind"]),
                type=str(sym["st_info"]["type"]),
            )
            for sym in symtabs[0].iter_symbols()
        )
        relocations: list[RelocationSection] = []
        for s in elf.iter_sections():
            if s["sh_type"] == "SHT_REL":
                raise PurgatoryError(source, f"section {s.name} holds REL relocations; an x86_64 purgatory uses RELA")
            if s["sh_type"] != "SHT_RELA" or not isinstance(s, _ElfRelocationSection):
                continue
            relocations.append(
                RelocationSection(
                    name=s.name,
                    target=int(s["sh_info"]),
                    symtab=int(s["sh_link"]),
                    entries=tuple(
                        Relocation(
                            offset=int(r["r_offset"]),
                            type=int(r["r_info_type"]),
                            symbol=int(r["r_info_sym"]),
                            addend=int(r["r_addend"]),
                        )
                        for r in s.iter_relocations()
                    ),
                )
            )
        entry = int(elf.header["e_entry"])
    except (ELFError, struct.error, KeyError, IndexError, UnicodeDecodeError, ValueError) as e:
        raise PurgatoryError(source, f"malformed ELF object: {e}") from e
    globals_ = {s.name: s for s in symbols if s.bind == "STB_GLOBAL" and s.name}
    return PurgatoryBlob(
        source=source,
        offset=offset,
        data=data,
        entry=entry,
        sections=tuple(sections),
        symbols=symbols,
        relocations=tuple(relocations),
        _globals=MappingProxyType(globals_),
    )


def _shndx(value: object) -> int:
    if isinstance(value, int):
        return value
    return {"SHN_UNDEF": SHN_UNDEF, "SHN_ABS": SHN_ABS, "SHN_COMMON": SHN_COMMON}.get(str(value), 0xFFFF)


def validate_purgatory(blob: PurgatoryBlob) -> None:
    """Check the symbols a loader sets exist with the sizes it writes; raise one line naming every problem."""
    missing: list[str] = []
    wrong: list[str] = []
    for name, size in REQUIRED_SYMBOLS.items():
        sym = blob.global_symbol(name)
        if sym is None or sym.shndx in (SHN_UNDEF, SHN_COMMON) or sym.shndx >= len(blob.sections):
            missing.append(name)
            continue
        if size is not None:
            if sym.size != size:
                wrong.append(f"{name} is {sym.size} bytes, not {size}")
            elif blob.sections[sym.shndx].nobits:
                wrong.append(f"{name} is in {blob.sections[sym.shndx].name} (NOBITS), cannot be set")
    for name, size in OPTIONAL_SYMBOLS.items():
        sym = blob.global_symbol(name)
        if sym is not None and sym.size != size:
            wrong.append(f"{name} is {sym.size} bytes, not {size}")
    start = blob.global_symbol("purgatory_start")
    if start is not None and "purgatory_start" not in missing:
        if not blob.sections[start.shndx].flags & SHF_EXECINSTR:
            wrong.append(f"purgatory_start is in non-executable section {blob.sections[start.shndx].name}")
    problems = []
    if missing:
        problems.append("missing symbols: " + ", ".join(missing))
    problems.extend(wrong)
    if problems:
        raise PurgatoryError(blob.source, "; ".join(problems))


def parse_purgatory(data: bytes, source: str = "<purgatory>", offset: int = 0) -> PurgatoryBlob:
    """Parse and validate a bare purgatory object (``data`` is exactly the ET_REL file)."""
    if len(data) < 64 or data[:4] != ELF_MAGIC:
        raise PurgatoryError(source, "not an ELF object")
    if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise PurgatoryError(source, "not a little-endian ELFCLASS64 object")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_type != ET_REL:
        raise PurgatoryError(source, f"ELF type {e_type} is not ET_REL (a relocatable object)")
    if e_machine != EM_X86_64:
        raise PurgatoryError(source, f"ELF machine {e_machine} is not EM_X86_64")
    try:
        extent = _extent(data, 0)
    except ValueError as e:
        raise PurgatoryError(source, f"malformed section headers: {e}") from e
    blob = _parse(data[:extent], source, offset)
    validate_purgatory(blob)
    return blob


def extract_purgatory(container: bytes, source: str) -> PurgatoryBlob:
    """Find the purgatory embedded in a kexec binary (or a bare purgatory object).

    Every x86_64 ET_REL header in the file is a candidate; the first whose
    section headers fit and whose symbols pass :func:`validate_purgatory`
    wins.  The offset is never assumed: distributions build kexec-tools
    differently.
    """
    first_problem: PurgatoryError | None = None
    for pos in find_elf_rel_candidates(container):
        where = f"{source}@0x{pos:x}"
        try:
            extent = _extent(container, pos)
            return parse_purgatory(container[pos : pos + extent], where, pos)
        except ValueError as e:
            problem = PurgatoryError(where, f"malformed section headers: {e}")
        except PurgatoryError as e:
            problem = e
        if first_problem is None:
            first_problem = problem
    if first_problem is not None:
        raise first_problem
    raise PurgatoryError(source, "no x86_64 ET_REL purgatory object found (not a kexec-tools binary?)")


def load_purgatory(path: str) -> PurgatoryBlob:
    """Read ``path`` (the kexec binary, or a purgatory object) and return its purgatory."""
    try:
        with open(path, "rb") as f:
            container = f.read()
    except OSError as e:
        raise PurgatoryError(path, f"cannot read: {e.strerror}") from e
    return extract_purgatory(container, path)


# -- layout and relocation -------------------------------------------------


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


@dataclass(frozen=True)
class PurgatoryFootprint:
    """Memory the relocated object needs: ``bufsz`` bytes of contents within ``memsz``, at ``align``."""

    bufsz: int
    memsz: int
    align: int


def purgatory_footprint(blob: PurgatoryBlob) -> PurgatoryFootprint:
    buf_align = bss_align = 1
    bufsz = bsssz = 0
    for s in blob.sections:
        if not s.alloc:
            continue
        _check_align(blob, s)
        if s.nobits:
            bss_align = max(bss_align, s.addralign)
            bsssz = _align_up(bsssz, s.addralign) + s.size
        else:
            buf_align = max(buf_align, s.addralign)
            bufsz = _align_up(bufsz, s.addralign) + s.size
    buf_align = max(buf_align, bss_align)
    bss_pad = _align_up(bufsz, bss_align) - bufsz
    return PurgatoryFootprint(bufsz=bufsz, memsz=bufsz + bss_pad + bsssz, align=buf_align)


def _check_align(blob: PurgatoryBlob, s: ElfSection) -> None:
    if s.addralign & (s.addralign - 1):
        raise PurgatoryError(blob.source, f"section {s.name} alignment {s.addralign} is not a power of two")


class RelocatedPurgatory:
    """The purgatory laid out and relocated for one load address; its symbols can then be set.

    ``buf`` is what the purgatory segment carries (``bufsz`` bytes); the
    segment's memsz is :attr:`memsz` rounded up to a page by the caller.
    """

    def __init__(self, blob: PurgatoryBlob, load_addr: int) -> None:
        fp = purgatory_footprint(blob)
        if load_addr % fp.align:
            raise PurgatoryError(blob.source, f"load address 0x{load_addr:x} is not aligned to {fp.align}")
        self.blob = blob
        self.load_addr = load_addr
        self.memsz = fp.memsz
        self.buf = bytearray(fp.bufsz)
        self.section_addr: dict[int, int] = {}
        self.section_offset: dict[int, int] = {}  # offset in buf; contents sections only
        data_addr = load_addr
        bss_align = max([s.addralign for s in blob.sections if s.alloc and s.nobits] or [1])
        bss_addr = load_addr + _align_up(fp.bufsz, bss_align)
        for s in blob.sections:
            if not s.alloc:
                continue
            if s.nobits:
                bss_addr = _align_up(bss_addr, s.addralign)
                self.section_addr[s.index] = bss_addr
                bss_addr += s.size
            else:
                data_addr = _align_up(data_addr, s.addralign)
                off = data_addr - load_addr
                self.buf[off : off + s.size] = s.data
                self.section_addr[s.index] = data_addr
                self.section_offset[s.index] = off
                data_addr += s.size
        self._apply_relocations()
        self.entry = self.symbol_address("purgatory_start")

    def _symbol_value(self, rel_section: RelocationSection, rel: Relocation) -> int:
        blob = self.blob
        if rel_section.symtab >= len(blob.sections) or blob.sections[rel_section.symtab].type != "SHT_SYMTAB":
            raise PurgatoryError(blob.source, f"{rel_section.name} does not link to the symbol table")
        if rel.symbol >= len(blob.symbols):
            raise PurgatoryError(blob.source, f"{rel_section.name}: symbol index {rel.symbol} out of range")
        sym = blob.symbols[rel.symbol]
        name = sym.name or (blob.sections[sym.shndx].name if sym.shndx < len(blob.sections) else "?")
        if sym.shndx == SHN_UNDEF:
            raise PurgatoryError(blob.source, f"relocation against undefined symbol {name!r}")
        if sym.shndx == SHN_COMMON:
            raise PurgatoryError(blob.source, f"relocation against common symbol {name!r}")
        if sym.shndx == SHN_ABS:
            return sym.value + rel.addend
        if sym.shndx not in self.section_addr:
            raise PurgatoryError(blob.source, f"relocation against {name!r} in a section that is not loaded")
        return self.section_addr[sym.shndx] + sym.value + rel.addend

    def _apply_relocations(self) -> None:
        blob = self.blob
        for rs in blob.relocations:
            if rs.target >= len(blob.sections):
                raise PurgatoryError(blob.source, f"{rs.name} targets section {rs.target}, out of range")
            target = blob.sections[rs.target]
            if not target.alloc:
                continue  # debug info and the like: never loaded
            if target.nobits:
                raise PurgatoryError(blob.source, f"{rs.name} relocates NOBITS section {target.name}")
            base_off = self.section_offset[target.index]
            base_addr = self.section_addr[target.index]
            for rel in rs.entries:
                if rel.type == R_X86_64_NONE:
                    continue
                width = 8 if rel.type == R_X86_64_64 else 4
                if rel.type not in (R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32, R_X86_64_32S):
                    raise PurgatoryError(
                        blob.source,
                        f"unsupported relocation {relocation_name(rel.type)} at {target.name}+0x{rel.offset:x}",
                    )
                if rel.offset + width > target.size:
                    raise PurgatoryError(
                        blob.source, f"relocation at {target.name}+0x{rel.offset:x} is outside the section"
                    )
                value = self._symbol_value(rs, rel)
                place = base_addr + rel.offset
                off = base_off + rel.offset
                if rel.type == R_X86_64_64:
                    struct.pack_into("<Q", self.buf, off, value & 0xFFFFFFFFFFFFFFFF)
                    continue
                if rel.type in (R_X86_64_PC32, R_X86_64_PLT32):
                    result = value - place
                    ok = -(1 << 31) <= result < (1 << 31)
                elif rel.type == R_X86_64_32:
                    result = value
                    ok = 0 <= result < (1 << 32)
                else:  # R_X86_64_32S
                    result = value
                    ok = -(1 << 31) <= result < (1 << 31)
                if not ok:
                    raise PurgatoryError(
                        blob.source,
                        f"{relocation_name(rel.type)} at {target.name}+0x{rel.offset:x} overflows: "
                        f"0x{result & 0xFFFFFFFFFFFFFFFF:x} with the purgatory at 0x{self.load_addr:x}",
                    )
                struct.pack_into("<I", self.buf, off, result & 0xFFFFFFFF)

    # -- symbols --

    def _symbol(self, name: str) -> ElfSymbol:
        sym = self.blob.global_symbol(name)
        if sym is None or sym.shndx not in self.section_addr:
            raise PurgatoryError(self.blob.source, f"missing symbols: {name}")
        return sym

    def symbol_address(self, name: str) -> int:
        sym = self._symbol(name)
        return self.section_addr[sym.shndx] + sym.value

    def symbol_offset(self, name: str) -> int:
        """Offset of a settable symbol in :attr:`buf`."""
        sym = self._symbol(name)
        if sym.shndx not in self.section_offset:
            raise PurgatoryError(self.blob.source, f"{name} is in a NOBITS section, cannot be set")
        return self.section_offset[sym.shndx] + sym.value

    def has_symbol(self, name: str) -> bool:
        return self.blob.global_symbol(name) is not None

    def set_symbol(self, name: str, value: bytes) -> None:
        sym = self._symbol(name)
        if len(value) != sym.size:
            raise PurgatoryError(self.blob.source, f"{name} is {sym.size} bytes, not {len(value)}")
        off = self.symbol_offset(name)
        self.buf[off : off + len(value)] = value

    def get_symbol(self, name: str) -> bytes:
        sym = self._symbol(name)
        off = self.symbol_offset(name)
        return bytes(self.buf[off : off + sym.size])
