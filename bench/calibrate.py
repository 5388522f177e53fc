#!/usr/bin/env python3
"""Fit the model's three calibrated parameters to the RFC's published figures.

Each calibrated parameter is fitted to ONE published figure (the rest of
the parameters are measured or assumed, see bench/model/_params.py):

  spawn_s         udev-throttle on resize-1x480g  -> RHEL8 1 x 480 GiB = 86 s
  kexec_load_s    udev-serial   on resize-1x480g  -> RHEL7 1 x 480 GiB = 181 s
  dimm_latency_s  mean of udev-throttle and udev-serial on resize-480x1g
                                                  -> mean of 419 s and 389 s

The three interact (a cheaper spawn speeds udev-serial up too), so the fit
goes round them a few times (coordinate descent, bisection on each).  It
prints the fitted values: copy them into ModelParams' defaults, then
`kdump-coalesce bench resize-1x480g` / `resize-480x1g` print how close every
figure, fitted or predicted, came.

Usage:  .venv/bin/python bench/calibrate.py [--rounds N] [--iterations N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Run as a script, bench/ is on sys.path, not the checkout that holds the bench package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.model import ModelParams, run_strategy, scenario_events  # noqa: E402


def total(strategy: str, scenario: str, params: ModelParams) -> float:
    _, _, events = scenario_events(scenario, params)
    run = run_strategy(strategy, events, params)
    assert run.total_s is not None, f"{strategy} never settled on {scenario}"
    return run.total_s


def bisect(f: Callable[[float], float], target: float, lo: float, hi: float, iterations: int) -> float:
    """f increasing in x: the x in [lo, hi] with f(x) ~= target."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=12)
    args = parser.parse_args(argv)
    p = ModelParams()

    def with_(**kw: float) -> ModelParams:
        return dataclasses.replace(p, **kw)

    for r in range(args.rounds):
        p = with_(spawn_s=bisect(lambda x: total("udev-throttle", "resize-1x480g", with_(spawn_s=x)), 86.0, 0.0, 0.05, args.iterations))
        p = with_(
            kexec_load_s=bisect(lambda x: total("udev-serial", "resize-1x480g", with_(kexec_load_s=x)), 181.0, 0.001, 0.2, args.iterations)
        )

        def mean_480(x: float) -> float:
            q = with_(dimm_latency_s=x)
            return (total("udev-throttle", "resize-480x1g", q) + total("udev-serial", "resize-480x1g", q)) / 2

        p = with_(dimm_latency_s=bisect(mean_480, (419.0 + 389.0) / 2, 0.1, 1.5, args.iterations))
        print(f"round {r + 1}: spawn_s={p.spawn_s:.5f} kexec_load_s={p.kexec_load_s:.5f} dimm_latency_s={p.dimm_latency_s:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
