"""The one event type every source produces.

Events are *hints*: they say that something changed and roughly where, so that
the coalescer knows when a burst starts and ends.  What a batch finally loads
is computed from the live system state, so a lost, duplicated or reordered
event can delay an update but never make it wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from .ranges import PhysRange


class Kind(enum.StrEnum):
    MEMORY = "memory"
    CPU = "cpu"


class Action(enum.StrEnum):
    """What happened.  The first four are state changes; the rest are seen by
    some sources only (the memory notifier chain, failed online/offline) and
    never change state on their own."""

    ADD = "add"
    ONLINE = "online"
    OFFLINE = "offline"
    REMOVE = "remove"
    GOING_ONLINE = "going-online"
    GOING_OFFLINE = "going-offline"
    CANCEL_ONLINE = "cancel-online"
    CANCEL_OFFLINE = "cancel-offline"


STATE_CHANGES = frozenset({Action.ADD, Action.ONLINE, Action.OFFLINE, Action.REMOVE})
# A batch that contains one of these is urgent: a header that still lists
# memory or CPUs that are gone is worse than one that lacks new ones.
REMOVALS = frozenset({Action.OFFLINE, Action.REMOVE, Action.GOING_OFFLINE})


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    """One CPU or memory hotplug event as a source saw it.

    Memory events carry ``start``/``size`` (bytes, physical); CPU events carry
    ``cpu``.  ``ts_ns`` is CLOCK_MONOTONIC in nanoseconds (the kernel's
    ``bpf_ktime_get_ns()`` for BPF, reception time for uevents, recorded time
    for replays).  ``ret`` is the kernel's return code where the source sees it
    (``online_pages``/``offline_pages`` return, ``cpuhp_exit`` ret); a non-zero
    ``ret`` means the operation failed and the state did not change.
    """

    kind: Kind
    action: Action
    ts_ns: int
    source: str
    start: int = 0
    size: int = 0
    cpu: int = -1
    ret: int | None = None

    def __post_init__(self) -> None:
        if self.kind is Kind.MEMORY:
            if self.start < 0 or self.size <= 0:
                raise ValueError(f"memory event needs start >= 0 and size > 0, got {self.start}, {self.size}")
        elif self.cpu < 0:
            raise ValueError(f"cpu event needs cpu >= 0, got {self.cpu}")

    @property
    def memory_range(self) -> PhysRange:
        return PhysRange(self.start, self.start + self.size)

    @property
    def failed(self) -> bool:
        return self.ret is not None and self.ret != 0

    @property
    def changes_state(self) -> bool:
        return self.action in STATE_CHANGES and not self.failed

    def describe(self) -> str:
        what = f"cpu{self.cpu}" if self.kind is Kind.CPU else f"memory {self.memory_range}"
        text = f"{what} {self.action} ({self.source})"
        if self.failed:
            text += f" failed ret={self.ret}"
        return text


@dataclass(frozen=True, slots=True)
class EventsLost:
    """A source lost events (ring buffer full, netlink ENOBUFS).

    The coalescer marks the open batch ``rescan``: the updater re-reads the
    whole state instead of trusting the batch's net change.  ``count`` is how
    many were lost when the source knows it.
    """

    ts_ns: int
    source: str
    count: int | None = None
    reason: str = ""


SourceItem: TypeAlias = HotplugEvent | EventsLost
