"""Folding events into a batch's *net* change.

A batch says what changed between the moment its first event arrived and the
moment it closed, as far as the events tell: memory ranges onlined/offlined
and added/removed, CPUs onlined/offlined and added/removed.  Each of the four
is a pair of range sets with cancellation: an ``online`` of a range that went
``offline`` earlier in the same batch cancels it instead of being recorded, so
a range added and removed inside one burst leaves no trace in the net change.

Hotplug events are transitions (a block goes offline -> online, a CPU online
-> offline), so for any sequence of valid transitions, applying a batch's net
change to the state before the batch gives the state after it.  The tests
check that property on random event sequences.

The builder never decides what to load: the updater reads the live state when
the batch runs.  A batch's net change is for deciding *whether* a reload can
be needed and for the trace; ``rescan`` says that events were lost, so even an
empty net change must not be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ground.events import REMOVALS, Action, EventsLost, HotplugEvent, Kind, SourceItem
from ground.ranges import PhysRange
from ground.records import Batch

from ._rangeset import RangeSet


class NetPair:
    """Net transitions of one kind: ``up`` (online/add) and ``down`` (offline/remove)."""

    __slots__ = ("up", "down")

    def __init__(self) -> None:
        self.up = RangeSet()
        self.down = RangeSet()

    def go_up(self, start: int, end: int) -> None:
        _transition(self.up, self.down, start, end)

    def go_down(self, start: int, end: int) -> None:
        _transition(self.down, self.up, start, end)

    def __bool__(self) -> bool:
        return bool(self.up) or bool(self.down)


def _transition(into: RangeSet, opposite: RangeSet, start: int, end: int) -> None:
    """Record ``[start, end)`` moving into ``into``; whatever part of it moved
    the opposite way earlier in the batch cancels instead."""
    if opposite:
        cancelled = opposite.overlap(start, end)
        if cancelled:
            opposite.remove(start, end)
            rest = RangeSet([(start, end)])
            for s, e in cancelled:
                rest.remove(s, e)
            for s, e in rest:
                into.add(s, e)
            return
    into.add(start, end)


def _ranges(rs: RangeSet) -> tuple[PhysRange, ...]:
    return tuple(PhysRange(s, e) for s, e in rs)


def _cpus(rs: RangeSet) -> tuple[int, ...]:
    return tuple(cpu for s, e in rs for cpu in range(s, e))


class BatchBuilder:
    """Folds items into one open batch."""

    __slots__ = (
        "seq",
        "events",
        "first_ns",
        "last_ns",
        "lost",
        "failed",
        "rescan",
        "urgent",
        "sources",
        "merged",
        "memory_online",
        "memory_present",
        "cpu_online",
        "cpu_present",
        "_dispatch",
    )

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self.events = 0
        self.first_ns: int | None = None
        self.last_ns = 0
        self.lost = 0
        self.failed = 0
        self.rescan = False
        self.urgent = False
        self.sources: set[str] = set()
        self.merged = 0
        self.memory_online = NetPair()
        self.memory_present = NetPair()
        self.cpu_online = NetPair()
        self.cpu_present = NetPair()
        # (kind, action) -> transition: the wire of events to state declared as data.
        self._dispatch: dict[tuple[Kind, Action], Callable[[int, int], None]] = {
            (Kind.MEMORY, Action.ONLINE): self.memory_online.go_up,
            (Kind.MEMORY, Action.OFFLINE): self.memory_online.go_down,
            (Kind.MEMORY, Action.ADD): self.memory_present.go_up,
            (Kind.MEMORY, Action.REMOVE): self.memory_present.go_down,
            (Kind.CPU, Action.ONLINE): self.cpu_online.go_up,
            (Kind.CPU, Action.OFFLINE): self.cpu_online.go_down,
            (Kind.CPU, Action.ADD): self.cpu_present.go_up,
            (Kind.CPU, Action.REMOVE): self.cpu_present.go_down,
        }

    @property
    def empty(self) -> bool:
        """No item folded yet (a fresh builder)."""
        return self.first_ns is None

    def fold(self, item: SourceItem) -> None:
        ts = item.ts_ns
        if self.first_ns is None:
            self.first_ns = ts
        if ts > self.last_ns:
            self.last_ns = ts
        self.sources.add(item.source)
        if isinstance(item, EventsLost):
            self.rescan = True
            self.lost += item.count if item.count is not None else 1
            return
        self.events += 1
        action = item.action
        if action in REMOVALS:
            self.urgent = True
        if item.ret:
            self.failed += 1
            return
        transition = self._dispatch.get((item.kind, action))
        if transition is None:
            return  # going-online/going-offline/cancel-*: no state change
        if item.kind is Kind.MEMORY:
            transition(item.start, item.start + item.size)
        else:
            transition(item.cpu, item.cpu + 1)

    def fold_all(self, items: Iterable[SourceItem]) -> None:
        for item in items:
            self.fold(item)

    def fold_batch(self, batch: Batch) -> None:
        """Fold an already closed batch into this one (a batch that closed
        while the consumer was busy joins the next delivery).  Replaying the
        net change as add, online, offline, remove keeps cancellation right."""
        if self.first_ns is None or batch.first_ns < self.first_ns:
            self.first_ns = batch.first_ns
        self.last_ns = max(self.last_ns, batch.last_ns)
        self.events += batch.events
        self.lost += batch.lost
        self.failed += batch.failed
        self.rescan |= batch.rescan
        self.urgent |= batch.urgent
        self.sources.update(batch.sources)
        self.merged += batch.merged
        for r in batch.added:
            self.memory_present.go_up(r.start, r.end)
        for r in batch.online:
            self.memory_online.go_up(r.start, r.end)
        for r in batch.offline:
            self.memory_online.go_down(r.start, r.end)
        for r in batch.removed:
            self.memory_present.go_down(r.start, r.end)
        for cpu in batch.cpus_added:
            self.cpu_present.go_up(cpu, cpu + 1)
        for cpu in batch.cpus_online:
            self.cpu_online.go_up(cpu, cpu + 1)
        for cpu in batch.cpus_offline:
            self.cpu_online.go_down(cpu, cpu + 1)
        for cpu in batch.cpus_removed:
            self.cpu_present.go_down(cpu, cpu + 1)

    def build(self, reason: str, opened_at: float = 0.0, closed_at: float = 0.0) -> Batch:
        return Batch(
            seq=self.seq,
            events=self.events,
            first_ns=self.first_ns or 0,
            last_ns=self.last_ns,
            opened_at=opened_at,
            closed_at=closed_at,
            reason=reason,
            online=_ranges(self.memory_online.up),
            offline=_ranges(self.memory_online.down),
            added=_ranges(self.memory_present.up),
            removed=_ranges(self.memory_present.down),
            cpus_online=_cpus(self.cpu_online.up),
            cpus_offline=_cpus(self.cpu_online.down),
            cpus_added=_cpus(self.cpu_present.up),
            cpus_removed=_cpus(self.cpu_present.down),
            rescan=self.rescan,
            urgent=self.urgent,
            lost=self.lost,
            failed=self.failed,
            sources=tuple(sorted(self.sources)),
            merged=max(self.merged, 1),
        )
