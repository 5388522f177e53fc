"""Fast-path figures: prepare once, then per batch build + verify, against a full re-hash.

    .venv/bin/python bench/fastpath_bench.py [--kernel vmlinuz] [--initrd initrd.img] [--kexec /sbin/kexec] [--batches 50]
    .venv/bin/python bench/fastpath_bench.py --live --kernel K --initrd I --cmdline C [--reps 5] [--fast-reps 15]

The baseline is what ``kexec -p`` pays for the digest on every load (a full
SHA-256 of every segment, zero fill included); it is measured here in the same
run so that the figures are ratios, not absolute times.  Without --kernel the
synthetic fixtures are used (tests/fixtures/fastpath/synth.py).

``--live`` (root, a kernel with kexec and a crash region: the VM tier's guest,
tests/vm/test_fastpath_bench.py) really reloads the crash kernel, alternately
with ``kexec -p``, ``kexec -s -p`` and the fast path (``kexec-fast``: live
snapshot, header, build, verify, kexec_load), and reports per method the
median wall time per reload and the median window.  The window is the
syscall's own enter -> exit, from the kernel's ``syscalls`` tracepoints read
through tracefs (``sys_enter_kexec_load`` / ``sys_exit_kexec_load``, and the
kexec_file_load pair); the fast path's ctypes bracket around the call is
reported next to it.  The fast path's first reload after its prepare (full
verification) is reported apart from the steady state (attested prefix).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ground.ranges import PhysRange  # noqa: E402
from updater import fastpath  # noqa: E402


def _synth() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fastpath" / "synth.py"
    spec = importlib.util.spec_from_file_location("fastpath_synth", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--kexec", default="/sbin/kexec")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--live", action="store_true", help="really reload the crash kernel (root, kexec-capable kernel)")
    ap.add_argument("--cmdline", default="console=ttyS0 nr_cpus=1 irqpoll reset_devices")
    ap.add_argument("--reps", type=int, default=5, help="--live: reloads per kexec-tools method")
    ap.add_argument("--fast-reps", type=int, default=15, help="--live: kexec-fast reloads after the first")
    ap.add_argument("--json", help="--live: also write the figures here")
    ap.add_argument("--kexec-first", action="store_true", help="--live: the boot's first crash load by kexec -p, before kexec-fast's")
    args = ap.parse_args()
    if args.live:
        return live(args)
    synth = _synth()
    kernel = fastpath.load_bzimage(args.kernel) if args.kernel else fastpath.parse_bzimage(synth.build_bzimage(payload_size=8 << 20, init_size=64 << 20))
    initrd = Path(args.initrd).read_bytes() if args.initrd else os.urandom(32 << 20)
    purgatory = fastpath.load_purgatory(args.kexec) if os.path.exists(args.kexec) else fastpath.parse_purgatory(synth.build_purgatory())
    bp_path = Path("/sys/kernel/boot_params/data")
    inputs = fastpath.FastPathInputs(
        capture=fastpath.CaptureKernel(kernel, initrd, "console=ttyS0 nr_cpus=1 irqpoll reset_devices"),
        purgatory=purgatory,
        crash_regions=(PhysRange.from_inclusive(0x2B000000, 0x3AFFFFFF),),
        iomem=(
            fastpath.IomemRange(PhysRange.from_inclusive(0x1000, 0x9FBFF), fastpath.RangeKind.SYSTEM_RAM),
            fastpath.IomemRange(PhysRange.from_inclusive(0x100000, 0x7FFDFFFF), fastpath.RangeKind.SYSTEM_RAM),
            fastpath.IomemRange(PhysRange.from_inclusive(0x7FFE0000, 0x7FFFFFFF), fastpath.RangeKind.RESERVED),
        ),
        boot_params=bp_path.read_bytes() if bp_path.exists() else synth.boot_params(),
        elfcorehdr_capacity=fastpath.elfcorehdr_capacity_for(cpus=args.cpus, ram_ranges=64),
    )
    t0 = time.perf_counter()
    image = fastpath.prepare(inputs)
    prepare_s = time.perf_counter() - t0
    build, full, attested = [], [], []
    for i in range(args.batches):
        header = synth.build_elfcorehdr(args.cpus + 4 + i % 16, fill=i)
        t = time.perf_counter()
        ss = image.build(header)
        build.append(time.perf_counter() - t)
        t = time.perf_counter()
        image.verify(ss)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        image.verify(ss, reuse_attested_prefix=True)
        attested.append(time.perf_counter() - t)
    # baseline: kexec-tools' per-load digest work (full hash of every hashed segment)
    hashed = [s for s in ss.segments if s.kind is not fastpath.SegmentKind.PURGATORY]
    t = time.perf_counter()
    for _ in range(5):
        fastpath.recompute_digest(hashed)
    baseline = (time.perf_counter() - t) / 5
    med = statistics.median
    result = {
        "kernel": kernel.source,
        "hashed_bytes": sum(s.memsz for s in hashed),
        "elfcorehdr_capacity": image.layout.elfcorehdr_capacity,
        "prepare_s": prepare_s,
        "build_median_s": med(build),
        "verify_full_median_s": med(full),
        "verify_attested_median_s": med(attested),
        "baseline_full_hash_s": baseline,
        "ratio_build_vs_baseline": med(build) / baseline,
        "ratio_build_plus_full_verify_vs_baseline": (med(build) + med(full)) / baseline,
        "ratio_build_plus_attested_verify_vs_baseline": (med(build) + med(attested)) / baseline,
    }
    print(json.dumps(result, indent=2))
    return 0


# -- live: real reloads ------------------------------------------------------------

_TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_EVENTS = ("sys_enter_kexec_load", "sys_exit_kexec_load", "sys_enter_kexec_file_load", "sys_exit_kexec_file_load")


class SyscallTrace:
    """kexec syscall enter/exit times from the kernel's syscalls tracepoints, through tracefs (no BPF compile)."""

    def __init__(self) -> None:
        self.dir = next((Path(d) for d in _TRACEFS if Path(d, "trace").exists()), None)
        self.why = "" if self.dir else "no tracefs"
        if self.dir is not None:
            for ev in _EVENTS:
                enable = self.dir / "events" / "syscalls" / ev / "enable"
                if not enable.exists():
                    self.why = f"no {ev} tracepoint (CONFIG_FTRACE_SYSCALLS off?)"
                    self.dir = None
                    return
                enable.write_text("1\n")
            (self.dir / "tracing_on").write_text("1\n")

    def clear(self) -> None:
        if self.dir is not None:
            (self.dir / "trace").write_text("")

    def windows(self, pid: int) -> list[float]:
        """Enter->exit durations (s) of kexec syscalls made by ``pid`` since the last clear()."""
        if self.dir is None:
            return []
        import re

        out, enter = [], None
        rx = re.compile(r"-(\d+)\s+\[\d+\].*?\s(\d+\.\d+): (sys_kexec(?:_file)?_load)(\(| ->)")
        for line in (self.dir / "trace").read_text().splitlines():
            m = rx.search(line)
            if not m or int(m.group(1)) != pid:
                continue
            ts = float(m.group(2))
            if m.group(4) == "(":
                enter = ts
            elif enter is not None:
                out.append(ts - enter)
                enter = None
        return out

    def close(self) -> None:
        if self.dir is not None:
            for ev in _EVENTS:
                (self.dir / "events" / "syscalls" / ev / "enable").write_text("0\n")


def live(args: argparse.Namespace) -> int:
    import subprocess

    from updater import ElfCoreHeader, HeaderOptions, KexecCommand, UpdaterSettings, read_snapshot
    from updater.fastpath import create_engine, kexec_load_crash

    if not (args.kernel and args.initrd):
        print("--live needs --kernel and --initrd", file=sys.stderr)
        return 2
    trace = SyscallTrace()
    crash_loaded = Path("/sys/kernel/kexec_crash_loaded")

    def cli(load_path: str) -> dict[str, float]:
        argv = KexecCommand(args.kexec, args.kernel, args.initrd, args.cmdline, load_path, (), "bench").argv()
        trace.clear()
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode != 0 or crash_loaded.read_text().strip() != "1":
            raise SystemExit(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
        w = trace.windows(proc.pid)
        return {"wall_s": wall, "window_s": sum(w) if w else float("nan"), "userspace_s": wall - (sum(w) if w else 0.0)}

    settings = UpdaterSettings(snapshot_root="/")
    command = KexecCommand(args.kexec, args.kernel, args.initrd, args.cmdline, "kexec_load", (), "bench")
    engine = create_engine(command, settings)
    options = HeaderOptions.for_loader("kexec_load")

    def fast() -> dict[str, float]:
        trace.clear()
        t = time.perf_counter()
        snap = read_snapshot("/")
        snap_s = time.perf_counter() - t
        prepared = engine.segment_set_for(snap, ElfCoreHeader.build(snap, options))
        t1 = time.perf_counter()
        kexec_load_crash(prepared.verified)
        t2 = time.perf_counter()
        if crash_loaded.read_text().strip() != "1":
            raise SystemExit("kexec-fast: kexec_crash_loaded is not 1 after the load")
        w = trace.windows(os.getpid())
        tm = prepared.timings
        return {
            "wall_s": t2 - t,
            "window_s": sum(w) if w else float("nan"),
            "ctypes_window_s": t2 - t1,
            "snapshot_s": snap_s,
            "iomem_s": tm["iomem_s"],
            "prepare_s": tm["prepare_s"],
            "header_s": tm["header_s"],
            "build_s": tm["build_s"],
            "verify_s": tm["verify_s"],
            "userspace_s": tm["userspace_s"],
            "userspace_with_snapshot_s": snap_s + tm["iomem_s"] + tm["prepare_s"] + tm["userspace_s"],
            "verify_mode_full": 1.0 if prepared.verified.mode == "full" else 0.0,
        }

    runs: dict[str, list[dict[str, float]]] = {"kexec -p": [], "kexec -s -p": [], "kexec-fast (first)": [], "kexec-fast": []}
    if args.kexec_first:
        # The first crash load of a boot, by kexec-tools, for comparison with kexec-fast's first.
        runs["kexec -p (first of boot)"] = [cli("kexec_load")]
    runs["kexec-fast (first)"].append(fast())
    # kexec -p and kexec-fast interleaved, so that whatever else the machine
    # does hits both alike, and each replaces a kexec_load image (replacing a
    # kexec_file_load image costs ~1.5 ms more inside the syscall: the old
    # image is freed there).  kexec -s -p afterwards.
    per_round = max(1, args.fast_reps // max(1, args.reps))
    for _ in range(args.reps):
        runs["kexec -p"].append(cli("kexec_load"))
        for _ in range(per_round):
            runs["kexec-fast"].append(fast())
    for _ in range(args.reps):
        runs["kexec -s -p"].append(cli("kexec_file_load"))
    runs["kexec-fast (after kexec -s -p)"] = [fast()]
    # Leave the fast path's image loaded, as the daemon would.
    trace.close()

    med = statistics.median
    summary: dict[str, dict[str, float]] = {}
    for name, rows in runs.items():
        keys = rows[0].keys()
        summary[name] = {k: med([r[k] for r in rows]) for k in keys}
        summary[name]["n"] = len(rows)
    base = summary["kexec -p"]
    fastm = summary["kexec-fast"]
    summary["ratios"] = {
        "fast_userspace_vs_kexec_p_userspace": fastm["userspace_s"] / base["userspace_s"],
        "fast_userspace_with_snapshot_vs_kexec_p_userspace": fastm["userspace_with_snapshot_s"] / base["userspace_s"],
        "fast_window_vs_kexec_p_window": fastm["window_s"] / base["window_s"],
        "fast_wall_vs_kexec_p_wall": fastm["wall_s"] / base["wall_s"],
    }
    print("| method | n | wall per reload (s) | window: syscall enter->exit (s) [min-max] | user-space (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name in [n for n in runs if n in summary]:
        m = summary[name]
        ws = [r["window_s"] for r in runs[name]]
        print(f"| {name} | {int(m['n'])} | {m['wall_s']:.4f} | {m['window_s']:.4f} [{min(ws):.4f}-{max(ws):.4f}] | {m['userspace_s']:.4f} |")
    print()
    print("kexec-fast steady state, medians (ms): " + ", ".join(
        f"{k[:-2]} {fastm[k] * 1e3:.2f}" for k in ("snapshot_s", "iomem_s", "header_s", "build_s", "verify_s", "userspace_s", "ctypes_window_s", "window_s")
    ))
    print("window source: " + ("tracefs syscalls tracepoints" if trace.dir else f"unavailable ({trace.why}); ctypes bracket only"))
    print(json.dumps(summary["ratios"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "summary": summary, "window_source": "tracefs" if trace.dir else trace.why}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
