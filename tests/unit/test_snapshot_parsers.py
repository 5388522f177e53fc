"""Snapshot parsers over inputs captured from real hosts (tests/fixtures/host)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from ground.errors import InputError, NeedsRootError
from ground.ranges import PhysRange
from updater import SnapshotError, SystemSnapshot, read_snapshot
from updater._parse import (
    KcoreLoad,
    kcore_page_offset,
    kcore_text_mapping,
    parse_cpu_list,
    parse_iomem,
    parse_kcore_loads,
    parse_vmcoreinfo,
)
from updater._snapshot import DEFAULT_PAGE_OFFSET

HOST = Path(__file__).parent.parent / "fixtures" / "host"
LIVE = HOST / "live-6.18"
OFFLINE = HOST / "live-6.18-cpu1-offline"


def test_iomem_of_this_host() -> None:
    entries = parse_iomem((LIVE / "proc/iomem").read_text())
    ram = [(e.range.start, e.range.last) for e in entries if e.is_system_ram]
    assert ram == [(0x1000, 0x9FBFF), (0x100000, 0xBFFFFFFF), (0x100000000, 0x63FFFFFFF)]
    code = next(e for e in entries if e.name == "Kernel code")
    assert (code.range.start, code.depth) == (0x1000000, 1)
    assert max(e.depth for e in entries) == 2


def test_iomem_driver_managed_and_crash_kernel_nested() -> None:
    # Layouts as the kernel prints them for dax/kmem under a CXL window
    # (Linux b4afe4183ec7) and for virtio-mem (Linux 7b7b27214bba).
    text = (
        "00100000-bfffffff : System RAM\n"
        "  01000000-01ffffff : Kernel code\n"
        "  a0000000-afffffff : Crash kernel\n"
        "140000000-33fffffff : virtio0\n"
        "  140000000-147ffffff : System RAM (virtio_mem)\n"
        "490000000-50fffffff : CXL Window 0\n"
        "  490000000-50fffffff : region0\n"
        "    490000000-50fffffff : dax0.0\n"
        "      490000000-50fffffff : System RAM (kmem)\n"
    )
    entries = parse_iomem(text)
    ram = [e for e in entries if e.is_system_ram]
    assert [e.name for e in ram] == ["System RAM", "System RAM (virtio_mem)", "System RAM (kmem)"]
    assert [e.driver_managed for e in ram] == [False, True, True]
    assert ram[2].depth == 3


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("00000000-00000fff : Reserved\nthis is not iomem\n", 2, "not a resource line"),
        ("00001000-00000fff : Reserved\n", 1, "ends before it starts"),
        ("00000000-00000fff : Reserved\n   00000000-000000ff : odd\n", 2, "odd indentation"),
        ("00000000-00000fff : Reserved\n    00000000-000000ff : too deep\n", 2, "nested 2 levels"),
        ("00000000-00000fff : Reserved\n  00000000-00001fff : child\n", 2, "outside its parent"),
    ],
)
def test_malformed_iomem_names_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(SnapshotError) as info:
        parse_iomem(text, "/proc/iomem")
    assert info.value.source == f"/proc/iomem:{line}"
    assert words in str(info.value)
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)


def test_cpu_lists() -> None:
    assert parse_cpu_list("0-3,8,10-11\n", "p") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpu_list("\n", "offline") == ()
    assert parse_cpu_list((OFFLINE / "sys/devices/system/cpu/online").read_text(), "o") == (0,)
    with pytest.raises(SnapshotError, match="not a CPU list"):
        parse_cpu_list("0-x", "/sys/devices/system/cpu/online")
    with pytest.raises(SnapshotError, match="descending"):
        parse_cpu_list("3-1", "/sys/devices/system/cpu/online")


def test_vmcoreinfo_size_is_hex() -> None:
    # "%pa %x": the captured "0x0000000100c66000 1024" is 0x1024 = 4132 bytes.
    assert parse_vmcoreinfo((LIVE / "sys/kernel/vmcoreinfo").read_text()) == (0x100C66000, 0x1024)
    with pytest.raises(SnapshotError, match="ADDR SIZE"):
        parse_vmcoreinfo("0x1000\n", "/sys/kernel/vmcoreinfo")


def _kcore(loads: list[tuple[int, int, int]]) -> bytes:
    """A synthetic /proc/kcore front: ELF64 core header, one PT_NOTE, PT_LOADs."""
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, 0x1000, 0, 0, 0x100, 0, 0)]
    phdrs += [struct.pack("<IIQQQQQQ", 1, 7, 0x2000, v, p, m, m, 0x1000) for v, p, m in loads]
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 4, 62, 1, 0, 64, 0, 0, 64, 56, len(phdrs), 0, 0, 0)
    return ehdr + b"".join(phdrs)


def test_kcore_page_offset_and_text_mapping() -> None:
    data = _kcore(
        [
            (0xFFFFFFFF81000000, 0x1000000, 0x2C00000),  # kernel text (_text.._end)
            (0xFFFF9ABC00001000, 0x1000, 0x9F000),  # direct map, randomized base
            (0xFFFF9ABC00100000, 0x100000, 0xBFF00000),
            (0xFFFFC90000000000, 0, 0x1000000),  # vmalloc
        ]
    )
    loads = parse_kcore_loads(data)
    assert len(loads) == 4
    assert kcore_page_offset(loads) == 0xFFFF9ABC00000000
    assert kcore_text_mapping(loads, 0xFFFFFFFF81000000) == (0xFFFFFFFF81000000, 0x2C00000)
    # Without _stext: the PT_LOAD inside the kernel text map, as kexec-tools falls back to.
    assert kcore_text_mapping(loads, None) == (0xFFFFFFFF81000000, 0x2C00000)
    with pytest.raises(SnapshotError, match="program headers end"):
        parse_kcore_loads(data[:100])


def test_kcore_text_mapping_beyond_512m_found_by_kernel_code_paddr() -> None:
    # KASLR put the text 0x3bc00000 above __START_KERNEL_map (the VM
    # fixture's boot): outside kexec-tools' 512 MiB fallback window.
    text = KcoreLoad(vaddr=0xFFFFFFFFBBC00000, paddr=0x2DC00000, memsz=0x3430000)
    direct = KcoreLoad(vaddr=0xFFFF8B1980100000, paddr=0x100000, memsz=0x3FEE0000)
    loads = (text, direct)
    assert kcore_text_mapping(loads, None) is None
    assert kcore_text_mapping(loads, None, code_paddr=0x2DC00000) == (0xFFFFFFFFBBC00000, 0x3430000)
    assert kcore_text_mapping(loads, None, code_paddr=0x1000) is None


def test_live_host_snapshot_says_what_is_missing() -> None:
    snap = read_snapshot(str(LIVE))
    assert snap.kernel_release == "6.18.44-fc-v669"
    assert snap.cpus_present == snap.cpus_online == (0, 1)
    assert snap.cpu_notes == ()
    assert snap.vmcoreinfo == (0x100C66000, 0x1024)
    assert snap.block_size == 128 << 20
    assert snap.page_offset == DEFAULT_PAGE_OFFSET and "no /proc/kcore" in snap.page_offset_source
    assert snap.kernel_text is not None and snap.kernel_text.source == "kallsyms+iomem"
    assert (snap.kernel_text.paddr, snap.kernel_text.vaddr) == (0x1000000, 0xFFFFFFFF81000000)
    assert snap.kexec_crash_loaded is None and not snap.can_kexec
    missing = dict((m.path, m.consequence) for m in snap.missing)
    assert set(missing) == {"/sys/devices/system/cpu/cpuN/crash_notes", "/proc/kcore", "/sys/kernel/kexec_crash_loaded"}
    assert "CPU notes omitted" in missing["/sys/devices/system/cpu/cpuN/crash_notes"]
    assert snap.dump_ranges() == (PhysRange(0x1000, 0xA0000 - 0x400), PhysRange(0x100000, 0xC0000000), PhysRange(0x100000000, 0x640000000))


def test_dump_ranges_cut_crash_kernel_and_low_1m() -> None:
    snap = dataclasses.replace(read_snapshot(str(LIVE)), crash_kernel=(PhysRange(0xA0000000, 0xB0000000),))
    assert snap.dump_ranges()[1:3] == (PhysRange(0x100000, 0xA0000000), PhysRange(0xB0000000, 0xC0000000))
    cut = snap.dump_ranges(cut_low_1m=True)
    assert cut[0] == PhysRange(0x100000, 0xA0000000)
    assert all(r.start >= 1 << 20 for r in cut)


def test_ram_handed_back_by_a_crash_region_shrink_is_listed_once() -> None:
    # After `echo $((128<<20)) > /sys/kernel/kexec_crash_size` on the VM guest
    # (crashkernel=256M at 0x1d000000), /proc/iomem reads:
    #   00100000-3ffdffff : System RAM
    #     1d000000-24ffffff : Crash kernel
    #     25000000-2cffffff : System RAM      <- the freed half, nested
    from updater._snapshot import RamRange

    base = read_snapshot(str(LIVE))
    snap = dataclasses.replace(
        base,
        ram=(RamRange(0x1000, 0x9FC00), RamRange(0x100000, 0x3FFE0000), RamRange(0x25000000, 0x2D000000)),
        crash_kernel=(PhysRange(0x1D000000, 0x25000000),),
    )
    ranges = snap.dump_ranges()
    assert ranges == (PhysRange(0x1000, 0x9FC00), PhysRange(0x100000, 0x1D000000), PhysRange(0x25000000, 0x3FFE0000))
    assert all(a.end <= b.start for a, b in zip(ranges, ranges[1:]))  # no overlapping PT_LOADs


def test_snapshot_json_round_trip(tmp_path: Path) -> None:
    snap = read_snapshot(str(LIVE))
    path = tmp_path / "snap.json"
    snap.save(path)
    again = SystemSnapshot.load(path)
    assert again == snap
    assert again.to_json() == snap.to_json()
    path.write_text(json.dumps({"format": 1, "kernel_release": "x"}))
    with pytest.raises(SnapshotError, match="not a snapshot"):
        SystemSnapshot.load(path)
    path.write_text("{\n nope")
    with pytest.raises(SnapshotError) as info:
        SystemSnapshot.load(path)
    assert info.value.source == f"{path}:2"


def test_malformed_captured_tree_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "host"
    shutil.copytree(LIVE, root)
    (root / "sys/devices/system/cpu/present").write_text("0-one\n")
    with pytest.raises(SnapshotError) as info:
        read_snapshot(str(root))
    assert info.value.source == f"{root}/sys/devices/system/cpu/present:1"


def test_unprivileged_iomem_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "host"
    shutil.copytree(LIVE, root)
    lines = (root / "proc/iomem").read_text().splitlines()
    zeroed = [ln[: len(ln) - len(ln.lstrip())] + "00000000-00000000 : " + ln.split(" : ", 1)[1] for ln in lines]
    (root / "proc/iomem").write_text("\n".join(zeroed) + "\n")
    with pytest.raises(NeedsRootError, match="iomem"):
        read_snapshot(str(root))


# -- /sys/kernel/kexec_crash_size under someone else's load -----------------------


def _busy_open(monkeypatch: pytest.MonkeyPatch, busy_reads: int) -> list[str]:
    """kexec_crash_size fails with EBUSY ``busy_reads`` times (a load holds the kexec lock)."""
    import builtins
    import errno

    import updater._snapshot as snapshot_module

    real_open = builtins.open
    seen: list[str] = []

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("sys/kernel/kexec_crash_size"):
            seen.append(str(path))
            if len(seen) <= busy_reads:
                raise OSError(errno.EBUSY, "Device or resource busy")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(snapshot_module, "open", fake_open, raising=False)
    monkeypatch.setattr(snapshot_module, "KEXEC_LOCK_POLL_S", 0.001)
    return seen


def test_kexec_crash_size_busy_is_waited_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_fastpath_backend import write_root
    from updater._snapshot import kexec_lock_held

    root = str(write_root(tmp_path / "root"))
    seen = _busy_open(monkeypatch, busy_reads=3)
    assert kexec_lock_held(root)
    snap = read_snapshot(root)
    assert snap.kexec_crash_size == 0x10000000 and len(seen) == 4  # the probe and 2 reads busy, then it reads
    assert not kexec_lock_held(root)


def test_kexec_crash_size_busy_past_the_wait_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_fastpath_backend import write_root

    root = str(write_root(tmp_path / "root"))
    _busy_open(monkeypatch, busy_reads=10**9)
    monkeypatch.setattr("updater._snapshot.KEXEC_LOCK_WAIT_S", 0.05)
    with pytest.raises(SnapshotError, match=r"kexec_crash_size: busy for 0 s: a kexec load holds the kexec lock"):
        read_snapshot(root)


def test_kexec_crash_size_not_ascii_is_a_snapshot_error(tmp_path: Path) -> None:
    from tests.unit.test_fastpath_backend import write_root

    root = write_root(tmp_path / "root")
    (root / "sys/kernel/kexec_crash_size").write_bytes(b"\xff\xfe\n")
    with pytest.raises(SnapshotError, match=r"kexec_crash_size: not ASCII text"):
        read_snapshot(str(root))
