"""Issue 5, scenario 1: kexec-tools' `kexec -p` in a real guest, a real panic, a real capture.

The baseline proves the harness sees what the capture kernel sees (boot RAM,
one CPU note per online CPU); the negative control proves it sees a stale
header: a DIMM hot-added after the load is missing from the vmcore.
"""

from __future__ import annotations

import pytest

from .conftest import BootGuest
from testbed.harness import GIB, GuestConfig, KexecMode, crash_kernel, merge_ranges, subtract_range, system_ram

pytestmark = pytest.mark.vm


# On 6.12 too: plain `kexec -p` (kexec_load without KEXEC_UPDATE_ELFCOREHDR) is
# an image the kernel does not update (crash_hotplug reads 0), so the header
# goes stale there as well: what Debian's kdump-tools loads on a 6.12 host.
@pytest.mark.kernels("6.1", "6.12")
def test_baseline_and_stale_header_misses_hot_added_dimm(boot_guest: BootGuest) -> None:
    """The baseline (boot RAM, one CPU note per online CPU, no crash region) and the negative
    control in one capture: hot-add 1 GiB after `kexec -p`, no reload: the vmcore lacks it.

    This guest boots Debian's vmlinuz as a host does (BIOS, the bzImage decompressing itself);
    the rest of the tier enters the same kernel through PVH (GuestConfig.boot)."""
    g = boot_guest(GuestConfig(boot="bzimage"))
    assert g.boot_kernel() == g.assets.kernel
    iomem = g.iomem()
    ram = subtract_range(merge_ranges(system_ram(iomem)), crash_kernel(iomem))
    assert ram, iomem
    cpus = g.online_cpus()
    g.kexec_load_crash("kexec_load")
    dimm = g.hotplug_dimm(GIB)
    assert (dimm.addr, dimm.size) == (4 * GIB, GIB)
    # The guest really has it: System RAM, online blocks.
    assert any(s <= dimm.addr and dimm.end <= e for s, e in merge_ranges(system_ram(g.iomem())))
    cap = g.crash_and_capture()
    vmcore = cap.vmcore
    print(f"boot {g.boot_seconds:.1f}s, crash+capture {cap.seconds:.1f}s: {vmcore.describe()}")
    assert "elfcorehdr=" in cap.cmdline
    for start, end in ram:
        assert vmcore.covers(start, end), f"System RAM {start:#x}-{end - 1:#x} missing: {vmcore.describe()}"
    ck = crash_kernel(iomem)
    assert ck is not None and not vmcore.overlaps(*ck), f"the crash kernel region is in the vmcore: {vmcore.describe()}"
    assert vmcore.cpu_notes == len(cpus) == 2, vmcore.describe()
    assert vmcore.has_vmcoreinfo
    assert not vmcore.overlaps(dimm.addr, dimm.end), f"a stale header listed the DIMM: {vmcore.describe()}"


@pytest.mark.parametrize("mode", ["kexec_load", "kexec_file_load"])
def test_reload_after_dimm_hot_add_lists_it(boot_guest: BootGuest, mode: KexecMode) -> None:
    """Positive control: the same hot-add followed by a kexec-tools reload is in the vmcore.

    Together with the negative control this shows the capture distinguishes a
    fresh header from a stale one, for both load paths (kexec_file_load builds
    the header in the kernel, ``arch/x86/kernel/crash.c``).
    """
    g = boot_guest()
    g.kexec_load_crash(mode)
    dimm = g.hotplug_dimm(GIB)
    g.kexec_load_crash(mode)
    cap = g.crash_and_capture()
    print(f"{mode} reloaded: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2


def test_reload_after_dimm_hot_remove_drops_it(boot_guest: BootGuest) -> None:
    """Hot-remove through QMP (device_del: the guest offlines and ejects), reload: the vmcore no longer lists it."""
    g = boot_guest()
    dimm = g.hotplug_dimm(GIB)
    g.kexec_load_crash("kexec_load")
    g.unplug_dimm(dimm)
    assert not any(s < dimm.end and dimm.addr < e for s, e in system_ram(g.iomem()))
    g.kexec_load_crash("kexec_load")
    cap = g.crash_and_capture()
    assert not cap.vmcore.overlaps(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.covers(0x100000, 0x1000000) and cap.vmcore.cpu_notes == 2
