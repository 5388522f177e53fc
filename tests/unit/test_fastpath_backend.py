"""The ``kexec-fast`` backend: prepare once, per batch header + build + verify, fall back on any failure.

Pure tests: the snapshot root is a synthetic /proc + /sys tree, the kernel
and purgatory are the synthetic fixtures (tests/fixtures/fastpath/synth.py);
the one fake is ``kexec_load_crash`` (a pure unit test cannot load a kernel:
the VM tier, tests/vm/test_fastpath.py, does it for real).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixtures.doubles import RecordingObserver
from ground.kexec_log import KexecCallLog
from ground.errors import ConfigError
from ground.ranges import PhysRange
from updater import (
    DryRunBackend,
    ElfCoreHeader,
    HeaderOptions,
    KexecCommand,
    KexecSettings,
    LoadOutcome,
    LoadRequest,
    SystemSnapshot,
    Updater,
    UpdaterSettings,
    diff_headers,
    read_snapshot,
)
from updater import fastpath
from updater._backends import HostCapabilities, choose_backend
from updater.fastpath import unavailable_reason as fastpath_unavailable_reason
from updater._elfcorehdr import PT_LOAD
from updater.fastpath import (
    DigestMismatchError,
    FastPathStager,
    KexecFastBackend,
    KexecLoadError,
    PurgatoryError,
    RangeKind,
    SegmentLayoutError,
    VerifiedSegmentSet,
    create_backend,
    iomem_ranges,
    unavailable_reason,
)
from updater._parse import parse_iomem
from updater.fastpath._backend import crash_regions_of


from tests.fixtures.fastpath import synth

IOMEM = """\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-7ffdffff : System RAM
  2b000000-3affffff : Crash kernel
  5a000000-5b0fffff : Kernel code
7ffe0000-7ffeffff : ACPI Tables
7fff0000-7fffffff : ACPI Non-volatile Storage
fed00000-fed003ff : Reserved
  fed00000-fed003ff : PNP0103:00
"""
DIMM = "100000000-13fffffff : System RAM\n"


def write_root(root: Path, iomem: str = IOMEM, cpus: int = 2) -> Path:
    files = {
        "proc/iomem": iomem,
        "sys/devices/system/cpu/possible": "0-7\n",
        "sys/devices/system/cpu/present": f"0-{cpus - 1}\n",
        "sys/devices/system/cpu/online": f"0-{cpus - 1}\n",
        "sys/kernel/vmcoreinfo": "4a31f000 1000\n",
        "sys/kernel/kexec_crash_loaded": "1\n",
        "sys/kernel/kexec_crash_size": f"{0x10000000}\n",
        "sys/devices/system/memory/block_size_bytes": "8000000\n",
    }
    for cpu in range(cpus):
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes"] = f"{0x7e000000 + cpu * 0x1000:x}\n"
        files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes_size"] = "368\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "sys/kernel/boot_params").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/boot_params/data").write_bytes(synth.boot_params())
    return root


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Any]:
    root = write_root(tmp_path / "root")
    files = tmp_path / "files"
    files.mkdir()
    (files / "vmlinuz").write_bytes(synth.build_bzimage(payload_size=300_000, init_size=0x100000))
    (files / "initrd").write_bytes(bytes(range(256)) * 1000)
    (files / "kexec").write_bytes(b"\x7fELF not this one" + bytes(100) + synth.build_purgatory() + bytes(64))
    (files / "kexec").chmod(0o755)
    command = KexecCommand(
        binary=str(files / "kexec"),
        kernel=str(files / "vmlinuz"),
        initrd=str(files / "initrd"),
        cmdline="console=ttyS0 nr_cpus=1 irqpoll reset_devices",
        load_path="kexec_load",
        extra_args=(),
        source="test",
    )
    return {"root": root, "files": files, "command": command}


def settings_for(host: Mapping[str, Any], **kw: Any) -> UpdaterSettings:
    return UpdaterSettings(snapshot_root=str(host["root"]), status_file=str(host["root"] / "status.json"), retry_delay=0.0, **kw)


def request_for(host: Mapping[str, Any], seq: int = 1) -> LoadRequest:
    snap = read_snapshot(str(host["root"]))
    header = ElfCoreHeader.build(snap, HeaderOptions.for_loader("kexec_load"))
    return LoadRequest(seq, snap, header, diff_headers(None, header), "test")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[VerifiedSegmentSet]:
    """Record what would be loaded instead of calling kexec_load(2)."""
    seen: list[VerifiedSegmentSet] = []
    monkeypatch.setattr("updater.fastpath._backend.kexec_load_crash", seen.append)
    return seen


def test_iomem_ranges_take_exact_names_at_any_depth() -> None:
    ranges = iomem_ranges(parse_iomem(IOMEM + "140000000-14fffffff : System RAM (kmem)\n"))
    kinds = [(r.range.start, r.kind) for r in ranges]
    assert (0x1000, RangeKind.SYSTEM_RAM) in kinds
    assert (0x7FFE0000, RangeKind.ACPI_TABLES) in kinds and (0x7FFF0000, RangeKind.ACPI_NVS) in kinds
    assert (0xFED00000, RangeKind.RESERVED) in kinds
    assert all(r.range.start != 0x140000000 for r in ranges)  # driver-managed RAM is not kexec-tools' "System RAM"
    assert all(r.range.start != 0x2B000000 for r in ranges)  # Crash kernel is not a firmware range


def test_first_load_full_then_attested_and_header_points_at_backup(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    backend = create_backend(host["command"], settings_for(host))
    assert isinstance(backend, KexecFastBackend) and backend.load_path == "kexec_load"
    first = trio.run(backend.load, request_for(host))
    assert first.ok, first.detail
    rec = first.extra["record"]["fastpath"]
    assert rec["verify_mode"] == "full" and rec["prepared"] == "first load" and rec["prepares"] == 1
    assert set(rec["timings"]) >= {"prepare_s", "header_s", "build_s", "verify_s", "userspace_s", "syscall_s"}
    assert first.pids == (os.getpid(),) and first.end_ns >= first.start_ns

    write_root(host["root"], IOMEM + DIMM, cpus=3)
    second = trio.run(backend.load, request_for(host, 2))
    rec2 = second.extra["record"]["fastpath"]
    assert second.ok and rec2["verify_mode"] == "attested-prefix" and rec2["prepared"] == "" and rec2["prepares"] == 1
    assert len(loads) == 2
    # The loaded header: the DIMM, three CPU notes, and the low RAM PT_LOAD read from the backup segment.
    image = backend.engine.image
    assert image is not None
    hdr = ElfCoreHeader.parse(loads[1].segment_set.by_kind(fastpath.SegmentKind.ELFCOREHDR).buf)
    low = [p for p in hdr.phdrs if p.p_type == PT_LOAD and p.p_paddr == 0x1000]
    assert len(low) == 1 and low[0].p_offset == image.layout.backup.start
    assert any(p.p_paddr == 0x100000000 and p.p_memsz == 1 << 30 for p in hdr.phdrs)
    assert sum(1 for p in hdr.phdrs if p.p_type == 4) == 3 + 1
    # Both sets share every unchanged buffer: only the header and the purgatory are new.
    a, b = (v.segment_set for v in loads)
    same = {s.kind for s, t in zip(a.segments, b.segments) if s.buf is t.buf}
    assert same == {s.kind for s in a.segments} - {fastpath.SegmentKind.ELFCOREHDR, fastpath.SegmentKind.PURGATORY}


def test_always_full_verifies_everything_every_time(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    backend = create_backend(host["command"], settings_for(host, fast_verify="always-full"))
    modes = [trio.run(backend.load, request_for(host, i)).extra["record"]["fastpath"]["verify_mode"] for i in range(3)]
    assert modes == ["full", "full", "full"]


def test_bad_fast_verify_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fast-verify"):
        UpdaterSettings(fast_verify="sometimes")


@pytest.mark.parametrize("after_full", [False, True], ids=["first-load", "attested-prefix"])
def test_corrupted_cached_digest_is_refused_and_the_image_discarded(
    host: dict[str, Any], loads: list[VerifiedSegmentSet], after_full: bool
) -> None:
    backend = create_backend(host["command"], settings_for(host))
    engine = backend.engine
    req = request_for(host)
    engine.segment_set_for(req.snapshot, req.header)
    assert engine.image is not None
    engine.image._prefix_digest._state.update(b"\0")
    if not after_full:
        engine._full_verified = False
    out = trio.run(backend.load, req)
    assert not out.ok and "DigestMismatchError" in out.detail and "refused to load" in out.detail
    assert out.extra["record"]["fastpath_error"]["error"] == "DigestMismatchError"
    assert loads == [] and engine.image is None
    again = trio.run(backend.load, req)  # a fresh prepare, full check, loads
    assert again.ok and again.extra["record"]["fastpath"]["verify_mode"] == "full"
    assert again.extra["record"]["fastpath"]["prepared"] == "previous image discarded"


def test_digest_mismatch_error_type(host: dict[str, Any]) -> None:
    backend = create_backend(host["command"], settings_for(host))
    req = request_for(host)
    backend.engine.segment_set_for(req.snapshot, req.header)
    assert backend.engine.image is not None
    backend.engine.image._prefix_digest._state.update(b"x")
    with pytest.raises(DigestMismatchError):
        backend.engine.segment_set_for(req.snapshot, req.header)


def test_firmware_change_reprepares_and_overflow_grows_the_slot(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    backend = create_backend(host["command"], settings_for(host, headroom_ranges=0, headroom_cpus=0))
    assert trio.run(backend.load, request_for(host)).ok
    image = backend.engine.image
    assert image is not None
    slot = image.layout.elfcorehdr_capacity
    assert slot == 16 * 1024  # kexec-tools' minimum: no headroom asked for
    write_root(host["root"], IOMEM.replace("fed00000-fed003ff : Reserved", "fed00000-fed00fff : Reserved"))
    out = trio.run(backend.load, request_for(host, 2))
    assert out.ok and out.extra["record"]["fastpath"]["prepared"] == "crash region, low RAM or firmware ranges changed"
    # 400 more RAM ranges: the header outgrows 16 KiB; prepared again with a larger slot.
    many = "".join(f"{0x100000000 + i * 0x10000000:x}-{0x100000000 + i * 0x10000000 + 0x7ffffff:x} : System RAM\n" for i in range(400))
    write_root(host["root"], IOMEM.replace("fed00000-fed003ff : Reserved", "fed00000-fed00fff : Reserved") + many)
    out = trio.run(backend.load, request_for(host, 3))
    fp = out.extra["record"]["fastpath"]
    assert out.ok and fp["prepared"].startswith("header outgrew its slot") and fp["elfcorehdr_slot"] > slot
    assert fp["verify_mode"] == "full"


def test_kexec_load_error_is_a_failed_outcome(host: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: VerifiedSegmentSet) -> None:
        raise KexecLoadError(errno.EBUSY)

    monkeypatch.setattr("updater.fastpath._backend.kexec_load_crash", refuse)
    backend = create_backend(host["command"], settings_for(host))
    out = trio.run(backend.load, request_for(host))
    assert not out.ok and "EBUSY" in out.detail and "kexec_load failed" in out.detail
    assert backend.engine.image is not None  # the image itself was fine


def test_crash_region_too_small_is_refused(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    backend = create_backend(host["command"], settings_for(host, headroom_ranges=10_000_000))
    out = trio.run(backend.load, request_for(host))
    assert not out.ok and out.extra["record"]["fastpath_error"]["error"] == "SegmentLayoutError"
    assert loads == []


class FakeKexec:
    """Stands in for the kexec backend as the fallback (the VM tier runs the real one)."""

    name = "kexec"
    load_path = "kexec_load"
    changes_kdump = True

    def __init__(self) -> None:
        self.requests: list[LoadRequest] = []

    def describe(self) -> str:
        return "fake kexec"

    async def load(self, request: LoadRequest) -> LoadOutcome:
        self.requests.append(request)
        return LoadOutcome(True, "loaded", 1, 2, (12345,))


Recorder = RecordingObserver

def test_updater_falls_back_to_kexec_in_the_same_batch_and_reports(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    settings = settings_for(host, headroom_ranges=10_000_000)  # the region cannot hold the fast path's image
    fallback = FakeKexec()
    rec = Recorder()
    updater = Updater(settings, "kexec-fast", "test", create_backend(host["command"], settings), rec, KexecCallLog(), fallback=fallback)
    trio.run(updater.reconcile)
    reload = [f for k, f in rec.records if k == "reload"][-1]
    assert reload["result"] == "fallback" and reload["backend"] == "kexec"
    assert reload["fastpath_error"]["error"] == "SegmentLayoutError"
    assert "kexec-fast" in reload["earlier_errors"][0]
    assert len(fallback.requests) == 1 and loads == []


def test_updater_records_user_space_and_syscall_timings(host: dict[str, Any], loads: list[VerifiedSegmentSet]) -> None:
    settings = settings_for(host)
    rec = Recorder()
    updater = Updater(settings, "kexec-fast", "test", create_backend(host["command"], settings), rec, KexecCallLog(), fallback=FakeKexec())
    trio.run(updater.reconcile)
    reload = [f for k, f in rec.records if k == "reload"][-1]
    assert reload["result"] == "ok" and reload["backend"] == "kexec-fast"
    t = reload["fastpath"]["timings"]
    assert t["userspace_s"] == pytest.approx(t["header_s"] + t["build_s"] + t["verify_s"], abs=3e-6)
    assert reload["window_s"] == pytest.approx(t["syscall_s"], abs=2e-6)


def test_purgatory_missing_a_symbol_is_refused_at_creation(host: dict[str, Any]) -> None:
    bad = host["files"] / "bad-purgatory.o"
    bad.write_bytes(synth.build_purgatory(omit=("sha256_digest",)))
    with pytest.raises(PurgatoryError, match="sha256_digest") as info:
        create_backend(host["command"], settings_for(host, fast_purgatory=str(bad)))
    assert str(bad) in str(info.value)
    kexec = KexecSettings(binary=host["command"].binary, kernel=host["command"].kernel, initrd=host["command"].initrd,
                          cmdline="x", load_path="kexec_load", distro="none")
    reason = unavailable_reason(kexec, settings_for(host, fast_purgatory=str(bad)))
    assert "sha256_digest" in reason


def test_auto_picks_kexec_fast_only_when_it_can_run(host: dict[str, Any]) -> None:
    c = host["command"]
    kexec = KexecSettings(binary=c.binary, kernel=c.kernel, initrd=c.initrd, cmdline="x", load_path="kexec_load", distro="none")
    settings = settings_for(host)
    assert unavailable_reason(kexec, settings) == ""
    snap = read_snapshot(str(host["root"]))
    caps = HostCapabilities.probe(snap, kexec, settings)
    assert choose_backend("auto", caps)[0] == "kexec-fast"
    # kexec_file_load configured (e.g. Secure Boot): the fast path does not replace it.
    file_kexec = KexecSettings(binary=c.binary, kernel=c.kernel, initrd=c.initrd, cmdline="x", load_path="kexec_file_load", distro="none")
    assert "kexec_file_load" in fastpath_unavailable_reason(file_kexec, settings)
    assert choose_backend("auto", HostCapabilities.probe(snap, file_kexec, settings))[0] == "kexec"
    # Options kexec-tools would apply that the fast path does not reproduce.
    extra = KexecSettings(binary=c.binary, kernel=c.kernel, initrd=c.initrd, cmdline="x", load_path="kexec_load", distro="none",
                          extra_args=("--reuse-cmdline",))
    assert "--reuse-cmdline" in unavailable_reason(extra, settings)
    # kexec_load disabled by sysctl.
    (host["root"] / "proc/sys/kernel").mkdir(parents=True)
    (host["root"] / "proc/sys/kernel/kexec_load_disabled").write_text("1\n")
    assert "kexec_load_disabled" in unavailable_reason(kexec, settings)
    # The kernel owning the header wins over everything.
    owned = HostCapabilities(True, 1, 1, 0, c.binary, "")
    assert choose_backend("auto", owned)[0] == "kernel"


def test_dry_run_stages_the_fast_path_segment_set(host: dict[str, Any], tmp_path: Path) -> None:
    settings = settings_for(host)
    stager = fastpath.create_stager(host["command"], settings)
    assert isinstance(stager, FastPathStager)
    staging = tmp_path / "staging"
    backend = DryRunBackend(str(staging), 4, "test", stager)
    out = trio.run(backend.load, request_for(host))
    assert out.ok
    current = staging / "current"
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["fastpath"]["staged"] is True
    seg = json.loads((current / "fastpath.json").read_text())
    kinds = [s["kind"] for s in seg["segments"]]
    assert kinds[-1] == "elfcorehdr" and {"kernel", "initrd", "purgatory", "setup", "backup"} <= set(kinds)
    assert seg["verify_mode"] == "full" and len(seg["purgatory_digest"]) == 64
    assert (current / "segment-purgatory.bin").stat().st_size > 0
    hdr = (current / "segment-elfcorehdr.bin").read_bytes()
    assert hdr[:4] == b"\x7fELF"


def test_dry_run_says_why_there_is_no_segment_set(host: dict[str, Any], tmp_path: Path) -> None:
    backend = DryRunBackend(str(tmp_path / "s"), 4, "test", None, "no kexec command: none configured")
    assert trio.run(backend.load, request_for(host)).ok
    manifest = json.loads((tmp_path / "s" / "current" / "manifest.json").read_text())
    assert manifest["fastpath"] == {"staged": False, "why": "no kexec command: none configured"}


def test_crash_region_comes_from_the_snapshot(host: dict[str, Any]) -> None:
    snap: SystemSnapshot = read_snapshot(str(host["root"]))
    assert crash_regions_of(snap) == (PhysRange.from_inclusive(0x2B000000, 0x3AFFFFFF),)
