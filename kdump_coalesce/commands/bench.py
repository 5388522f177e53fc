"""``kdump-coalesce bench``: every distro strategy and kdump-coalesce on the same hotplug events."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ground.errors import EXIT_OK, ConfigError, UnavailableError

NAME = "bench"
ORDER = 60

# Neither the strategy model nor the VM bench ships with the daemon: both are
# the checkout's top-level ``bench`` package (bench/model, and bench/vm with
# the VM tier's qemu harness, testbed/).  When this package runs from a
# checkout (the editable install ./bootstrap makes), that is the directory
# above it; from an installed wheel there is no bench there, and the command
# says so.
CHECKOUT = Path(__file__).resolve().parents[2]
VM_SCENARIO = "vm-resize"  # the one scenario bench/vm runs (the model lists it among its names)

EPILOG = """\
scenarios (model, virtual clock, seconds to run; all from a checkout, as bench/ is not installed):
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
  kdump-coalesce bench vm-resize --scale rfc --layout 1x480g --strategy kdump-coalesce --plot rfc.png
      the RFC's 32 GiB -> 512 GiB (3840 blocks) for real: a 32 GiB guest, one 480 GiB DIMM
      (--layout 240x2g: 240 x 2 GiB); progress every 10 s; Ctrl-C stops and prints what was measured
  kdump-coalesce bench vm-resize --scale rfc --strategy udev-serial --cutoff 100
      udev-serial stops after 100 of its 3840 full reloads; the table says what it extrapolated

vm-resize scales: --dimms N (N x 1 GiB, default 8), --scale ci (512 blocks: one 64 GiB DIMM on a
4 GiB guest; udev-serial and kdump-coalesce/kexec; the VM tier's test), --scale rfc (3840 blocks,
layouts 1x480g and 240x2g, every strategy; kernel = CONFIG_CRASH_HOTPLUG in the 6.12 guest)
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
        help="run only this strategy (repeatable; default: all of the scenario's)",
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
        "--scale",
        metavar="NAME",
        help="vm-resize: ci (512 blocks, one 64 GiB DIMM) or rfc (32 GiB -> 512 GiB, 3840 blocks); overrides --dimms",
    )
    p.add_argument(
        "--layout",
        action="append",
        metavar="NAME",
        help="vm-resize --scale rfc: run only this DIMM layout (1x480g or 240x2g; repeatable; default: both)",
    )
    p.add_argument(
        "--cutoff",
        type=int,
        metavar="RELOADS",
        help="vm-resize: stop udev-serial after this many reloads and extrapolate (ci: 24, rfc: 100)",
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


def _from_checkout(scenario: str, module: str, what: str, needs: Sequence[str]) -> ModuleType:
    """Import ``module`` from the checkout this package runs from, or say in one line that there is none."""
    missing = [path for path in needs if not (CHECKOUT / path).is_file()]
    if missing:
        raise UnavailableError(
            f"bench {scenario}",
            f"{what} ({', '.join(missing)}) not found next to this package ({CHECKOUT})",
            f"run it from a checkout: cd REPO && .venv/bin/kdump-coalesce bench {scenario}",
        )
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    return importlib.import_module(module)


def run(args: argparse.Namespace) -> int:
    if args.scenario == VM_SCENARIO:
        vm = _from_checkout(
            args.scenario, "bench.vm", "the VM bench and the VM harness", ("bench/vm/__init__.py", "testbed/harness.py")
        )
        status: int = vm.run_vm_bench(args)  # bench/vm: run_vm_bench(args) -> int
        return status

    model = _from_checkout(args.scenario, "bench.model", "the bench model", ("bench/model/__init__.py",))
    params = model.ModelParams().with_overrides(_overrides(args.set))
    result = model.run_bench(args.scenario, params, args.strategy)
    if args.plot:
        model.plot(result, args.plot)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(model.render(result))
        if args.plot:
            print(f"\ntimeline written to {args.plot}")
    sys.stdout.flush()
    return EXIT_OK
