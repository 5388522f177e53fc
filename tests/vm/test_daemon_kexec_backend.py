"""kdump-coalesce itself in the guest, kexec backend, against a real kernel and a real capture.

These run today with a finite synthetic event source: what a batch loads is
computed from the live state, so the proof is the vmcore, not the events.
The live-source scenarios of issue 5 (2-7) are in test_scenarios_live.py.

Only the kexec_file_load path runs here: the same repair through kexec_load
is row 6 of the hotplug matrix (start-up reconciliation before READY, with
a panic), and every other daemon test of the tier loads that way too.  This
test also checks what the guest's chroot gives the project (its kernel's
headers for BCC, the venv from the 9p root), which every daemon test relies
on: a broken harness fails here with that said.
"""

from __future__ import annotations

import time

import pytest

from .conftest import BootGuest
from testbed.daemon import kexec_daemon_args, report
from testbed.harness import GIB, GUEST_XFER, VENV, KexecMode, parse_trace

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("load_path", ["kexec_file_load"])
def test_daemon_repairs_stale_header(boot_guest: BootGuest, load_path: KexecMode) -> None:
    """kdump loaded at boot, a DIMM hot-added behind its back: the daemon's run reloads; the vmcore has the DIMM."""
    g = boot_guest()
    assert g.run_host("uname -r").text.strip() == g.assets.kernel_release
    # The chroot has what BCC needs: the guest kernel's own headers; the venv is the checkout's.
    assert g.run_host("readlink /lib/modules/$(uname -r)/build").text.strip() == str(g.assets.headers)
    imp = g.run_host(f"{VENV}/bin/python -c 'import trio, kdump_coalesce.cli; print(kdump_coalesce.__file__)'")
    assert imp.text.strip().startswith(str(VENV.parent)), imp.text
    g.kexec_load_crash(load_path)
    dimm = g.hotplug_dimm(GIB)
    t0 = time.monotonic()
    # The 8 online events of this very DIMM, then end of input: the daemon
    # reconciles, folds the burst into one batch and exits.
    args = kexec_daemon_args(
        g.assets, load_path=load_path, source=f"scenario:resize:4G:5G:base={dimm.addr:#x}"
    )
    trace_file = f"{GUEST_XFER}/trace.jsonl"
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    run = g.run_host(f"{VENV}/bin/kdump-coalesce {quoted} --trace-file {trace_file}", timeout=300, check=False)
    wall = time.monotonic() - t0
    trace = parse_trace((g.xfer / "trace.jsonl").read_text())
    assert run.rc == 0, run.text[-3000:]
    report(f"stale-header-repair/{load_path}", trace, wall_s=wall, time_to_correct_s=None)
    assert trace.reloads_ok(), run.text[-3000:]
    assert not [r for r in trace.reloads if r.result == "failed"], trace.reloads
    assert {r.backend for r in trace.reloads} == {"kexec"}
    assert len(trace.batches) == 1
    assert g.sysfs_flag("/sys/kernel/kexec_crash_loaded") == 1
    cap = g.crash_and_capture()
    print(f"{load_path}: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2
