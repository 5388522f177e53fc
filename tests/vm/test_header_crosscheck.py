"""Issue 5, scenario 7: kdump-coalesce's header builder against the header the capture kernel really got.

In the guest, after a DIMM and a CPU hot-add: the project's builder makes the
elfcorehdr from the live snapshot (``updater.read_snapshot`` +
``ElfCoreHeader.build``), then kexec-tools (``kexec -p``) or the kernel
(``kexec -s -p``) loads its own, the guest panics and the capture kernel's
/proc/vmcore is compared with the builder's output, range for range and note
for note.

Allowed differences (documented, not hidden):
- /proc/vmcore rewrites p_offset (``fs/proc/vmcore.c``) and merges all PT_NOTEs
  into one: PT_LOADs are compared on (p_paddr, p_memsz, p_vaddr), notes by
  count: the builder's CPU PT_NOTEs against the NT_PRSTATUS notes in the
  merged segment, and a VMCOREINFO note in both.
- kexec_file_load lists a note for every *possible* CPU; /proc/vmcore keeps
  only notes a CPU actually wrote at the panic (the online ones).
"""

from __future__ import annotations

import struct

import pytest

from .conftest import BootGuest
from testbed.harness import GIB, GUEST_XFER, VENV, KexecMode

pytestmark = pytest.mark.vm

BUILD = """
import sys
from updater import ElfCoreHeader, HeaderOptions, read_snapshot
h = ElfCoreHeader.build(read_snapshot(), HeaderOptions.for_loader(sys.argv[1]))
open(sys.argv[2], "wb").write(h.to_bytes())
"""


def _phdrs(data: bytes) -> list[tuple[int, int, int, int]]:
    """(p_type, p_paddr, p_memsz, p_vaddr) of a bare elfcorehdr (no notes in the buffer)."""
    assert data[:4] == b"\x7fELF", data[:16]
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    out = []
    for i in range(phnum):
        p_type, _f, _off, vaddr, paddr, _fs, memsz, _al = struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i)
        out.append((p_type, paddr, memsz, vaddr))
    return out


def _fmt(loads: list[tuple[int, int, int]]) -> list[str]:
    return [f"{p:#x}+{m:#x}@{v:#x}" for p, m, v in loads]


@pytest.mark.parametrize("load_path", ["kexec_load", "kexec_file_load"])
def test_builder_matches_capture_kernel(boot_guest: BootGuest, load_path: KexecMode) -> None:
    g = boot_guest()
    dimm = g.hotplug_dimm(GIB)
    g.hotplug_cpu(online=True)
    online = g.online_cpus()
    assert len(online) == 3
    (g.xfer / "build_header.py").write_text(BUILD)
    g.run_host(f"{VENV}/bin/python {GUEST_XFER}/build_header.py {load_path} {GUEST_XFER}/built.hdr", timeout=120)
    built = _phdrs((g.xfer / "built.hdr").read_bytes())
    g.kexec_load_crash(load_path)
    vmcore = g.crash_and_capture().vmcore

    built_loads = sorted((p, m, v) for t, p, m, v in built if t == 1)
    seen_loads = sorted((s.paddr, s.memsz, s.vaddr) for s in vmcore.loads)
    assert built_loads == seen_loads, f"builder {_fmt(built_loads)}\ncapture {_fmt(seen_loads)}"
    assert any(p <= dimm.addr and dimm.end <= p + m for p, m, _v in built_loads)

    built_notes = sum(1 for t, *_ in built if t == 4)
    assert vmcore.has_vmcoreinfo
    assert vmcore.cpu_notes == len(online), vmcore.describe()
    if load_path == "kexec_load":
        assert built_notes == len(online) + 1, f"builder: {built_notes} PT_NOTEs, want {len(online)} CPUs + vmcoreinfo"
    else:
        assert built_notes >= len(online) + 1
