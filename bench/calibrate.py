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

--vm RUN.json ... (issue 15): fit instead a second parameter set, ``vm-tcg``,
to the REAL runs of ``kdump-coalesce bench vm-resize --scale rfc --json``
(this machine's qemu TCG guest), where the defaults above are fitted to the
RFC's 2020 KVM figures only.  From the runs' own records:

  block_s          measured: kdump-coalesce's burst on 1x480g / 3840 blocks (nothing else runs)
  dimm_latency_s   measured: (kdump-coalesce's burst on 240x2g - 3840 * block_s) / 240
                   (kdump-coalesce: its kexec or kexec-fast run, one not marked contended first)
  syscall_fraction measured: udev-serial's mean kexec_load(2) / mean kexec process (exec -> exit)
  cpus             measured: the guest's 2 vCPUs on the host's 2 cores
  kexec_load_s     calibrated: model udev-serial total_s on resize-1x480g = the real (extrapolated) one
  spawn_s          calibrated: model udev-throttle total_s on resize-1x480g = the real one
  kdumpctl_reload_s, suse_load_s = kexec_load_s: the guest's stand-ins run `kexec -p` (and `-p -u`) only

and print them as ``--set`` flags and as the VM_TCG table for bench/model/_params.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any
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


def _real(paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """layout/strategy -> {"m": metrics, "d": details} over every run file given."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for key, m in doc["strategies"].items():
            d = doc["details"][key]
            if d.get("skipped") or d.get("interrupted"):
                continue
            out[f"{d['layout']}/{d['strategy']}"] = {"m": m, "d": d}
    return out


def kdump_coalesce_run(real: dict[str, dict[str, Any]], layout: str) -> str | None:
    """The kdump-coalesce run whose burst measures the onlining on `layout`:
    kexec or kexec-fast (the daemon's loads do not slow the onlining either
    way), one that ran alone on the host before one marked contended (another
    qemu ran during it: its burst is not this guest's alone)."""
    keys = [k for k in (f"{layout}/kdump-coalesce/kexec", f"{layout}/kdump-coalesce/kexec-fast") if k in real]
    alone = [k for k in keys if not real[k]["d"].get("contended")]
    return next(iter(alone or keys), None)


def fit_vm(paths: Sequence[str], iterations: int) -> ModelParams:
    real = _real(paths)

    def get(key: str, field: str, where: str = "d") -> float:
        run = real.get(key)
        if run is None:
            raise SystemExit(f"calibrate --vm: no {key} run in {', '.join(paths)}")
        v = run[where][field]
        if v is None:
            raise SystemExit(f"calibrate --vm: {key} has no {field}")
        return float(v)

    blocks = 3840
    one_dimm = kdump_coalesce_run(real, "1x480g") or "1x480g/kdump-coalesce/kexec"
    block_s = get(one_dimm, "burst_s") / blocks
    p = dataclasses.replace(ModelParams(), block_s=block_s, cpus=2.0)
    many = kdump_coalesce_run(real, "240x2g")
    if many is not None:
        p = dataclasses.replace(p, dimm_latency_s=max(0.0, (get(many, "burst_s") - blocks * block_s) / 240))
    serial = real.get("1x480g/udev-serial")
    if serial is not None:
        d = serial["d"]
        sys_s, proc_s = d.get("load_syscall_s_mean"), d.get("loader_process_s_mean")
        if sys_s and proc_s:
            p = dataclasses.replace(p, syscall_fraction=float(sys_s) / float(proc_s))
        x = d.get("extrapolated")
        target = float(x["total_s"]) if x else get("1x480g/udev-serial", "total_s", "m")
        p = dataclasses.replace(
            p, kexec_load_s=bisect(lambda v: total("udev-serial", "resize-1x480g", dataclasses.replace(p, kexec_load_s=v)),
                                   target, 0.01, 5.0, iterations),
        )  # fmt: skip
    p = dataclasses.replace(p, kdumpctl_reload_s=p.kexec_load_s + p.kexec_unload_s, suse_load_s=p.kexec_load_s)
    if "1x480g/udev-throttle" in real:
        target = get("1x480g/udev-throttle", "total_s", "m")
        p = dataclasses.replace(
            p, spawn_s=bisect(lambda v: total("udev-throttle", "resize-1x480g", dataclasses.replace(p, spawn_s=v)),
                              target, 0.0, 0.5, iterations),
        )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--vm", nargs="+", metavar="RUN.json", help="fit the vm-tcg set to these real runs instead")
    args = parser.parse_args(argv)
    if args.vm:
        q = fit_vm(args.vm, args.iterations)
        names = ("cpus", "block_s", "dimm_latency_s", "syscall_fraction", "kexec_load_s", "spawn_s", "kdumpctl_reload_s", "suse_load_s")
        print(" ".join(f"--set {n}={getattr(q, n):.6g}" for n in names))
        for n in names:
            print(f"    {n!r}: {getattr(q, n):.6g},")
        return 0
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
