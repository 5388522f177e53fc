"""Kernel mode on a kernel with crash hotplug: stand aside, hand over, repair, self-manage.

Pure: a synthetic /proc + /sys tree (test_fastpath_backend.write_root) with
the 6.12 files (crash_hotplug, crash_elfcorehdr_size), the synthetic kernel
and purgatory, and a fake kexec_load endpoint that does what the kernel does
with the sysfs files: after a load, crash_hotplug reads 1 when the flags
carry KEXEC_UPDATE_ELFCOREHDR and 0 otherwise.  The proof on a real kernel
is tests/vm/test_kernel_612.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio

from ground.kexec_log import KexecCallLog
from ground.ranges import PhysRange
from ground.records import Batch, UpdaterState
from tests.fixtures.doubles import RecordingObserver
from tests.unit.test_fastpath_backend import DIMM, IOMEM, FakeKexec, write_root
from tests.fixtures.fastpath import synth
from updater import HostCapabilities, KexecSettings, UpdaterSettings, choose_backend, open_updater
from updater._backends import plan_kernel_hotplug
from updater.fastpath import KEXEC_UPDATE_ELFCOREHDR, VerifiedSegmentSet

ELFCOREHDR_SIZE = 917616
DIMM_RANGE = PhysRange(0x100000000, 0x140000000)


def caps(**kw: Any) -> HostCapabilities:
    base: dict[str, Any] = dict(
        kexec_crash_loaded=True, kexec_crash_size=256 << 20, crash_hotplug_memory=0, crash_hotplug_cpu=0,
        kexec_binary="/sbin/kexec", fastpath="", crash_elfcorehdr_size=ELFCOREHDR_SIZE,
    )
    base.update(kw)
    return HostCapabilities(**base)


# -- the choice ------------------------------------------------------------------


def test_plain_kexec_p_image_on_a_hotplug_kernel_is_handed_over() -> None:
    mode, why = plan_kernel_hotplug("auto", caps())
    assert mode == "hand-over" and "KEXEC_UPDATE_ELFCOREHDR" in why
    assert choose_backend("auto", caps()) == ("kernel", why)
    # explicitly asking for the kernel backend hands over too
    assert choose_backend("kernel", caps())[0] == "kernel"


def test_image_with_hotplug_support_is_stood_aside_from() -> None:
    c = caps(crash_hotplug_memory=1, crash_hotplug_cpu=1)
    assert plan_kernel_hotplug("auto", c)[0] == "stand-aside"
    assert choose_backend("auto", c)[0] == "kernel"


def test_kernel_hotplug_off_keeps_the_daemon_managing() -> None:
    assert plan_kernel_hotplug("auto", caps(), "off")[0] == "off"
    assert choose_backend("auto", caps(), "off")[0] == "kexec-fast"
    # even when the loaded image has the kernel's support: the first load replaces it
    assert choose_backend("auto", caps(crash_hotplug_memory=1), "off")[0] == "kexec-fast"


def test_no_hand_over_without_kernel_support_or_fast_path() -> None:
    old = caps(crash_elfcorehdr_size=None, crash_hotplug_memory=None, crash_hotplug_cpu=None)
    assert plan_kernel_hotplug("auto", old)[0] == "unsupported"
    assert choose_backend("auto", old)[0] == "kexec-fast"
    nofast = caps(fastpath="kernel lockdown is on")
    mode, why = plan_kernel_hotplug("auto", nofast)
    assert mode == "unavailable" and "lockdown" in why
    assert choose_backend("auto", nofast)[0] == "kexec"
    assert plan_kernel_hotplug("kexec-fast", caps())[0] == "unavailable"
    assert choose_backend("kexec-fast", caps())[0] == "kexec-fast"


# -- the updater -------------------------------------------------------------------


class FakeKernel:
    """kexec_load(2) as the kernel answers it, for the sysfs files the updater reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loads: list[VerifiedSegmentSet] = []
        self.set_crash_hotplug(0)

    def set_crash_hotplug(self, value: int) -> None:
        for kind in ("cpu", "memory"):
            (self.root / f"sys/devices/system/{kind}/crash_hotplug").write_text(f"{value}\n")

    def __call__(self, verified: VerifiedSegmentSet) -> None:
        self.loads.append(verified)
        self.set_crash_hotplug(1 if verified.segment_set.flags & KEXEC_UPDATE_ELFCOREHDR else 0)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    root = write_root(tmp_path / "root", IOMEM + DIMM)
    (root / "sys/kernel/crash_elfcorehdr_size").write_text(f"{ELFCOREHDR_SIZE}\n")
    fake = FakeKernel(root)
    monkeypatch.setattr("updater.fastpath._backend.kexec_load_crash", fake)
    files = tmp_path / "files"
    files.mkdir()
    (files / "vmlinuz").write_bytes(synth.build_bzimage(payload_size=300_000, init_size=0x100000))
    (files / "initrd").write_bytes(bytes(range(256)) * 1000)
    (files / "kexec").write_bytes(b"\x7fELF not this one" + bytes(100) + synth.build_purgatory() + bytes(64))
    (files / "kexec").chmod(0o755)
    return fake


def sections(kernel: FakeKernel, **kw: Any) -> dict[str, object]:
    files = kernel.root.parent / "files"
    updater = UpdaterSettings(
        snapshot_root=str(kernel.root), status_file=str(kernel.root / "status.json"), retry_delay=0.0,
        staging_dir=str(kernel.root / "staging"), removal_recheck=0.0, **kw,
    )
    kexec = KexecSettings(
        binary=str(files / "kexec"), kernel=str(files / "vmlinuz"), initrd=str(files / "initrd"),
        cmdline="console=ttyS0", load_path="kexec_load", distro="none",
    )
    return {"updater": updater, "kexec": kexec}


def batch(seq: int, **kw: Any) -> Batch:
    base: dict[str, Any] = dict(
        seq=seq, events=2, first_ns=1, last_ns=2, opened_at=0.0, closed_at=1.0, reason="quiet",
        online=(), offline=(), added=(), removed=(), cpus_online=(), cpus_offline=(), cpus_added=(), cpus_removed=(),
        rescan=False, urgent=False, lost=0, failed=0, sources=("uevent",),
    )
    base.update(kw)
    return Batch(**base)


def remove_dimm(kernel: FakeKernel) -> None:
    (kernel.root / "proc/iomem").write_text(IOMEM)


async def test_hand_over_then_watch(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    assert up.backend_name == "kernel" and up.kernel_mode and up.kernel_hotplug == "hand-over"
    await up.reconcile()
    r = rec.reloads()[-1]
    assert r["purpose"] == "hand-over" and r["result"] == "ok" and r["backend"] == "kexec-fast"
    assert r["kernel_hotplug"] is True and r["crash_hotplug_after"] == 1
    assert r["fastpath"]["flags"] == "0x3e0005" and r["fastpath"]["elfcorehdr_slot"] >= ELFCOREHDR_SIZE + 64
    assert len(kernel.loads) == 1
    status = up.status()
    assert status.state is UpdaterState.KERNEL and status.kernel_hotplug == "handed-over"
    assert status.kdump_correct is True and status.counts["hand_overs"] == 1
    # An online, a CPU: the kernel rewrites the header itself; nothing is loaded.
    await up.consume(batch(1, online=(DIMM_RANGE,), cpus_online=(1,)))
    r = rec.reloads()[-1]
    assert r["result"] == "skipped" and "kernel owns" in r["reason"] and len(kernel.loads) == 1


async def test_removal_is_repaired_with_hotplug_support_kept(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    # offline (the kernel rebuilds, still System RAM): nothing to do
    await up.consume(batch(1, offline=(DIMM_RANGE,), urgent=True))
    assert rec.reloads()[-1]["result"] == "skipped" and len(kernel.loads) == 1
    # the eject: gone from /proc/iomem, still in the kernel's header
    remove_dimm(kernel)
    await up.consume(batch(2, removed=(DIMM_RANGE,), urgent=True))
    r = rec.reloads()[-1]
    assert r["purpose"] == "repair" and r["result"] == "ok" and r["repair_causes"] == ["removal"]
    assert r["stale_ranges"] == [[DIMM_RANGE.start, DIMM_RANGE.end]]
    assert r["kernel_hotplug"] is True and r["crash_hotplug_after"] == 1
    assert "still lists removed memory" in r["reason"]
    assert len(kernel.loads) == 2 and kernel.loads[-1].segment_set.flags & KEXEC_UPDATE_ELFCOREHDR
    assert up.state is UpdaterState.KERNEL and up.status().counts["repairs_removal"] == 1
    assert up.loaded is not None and all(not r.overlaps(DIMM_RANGE) for r in up.loaded.ram_ranges)
    # a later batch with nothing gone: no second repair
    await up.consume(batch(3, cpus_offline=(1,)))
    assert rec.reloads()[-1]["result"] == "skipped" and len(kernel.loads) == 2


async def test_removal_seen_only_in_the_state_is_repaired(kernel: FakeKernel) -> None:
    """Events are hints: a rescan (lost uevents) with the DIMM gone repairs too."""
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    remove_dimm(kernel)
    await up.consume(batch(1, events=0, rescan=True, lost=3))
    r = rec.reloads()[-1]
    assert r["purpose"] == "repair" and r["stale_ranges"] == [[DIMM_RANGE.start, DIMM_RANGE.end]]


async def test_kernel_log_skip_is_repaired_and_counted(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    await up.consume(batch(1, online=(DIMM_RANGE,), sources=("kmsg:trylock", "uevent"), rescan=True, lost=1))
    r = rec.reloads()[-1]
    assert r["purpose"] == "repair" and r["repair_causes"] == ["trylock"] and r["stale_ranges"] == []
    assert "kexec_trylock" not in r["reason"] and "skipped (trylock)" in r["reason"]
    await up.consume(batch(2, sources=("kmsg:elfsz",), rescan=True, lost=1, events=0))
    assert rec.reloads()[-1]["repair_causes"] == ["elfsz"]
    counts = up.status().counts
    assert counts["kernel_skipped_trylock"] == 1 and counts["kernel_skipped_elfsz"] == 1
    assert counts["repairs"] == 2 and len(kernel.loads) == 3


async def test_stand_aside_repairs_through_the_hotplug_fast_path(kernel: FakeKernel) -> None:
    """An image loaded with kexec_file_load: nothing at start-up, a repair
    after a removal replaces it with the fast path's hand-over image."""
    kernel.set_crash_hotplug(1)
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    assert up.kernel_hotplug == "stand-aside"
    await up.reconcile()
    assert rec.reloads()[-1]["result"] == "skipped" and kernel.loads == []
    remove_dimm(kernel)
    await up.consume(batch(1, removed=(DIMM_RANGE,)))
    r = rec.reloads()[-1]
    assert r["purpose"] == "repair" and r["backend"] == "kexec-fast" and r["crash_hotplug_after"] == 1
    assert len(kernel.loads) == 1


async def test_failed_hand_over_falls_back_to_kexec_and_the_daemon_manages(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel, headroom_ranges=10_000_000), rec, KexecCallLog())  # the slot cannot fit
    fallback = FakeKexec()  # kexec -p: no hotplug support, crash_hotplug stays 0
    up.fallback = fallback
    await up.reconcile()
    r = rec.reloads()[-1]
    assert r["result"] == "fallback" and r["backend"] == "kexec" and r["purpose"] == "hand-over"
    assert r["fastpath_error"]["error"] == "SegmentLayoutError" and r["crash_hotplug_after"] == 0
    assert not up.kernel_mode and up.backend_name == "kexec" and up.kernel_hotplug == "unavailable"
    assert up.state is UpdaterState.OK and kernel.loads == []
    remove_dimm(kernel)
    await up.consume(batch(1, removed=(DIMM_RANGE,)))
    r = rec.reloads()[-1]
    assert r["result"] == "ok" and r["backend"] == "kexec" and r["purpose"] == "" and len(fallback.requests) == 2


async def test_image_replaced_without_hotplug_is_handed_over_again(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    kernel.set_crash_hotplug(0)  # kdump-tools reloaded with kexec -p
    await up.consume(batch(1, online=(DIMM_RANGE,)))
    r = rec.reloads()[-1]
    assert r["purpose"] == "hand-over" and r["crash_hotplug_after"] == 1 and "again" in r["reason"]
    assert up.kernel_mode and up.status().counts["hand_overs"] == 2


async def test_kernel_hotplug_off_loads_without_the_flag(kernel: FakeKernel) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel, kernel_hotplug="off"), rec, KexecCallLog())
    assert up.backend_name == "kexec-fast" and up.kernel_hotplug == "off" and not up.kernel_mode
    await up.reconcile()
    r = rec.reloads()[-1]
    assert r["result"] == "ok" and r["purpose"] == "" and r["kernel_hotplug"] is False
    assert not kernel.loads[-1].segment_set.flags & KEXEC_UPDATE_ELFCOREHDR
    assert up.status().kernel_hotplug == "off"


async def test_a_failed_hand_over_and_fallback_is_loud(kernel: FakeKernel) -> None:
    class FailingKexec(FakeKexec):
        async def load(self, request: Any) -> Any:
            out = await super().load(request)
            return dataclasses.replace(out, ok=False, detail="kexec exited 1: boom")

    rec = RecordingObserver()
    up = await open_updater(sections(kernel, headroom_ranges=10_000_000), rec, KexecCallLog())
    up.fallback = FailingKexec()
    from updater import ReloadFailed

    with pytest.raises(ReloadFailed, match="boom"):
        await up.reconcile()
    assert rec.reloads()[-1]["result"] == "failed" and up.state is UpdaterState.FAILED
    assert [k for k, _ in rec.records].count("error") == 1


# -- doctor ----------------------------------------------------------------------------


def test_doctor_says_which_path_the_host_is_on(kernel: FakeKernel, tmp_path: Path) -> None:
    from kdump_coalesce.commands.doctor import auto_plan
    from probes._capabilities import check_crash_hotplug, check_kmsg

    root = str(kernel.root)
    c = check_crash_hotplug(root)
    assert c.status == "ok" and "crash_elfcorehdr_size=917616" in c.found
    assert "plain kexec -p" in c.found and "hands the header over" in c.found
    kernel.set_crash_hotplug(1)
    c = check_crash_hotplug(root)
    assert "has the kernel's hotplug support" in c.found and "stands aside" in c.found
    (tmp_path / "bare").mkdir()
    assert "no CONFIG_CRASH_HOTPLUG" in check_crash_hotplug(str(tmp_path / "bare")).found
    assert check_kmsg(root, str(tmp_path / "no-kmsg")).status == "warn"
    assert check_kmsg(str(tmp_path / "bare"), str(tmp_path / "no-kmsg")).status == "ok"
    # auto's plan on this tree, with the default [kexec] (no usable capture kernel here): stand aside
    here = UpdaterSettings(snapshot_root=root)
    plan = auto_plan(here)
    assert plan["backend"] == "kernel" and plan["kernel_hotplug"] == "stand-aside"
    assert plan["why"].startswith("stand aside: ") and "repairs" in plan["why"] and plan["config"] == "built-in defaults"
    kernel.set_crash_hotplug(0)
    plan = auto_plan(here)
    assert plan["kernel_hotplug"] in ("hand-over", "unavailable") and plan["why"]
    # the config file's choices are what the plan follows
    kernel.set_crash_hotplug(1)
    off = auto_plan(dataclasses.replace(here, kernel_hotplug="off"), config="/etc/kdump-coalesce/config.toml")
    assert off["kernel_hotplug"] == "off" and off["backend"] != "kernel"
    assert "the daemon manages the header" in off["why"] and off["config"] == "/etc/kdump-coalesce/config.toml"
    explicit = auto_plan(dataclasses.replace(here, backend="dry-run"))
    assert explicit["backend"] == "dry-run" and explicit["why"].startswith("--backend dry-run (from the config): ")
    assert explicit["kernel_hotplug"] == "unavailable"


def test_doctor_refuses_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdump_coalesce.cli import main

    bad = tmp_path / "config.toml"
    bad.write_text('[updater]\nkernel-hotplug = "sometimes"\n')
    assert main(["doctor", "--config", str(bad)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "kernel-hotplug" in err[0], err


async def test_a_load_in_progress_is_waited_out_not_handed_over_on(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone's `kexec -s -p` holds the kexec lock: crash_hotplug reads 0 until
    it ends (crash_check_hotplug_support trylocks), then 1.  The daemon waits
    for the lock instead of loading a hand-over on top of it."""
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    assert len(kernel.loads) == 1
    kernel.set_crash_hotplug(0)
    busy = iter([True] * 8)  # longer than HOTPLUG_RECHECKS zero reads

    def lock_held(root: str) -> bool:
        held = next(busy, False)
        if not held:
            kernel.set_crash_hotplug(1)  # the other load ended, with hotplug support
        return held

    monkeypatch.setattr("updater._updater.kexec_lock_held", lock_held)
    await up.consume(batch(1, online=(DIMM_RANGE,)))
    r = rec.reloads()[-1]
    assert r["result"] == "skipped" and "kernel owns" in r["reason"], r
    assert len(kernel.loads) == 1 and up.status().counts["hand_overs"] == 1


async def test_a_lock_held_past_the_wait_counts_as_zero(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingObserver()
    up = await open_updater(sections(kernel), rec, KexecCallLog())
    await up.reconcile()
    kernel.set_crash_hotplug(0)
    monkeypatch.setattr("updater._updater.kexec_lock_held", lambda root: True)
    monkeypatch.setattr("updater._updater.KEXEC_LOCK_WAIT_S", 0.3)
    await up.consume(batch(1, online=(DIMM_RANGE,)))
    r = rec.reloads()[-1]
    assert r["purpose"] == "hand-over" and "again" in r["reason"], r
