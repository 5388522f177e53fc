"""The batch builder's net change, checked against applying events one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from coalescer import BatchBuilder, Policy, coalesce
from ground.records import Batch
from probes import build_scenario
from ground.events import Action, EventsLost, HotplugEvent, Kind
from ground.ranges import PhysRange

BLOCK = 128 << 20
BLOCKS = 6
CPUS = 4


@dataclass
class State:
    present: set[int] = field(default_factory=set)  # memory blocks (index) or cpus
    online: set[int] = field(default_factory=set)
    cpus_present: set[int] = field(default_factory=lambda: {0})
    cpus_online: set[int] = field(default_factory=lambda: {0})

    def copy(self) -> State:
        return State(set(self.present), set(self.online), set(self.cpus_present), set(self.cpus_online))


def apply_event(state: State, ev: HotplugEvent) -> None:
    if ev.kind is Kind.MEMORY:
        idx = ev.start // BLOCK
        present, online = state.present, state.online
    else:
        idx = ev.cpu
        present, online = state.cpus_present, state.cpus_online
    {
        Action.ADD: lambda: present.add(idx),
        Action.REMOVE: lambda: present.discard(idx),
        Action.ONLINE: lambda: online.add(idx),
        Action.OFFLINE: lambda: online.discard(idx),
    }[ev.action]()


def blocks(ranges: tuple[PhysRange, ...]) -> set[int]:
    return {b for r in ranges for b in range(r.start // BLOCK, r.end // BLOCK)}


def apply_batch(state: State, b: Batch) -> None:
    # Net sets are disjoint pairwise, so the order of these updates is irrelevant.
    state.present = (state.present | blocks(b.added)) - blocks(b.removed)
    state.online = (state.online | blocks(b.online)) - blocks(b.offline)
    state.cpus_present = (state.cpus_present | set(b.cpus_added)) - set(b.cpus_removed)
    state.cpus_online = (state.cpus_online | set(b.cpus_online)) - set(b.cpus_offline)


@st.composite
def valid_histories(draw: st.DrawFn) -> list[HotplugEvent]:
    """Random sequences of *valid* transitions: absent -> add -> offline block
    -> online -> offline -> remove, for memory blocks and CPUs alike."""
    state = State()
    events: list[HotplugEvent] = []
    t = 1_000
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.integers(0, 3_000_000_000))
        kind = draw(st.sampled_from([Kind.MEMORY, Kind.CPU]))
        idx = draw(st.integers(0, (BLOCKS if kind is Kind.MEMORY else CPUS) - 1))
        present = state.present if kind is Kind.MEMORY else state.cpus_present
        online = state.online if kind is Kind.MEMORY else state.cpus_online
        if idx not in present:
            action = Action.ADD
        elif idx in online:
            action = Action.OFFLINE
        else:
            action = draw(st.sampled_from([Action.ONLINE, Action.REMOVE]))
        if kind is Kind.MEMORY:
            ev = HotplugEvent(kind, action, t, "test", start=idx * BLOCK, size=BLOCK)
        else:
            ev = HotplugEvent(kind, action, t, "test", cpu=idx)
        apply_event(state, ev)
        events.append(ev)
    return events


@given(valid_histories(), st.lists(st.integers(0, 40), max_size=6))
@settings(max_examples=400)
def test_batch_by_batch_equals_event_by_event(events: list[HotplugEvent], cuts: list[int]) -> None:
    reference = State()
    for ev in events:
        apply_event(reference, ev)
    folded = State()
    bounds = sorted({0, len(events), *[min(c, len(events)) for c in cuts]})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        builder = BatchBuilder()
        builder.fold_all(events[lo:hi])
        apply_batch(folded, builder.build("test"))
    assert folded == reference


@given(valid_histories(), st.integers(0, 40))
@settings(max_examples=200)
def test_merging_closed_batches_equals_one_batch(events: list[HotplugEvent], cut: int) -> None:
    whole = BatchBuilder()
    whole.fold_all(events)
    first, second = BatchBuilder(), BatchBuilder()
    first.fold_all(events[:cut])
    second.fold_all(events[cut:])
    merged = BatchBuilder()
    merged.fold_batch(first.build("a"))
    merged.fold_batch(second.build("b"))
    a, b = whole.build("x"), merged.build("x")
    for name in ("online", "offline", "added", "removed", "cpus_online", "cpus_offline", "cpus_added", "cpus_removed"):
        assert getattr(a, name) == getattr(b, name), name


@given(
    st.lists(st.integers(0, 5_000_000_000), min_size=1, max_size=80),
    st.floats(0.05, 3.0),
    st.floats(0.05, 10.0),
)
@settings(max_examples=300)
def test_no_batch_spans_more_than_max_delay(gaps: list[int], quiet: float, extra: float) -> None:
    policy = Policy(quiet=quiet, max_delay=quiet + extra)
    t = 0
    events = []
    for i, gap in enumerate(gaps):
        t += gap
        events.append(HotplugEvent(Kind.MEMORY, Action.ONLINE, t, "test", start=i * BLOCK, size=BLOCK))
    batches = coalesce(events, policy)
    assert sum(b.events for b in batches) == len(events)
    for b in batches:
        assert b.last_ns - b.first_ns < policy.max_delay * 1e9


def test_churn_is_net_empty_but_reported() -> None:
    builder = BatchBuilder()
    builder.fold_all(build_scenario("churn:1G").events)
    batch = builder.build("eof")
    assert batch.events == 32
    assert batch.net_empty and not batch.needs_update


def test_lost_events_force_rescan_even_when_net_empty() -> None:
    builder = BatchBuilder()
    builder.fold(EventsLost(5, "uevent", count=12, reason="ENOBUFS"))
    batch = builder.build("quiet")
    assert batch.net_empty and batch.rescan and batch.needs_update and batch.lost == 12


def test_failed_online_changes_nothing() -> None:
    builder = BatchBuilder()
    builder.fold(HotplugEvent(Kind.MEMORY, Action.ONLINE, 1, "bpf", start=0, size=BLOCK, ret=-16))
    batch = builder.build("quiet")
    assert batch.failed == 1 and batch.net_empty and batch.events == 1


def test_removal_marks_batch_urgent() -> None:
    builder = BatchBuilder()
    builder.fold(HotplugEvent(Kind.MEMORY, Action.ONLINE, 1, "t", start=0, size=BLOCK))
    assert not builder.build("x").urgent
    builder.fold(HotplugEvent(Kind.CPU, Action.OFFLINE, 2, "t", cpu=3))
    assert builder.build("x").urgent


def test_resize_480x1g_merges_into_one_range() -> None:
    builder = BatchBuilder()
    builder.fold_all(build_scenario("resize:32G:512G:dimm=1G").events)
    batch = builder.build("eof")
    assert batch.events == 3840
    assert batch.online == (PhysRange(33 << 30, (33 + 480) << 30),)
