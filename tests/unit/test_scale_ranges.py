"""At scale: thousands of memory ranges through the parsers, the header builder and the fast path.

A virtio-mem device fragmented by partial unplug (one "System RAM
(virtio_mem)" resource per plugged memory block, every other block gone) and
hundreds of DIMMs (one "System RAM" resource each) give /proc/iomem thousands
of RAM lines and /proc/kcore as many PT_LOADs: more than the ~1,150 program
headers a fixed 64 KiB read of /proc/kcore holds.  Synthetic inputs
(tests/fixtures/fastpath/synth.py): the expected values come from the
generator below, never from the code under test.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ground.ranges import PhysRange
from tests.fixtures.fastpath import synth
from updater import ElfCoreHeader, HeaderOptions, SnapshotError, UpdaterSettings, read_snapshot, segment_size_for
from updater._parse import PT_LOAD, parse_iomem, parse_kcore_loads
from updater.fastpath import elfcorehdr_capacity_for, parse_bzimage, parse_purgatory
from updater.fastpath._backend import FastPathEngine, FastPathSources

BLOCK = 128 << 20
GIB = 1 << 30
DIMMS = 300  # 1 GiB each, from 4 GiB up
VIRTIO_BASE = 0x10000000000  # 1 TiB
VIRTIO_BLOCKS = 4200  # the device's span, in memory blocks; every other one plugged
DIRECT_MAP = 0xFFFF9ABC00000000  # a KASLR-randomized page_offset
TEXT_VADDR = 0xFFFFFFFF81000000
KERNEL_CODE = 0x5A000000
CRASH = (0x2B000000, 0x3AFFFFFF)  # inclusive, as /proc/iomem prints it

BASE_IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-7ffdffff : System RAM
  2b000000-3affffff : Crash kernel
  5a000000-5b0fffff : Kernel code
7ffe0000-7ffeffff : ACPI Tables
7fff0000-7fffffff : ACPI Non-volatile Storage
fed00000-fed003ff : Reserved
"""


def hotplugged_ram() -> list[tuple[int, int, str]]:
    """``(start, last, name)`` of every hot-added RAM line: the DIMMs, then the plugged virtio-mem blocks."""
    dimms = [(4 * GIB + i * GIB, 4 * GIB + (i + 1) * GIB - 1, "System RAM") for i in range(DIMMS)]
    blocks = [
        (VIRTIO_BASE + i * BLOCK, VIRTIO_BASE + (i + 1) * BLOCK - 1, "System RAM (virtio_mem)") for i in range(0, VIRTIO_BLOCKS, 2)
    ]
    return dimms + blocks


def iomem_text(ram: list[tuple[int, int, str]]) -> str:
    lines = [BASE_IOMEM]
    lines += [f"{s:x}-{e:x} : {n}\n" for s, e, n in ram if n == "System RAM"]
    lines.append(f"{VIRTIO_BASE:x}-{VIRTIO_BASE + VIRTIO_BLOCKS * BLOCK - 1:x} : virtio0\n")
    lines += [f"  {s:x}-{e:x} : {n}\n" for s, e, n in ram if n != "System RAM"]
    return "".join(lines)


def kcore_loads(ram: list[tuple[int, int, str]]) -> list[tuple[int, int, int]]:
    """kcore's PT_LOADs: the kernel text, then the direct map of every RAM line (as fs/proc/kcore.c lists them)."""
    loads = [(TEXT_VADDR, KERNEL_CODE, 0x2C00000), (DIRECT_MAP + 0x1000, 0x1000, 0x9EC00), (DIRECT_MAP + 0x100000, 0x100000, 0x7FEE0000)]
    loads += [(DIRECT_MAP + s, s, e - s + 1) for s, e, _ in ram]
    return loads


def write_root(root: Path, ram: list[tuple[int, int, str]], *, pn_xnum: bool = False) -> Path:
    files = {
        "proc/iomem": iomem_text(ram),
        "sys/devices/system/cpu/possible": "0-7\n",
        "sys/devices/system/cpu/present": "0-3\n",
        "sys/devices/system/cpu/online": "0-3\n",
        "sys/kernel/vmcoreinfo": "4a31f000 1000\n",
        "sys/kernel/kexec_crash_loaded": "1\n",
        "sys/kernel/kexec_crash_size": f"{0x10000000}\n",
        "sys/devices/system/memory/block_size_bytes": f"{BLOCK:x}\n",
    }
    for cpu in range(4):
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes"] = f"{0x7E000000 + cpu * 0x1000:x}\n"
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes_size"] = "368\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "proc/kcore").write_bytes(synth.build_kcore(kcore_loads(ram), pn_xnum=pn_xnum))
    return root


@pytest.fixture
def ram() -> list[tuple[int, int, str]]:
    lines = hotplugged_ram()
    assert len(lines) >= 2000
    return lines


def test_iomem_parser_takes_thousands_of_ram_lines(ram: list[tuple[int, int, str]]) -> None:
    entries = parse_iomem(iomem_text(ram))
    hot = [e for e in entries if e.is_system_ram and e.range.start >= 4 * GIB]
    assert [(e.range.start, e.range.last, e.name) for e in hot] == ram
    assert all(e.depth == 1 and e.driver_managed for e in hot if e.range.start >= VIRTIO_BASE)


@pytest.mark.parametrize("pn_xnum", [False, True])
def test_kcore_program_headers_are_read_by_their_count(ram: list[tuple[int, int, str]], pn_xnum: bool) -> None:
    expected = kcore_loads(ram)
    data = synth.build_kcore(expected, pn_xnum=pn_xnum)
    assert len(data) > 64 * 1024  # more than kexec-tools' KCORE_ELF_HEADERS_SIZE
    loads = parse_kcore_loads(data)
    assert [(ld.vaddr, ld.paddr, ld.memsz) for ld in loads] == expected
    # What a fixed 64 KiB read would have seen: not all of them.
    with pytest.raises(SnapshotError, match="program headers end|section header 0 .* truncated"):
        parse_kcore_loads(data[: 64 * 1024])


def test_kcore_pn_xnum_without_its_section_header_is_refused(ram: list[tuple[int, int, str]]) -> None:
    data = bytearray(synth.build_kcore(kcore_loads(ram), pn_xnum=True))
    data[0x28:0x30] = bytes(8)  # e_shoff = 0
    with pytest.raises(SnapshotError, match="PN_XNUM"):
        parse_kcore_loads(bytes(data))


@pytest.mark.parametrize("pn_xnum", [False, True])
def test_snapshot_and_header_with_thousands_of_ranges(tmp_path: Path, ram: list[tuple[int, int, str]], pn_xnum: bool) -> None:
    snap = read_snapshot(str(write_root(tmp_path / "root", ram, pn_xnum=pn_xnum)))
    assert snap.page_offset == DIRECT_MAP and snap.page_offset_source == "kcore"
    assert snap.kernel_text is not None and (snap.kernel_text.paddr, snap.kernel_text.vaddr) == (KERNEL_CODE, TEXT_VADDR)
    assert len(snap.ram) == 2 + len(ram)

    header = ElfCoreHeader.build(snap, HeaderOptions.for_loader("kexec_load"))
    # Below 4 GiB: the low RAM and the RAM around the crash region; then every hot-added line.
    low = [(0x1000, 0x9EC00), (0x100000, CRASH[0] - 0x100000), (CRASH[1] + 1, 0x7FFE0000 - CRASH[1] - 1)]
    expected = low + [(s, e - s + 1) for s, e, _ in ram]
    assert [(p.p_paddr, p.p_memsz) for p in header.ram_phdrs] == expected
    assert all(p.p_vaddr == DIRECT_MAP + p.p_paddr and p.p_offset == p.p_paddr for p in header.ram_phdrs)
    assert len(header.phdrs) == 4 + 1 + 1 + len(expected)  # CPU notes, vmcoreinfo, text, RAM

    data = header.to_bytes()
    segs = list(ELFFile(io.BytesIO(data)).iter_segments())
    assert len(segs) == len(header.phdrs)
    assert [(s["p_paddr"], s["p_memsz"]) for s in segs if s["p_type"] == "PT_LOAD"][1:] == expected
    again = ElfCoreHeader.parse(data)
    assert again.to_bytes() == data and len(again.ram_ranges) == len(expected)
    assert again.ram_ranges[-1] == PhysRange.from_inclusive(ram[-1][0], ram[-1][1])


def _engine(root: Path) -> FastPathEngine:
    sources = FastPathSources(
        kernel=parse_bzimage(synth.build_bzimage(payload_size=300_000, init_size=0x100000), "vmlinuz"),
        initrd=bytes(range(256)) * 1000,
        cmdline="console=ttyS0 nr_cpus=1 irqpoll reset_devices",
        purgatory=parse_purgatory(synth.build_purgatory(), "kexec"),
        boot_params=synth.boot_params(),
    )
    return FastPathEngine(sources, UpdaterSettings(snapshot_root=str(root)))


def test_fast_path_slot_grows_to_thousands_of_ranges(tmp_path: Path, ram: list[tuple[int, int, str]]) -> None:
    options = HeaderOptions.for_loader("kexec_load")
    small = read_snapshot(str(write_root(tmp_path / "small", ram[:10])))
    engine = _engine(tmp_path / "small")
    first = engine.segment_set_for(small, ElfCoreHeader.build(small, options))
    assert first.prepared == "first load"
    assert engine.image is not None
    small_slot = engine.image.layout.elfcorehdr_capacity

    # The same host after the DIMMs and virtio-mem came: the header outgrows
    # the slot, the engine prepares again with a slot sized for it (and its
    # headroom), and the result still verifies.
    big_root = write_root(tmp_path / "small", ram)
    big = read_snapshot(str(big_root))
    second = engine.segment_set_for(big, ElfCoreHeader.build(big, options))
    header = second.header
    assert len(header.ram_phdrs) == 3 + len(ram)
    assert second.prepared.startswith("header outgrew its slot")
    assert engine.prepares == 2 and engine.image is not None
    slot = engine.image.layout.elfcorehdr_capacity
    s = engine.settings
    assert slot == segment_size_for(len(header.phdrs), s.headroom_ranges + s.headroom_cpus) > small_slot
    assert header.size <= slot
    assert elfcorehdr_capacity_for(cpus=8, ram_ranges=len(header.ram_phdrs)) >= header.size
    segment = next(seg for seg in second.verified.segment_set.segments if seg.kind.value == "elfcorehdr")
    assert segment.buf == header.to_bytes() and segment.memsz == slot
    assert second.verified.mode == "full"
    loads = [p for p in ElfCoreHeader.parse(segment.buf).phdrs if p.p_type == PT_LOAD]
    assert len(loads) == 1 + 3 + len(ram)  # text + low RAM + hot-added
    # The low-memory PT_LOAD points at the backup segment, at any scale.
    assert header.ram_phdrs[0].p_offset == engine.image.layout.backup.start
