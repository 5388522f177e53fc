"""The trio stage's timing, on trio's virtual clock (pytest-trio autojump_clock)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from coalescer import BatchRecorder, CoalescerStage, Policy, run_pipeline
from ground.records import Batch
from probes import ReplaySource, build_scenario
from ground.events import Action, EventsLost, HotplugEvent, Kind, SourceItem

BLOCK = 128 << 20


def mem(t_s: float, idx: int, action: Action = Action.ONLINE, source: str = "test") -> HotplugEvent:
    return HotplugEvent(Kind.MEMORY, action, int(t_s * 1e9) + 1, source, start=(32 + idx) * BLOCK, size=BLOCK)


async def run(items: Sequence[SourceItem], policy: Policy, speed: float | None = 1.0, linger: float = 1000.0) -> list[Batch]:
    """Replay ``items`` and keep the source open ``linger`` seconds, so the
    last batch closes by the policy, not by end of input."""
    recorder = BatchRecorder()
    await run_pipeline([ReplaySource("test", items, speed, linger)], recorder, policy)
    return recorder.batches


async def test_fast_burst_is_one_batch(autojump_clock: trio.testing.MockClock) -> None:
    batches = await run(build_scenario("resize:32G:512G").events, Policy(), speed=None)
    assert len(batches) == 1 and batches[0].reason == "quiet"
    assert batches[0].events == 3840 and len(batches[0].online) == 1


async def test_gap_longer_than_quiet_splits(autojump_clock: trio.testing.MockClock) -> None:
    policy = Policy(quiet=1.0, max_delay=30.0)
    items = [mem(0.0, 0), mem(0.5, 1), mem(2.0, 2), mem(2.1, 3)]  # 1.5 s gap > quiet
    batches = await run(items, policy)
    assert [b.events for b in batches] == [2, 2]
    assert batches[0].reason == "quiet"
    # the first batch closed `quiet` after its last event arrived
    assert batches[0].closed_at - batches[0].opened_at == pytest.approx(0.5 + 1.0)


async def test_continuous_storm_is_bounded_by_max_delay(autojump_clock: trio.testing.MockClock) -> None:
    policy = Policy(quiet=1.0, max_delay=10.0)
    # one block every 0.5 s for 60 s: never quiet
    items = [mem(i * 0.5, i) for i in range(120)]
    batches = await run(items, policy)
    duration = 60.0
    assert len(batches) <= math.ceil(duration / policy.max_delay) + 1
    assert all(b.reason == "max_delay" for b in batches[:-1])
    for b in batches:
        assert b.closed_at - b.opened_at <= policy.max_delay + 1e-9
    assert sum(b.events for b in batches) == 120


async def test_removal_closes_early(autojump_clock: trio.testing.MockClock) -> None:
    policy = Policy(quiet=5.0, max_delay=60.0, urgent_quiet=0.25, urgent_max_delay=2.0)  # explicit: not the defaults
    items = [mem(0.0, 0), mem(0.1, 0, Action.OFFLINE)]
    start = trio.current_time()
    batches = await run(items, policy)
    assert len(batches) == 1 and batches[0].urgent
    assert batches[0].reason == "urgent_quiet"
    assert batches[0].closed_at - start == pytest.approx(0.1 + 0.25)


async def test_lost_events_mark_rescan(autojump_clock: trio.testing.MockClock) -> None:
    items: list[SourceItem] = [mem(0.0, 0), EventsLost(2, "uevent", None, "ENOBUFS")]
    batches = await run(items, Policy())
    assert len(batches) == 1 and batches[0].rescan and batches[0].lost == 1


class SlowConsumer:
    """Takes `delay` virtual seconds per batch and checks it is never re-entered."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[Batch] = []
        self.active = 0
        self.max_active = 0

    async def consume(self, batch: Batch) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await trio.sleep(self.delay)
        self.batches.append(batch)
        self.active -= 1


async def test_batches_closing_during_a_reload_merge(autojump_clock: trio.testing.MockClock) -> None:
    policy = Policy(quiet=1.0, max_delay=30.0)
    # three bursts 2 s apart; the consumer takes 10 s: bursts 2 and 3 close
    # while burst 1 is being consumed and must arrive as ONE merged delivery.
    items = [mem(0.0, 0), mem(2.5, 1), mem(5.0, 2)]
    consumer = SlowConsumer(10.0)
    await run_pipeline([ReplaySource("t", items, 1.0, linger=100.0)], consumer, policy)
    assert consumer.max_active == 1
    assert [b.merged for b in consumer.batches] == [1, 2]
    assert consumer.batches[1].events == 2
    assert len(consumer.batches[1].online) == 1  # blocks 1 and 2 are adjacent


async def test_two_sources_same_change_counted_once(autojump_clock: trio.testing.MockClock) -> None:
    cpu_bpf = [HotplugEvent(Kind.CPU, a, 1 + i, "bpf", cpu=1) for i, a in enumerate([Action.OFFLINE, Action.ONLINE])]
    cpu_uev = [HotplugEvent(Kind.CPU, a, 5 + i, "uevent", cpu=1) for i, a in enumerate([Action.OFFLINE, Action.ONLINE])]
    recorder = BatchRecorder()
    stage_holder: list[CoalescerStage] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            stage = await nursery.start(
                run_pipeline, [ReplaySource("bpf", cpu_bpf, None), ReplaySource("uevent", cpu_uev, None)], recorder, Policy()
            )
            stage_holder.append(stage)

    await main()
    (batch,) = recorder.batches
    assert batch.events == 2  # the uevent copies were dropped
    assert stage_holder[0].duplicates == 2
    assert batch.net_empty  # offline then online of cpu1: no net change


async def test_source_outrunning_a_slow_consumer_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    # 3840 events into a channel of 16 while the consumer sleeps: the
    # collector keeps draining (it never waits on the consumer), and
    # everything ends up folded.
    policy = Policy(channel_size=16)
    consumer = SlowConsumer(100.0)
    await run_pipeline([ReplaySource("t", build_scenario("resize:32G:512G").events, None)], consumer, policy)
    assert sum(b.events for b in consumer.batches) == 3840


async def test_stop_sources_flushes_and_lets_the_delivery_finish(autojump_clock: trio.testing.MockClock) -> None:
    consumer = SlowConsumer(5.0)
    items = [mem(0.0, 0), mem(0.1, 1)]
    async with trio.open_nursery() as nursery:
        stage: CoalescerStage = await nursery.start(
            run_pipeline, [ReplaySource("live", items, 1.0, linger=10_000.0)], consumer, Policy(quiet=30.0, max_delay=60.0)
        )
        await trio.sleep(1.0)  # both events in, batch open (quiet is 30 s)
        assert consumer.batches == [] and stage.open_batch() is not None
        stage.stop_sources()
    # the open batch was flushed at stop and delivered in full (5 s consume)
    (batch,) = consumer.batches
    assert batch.reason == "eof" and batch.events == 2


def test_dedup_treats_ret_zero_and_no_ret_as_the_same_change() -> None:
    from coalescer import Deduplicator

    dedup = Deduplicator(window=2.0)
    bpf = HotplugEvent(Kind.CPU, Action.ONLINE, 1, "bpf", cpu=1, ret=0)
    uevent = HotplugEvent(Kind.CPU, Action.ONLINE, 2, "uevent", cpu=1)
    failed = HotplugEvent(Kind.CPU, Action.ONLINE, 3, "uevent", cpu=1, ret=-11)
    assert dedup.accept(bpf, 0.0)
    assert not dedup.accept(uevent, 0.01)
    assert dedup.accept(failed, 0.02)  # a failure is a different change
    assert dedup.accept(HotplugEvent(Kind.CPU, Action.ONLINE, 4, "uevent", cpu=1), 5.0)  # outside the window
