"""``kdump-coalesce bench vm-resize``: every strategy run for real in the VM tier's qemu guest (issues 7 and 15).

Sizes (:mod:`._scale`): ``--dimms N`` (issue 7: N x 1 GiB), ``--scale ci``
(512 blocks, the VM tier's test) and ``--scale rfc`` (the RFC's 32 GiB ->
512 GiB, 3840 blocks, as one 480 GiB DIMM and as 240 x 2 GiB DIMMs; the
``kernel`` strategy, CONFIG_CRASH_HOTPLUG, in the 6.12 guest).  A long run
prints its progress every 10 s (strategy, blocks onlined, reloads so far,
elapsed, from the guest's DIMM/progress.json) and Ctrl-C stops it cleanly:
the guest is told to stop (DIR/.stop), what it recorded is read back, the
table or JSON printed with ``interrupted``, exit 130, no qemu left.

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
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ground.errors import EXIT_FAILURE, EXIT_OK, ConfigError, UnavailableError
from testbed import harness
from testbed.daemon import kexec_daemon_args
from testbed.hotplug import LOW_1M
from testbed.harness import (
    CAPTURE_APPEND, GIB, GUEST_APPEND, GUEST_XFER, REPO, Guest, GuestConfig, GuestTimeout, VmAssets, crash_kernel,
    merge_ranges, subtract_range, system_ram, vm_unavailable_reason,
)  # fmt: skip

from ._metrics import Extrapolation, StrategyFigures, extrapolate, figures
from ._scale import CI, LAYOUTS, RFC, SCALES, Layout, Scale, legacy_scale

__all__ = [
    "CI", "LAYOUTS", "RFC", "SCALES", "STRATEGIES", "BenchInterrupted", "Layout", "Scale", "StrategyRun",
    "render_table", "run_vm_bench", "vm_bench",
]  # fmt: skip

STRATEGIES = ("udev-serial", "udev-throttle", "load-once", "kdump-coalesce/kexec", "kdump-coalesce/kexec-fast", "kernel")
MIN_DIMMS = 8  # issue 7: at least 8 GiB as 1 GiB DIMMs (64 blocks of 128 MiB)
KERNEL_STRATEGY_KERNEL = "6.12"  # CONFIG_CRASH_HOTPLUG + trixie's kexec-tools --hotplug (testbed KERNELS)
# The kernel's own header update: kernel/crash_core.c (6.6+, a72bbec70da2
# "crash: hotplug support for kexec_load()") calls it per memory online/offline.
KERNEL_UPDATE_SYMBOL = "crash_handle_hotplug_event,crash_memhp_notifier"  # the first that probes
PROGRESS_EVERY_S = 10.0

# Seconds without a uevent, a handler exit or a kexec_load syscall after which
# a strategy has settled.  The daemon needs more: its quiet period (1 s) and
# kexec-tools' user-space hashing (~1.1 s under TCG) come before its syscall.
IDLE_HANDLERS_S = 3.0
IDLE_DAEMON_S = 6.0


@dataclass(frozen=True, slots=True)
class StrategyRun:
    name: str
    figures: StrategyFigures
    capture_covers: bool | None  # None: no crash (interrupted)
    capture: str
    wall_s: float
    raw: dict[str, Any]
    layout: str = ""
    extrapolation: Extrapolation | None = None
    qemu_peak_rss: int | None = None
    captured_bytes: int | None = None
    expected_bytes: int | None = None
    interrupted: bool = False
    skipped: str | None = None  # why the strategy could not run (the kernel strategy without a 6.12 guest)


class BenchInterrupted(Exception):
    """Ctrl-C during a run: what was measured so far of the strategy that was running (if anything)."""

    def __init__(self, partial: StrategyRun | None) -> None:
        super().__init__("interrupted")
        self.partial = partial


def _check_vm() -> None:
    reason = vm_unavailable_reason()
    if reason:
        raise UnavailableError("bench vm-resize", str(reason), "as root, after tools/vm-assets (./bootstrap test does it)")


def _selected(names: list[str] | None, default: tuple[str, ...] = STRATEGIES) -> list[str]:
    if not names:
        return list(default)
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


def _wait_for_no_qemu(timeout: float, *, proceed: bool = False) -> bool:
    """The figures are only comparable with the host's cores to ourselves: one qemu at a time (tests/vm).

    ``proceed``: after `timeout`, go on anyway (False is returned; the run is
    then marked contended) instead of refusing: a full-scale run that waited
    its turn for the VM lock does not give it up for a small guest of
    someone else's that does not take the lock.
    """
    deadline = time.monotonic() + timeout
    others = qemu_pids()
    if others:
        _log(f"waiting for other qemu processes to end ({', '.join(map(str, others))}), at most {timeout:.0f}s")
    while others:
        if time.monotonic() > deadline:
            if proceed:
                _log(f"other qemu processes still run ({', '.join(map(str, others))}): going on, marked contended")
                return False
            raise UnavailableError(
                "bench vm-resize",
                f"another qemu is still running after {timeout:.0f}s (pids {', '.join(map(str, others))})",
                "the VM bench needs the host's cores to itself; run it when no other guest runs",
            )
        time.sleep(2)
        others = qemu_pids()
    return True


def _log(msg: str) -> None:
    print(f"bench vm-resize: {msg}", file=sys.stderr, flush=True)


def _qemu_of(g: Guest) -> int | None:
    """The qemu-system process under the guest's setpriv/timeout wrappers."""
    if g.proc is None:
        return None
    todo, seen = [g.proc.pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu-system"):
                return pid
            for t in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return None


def _peak_rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _guest_config(scale: Scale, layout: Layout, timeout: float) -> GuestConfig:
    extra: list[str] = []
    machine = "pc"
    if scale.main_backend:
        # -m 32G does not start on a 24 GiB host under heuristic overcommit
        # (kernel-facts 10): main RAM from a backend with reserve=off.
        extra += ["-object", f"memory-backend-ram,id=kdc-main,size={scale.base_mib}M,reserve=off"]
        machine = "pc,memory-backend=kdc-main"
    append = GUEST_APPEND + ("".join(f" {a}" for a in scale.append))
    return GuestConfig(
        mem_mib=scale.base_mib,
        slots=max(8, layout.count),
        maxmem_gib=scale.base_mib // 1024 + layout.total_gib + 2,
        hard_timeout=timeout + 1200,
        boot_timeout=300.0 if scale.base_mib > 4096 else 90.0,
        append=append,
        machine=machine,
        extra_args=tuple(extra),
    )


def _hotplug(g: Guest, layout: Layout, reserve: bool) -> list[tuple[int, int]]:
    """Hot-add the layout's DIMMs through QMP at once; [(addr, end)] of each."""
    assert g.qmp is not None
    out: list[tuple[int, int]] = []
    for i in range(layout.count):
        mem, dev = f"bmem{i}", f"bdimm{i}"
        props: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": mem, "size": layout.size_gib * GIB}
        if not reserve:
            props["reserve"] = False  # the host backs only what the guest touches (kernel-facts 10)
        g.qmp.execute("object-add", props)
        g.qmp.execute("device_add", {"driver": "pc-dimm", "id": dev, "memdev": mem}, timeout=120)
        addr = int(g.qmp.execute("qom-get", {"path": f"/machine/peripheral/{dev}", "property": "addr"}))
        out.append((addr, addr + layout.size_gib * GIB))
    return out


def _progress_line(name: str, layout: Layout, p: dict[str, Any], t0: float) -> str:
    q = f", {p['queued']} handlers queued" if p.get("queued") else ""
    return (
        f"[{layout.name}] {name}: {p.get('online', 0)}/{p.get('expect', '?')} blocks onlined, "
        f"{p.get('reloads', 0)} reloads so far{q}, {time.monotonic() - t0:.0f} s elapsed"
    )


def run_strategy(
    assets: VmAssets,
    name: str,
    dimms: int,
    *,
    timeout: float = 600.0,
    scale: Scale | None = None,
    layout: Layout | None = None,
) -> StrategyRun:
    """One fresh guest, kdump loaded, the burst, the strategy settled, a crash and its capture.

    Ctrl-C (KeyboardInterrupt) during the measurement asks the guest to stop
    (DIR/.stop), keeps what it recorded and raises :class:`BenchInterrupted`
    with it; the guest is killed on the way out like always.
    """
    scale = scale or legacy_scale(dimms)
    layout = layout or scale.layouts[0]
    _wait_for_no_qemu(300 if scale.legacy else 600, proceed=not scale.legacy)
    t0 = time.monotonic()
    cfg = _guest_config(scale, layout, timeout) if not scale.legacy else GuestConfig(
        mem_mib=1024 if dimms <= 12 else 2048,  # ~2 MiB of boot RAM per hot-added block's memmap
        slots=max(8, dimms),
        maxmem_gib=(2 if dimms > 12 else 1) + dimms + 1,
        hard_timeout=timeout + 300,
    )
    measuring = False
    host_out: Path | None = None
    try:
        with Guest(assets, cfg, name=f"bench-{name.replace('/', '-')}") as g:
            # Inside the with: the guest (and its xfer directory) must still be up
            # when a Ctrl-C asks it for what it measured so far.
            try:
                qemu = _qemu_of(g)
                if name == "kernel":
                    g.kexec_load_crash(hotplug=True)
                else:
                    g.kexec_load_crash()
                block = int(g.read_text("/sys/devices/system/memory/block_size_bytes").strip(), 16)
                expect = layout.total_gib * (GIB // block)
                base_iomem = g.iomem()
                extra: list[str] = []
                if scale.max_workers:
                    extra += ["--max-workers", str(scale.max_workers)]
                if name.startswith("kdump-coalesce/"):
                    # --source uevent, not auto: no BPF compile under TCG (see the module's doc)
                    args = kexec_daemon_args(assets, source="uevent", backend=name.split("/", 1)[1])
                    d = g.start_daemon(args, ready=lambda t: t.ready, ready_timeout=240)
                    extra += ["--daemon-pid", str(d.pid()), "--idle", str(IDLE_DAEMON_S)]
                elif name == "kernel":
                    extra += ["--kprobe", KERNEL_UPDATE_SYMBOL, "--idle", str(IDLE_HANDLERS_S)]
                else:
                    extra += ["--handler", str(REPO / "tools" / "vm" / f"bench-{name}"), "--idle", str(IDLE_HANDLERS_S)]
                    if name == "udev-serial" and scale.serial_cutoff:
                        extra += ["--cutoff-reloads", str(scale.serial_cutoff)]
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
                measuring = True
                _log(f"[{layout.name}] {name}: hot-adding {layout.describe()} ({expect} blocks)")
                added = _hotplug(g, layout, reserve=scale.legacy)
                dimm_blocks = [(a // block, b // block) for a, b in added]
                deadline = time.monotonic() + timeout + 60
                contended: set[int] = set()
                last_print = time.monotonic()
                while not (host_out / "result.json").exists():
                    pids = qemu_pids()
                    if len(pids) > 1:  # ours is one of them
                        contended.update(p for p in pids if p != qemu)
                    if time.monotonic() > deadline:
                        raise GuestTimeout(f"{name}: no result after {timeout:.0f}s: {(g.xfer / 'bench.log').read_text(errors='replace')}")
                    if time.monotonic() - last_print >= PROGRESS_EVERY_S:
                        last_print = time.monotonic()
                        prog = _read_json(host_out / "progress.json")
                        if prog:
                            _log(_progress_line(name, layout, prog, t0))
                    time.sleep(0.5)
                measuring = False
                raw: dict[str, Any] = json.loads((host_out / "result.json").read_text())
                raw["dimm_blocks"] = dimm_blocks
                run = _run_from_raw(name, layout, raw, t0, contended, timeout, expect)
                rss = _peak_rss(qemu)
                _log(f"[{layout.name}] {name}: settled, {run.figures.reloads} reloads; crashing for the capture")
                cap = g.crash_and_capture(timeout=300)
                base = subtract_range(merge_ranges(system_ram(base_iomem)), crash_kernel(base_iomem))
                want = merge_ranges([*base, *added])
                if name == "kernel":
                    # The kernel built this header (kexec_file_load, then its own
                    # updates), and x86's prepare_elf_headers leaves the low 1 MiB
                    # out (always reserved): no kernel-built header lists it.
                    want = subtract_range(want, (0, LOW_1M))
                covers = all(cap.vmcore.covers(a, b) for a, b in want)
                captured = sum(b - a for a, b in cap.vmcore.ranges())
                return replace(
                    run, capture_covers=covers, capture=cap.vmcore.describe(), wall_s=time.monotonic() - t0,
                    qemu_peak_rss=rss, captured_bytes=captured, expected_bytes=sum(b - a for a, b in want),
                )  # fmt: skip
            except KeyboardInterrupt:
                partial: StrategyRun | None = None
                if measuring and host_out is not None:
                    partial = _stop_guest_and_read(name, layout, host_out, t0, timeout, expect)
                raise BenchInterrupted(partial) from None
    except KeyboardInterrupt:
        # Before the measurement started (booting, loading): nothing to keep.
        raise BenchInterrupted(None) from None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _stop_guest_and_read(name: str, layout: Layout, host_out: Path, t0: float, timeout: float, expect: int) -> StrategyRun | None:
    """Ctrl-C: ask bench-guest.py to stop (DIR/.stop) and read what it kept (the guest is still up here)."""
    _log(f"[{layout.name}] {name}: interrupted: asking the guest for what it measured so far")
    (host_out / ".stop").touch()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        raw = _read_json(host_out / "result.json")
        if raw is not None:
            run = _run_from_raw(name, layout, raw, t0, set(), timeout, expect)
            return replace(run, interrupted=True, capture_covers=None, capture="not checked (interrupted)",
                           figures=_note(run.figures, "interrupted (Ctrl-C): figures so far, no crash"))  # fmt: skip
        time.sleep(0.2)
    return None


def _run_from_raw(
    name: str, layout: Layout, raw: dict[str, Any], t0: float, contended: set[int], timeout: float, expect: int
) -> StrategyRun:
    cpu = raw["handler_cpu_s"] if raw.get("handler_cpu_s") is not None else raw.get("daemon_cpu_s")
    fig = figures(
        raw["uevents"], raw["trace"], cpu_s=cpu, handlers=int(raw["handlers"]), t_end=raw["t_end"],
        t_start=raw.get("t_start"), dimm_blocks=raw.get("dimm_blocks"),
    )  # fmt: skip
    ext: Extrapolation | None = None
    cut = raw.get("cutoff")
    if isinstance(cut, dict):
        done = sum(1 for r in raw.get("handler_runs", []) if r[1] <= float(cut["t"]) and r[2] == 0)
        ext = extrapolate(raw["uevents"], raw["trace"], t_cut=float(cut["t"]), blocks=expect, handlers_done=done, cpu_s=cpu)
        fig = _note(
            fig,
            f"cut off after {cut['reloads']} reloads (budget {raw.get('cutoff_reloads')}): {cut['handlers_killed']} "
            f"running handlers killed, {cut['handlers_not_run']} queued never run, one completion load "
            f"(rc {cut['completion_load_rc']}); the rest extrapolated",
        )
    if raw.get("timed_out"):
        fig = _note(fig, f"did not settle within {timeout:.0f}s")
    if contended:
        fig = _note(fig, f"CONTENDED: another qemu ran during the measurement (pids {sorted(contended)}): timings not comparable")
    if raw.get("uevents_lost"):
        fig = _note(fig, f"{raw['uevents_lost']} uevent receive overflows")
    if raw.get("kprobe_error"):
        fig = _note(fig, str(raw["kprobe_error"]))
    if raw.get("daemon_cpu_s") is None and name.startswith("kdump-coalesce/"):
        fig = _note(fig, "daemon CPU unavailable (process gone?)")
    return StrategyRun(
        name, fig, False, "", time.monotonic() - t0, {**raw, "contended": bool(contended)}, layout=layout.name,
        extrapolation=ext,
    )  # fmt: skip


def _note(fig: StrategyFigures, note: str) -> StrategyFigures:
    from dataclasses import replace

    return replace(fig, notes=(*fig.notes, note))


def _kernel_assets() -> VmAssets | str:
    """The 6.12 guest's assets for the ``kernel`` strategy, or why there is none."""
    if KERNEL_STRATEGY_KERNEL not in getattr(harness, "KERNELS", ()):
        return "the VM harness has no 6.12 guest kernel"
    try:
        assets = VmAssets.load(kernel=KERNEL_STRATEGY_KERNEL)
    except harness.VmUnavailable as e:
        return str(e)
    if assets.config("CRASH_HOTPLUG") != "y" or assets.kexec_hotplug is None:
        return f"guest kernel {assets.kernel_release} lacks CONFIG_CRASH_HOTPLUG or kexec-tools --hotplug"
    return assets


def vm_bench(
    dimms: int,
    names: list[str] | None = None,
    *,
    timeout: float = 600.0,
    scale: Scale | None = None,
    layouts: list[str] | None = None,
    runs_out: list[StrategyRun] | None = None,
) -> dict[str, Any]:
    """Run the selected strategies, one guest each, and return the ``bench --json`` object.

    ``runs_out`` collects every finished run as it ends, so that a caller that
    catches :class:`BenchInterrupted` still has them.
    """
    _check_vm()
    scale = scale or legacy_scale(dimms)
    assets = VmAssets.load()
    runs: list[StrategyRun] = runs_out if runs_out is not None else []
    chosen = [lay for lay in scale.layouts if not layouts or lay.name in layouts]
    if layouts and not chosen:
        raise ConfigError("--layout", f"{', '.join(layouts)}: not a layout of scale {scale.name} ({', '.join(x.name for x in scale.layouts)})")
    kernel_assets: VmAssets | str | None = None
    for layout in chosen:
        for name in _selected(names, scale.strategies):
            budget = scale.timeout if scale.timeout else timeout
            if name == "kernel":
                kernel_assets = kernel_assets or _kernel_assets()
                if isinstance(kernel_assets, str):
                    _log(f"[{layout.name}] kernel: not run: {kernel_assets}")
                    runs.append(_skipped(name, layout, kernel_assets))
                    continue
                a = kernel_assets
            else:
                a = assets
            _log(f"[{layout.name}] {name}: booting a fresh guest")
            runs.append(run_strategy(a, name, dimms, timeout=budget, scale=scale, layout=layout))
    return bench_doc(scale, runs)


def _skipped(name: str, layout: Layout, why: str) -> StrategyRun:
    fig = StrategyFigures(reloads=0, settle_s=None, exposure_s=0.0, max_window_s=0.0, stale_s=None, cpu_s=None, notes=(f"not run: {why}",))
    return StrategyRun(name, fig, None, "", 0.0, {}, layout=layout.name, skipped=why)


def _loader_times(trace: list[str]) -> dict[str, float | None]:
    """Mean kexec_load(2) syscall and mean loader process (exec -> syscall exit) of the crash loads: the
    model's syscall_fraction and kexec_load_s come from these (bench/calibrate.py --vm)."""
    from ._metrics import parse_execs, parse_kexec_calls

    execs = parse_execs(trace)
    loads = [c for c in parse_kexec_calls(trace) if c.crash and not c.unload and c.ret == 0]
    sys_s = [c.exit - c.enter for c in loads]
    proc_s = [c.exit - execs[c.pid] for c in loads if c.pid in execs and execs[c.pid] <= c.enter]
    return {
        "load_syscall_s_mean": sum(sys_s) / len(sys_s) if sys_s else None,
        "loader_process_s_mean": sum(proc_s) / len(proc_s) if proc_s else None,
    }


def _key(r: StrategyRun, scale: Scale) -> str:
    return r.name if len(scale.layouts) == 1 else f"{r.layout}/{r.name}"


def bench_doc(scale: Scale, runs: list[StrategyRun], *, interrupted: bool = False) -> dict[str, Any]:
    """The JSON object of a run (finished or interrupted)."""
    from coalescer import Policy  # the daemon's default policy: the bound of the target

    pol = Policy()
    details: dict[str, Any] = {}
    strategies: dict[str, Any] = {}
    for r in runs:
        k = _key(r, scale)
        f = r.figures
        burst = None
        if f.first_event is not None and r.raw.get("uevents"):
            burst = max(float(u[0]) for u in r.raw["uevents"]) - f.first_event
        strategies[k] = {**f.schema(), "total_s": f.total_s}
        details[k] = {
            "layout": r.layout,
            "strategy": r.name,
            "capture_covers_all_dimms": r.capture_covers,
            "capture_covers_all_memory": r.capture_covers,
            "captured_gib": None if r.captured_bytes is None else r.captured_bytes / GIB,
            "expected_gib": None if r.expected_bytes is None else r.expected_bytes / GIB,
            "capture": r.capture,
            "unloads": f.unloads,
            "failed_kexec_calls": f.failed_calls,
            "windows": len(f.windows),
            "kernel_updates": f.kernel_updates,
            "memory_uevents": f.memory_uevents,
            "online_uevents": f.online_uevents,
            "handlers": f.handlers,
            "burst_s": burst,
            "reload_bound": None if burst is None else math.ceil(burst / pol.max_delay) + 1,
            "peak_guest_mem_mib": (r.raw.get("peak_mem_bytes") or 0) / (1 << 20) if r.raw.get("peak_mem_bytes") else None,
            "peak_qemu_rss_mib": None if r.qemu_peak_rss is None else r.qemu_peak_rss / (1 << 20),
            **_loader_times(r.raw.get("trace", [])),
            "cutoff": r.raw.get("cutoff"),
            "extrapolated": None if r.extrapolation is None else r.extrapolation.to_json(),
            "wall_s": r.wall_s,
            "timed_out": bool(r.raw.get("timed_out")),
            "interrupted": r.interrupted,
            "skipped": r.skipped,
            "contended": bool(r.raw.get("contended")),
            "notes": list(f.notes),
            "timeline": {
                "t0": f.first_event,
                "events": [float(u[0]) for u in r.raw.get("uevents", []) if u[1] in ("online", "offline")],
                "windows": [list(w) for w in f.windows],
                "installs": list(f.installs),
            },
        }
    first = next((r for r in runs if r.skipped is None), None)
    return {
        "scenario": "vm-resize",
        "source": "vm",
        "scale": scale.name,
        "dimms": scale.layouts[0].count if scale.legacy else None,
        "layouts": [{"name": x.name, "dimms": x.count, "dimm_gib": x.size_gib} for x in scale.layouts],
        "base_mib": scale.base_mib,
        "blocks": first.figures.online_uevents if first else 0,
        "interrupted": interrupted,
        "max_delay_s": pol.max_delay,
        "strategies": strategies,
        "details": details,
        "notes": [
            "windows and reloads: kexec_load syscall tracepoints in the guest (tracefs, trace_clock=mono)",
            "settle_s: last memory uevent -> exit of the last successful crash load (guest clock); "
            "total_s: first memory uevent -> the same",
            "cpu_s: distro handlers' rusage incl. their kexec children; kdump-coalesce: daemon's /proc stat delta "
            "over the burst (start-up excluded)",
            "stale_s: from the first memory uevent after a header's loader started (exec of kexec, else the "
            "syscall) to the next header installed, windows excluded: an upper bound by the loader's start-up",
            "kdump-coalesce runs with --source uevent (no BPF compile under TCG)",
            *([f"handlers: at most {scale.max_workers} at a time, as udevd's children_max (2 vCPUs * 2 + 16)"]
              if scale.max_workers else []),  # fmt: skip
        ],
    }


def _f(v: object, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def render_table(doc: dict[str, Any]) -> str:
    scale = doc.get("scale", "dimms")
    if scale in (None, "dimms"):
        head = f"vm-resize: {doc.get('dimms')} x 1 GiB DIMMs ({doc.get('blocks')} blocks), one qemu (TCG) guest per strategy"
    else:
        lays = ", ".join(f"{x['name']} ({x['dimms']} x {x['dimm_gib']} GiB)" for x in doc.get("layouts", []))
        head = f"vm-resize --scale {scale}: {doc.get('blocks')} blocks; layouts {lays}; one qemu (TCG) guest per strategy"
    if doc.get("interrupted"):
        head += "  ** INTERRUPTED: figures so far **"
    lines = [
        head,
        "",
        "| strategy | reloads | unloads | settle_s | total_s | exposure_s | max_window_s | stale_s | cpu_s | "
        "peak guest MiB | peak qemu MiB | capture covers | wall_s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in doc["strategies"].items():
        d = doc["details"][name]
        if d.get("skipped"):
            lines.append(f"| {name} | not run: {d['skipped']} |" + " |" * 11)
            continue
        cov = d["capture_covers_all_dimms"]
        covers = "not checked" if cov is None else ("yes" if cov else "NO")
        if cov and d.get("captured_gib") is not None:
            covers += f" ({d['captured_gib']:.1f} GiB)"
        reloads = str(m["reloads"]) if not d.get("kernel_updates") else f"{m['reloads']} ({d['kernel_updates']} in-kernel updates)"
        lines.append(
            f"| {name} | {reloads} | {d['unloads']} | {_f(m['settle_s'], '{:.2f}')} | {_f(m.get('total_s'), '{:.1f}')} | "
            f"{_f(m['exposure_s'], '{:.4f}')} | {_f(m['max_window_s'], '{:.4f}')} | {_f(m['stale_s'], '{:.2f}')} | "
            f"{_f(m['cpu_s'], '{:.2f}')} | {_f(d.get('peak_guest_mem_mib'), '{:.0f}')} | "
            f"{_f(d.get('peak_qemu_rss_mib'), '{:.0f}')} | {covers} | {d['wall_s']:.0f} |"
        )
        x = d.get("extrapolated")
        if x:
            lines.append(
                f"| {name} (extrapolated to {x['blocks']} blocks from {x['from_reloads']} reloads) | {x['reloads']} | "
                f"{x['reloads']} | {x['settle_s']:.1f} | {x['total_s']:.1f} | {x['exposure_s']:.1f} | "
                f"{x['mean_window_s']:.4f} | - | {_f(x['cpu_s'], '{:.1f}')} | - | - | - | - |"
            )
    for name, d in doc["details"].items():
        if d.get("reload_bound") is not None and d["strategy"].startswith("kdump-coalesce/"):
            r = doc["strategies"][name]["reloads"]
            ok = "ok" if r <= d["reload_bound"] else "MISSED"
            lines.append(
                f"target ({name}): reloads {r} <= ceil(burst {d['burst_s']:.1f} s / max_delay {doc.get('max_delay_s', 30):.0f} s) + 1 "
                f"= {d['reload_bound']}: {ok}"
            )
    lines += _ratio_lines(doc)
    for name, d in doc["details"].items():
        for n in d["notes"]:
            lines.append(f"note ({name}): {n}")
    lines += [""] + [f"- {n}" for n in doc.get("notes", [])]
    return "\n".join(lines)


def _ratio_lines(doc: dict[str, Any]) -> list[str]:
    """kdump-coalesce's exposure against udev-serial's (extrapolated when cut off), per layout."""
    out: list[str] = []
    det = doc["details"]
    for k, d in det.items():
        if d["strategy"] != "udev-serial" or d.get("skipped"):
            continue
        x = d.get("extrapolated")
        serial = x["exposure_s"] if x else doc["strategies"][k]["exposure_s"]
        for k2, d2 in det.items():
            if d2["layout"] == d["layout"] and d2["strategy"].startswith("kdump-coalesce/") and not d2.get("skipped"):
                e = doc["strategies"][k2]["exposure_s"]
                ratio = serial / e if e else float("inf")
                ok = "ok" if ratio >= 1000 else "MISSED"
                src = f"extrapolated from {x['from_reloads']} reloads" if x else "measured"
                out.append(f"target ({k2}): exposure {e:.4f} s vs udev-serial's {serial:.1f} s ({src}): {ratio:,.0f}x >= 1000x: {ok}")
    return out


def run_vm_bench(args: argparse.Namespace) -> int:
    """The hook of ``kdump-coalesce bench vm-resize`` (kdump_coalesce/commands/bench.py)."""
    dimms = int(getattr(args, "dimms", MIN_DIMMS))
    scale_name = getattr(args, "scale", None)
    if scale_name:
        if scale_name not in SCALES:
            raise ConfigError("--scale", f"{scale_name!r}: expected one of {', '.join(SCALES)}")
        scale = SCALES[scale_name]
    else:
        if dimms < 1 or dimms > 64:
            raise ConfigError("--dimms", f"expected 1..64 DIMMs of 1 GiB, got {dimms}")
        scale = legacy_scale(dimms)
    if getattr(args, "cutoff", None) is not None:
        scale = replace(scale, serial_cutoff=int(args.cutoff))
    runs: list[StrategyRun] = []
    interrupted = False
    try:
        vm_bench(dimms, args.strategy, timeout=float(getattr(args, "vm_timeout", 600.0)), scale=scale,
                 layouts=getattr(args, "layout", None), runs_out=runs)  # fmt: skip
    except BenchInterrupted as e:
        interrupted = True
        if e.partial is not None:
            runs.append(e.partial)
        _log("interrupted: printing what was measured so far")
    except KeyboardInterrupt:
        interrupted = True
        _log("interrupted: printing what was measured so far")
    doc = bench_doc(scale, runs, interrupted=interrupted)
    if getattr(args, "plot", None):
        from ._plot import plot_vm

        plot_vm(doc, args.plot)
    if args.json:
        print(json.dumps(doc))
    else:
        print(render_table(doc))
        if getattr(args, "plot", None):
            print(f"\ntimeline written to {args.plot}")
    sys.stdout.flush()
    if interrupted:
        return 130
    ok = all(
        (d["capture_covers_all_dimms"] or d.get("skipped")) and not d["timed_out"] for d in doc["details"].values()
    )
    return EXIT_OK if ok else EXIT_FAILURE
