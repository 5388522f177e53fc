"""The interface every event source implements."""

from __future__ import annotations

from typing import Protocol

import trio

from ._event import SourceItem


class EventSource(Protocol):
    """A source of hotplug events.

    ``run`` sends items until it is cancelled (live sources) or runs out (a
    replay, a scenario), then closes ``send``.  It must never block the
    coalescer for long: sending into the bounded channel is the only place it
    waits for the consumer (that is the backpressure).  A source that loses
    events sends an :class:`EventsLost` rather than dropping them silently.
    """

    @property
    def name(self) -> str: ...

    async def run(self, send: trio.MemorySendChannel[SourceItem]) -> None: ...
