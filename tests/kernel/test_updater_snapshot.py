"""The updater on the live host (root): snapshot, header, dry-run daemon.

This host's kernel has no CONFIG_CRASH_DUMP: no crash_notes, no /proc/kcore,
no kexec_crash_loaded.  The snapshot must say so and otherwise be complete;
the complete snapshot (notes, kcore) is proven on the VM guest's fixtures.
Every test that takes cpu1 offline puts it back online, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from updater import ElfCoreHeader, read_snapshot

pytestmark = pytest.mark.kernel

CPU1_ONLINE = Path("/sys/devices/system/cpu/cpu1/online")
# What a kernel without CRASH_DUMP lacks, and nothing else.
DOCUMENTED_MISSING = {"/sys/devices/system/cpu/cpuN/crash_notes", "/proc/kcore", "/sys/kernel/kexec_crash_loaded"}




def test_live_snapshot_is_complete_but_for_documented_gaps() -> None:
    snap = read_snapshot("/")
    assert set(snap.missing_paths()) <= DOCUMENTED_MISSING
    if not os.path.exists("/proc/kcore"):
        assert "/proc/kcore" in snap.missing_paths() and snap.page_offset == 0xFFFF888000000000
    assert snap.cpus_online == tuple(sorted(os.sched_getaffinity(0))) or set(os.sched_getaffinity(0)) <= set(snap.cpus_online)
    assert snap.block_size and snap.block_size % (1 << 20) == 0
    assert snap.kernel_code is not None and snap.vmcoreinfo is not None
    # RAM lines add up to MemTotal plus what the kernel keeps for itself:
    # struct pages (64 B per 4 KiB page, 1.6 %), the kernel image, firmware
    # and the crash kernel region.
    assert snap.mem_total_kb is not None
    ram = snap.ram_bytes
    reserved = ram - snap.mem_total_kb * 1024
    crash = sum(r.size for r in snap.crash_kernel)
    assert 0 < reserved <= ram * 0.03 + (256 << 20) + crash, (ram, snap.mem_total_kb, reserved)
    header = ElfCoreHeader.build(snap)
    assert header.ram_ranges == snap.dump_ranges()
    if not snap.cpu_notes:
        assert header.missing_note_cpus == snap.cpus_present


def test_live_snapshot_follows_real_cpu_offline(cpu1: Path) -> None:
    cpu1.write_text("0\n")
    offline = read_snapshot("/")
    cpu1.write_text("1\n")
    online = read_snapshot("/")
    assert 1 not in offline.cpus_online and 1 in offline.cpus_present
    assert 1 in online.cpus_online
    assert offline.ram == online.ram


def _wait_manifest(current: Path, predicate: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited with status {proc.returncode}")
        try:
            last = json.loads((current / "manifest.json").read_text())
        except (OSError, ValueError):
            pass
        else:
            if predicate(last):
                return last
        time.sleep(0.02)
    raise AssertionError(f"no staged manifest matched within {timeout} s; last: batch {last.get('batch')} cpus {last.get('cpus')}")


def test_run_dry_run_stages_one_header_per_cpu_burst(tmp_path: Path, cpu1: Path) -> None:
    """``run --backend dry-run`` with the live sources reacts to a real cpu1
    offline/online with exactly one staged header per burst, within
    quiet + 1 s.  ``--cpu-notes online`` makes online/offline a header change
    (the default, present CPUs, rightly skips it: nothing loaded changes)."""
    quiet = 0.5
    staging, status = tmp_path / "staging", tmp_path / "status.json"
    cmd = [
        sys.executable, "-c", "import sys; from kdump_coalesce.cli import main; sys.exit(main())", "run", "--backend", "dry-run", "--cpu-notes", "online",
        "--quiet", str(quiet), "--staging-dir", str(staging), "--status-file", str(status),
        "--trace-file", str(tmp_path / "trace.jsonl"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        current = staging / "current"
        try:
            first = _wait_manifest(current, lambda m: m.get("batch") == 0, 15, proc)
        except AssertionError:
            if proc.poll() is None:
                proc.terminate()
            out = proc.communicate(timeout=10)[0]
            if "live sources are not built" in out or "unavailable" in out:
                pytest.skip(f"live sources not available yet: {out.strip().splitlines()[-1]}")
            raise AssertionError(f"daemon did not stage its start-up header: {out}")
        assert 1 in first["cpus"]
        time.sleep(0.5)  # let the sources settle after start-up

        t = time.monotonic()
        cpu1.write_text("0\n")
        off = _wait_manifest(current, lambda m: m.get("batch", 0) > 0 and 1 not in m["cpus"], quiet + 1 + 0.5)
        assert time.monotonic() - t <= quiet + 1.0 + 0.5
        time.sleep(quiet + 0.5)

        t = time.monotonic()
        cpu1.write_text("1\n")
        on = _wait_manifest(current, lambda m: m.get("batch", 0) > off["batch"] and 1 in m["cpus"], quiet + 1 + 0.5)
        assert time.monotonic() - t <= quiet + 1.0 + 0.5
        time.sleep(quiet + 0.5)
    finally:
        if CPU1_ONLINE.read_text().strip() != "1":
            CPU1_ONLINE.write_text("1\n")
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, out
    staged = sorted(p for p in staging.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0].isdigit())
    assert len(staged) == 3, [p.name for p in staged]  # start-up + one per burst
    assert on["cpus_online"] == first["cpus_online"]
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines() if '"reload"' in line]
    assert [r["result"] for r in records if r.get("type") == "reload" or "result" in r][:3] == ["ok", "ok", "ok"]
    doc = json.loads(status.read_text())
    assert doc["running"] is False and doc["counts"]["ok"] == 3
