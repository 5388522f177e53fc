#!/usr/bin/env python3
"""Where the trio pipeline's time goes, and what a drain loop would buy.

An EXPERIMENT for the coalescer's owner, not shipped code: it subclasses the
private ``CoalescerStage._collect`` and ``ReplaySource.run`` to measure two
changes without editing ``coalescer/`` or ``probes/``:

- ``drain``: after one awaited ``receive()``, fold every item already in the
  channel with ``receive_nowait()`` under one ``trio.current_time()``, and only
  then go back to ``move_on_at(deadline)`` + ``await receive()``: one cancel
  scope and one task switch per *drain*, not per item.
- ``batch source``: the replay source sends with ``send_nowait`` and
  checkpoints every 256 items (``await send.send`` only when the channel is
  full), instead of one checkpoint (a task switch) per item.

Each alone gains little (the source yields after every item, so the channel
never holds more than one for the drain to take); together they remove the
per-item round trip through trio's scheduler.

Usage:  .venv/bin/python bench/pipeline_drain_experiment.py
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Sequence

import trio

from coalescer import BatchRecorder, CoalescerStage, Policy, _stage
from probes import ReplaySource, SourceItem, build_scenario

EVENTS = build_scenario("resize:32G:512G").events
POLICY = Policy()


class DrainStage(CoalescerStage):
    async def _collect(self, receive: trio.MemoryReceiveChannel[SourceItem]) -> None:
        core = self.core
        while True:
            deadline = core.deadline()
            item: SourceItem | None = None
            try:
                if deadline is None:
                    item = await receive.receive()
                else:
                    with trio.move_on_at(deadline[0]):
                        item = await receive.receive()
            except trio.EndOfChannel:
                break
            now = trio.current_time()
            if item is None:
                self._hand(core.close_due(now))
                continue
            while True:
                accepted, closed = core.feed(item, now)
                self._hand(closed)
                if accepted:
                    self.observer.on_item(item)
                try:
                    item = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
        self._hand(core.flush(trio.current_time(), "eof"))


class BatchingSource(ReplaySource):
    async def run(self, send: trio.MemorySendChannel[SourceItem]) -> None:
        async with send:
            for i, item in enumerate(self.items):
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:
                    await send.send(item)
                if i % 256 == 255:
                    await trio.lowlevel.checkpoint()


def measure(stage_cls: type[CoalescerStage], source_cls: type[ReplaySource], repeat: int = 7) -> tuple[float, int]:
    original = _stage.CoalescerStage
    _stage.CoalescerStage = stage_cls  # type: ignore[misc]
    try:
        best = float("inf")
        batches = 0
        for _ in range(repeat):
            recorder = BatchRecorder()

            async def main() -> None:
                await _stage.run_pipeline([source_cls("bench", EVENTS, None)], recorder, POLICY)

            gc.collect()
            t0 = time.perf_counter()
            trio.run(main)
            best = min(best, time.perf_counter() - t0)
            batches = len(recorder.batches)
        return len(EVENTS) / best, batches
    finally:
        _stage.CoalescerStage = original  # type: ignore[misc]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    print(f"resize:32G:512G, {len(EVENTS)} events, trio pipeline + BatchRecorder, best of 7")
    for label, stage_cls, source_cls in (
        ("as shipped", CoalescerStage, ReplaySource),
        ("drain collector", DrainStage, ReplaySource),
        ("batching source", CoalescerStage, BatchingSource),
        ("drain + batching source", DrainStage, BatchingSource),
    ):
        rate, batches = measure(stage_cls, source_cls)
        print(f"{label:26} {rate:12,.0f} events/s  ({batches} batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
