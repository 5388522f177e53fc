"""The five strategies, each a model of what its own files do.

A strategy sees every event twice: ``kernel_hook`` runs inside the kernel's
hotplug path (only the in-kernel update uses it), ``on_uevent`` when the
uevent reaches user space (udev rules, or kdump-coalesce's sources).  Each
starts trio tasks in the simulation's nursery for the processes the real
thing would start, and those ask the shared CPU for their CPU time.
"""

from __future__ import annotations

import math
from typing import ClassVar

import trio

from coalescer import Policy, run_pipeline
from ground.records import Batch
from ground.events import Action, HotplugEvent, Kind, SourceItem

from ._machine import Cpu, Machine, UdevQueue
from ._params import ModelParams

Trigger = frozenset[tuple[Kind, Action]]


class Sim:
    """One strategy's run: its guest, its CPU, its udev queue."""

    def __init__(self, params: ModelParams, nursery: trio.Nursery, owner: str) -> None:
        self.params = params
        self.cpu = Cpu(params.cpus)
        self.udev = UdevQueue()
        self.machine = Machine()
        self.nursery = nursery
        self.owner = owner
        self.reload_walls: list[float] = []

    def record_reload(self, start: float) -> None:
        end = trio.current_time()
        self.machine.timeline.reloads.append((start, end))
        self.reload_walls.append(end - start)


class Strategy:
    name: ClassVar[str]
    description: ClassVar[str]
    triggers: ClassVar[Trigger] = frozenset()

    async def kernel_hook(self, sim: Sim, event: HotplugEvent) -> None:
        """Called in the hotplug path, after the state changed."""

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        """The uevent reached user space."""

    async def background(self, sim: Sim) -> None:
        """A long-running part (kdump-coalesce's pipeline)."""

    def events_done(self, sim: Sim) -> None:
        """The scenario has no more events."""

    def extras(self) -> dict[str, float]:
        return {}

    def matches(self, event: HotplugEvent) -> bool:
        return (event.kind, event.action) in self.triggers


async def _spawn(sim: Sim, *, hold_udev: bool = True) -> None:
    """A udev worker starting the rule's program: while it runs the event is
    still in udev's queue (what ``udevadm settle`` waits for)."""
    if hold_udev:
        sim.udev.enter()
    try:
        await sim.cpu.run(sim.params.spawn_s, sim.owner)
    finally:
        if hold_udev:
            sim.udev.leave()


class UdevSerial(Strategy):
    # Debian/Ubuntu kdump-tools, debian/50-kdump-tools.rules (the Ubuntu 20.04
    # text the RFC quotes):
    #   SUBSYSTEM=="memory", ACTION=="online",  PROGRAM="/usr/sbin/kdump-config try-reload"
    #   SUBSYSTEM=="memory", ACTION=="offline", PROGRAM=...   cpu add/remove/online likewise
    # and debian/kdump-config.in: try-reload -> `condreload 9>$lock_file`, which
    # does a BLOCKING `flock 9` and then `reload` = `unload; load`
    # (kdump_unload: `kexec -p -u`; load: checks, symlinks, then `kexec -p`).
    # PROGRAM= is synchronous: the udev worker waits for all of it.  Nothing is
    # merged: every event is one unload + load, one after the other.  RHEL7's
    # rule (`systemd-run kdumpctl reload` per event, kdumpctl's lock) behaves
    # the same way, which is why the RFC's RHEL7 figures test this model.
    name = "udev-serial"
    description = "Debian kdump-tools: per event, blocking flock, unload + full load (RHEL7 alike)"
    triggers: ClassVar[Trigger] = frozenset(
        {
            (Kind.MEMORY, Action.ONLINE),
            (Kind.MEMORY, Action.OFFLINE),
            (Kind.CPU, Action.ADD),
            (Kind.CPU, Action.REMOVE),
            (Kind.CPU, Action.ONLINE),
        }
    )

    def __init__(self) -> None:
        self._flock = trio.Lock()  # FIFO, like the waiters of a blocking flock
        self.max_waiting = 0
        self._waiting = 0

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        if self.matches(event):
            sim.nursery.start_soon(self._program, sim)

    async def _program(self, sim: Sim) -> None:
        p = sim.params
        sim.udev.enter()  # PROGRAM= holds the event until it returns
        try:
            await sim.cpu.run(p.spawn_s, sim.owner)
            self._waiting += 1
            self.max_waiting = max(self.max_waiting, self._waiting)
            async with self._flock:
                self._waiting -= 1
                await sim.cpu.run(p.script_s, sim.owner)
                start = trio.current_time()
                sim.machine.image_gone()  # kexec -p -u
                await sim.cpu.run(p.kexec_unload_s, sim.owner)
                built = sim.machine.state  # kexec-tools reads /proc/iomem first
                await sim.cpu.run(p.kexec_load_s, sim.owner)
                sim.machine.image_loaded(built)
                sim.record_reload(start)
        finally:
            sim.udev.leave()

    def extras(self) -> dict[str, float]:
        return {"max_waiting_on_flock": float(self.max_waiting)}


class UdevThrottle(Strategy):
    # Fedora/RHEL kdump-utils (RHEL8: kexec-tools), 98-kexec.rules:
    #   SUBSYSTEM=="cpu", ACTION=="add"|"remove"; SUBSYSTEM=="memory", ACTION=="online"|"offline"
    #   -> RUN+="/usr/bin/systemd-run --no-block /usr/lib/udev/kdump-udev-throttler"
    # kdump-udev-throttler: `systemctl is-active kdump.service`, `exec 9>$throttle_lock`,
    # `flock -n 9` (losers exit 0), `sleep 1 && udevadm settle --timeout 3`,
    # `exec 9>&-` (the throttle lock is released BEFORE the reload), then
    # `/bin/kdumpctl reload`, which takes kdumpctl's own single-instance lock
    # (waits) and does stop (kexec -p -u) then start (a full `kexec -p`).
    # So a new throttler can sleep/settle while the previous reload runs, and
    # its reload then waits for kdumpctl's lock.
    name = "udev-throttle"
    description = "RHEL/Fedora kdump-utils: throttler (flock -n, sleep 1, settle <= 3 s), kdumpctl reload"
    triggers: ClassVar[Trigger] = frozenset(
        {
            (Kind.CPU, Action.ADD),
            (Kind.CPU, Action.REMOVE),
            (Kind.MEMORY, Action.ONLINE),
            (Kind.MEMORY, Action.OFFLINE),
        }
    )

    def __init__(self) -> None:
        self._throttle_held = False
        self._kdumpctl_lock = trio.Lock()
        self.settle_timeouts = 0
        self.throttled = 0

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        if self.matches(event):
            sim.nursery.start_soon(self._throttler, sim)

    async def _throttler(self, sim: Sim) -> None:
        p = sim.params
        await _spawn(sim)
        if self._throttle_held:  # flock -n failed: "Throttling kdump restart"
            self.throttled += 1
            return
        self._throttle_held = True
        try:
            await trio.sleep(p.throttle_sleep_s)
            if not await sim.udev.settle(p.settle_timeout_s):
                self.settle_timeouts += 1
        finally:
            self._throttle_held = False  # exec 9>&-
        async with self._kdumpctl_lock:
            start = trio.current_time()
            sim.machine.image_gone()  # stop_kdump: kexec -p -u
            await sim.cpu.run(p.kexec_unload_s, sim.owner)
            # kdumpctl's checks and the kexec command line, then kexec -p
            await sim.cpu.run(max(0.0, p.kdumpctl_reload_s - p.kexec_unload_s - p.kexec_load_s), sim.owner)
            built = sim.machine.state
            await sim.cpu.run(p.kexec_load_s, sim.owner)
            sim.machine.image_loaded(built)
            sim.record_reload(start)

    def extras(self) -> dict[str, float]:
        return {"settle_timeouts": float(self.settle_timeouts), "throttled": float(self.throttled)}


class LoadOnce(Strategy):
    # SUSE kdump (openSUSE/kdump): 70-kdump.rules.in reloads on
    #   SUBSYSTEM=="memory", ACTION=="add|remove" (and cpu "online" only on ppc)
    # unless crash_hotplug reads 1, through init/load-once.sh:
    #   echo $$ >> $JOBSFILE; flock -n $LOCKFILE -c
    #     'while [ -s $JOBSFILE ]; do truncate -s 0 $JOBSFILE; /lib/kdump/load.sh; done'
    # One load runs; events meanwhile append a job and exit; the running
    # instance loops once more for all of them.  load.sh loads without an
    # explicit unload: the window is the kexec_load syscall, which frees the
    # old image on entry (kernel/kexec.c do_kexec_load).  On x86 no CPU event
    # triggers a load, so a hot-added CPU stays out of the header.
    name = "load-once"
    description = "SUSE load-once.sh: one load running, events meanwhile fold into one pending load, no unload"
    triggers: ClassVar[Trigger] = frozenset({(Kind.MEMORY, Action.ADD), (Kind.MEMORY, Action.REMOVE)})

    def __init__(self) -> None:
        self._jobs = 0
        self._running = False
        self.concurrent_loads = 0
        self.max_concurrent_loads = 0

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        if self.matches(event):
            sim.nursery.start_soon(self._load_once, sim)

    async def _load_once(self, sim: Sim) -> None:
        await _spawn(sim)
        self._jobs += 1  # echo $$ >> $JOBSFILE
        if self._running:  # flock -n failed
            return
        self._running = True
        try:
            while self._jobs:
                self._jobs = 0  # truncate -s 0 $JOBSFILE
                await self._load_sh(sim)
        finally:
            self._running = False

    async def _load_sh(self, sim: Sim) -> None:
        p = sim.params
        self.concurrent_loads += 1
        self.max_concurrent_loads = max(self.max_concurrent_loads, self.concurrent_loads)
        try:
            start = trio.current_time()
            await sim.cpu.run(max(0.0, p.suse_load_s - p.kexec_load_s), sim.owner)
            built = sim.machine.state
            await sim.cpu.run(p.kexec_load_s * (1 - p.syscall_fraction), sim.owner)
            sim.machine.image_gone()  # kexec_load(2) frees the old crash image first
            await sim.cpu.run(p.kexec_load_s * p.syscall_fraction, sim.owner)
            sim.machine.image_loaded(built)
            sim.record_reload(start)
        finally:
            self.concurrent_loads -= 1

    def extras(self) -> dict[str, float]:
        return {"max_concurrent_loads": float(self.max_concurrent_loads)}


class KernelUpdate(Strategy):
    # Linux >= 6.6 CONFIG_CRASH_HOTPLUG (kernel/crash_core.c, since 6.9
    # kernel/crash_core.c crash_handle_hotplug_event): the memory notifier
    # (MEM_ONLINE/MEM_OFFLINE) and the cpuhp "crash/cpuhp" online/offline
    # callbacks call crash_handle_hotplug_event(), which does
    #   crash_hotplug_lock();
    #   if (!kexec_trylock()) { pr_info("kexec_trylock() failed, kdump image may be inaccurate"); ...; return; }
    # then rebuilds the whole elfcorehdr in place (arch_crash_handle_hotplug_event).
    # One full rebuild per event, never merged, no reload.  While it holds
    # the kexec lock a panic cannot kexec (__crash_kexec only trylocks): a
    # tiny window per event.
    #
    # What can make it drop an update: a kexec load holding the kexec lock
    # (kexec_load/kexec_file_load take it without __crash_hotplug_lock).  What
    # cannot: a udev rule's read of /sys/devices/system/{memory,cpu}/crash_hotplug.
    # crash_check_hotplug_support() takes crash_hotplug_lock() (the mutex
    # __crash_hotplug_lock) before its kexec_trylock(), exactly like the
    # update, so a read and an update serialise on that mutex: the update
    # waits for the read to finish and then gets the kexec lock.  (An earlier
    # version of this model had every read drop the next update; that was
    # wrong, bench/README.md section 2 says so.)  Nobody loads in this
    # strategy, so the model drops nothing; the reads only delay updates.
    name = "kernel"
    description = "Linux >= 6.6 CONFIG_CRASH_HOTPLUG: one in-kernel header rebuild per event, no reload"
    triggers: ClassVar[Trigger] = frozenset(
        {
            (Kind.MEMORY, Action.ONLINE),
            (Kind.MEMORY, Action.OFFLINE),
            (Kind.CPU, Action.ONLINE),
            (Kind.CPU, Action.OFFLINE),
        }
    )

    def __init__(self) -> None:
        self._crash_hotplug_lock = trio.Lock()  # __crash_hotplug_lock (a mutex: waiters block, never fail)
        self._kexec_lock_until = -math.inf  # a kexec load holding the kexec lock (none in this strategy)
        self.read_waits = 0  # updates that waited for a crash_hotplug read

    async def kernel_hook(self, sim: Sim, event: HotplugEvent) -> None:
        if not self.matches(event):
            return
        if self._crash_hotplug_lock.locked():
            self.read_waits += 1
        async with self._crash_hotplug_lock:
            if trio.current_time() < self._kexec_lock_until:  # kexec_trylock() failed: dropped
                sim.machine.dropped += 1
                return
            sim.machine.image_gone()
            await sim.cpu.run(sim.params.kernel_rebuild_s, sim.owner)
            sim.machine.image_loaded(sim.machine.state, reload=False)

    def hold_kexec_lock(self, until: float) -> None:
        """A kexec load holds the kexec lock until ``until`` (trio time): the
        updates meanwhile fail their kexec_trylock() and are dropped."""
        self._kexec_lock_until = max(self._kexec_lock_until, until)

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        # The udev rule's ATTRS{crash_hotplug}=="1" test, once a udev worker
        # picks the event up (spawn_s after it was emitted).
        sim.nursery.start_soon(self._read_crash_hotplug, sim)

    async def _read_crash_hotplug(self, sim: Sim) -> None:
        sim.udev.enter()
        try:
            await trio.sleep(sim.params.spawn_s)
            async with self._crash_hotplug_lock:  # crash_check_hotplug_support
                await trio.sleep(sim.params.sysfs_lock_s)
        finally:
            sim.udev.leave()

    def extras(self) -> dict[str, float]:
        return {"updates_that_waited_for_a_crash_hotplug_read": float(self.read_waits)}


class _ChannelSource:
    """The model's events as kdump-coalesce's sources deliver them (BPF ring
    buffer / netlink), staying open ``linger`` s after the last one, as a live
    source would, so that batches close by the policy."""

    def __init__(self, receive: trio.MemoryReceiveChannel[SourceItem], linger: float) -> None:
        self._receive = receive
        self._linger = linger

    @property
    def name(self) -> str:
        return "model"

    async def run(self, send: trio.MemorySendChannel[SourceItem]) -> None:
        async with send:
            async for item in self._receive:
                await send.send(item)
            await trio.sleep(self._linger)


class _ModelReload:
    """A :class:`coalescer.BatchConsumer` that does what the updater's full
    ``kexec`` load does: snapshot the live state, build, hash in user space,
    then kexec_load(2) (which frees the old image on entry)."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        sim, p = self.sim, self.sim.params
        self.batches.append(batch)
        if not batch.needs_update:
            return
        start = trio.current_time()
        built = sim.machine.state  # events are hints: the load reads the live state
        await sim.cpu.run(p.updater_s, sim.owner)
        await sim.cpu.run(p.kexec_load_s * (1 - p.syscall_fraction), sim.owner)
        sim.machine.image_gone()
        await sim.cpu.run(p.kexec_load_s * p.syscall_fraction, sim.owner)
        sim.machine.image_loaded(built)
        sim.record_reload(start)


class KdumpCoalesce(Strategy):
    # This project: the REAL coalescer trio stage (coalescer.run_pipeline)
    # with the default Policy, fed every event by the BPF/netlink sources (no
    # udev program runs), and a consumer that models the updater's full load.
    name = "kdump-coalesce"
    description = "kdump-coalesce: the real coalescer stage (default Policy), one full load per batch"

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self._send: trio.MemorySendChannel[SourceItem] | None = None
        self._receive: trio.MemoryReceiveChannel[SourceItem] | None = None
        self.consumer: _ModelReload | None = None

    def on_uevent(self, sim: Sim, event: HotplugEvent) -> None:
        assert self._send is not None
        sim.cpu.account(sim.params.bpf_event_s + sim.params.coalesce_event_s, sim.owner)
        self._send.send_nowait(event)

    async def background(self, sim: Sim) -> None:
        self.consumer = _ModelReload(sim)
        assert self._receive is not None
        source = _ChannelSource(self._receive, linger=self.policy.max_delay + self.policy.quiet)
        await run_pipeline([source], self.consumer, self.policy)

    def prepare(self) -> None:
        self._send, self._receive = trio.open_memory_channel[SourceItem](math.inf)

    def events_done(self, sim: Sim) -> None:
        assert self._send is not None
        self._send.close()

    def extras(self) -> dict[str, float]:
        batches = self.consumer.batches if self.consumer is not None else []
        return {"batches": float(len(batches)), "merged": float(sum(b.merged for b in batches))}


STRATEGY_TYPES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (UdevSerial, UdevThrottle, LoadOnce, KernelUpdate, KdumpCoalesce)
}
DISTRO = ("udev-serial", "udev-throttle", "load-once")
