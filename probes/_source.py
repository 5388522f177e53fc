"""The interface every event source implements."""

from __future__ import annotations

from typing import Protocol

import trio

from ground.events import SourceItem


class EventSource(Protocol):
    """A source of hotplug events.

    A live source should also accept ``task_status`` (trio's ``nursery.start``
    convention) and call ``task_status.started()`` once it is attached (BPF
    program loaded, netlink socket bound): the pipeline starts such sources
    with ``nursery.start``, so the daemon reports ready only when every probe
    is in place.  Sources without it are started with ``start_soon``.

    ``run`` sends items until it is cancelled (live sources) or runs out (a
    replay, a scenario), then closes ``send``.  It must never block the
    coalescer for long: sending into the bounded channel is the only place it
    waits for the consumer (that is the backpressure).  A source that loses
    events sends an :class:`EventsLost` rather than dropping them silently.
    """

    @property
    def name(self) -> str: ...

    async def run(self, send: trio.MemorySendChannel[SourceItem]) -> None: ...
