"""Two live sources, one change.

Under ``--source auto`` and ``--source bpf`` a memory add or remove is
followed twice on purpose (probes/_coverage.py): by BPF on
``add_memory_resource``/``try_remove_memory`` and by the block's netlink
``add``/``remove`` uevent, which is opened in every configuration so that a
removal is seen even on a path the function probe misses.  Where both see
it, the coalescer must count it once: a duplicated ``remove`` arriving after
the block was added back would cancel that add in the batch's net change.
The BPF source cuts each add/remove into memory blocks, as the uevents come,
so both copies of one block carry the same range.

An item is a duplicate when an item with the same kind, action, target and
outcome arrived from a *different* source within ``window`` seconds (arrival
time, one clock for all sources).  A repeat from the same source is a real
repeat.  The outcome is success or failure, not how a source spells success:
BPF sees a return code and sends 0 as ``ret=None``, uevents have no code
(``ret=None``); either way ``ret=0`` and ``ret=None`` are the same change.
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
