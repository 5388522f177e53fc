"""Hotplug patterns beyond :mod:`testbed.harness`'s basics, for the issue-12 matrix.

:class:`testbed.harness.Guest` hot-adds DIMMs and CPUs and ejects a DIMM.
The matrix (tests/vm/test_hotplug_matrix.py, docs/faults.md) also needs:

- memory blocks by hand: which blocks a range spans, ``offline``/``online``
  through ``/sys/devices/system/memory/memoryN/state`` (the admin's sequence:
  offline first, eject later), an offline that the kernel refuses (EBUSY) or
  that a signal cancels (EINTR: ``offline_pages`` backs off on a pending
  signal, the kernel's MEM_CANCEL_OFFLINE);
- CPUs removed again: ``device_del`` of a hot-added vCPU (the guest offlines
  it and unregisters the device), with the QMP id kept by :class:`HotCpu`;
- virtio-mem (``GuestConfig(virtio_mem_gib=N)`` adds the device, requested
  size 0): ``requested-size`` up and down, waiting until the device reports
  the new plugged size and /proc/iomem shows it (``System RAM (virtio_mem)``
  lines are nested under the device's region, so they are read at any depth);
- what the daemon wrote: its status file (``status.json`` in the exchange
  directory, as :func:`testbed.daemon.kexec_daemon_args` sets it) and the
  ``kexec-call`` records of its trace;
- a kexec-tools wrapper that sleeps before it execs the real ``/sbin/kexec``:
  a reload that stays in flight long enough for a second burst to arrive
  during it, deterministically (the load itself is the real one).

Everything waits with a timeout and raises :class:`testbed.harness.VmError`
(or :class:`testbed.harness.GuestTimeout`) saying what did not happen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .harness import (
    GUEST_XFER,
    CommandResult,
    Dimm,
    Guest,
    GuestDaemon,
    GuestTimeout,
    TraceLog,
    TraceReload,
    VmError,
    crash_kernel,
    iomem_entries,
    merge_ranges,
    parse_cpu_list,
    subtract_range,
)
from .vmcore import VmcoreHeader

MEMORY_SYSFS = "/sys/devices/system/memory"
CPU_SYSFS = "/sys/devices/system/cpu"
VIRTIO_MEM_QOM = "/machine/peripheral/vm0"  # the id GuestConfig(virtio_mem_gib=...) gives the device

# What `echo offline > memoryN/state` prints when the kernel refuses (busybox sh).
EBUSY_TEXT = "Device or resource busy"


# --------------------------------------------------------------------------
# memory blocks


def block_size(g: Guest) -> int:
    """``/sys/devices/system/memory/block_size_bytes`` (hex without 0x)."""
    return int(g.read_text(f"{MEMORY_SYSFS}/block_size_bytes").strip(), 16)


def blocks_of(start: int, end: int, size: int) -> list[int]:
    """Memory block numbers that [start, end) spans."""
    return list(range(start // size, (end + size - 1) // size))


def block_state(g: Guest, block: int) -> str:
    return g.read_text(f"{MEMORY_SYSFS}/memory{block}/state").strip()


def set_blocks(g: Guest, blocks: Sequence[int], state: str, *, check: bool = True) -> CommandResult:
    """``echo STATE > memoryN/state`` for each block in order (one guest command)."""
    script = "; ".join(f"echo {state} > {MEMORY_SYSFS}/memory{b}/state" for b in blocks)
    return g.run(script, check=check)


def offline_dimm_by_hand(g: Guest, dimm: Dimm) -> list[int]:
    """The admin's first step: offline every block of `dimm`; returns the blocks (all offline on return)."""
    blocks = blocks_of(dimm.addr, dimm.end, block_size(g))
    set_blocks(g, blocks, "offline")
    states = {b: block_state(g, b) for b in blocks}
    if any(s != "offline" for s in states.values()):
        raise VmError(f"{dimm.id}: blocks not offline after offlining by hand: {states}")
    return blocks


def unmovable_block(g: Guest) -> int:
    """A boot block whose offline fails with EBUSY: one that holds reserved pages (the kernel's
    image, "Kernel code/rodata/data/bss" in /proc/iomem, else the "Crash kernel" reservation) and
    lies in one zone.  Reserved pages are unmovable: ``start_isolate_page_range`` refuses before
    MEM_GOING_OFFLINE.

    A block that spans a hole (block 0 with the BIOS area, where a PVH-booted kernel sits at
    16 MiB; the last block below 1 GiB, where physical KASLR can put a bzImage's kernel) reads
    "none" in ``valid_zones`` and its offline fails earlier, with EINVAL
    (``test_pages_in_a_zone``), which is not the refusal this wants."""
    size = block_size(g)
    entries = list(iomem_entries(g.iomem()))
    blocks = dict.fromkeys(
        b
        for prefix in ("Kernel ", "Crash kernel")
        for _depth, start, end, name in entries
        if name.startswith(prefix)
        for b in range(start // size, (end - 1) // size + 1)
    )
    if not blocks:
        raise VmError("no 'Kernel code' or 'Crash kernel' line in the guest's /proc/iomem")
    zones: dict[int, str] = {}  # read one guest command at a time, up to the first block that will do
    for b in blocks:
        zones[b] = g.read_text(f"{MEMORY_SYSFS}/memory{b}/valid_zones").strip()
        if zones[b] and zones[b] != "none":
            return b
    raise VmError(f"every block of the kernel image and the crash reservation spans a hole or zones (valid_zones {zones})")


def offline_refused(g: Guest, block: int) -> CommandResult:
    """Offline `block` expecting the kernel to refuse it with EBUSY; the block stays online."""
    res = set_blocks(g, [block], "offline", check=False)
    if res.rc == 0 or EBUSY_TEXT not in res.text:
        raise VmError(f"offline of memory{block} was expected to fail with EBUSY: rc {res.rc}: {res.text!r}")
    if block_state(g, block) != "online":
        raise VmError(f"memory{block} is not online after a refused offline")
    return res


def offline_cancelled(g: Guest, blocks: Sequence[int], *, after_s: float = 0.1) -> int | None:
    """Start an offline of each block in turn and interrupt it with SIGINT after `after_s`.

    ``offline_pages`` checks for a pending signal while it migrates pages and
    backs off with -EINTR (the memory notifier's CANCEL_OFFLINE): the block
    stays online.  A block with few pages to migrate may go offline before the
    signal lands; it is onlined again (a change that cancels itself out) and
    the next block is tried.  Returns the block whose offline was cancelled by
    the kernel, or None when every offline finished first (each then undone).
    Fill the blocks first (e.g. a tmpfs file) so that migration takes a while.
    """
    for b in blocks:
        res = g.run(
            f"timeout -s INT {after_s} sh -c 'echo offline > {MEMORY_SYSFS}/memory{b}/state'; echo rc=$?",
            check=False,
        )
        state = block_state(g, b)
        if state == "online" and "rc=0" not in res.text:
            return b
        if state == "offline":
            set_blocks(g, [b], "online_movable")
    return None


def fill_tmpfs(g: Guest, mib: int, path: str = "/tmp/kdc-fill") -> None:
    """Write `mib` MiB into the initramfs' tmpfs: movable page cache that an offline must migrate."""
    g.run(f"dd if=/dev/zero of={path} bs=1M count={mib} 2>/dev/null || true", timeout=120)


def system_ram_any_depth(iomem: str, name_prefix: str = "System RAM") -> list[tuple[int, int]]:
    """[start, end) of every ``System RAM*`` line of /proc/iomem, nested ones included (kexec-tools
    and the kernel list nested ones too), merged."""
    return merge_ranges([(s, e) for _d, s, e, n in iomem_entries(iomem) if n.startswith(name_prefix)])


# --------------------------------------------------------------------------
# CPUs


@dataclass(frozen=True, slots=True)
class HotCpu:
    """A vCPU hot-added through QMP: its device id and its number in the guest."""

    id: str
    cpu: int


def present_cpus(g: Guest) -> list[int]:
    return parse_cpu_list(g.read_text(f"{CPU_SYSFS}/present"))


def add_cpu(g: Guest, *, online: bool = True, timeout: float = 60.0) -> HotCpu:
    """Hot-add one vCPU (the first free slot) and return its QMP id and guest CPU number."""
    assert g.qmp is not None
    before_ids = {s.get("qom-path") for s in g.qmp.execute("query-hotpluggable-cpus")}
    cpu = g.hotplug_cpu(online=online, timeout=timeout)
    after = g.qmp.execute("query-hotpluggable-cpus")
    new = [str(s["qom-path"]) for s in after if s.get("qom-path") and s.get("qom-path") not in before_ids]
    if len(new) != 1 or not new[0].startswith("/machine/peripheral/"):
        raise VmError(f"cannot tell which QMP device the new CPU {cpu} is: {new}")
    return HotCpu(id=new[0].rsplit("/", 1)[1], cpu=cpu)


def offline_cpu(g: Guest, cpu: int) -> None:
    g.run(f"echo 0 > {CPU_SYSFS}/cpu{cpu}/online")
    if cpu in parse_cpu_list(g.read_text(f"{CPU_SYSFS}/online")):
        raise VmError(f"cpu{cpu} still online after offlining it by hand")


def remove_cpu(g: Guest, hot: HotCpu, timeout: float = 60.0) -> None:
    """``device_del`` the vCPU (ACPI eject: the guest offlines it if needed and unregisters it);
    wait for DEVICE_DELETED and for the CPU to leave ``present``."""
    assert g.qmp is not None
    path = f"/machine/peripheral/{hot.id}"

    def deleted(e: Mapping[str, Any]) -> bool:
        # qemu 7.2 sends DEVICE_DELETED for the CPU's lapic child only (no "device" key).
        data = e.get("data", {})
        return bool(data.get("device") == hot.id or str(data.get("path", "")).startswith(path))

    g.qmp.execute("device_del", {"id": hot.id})
    g.qmp.wait_event("DEVICE_DELETED", timeout, deleted)
    deadline = time.monotonic() + timeout
    while hot.cpu in present_cpus(g):
        if time.monotonic() > deadline:
            raise GuestTimeout(f"cpu{hot.cpu} still present {timeout:.0f}s after DEVICE_DELETED")
        time.sleep(0.1)


# qemu 7.2 under TCG frees a removed vCPU's state while its thread may still use it: after a vCPU
# device_del, qemu itself sometimes dies later (heap corruption, abort), e.g. while the capture kernel
# boots (docs/vm-testbed.md, "Never device_del a vCPU under qemu 7.2").  What qemu printed when that happened.
QEMU_ABORTS = ("double free", "corrupted", "Aborted", "qemu_thread_join", "Segmentation fault")


def qemu_died_of_itself(g: Guest) -> str | None:
    """The line of qemu's own output that says qemu crashed (not the guest), or None."""
    try:
        out = (g.workdir / "qemu.out").read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in out.splitlines():
        if any(word in line for word in QEMU_ABORTS):
            return line.strip()
    return None


# --------------------------------------------------------------------------
# virtio-mem


@dataclass(frozen=True, slots=True)
class VirtioMemState:
    requested: int
    plugged: int
    region: tuple[int, int]  # the device's whole range [start, end)
    ram: list[tuple[int, int]]  # its System RAM (virtio_mem) lines in /proc/iomem, merged

    @property
    def ram_bytes(self) -> int:
        return sum(e - s for s, e in self.ram)

    def unplugged(self) -> list[tuple[int, int]]:
        """The parts of the region /proc/iomem does not list as RAM."""
        out: list[tuple[int, int]] = []
        at = self.region[0]
        for s, e in self.ram:
            if s > at:
                out.append((at, s))
            at = max(at, e)
        if at < self.region[1]:
            out.append((at, self.region[1]))
        return out


def virtio_mem_state(g: Guest) -> VirtioMemState:
    qmp = g.qmp
    assert qmp is not None

    def prop(name: str) -> int:
        return int(qmp.execute("qom-get", {"path": VIRTIO_MEM_QOM, "property": name}))

    start = prop("memaddr")
    region = (start, start + int(g.config.virtio_mem_gib) * (1 << 30))
    ram = [(s, e) for s, e in system_ram_any_depth(g.iomem(), "System RAM (virtio_mem)") if region[0] <= s < region[1]]
    return VirtioMemState(requested=prop("requested-size"), plugged=prop("size"), region=region, ram=ram)


def virtio_mem_resize(g: Guest, size: int, timeout: float = 90.0) -> VirtioMemState:
    """Set the device's requested-size and wait until it has plugged that much and /proc/iomem shows it."""
    assert g.qmp is not None
    if not g.config.virtio_mem_gib:
        raise VmError("no virtio-mem device: boot with GuestConfig(virtio_mem_gib=N)")
    g.qmp.execute("qom-set", {"path": VIRTIO_MEM_QOM, "property": "requested-size", "value": size})
    deadline = time.monotonic() + timeout
    while True:
        st = virtio_mem_state(g)
        if st.plugged == size and st.ram_bytes == size:
            return st
        if time.monotonic() > deadline:
            raise GuestTimeout(f"virtio-mem: requested {size:#x}, plugged {st.plugged:#x}, iomem {st.ram_bytes:#x} after {timeout:.0f}s")
        time.sleep(0.2)


# --------------------------------------------------------------------------
# what the daemon wrote


def daemon_status(g: Guest, name: str = "status.json") -> Mapping[str, Any]:
    """The daemon's status file (``--status-file /run/kdc-xfer/status.json``), read on the host."""
    try:
        data = json.loads((g.xfer / name).read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise VmError(f"{GUEST_XFER}/{name}: no usable status file: {exc}") from None
    if not isinstance(data, dict):
        raise VmError(f"{GUEST_XFER}/{name}: not a JSON object")
    return data


def status_ram(status: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The loaded header's RAM ranges [start, end), merged, from the status file's ``header.ram``."""
    header = status.get("header") or {}
    out: list[tuple[int, int]] = []
    for text in header.get("ram", []):
        out.append(_parse_range(str(text)))
    return merge_ranges(out)


def _parse_range(text: str) -> tuple[int, int]:
    # ground.ranges.PhysRange.__str__: "0xSTART-0xLAST" (inclusive last, like /proc/iomem).
    lo, _, hi = text.partition("-")
    return int(lo, 16), int(hi, 16) + 1


def kexec_calls(trace: TraceLog, *, external: bool | None = None) -> list[Mapping[str, Any]]:
    """The trace's ``kexec-call`` records (the daemon's kexec call log), optionally only external ones."""
    return [
        r for r in trace.records
        if r.get("type") == "kexec-call" and (external is None or bool(r.get("external")) == external)
    ]


def wait_reloads(
    d: GuestDaemon, count: int, timeout: float = 120.0, *, result: str = "ok", since: int = 0
) -> tuple[TraceLog, list[TraceReload]]:
    """Wait until at least `count` batch reloads (after ``ready``) with `result` follow the first `since` ones."""
    def enough(t: TraceLog) -> bool:
        return sum(1 for r in t.reloads_after_ready()[since:] if r.result == result) >= count

    t = d.wait(enough, timeout, f"{count} {result} reload(s) after the first {since}")
    return t, [r for r in t.reloads_after_ready()[since:] if r.result == result]


def wait_batches(d: GuestDaemon, count: int, timeout: float = 60.0, *, since: int = 0) -> TraceLog:
    """Wait until `count` batches after ``ready`` (beyond the first `since`) have a reload record."""
    def done(t: TraceLog) -> bool:
        return len(t.reloads_after_ready()) >= since + count

    return d.wait(done, timeout, f"{count} batch outcome(s) after the first {since}")


def record_index(trace: TraceLog, match: Callable[[Mapping[str, Any]], bool]) -> int | None:
    """Position in the trace of the first record `match` accepts."""
    for i, r in enumerate(trace.records):
        if match(r):
            return i
    return None


SLOW_KEXEC = "/tmp/kdc-slow-kexec"


def install_slow_kexec(g: Guest, delay_s: float, path: str = SLOW_KEXEC) -> str:
    """A kexec-tools wrapper in the guest's chroot (``/tmp`` there is a tmpfs of its own):
    ``sleep DELAY; exec /sbin/kexec "$@"``.  Same pid, same real load, later: a reload
    stays in flight for `delay_s` more, with the old image still loaded meanwhile."""
    g.run_host(
        f"printf '#!/bin/sh\\nsleep {delay_s}\\nexec /sbin/kexec \"$@\"\\n' > {path} && chmod 755 {path}"
    )
    return path


# --------------------------------------------------------------------------
# the vmcore against the live state


LOW_1M = 1 << 20


def expected_ram(iomem: str, *, cut_low_1m: bool = False) -> list[tuple[int, int]]:
    """What a correct header dumps: every System RAM line of /proc/iomem (any depth), merged,
    with the crash kernel region cut out, and the low 1 MiB too when the kernel builds the header
    (kexec_file_load: ``prepare_elf_headers`` leaves it out; kexec-tools keeps it)."""
    ram = subtract_range(system_ram_any_depth(iomem), crash_kernel(iomem))
    return subtract_range(ram, (0, LOW_1M)) if cut_low_1m else ram


@dataclass(frozen=True, slots=True)
class VmcoreCheck:
    """The capture's /proc/vmcore compared with what the guest had when it panicked."""

    present: list[tuple[int, int]]
    absent: list[tuple[int, int]]
    cpu_notes: int
    expected_cpus: int
    problems: list[str]
    vmcore: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        def fmt(rs: list[tuple[int, int]]) -> str:
            return ", ".join(f"{s:#x}-{e - 1:#x}" for s, e in rs) or "-"

        verdict = "ok" if self.ok else "WRONG: " + "; ".join(self.problems)
        return (
            f"vmcore check {verdict}: listed [{fmt(self.present)}], not listed [{fmt(self.absent)}], "
            f"{self.cpu_notes}/{self.expected_cpus} CPU notes ({self.vmcore})"
        )


def check_vmcore(
    vmcore: VmcoreHeader, iomem: str, *, absent: Sequence[tuple[int, int]] = (), cpus: int, cut_low_1m: bool = False
) -> VmcoreCheck:
    """Every RAM range of `iomem` (read just before the panic) must be in the vmcore, no byte of
    `absent` (memory that was removed or unplugged), and exactly `cpus` CPU notes."""
    present = expected_ram(iomem, cut_low_1m=cut_low_1m)
    problems = [f"{s:#x}-{e - 1:#x} (present) missing" for s, e in present if not vmcore.covers(s, e)]
    problems += [f"{s:#x}-{e - 1:#x} (gone) still listed" for s, e in absent if vmcore.overlaps(s, e)]
    if vmcore.cpu_notes != cpus:
        problems.append(f"{vmcore.cpu_notes} CPU notes, expected {cpus}")
    return VmcoreCheck(list(present), list(absent), vmcore.cpu_notes, cpus, problems, vmcore.describe())
