"""Two live sources, one change.

With ``--source auto`` the same CPU going online can be seen by the cpuhp
tracepoint (BPF) and by the netlink uevent.  The coalescer must count it once,
or a duplicated ``offline`` after an ``online`` would cancel wrongly.  An item
is a duplicate when an item with the same kind, action and target arrived
from a *different* source within ``window`` seconds (arrival time, one clock
for all sources).  A repeat from the same source is a real repeat.
"""

from __future__ import annotations

from ground.events import EventsLost, HotplugEvent, SourceItem

_Key = tuple[str, str, int, int, int, bool]


class Deduplicator:
    __slots__ = ("window", "_seen", "dropped")

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: dict[_Key, tuple[str, float]] = {}
        self.dropped = 0

    def accept(self, item: SourceItem, now: float) -> bool:
        if isinstance(item, EventsLost) or self.window <= 0:
            return True
        key = _key(item)
        prev = self._seen.get(key)
        if prev is not None and prev[0] != item.source and now - prev[1] <= self.window:
            self.dropped += 1
            return False
        self._seen[key] = (item.source, now)
        if len(self._seen) > 65536:
            self._expire(now)
        return True

    def _expire(self, now: float) -> None:
        self._seen = {k: v for k, v in self._seen.items() if now - v[1] <= self.window}


def _key(item: HotplugEvent) -> _Key:
    # Success or failure is part of the key (a failed online and a later
    # successful one are different changes), but how a source spells success
    # is not: ret=None (a uevent, which has no code) and ret=0 (a BPF probe)
    # are the same change.
    return (item.kind.value, item.action.value, item.start, item.size, item.cpu, item.failed)
