"""The elfcorehdr builder, read back with pyelftools."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ground.ranges import PhysRange
from updater import (
    CpuNote,
    ElfCoreHeader,
    HeaderOptions,
    HeaderTooLargeError,
    RamRange,
    SnapshotError,
    SystemSnapshot,
    UpdaterSettings,
    diff_headers,
    diff_snapshots,
    read_snapshot,
    segment_size_for,
)

HOST = Path(__file__).parent.parent / "fixtures" / "host"
LIVE = HOST / "live-6.18"
OFFLINE = HOST / "live-6.18-cpu1-offline"


def host() -> SystemSnapshot:
    return read_snapshot(str(LIVE))


def with_notes(snap: SystemSnapshot, cpus: tuple[int, ...] = (0, 1, 2, 3), present: tuple[int, ...] = (0, 1, 2)) -> SystemSnapshot:
    """The host snapshot as on a kdump-capable kernel: notes for the present
    CPUs (addresses in the per-CPU area, size as crash_notes_size reports)."""
    return dataclasses.replace(
        snap,
        cpus_possible=cpus,
        cpus_present=present,
        cpus_online=present[:-1],
        cpu_notes=tuple(CpuNote(c, 0x23FC1D0B8 + c * 0x40000, 0x1A8 if c % 2 else 0x1A0) for c in present),
    )


def segments(data: bytes) -> list[dict[str, object]]:
    elf = ELFFile(io.BytesIO(data))
    assert elf.header.e_type == "ET_CORE"
    assert elf.header.e_machine == "EM_X86_64"
    assert elf.elfclass == 64 and elf.little_endian
    assert elf.header.e_phoff == 64 and elf.header.e_shnum == 0
    return [dict(seg.header) for seg in elf.iter_segments()]


def test_host_header_round_trips_through_pyelftools() -> None:
    snap = host()
    header = ElfCoreHeader.build(snap)
    data = header.to_bytes()
    assert len(data) == 1024 and len(data) % 1024 == 0
    segs = segments(data)
    # No CPU notes on this kernel: vmcoreinfo, kernel text, 3 RAM ranges.
    assert [s["p_type"] for s in segs] == ["PT_NOTE", "PT_LOAD", "PT_LOAD", "PT_LOAD", "PT_LOAD"]
    assert segs[0]["p_paddr"] == segs[0]["p_offset"] == 0x100C66000 and segs[0]["p_filesz"] == 0x1024 and segs[0]["p_vaddr"] == 0
    text = segs[1]
    assert text["p_paddr"] == text["p_offset"] == 0x1000000 and text["p_vaddr"] == 0xFFFFFFFF81000000
    for seg, r in zip(segs[2:], snap.dump_ranges()):
        assert seg["p_paddr"] == seg["p_offset"] == r.start
        assert seg["p_vaddr"] == 0xFFFF888000000000 + r.start
        assert seg["p_filesz"] == seg["p_memsz"] == r.size
        assert seg["p_flags"] == 7 and seg["p_align"] == 0
    assert header.missing_note_cpus == (0, 1) and header.note_cpus == ()
    assert ElfCoreHeader.parse(data).to_bytes() == data


def test_deterministic() -> None:
    a = ElfCoreHeader.build(host()).to_bytes()
    b = ElfCoreHeader.build(read_snapshot(str(LIVE))).to_bytes()
    assert a == b


def test_cpu_notes_present_possible_online() -> None:
    snap = with_notes(host())
    present = ElfCoreHeader.build(snap, HeaderOptions(cpu_notes="present"))
    assert present.note_cpus == (0, 1, 2) and present.missing_note_cpus == ()
    segs = segments(present.to_bytes())
    notes = [s for s in segs if s["p_type"] == "PT_NOTE"]
    assert [(n["p_paddr"], n["p_filesz"]) for n in notes[:3]] == [(0x23FC1D0B8, 0x1A0), (0x23FC5D0B8, 0x1A8), (0x23FC9D0B8, 0x1A0)]
    assert notes[3]["p_filesz"] == 0x1024  # vmcoreinfo comes after the CPUs
    possible = ElfCoreHeader.build(snap, HeaderOptions(cpu_notes="possible"))
    assert possible.note_cpus == (0, 1, 2) and possible.missing_note_cpus == (3,)
    online = ElfCoreHeader.build(snap, HeaderOptions(cpu_notes="online"))
    assert online.note_cpus == (0, 1)


def test_loader_defaults() -> None:
    assert HeaderOptions.for_loader("kexec_load") == HeaderOptions(cpu_notes="present", cut_low_1m=False)
    assert HeaderOptions.for_loader("kexec_file_load") == HeaderOptions(cpu_notes="possible", cut_low_1m=True)
    snap = host()
    kernel_like = ElfCoreHeader.build(snap, HeaderOptions.for_loader("kexec_file_load"))
    assert kernel_like.ram_ranges[0] == PhysRange(0x100000, 0xC0000000)


def test_settings_follow_the_loader_unless_set() -> None:
    # The one rule Updater.header_options and the fast path's requests use.
    auto = UpdaterSettings()
    assert HeaderOptions.for_settings(auto, "kexec_load") == HeaderOptions.for_loader("kexec_load")
    assert HeaderOptions.for_settings(auto, "kernel") == HeaderOptions(cpu_notes="possible", cut_low_1m=True)
    forced = UpdaterSettings(cpu_notes="online", low_1m="cut", driver_managed=False)
    assert HeaderOptions.for_settings(forced, "kexec_load") == HeaderOptions(cpu_notes="online", cut_low_1m=True, driver_managed=False)
    assert HeaderOptions.for_settings(UpdaterSettings(low_1m="keep"), "kexec_file_load").cut_low_1m is False


def test_backup_region_offset() -> None:
    header = ElfCoreHeader.build(host(), HeaderOptions(backup_offset=0x7F000000))
    first = header.ram_phdrs[0]
    assert (first.p_paddr, first.p_offset, first.p_memsz) == (0x1000, 0x7F000000, 0x9EC00)
    assert header.ram_phdrs[1].p_offset == header.ram_phdrs[1].p_paddr


def test_driver_managed_ranges() -> None:
    snap = host()
    snap = dataclasses.replace(snap, ram=snap.ram + (RamRange(0x640000000, 0x680000000, "System RAM (virtio_mem)"),))
    assert PhysRange(0x640000000, 0x680000000) in ElfCoreHeader.build(snap).ram_ranges
    assert PhysRange(0x640000000, 0x680000000) not in ElfCoreHeader.build(snap, HeaderOptions(driver_managed=False)).ram_ranges


def test_size_refusal_and_headroom() -> None:
    snap = host()
    header = ElfCoreHeader.build(snap)
    assert segment_size_for(len(header.phdrs)) == 16 * 1024  # kexec-tools' minimum
    assert segment_size_for(len(header.phdrs), 400) == 24 * 1024
    many = dataclasses.replace(snap, ram=tuple(RamRange(i << 28, (i << 28) + (1 << 27)) for i in range(1, 400)))
    with pytest.raises(HeaderTooLargeError) as info:
        ElfCoreHeader.build(many, capacity=16 * 1024)
    assert "outgrow the segment" in str(info.value) and info.value.capacity == 16 * 1024
    assert info.value.needed == ElfCoreHeader.build(many).size > 16 * 1024
    huge = dataclasses.replace(snap, ram=tuple(RamRange(i << 20, (i << 20) + 4096) for i in range(1, 0x10000)))
    with pytest.raises(HeaderTooLargeError, match="e_phnum"):
        ElfCoreHeader.build(huge)


def test_diff_memory_hot_add_and_cpu_offline() -> None:
    before = host()
    after = dataclasses.replace(before, ram=before.ram + (RamRange(0x640000000, 0x680000000),))
    diff = diff_snapshots(before, after)
    assert diff.ranges_added == (PhysRange(0x640000000, 0x680000000),) and not diff.ranges_removed
    assert "+1 range(s) 1 GiB" in diff.describe() and not diff.empty
    assert diff_snapshots(after, before).ranges_removed == diff.ranges_added
    # cpu1 offline (captured): present notes do not change, online notes do.
    offline = read_snapshot(str(OFFLINE))
    assert diff_snapshots(before, offline).empty
    online_diff = diff_snapshots(before, offline, HeaderOptions(cpu_notes="online"))
    assert online_diff.cpus_removed == (1,) and online_diff.bytes_equal and not online_diff.empty
    first = diff_headers(None, ElfCoreHeader.build(before))
    assert len(first.ranges_added) == 3 and not first.empty


def test_note_moved_is_a_change() -> None:
    a = with_notes(host())
    b = dataclasses.replace(a, cpu_notes=(a.cpu_notes[0], CpuNote(1, 0x300000000, 0x1A8), a.cpu_notes[2]))
    diff = diff_snapshots(a, b)
    assert diff.notes_moved == (1,) and not diff.empty


def test_parse_refuses_non_headers() -> None:
    with pytest.raises(SnapshotError, match="ELF64"):
        ElfCoreHeader.parse(b"\x7fELF\x01" + bytes(80))
    data = bytearray(ElfCoreHeader.build(host()).to_bytes())
    data[56:58] = (500).to_bytes(2, "little")  # e_phnum beyond the buffer
    with pytest.raises(SnapshotError, match="do not fit"):
        ElfCoreHeader.parse(bytes(data))
