"""Issue 14: kdump-coalesce on a kernel that updates the elfcorehdr itself (Debian 6.12, CONFIG_CRASH_HOTPLUG).

Five proofs on the bookworm-backports 6.12 guest, each ending in a real panic
and the capture kernel's /proc/vmcore checked against what the guest had:

(a) stand aside: an image loaded with ``kexec -s -p`` (crash_hotplug reads 1):
    ``run --backend auto`` picks ``kernel`` and loads nothing through DIMM and
    CPU hot-add; the kernel's own updates make the vmcore right;
(b) hand-over: a plain ``kexec -p`` image (crash_hotplug 0): auto makes ONE
    kexec_load with KEXEC_UPDATE_ELFCOREHDR, crash_hotplug then reads 1, and
    a hot-add is covered by the kernel's own update, not by a reload;
(c) self-managed: the same with ``--kernel-hotplug off``: the daemon keeps the
    header itself and reloads per batch, as on 6.1;
(d) removal repair: in kernel mode, a DIMM hot-remove (with and without a
    manual offline first) leaves the kernel's header listing the gone range
    (the control below shows it); the daemon repairs it with one load that
    keeps hotplug support;
(e) trylock repair: a memory online while another kexec load holds the kexec
    lock makes the kernel skip its update ("kexec_trylock() failed"); the
    daemon sees it in the kernel log and repairs with one load.

Who loaded what is not taken from the daemon's word alone: an independent
witness (:class:`KexecWitness`) enables the kernel's own syscall trace events
for kexec_load / kexec_file_load in the guest's tracefs and reads back every
call, by any process, with its flags.  The control test shows the two faults
(d) and (e) repair are real on this kernel: with no daemon, the capture lists
a removed DIMM and misses one onlined during a slow load.

What the daemon's records say is docs/updater.md "Kernel mode"; the key that
keeps the daemon managing the header is ``[updater] kernel-hotplug``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import BootGuest
from testbed.daemon import kexec_daemon_args, report
from testbed.harness import (
    GIB,
    GUEST_KERNEL,
    GUEST_XFER,
    Dimm,
    Guest,
    GuestDaemon,
    TraceLog,
    TraceReload,
    merge_ranges,
    system_ram,
)
from testbed.hotplug import block_size

pytestmark = [pytest.mark.vm, pytest.mark.kernels("6.12")]

# KEXEC_ON_CRASH | KEXEC_ARCH_X86_64, and with KEXEC_UPDATE_ELFCOREHDR (0x4).
FLAGS_CRASH = 0x3E0001
FLAGS_CRASH_HOTPLUG = 0x3E0005
TRACEFS = "/sys/kernel/tracing"
TRYLOCK_LINE = "kexec_trylock() failed"


# --------------------------------------------------------------------------
# An independent witness of kexec loads: the kernel's syscall trace events


@dataclass(frozen=True, slots=True)
class KexecCall:
    syscall: str  # kexec_load | kexec_file_load
    comm: str
    pid: int
    flags: int


_CALL = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[\d+\].*?: sys_(?P<sys>kexec_load|kexec_file_load)\((?P<args>[^)]*)\)",
    re.M,
)


class KexecWitness:
    """Every kexec_load/kexec_file_load entered in the guest from now on, read from tracefs.

    The syscall enter events (CONFIG_FTRACE_SYSCALLS) are the kernel's own
    record, independent of the daemon's trace and of BPF: a load the daemon
    does not report still shows here, with its flags.
    """

    EVENTS = ("sys_enter_kexec_load", "sys_enter_kexec_file_load")

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        events = " ".join(f"{TRACEFS}/events/syscalls/{e}/enable" for e in self.EVENTS)
        guest.run(
            f"echo 0 > {TRACEFS}/tracing_on; echo > {TRACEFS}/trace; echo 4096 > {TRACEFS}/buffer_size_kb; "
            f"for f in {events}; do echo 1 > $f; done; echo 1 > {TRACEFS}/tracing_on"
        )

    def calls(self) -> list[KexecCall]:
        text = self.guest.run(f"cat {TRACEFS}/trace").text
        out = []
        for m in _CALL.finditer(text):
            # print_syscall_enter() prints each argument in hex ("flags: 3e0005").
            flags = re.search(r"\bflags: (?:0x)?([0-9a-f]+)", m.group("args"))
            if flags is None:
                raise AssertionError(f"a kexec syscall event without flags: {m.group(0)!r}")
            out.append(KexecCall(m.group("sys"), m.group("comm").strip(), int(m.group("pid")), int(flags.group(1), 16)))
        return out


class KernelHeaderUpdates:
    """Every header rewrite the kernel makes itself from now on: a kprobe on
    arch_crash_handle_hotplug_event, in the same tracefs buffer as KexecWitness
    (start it after the witness, which clears the buffer).

    crash_handle_hotplug_event() (kernel/crash_core.c) runs for every CPU
    and memory-block online/offline, but reaches the arch rewrite only when
    a crash image is loaded with hotplug support and the kexec lock was
    free; so the probe's hits are the updates that happened, one per event,
    and none while the daemon manages the header.  A shell `>>` (O_APPEND,
    no seek: kprobe_events refuses SEEK_END, see tools/vm/bench-guest.py).
    """

    EVENT = "kdc_kupd"

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        guest.run(
            f"echo 'p:kdc/{self.EVENT} arch_crash_handle_hotplug_event' >> {TRACEFS}/kprobe_events && "
            f"echo 1 > {TRACEFS}/events/kdc/{self.EVENT}/enable"
        )

    def count(self) -> int:
        return len(re.findall(rf"\s{self.EVENT}: \(arch_crash_handle_hotplug_event", self.guest.run(f"cat {TRACEFS}/trace").text))


# --------------------------------------------------------------------------
# Helpers


def _daemon(g: Guest, *extra: str) -> GuestDaemon:
    """``kdump-coalesce run --backend auto`` with the VM tier's capture kernel, waited for until ready."""
    args = kexec_daemon_args(g.assets, backend="auto", extra=extra)
    return g.start_daemon(args, ready=lambda t: t.ready, ready_timeout=300)


def _status(g: Guest, timeout: float = 60.0) -> Mapping[str, Any]:
    """The daemon's status file (UpdaterStatus, in the exchange directory), once it says who owns the header."""
    path = g.xfer / "status.json"
    deadline = time.monotonic() + timeout
    data: object = None
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("kernel_hotplug"):
            return data
        time.sleep(0.25)
    raise AssertionError(f"no status file with kernel_hotplug after {timeout:.0f}s: {data!r}")


def _ram_covers(g: Guest, dimm: Dimm) -> bool:
    return any(s <= dimm.addr and dimm.end <= e for s, e in merge_ranges(system_ram(g.iomem())))


def _blocks(g: Guest, dimm: Dimm) -> list[int]:
    size = block_size(g)
    return list(range(dimm.addr // size, dimm.end // size))


def _offline_by_hand(g: Guest, dimm: Dimm) -> None:
    """What an admin does before an eject: every block of the DIMM offline, through sysfs."""
    blocks = _blocks(g, dimm)
    script = "; ".join(f"echo offline > /sys/devices/system/memory/memory{b}/state" for b in blocks)
    g.run(script, timeout=120)
    states = g.run(
        "cat " + " ".join(f"/sys/devices/system/memory/memory{b}/state" for b in blocks)
    ).text.split()
    assert states == ["offline"] * len(blocks), states


def _online_blocks_script(g: Guest, dimm: Dimm) -> str:
    return "; ".join(f"echo online_movable > /sys/devices/system/memory/memory{b}/state" for b in _blocks(g, dimm))


def _batch_reloads(trace: TraceLog, purpose: str | None = None) -> list[TraceReload]:
    return [r for r in trace.reloads_after_ready() if purpose is None or r.record.get("purpose") == purpose]


def _loads(trace: TraceLog) -> list[TraceReload]:
    """Reload records that loaded something (ok or fallback), start-up included."""
    return [r for r in trace.reloads if r.result in ("ok", "fallback")]


def _describe(trace: TraceLog) -> str:
    return "\n".join(
        f"  {r.result} {r.backend} purpose={r.record.get('purpose')!r} causes={r.record.get('repair_causes')} "
        f"reason={str(r.record.get('reason'))[:160]!r}"
        for r in trace.reloads
    )


def _slow_load(g: Guest, size_mib: int) -> None:
    """Start ``kexec -s -l`` (a normal image, not the crash one) with a big initrd in the background.

    kexec_file_load reads and hashes every byte inside the syscall while it
    holds the kexec lock (kernel/kexec_file.c; SHA-256 in C under TCG: seconds
    for tens of MiB).  The crash image is not touched: a hotplug event during
    it makes crash_handle_hotplug_event fail its kexec_trylock() and skip the
    update, leaving the crash image's header stale.
    """
    g.run(f"dd if=/dev/zero of=/tmp/slow-initrd.img bs=1M count={size_mib} 2>/dev/null", timeout=120)
    g.run(
        f"rm -f {GUEST_XFER}/slow.rc; setsid sh -c '/sbin/kexec -s -l {GUEST_KERNEL} --initrd=/tmp/slow-initrd.img "
        f"--append=console=ttyS0 > {GUEST_XFER}/slow.log 2>&1; echo $? > {GUEST_XFER}/slow.rc' </dev/null >/dev/null 2>&1 &"
    )


def _wait_slow_load_entered(g: Guest, witness: KexecWitness, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(c.syscall == "kexec_file_load" and c.flags == 0 for c in witness.calls()):
        if (g.xfer / "slow.rc").exists():
            raise AssertionError(f"the slow kexec -s -l ended before it was seen: {(g.xfer / 'slow.log').read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError("the slow kexec -s -l never entered kexec_file_load")
        time.sleep(0.05)


def _wait_slow_load_done(g: Guest, timeout: float = 180.0) -> float:
    t0 = time.monotonic()
    while not (g.xfer / "slow.rc").exists():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("the slow kexec -s -l did not finish")
        time.sleep(0.1)
    rc = (g.xfer / "slow.rc").read_text().strip()
    assert rc == "0", f"kexec -s -l failed ({rc}): {(g.xfer / 'slow.log').read_text()}"
    return time.monotonic() - t0


def _trylock_lines(g: Guest) -> int:
    """How many "crash hp: kexec_trylock() failed" lines the kernel log holds."""
    return int(g.run(f"dmesg | grep -c '{TRYLOCK_LINE}' || true").text.strip() or 0)


def _skipped_update_dimm(g: Guest, witness: KexecWitness, size_mib: int, addr: int | None = None) -> tuple[Dimm, int]:
    """Hot-add a DIMM whose blocks are onlined while a slow kexec load holds the lock: every update skipped.

    The blocks are added offline (auto_online_blocks=offline), so the add
    itself triggers no header update (the kernel rebuilds on MEM_ONLINE and
    MEM_OFFLINE only); then they are onlined in one go inside the slow load's
    syscall.  Returns the DIMM and how many "kexec_trylock() failed" lines
    the onlines added.
    """
    g.run("echo offline > /sys/devices/system/memory/auto_online_blocks")
    dimm = g.hotplug_dimm(GIB, wait_online=False, addr=addr)
    g.wait_memory_online(dimm.addr, dimm.end)  # the resource is System RAM once added, its blocks still offline
    online = _online_blocks_script(g, dimm)
    before = _trylock_lines(g)
    _slow_load(g, size_mib)
    _wait_slow_load_entered(g, witness)
    t_online = time.monotonic()
    g.run(online, timeout=120)
    online_s = time.monotonic() - t_online
    done_s = _wait_slow_load_done(g)
    g.run("echo online_movable > /sys/devices/system/memory/auto_online_blocks")
    skipped = _trylock_lines(g) - before
    blocks = _blocks(g, dimm)
    print(f"slow load: {size_mib} MiB initrd; onlining {len(blocks)} blocks took {online_s:.2f}s, the load went on "
          f"{done_s:.2f}s after; {skipped} 'kexec_trylock() failed' lines")
    assert skipped >= len(blocks), (
        f"only {skipped} of {len(blocks)} block onlines hit a held kexec lock (online took {online_s:.2f}s, "
        f"the load went on {done_s:.2f}s after): the forcing did not work\n"
        + g.run("dmesg | grep 'crash hp' | tail -20", check=False).text
    )
    return dimm, skipped


# --------------------------------------------------------------------------
# The tests


def test_stand_aside_kernel_keeps_header(boot_guest: BootGuest) -> None:
    """(a) kexec -s -p: auto -> kernel, DIMM + CPU hot-add, no kexec call by anyone, vmcore right."""
    g = boot_guest()
    g.kexec_load_crash("kexec_file_load")
    assert g.crash_hotplug() == (1, 1)
    witness = KexecWitness(g)
    t0 = time.monotonic()
    d = _daemon(g)
    st = _status(g)
    assert (st.get("backend"), st.get("kernel_hotplug")) == ("kernel", "stand-aside"), st
    dimm = g.hotplug_dimm(GIB)
    cpu = g.hotplug_cpu(online=True)
    trace = d.wait(
        lambda t: any(e.kind == "cpu" and e.cpu == cpu for e in t.events) and len(t.reloads_after_ready()) >= 1,
        120, "the daemon's batches for the hot-adds",
    )
    trace = d.wait_quiet(4.0, 60.0)
    report("612-stand-aside", trace, wall_s=time.monotonic() - t0, time_to_correct_s=None, daemon_start_s=d.start_s)
    assert not _loads(trace), "the daemon loaded something:\n" + _describe(trace)
    assert all(r.result == "skipped" for r in trace.reloads), _describe(trace)
    assert witness.calls() == [], witness.calls()
    assert g.crash_hotplug() == (1, 1)
    cap = g.crash_and_capture()
    print(f"stand-aside: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.covers(0x100000, 0x1000000)
    assert cap.vmcore.cpu_notes == 3, cap.vmcore.describe()


def test_hand_over_one_load_then_kernel_updates(boot_guest: BootGuest) -> None:
    """(b) plain kexec -p: auto makes ONE kexec_load with 0x3e0005; crash_hotplug 1; the hot-add needs no reload."""
    g = boot_guest()
    g.kexec_load_crash("kexec_load")
    assert g.crash_hotplug() == (0, 0)
    witness = KexecWitness(g)
    t0 = time.monotonic()
    d = _daemon(g)
    trace = d.trace()
    loads = _loads(trace)
    assert len(loads) == 1, _describe(trace)
    hand = loads[0].record
    assert (hand.get("purpose"), hand.get("result"), hand.get("backend")) == ("hand-over", "ok", "kexec-fast"), hand
    assert hand.get("kernel_hotplug") is True and hand.get("crash_hotplug_after") == 1, hand
    calls = witness.calls()
    assert [(c.syscall, c.flags) for c in calls] == [("kexec_load", FLAGS_CRASH_HOTPLUG)], calls
    assert g.crash_hotplug() == (1, 1)
    st = _status(g)
    assert (st.get("backend"), st.get("kernel_hotplug")) == ("kernel", "handed-over"), st
    updates = KernelHeaderUpdates(g)
    block = block_size(g)
    dimm = g.hotplug_dimm(GIB)
    cpu = g.hotplug_cpu(online=True)
    trace = d.wait(
        lambda t: any(e.kind == "cpu" and e.cpu == cpu for e in t.events) and len(t.reloads_after_ready()) >= 1,
        120, "the daemon's batches for the hot-adds",
    )
    trace = d.wait_quiet(4.0, 60.0)
    report("612-hand-over", trace, wall_s=time.monotonic() - t0, time_to_correct_s=None, daemon_start_s=d.start_s)
    assert len(_loads(trace)) == 1, "a load after the hand-over:\n" + _describe(trace)
    assert len(witness.calls()) == 1, witness.calls()
    assert g.crash_hotplug() == (1, 1)
    # The kernel, not a reload, put them in the header: one rewrite per
    # memory block onlined and one for the CPU.
    n_updates = updates.count()
    assert n_updates == GIB // block + 1, g.run(f"cat {TRACEFS}/trace").text[-3000:]
    cap = g.crash_and_capture()
    print(f"hand-over: {cap.vmcore.describe()}; {n_updates} in-kernel header updates")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 3, cap.vmcore.describe()


def test_self_managed_reloads_per_batch(boot_guest: BootGuest) -> None:
    """(c) plain kexec -p and kernel-hotplug off: the daemon reloads per batch (no hotplug flag), as on 6.1."""
    g = boot_guest()
    g.kexec_load_crash("kexec_load")
    witness = KexecWitness(g)
    t0 = time.monotonic()
    d = _daemon(g, "--kernel-hotplug", "off")
    st = _status(g)
    assert st.get("kernel_hotplug") == "off" and st.get("backend") != "kernel", st
    start_calls = len(witness.calls())
    dimm = g.hotplug_dimm(GIB)
    trace = d.wait(lambda t: any(r.result == "ok" for r in t.reloads_after_ready()), 120, "a reload for the DIMM")
    cpu = g.hotplug_cpu(online=True)
    trace = d.wait(
        lambda t: sum(r.result == "ok" for r in t.reloads_after_ready()) >= 2, 120, f"a reload for CPU {cpu}"
    )
    trace = d.wait_quiet(4.0, 60.0)
    report("612-self-managed", trace, wall_s=time.monotonic() - t0, time_to_correct_s=None, daemon_start_s=d.start_s)
    batch = trace.reloads_after_ready()
    assert [r.result for r in batch if r.result != "skipped"] == ["ok", "ok"], _describe(trace)
    assert all(not r.record.get("kernel_hotplug") and not r.record.get("purpose") for r in trace.reloads), _describe(trace)
    calls = witness.calls()[start_calls:]
    assert [(c.syscall, c.flags) for c in calls] == [("kexec_load", FLAGS_CRASH)] * 2, calls
    assert g.crash_hotplug() == (0, 0)
    cap = g.crash_and_capture()
    print(f"self-managed: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 3, cap.vmcore.describe()


@pytest.mark.parametrize("offline_first", [True, False], ids=["offline-first", "eject"])
def test_removal_repair(boot_guest: BootGuest, offline_first: bool) -> None:
    """(d) kernel mode, DIMM hot-remove (manual offline first, or a plain eject): one repair load, the capture drops it."""
    g = boot_guest()
    g.kexec_load_crash("kexec_load")
    witness = KexecWitness(g)
    t0 = time.monotonic()
    d = _daemon(g)
    assert g.crash_hotplug() == (1, 1)
    dimm = g.hotplug_dimm(GIB)
    trace = d.wait(lambda t: len(t.reloads_after_ready()) >= 1, 120, "the batch of the hot-add")
    trace = d.wait_quiet(3.0, 60.0)
    assert len(_loads(trace)) == 1, "the kernel, not the daemon, covers a hot-add:\n" + _describe(trace)
    if offline_first:
        _offline_by_hand(g, dimm)
    g.unplug_dimm(dimm)
    t_removed = time.monotonic()
    assert not _ram_covers(g, dimm)
    trace = d.wait(lambda t: bool(_batch_reloads(t, "repair")), 120, "a repair after the removal")
    to_correct = time.monotonic() - t_removed
    trace = d.wait_quiet(4.0, 60.0)
    report(
        f"612-removal-repair/{'offline-first' if offline_first else 'eject'}", trace,
        wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s,
    )
    repairs = _batch_reloads(trace, "repair")
    assert len(repairs) == 1 and repairs[0].result == "ok", _describe(trace)
    rec = repairs[0].record
    assert "removal" in rec.get("repair_causes", ()), rec
    stale = merge_ranges([(int(a), int(b)) for a, b in rec.get("stale_ranges", ())])
    assert stale == [(dimm.addr, dimm.end)], rec
    assert rec.get("kernel_hotplug") is True and rec.get("crash_hotplug_after") == 1, rec
    calls = witness.calls()
    assert [(c.syscall, c.flags) for c in calls] == [("kexec_load", FLAGS_CRASH_HOTPLUG)] * 2, calls
    assert g.crash_hotplug() == (1, 1)
    cap = g.crash_and_capture()
    print(f"removal repair ({'offline first' if offline_first else 'eject'}): {cap.vmcore.describe()}")
    assert not cap.vmcore.overlaps(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.covers(0x100000, 0x1000000) and cap.vmcore.cpu_notes == 2


# Big enough that kexec_file_load hashes for a few seconds under TCG; the
# daemon waits longer than that before it closes a batch (--quiet), so that
# its repair comes after the slow load has released the lock.
SLOW_INITRD_MIB = 24
SLOW_QUIET_S = "20"
SLOW_BATCH = ("--quiet", SLOW_QUIET_S, "--urgent-quiet", SLOW_QUIET_S, "--max-delay", "90", "--urgent-max-delay", "90")


def test_trylock_repair(boot_guest: BootGuest) -> None:
    """(e) an online during a slow kexec_file_load skips the kernel's update; the daemon repairs with one load."""
    g = boot_guest()
    g.kexec_load_crash("kexec_load")
    witness = KexecWitness(g)
    t0 = time.monotonic()
    d = _daemon(g, *SLOW_BATCH)
    assert g.crash_hotplug() == (1, 1)
    dimm, skipped = _skipped_update_dimm(g, witness, SLOW_INITRD_MIB)
    t_forced = time.monotonic()
    trace = d.wait(lambda t: bool(_batch_reloads(t, "repair")), 180, "a repair after the skipped updates")
    to_correct = time.monotonic() - t_forced
    trace = d.wait_quiet(4.0, 60.0)
    report("612-trylock-repair", trace, wall_s=time.monotonic() - t0, time_to_correct_s=to_correct, daemon_start_s=d.start_s)
    repairs = _batch_reloads(trace, "repair")
    assert len(repairs) == 1 and repairs[0].result == "ok", _describe(trace)
    rec = repairs[0].record
    assert "trylock" in rec.get("repair_causes", ()), rec
    assert rec.get("kernel_hotplug") is True and rec.get("crash_hotplug_after") == 1, rec
    crash_loads = [(c.syscall, c.flags) for c in witness.calls() if c.flags != 0]
    assert crash_loads == [("kexec_load", FLAGS_CRASH_HOTPLUG)] * 2, witness.calls()
    print(f"trylock: {skipped} skipped updates")
    cap = g.crash_and_capture()
    print(f"trylock repair: {cap.vmcore.describe()}")
    assert cap.vmcore.covers(dimm.addr, dimm.end), cap.vmcore.describe()
    assert cap.vmcore.cpu_notes == 2


def test_control_kernel_alone_leaves_both_faults(boot_guest: BootGuest) -> None:
    """Control for (d) and (e): no daemon, kexec -s -p.  The capture still lists a removed DIMM and misses one
    onlined during a slow load: what the repairs fix is really wrong without them."""
    g = boot_guest()
    g.kexec_load_crash("kexec_file_load")
    assert g.crash_hotplug() == (1, 1)
    witness = KexecWitness(g)
    gone = g.hotplug_dimm(GIB)
    g.unplug_dimm(gone)
    assert not _ram_covers(g, gone)
    # Not in the hole the removed DIMM left (qemu would put it there).
    late, skipped = _skipped_update_dimm(g, witness, SLOW_INITRD_MIB, addr=gone.end + GIB)
    assert _ram_covers(g, late)
    cap = g.crash_and_capture()
    print(f"control ({skipped} skipped updates): {cap.vmcore.describe()}")
    assert cap.vmcore.overlaps(gone.addr, gone.end), "the kernel dropped a removed DIMM by itself: " + cap.vmcore.describe()
    assert not cap.vmcore.overlaps(late.addr, late.end), "the kernel covered a skipped update: " + cap.vmcore.describe()
    assert cap.vmcore.covers(0x100000, 0x1000000)
