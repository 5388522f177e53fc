"""``kdump-coalesce bench vm-resize``: every strategy run for real in the VM tier's qemu guest (issue 7, part 2).

One fresh guest per strategy (so that they cannot disturb each other), kdump
loaded with ``kexec -p`` at boot as a distro would, then DIMMS x 1 GiB DIMMs
hot-added through QMP in one burst, the strategy left to settle, and a real
panic whose capture must cover every hot-added DIMM.

- ``udev-serial``, ``udev-throttle``, ``load-once``: tools/vm/bench-guest.py
  stands in for udevd (none runs in the guest) and starts the distro's
  handler, tools/vm/bench-<strategy>, per memory online/offline uevent; the
  handlers call the real kexec-tools.
- ``kdump-coalesce/kexec``, ``kdump-coalesce/kexec-fast``: the daemon itself
  (``kdump-coalesce run --source uevent --backend ...``, as the VM tier's
  live tests run it; ``--source uevent`` rather than ``auto`` because BPF's
  compile under TCG costs 15-30 s per boot and the bench is about reloads,
  not about the event source); bench-guest.py only records.

The qemu harness is the VM tier's, :mod:`testbed.harness`; like this
package it lives in the checkout only.  ``kdump-coalesce bench vm-resize``
(kdump_coalesce/commands/bench.py) imports this package from the checkout it
runs from, and says so with :class:`~ground.errors.UnavailableError` when it
runs from an install without the checkout; :func:`vm_bench` says so when
root, qemu or the VM assets (``tools/vm-assets``) are missing.

One qemu at a time: before each boot the command waits (at most 300 s) until
no other qemu-system process runs on the host, and a strategy during whose
measurement another qemu appeared is marked ``contended`` (its timings are not
comparable: a second TCG guest on the same cores doubled udev-serial's settle
time in one run).

Figures (see :mod:`._metrics`): windows and reloads from the guest's
``syscalls`` tracepoints (tracefs, CLOCK_MONOTONIC); ``settle_s`` from the
last memory uevent to the exit of the last successful crash load;
``cpu_s`` is the handlers' rusage (they wait for their kexec processes) or
the daemon's /proc/PID/stat delta (with its waited-for kexec children) over
the burst, start-up excluded.  ``stale_s`` is null: when a header was built
is not visible from the syscall (kexec-tools reads /proc/iomem ~1 s before
its kexec_load), so the time a loaded header lagged the system cannot be
measured honestly from the guest's tracepoints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ground.errors import EXIT_FAILURE, EXIT_OK, ConfigError, UnavailableError
from testbed.daemon import kexec_daemon_args
from testbed.harness import CAPTURE_APPEND, GIB, GUEST_XFER, REPO, Guest, GuestConfig, GuestTimeout, VmAssets, vm_unavailable_reason

from ._metrics import StrategyFigures, figures

__all__ = ["STRATEGIES", "StrategyRun", "render_table", "run_vm_bench", "vm_bench"]

STRATEGIES = ("udev-serial", "udev-throttle", "load-once", "kdump-coalesce/kexec", "kdump-coalesce/kexec-fast")
MIN_DIMMS = 8  # issue 7: at least 8 GiB as 1 GiB DIMMs (64 blocks of 128 MiB)

# Seconds without a uevent, a handler exit or a kexec_load syscall after which
# a strategy has settled.  The daemon needs more: its quiet period (1 s) and
# kexec-tools' user-space hashing (~1.1 s under TCG) come before its syscall.
IDLE_HANDLERS_S = 3.0
IDLE_DAEMON_S = 6.0


@dataclass(frozen=True, slots=True)
class StrategyRun:
    name: str
    figures: StrategyFigures
    capture_covers: bool
    capture: str
    wall_s: float
    raw: dict[str, Any]


def _check_vm() -> None:
    reason = vm_unavailable_reason()
    if reason:
        raise UnavailableError("bench vm-resize", str(reason), "as root, after tools/vm-assets (./bootstrap test does it)")


def _selected(names: list[str] | None) -> list[str]:
    if not names:
        return list(STRATEGIES)
    out: list[str] = []
    for n in names:
        hits = [s for s in STRATEGIES if s == n or s.split("/")[0] == n]
        if not hits:
            raise ConfigError("--strategy", f"{n!r} is not a vm-resize strategy ({', '.join(STRATEGIES)}, kdump-coalesce)")
        out += [s for s in hits if s not in out]
    return [s for s in STRATEGIES if s in out]


def qemu_pids() -> list[int]:
    """Every qemu-system process on the host (by /proc/PID/comm)."""
    out: list[int] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("qemu-system"):
            out.append(int(d.name))
    return out


def _wait_for_no_qemu(timeout: float) -> None:
    """The figures are only comparable with the host's cores to ourselves: one qemu at a time (tests/vm)."""
    deadline = time.monotonic() + timeout
    others = qemu_pids()
    if others:
        _log(f"waiting for other qemu processes to end ({', '.join(map(str, others))}), at most {timeout:.0f}s")
    while others:
        if time.monotonic() > deadline:
            raise UnavailableError(
                "bench vm-resize",
                f"another qemu is still running after {timeout:.0f}s (pids {', '.join(map(str, others))})",
                "the VM bench needs the host's cores to itself; run it when no other guest runs",
            )
        time.sleep(2)
        others = qemu_pids()


def _log(msg: str) -> None:
    print(f"bench vm-resize: {msg}", file=sys.stderr, flush=True)


def run_strategy(assets: VmAssets, name: str, dimms: int, *, timeout: float = 600.0) -> StrategyRun:
    """One fresh guest, kdump loaded, the burst, the strategy settled, a crash and its capture."""
    _wait_for_no_qemu(300)
    t0 = time.monotonic()
    cfg = GuestConfig(
        mem_mib=1024 if dimms <= 12 else 2048,  # ~2 MiB of boot RAM per hot-added block's memmap
        slots=max(8, dimms),
        maxmem_gib=(2 if dimms > 12 else 1) + dimms + 1,
        hard_timeout=timeout + 300,
    )
    with Guest(assets, cfg, name=f"bench-{name.replace('/', '-')}") as g:
        g.kexec_load_crash()
        block = int(g.read_text("/sys/devices/system/memory/block_size_bytes").strip(), 16)
        expect = dimms * (GIB // block)
        extra: list[str] = []
        if name.startswith("kdump-coalesce/"):
            # --source uevent, not auto: no BPF compile under TCG (see the module's doc)
            args = kexec_daemon_args(assets, source="uevent", backend=name.split("/", 1)[1])
            d = g.start_daemon(args, ready=lambda t: t.ready, ready_timeout=240)
            extra += ["--daemon-pid", str(d.pid()), "--idle", str(IDLE_DAEMON_S)]
        else:
            extra += ["--handler", str(REPO / "tools" / "vm" / f"bench-{name}"), "--idle", str(IDLE_HANDLERS_S)]
        env = {
            "BENCH_KEXEC": "/sbin/kexec",
            "BENCH_KERNEL": str(assets.kernel),
            "BENCH_INITRD": str(assets.capture_initrd),
            "BENCH_APPEND": CAPTURE_APPEND,
        }
        out = f"{GUEST_XFER}/bench"
        argv = ["/usr/bin/python3", str(REPO / "tools" / "vm" / "bench-guest.py"), "--out", out,
                "--expect", str(expect), "--timeout", str(timeout), *extra]  # fmt: skip
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        g.run_host(
            f"cd /tmp && {envs} setsid {shlex.join(argv)} </dev/null >{GUEST_XFER}/bench.log 2>&1 &", timeout=30
        )
        host_out = g.xfer / "bench"
        deadline = time.monotonic() + 60
        while not (host_out / ".ready").exists():
            if time.monotonic() > deadline:
                raise GuestTimeout(f"bench-guest.py not ready: {(g.xfer / 'bench.log').read_text(errors='replace')}")
            time.sleep(0.1)
        _log(f"{name}: hot-adding {dimms} x 1 GiB ({expect} blocks)")
        added = [g.hotplug_dimm(GIB, wait_online=False) for _ in range(dimms)]
        for dimm in added:
            g.wait_memory_online(dimm.addr, dimm.end, timeout=180)
        deadline = time.monotonic() + timeout + 30
        contended: set[int] = set()
        while not (host_out / "result.json").exists():
            pids = qemu_pids()
            if len(pids) > 1:  # ours is one of them
                contended.update(pids)
            if time.monotonic() > deadline:
                raise GuestTimeout(f"{name}: no result after {timeout:.0f}s: {(g.xfer / 'bench.log').read_text(errors='replace')}")
            time.sleep(0.5)
        raw: dict[str, Any] = json.loads((host_out / "result.json").read_text())
        cpu = raw["handler_cpu_s"] if raw.get("handler_cpu_s") is not None else raw.get("daemon_cpu_s")
        fig = figures(raw["uevents"], raw["trace"], cpu_s=cpu, handlers=int(raw["handlers"]), t_end=raw["t_end"])
        if raw.get("timed_out"):
            fig = _note(fig, f"did not settle within {timeout:.0f}s")
        if contended:
            fig = _note(fig, f"CONTENDED: another qemu ran during the measurement (pids {sorted(contended)}): timings not comparable")
        if raw.get("uevents_lost"):
            fig = _note(fig, f"{raw['uevents_lost']} uevent receive overflows")
        if raw.get("daemon_cpu_s") is None and name.startswith("kdump-coalesce/"):
            fig = _note(fig, "daemon CPU unavailable (process gone?)")
        _log(f"{name}: settled, {fig.reloads} reloads; crashing for the capture")
        cap = g.crash_and_capture()
        covers = all(cap.vmcore.covers(dm.addr, dm.end) for dm in added)
        return StrategyRun(name, fig, covers, cap.vmcore.describe(), time.monotonic() - t0, {**raw, "contended": bool(contended)})


def _note(fig: StrategyFigures, note: str) -> StrategyFigures:
    from dataclasses import replace

    return replace(fig, notes=(*fig.notes, note))


def vm_bench(dimms: int, names: list[str] | None = None, *, timeout: float = 600.0) -> dict[str, Any]:
    """Run the selected strategies, one guest each, and return the ``bench --json`` object."""
    _check_vm()
    assets = VmAssets.load()
    runs: list[StrategyRun] = []
    for name in _selected(names):
        _log(f"{name}: booting a fresh guest")
        runs.append(run_strategy(assets, name, dimms, timeout=timeout))
    return {
        "scenario": "vm-resize",
        "source": "vm",
        "dimms": dimms,
        "blocks": runs[0].figures.online_uevents if runs else 0,
        "strategies": {r.name: r.figures.schema() for r in runs},
        "details": {
            r.name: {
                "capture_covers_all_dimms": r.capture_covers,
                "capture": r.capture,
                "unloads": r.figures.unloads,
                "failed_kexec_calls": r.figures.failed_calls,
                "windows": len(r.figures.windows),
                "memory_uevents": r.figures.memory_uevents,
                "online_uevents": r.figures.online_uevents,
                "handlers": r.figures.handlers,
                "wall_s": r.wall_s,
                "timed_out": bool(r.raw.get("timed_out")),
                "contended": bool(r.raw.get("contended")),
                "notes": list(r.figures.notes),
            }
            for r in runs
        },
        "notes": [
            "windows and reloads: kexec_load syscall tracepoints in the guest (tracefs, trace_clock=mono)",
            "settle_s: last memory uevent -> exit of the last successful crash load (guest clock)",
            "cpu_s: distro handlers' rusage incl. their kexec children; kdump-coalesce: daemon's /proc stat delta "
            "over the burst (start-up excluded)",
            "stale_s: null: when kexec-tools read /proc/iomem is not visible in the syscall trace",
            "kdump-coalesce runs with --source uevent (no BPF compile under TCG)",
        ],
    }


def _f(v: object, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def render_table(doc: dict[str, Any]) -> str:
    lines = [
        f"vm-resize: {doc.get('dimms')} x 1 GiB DIMMs ({doc.get('blocks')} blocks), one qemu (TCG) guest per strategy",
        "",
        "| strategy | reloads | unloads | settle_s | exposure_s | max_window_s | stale_s | cpu_s | capture covers DIMMs | wall_s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in doc["strategies"].items():
        d = doc["details"][name]
        lines.append(
            f"| {name} | {m['reloads']} | {d['unloads']} | {_f(m['settle_s'], '{:.2f}')} | {_f(m['exposure_s'], '{:.4f}')} | "
            f"{_f(m['max_window_s'], '{:.4f}')} | {_f(m['stale_s'])} | {_f(m['cpu_s'], '{:.2f}')} | "
            f"{'yes' if d['capture_covers_all_dimms'] else 'NO'} | {d['wall_s']:.0f} |"
        )
    for name, d in doc["details"].items():
        for n in d["notes"]:
            lines.append(f"note ({name}): {n}")
    lines += [""] + [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(lines)


def run_vm_bench(args: argparse.Namespace) -> int:
    """The hook of ``kdump-coalesce bench vm-resize`` (kdump_coalesce/commands/bench.py)."""
    dimms = int(getattr(args, "dimms", MIN_DIMMS))
    if dimms < 1 or dimms > 64:
        raise ConfigError("--dimms", f"expected 1..64 DIMMs of 1 GiB, got {dimms}")
    if getattr(args, "plot", None):
        raise ConfigError("--plot", "vm-resize has no plot yet (model scenarios only)")
    doc = vm_bench(dimms, args.strategy, timeout=float(getattr(args, "vm_timeout", 600.0)))
    if args.json:
        print(json.dumps(doc))
    else:
        print(render_table(doc))
    sys.stdout.flush()
    ok = all(d["capture_covers_all_dimms"] and not d["timed_out"] for d in doc["details"].values())
    return EXIT_OK if ok else EXIT_FAILURE
