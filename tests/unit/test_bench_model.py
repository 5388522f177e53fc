"""The strategy model's behaviour (not its timings): what each strategy does
with the events, on trio's virtual clock, on small scenarios."""

from __future__ import annotations

import math

import dataclasses

import pytest
import trio
import trio.testing

from bench.model import ModelParams, run_bench, run_strategy
from bench.model._machine import Cpu, Machine
from bench.model._strategies import LoadOnce
from ground.errors import ConfigError
from probes import build_scenario
from ground.events import Action, HotplugEvent, Kind

PARAMS = ModelParams()
# 4 GiB as one DIMM: 32 blocks, add + online each, 10 ms apart.
SMALL = build_scenario("resize:32G:36G:add=yes:interval=10ms").events


def test_udev_serial_reloads_once_per_online_event() -> None:
    run = run_strategy("udev-serial", SMALL, PARAMS)
    onlines = sum(1 for e in SMALL if e.action is Action.ONLINE)
    assert onlines == 32
    assert run.metrics.reloads == onlines
    # every reload unloads first: one window per reload
    assert len(run.timeline.windows) == onlines
    # and they never overlap (the blocking flock serialises them)
    spans = sorted(run.timeline.reloads)
    assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert run.metrics.settle_s is not None


def test_udev_throttle_merges_a_burst_and_waits_a_second() -> None:
    run = run_strategy("udev-throttle", SMALL, PARAMS)
    # the whole 0.3 s burst falls into the first throttler's sleep 1 + settle
    assert run.metrics.reloads == 1
    start, _ = run.timeline.reloads[0]
    assert start >= PARAMS.throttle_sleep_s
    assert run.extras["throttled"] == 31


def test_load_once_never_runs_two_loads_and_catches_up() -> None:
    strategy = LoadOnce()
    run = run_strategy("load-once", SMALL, PARAMS, strategy)
    assert strategy.max_concurrent_loads == 1
    spans = sorted(run.timeline.reloads)
    assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    # events during the first load fold into one more load, not one each
    assert 2 <= run.metrics.reloads < 32
    assert run.metrics.settle_s is not None  # the last load saw the final state


def test_load_once_ignores_cpu_events_on_x86() -> None:
    events = build_scenario("cpu:2:4").events
    run = run_strategy("load-once", events, PARAMS)
    assert run.metrics.reloads == 0
    assert run.metrics.settle_s is None  # the header never gains the new CPUs


def test_kernel_updates_in_place_without_reloads() -> None:
    run = run_strategy("kernel", SMALL, PARAMS)
    assert run.metrics.reloads == 0
    assert run.updates == 32
    assert run.metrics.settle_s is not None and run.metrics.settle_s < 0.01


def test_kernel_update_waits_for_a_crash_hotplug_read_and_is_not_dropped() -> None:
    # A udev rule reading crash_hotplug holds __crash_hotplug_lock, which the
    # update takes before kexec_trylock(): even a long read only delays it.
    params = dataclasses.replace(PARAMS, sysfs_lock_s=0.05)
    run = run_strategy("kernel", SMALL, params)
    assert run.dropped == 0 and run.updates == 32
    assert run.extras["updates_that_waited_for_a_crash_hotplug_read"] > 0


async def test_kernel_update_is_dropped_while_a_kexec_load_holds_the_lock() -> None:
    from bench.model._strategies import KernelUpdate

    strategy = KernelUpdate()
    strategy.hold_kexec_lock(trio.current_time() + 10.0)

    class Machine:
        def __init__(self) -> None:
            self.dropped = 0

        def image_gone(self) -> None:
            raise AssertionError("an update ran under someone's kexec lock")

    class Sim:
        machine = Machine()

    online = next(e for e in SMALL if strategy.matches(e))
    await strategy.kernel_hook(Sim(), online)  # type: ignore[arg-type]
    assert Sim.machine.dropped == 1


def test_kdump_coalesce_reloads_once_for_the_fast_resize() -> None:
    events = build_scenario("resize:32G:512G:add=yes:interval=10us").events
    run = run_strategy("kdump-coalesce", events, dataclasses.replace(PARAMS, block_s=0.00001))
    assert run.metrics.reloads == 1
    assert run.extras["batches"] == 1
    assert run.metrics.settle_s is not None


def test_kdump_coalesce_is_bounded_by_max_delay_in_a_long_burst() -> None:
    events = build_scenario("resize:32G:64G:add=yes:interval=250ms").events  # 256 blocks over 64 s
    run = run_strategy("kdump-coalesce", events, PARAMS)
    assert 2 <= run.metrics.reloads <= 4  # ceil(64 / 30) + 1 = 4


def test_kdump_coalesce_needs_no_reload_for_churn() -> None:
    run = run_strategy("kdump-coalesce", build_scenario("churn:1G").events, PARAMS)
    assert run.metrics.reloads == 0
    assert run.metrics.settle_s == 0.0  # back to where it started


def test_removals_wait_at_most_urgent_max_delay_additions_up_to_max_delay() -> None:
    # The same 20 s stream of block events (512 blocks, 40 ms apart), once as
    # removals and once as additions.  Removals are urgent: a batch holding
    # one closes urgent_max_delay (5 s) after it, so the stream takes a
    # reload every 5 s; additions wait up to max_delay (30 s): one reload.
    shrink = run_strategy("kdump-coalesce", build_scenario("shrink:96G:32G:interval=40ms").events, PARAMS)
    grow = run_strategy("kdump-coalesce", build_scenario("resize:32G:96G:interval=40ms").events, PARAMS)
    burst = 511 * 0.040
    assert shrink.metrics.reloads >= math.ceil(burst / 5.0)
    assert grow.metrics.reloads == 1


def test_metrics_follow_the_machine() -> None:
    async def main() -> Machine:
        m = Machine()
        m.apply(HotplugEvent(Kind.MEMORY, Action.ONLINE, 0, "t", start=1 << 32, size=128 << 20))
        await trio.sleep(2)
        m.image_gone()
        await trio.sleep(1)
        m.image_loaded(m.state)
        m.close()
        return m

    m = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert m.timeline.stale == [(0.0, 2.0)]  # stale until the image went away
    assert m.timeline.windows == [(2.0, 3.0)]
    assert m.correct and m.correct_since == 3.0 and m.reloads == 1


def test_cpu_is_shared_between_runnable_jobs() -> None:
    finished: dict[str, float] = {}

    async def job(cpu: Cpu, name: str, work: float) -> None:
        await cpu.run(work, name)
        finished[name] = trio.current_time()

    async def main() -> None:
        cpu = Cpu(1.0)
        async with trio.open_nursery() as n:
            n.start_soon(job, cpu, "a", 1.0)
            n.start_soon(job, cpu, "b", 2.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert finished["a"] == pytest.approx(2.0)  # half speed while b runs
    assert finished["b"] == pytest.approx(3.0)


def test_unknown_parameter_and_scenario_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model parameter"):
        PARAMS.with_overrides({"nope": "1"})
    with pytest.raises(ConfigError, match="not a number"):
        PARAMS.with_overrides({"cpus": "two"})
    with pytest.raises(ConfigError, match="unknown scenario"):
        run_bench("resize-2x", PARAMS)
