"""Fast-path figures: prepare once, then per batch build + verify, against a full re-hash.

    .venv/bin/python bench/fastpath_bench.py [--kernel vmlinuz] [--initrd initrd.img] [--kexec /sbin/kexec] [--batches 50]

The baseline is what ``kexec -p`` pays for the digest on every load (a full
SHA-256 of every segment, zero fill included); it is measured here in the same
run so that the figures are ratios, not absolute times.  Without --kernel the
synthetic fixtures are used (tests/fixtures/fastpath/synth.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from updater import fastpath  # noqa: E402


def _synth():  # type: ignore[no-untyped-def]
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
    args = ap.parse_args()
    synth = _synth()
    kernel = fastpath.load_bzimage(args.kernel) if args.kernel else fastpath.parse_bzimage(synth.build_bzimage(payload_size=8 << 20, init_size=64 << 20))
    initrd = Path(args.initrd).read_bytes() if args.initrd else os.urandom(32 << 20)
    purgatory = fastpath.load_purgatory(args.kexec) if os.path.exists(args.kexec) else fastpath.parse_purgatory(synth.build_purgatory())
    bp_path = Path("/sys/kernel/boot_params/data")
    inputs = fastpath.FastPathInputs(
        capture=fastpath.CaptureKernel(kernel, initrd, "console=ttyS0 nr_cpus=1 irqpoll reset_devices"),
        purgatory=purgatory,
        crash_regions=(fastpath.PhysRange(0x2B000000, 0x3AFFFFFF),),
        iomem=(
            fastpath.IomemRange(0x1000, 0x9FBFF, fastpath.RangeKind.SYSTEM_RAM),
            fastpath.IomemRange(0x100000, 0x7FFDFFFF, fastpath.RangeKind.SYSTEM_RAM),
            fastpath.IomemRange(0x7FFE0000, 0x7FFFFFFF, fastpath.RangeKind.RESERVED),
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


if __name__ == "__main__":
    raise SystemExit(main())
