"""The coalescer's trio stage: sources -> bounded channel -> batches -> consumer.

Two tasks:

- the collector receives items and folds them, waking at the open batch's
  deadline (``trio.move_on_at``: no polling, no busy loop);
- the deliverer hands closed batches to the consumer one at a time.  A batch
  that closes while the consumer is still busy (a reload in progress) is
  merged into the pending delivery, never queued twice: there is at most one
  reload in flight and at most one waiting.

The channel from the sources is bounded (``Policy.channel_size``): a source
that outruns the coalescer waits in ``send``; nothing grows without bound.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol

import trio

from probes import EventSource
from ground.events import SourceItem

from ._batch import BatchBuilder
from ground.records import Batch
from ._core import Coalescer, OpenBatch
from ground.observer import FanOut, Observer
from ._policy import Policy


class BatchConsumer(Protocol):
    async def consume(self, batch: Batch) -> None:
        """Handle one (possibly merged) batch; the coalescer never calls this
        concurrently with itself."""


class CoalescerStage:
    def __init__(self, policy: Policy, consumer: BatchConsumer, observer: Observer | None = None) -> None:
        self.core = Coalescer(policy)
        self.consumer = consumer
        self.observer: Observer = observer if observer is not None else FanOut()
        self._pending: BatchBuilder | None = None
        self._pending_opened = 0.0
        self._pending_closed = 0.0
        self._pending_reason = ""
        self._wakeup = trio.Event()
        self._eof = False
        self._sources_scope = trio.CancelScope()
        self.deliveries = 0
        self.busy = False

    def stop_sources(self) -> None:
        """Graceful stop: the sources end, the open batch is flushed and
        delivered, then the stage returns.  A delivery in progress (a reload)
        is never cancelled by this."""
        self._sources_scope.cancel()

    @property
    def duplicates(self) -> int:
        return self.core.dedup.dropped

    def open_batch(self) -> OpenBatch | None:
        return self.core.open_batch()

    async def run(self, receive: trio.MemoryReceiveChannel[SourceItem]) -> None:
        """Run until the channel closes (every source finished), then deliver
        what is pending and return."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver)
            try:
                await self._collect(receive)
            finally:
                self._eof = True
                self._wakeup.set()

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
            if item is None:  # the open batch's deadline passed
                self._hand(core.close_due(now))
                continue
            # Fold everything already queued without going back to the
            # scheduler: a burst arrives as a burst, and one cancel scope and
            # one wake-up per item would cost more than the folding itself.
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

    def _hand(self, batch: Batch | None) -> None:
        if batch is None:
            return
        self.observer.on_batch(batch)
        if self._pending is None:
            self._pending = BatchBuilder(batch.seq)
            self._pending_opened = batch.opened_at
        self._pending.fold_batch(batch)
        self._pending_closed = batch.closed_at
        self._pending_reason = batch.reason
        self._wakeup.set()

    def _take(self) -> Batch | None:
        if self._pending is None:
            return None
        batch = self._pending.build(self._pending_reason, opened_at=self._pending_opened, closed_at=self._pending_closed)
        self._pending = None
        return batch

    async def _deliver(self) -> None:
        while True:
            batch = self._take()
            if batch is not None:
                self.busy = True
                try:
                    await self.consumer.consume(batch)
                finally:
                    self.busy = False
                self.deliveries += 1
                continue
            if self._eof:
                return
            await self._wakeup.wait()
            self._wakeup = trio.Event()


async def run_pipeline(
    sources: Sequence[EventSource],
    consumer: BatchConsumer,
    policy: Policy,
    observer: Observer | None = None,
    *,
    task_status: trio.TaskStatus[CoalescerStage] = trio.TASK_STATUS_IGNORED,
) -> CoalescerStage:
    """Run every source into one coalescer stage until all sources finish
    (or :meth:`CoalescerStage.stop_sources` is called), then deliver what is
    pending and return the stage (its counters are the run's statistics)."""
    stage = CoalescerStage(policy, consumer, observer)
    send, receive = trio.open_memory_channel[SourceItem](policy.channel_size)
    clones = [send.clone() for _ in sources]
    send.close()

    async def run_sources() -> None:
        try:
            with stage._sources_scope:
                async with trio.open_nursery() as nursery:
                    for source, clone in zip(sources, clones, strict=True):
                        if _reports_attached(source):
                            await nursery.start(source.run, clone)
                        else:
                            nursery.start_soon(source.run, clone)
                    attached.set()
        finally:
            # A source cancelled before it started never closed its clone;
            # the coalescer sees end-of-input only once all are closed.
            for clone in clones:
                clone.close()
            attached.set()  # also when stopped before every source attached

    attached = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stage.run, receive)
        nursery.start_soon(run_sources)
        await attached.wait()
        task_status.started(stage)
    return stage


def _reports_attached(source: EventSource) -> bool:
    try:
        return "task_status" in inspect.signature(source.run).parameters
    except (TypeError, ValueError):
        return False
