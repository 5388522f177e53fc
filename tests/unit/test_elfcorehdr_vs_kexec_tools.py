"""Our header against the one kexec-tools 2.0.25 built, on real guest inputs.

tests/fixtures/vm holds what a Debian 6.1 guest (KASLR on, crashkernel=256M)
showed: /proc/iomem, the /proc/kcore program headers, crash notes, vmcoreinfo;
and what its capture kernel served in /proc/vmcore after ``kexec -p``.  The
capture kernel keeps each PT_LOAD's p_paddr, p_vaddr, p_memsz and p_flags from
the header kexec-tools loaded (it rewrites p_offset and merges the PT_NOTEs
into one), so those fields must match ours exactly.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from updater import ElfCoreHeader, HeaderOptions, SystemSnapshot, read_snapshot
from updater._elfcorehdr import PT_LOAD, PT_NOTE
from updater._snapshot import DEFAULT_PAGE_OFFSET

VM = Path(__file__).parent.parent / "fixtures" / "vm"

def guest_tree(root: Path, state: str, cpus: tuple[int, ...] = (0, 1)) -> Path:
    """Lay the flat VM fixture files out as the /proc and /sys tree
    read_snapshot reads."""
    files = {
        "proc/iomem": f"iomem.{state}",
        "proc/kcore": f"kcore-head.{state}.bin",
        "sys/devices/system/cpu/present": f"cpu-present.{state}",
        "sys/devices/system/cpu/online": f"cpu-online.{state}",
        "sys/devices/system/cpu/possible": f"cpu-possible.{state}",
        "sys/kernel/vmcoreinfo": "vmcoreinfo",
        "sys/devices/system/memory/block_size_bytes": "block_size_bytes",
        "sys/kernel/kexec_crash_loaded": "kexec_crash_loaded.after-load",
        "sys/kernel/kexec_crash_size": "kexec_crash_size",
        "UNAME": "uname-r",
    }
    for cpu in cpus:
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes"] = f"cpu{cpu}.crash_notes"
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes_size"] = f"cpu{cpu}.crash_notes_size"
    for dest, src in files.items():
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(VM / src, root / dest)
    return root


def vmcore_loads(name: str) -> list[tuple[int, int, int, int]]:
    header = ElfCoreHeader.parse((VM / name).read_bytes(), name)
    return [(p.p_flags, p.p_vaddr, p.p_paddr, p.p_memsz) for p in header.phdrs if p.p_type == PT_LOAD]


def vmcore_note_counts(name: str) -> tuple[int, int]:
    """(NT_PRSTATUS notes, VMCOREINFO notes) in the merged PT_NOTE."""
    data = (VM / name).read_bytes()
    header = ElfCoreHeader.parse(data, name)
    (note,) = [p for p in header.phdrs if p.p_type == PT_NOTE]
    body = data[note.p_offset : note.p_offset + note.p_filesz]
    prstatus = vmcoreinfo = 0
    off = 0
    while off + 12 <= len(body):
        namesz, descsz, ntype = struct.unpack_from("<III", body, off)
        if namesz == 0:
            break
        name_ = body[off + 12 : off + 12 + namesz].rstrip(b"\0")
        prstatus += name_ == b"CORE" and ntype == 1
        vmcoreinfo += name_ == b"VMCOREINFO"
        off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return prstatus, vmcoreinfo


def kexec_tools_page_offset(name: str) -> int:
    """The direct-map base kexec-tools used: vaddr - paddr of its RAM PT_LOADs
    (every one but the kernel text's, which lives in __START_KERNEL_map)."""
    offsets = {vaddr - paddr for _flags, vaddr, paddr, _size in vmcore_loads(name) if vaddr < 0xFFFFFFFF80000000}
    (offset,) = offsets
    return offset


def ours(snap: SystemSnapshot) -> ElfCoreHeader:
    return ElfCoreHeader.build(snap, HeaderOptions.for_loader("kexec_load"))


def test_guest_snapshot_is_complete(tmp_path: Path) -> None:
    snap = read_snapshot(str(guest_tree(tmp_path, "after-dimm-1g")))
    assert snap.missing == ()
    assert snap.kernel_release == "6.1.0-56-amd64"
    assert [(n.cpu, n.size) for n in snap.cpu_notes] == [(0, 368), (1, 368)]
    # KASLR'd direct map: kexec-tools' header maps RAM at vaddr = page_offset + paddr.
    assert snap.page_offset == kexec_tools_page_offset("vmcore-head.after-dimm-1g-reload.bin")
    assert snap.page_offset != DEFAULT_PAGE_OFFSET and snap.page_offset_source == "kcore"
    assert snap.kernel_text is not None and snap.kernel_text.source == "kcore"
    assert snap.crash_kernel[0].size == snap.kexec_crash_size == 256 << 20
    assert snap.kexec_crash_loaded is True and snap.cpus_possible == tuple(range(8))


def test_pt_loads_match_kexec_tools_after_dimm_hot_add(tmp_path: Path) -> None:
    snap = read_snapshot(str(guest_tree(tmp_path, "after-dimm-1g")))
    header = ours(snap)
    mine = [(p.p_flags, p.p_vaddr, p.p_paddr, p.p_memsz) for p in header.phdrs if p.p_type == PT_LOAD]
    theirs = vmcore_loads("vmcore-head.after-dimm-1g-reload.bin")
    assert mine == theirs
    assert (0x7, snap.page_offset + 0x100000000, 0x100000000, 0x40000000) in mine  # the hot-added DIMM
    # kexec-tools wrote one PT_NOTE per present CPU plus vmcoreinfo.
    assert vmcore_note_counts("vmcore-head.after-dimm-1g-reload.bin") == (len(header.note_cpus), 1) == (2, 1)
    assert [p.p_memsz for p in header.cpu_note_phdrs] == [368, 368]


def test_boot_header_lacks_the_dimm(tmp_path: Path) -> None:
    """The header from the boot state is what a stale load keeps after the
    hot-add: the diff names exactly the DIMM."""
    boot = read_snapshot(str(guest_tree(tmp_path / "boot", "boot")))
    after = read_snapshot(str(guest_tree(tmp_path / "after", "after-dimm-1g")))
    from updater import diff_headers

    diff = diff_headers(ours(boot), ours(after))
    assert [str(r) for r in diff.ranges_added] == ["0x100000000-0x13fffffff"]
    assert not diff.ranges_removed and not diff.cpus_added


def test_cpu_hot_add_adds_one_note(tmp_path: Path) -> None:
    before = read_snapshot(str(guest_tree(tmp_path / "a", "after-dimm-1g")))
    root = guest_tree(tmp_path / "b", "after-dimm-1g", cpus=(0, 1, 2))
    shutil.copyfile(VM / "cpu-present.after-cpu-hot-add", root / "sys/devices/system/cpu/present")
    shutil.copyfile(VM / "cpu-online.after-cpu-hot-add", root / "sys/devices/system/cpu/online")
    after = read_snapshot(str(root))
    header = ours(after)
    assert header.note_cpus == (0, 1, 2)
    assert vmcore_note_counts("vmcore-head.after-cpu-hot-add-load.bin")[0] == 3
    from updater import diff_snapshots

    assert diff_snapshots(before, after, HeaderOptions.for_loader("kexec_load")).cpus_added == (2,)
