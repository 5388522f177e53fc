"""The BPF source: BCC compiles the program of :mod:`probes._bpf_program`,
records come out of one BPF ring buffer into trio.

trio integration, without a polling thread or a busy loop: libbpf's ring
buffer manager (``BPF._ringbuf_manager``, created by ``open_ring_buffer``) owns
an epoll fd that becomes readable when the kernel has submitted records and
woken user space (``ring_buffer__epoll_fd``; BCC does not wrap it, so it is
called through BCC's ctypes handle to libbcc, which links libbpf).  The
source waits on it with ``trio.lowlevel.wait_readable`` and then calls
``ring_buffer_consume()``, which never blocks.  The BCC callback only copies
the bytes out (it must not raise: an exception in a ctypes callback is
printed and swallowed); decoding is pure Python afterwards
(:func:`decode_record`), testable without a kernel.

Planning (:func:`plan_program`) decides what the program contains from what
*this* kernel accepts: raw tracepoint ``cpuhp_exit`` attaches, fentry on
``online_pages`` loads and attaches, a kprobe PMU exists, the kexec syscall
events exist in tracefs.  Nothing is decided from the kernel version.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ground.errors import NeedsRootError, UnavailableError

from . import _sysfs
from ._bpf_program import (
    KEXEC_SYSCALLS,
    MEMORY_FUNCS,
    MIN_PARAMS,
    PRESENCE_FUNCS,
    RECORD,
    KexecSyscall,
    MemoryProbe,
    ProgramSpec,
    RecordType,
    render,
)
from ._btf import Btf
from ._bpf_syscall import probe_fentry, probe_kprobe, probe_raw_tracepoint
from ._coverage import CPU_ONLINE_OFFLINE, MEMORY_ADD_REMOVE, MEMORY_ONLINE_OFFLINE, Change
from ground.events import Action, EventsLost, HotplugEvent, Kind, SourceItem
from ground.kexec_log import KexecCall, KexecCallLog

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MEMORY_UNAVAILABLE = "kprobes/fentry missing"


# -- decoding (pure) ---------------------------------------------------------


class RecordError(ValueError):
    """A ring buffer record this version cannot decode."""


_MEMORY_ACTIONS = {
    RecordType.MEM_GOING_ONLINE: Action.GOING_ONLINE,
    RecordType.MEM_ONLINE: Action.ONLINE,
    RecordType.MEM_GOING_OFFLINE: Action.GOING_OFFLINE,
    RecordType.MEM_OFFLINE: Action.OFFLINE,
    RecordType.MEM_ADD: Action.ADD,
    RecordType.MEM_REMOVE: Action.REMOVE,
}
# Records whose arg0/arg1 are a byte range, not a pfn range.
_BYTE_RANGES = frozenset({RecordType.MEM_ADD, RecordType.MEM_REMOVE})


def decode_record(
    raw: bytes, *, block_size: int | None, source: str = "bpf", page_size: int = PAGE_SIZE
) -> HotplugEvent | KexecCall:
    """One ``struct kc_record`` -> an event or a kexec call.

    Memory ranges are widened to whole memory blocks: ``online_pages`` is
    called once per block but, with memmap_on_memory, without the block's
    first pages (they hold its own memmap, mm/memory_hotplug.c
    ``memory_block_online``), while the uevent names the whole block.  The
    same block must look the same from both sources for the coalescer's
    cross-source dedup, and the updater re-reads the real ranges anyway.
    """
    if len(raw) < RECORD.size:
        raise RecordError(f"record of {len(raw)} bytes, expected {RECORD.size}")
    ts_ns, rtype, ret, arg0, arg1, pid, syscall, comm = RECORD.unpack_from(raw)
    try:
        kind = RecordType(rtype)
    except ValueError:
        raise RecordError(f"unknown record type {rtype}") from None
    if kind in (RecordType.CPU_ONLINE, RecordType.CPU_OFFLINE):
        action = Action.ONLINE if kind is RecordType.CPU_ONLINE else Action.OFFLINE
        # ret 0 -> None: see the memory case below.
        return HotplugEvent(Kind.CPU, action, ts_ns, source, cpu=arg0, ret=ret or None)
    if kind is RecordType.KEXEC_CALL:
        try:
            name = dict(KEXEC_SYSCALLS)[KexecSyscall(syscall)]
        except ValueError:
            raise RecordError(f"unknown kexec syscall {syscall}") from None
        return KexecCall(
            syscall=name,
            pid=pid,
            comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
            flags=arg0,
            enter_ns=arg1,
            exit_ns=ts_ns,
            ret=ret,
        )
    if arg1 == 0:
        what = "length=0 (start" if kind in _BYTE_RANGES else "nr_pages=0 (pfn"
        raise RecordError(f"memory record with {what} {arg0:#x})")
    unit = 1 if kind in _BYTE_RANGES else page_size
    start, end = arg0 * unit, (arg0 + arg1) * unit
    if block_size:
        start -= start % block_size
        end += -end % block_size
    action = _MEMORY_ACTIONS[kind]
    # A return code of 0 is carried as None, like a source that sees no code
    # (uevents): the same successful change must look the same from both
    # sources for the coalescer's dedup.  Entry probes have no code yet.
    code = (ret or None) if action in (Action.ONLINE, Action.OFFLINE, Action.ADD, Action.REMOVE) else None
    return HotplugEvent(Kind.MEMORY, action, ts_ns, source, start=start, size=end - start, ret=code)


def per_block(event: HotplugEvent, block_size: int | None) -> list[HotplugEvent]:
    """A successful memory add/remove, one event per memory block.

    ``add_memory_resource``/``try_remove_memory`` see a whole DIMM (or a
    virtio-mem range) at once, while the kernel sends one ``add``/``remove``
    uevent per block (``create_memory_block_devices``/
    ``remove_memory_block_devices``).  Since both sources are opened for
    these changes, the BPF copy is cut the same way, so that the coalescer's
    ``Deduplicator`` can match each block with its uevent.  A failure (a
    refused removal) has no uevent and stays one event."""
    if (
        event.kind is not Kind.MEMORY
        or event.action not in (Action.ADD, Action.REMOVE)
        or event.failed
        or not block_size
        or event.size <= block_size
    ):
        return [event]
    return [
        HotplugEvent(event.kind, event.action, event.ts_ns, event.source, start=start, size=block_size, ret=event.ret)
        for start in range(event.start, event.start + event.size, block_size)
    ]


# -- planning (what this kernel accepts) --------------------------------------


@dataclass
class BpfPlan:
    spec: ProgramSpec
    notes: list[str] = field(default_factory=list)
    memory_reason: str = ""  # why memory online/offline is not probed, when it is not
    presence_reason: str = ""  # why memory add/remove is not probed, when it is not

    @property
    def probes_cpu(self) -> bool:
        return self.spec.cpuhp_online is not None

    @property
    def probes_memory(self) -> bool:
        """Memory online/offline (``online_pages``/``offline_pages``)."""
        return self.spec.memory is not MemoryProbe.NONE

    @property
    def probes_presence(self) -> bool:
        """Memory add/remove (``add_memory_resource``/``try_remove_memory``)."""
        return self.spec.presence is not MemoryProbe.NONE

    @property
    def changes(self) -> frozenset[Change]:
        """The kernel changes this program follows."""
        covered: frozenset[Change] = frozenset()
        if self.probes_cpu:
            covered |= CPU_ONLINE_OFFLINE
        if self.probes_memory:
            covered |= MEMORY_ONLINE_OFFLINE
        if self.probes_presence:
            covered |= MEMORY_ADD_REMOVE
        return covered

    @property
    def probes_kexec(self) -> bool:
        return bool(self.spec.kexec_syscalls)


def plan_program(
    *,
    want_cpu: bool = True,
    want_memory: bool = True,
    want_kexec: bool = True,
    mount_tracefs: bool = True,
    ringbuf_pages: int = 256,
    kexec_syscalls: tuple[tuple[int, str], ...] | None = None,
) -> BpfPlan:
    """Decide the program from what this kernel accepts (needs root for the
    load probes; without root they all fail with EPERM).

    ``kexec_syscalls`` overrides which syscall events feed the kexec log
    (tests use a syscall this kernel has, since the host has no kexec)."""
    btf = _sysfs.load_vmlinux_btf()
    notes: list[str] = []
    cpuhp_online = cpuhp_teardown = None
    if want_cpu:
        states = _sysfs.cpuhp_states(btf=btf)
        attach = probe_raw_tracepoint("cpuhp_exit")
        if states is None:
            notes.append("bpf: cpu: CPUHP_ONLINE unknown (no BTF, no /sys/devices/system/cpu/hotplug/states)")
        elif not attach:
            notes.append(f"bpf: cpu: {attach.detail}")
        else:
            cpuhp_online, cpuhp_teardown = states.online, states.teardown
            notes.append(
                f"bpf: cpu: raw tracepoint cpuhp_exit (CPUHP_ONLINE={states.online}, "
                f"CPUHP_TEARDOWN_CPU={states.teardown} from {states.origin})"
            )
    memory = presence = MemoryProbe.NONE
    params: dict[str, int] = {}
    memory_reason = presence_reason = ""
    if want_memory:
        memory, memory_params, memory_reason = plan_functions(MEMORY_FUNCS, btf)
        presence, presence_params, presence_reason = plan_functions(PRESENCE_FUNCS, btf)
        params = {**memory_params, **presence_params}
        for what, probe, funcs, why, how in (
            ("memory online/offline", memory, MEMORY_FUNCS, memory_reason, "entry and return"),
            ("memory add/remove", presence, PRESENCE_FUNCS, presence_reason, "return"),
        ):
            if probe is MemoryProbe.NONE:
                notes.append(f"bpf: {what}: unavailable: {why}")
            else:
                notes.append(f"bpf: {what}: {probe} on {' and '.join(funcs)} ({how})")
    kexec: tuple[tuple[int, str], ...] = ()
    if want_kexec:
        wanted = kexec_syscalls if kexec_syscalls is not None else tuple((int(v), n) for v, n in KEXEC_SYSCALLS)
        if _sysfs.tracefs_dir() is None and mount_tracefs and os.geteuid() == 0:
            try:
                notes.append(f"bpf: mounted tracefs at {_sysfs.mount_tracefs()} (it was not mounted)")
            except OSError as exc:
                notes.append(f"bpf: tracefs: {exc.strerror}")
        present = tuple(
            (v, n)
            for v, n in wanted
            if _sysfs.tracepoint_exists("syscalls", f"sys_enter_{n}") and _sysfs.tracepoint_exists("syscalls", f"sys_exit_{n}")
        )
        present_names = {n for _, n in present}
        missing = [n for _, n in wanted if n not in present_names]
        if present:
            kexec = present
            notes.append(f"bpf: kexec log: syscalls tracepoints for {', '.join(n for _, n in present)}")
        if missing:
            why = "tracefs not mounted" if _sysfs.tracefs_dir() is None else "no such syscall events (kernel without CONFIG_KEXEC or CONFIG_FTRACE_SYSCALLS)"
            notes.append(f"bpf: kexec log: {', '.join(missing)} not traced: {why}")
    spec = ProgramSpec(
        cpuhp_online=cpuhp_online,
        cpuhp_teardown=cpuhp_teardown,
        memory=memory,
        presence=presence,
        memory_params=params,
        kexec_syscalls=kexec,
        ringbuf_pages=ringbuf_pages,
    )
    return BpfPlan(spec, notes, memory_reason, presence_reason)


def plan_functions(funcs: tuple[str, ...], btf: Btf | None) -> tuple[MemoryProbe, dict[str, int], str]:
    """How to probe every one of ``funcs`` (all or none: a half-watched pair
    is worse than an honest gap), by what this kernel accepts: fentry/fexit
    when a real load and attach works for each and BTF gives the parameter
    counts fexit needs, else kprobes when the kprobe PMU exists and each
    function is in kallsyms, else none.  Returns (probe, parameter counts,
    why not when none)."""
    tried: list[str] = []
    if btf is None:
        tried.append("fentry: no vmlinux BTF")
    else:
        counts = {f: btf.func_param_count(f) for f in funcs}
        fentry = [probe_fentry(f, btf.func_id(f)) for f in funcs]
        short = [f for f, c in counts.items() if c is None or c < MIN_PARAMS[f]]
        if all(fentry) and not short:
            return MemoryProbe.FENTRY, {f: c for f, c in counts.items() if c is not None}, ""
        details = [r.detail for r in fentry if not r]
        details += [f"{f}: parameter count {counts[f]} from BTF" for f in short if all(fentry)]
        tried.append("fentry: " + "; ".join(details))
    kprobes = [probe_kprobe(f) for f in funcs]
    if all(kprobes):
        return MemoryProbe.KPROBE, {}, ""
    tried.append("kprobe: " + "; ".join(dict.fromkeys(r.detail for r in kprobes if not r)))
    return MemoryProbe.NONE, {}, f"{MEMORY_UNAVAILABLE} ({'; '.join(tried)})"


# -- BCC ---------------------------------------------------------------------


def import_bcc() -> Any:
    """BCC's Python module comes from Debian (python3-bpfcc), not PyPI."""
    try:
        import bcc
    except ImportError as exc:
        raise UnavailableError(
            "bpf source", f"cannot import bcc ({exc})", "apt install python3-bpfcc; run from a venv made with --system-site-packages"
        ) from exc
    return bcc


def compile_program(text: str) -> Any:
    """Compile, load and attach ``text`` with BCC; ``UnavailableError`` when refused.

    BCC reports every failure (compile error, verifier rejection, attach
    refused) as a bare ``Exception``; this is the one place that catches it,
    to turn it into a typed error naming what failed."""
    bcc = import_bcc()
    try:
        return bcc.BPF(text=text.encode())
    except Exception as exc:  # noqa: BLE001 -- BCC raises bare Exception for everything
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "kernel headers for BCC: see 'kdump-coalesce doctor'" if "compile" in message.lower() else ""
        raise UnavailableError("bpf program", message, hint) from exc


class BpfSource:
    """Hotplug events (and kexec calls) from the BPF program.

    ``run`` compiles in a worker thread (clang takes a second or two and must
    not stall the trio loop), then reports itself attached and streams items
    until cancelled; the program is detached and the ring buffer freed on the
    way out, whatever ended it.
    """

    def __init__(
        self,
        plan: BpfPlan,
        *,
        kexec_log: KexecCallLog | None = None,
        block_size: int | None = None,
        name: str = "bpf",
        compile_fn: Callable[[str], Any] = compile_program,
        compiled: Any = None,
    ) -> None:
        if plan.spec.empty:
            raise UnavailableError("bpf source", "nothing to probe on this kernel", "; ".join(plan.notes))
        self.plan = plan
        self.kexec_log = kexec_log
        self.block_size = block_size
        self._name = name
        self._compile = compile_fn
        self._bpf: Any = compiled
        self._raw: list[bytes] = []
        self.records = 0
        self.undecodable = 0
        self.drops_seen = 0
        self.attached = trio.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def text(self) -> str:
        return render(self.plan.spec)

    def load(self) -> None:
        """Compile, load and attach now (blocking: clang takes a second or
        two), so that a refusal is reported before anything runs and records
        queue in the ring buffer until ``run`` reads them."""
        if self._bpf is None:
            if os.geteuid() != 0:
                raise NeedsRootError("the bpf source (loading BPF programs)")
            self._bpf = self._compile_with_fallback()

    def close(self) -> None:
        """Detach everything (``run`` does this itself when it ends)."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def _compile_with_fallback(self) -> Any:
        """Compile the planned program; if the kernel refuses a memory probe
        at attach time (a kprobe on a function that is notrace or
        blacklisted, an fexit the verifier rejects), plan without it and say
        so: uevents still cover memory.  Add/remove goes first (it is the
        newer probe, and its uevents are opened in every configuration), then
        online/offline."""
        try:
            return self._compile(self.text)
        except UnavailableError as exc:
            error = exc
        for drop in ("presence", "memory"):
            spec = self.plan.spec
            refused = spec.presence if drop == "presence" else spec.memory
            if refused is MemoryProbe.NONE:
                continue
            if drop == "presence":
                spec = replace(spec, presence=MemoryProbe.NONE)
            else:
                spec = replace(spec, memory=MemoryProbe.NONE)
            if spec.memory is MemoryProbe.NONE and spec.presence is MemoryProbe.NONE:
                spec = replace(spec, memory_params={})
            if spec.empty:
                break
            what = "memory add/remove" if drop == "presence" else "memory online/offline"
            reason = f"{MEMORY_UNAVAILABLE} ({refused} refused: {error.reason})"
            notes = [*self.plan.notes, f"bpf: {what}: unavailable: {reason}"]
            if drop == "presence":
                self.plan = BpfPlan(spec, notes, self.plan.memory_reason, reason)
            else:
                self.plan = BpfPlan(spec, notes, reason, self.plan.presence_reason)
            try:
                return self._compile(self.text)
            except UnavailableError as exc:
                error = exc
        raise error

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        # Runs inside ring_buffer__consume: copy the bytes out, nothing else.
        self._raw.append(ctypes.string_at(data, size))
        return 0

    async def run(
        self, send: trio.MemorySendChannel[SourceItem], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with send:
            try:
                if self._bpf is None:
                    await trio.to_thread.run_sync(self.load)
                await self._stream(self._bpf, send, task_status)
            finally:
                self.close()  # detaches every probe, frees the ring buffer
                if self.kexec_log is not None and self.plan.probes_kexec:
                    self.kexec_log.active = False

    async def _stream(self, bpf: Any, send: trio.MemorySendChannel[SourceItem], task_status: trio.TaskStatus[None]) -> None:
        from bcc.libbcc import lib

        bpf[b"events"].open_ring_buffer(self._on_record)
        epoll_fd = lib.ring_buffer__epoll_fd
        epoll_fd.restype = ctypes.c_int
        epoll_fd.argtypes = [ctypes.c_void_p]
        fd = int(epoll_fd(bpf._ringbuf_manager))
        if fd < 0:
            raise UnavailableError("bpf source", f"ring_buffer__epoll_fd failed ({fd})")
        drops = bpf[b"drops"]
        if self.kexec_log is not None and self.plan.probes_kexec:
            self.kexec_log.active = True
        self.attached.set()
        task_status.started()
        while True:
            await trio.lowlevel.wait_readable(fd)
            bpf.ring_buffer_consume()
            raw, self._raw = self._raw, []
            for record in raw:
                await self._deliver(record, send)
            lost = sum(drops[0]) if raw else 0
            if lost > self.drops_seen:
                count, self.drops_seen = lost - self.drops_seen, lost
                await send.send(
                    EventsLost(ts_ns=time.monotonic_ns(), source=self.name, count=count, reason="BPF ring buffer full")
                )

    async def _deliver(self, record: bytes, send: trio.MemorySendChannel[SourceItem]) -> None:
        self.records += 1
        try:
            item = decode_record(record, block_size=self.block_size, source=self.name)
        except RecordError as exc:
            self.undecodable += 1
            await send.send(EventsLost(ts_ns=time.monotonic_ns(), source=self.name, count=1, reason=str(exc)))
            return
        if isinstance(item, KexecCall):
            if self.kexec_log is not None:
                self.kexec_log.append(item)
            return
        for event in per_block(item, self.block_size):
            await send.send(event)

