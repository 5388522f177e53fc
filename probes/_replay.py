"""Replaying items: a recorded trace or a synthetic scenario.

Items are sent as fast as the coalescer takes them (``speed=None``) or paced
by their recorded timestamps, ``speed`` times faster than recorded.  Pacing
uses trio's clock, so under ``trio.testing.MockClock(autojump_threshold=0)``
a replay at recorded speed runs in virtual time (the bench and the tests do
this to reproduce minutes of hotplug in milliseconds).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ground.events import SourceItem
from ._scenario import build_scenario
from ground.tracefile import TraceReader


class ReplaySource:
    def __init__(self, name: str, items: Sequence[SourceItem], speed: float | None = None, linger: float = 0.0) -> None:
        """``linger``: seconds to stay open after the last item, as a live
        source would, so that the open batch closes by the policy (quiet,
        max_delay) instead of by end-of-input."""
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0")
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self._name = name
        self.items = items
        self.speed = speed
        self.linger = linger

    @property
    def name(self) -> str:
        return self._name

    async def run(self, send: trio.MemorySendChannel[SourceItem]) -> None:
        async with send:
            if not self.items:
                return
            start = trio.current_time()
            t0 = self.items[0].ts_ns
            for n, item in enumerate(self.items):
                if self.speed is not None:
                    await trio.sleep_until(start + max(0, item.ts_ns - t0) / 1e9 / self.speed)
                    await send.send(item)
                    continue
                # As fast as possible: fill the channel without a scheduler
                # round trip per item, yielding every 256 items (and whenever
                # the channel is full, which is the backpressure).
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:
                    await send.send(item)
                if n % 256 == 255:
                    await trio.lowlevel.checkpoint()
            if self.linger:
                await trio.sleep(self.linger)


def replay_trace(path: str, *, speed: float | None = None, lenient: bool = False) -> tuple[ReplaySource, TraceReader]:
    """Read the whole trace first: a malformed file is rejected before any
    event reaches the coalescer (and so before anything could be reloaded)."""
    reader = TraceReader(path, lenient=lenient)
    items = reader.read_all()
    return ReplaySource(f"replay:{path}", items, speed), reader


def replay_scenario(spec: str, *, speed: float | None = None) -> tuple[ReplaySource, int]:
    scenario = build_scenario(spec)
    return ReplaySource(f"scenario:{spec}", scenario.events, speed), scenario.block_size
