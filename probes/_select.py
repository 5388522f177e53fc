"""``--source`` specifications -> event sources.

Live sources:

- ``bpf``: the BPF program only; it must cover every kind asked for (on a
  kernel without kprobes and fentry it cannot see memory: an error, since a
  daemon blind to memory hotplug would leave kdump stale).
- ``uevent``: netlink uevents only.
- ``auto``: BPF for what this kernel lets it probe, uevents for the rest; if
  BPF is unusable altogether (no BCC, no headers, program refused), uevents
  for everything.  What was chosen and why is in ``SourceSelection.notes``.

Live sources are opened (BPF compiled and attached, netlink socket bound)
here, before anything runs, so a refusal is a one-line error up front and
events that happen between opening and running are queued, not lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ground.errors import ConfigError, NeedsRootError, UnavailableError

from . import _sysfs
from ._bpf import BpfSource, plan_program
from ground.events import Kind
from ground.kexec_log import KexecCallLog
from ._replay import replay_scenario, replay_trace
from ._source import EventSource
from ._uevent import DEFAULT_RCVBUF, UeventSource
from ground.tracefile import TraceReader

SOURCE_SPECS = "auto|bpf|uevent|replay:FILE|scenario:NAME[:ARGS]"


@dataclass
class SourceSelection:
    sources: list[EventSource]
    notes: list[str] = field(default_factory=list)  # what was chosen and why, for the log
    block_size: int | None = None
    reader: TraceReader | None = None  # for replay: header and lenient skip count


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


def _kind_names(kinds: frozenset[Kind]) -> str:
    return " and ".join(k.value for k in Kind if k in kinds)


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
    notes: list[str] = []
    sources: list[EventSource] = []
    uevent_kinds = set(kinds)
    if spec in ("bpf", "auto"):
        bpf = _open_bpf(spec, kinds, kexec_log, block_size, ringbuf_pages, notes)
        if bpf is not None:
            sources.append(bpf)
            covered = {Kind.CPU} if bpf.plan.probes_cpu else set()
            if bpf.plan.probes_memory:
                covered.add(Kind.MEMORY)
            uevent_kinds -= covered
            if spec == "bpf" and uevent_kinds:
                bpf.close()
                missing = _kind_names(frozenset(uevent_kinds))
                why = bpf.plan.memory_reason if Kind.MEMORY in uevent_kinds else "cpuhp tracepoints unusable"
                raise UnavailableError(
                    f"--source bpf for {missing}", why, "use --source auto (uevents fill in) or --source uevent"
                )
            notes.append(f"auto: bpf for {_kind_names(frozenset(covered & kinds))}" if spec == "auto" else "bpf for " + _kind_names(kinds))
    if uevent_kinds:
        if block_size is None and Kind.MEMORY in uevent_kinds:
            raise UnavailableError(
                "uevent source for memory",
                "/sys/devices/system/memory/block_size_bytes is missing",
                "kernel without CONFIG_MEMORY_HOTPLUG",
            )
        try:
            source = UeventSource(block_size=block_size or 1, kinds=frozenset(uevent_kinds), rcvbuf=rcvbuf)
        except UnavailableError:
            for s in sources:
                if isinstance(s, BpfSource):
                    s.close()
            raise
        sources.append(source)
        what = _kind_names(frozenset(uevent_kinds))
        notes.append(
            f"{'auto: ' if spec == 'auto' else ''}uevent for {what} "
            f"(netlink NETLINK_KOBJECT_UEVENT, receive buffer {source.rcvbuf >> 20} MiB)"
        )
    return SourceSelection(sources, notes, block_size)


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
