"""The strategy model behind ``kdump-coalesce bench``: every distro's udev
path, the kernel's in-kernel update and kdump-coalesce itself, run over the
same synthetic hotplug scenarios on trio's virtual clock.

Pure: no root, no kernel, no real time.  ``bench/README.md`` has the figures
and how the model was calibrated against the published ones.  Not part of the
installed package: ``kdump-coalesce bench`` imports it from the checkout.
"""

from ._params import KDUMPCTL_RELOAD_RANGE, PUBLISHED, TOLERANCE, ModelParams, Published
from ._plot import plot
from ._report import render
from ._run import (
    BENCH_SCENARIOS,
    VM_SCENARIO,
    BenchResult,
    BenchScenario,
    Metrics,
    StrategyRun,
    ceil_bound,
    run_bench,
    run_strategy,
    scenario_events,
)
from ._strategies import DISTRO, STRATEGY_TYPES

__all__ = [
    "BENCH_SCENARIOS",
    "DISTRO",
    "KDUMPCTL_RELOAD_RANGE",
    "PUBLISHED",
    "STRATEGY_TYPES",
    "TOLERANCE",
    "VM_SCENARIO",
    "BenchResult",
    "BenchScenario",
    "Metrics",
    "ModelParams",
    "Published",
    "StrategyRun",
    "ceil_bound",
    "plot",
    "render",
    "run_bench",
    "run_strategy",
    "scenario_events",
]
