"""``--source`` specifications -> event sources.

Live sources (the changes they follow: probes/_coverage.py):

- ``auto``: BPF for what this kernel lets it probe, uevents for the rest;
  if BPF is unusable altogether (no BCC, no headers, program refused),
  uevents for everything.
- ``bpf``: BPF *plus the uevents BPF cannot replace*.  BPF must follow CPU
  and memory online/offline itself, or this is an error (on a kernel
  without kprobes and fentry it cannot see memory); it also follows memory
  add/remove where ``add_memory_resource``/``try_remove_memory`` can be
  probed.  The add/remove uevents of both kinds are opened as well, exactly
  as under ``auto``: BPF has no probe for CPU add/remove, and a memory
  removal must be seen even on a path the function probe misses.  So no
  live configuration misses a removal; ``bpf`` differs from ``auto`` only in
  failing loudly instead of falling back to uevents for online/offline.
- ``uevent``: netlink uevents only.

Beside them, on a kernel with crash hotplug (CONFIG_CRASH_HOTPLUG: the
kernel may own the header), every live spec opens the kernel log
(``kmsg``, probes/_kmsg.py): the lines that say the kernel skipped one of
its own elfcorehdr updates.  Without /dev/kmsg the daemon still runs (the
note says so): kernel mode then repairs removals but cannot see skipped
updates.

Where BPF and uevents both follow a change (memory add/remove), the
coalescer's ``Deduplicator`` counts each block once.  What was chosen and
why is in ``SourceSelection.notes``, and per change in
``SourceSelection.coverage``.

Live sources are opened (BPF compiled and attached, netlink socket bound)
here, before anything runs, so a refusal is a one-line error up front and
events that happen between opening and running are queued, not lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ground.errors import ConfigError, NeedsRootError, UnavailableError
from ground.events import Kind
from ground.kexec_log import KexecCallLog
from ground.tracefile import TraceReader

from . import _sysfs
from ._bpf import BpfSource, plan_program
from ._kmsg import KMSG_PATH, KmsgSource, kernel_has_crash_hotplug
from ._coverage import (
    BPF_REQUIRED,
    CPU_ONLINE_OFFLINE,
    GROUPS,
    MEMORY_ONLINE_OFFLINE,
    UEVENT_ALWAYS,
    Change,
    changes_of,
    describe,
)
from ._replay import replay_scenario, replay_trace
from ._source import EventSource
from ._uevent import DEFAULT_RCVBUF, UeventSource

SOURCE_SPECS = "auto|bpf|uevent|replay:FILE|scenario:NAME[:ARGS]"


@dataclass
class SourceSelection:
    sources: list[EventSource]
    notes: list[str] = field(default_factory=list)  # what was chosen and why, for the log
    block_size: int | None = None
    reader: TraceReader | None = None  # for replay: header and lenient skip count
    # live sources: change group ("memory add/remove") -> the sources following it
    coverage: dict[str, tuple[str, ...]] = field(default_factory=dict)


def open_sources(
    spec: str,
    *,
    speed: float | None = None,
    lenient: bool = False,
    kexec_log: KexecCallLog | None = None,
    kinds: frozenset[Kind] = frozenset(Kind),
    ringbuf_pages: int = 256,
    rcvbuf: int = DEFAULT_RCVBUF,
) -> SourceSelection:
    """``kinds``: what live sources must cover (``trace --kind cpu`` asks for
    CPUs only); replays and scenarios are not filtered here."""
    if spec.startswith("replay:"):
        path = spec.removeprefix("replay:")
        if not path:
            raise ConfigError("--source", "replay: needs a file, e.g. replay:/var/tmp/trace.jsonl")
        source, reader = replay_trace(path, speed=speed, lenient=lenient)
        notes = [f"replaying {path} ({len(source.items)} items{', lenient' if lenient else ''})"]
        if reader.skipped:
            notes.append(f"skipped {reader.skipped} malformed line(s) in {path}")
        return SourceSelection([source], notes, reader.header.block_size if reader.header else None, reader)
    if spec.startswith("scenario:"):
        source, block = replay_scenario(spec.removeprefix("scenario:"), speed=speed)
        return SourceSelection([source], [f"scenario {source.name} ({len(source.items)} events)"], block)
    if spec in ("auto", "bpf", "uevent"):
        return open_live_sources(spec, kexec_log=kexec_log, kinds=kinds, ringbuf_pages=ringbuf_pages, rcvbuf=rcvbuf)
    raise ConfigError("--source", f"unknown source {spec!r} (expected {SOURCE_SPECS})")


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which live source follows which kernel change (pure: see
    :func:`plan_coverage`)."""

    bpf: frozenset[Change]
    uevent: frozenset[Change]
    missing: frozenset[Change] = frozenset()  # what --source bpf needs of BPF and does not get

    def by_group(self, wanted: frozenset[Change]) -> dict[str, tuple[str, ...]]:
        """``{"memory add/remove": ("bpf", "uevent"), ...}`` for the groups wanted."""
        return {
            label: tuple(name for name, have in (("bpf", self.bpf), ("uevent", self.uevent)) if group <= have)
            for label, group in GROUPS
            if group <= wanted
        }


def plan_coverage(spec: str, wanted: frozenset[Change], bpf_can: frozenset[Change] | None) -> Coverage:
    """Split ``wanted`` between BPF and uevents.  ``bpf_can``: what the loaded
    BPF program follows, ``None`` when there is no BPF source.

    BPF takes what it follows; uevents take the rest and, whatever BPF
    follows, the add/remove pairs of both kinds (:data:`UEVENT_ALWAYS`).
    ``missing`` is what ``--source bpf`` requires of BPF itself
    (:data:`BPF_REQUIRED`) and did not get: the caller fails on it."""
    if spec == "uevent" or bpf_can is None:
        missing = wanted & BPF_REQUIRED if spec == "bpf" else frozenset()
        return Coverage(frozenset(), wanted, missing)
    bpf = bpf_can & wanted
    missing = (wanted & BPF_REQUIRED) - bpf if spec == "bpf" else frozenset()
    return Coverage(bpf, (wanted - bpf) | (wanted & UEVENT_ALWAYS), missing)


def open_live_sources(
    spec: str,
    *,
    kexec_log: KexecCallLog | None,
    kinds: frozenset[Kind],
    ringbuf_pages: int = 256,
    rcvbuf: int = DEFAULT_RCVBUF,
) -> SourceSelection:
    if not kinds:
        raise ConfigError("--kind", "no event kind selected")
    if os.geteuid() != 0:
        needs = {
            "bpf": "--source bpf (loading BPF programs)",
            "uevent": "--source uevent (a burst-sized netlink socket: SO_RCVBUFFORCE)",
            "auto": "--source auto (loading BPF programs, a burst-sized netlink socket)",
        }
        raise NeedsRootError(needs[spec])
    block_size = _sysfs.block_size_bytes()
    wanted = changes_of(kinds)
    notes: list[str] = []
    sources: list[EventSource] = []
    prefix = "auto: " if spec == "auto" else ""
    bpf = _open_bpf(spec, kinds, kexec_log, block_size, ringbuf_pages, notes) if spec in ("bpf", "auto") else None
    plan = plan_coverage(spec, wanted, bpf.plan.changes if bpf is not None else None)
    if bpf is not None:
        if plan.missing:
            bpf.close()
            why = "; ".join(
                reason
                for group, reason in (
                    (CPU_ONLINE_OFFLINE, "cpuhp tracepoints unusable"),
                    (MEMORY_ONLINE_OFFLINE, bpf.plan.memory_reason),
                )
                if group & plan.missing
            )
            raise UnavailableError(
                f"--source bpf for {describe(plan.missing)}", why, "use --source auto (uevents fill in) or --source uevent"
            )
        sources.append(bpf)
        what = describe(plan.bpf) if plan.bpf else "the kexec call log only"
        notes.append(f"{prefix}bpf for {what}")
    if plan.uevent:
        if block_size is None and any(kind is Kind.MEMORY for kind, _ in plan.uevent):
            if bpf is not None:
                bpf.close()
            raise UnavailableError(
                "uevent source for memory",
                "/sys/devices/system/memory/block_size_bytes is missing",
                "kernel without CONFIG_MEMORY_HOTPLUG",
            )
        try:
            source = UeventSource(block_size=block_size or 1, changes=plan.uevent, rcvbuf=rcvbuf)
        except UnavailableError:
            if bpf is not None:
                bpf.close()
            raise
        sources.append(source)
        both = plan.uevent & plan.bpf
        also = f"; alongside bpf for {describe(both)}, counted once" if both else ""
        notes.append(
            f"{prefix}uevent for {describe(plan.uevent)} "
            f"(netlink NETLINK_KOBJECT_UEVENT, receive buffer {source.rcvbuf >> 20} MiB{also})"
        )
    if kernel_has_crash_hotplug():
        try:
            sources.append(KmsgSource(KMSG_PATH))
            notes.append(
                f"{prefix}kmsg ({KMSG_PATH}) for the kernel's skipped elfcorehdr updates "
                "(kexec_trylock() failed, elfsz > memsz): CONFIG_CRASH_HOTPLUG kernel"
            )
        except UnavailableError as exc:
            notes.append(f"{prefix}no kmsg ({exc}): kernel mode cannot see the kernel's skipped elfcorehdr updates")
    return SourceSelection(sources, notes, block_size, coverage=plan.by_group(wanted))


def _open_bpf(
    spec: str,
    kinds: frozenset[Kind],
    kexec_log: KexecCallLog | None,
    block_size: int | None,
    ringbuf_pages: int,
    notes: list[str],
) -> BpfSource | None:
    """The BPF source, compiled and attached; ``None`` (with a note) when
    ``auto`` has to do without it.  ``--source bpf`` raises instead."""
    plan = plan_program(
        want_cpu=Kind.CPU in kinds, want_memory=Kind.MEMORY in kinds, want_kexec=True, ringbuf_pages=ringbuf_pages
    )
    try:
        source = BpfSource(plan, kexec_log=kexec_log, block_size=block_size)
        source.load()
    except UnavailableError as exc:
        if spec == "bpf":
            raise
        notes.extend(plan.notes)
        notes.append(f"auto: no bpf ({exc}); uevents for everything")
        return None
    notes.extend(source.plan.notes)
    return source
