"""``kdump-coalesce bench``: every distro strategy and kdump-coalesce on the same hotplug events."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from ground.errors import EXIT_OK, ConfigError, UnavailableError

NAME = "bench"
ORDER = 60

# The real bench in a qemu guest lives in this module once it exists
# (issue 7, part 2); it must define run_vm_bench(args) -> int.
VM_BENCH_MODULE = "kdump_coalesce._benchvm"

EPILOG = """\
scenarios (model, virtual clock, seconds to run):
  resize-1x480g   32 GiB -> 512 GiB as one 480 GiB DIMM (3840 blocks), the RFC's first case
  resize-480x1g   32 GiB -> 512 GiB as 480 x 1 GiB DIMMs, the RFC's second case
  shrink          96 GiB -> 32 GiB, 512 blocks offlined and removed
  churn           16 GiB added and removed in one burst (net empty)
  cpu             64 CPUs added and onlined, 50 ms apart
  vm-resize       the real bench: each strategy run for real in a qemu guest (root, a checkout,
                  tools/vm-assets; about a minute per strategy with 8 DIMMs, udev-serial longer)

strategies: udev-serial (Debian kdump-tools), udev-throttle (RHEL/Fedora kdump-utils),
load-once (SUSE), kernel (CONFIG_CRASH_HOTPLUG), kdump-coalesce (default policy)

examples:
  kdump-coalesce bench resize-1x480g
      the table, how close the model came to the RFC's figures, and the targets
  kdump-coalesce bench resize-480x1g --json
      one JSON object: {"scenario", "source": "model", "strategies": {NAME: metrics}}
  kdump-coalesce bench shrink --plot /tmp/shrink.png
      also draw the timeline: events, reloads, windows without crash kernel, stale periods
  kdump-coalesce bench resize-1x480g --set cpus=2 --set kdumpctl_reload_s=1
      the same with other model parameters (bench/README.md lists them and their sources)
  kdump-coalesce bench vm-resize --dimms 8 --strategy udev-throttle --strategy kdump-coalesce
      the real bench in the VM tier's guest: 8 x 1 GiB DIMMs, one fresh guest per strategy, each
      checked by a crash and capture
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        NAME,
        help="compare the distro kdump reload strategies and kdump-coalesce on one scenario",
        description="Run every strategy (the distro udev rules, the in-kernel update, kdump-coalesce) over "
        "the same hotplug scenario on a virtual clock and print reloads, settle time, exposure (no crash "
        "kernel), stale time and CPU per strategy, how close the model comes to the published figures, "
        "and kdump-coalesce's targets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", metavar="NAME", help="resize-1x480g, resize-480x1g, shrink, churn, cpu or vm-resize")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="write a timeline plot (matplotlib)")
    p.add_argument(
        "--strategy",
        action="append",
        metavar="NAME",
        help="run only this strategy (repeatable; default: all five)",
    )
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="override a model parameter")
    p.add_argument(
        "--dimms",
        type=int,
        default=8,
        metavar="N",
        help="vm-resize: hot-add N x 1 GiB DIMMs (8 blocks each; default 8 = 64 blocks, the issue's minimum)",
    )
    p.add_argument(
        "--vm-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="vm-resize: give up on a strategy that has not settled after this long (default 600)",
    )
    p.set_defaults(func=run)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError("--set", f"expected PARAM=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from .._benchmodel import VM_SCENARIO, ModelParams, run_bench
    from .._benchmodel._report import render

    if args.scenario == VM_SCENARIO:
        try:
            vm = importlib.import_module(VM_BENCH_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != VM_BENCH_MODULE:
                raise
            raise UnavailableError(
                "bench vm-resize",
                "the real VM bench is not available yet",
                "it needs the qemu harness of tests/vm/ and the kexec backend; the model scenarios run now: "
                "kdump-coalesce bench resize-480x1g",
            ) from None
        status: int = vm.run_vm_bench(args)
        return status

    params = ModelParams().with_overrides(_overrides(args.set))
    result = run_bench(args.scenario, params, args.strategy)
    if args.plot:
        from .._benchmodel._plot import plot

        plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(render(result))
        if args.plot:
            print(f"\ntimeline written to {args.plot}")
    sys.stdout.flush()
    return EXIT_OK
