"""Event sources: the kernel's hotplug events as :class:`HotplugEvent`.

Sources: BPF (BCC) on the cpuhp tracepoints and the memory hotplug functions,
netlink uevents, replay of a recorded trace, and synthetic scenarios.
"""

from ._event import (
    REMOVALS,
    STATE_CHANGES,
    Action,
    EventsLost,
    HotplugEvent,
    Kind,
    MemoryRange,
    SourceItem,
)
from ._kexec_log import KexecCall, KexecCallLog
from ._source import EventSource

__all__ = [
    "REMOVALS",
    "STATE_CHANGES",
    "Action",
    "EventSource",
    "EventsLost",
    "HotplugEvent",
    "KexecCall",
    "KexecCallLog",
    "Kind",
    "MemoryRange",
    "SourceItem",
]
