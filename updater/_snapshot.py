"""The live system state a header is built from: :class:`SystemSnapshot`.

Events are hints; the snapshot is the truth.  It is read when a batch runs,
from the same files kexec-tools reads (``crashdump-x86.c``, ``crashdump.c``):

- /proc/iomem: "System RAM" lines at any depth (kexec-tools' ``sscanf`` skips
  the indent too), including the driver-managed "System RAM (kmem)" and
  "System RAM (virtio_mem)"; "Crash kernel" (cut out of the dumped RAM);
  "Kernel code" (the text PT_LOAD's physical address).
- /sys/devices/system/cpu/{possible,present,online} and each present CPU's
  ``crash_notes`` / ``crash_notes_size``.
- /sys/kernel/vmcoreinfo ("ADDR SIZE").
- /proc/kcore's program headers: page_offset and the kernel text mapping.
- /sys/devices/system/memory/block_size_bytes, /proc/meminfo (MemTotal).
- /sys/kernel/kexec_crash_loaded, kexec_crash_size and the two
  ``crash_hotplug`` files: what is loaded and who keeps it current.

A kernel without CONFIG_CRASH_DUMP (like the project's CI host) has no
``crash_notes``, no /proc/kcore and no ``kexec_crash_loaded``.  The snapshot
then records each missing input in :attr:`SystemSnapshot.missing` with what it
costs, and still yields a header for dry-run:

- CPU notes are omitted (the header lists which CPUs lack one);
- page_offset falls back to 0xffff888000000000, the x86_64 direct map base
  without KASLR memory randomization (kexec-tools ``X86_64_PAGE_OFFSET``, Linux
  >= 4.20 with 4-level paging: d52888aa2753 "x86/mm: Move LDT remap out of
  KASLR region on 5-level paging" moved it from 0xffff880000000000; 4.19.5
  got it as a stable backport);
- the kernel text mapping comes from /proc/kallsyms ``_stext`` (rounded down to
  1 MiB like kexec-tools) with the image size from the "Kernel code" .. "Kernel
  bss" resources of /proc/iomem; without kallsyms, 0xffffffff81000000
  (__START_KERNEL_map + the default 16 MiB CONFIG_PHYSICAL_START).

Reads go through ``root`` so that a directory captured from a host (see
``tests/fixtures/host/capture.sh``) is read exactly like the live one.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ground.errors import NeedsRootError
from ground.files import atomic_write
from ground.ranges import PhysRange, subtract_all

from ._errors import SnapshotError
from ._parse import (
    KERN_VADDR_ALIGN,
    PAGE_SIZE,
    IomemEntry,
    KcoreLoad,
    iomem_hides_addresses,
    kcore_page_offset,
    kcore_text_mapping,
    parse_block_size,
    parse_cpu_list,
    parse_decimal,
    parse_hex,
    parse_iomem,
    parse_kallsyms,
    parse_meminfo,
    parse_vmcoreinfo,
    read_kcore_loads,
)

DEFAULT_PAGE_OFFSET = 0xFFFF888000000000
DEFAULT_TEXT_VADDR = 0xFFFFFFFF81000000
# kexec-tools' size when crash_notes_size is absent (kernels before that sysfs
# file: Documentation/ABI dates it April 2013, the Linux 3.10 cycle; commit
# not verified).
MAX_NOTE_BYTES = 1024
SNAPSHOT_FORMAT = 1
LOW_1M = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class RamRange(PhysRange):
    """A "System RAM" line of /proc/iomem: its range and its name (which
    says whether a driver manages it)."""

    name: str = "System RAM"

    @property
    def driver_managed(self) -> bool:
        return self.name != "System RAM"

    @property
    def range(self) -> PhysRange:
        return PhysRange(self.start, self.end)


@dataclass(frozen=True, slots=True)
class CpuNote:
    cpu: int
    address: int
    size: int


@dataclass(frozen=True, slots=True)
class KernelText:
    """The kernel text PT_LOAD: ``paddr`` from "Kernel code", ``vaddr``/``size``
    from /proc/kcore; ``source`` says where they came from when it was not."""

    paddr: int
    vaddr: int
    size: int
    source: str


@dataclass(frozen=True, slots=True)
class MissingInput:
    """An input the snapshot could not read, and what that costs."""

    path: str
    consequence: str


@dataclass(frozen=True)
class SystemSnapshot:
    kernel_release: str
    ram: tuple[RamRange, ...]
    crash_kernel: tuple[PhysRange, ...]
    kernel_code: PhysRange | None
    cpus_possible: tuple[int, ...]
    cpus_present: tuple[int, ...]
    cpus_online: tuple[int, ...]
    cpu_notes: tuple[CpuNote, ...]
    vmcoreinfo: tuple[int, int] | None
    page_offset: int
    page_offset_source: str
    kernel_text: KernelText | None
    block_size: int | None = None
    mem_total_kb: int | None = None
    kexec_crash_loaded: bool | None = None
    kexec_crash_size: int | None = None
    crash_hotplug_memory: int | None = None
    crash_hotplug_cpu: int | None = None
    # /sys/kernel/crash_elfcorehdr_size: present only with CONFIG_CRASH_HOTPLUG
    # (a72bbec70da2 "crash: hotplug support for kexec_load()", Linux 6.6): the
    # program-header bytes the kernel's own header rewrite may need.
    crash_elfcorehdr_size: int | None = None
    missing: tuple[MissingInput, ...] = ()
    taken_at: float = field(default=0.0, compare=False)
    root: str = field(default="/", compare=False)

    # -- what the header covers ------------------------------------------------

    def dump_ranges(self, *, cut_low_1m: bool = False, driver_managed: bool = True) -> tuple[PhysRange, ...]:
        """System RAM to dump, sorted, with the crash kernel region(s) cut out
        (kexec-tools ``exclude_region``), and optionally the low 1 MiB (the
        kernel's ``prepare_elf_headers`` does, since the low 1 MiB is always
        reserved on x86).  Adjacent lines stay separate: one PT_LOAD per line,
        as kexec-tools writes them."""
        cuts = list(self.crash_kernel)
        if cut_low_1m:
            cuts.append(PhysRange(0, LOW_1M))
        out: list[PhysRange] = []
        covered_to = -1
        for r in sorted(self.ram, key=lambda r: (r.start, -r.end)):
            if r.driver_managed and not driver_managed:
                continue
            if r.end <= covered_to:
                # A "System RAM" line nested in one already listed.  Shrinking
                # the crash region (/sys/kernel/kexec_crash_size,
                # kernel/crash_core.c crash_shrink_memory) hands the freed part
                # back with insert_resource(), which nests it under the outer
                # System RAM line that still covers it.  kexec-tools 2.0.25
                # lists it twice (overlapping PT_LOADs); list it once.
                continue
            covered_to = max(covered_to, r.end)
            out.extend(subtract_all([r.range], cuts))
        return tuple(out)

    @property
    def ram_bytes(self) -> int:
        return sum(r.size for r in self.ram)

    @property
    def can_kexec(self) -> bool:
        return self.kexec_crash_loaded is not None

    def missing_paths(self) -> tuple[str, ...]:
        return tuple(m.path for m in self.missing)

    # -- JSON ------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def ranges(rs: tuple[PhysRange, ...]) -> list[list[int]]:
            return [[r.start, r.end] for r in rs]

        return {
            "format": SNAPSHOT_FORMAT,
            "kernel_release": self.kernel_release,
            "taken_at": self.taken_at,
            "root": self.root,
            "ram": [[r.start, r.end, r.name] for r in self.ram],
            "crash_kernel": ranges(self.crash_kernel),
            "kernel_code": [self.kernel_code.start, self.kernel_code.end] if self.kernel_code else None,
            "cpus_possible": list(self.cpus_possible),
            "cpus_present": list(self.cpus_present),
            "cpus_online": list(self.cpus_online),
            "cpu_notes": [[n.cpu, n.address, n.size] for n in self.cpu_notes],
            "vmcoreinfo": list(self.vmcoreinfo) if self.vmcoreinfo else None,
            "page_offset": self.page_offset,
            "page_offset_source": self.page_offset_source,
            "kernel_text": asdict(self.kernel_text) if self.kernel_text else None,
            "block_size": self.block_size,
            "mem_total_kb": self.mem_total_kb,
            "kexec_crash_loaded": self.kexec_crash_loaded,
            "kexec_crash_size": self.kexec_crash_size,
            "crash_hotplug_memory": self.crash_hotplug_memory,
            "crash_hotplug_cpu": self.crash_hotplug_cpu,
            "crash_elfcorehdr_size": self.crash_elfcorehdr_size,
            "missing": [[m.path, m.consequence] for m in self.missing],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], source: str = "snapshot") -> SystemSnapshot:
        try:
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotError(source, f"unknown snapshot format {doc.get('format')!r} (expected {SNAPSHOT_FORMAT})")
            kc = doc["kernel_code"]
            kt = doc["kernel_text"]
            vm = doc["vmcoreinfo"]
            return cls(
                kernel_release=str(doc["kernel_release"]),
                ram=tuple(RamRange(int(s), int(e), str(n)) for s, e, n in doc["ram"]),
                crash_kernel=tuple(PhysRange(int(s), int(e)) for s, e in doc["crash_kernel"]),
                kernel_code=PhysRange(int(kc[0]), int(kc[1])) if kc else None,
                cpus_possible=tuple(int(c) for c in doc["cpus_possible"]),
                cpus_present=tuple(int(c) for c in doc["cpus_present"]),
                cpus_online=tuple(int(c) for c in doc["cpus_online"]),
                cpu_notes=tuple(CpuNote(int(c), int(a), int(s)) for c, a, s in doc["cpu_notes"]),
                vmcoreinfo=(int(vm[0]), int(vm[1])) if vm else None,
                page_offset=int(doc["page_offset"]),
                page_offset_source=str(doc["page_offset_source"]),
                kernel_text=KernelText(int(kt["paddr"]), int(kt["vaddr"]), int(kt["size"]), str(kt["source"])) if kt else None,
                block_size=doc["block_size"],
                mem_total_kb=doc["mem_total_kb"],
                kexec_crash_loaded=doc["kexec_crash_loaded"],
                kexec_crash_size=doc["kexec_crash_size"],
                crash_hotplug_memory=doc["crash_hotplug_memory"],
                crash_hotplug_cpu=doc["crash_hotplug_cpu"],
                crash_elfcorehdr_size=doc.get("crash_elfcorehdr_size"),
                missing=tuple(MissingInput(str(p), str(c)) for p, c in doc["missing"]),
                taken_at=float(doc.get("taken_at", 0.0)),
                root=str(doc.get("root", "/")),
            )
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(source, f"not a snapshot: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write(Path(path), (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SystemSnapshot:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SnapshotError(str(path), f"cannot read: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SnapshotError(str(path), f"not JSON: {exc.msg}", exc.lineno) from None
        if not isinstance(doc, dict):
            raise SnapshotError(str(path), "not a JSON object")
        return cls.from_json(doc, str(path))


# -- reading -------------------------------------------------------------------

# /sys/kernel/kexec_crash_size is read under the kexec lock, and since
# 7bb5da0d490b ("kexec: turn all kexec_mutex acquisitions into trylocks",
# v6.0) its show (crash_get_memory_size) returns -EBUSY instead of waiting
# while a kexec_load/kexec_file_load holds the lock: someone's load is in
# progress (a distro reload, an admin's kexec -p).  The snapshot waits that
# long for it rather than failing the batch; a load takes well under a second
# on real hardware and a few seconds under TCG.
KEXEC_LOCK_WAIT_S = 30.0
KEXEC_LOCK_POLL_S = 0.05
KEXEC_CRASH_SIZE = "sys/kernel/kexec_crash_size"


def _read_unless_kexec_busy(path: str) -> str | None:
    """The file's text, or None while a kexec load holds the kexec lock (the
    read fails with EBUSY, see above).  Other errors propagate."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return None
        raise


def kexec_lock_held(root: str = "/") -> bool:
    """Whether a kexec load holds the kernel's kexec lock right now: reading
    /sys/kernel/kexec_crash_size fails with EBUSY then (see above).  False
    when the file is absent or reads (a kernel without the trylock blocks the
    read instead: it never says busy)."""
    try:
        return _read_unless_kexec_busy(os.path.join(root, KEXEC_CRASH_SIZE)) is None
    except (OSError, UnicodeDecodeError):
        return False


class _Reader:
    def __init__(self, root: str) -> None:
        self.root = root
        self.missing: list[MissingInput] = []

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def text(self, rel: str, consequence: str | None = None) -> str | None:
        """The file's text; ``None`` (recorded as missing when ``consequence``
        is given) when it does not exist."""
        path = self.path(rel)
        try:
            with open(path, encoding="ascii", errors="strict") as f:
                return f.read()
        except FileNotFoundError:
            if consequence is not None:
                self.missing.append(MissingInput("/" + rel.lstrip("/"), consequence))
            return None
        except PermissionError:
            if consequence is not None:
                self.missing.append(MissingInput("/" + rel.lstrip("/"), f"not readable (needs root): {consequence}"))
            return None
        except UnicodeDecodeError:
            raise SnapshotError(path, "not ASCII text") from None
        except OSError as exc:
            raise SnapshotError(path, f"cannot read: {exc.strerror}") from None

    def text_under_kexec_lock(self, rel: str) -> str | None:
        """:meth:`text` of a file whose read trylocks the kexec lock: EBUSY
        (someone's load in progress) is waited out for KEXEC_LOCK_WAIT_S."""
        deadline = time.monotonic() + KEXEC_LOCK_WAIT_S
        while True:
            try:
                text = _read_unless_kexec_busy(self.path(rel))
            except (OSError, UnicodeDecodeError):
                return self.text(rel)  # its own answer to the error: missing, unreadable, not ASCII
            if text is not None:
                return text
            if time.monotonic() >= deadline:
                raise SnapshotError(self.path(rel), f"busy for {KEXEC_LOCK_WAIT_S:.0f} s: a kexec load holds the kexec lock")
            time.sleep(KEXEC_LOCK_POLL_S)

    def kcore_loads(self, rel: str) -> tuple[KcoreLoad, ...] | None:
        """The PT_LOADs of an ELF core file (/proc/kcore): its ELF header, then
        exactly the program headers it declares.  ``None`` when the file does
        not exist or is not readable."""
        path = self.path(rel)
        try:
            with open(path, "rb") as f:

                def read(offset: int, size: int) -> bytes:
                    f.seek(offset)
                    return f.read(size)

                return read_kcore_loads(read, path)
        except (FileNotFoundError, PermissionError):
            return None
        except OSError as exc:
            raise SnapshotError(path, f"cannot read: {exc.strerror}") from None


def _kernel_release(r: _Reader) -> str:
    text = r.text("proc/sys/kernel/osrelease")
    if text is None:
        text = r.text("UNAME")  # captured fixture directories
    return text.strip() if text else os.uname().release


def read_snapshot(root: str = "/") -> SystemSnapshot:
    """Read the live state (or a captured copy of it under ``root``).

    Raises :class:`SnapshotError` for a malformed input and
    :class:`NeedsRootError` when /proc/iomem hides its addresses."""
    r = _Reader(root)
    cpu = "sys/devices/system/cpu"

    iomem_text = r.text("proc/iomem")
    if iomem_text is None:
        raise SnapshotError(r.path("proc/iomem"), "missing: cannot tell what RAM to dump")
    entries = parse_iomem(iomem_text, r.path("proc/iomem"))
    if iomem_hides_addresses(entries):
        raise NeedsRootError(f"reading addresses from {r.path('proc/iomem')}")
    ram = tuple(RamRange(e.range.start, e.range.end, e.name) for e in entries if e.is_system_ram)
    if not ram:
        raise SnapshotError(r.path("proc/iomem"), "no 'System RAM' line")
    crash_kernel = tuple(e.range for e in entries if e.name == "Crash kernel")
    code = next((e for e in entries if e.name == "Kernel code"), None)
    kernel_code = code.range if code else None
    image_end = _kernel_image_end(entries)

    def cpus(name: str) -> tuple[int, ...] | None:
        text = r.text(f"{cpu}/{name}", f"CPU {name} list unknown")
        return parse_cpu_list(text, r.path(f"{cpu}/{name}")) if text is not None else None

    present = cpus("present") or ()
    online = cpus("online") or ()
    possible = cpus("possible") or present

    notes: list[CpuNote] = []
    notes_missing: list[int] = []
    for n in present:
        text = r.text(f"{cpu}/cpu{n}/crash_notes")
        if text is None:
            notes_missing.append(n)
            continue
        addr = parse_hex(text, r.path(f"{cpu}/cpu{n}/crash_notes"))
        size_text = r.text(f"{cpu}/cpu{n}/crash_notes_size")
        size = parse_decimal(size_text, r.path(f"{cpu}/cpu{n}/crash_notes_size")) if size_text is not None else MAX_NOTE_BYTES
        notes.append(CpuNote(n, addr, size))
    if notes_missing:
        listed = ",".join(map(str, notes_missing))
        r.missing.append(
            MissingInput(f"/{cpu}/cpuN/crash_notes", f"no crash notes for CPU(s) {listed} (kernel without CONFIG_CRASH_DUMP?): CPU notes omitted from the header")
        )

    vm_text = r.text("sys/kernel/vmcoreinfo", "no vmcoreinfo note in the header")
    vmcoreinfo = parse_vmcoreinfo(vm_text, r.path("sys/kernel/vmcoreinfo")) if vm_text is not None else None

    syms = _kernel_symbols(r)
    stext = syms.get("_stext", syms.get("_text"))

    page_offset, page_offset_source = DEFAULT_PAGE_OFFSET, "default"
    kernel_text: KernelText | None = None
    loads = r.kcore_loads("proc/kcore")
    paddr = kernel_code.start if kernel_code else None
    if loads is not None:
        # kexec-tools takes the lowest kcore PT_LOAD (rounded down to 1 GiB)
        # when kallsyms has page_offset_base (CONFIG_RANDOMIZE_MEMORY), else
        # its default.  Without randomization the lowest PT_LOAD is the direct
        # map of the first RAM page, which rounds down to that same default,
        # so the kcore value is taken either way (no kallsyms needed).
        page_offset, page_offset_source = kcore_page_offset(loads), "kcore"
        mapping = kcore_text_mapping(loads, stext, paddr)
        if mapping is None:
            raise SnapshotError(r.path("proc/kcore"), "no PT_LOAD maps the kernel text")
        if paddr is not None:
            kernel_text = KernelText(paddr, mapping[0], mapping[1], "kcore")
    else:
        r.missing.append(
            MissingInput(
                "/proc/kcore",
                f"page_offset defaults to {DEFAULT_PAGE_OFFSET:#x}; kernel text mapping from "
                + ("/proc/kallsyms and /proc/iomem (size approximate)" if stext else f"defaults ({DEFAULT_TEXT_VADDR:#x})"),
            )
        )
        page_offset_source = "default (no /proc/kcore)"
        if paddr is not None and image_end is not None:
            text_start = stext if stext is not None else DEFAULT_TEXT_VADDR
            vaddr = text_start & ~(KERN_VADDR_ALIGN - 1)
            end = text_start + (image_end - paddr)
            size = (end - vaddr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            kernel_text = KernelText(paddr, vaddr, size, "kallsyms+iomem" if stext is not None else "default")
    if kernel_code is None:
        r.missing.append(MissingInput("/proc/iomem 'Kernel code'", "no kernel text PT_LOAD in the header"))

    bs_text = r.text("sys/devices/system/memory/block_size_bytes", "memory block size unknown")
    block_size = parse_block_size(bs_text, r.path("sys/devices/system/memory/block_size_bytes")) if bs_text else None

    mi_text = r.text("proc/meminfo")
    mem_total = parse_meminfo(mi_text, r.path("proc/meminfo")).get("MemTotal") if mi_text else None

    loaded_text = r.text("sys/kernel/kexec_crash_loaded", "this kernel cannot kexec (no CONFIG_KEXEC/CRASH_DUMP): nothing can be loaded")
    loaded = bool(parse_decimal(loaded_text, r.path("sys/kernel/kexec_crash_loaded"))) if loaded_text is not None else None
    size_text = r.text_under_kexec_lock(KEXEC_CRASH_SIZE)
    crash_size = parse_decimal(size_text, r.path("sys/kernel/kexec_crash_size")) if size_text is not None else None

    ces_text = r.text("sys/kernel/crash_elfcorehdr_size")
    elfcorehdr_size = parse_decimal(ces_text, r.path("sys/kernel/crash_elfcorehdr_size")) if ces_text is not None else None

    def hotplug(kind: str) -> int | None:
        text = r.text(f"sys/devices/system/{kind}/crash_hotplug")
        return parse_decimal(text, r.path(f"sys/devices/system/{kind}/crash_hotplug")) if text is not None else None

    return SystemSnapshot(
        kernel_release=_kernel_release(r),
        ram=ram,
        crash_kernel=crash_kernel,
        kernel_code=kernel_code,
        cpus_possible=possible,
        cpus_present=present,
        cpus_online=online,
        cpu_notes=tuple(notes),
        vmcoreinfo=vmcoreinfo,
        page_offset=page_offset,
        page_offset_source=page_offset_source,
        kernel_text=kernel_text,
        block_size=block_size,
        mem_total_kb=mem_total,
        kexec_crash_loaded=loaded,
        kexec_crash_size=crash_size,
        crash_hotplug_memory=hotplug("memory"),
        crash_hotplug_cpu=hotplug("cpu"),
        crash_elfcorehdr_size=elfcorehdr_size,
        missing=tuple(r.missing),
        taken_at=time.time(),
        root=root,
    )


# /proc/kallsyms is ~5 MB on a distro kernel and the symbols read here do not
# change while the kernel runs: read it once per root.
_SYMBOLS: dict[str, dict[str, int]] = {}


def _kernel_symbols(r: _Reader) -> dict[str, int]:
    cached = _SYMBOLS.get(r.root)
    if cached is None:
        text = r.text("proc/kallsyms")
        wanted = frozenset({"_text", "_stext", "page_offset_base"})
        cached = parse_kallsyms(text, wanted, r.path("proc/kallsyms")) if text else {}
        _SYMBOLS[r.root] = cached
    return cached


def _kernel_image_end(entries: tuple[IomemEntry, ...]) -> int | None:
    """End (exclusive) of the kernel image resources ("Kernel code", "Kernel
    rodata", "Kernel data", "Kernel bss"): where kcore's text mapping ends,
    give or take the brk area."""
    ends = [e.range.end for e in entries if e.name in ("Kernel code", "Kernel rodata", "Kernel data", "Kernel bss")]
    return max(ends) if ends else None
