"""The cross-source Deduplicator on what the live sources really send: BPF
add/remove records cut into blocks beside the kernel's add/remove uevents."""

from __future__ import annotations

from coalescer import Deduplicator
from ground.events import Action, EventsLost, HotplugEvent, Kind

BLOCK = 128 << 20
DIMM = 0x100000000


def mem(action: Action, source: str, i: int = 0, ret: int | None = None) -> HotplugEvent:
    return HotplugEvent(Kind.MEMORY, action, 0, source, start=DIMM + i * BLOCK, size=BLOCK, ret=ret)


def test_one_block_removed_seen_by_both_sources_counts_once() -> None:
    dedup = Deduplicator(window=2.0)
    assert dedup.accept(mem(Action.REMOVE, "uevent"), 0.0)
    assert not dedup.accept(mem(Action.REMOVE, "bpf"), 0.3)
    assert dedup.dropped == 1
    # the neighbouring block is another change
    assert dedup.accept(mem(Action.REMOVE, "bpf", 1), 0.3)


def test_ret_zero_and_no_ret_are_one_change_but_a_failure_is_not() -> None:
    dedup = Deduplicator(window=2.0)
    assert dedup.accept(mem(Action.REMOVE, "bpf", ret=0), 0.0)
    assert not dedup.accept(mem(Action.REMOVE, "uevent", ret=None), 0.1)
    refused = Deduplicator(window=2.0)
    assert refused.accept(mem(Action.REMOVE, "bpf", ret=-16), 0.0)  # EBUSY: nothing changed, no uevent
    assert refused.accept(mem(Action.REMOVE, "uevent"), 0.1)  # a later real removal


def test_same_source_repeats_and_late_copies_are_kept() -> None:
    dedup = Deduplicator(window=2.0)
    assert dedup.accept(mem(Action.ADD, "uevent"), 0.0)
    assert dedup.accept(mem(Action.ADD, "uevent"), 0.1)  # a real repeat (added, removed, added)
    assert dedup.accept(mem(Action.ADD, "bpf"), 2.5)  # outside the window: not the same change
    assert dedup.dropped == 0


def test_losses_and_a_zero_window_pass_through() -> None:
    dedup = Deduplicator(window=2.0)
    lost = EventsLost(ts_ns=0, source="uevent", count=None, reason="ENOBUFS")
    assert dedup.accept(lost, 0.0) and dedup.accept(lost, 0.0)
    off = Deduplicator(window=0.0)
    assert off.accept(mem(Action.REMOVE, "uevent"), 0.0) and off.accept(mem(Action.REMOVE, "bpf"), 0.0)
