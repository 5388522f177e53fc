"""Run strategies over a scenario on trio's virtual clock and measure them.

The hotplug path is the same for every strategy: the scenario's events in
order, each gap between two events split into CPU work of the kernel's
hotplug path (at most ``block_s``, slowed by whatever else runs) and
host-side latency (the rest: the QMP round trip between DIMMs).  Events at
the same timestamp (a block's ``add`` and ``online``) come together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio
import trio.testing

from probes import build_scenario
from ground.events import HotplugEvent

from ground.errors import ConfigError
from ._machine import Timeline
from ._params import ModelParams
from ._strategies import STRATEGY_TYPES, KdumpCoalesce, Sim, Strategy

_EPS = 1e-9


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


@dataclass(frozen=True, slots=True)
class BenchScenario:
    name: str
    description: str
    spec: Callable[[ModelParams], str]


# Every scenario models the uevents a real guest sends: each hot-added block
# gives "add" then "online" (kernel-facts.md section 7), each removed block
# "offline" then "remove"; each distro reacts to its own rule's actions.
BENCH_SCENARIOS: dict[str, BenchScenario] = {
    s.name: s
    for s in (
        BenchScenario(
            "resize-1x480g",
            "32 GiB -> 512 GiB as one 480 GiB DIMM: 3840 blocks (RFC scenario 1)",
            lambda p: f"resize:32G:512G:add=yes:interval={_us(p.block_s)}",
        ),
        BenchScenario(
            "resize-480x1g",
            "32 GiB -> 512 GiB as 480 x 1 GiB DIMMs: 3840 blocks (RFC scenario 2)",
            lambda p: f"resize:32G:512G:dimm=1G:add=yes:interval={_us(p.block_s)}:dimm_gap={_us(p.block_s + p.dimm_latency_s)}",
        ),
        BenchScenario(
            "resize-240x2g",
            "32 GiB -> 512 GiB as 240 x 2 GiB DIMMs: 3840 blocks (the real bench's many-DIMM layout: qemu stops at 256 slots)",
            lambda p: f"resize:32G:512G:dimm=2G:add=yes:interval={_us(p.block_s)}:dimm_gap={_us(p.block_s + p.dimm_latency_s)}",
        ),
        BenchScenario(
            "shrink",
            "96 GiB -> 32 GiB: 512 blocks offlined and removed (urgent: the header lists gone memory)",
            lambda p: f"shrink:96G:32G:interval={_us(p.block_s)}",
        ),
        BenchScenario(
            "churn",
            "16 GiB added, onlined, offlined, removed in one burst: net empty",
            lambda p: f"churn:16G:interval={_us(p.block_s)}",
        ),
        BenchScenario(
            "cpu",
            "CPU burst: CPUs 4-67 added and onlined, 50 ms apart",
            lambda p: "cpu:4:68:interval=50ms",
        ),
    )
}
VM_SCENARIO = "vm-resize"


@dataclass(frozen=True, slots=True)
class Metrics:
    reloads: int
    settle_s: float | None  # None: kdump never became correct again in the run
    exposure_s: float
    max_window_s: float
    stale_s: float
    cpu_s: float

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "reloads": self.reloads,
            "settle_s": None if self.settle_s is None else round(self.settle_s, 6),
            "exposure_s": round(self.exposure_s, 6),
            "max_window_s": round(self.max_window_s, 6),
            "stale_s": round(self.stale_s, 6),
            "cpu_s": round(self.cpu_s, 6),
        }


@dataclass
class StrategyRun:
    name: str
    metrics: Metrics
    total_s: float | None  # hotplug start -> kdump correct again (what the RFC measured)
    first_event_s: float
    last_event_s: float
    end_s: float
    updates: int
    dropped: int
    reload_walls: list[float]
    timeline: Timeline
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def mean_reload_s(self) -> float:
        return sum(self.reload_walls) / len(self.reload_walls) if self.reload_walls else 0.0

    @property
    def burst_s(self) -> float:
        return self.last_event_s - self.first_event_s


async def _drive(sim: Sim, strategy: Strategy, events: Sequence[HotplugEvent]) -> None:
    p = sim.params
    n = len(events)

    def latency_before(i: int) -> float:
        if i == 0:
            return 0.0
        gap = (events[i].ts_ns - events[i - 1].ts_ns) / 1e9
        return max(0.0, gap - p.block_s)

    def cpu_before(i: int) -> float:
        if i == 0:
            return p.block_s
        return min((events[i].ts_ns - events[i - 1].ts_ns) / 1e9, p.block_s)

    in_group = False
    for i, event in enumerate(events):
        latency = latency_before(i)
        if latency > _EPS:
            await trio.sleep(latency)
        if not in_group:
            sim.udev.enter()  # a DIMM (or CPU) appeared: its uevents are queued
            in_group = True
        await sim.cpu.run(cpu_before(i), "hotplug")
        sim.machine.apply(event)
        await strategy.kernel_hook(sim, event)
        strategy.on_uevent(sim, event)
        if i + 1 == n or latency_before(i + 1) > _EPS:
            sim.udev.leave()
            in_group = False
    strategy.events_done(sim)


async def _simulate(strategy: Strategy, events: Sequence[HotplugEvent], params: ModelParams) -> StrategyRun:
    async with trio.open_nursery() as nursery:
        sim = Sim(params, nursery, strategy.name)
        if isinstance(strategy, KdumpCoalesce):
            strategy.prepare()
            nursery.start_soon(strategy.background, sim)
        await _drive(sim, strategy, events)
    machine = sim.machine
    machine.close()
    tl = machine.timeline
    first = tl.events[0] if tl.events else 0.0
    last = tl.events[-1] if tl.events else 0.0
    settle = max(0.0, machine.correct_since - last) if machine.correct else None
    windows = [b - a for a, b in tl.windows]
    metrics = Metrics(
        reloads=machine.reloads,
        settle_s=settle,
        exposure_s=sum(windows),
        max_window_s=max(windows, default=0.0),
        stale_s=sum(b - a for a, b in tl.stale),
        cpu_s=sim.cpu.used[strategy.name],
    )
    return StrategyRun(
        name=strategy.name,
        metrics=metrics,
        total_s=machine.correct_since if machine.correct else None,
        first_event_s=first,
        last_event_s=last,
        end_s=trio.current_time(),
        updates=machine.updates,
        dropped=machine.dropped,
        reload_walls=sim.reload_walls,
        timeline=tl,
        extras=strategy.extras(),
    )


def run_strategy(name: str, events: Sequence[HotplugEvent], params: ModelParams, strategy: Strategy | None = None) -> StrategyRun:
    """One strategy over ``events`` on a fresh virtual clock."""
    if strategy is None:
        strategy = STRATEGY_TYPES[name]()
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(_simulate, strategy, events, params, clock=clock)


@dataclass
class BenchResult:
    scenario: BenchScenario
    spec: str
    events: int
    params: ModelParams
    runs: dict[str, StrategyRun]
    fast_reloads: int  # kdump-coalesce on the same events all arriving within quiet

    def to_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario.name,
            "source": "model",
            "strategies": {name: run.metrics.to_json() for name, run in self.runs.items()},
        }


def scenario_events(name: str, params: ModelParams) -> tuple[BenchScenario, str, tuple[HotplugEvent, ...]]:
    scenario = BENCH_SCENARIOS.get(name)
    if scenario is None:
        known = ", ".join([*BENCH_SCENARIOS, VM_SCENARIO])
        raise ConfigError("bench", f"unknown scenario {name!r} (known: {known})")
    spec = scenario.spec(params)
    return scenario, spec, build_scenario(spec).events


def fast_reloads(events: Sequence[HotplugEvent], params: ModelParams) -> int:
    """kdump-coalesce's reloads when the same events all arrive within
    ``quiet`` (1 us apart): the "events faster than quiet" target."""
    t0 = events[0].ts_ns
    fast = [
        HotplugEvent(e.kind, e.action, t0 + i * 1_000, e.source, start=e.start, size=e.size, cpu=e.cpu, ret=e.ret)
        for i, e in enumerate(events)
    ]
    quick = ModelParams.with_overrides(params, {"block_s": "0"})
    return run_strategy(KdumpCoalesce.name, fast, quick).metrics.reloads


def run_bench(name: str, params: ModelParams | None = None, strategies: Sequence[str] | None = None) -> BenchResult:
    params = params if params is not None else ModelParams()
    scenario, spec, events = scenario_events(name, params)
    chosen = list(strategies) if strategies else list(STRATEGY_TYPES)
    for s in chosen:
        if s not in STRATEGY_TYPES:
            raise ConfigError("--strategy", f"unknown strategy {s!r} (known: {', '.join(STRATEGY_TYPES)})")
    runs = {s: run_strategy(s, events, params) for s in chosen}
    fast = fast_reloads(events, params) if KdumpCoalesce.name in runs else 0
    return BenchResult(scenario, spec, len(events), params, runs, fast)


def ceil_bound(burst_s: float, max_delay: float) -> int:
    return math.ceil(burst_s / max_delay) + 1
