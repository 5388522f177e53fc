"""Issue 5, scenarios 2-6: `kdump-coalesce run --backend kexec` in the guest with its live event sources.

Each test: kdump loaded at boot with kexec-tools (as a distro would), the
daemon started in the background (``Guest.start_daemon``) and ready, real
hotplug through QMP, the daemon's reloads read from its trace file, then a real
panic and the capture kernel's /proc/vmcore checked.  Each prints (and appends
to ``$KDC_VM_REPORT``) reloads, per-reload window, time from the last hotplug
action to kdump correct again (host clock, an upper bound: the trace is polled
every 0.25 s) and wall time.

Time to correct is measured from when the host saw the hotplug done (all
blocks System RAM, DEVICE_DELETED, CPU online): the daemon's clocks (trio's
has a random offset) cannot be compared with the event timestamps.
"""

from __future__ import annotations

import re
import time

import pytest

from .conftest import BootGuest
from testbed.daemon import kexec_daemon_args, report
from testbed.harness import GIB, Guest, GuestConfig, GuestDaemon, KexecMode, TraceLog

pytestmark = pytest.mark.vm

# The coalescer's defaults ([coalescer] in kdump-coalesce run --help):
# removals close a batch within urgent-max-delay (5 s); a kexec -p under TCG
# takes ~1.2 s, Python in the guest is slow: allow as much again.
URGENT_MAX_DELAY_S = 5.0
SLACK_S = 5.0


def _start(g: Guest, load_path: KexecMode = "kexec_load") -> GuestDaemon:
    g.kexec_load_crash(load_path)
    return g.start_daemon(
        kexec_daemon_args(g.assets, load_path=load_path), ready=lambda t: t.ready, ready_timeout=180
    )


def _wait_reload(d: GuestDaemon, since: float, timeout: float = 120.0) -> tuple[TraceLog, float]:
    """Wait for a batch reload that succeeded; then for the trace to go quiet.  Returns (trace, time to correct)."""
    d.wait(lambda t: any(r.result == "ok" for r in t.reloads_after_ready()), timeout, "a reload after the hotplug")
    to_correct = time.monotonic() - since
    return d.wait_quiet(3.0, 60.0), to_correct


# On 6.12 too: the daemon's BPF sources on the other kernel's memory notifier
# and headers, and a per-batch reload where the kernel could update the
# header itself (`--backend kexec` is asked for).  kexec_load only: the
# daemon's batch reloads through kexec_file_load, with a panic, are matrix
# row 2's and test_daemon_kexec_backend.py's (this case ran here until the
# suite had to fit in 45 minutes).
@pytest.mark.kernels("6.1", "6.12")
@pytest.mark.parametrize("load_path", ["kexec_load"])
def test_memory_hot_add_one_reload(boot_guest: BootGuest, load_path: KexecMode) -> None:
    """Scenarios 2 and 6: a 1 GiB DIMM (8 blocks) gives exactly one reload; BPF saw the memory events."""
    g = boot_guest()
    d = _start(g, load_path)
    t0 = time.monotonic()
    dimm = g.hotplug_dimm(GIB)
    trace, to_correct = _wait_reload(d, time.monotonic())
    report(f"memory-hot-add-1g/{load_path}", trace, wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s)
    after = trace.reloads_after_ready()
    assert [r.result for r in after] == ["ok"], [r.record for r in after]
    mem = [e for e in trace.events if e.kind == "memory"]
    assert mem, "no memory events in the trace"
    # kprobes/fentry exist in this guest: the memory onlines must come from
    # BPF (online_pages; no uevent source follows them when BPF does).  The
    # adds are followed by BPF (add_memory_resource) and by the add uevents
    # beside it, counted once (docs/probes.md "Counted once": the first copy
    # is kept, and the kernel sends the uevent before add_memory_resource
    # returns): each of the DIMM's blocks is added exactly once, and the BPF
    # add probe is attached.
    online = [e for e in mem if e.action == "online"]
    assert online and {e.source for e in online} == {"bpf"}, {(e.action, e.source) for e in mem}
    block = int(g.read_text("/sys/devices/system/memory/block_size_bytes").strip(), 16)
    adds = sorted(e.start for e in mem if e.action == "add" and e.start is not None)
    assert adds == list(range(dimm.addr, dimm.end, block)), [(e.action, e.source, e.start) for e in mem]
    assert re.search(r"bpf: memory add/remove: \S+ on add_memory_resource", d.log()), d.log()[-2000:]
    cap = g.crash_and_capture()
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2


def test_memory_burst_at_most_two_reloads(boot_guest: BootGuest) -> None:
    """Scenario 3: 8 GiB as 8 DIMMs in quick succession: at most 2 reloads, every block in the vmcore."""
    g = boot_guest(GuestConfig(slots=8, maxmem_gib=16))
    d = _start(g)
    t0 = time.monotonic()
    dimms = [g.hotplug_dimm(GIB, wait_online=False) for _ in range(8)]
    for dimm in dimms:
        g.wait_memory_online(dimm.addr, dimm.end)
    trace, to_correct = _wait_reload(d, time.monotonic())
    report("memory-burst-8x1g", trace, wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s)
    after = trace.reloads_after_ready()
    assert 1 <= len(after) <= 2 and all(r.result == "ok" for r in after), [r.record for r in after]
    cap = g.crash_and_capture()
    for dimm in dimms:
        assert cap.vmcore.covers(dimm.addr, dimm.end), f"{dimm}: {cap.vmcore.describe()}"


def test_cpu_hot_add_one_reload(boot_guest: BootGuest) -> None:
    """Scenario 4: a CPU hot-added and onlined: one reload, one more CPU note in the vmcore."""
    g = boot_guest()
    d = _start(g)
    t0 = time.monotonic()
    cpu = g.hotplug_cpu(online=True)
    trace, to_correct = _wait_reload(d, time.monotonic())
    report("cpu-hot-add", trace, wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s)
    after = trace.reloads_after_ready()
    assert [r.result for r in after] == ["ok"], [r.record for r in after]
    assert any(e.kind == "cpu" and e.cpu == cpu for e in trace.events), trace.events
    cap = g.crash_and_capture()
    assert cap.vmcore.cpu_notes == 3, cap.vmcore.describe()


def test_memory_hot_remove_prompt_reload(boot_guest: BootGuest) -> None:
    """Scenario 5: offline + device_del a DIMM: an urgent reload, the vmcore no longer lists it, the capture completes."""
    g = boot_guest()
    dimm = g.hotplug_dimm(GIB)
    d = _start(g)
    t0 = time.monotonic()
    g.unplug_dimm(dimm)
    trace, to_correct = _wait_reload(d, time.monotonic())
    report("memory-hot-remove-1g", trace, wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s)
    after = trace.reloads_after_ready()
    # Under TCG the ACPI eject offlines the 8 blocks further apart than the
    # urgent quiet period, so the offline events may close batches of their
    # own; those are skipped (an offline block is still System RAM in
    # /proc/iomem until it is removed: events are hints, the state decides).
    assert any(r.result == "ok" for r in after), [r.record for r in after]
    assert not [r for r in after if r.result == "failed"], [r.record for r in after]
    assert any(b.get("urgent") for b in trace.batches_after_ready()), trace.batches
    assert to_correct < URGENT_MAX_DELAY_S + SLACK_S, f"{to_correct:.1f}s from removal to a correct kdump"
    cap = g.crash_and_capture()
    assert not cap.vmcore.overlaps(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2
