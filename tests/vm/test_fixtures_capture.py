"""The fixture capture (tools/vm/capture-fixtures) works and gets what other tests rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures_capture import capture_fixtures
from testbed.harness import GIB, VmAssets, iomem_entries, system_ram, uevent_fields
from testbed.vmcore import parse_vmcore_header

pytestmark = pytest.mark.vm

DIMM = (4 * GIB, 5 * GIB)


def _ram(path: Path) -> list[tuple[int, int]]:
    return system_ram(path.read_text())


def test_fixtures_capture(vm_assets: VmAssets, tmp_path: Path) -> None:
    captured = capture_fixtures(vm_assets, tmp_path)
    names = {c.path for c in captured}
    assert (tmp_path / "README.md").is_file()
    assert all((tmp_path / n).is_file() for n in names)

    assert DIMM in _ram(tmp_path / "iomem.after-dimm-1g")
    assert DIMM not in _ram(tmp_path / "iomem.boot")
    assert any(n == "Crash kernel" for _d, _s, _e, n in iomem_entries((tmp_path / "iomem.boot").read_text()))
    assert int((tmp_path / "block_size_bytes").read_text(), 16) == 128 << 20
    assert (tmp_path / "kexec_crash_loaded.before-load").read_text().strip() == "0"
    assert (tmp_path / "kexec_crash_loaded.after-load").read_text().strip() == "1"
    for cpu in (0, 1, 2):
        assert int((tmp_path / f"cpu{cpu}.crash_notes").read_text(), 16) > 0
        assert int((tmp_path / f"cpu{cpu}.crash_notes_size").read_text()) > 0

    mem = [uevent_fields(p.read_bytes()) for p in sorted((tmp_path / "uevents/memory-hot-add-1g").glob("*.bin"))]
    mem = [f for f in mem if f.get("SUBSYSTEM") == "memory"]
    assert sorted(f["ACTION"] for f in mem) == ["add"] * 8 + ["online"] * 8, mem
    rm = [uevent_fields(p.read_bytes()) for p in sorted((tmp_path / "uevents/memory-hot-remove-1g").glob("*.bin"))]
    rm = [f for f in rm if f.get("SUBSYSTEM") == "memory"]
    assert sorted(f["ACTION"] for f in rm) == ["offline"] * 8 + ["remove"] * 8, rm
    assert DIMM not in _ram(tmp_path / "iomem.after-dimm-1g-remove")
    cpu_events = [uevent_fields(p.read_bytes()) for p in sorted((tmp_path / "uevents/cpu-hot-add-online").glob("*.bin"))]
    assert {(f.get("SUBSYSTEM"), f.get("ACTION")) for f in cpu_events} >= {("cpu", "add"), ("cpu", "online")}, cpu_events

    boot = parse_vmcore_header((tmp_path / "vmcore-head.boot.bin").read_bytes())
    after_dimm = parse_vmcore_header((tmp_path / "vmcore-head.after-dimm-1g-reload.bin").read_bytes())
    after_cpu = parse_vmcore_header((tmp_path / "vmcore-head.after-cpu-hot-add-load.bin").read_bytes())
    assert not boot.overlaps(*DIMM) and after_dimm.covers(*DIMM)
    assert (boot.cpu_notes, after_dimm.cpu_notes, after_cpu.cpu_notes) == (2, 2, 3)
    assert after_cpu.note_bytes > boot.note_bytes


def test_checked_in_fixtures_are_from_a_real_capture() -> None:
    """The checked-in files parse the way the live capture does (no VM needed)."""
    d = Path(__file__).resolve().parents[1] / "fixtures" / "vm"
    boot = parse_vmcore_header((d / "vmcore-head.boot.bin").read_bytes())
    after = parse_vmcore_header((d / "vmcore-head.after-dimm-1g-reload.bin").read_bytes())
    assert boot.cpu_notes == 2 and boot.has_vmcoreinfo and not boot.overlaps(*DIMM)
    assert after.covers(*DIMM)
    assert DIMM in _ram(d / "iomem.after-dimm-1g")
