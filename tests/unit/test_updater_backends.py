"""Backend choice, distro config, the kexec and dry-run backends, the Updater.

The kexec backend runs a fake kexec *script* here (a pure unit test of the
argv, the retry and the failure report); the real kexec-tools is exercised
against a real crash kernel in the VM tier.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.fixtures.doubles import RecordingObserver
from kdump_coalesce.commands._common import section_flag
from ground.records import Batch
from kdump_coalesce.cli import main as cli_main
from ground.errors import ConfigError
from ground.kexec_log import KexecCall, KexecCallLog
from ground.events import SourceItem
from updater import (
    SECTIONS,
    BackendUnavailableError,
    DryRunBackend,
    HostCapabilities,
    KexecCliBackend,
    KexecSettings,
    RamRange,
    ReloadFailed,
    SystemSnapshot,
    Updater,
    UpdaterSettings,
    choose_backend,
    open_updater,
    read_snapshot,
    resolve_kexec_command,
)
from updater._distro import parse_shell_assignments

HOST = Path(__file__).parent.parent / "fixtures" / "host"
LIVE = HOST / "live-6.18"
OFFLINE = HOST / "live-6.18-cpu1-offline"
DISTRO = HOST / "distro"


Recorder = RecordingObserver

def batch(seq: int, **kw: Any) -> Batch:
    base: dict[str, Any] = dict(
        seq=seq, events=2, first_ns=1, last_ns=2, opened_at=0.0, closed_at=1.0, reason="quiet",
        online=(), offline=(), added=(), removed=(), cpus_online=(), cpus_offline=(), cpus_added=(), cpus_removed=(),
        rescan=False, urgent=False, lost=0, failed=0, sources=("test",),
    )
    base.update(kw)
    return Batch(**base)


def caps(**kw: Any) -> HostCapabilities:
    base: dict[str, Any] = dict(
        kexec_crash_loaded=True, kexec_crash_size=256 << 20, crash_hotplug_memory=0, crash_hotplug_cpu=None,
        kexec_binary="/sbin/kexec", fastpath="updater.fastpath has no create_backend() yet",
    )
    base.update(kw)
    return HostCapabilities(**base)


# -- choice ---------------------------------------------------------------------


def test_auto_choice_says_why() -> None:
    assert choose_backend("auto", caps(crash_hotplug_memory=1)) == (
        "kernel", "the kernel updates the elfcorehdr itself (/sys/devices/system/memory/crash_hotplug reads 1)")
    name, why = choose_backend("auto", caps(kexec_crash_loaded=None, crash_hotplug_memory=None))
    assert (name, why) == ("dry-run", "this kernel cannot kexec (no /sys/kernel/kexec_crash_loaded)")
    assert choose_backend("auto", caps(kexec_crash_size=0))[0] == "dry-run"
    assert choose_backend("auto", caps())[0] == "kexec"
    assert choose_backend("auto", caps(fastpath=""))[0] == "kexec-fast"
    assert choose_backend("auto", caps(kexec_binary=None))[0] == "dry-run"


def test_this_host_picks_dry_run() -> None:
    snap = read_snapshot(str(LIVE))
    assert choose_backend("auto", HostCapabilities.probe(snap, KexecSettings()))[1] == "this kernel cannot kexec (no /sys/kernel/kexec_crash_loaded)"


@pytest.mark.parametrize("requested", ["kexec", "kexec-fast", "kernel"])
def test_explicit_backend_unavailable(requested: str) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        choose_backend(requested, caps(kexec_crash_loaded=None, crash_hotplug_memory=None))
    assert info.value.exit_status == 3 and "\n" not in str(info.value)


def test_sections_are_config_dataclasses() -> None:
    assert set(SECTIONS) == {"updater", "kexec"}
    assert SECTIONS["updater"] is UpdaterSettings
    flags = {section_flag(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("cli")}
    assert {"--backend", "--staging-dir", "--status-file", "--kexec-binary", "--kexec-kernel", "--kexec-initrd",
            "--kexec-cmdline", "--kexec-append", "--kexec-load-path"} <= flags
    with pytest.raises(ConfigError):
        UpdaterSettings(keep_staged=0)


# -- distro config ----------------------------------------------------------------


def etc_with(tmp_path: Path, debian: bool = False, redhat: bool = False, extra: str = "") -> Path:
    etc = tmp_path / "etc"
    if debian:
        (etc / "default").mkdir(parents=True)
        (etc / "default/kdump-tools").write_text((DISTRO / "debian/etc-default-kdump-tools").read_text() + extra)
    if redhat:
        (etc / "sysconfig").mkdir(parents=True)
        (etc / "sysconfig/kdump").write_text((DISTRO / "fedora/etc-sysconfig-kdump").read_text() + extra)
    return etc


CMDLINE = "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro crashkernel=256M hugepages=4 quiet"


def test_debian_kdump_tools_defaults(tmp_path: Path) -> None:
    values = parse_shell_assignments((DISTRO / "debian/etc-default-kdump-tools").read_text(), "kdump-tools")
    assert values["USE_KDUMP"] == "1" and values["KDUMP_KERNEL"] == "/var/lib/kdump/vmlinuz"
    cmd = resolve_kexec_command(KexecSettings(binary="/bin/true"), etc=str(etc_with(tmp_path, debian=True)), proc_cmdline=CMDLINE, check_files=False)
    assert (cmd.kernel, cmd.initrd, cmd.load_path) == ("/var/lib/kdump/vmlinuz", "/var/lib/kdump/initrd.img", "kexec_load")
    assert cmd.cmdline == "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll usbcore.nousb"
    argv = cmd.argv()
    assert argv[:3] == ["/bin/true", "-p", "-c"] and argv[-1] == "/var/lib/kdump/vmlinuz"
    assert "-u" not in argv  # never unload first


def test_debian_kexec_args_select_file_load(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, debian=True, extra='KDUMP_KEXEC_ARGS="-s --debug"\n')
    cmd = resolve_kexec_command(KexecSettings(binary="/bin/true"), etc=str(etc), proc_cmdline=CMDLINE, check_files=False)
    assert cmd.load_path == "kexec_file_load" and cmd.extra_args == ("--debug",)
    assert cmd.argv()[:3] == ["/bin/true", "-p", "-s"]


def test_fedora_sysconfig_defaults(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, redhat=True)
    cmd = resolve_kexec_command(KexecSettings(binary="/bin/true"), etc=str(etc), proc_cmdline=CMDLINE, release="6.5.6-300.fc39.x86_64", check_files=False)
    assert cmd.kernel == "/boot/vmlinuz-6.5.6-300.fc39.x86_64"
    assert cmd.initrd == "/boot/initramfs-6.5.6-300.fc39.x86_64kdump.img"
    # KDUMP_COMMANDLINE_REMOVE drops hugepages/quiet; crashkernel always goes.
    assert cmd.cmdline.startswith("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro irqpoll nr_cpus=1 reset_devices")
    assert "crashkernel" not in cmd.cmdline and "quiet" not in cmd.cmdline.split()


def test_explicit_settings_win_and_missing_files_are_named(tmp_path: Path) -> None:
    etc = etc_with(tmp_path, debian=True)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    cmd = resolve_kexec_command(
        KexecSettings(binary="/bin/true", kernel=str(kernel), append="crashkernel_test=1", load_path="kexec_file_load"),
        etc=str(etc), proc_cmdline=CMDLINE,
    )
    assert cmd.kernel == str(kernel) and cmd.initrd is None  # the distro's initrd does not exist here
    assert cmd.cmdline.endswith("crashkernel_test=1") and cmd.load_path == "kexec_file_load"
    with pytest.raises(ConfigError) as info:
        resolve_kexec_command(KexecSettings(binary="/bin/true", kernel=str(tmp_path / "nope")), etc=str(etc), proc_cmdline=CMDLINE)
    assert info.value.source == "[kexec] kernel"
    with pytest.raises(ConfigError, match="debian"):
        resolve_kexec_command(KexecSettings(binary="/bin/true", distro="debian"), etc=str(tmp_path / "none"), proc_cmdline=CMDLINE)
    with pytest.raises(BackendUnavailableError, match="no capture kernel"):
        resolve_kexec_command(KexecSettings(binary="/bin/true", distro="none"), etc=str(etc), proc_cmdline=CMDLINE)


# -- kexec backend with a fake kexec script ---------------------------------------------


def fake_kexec(tmp_path: Path, fail_times: int) -> tuple[Path, Path]:
    """A stand-in for kexec-tools: logs its argv, fails ``fail_times`` times."""
    log = tmp_path / "kexec.log"
    script = tmp_path / "kexec"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'n=$(wc -l < {log})\n'
        f'if [ "$n" -le {fail_times} ]; then echo "kexec_load failed: Device or resource busy" >&2; exit 1; fi\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def kexec_updater(tmp_path: Path, fail_times: int, snapshots: list[SystemSnapshot], kexec_log: KexecCallLog | None = None) -> tuple[Updater, Recorder, Path]:
    script, log = fake_kexec(tmp_path, fail_times)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    cmd = resolve_kexec_command(KexecSettings(binary=str(script), kernel=str(kernel), cmdline="root=/dev/vda1", distro="none"))
    settings = UpdaterSettings(status_file=str(tmp_path / "status.json"), retry_delay=0.0)
    recorder = Recorder()
    feed = iter(snapshots)
    updater = Updater(settings, "kexec", "requested", KexecCliBackend(cmd, timeout=5), recorder, kexec_log or KexecCallLog(), reader=lambda root: next(feed))
    return updater, recorder, log


def loaded(snap: SystemSnapshot) -> SystemSnapshot:
    return dataclasses.replace(snap, kexec_crash_loaded=True, kexec_crash_size=256 << 20)


async def test_kexec_backend_reload_retry_and_skip(tmp_path: Path) -> None:
    base = loaded(read_snapshot(str(LIVE)))
    grown = dataclasses.replace(base, ram=base.ram + (RamRange(0x640000000, 0x680000000),))
    updater, recorder, log = kexec_updater(tmp_path, fail_times=1, snapshots=[base, grown, grown])
    await updater.reconcile()  # first run fails, the retry succeeds
    first = recorder.reloads()[-1]
    assert first["result"] == "ok" and first["attempts"] == 2 and first["backend"] == "kexec"
    assert first["window_exact"] is False and "lifetime" in first["window_source"] and first["window_s"] > 0
    assert len(log.read_text().splitlines()) == 2
    assert log.read_text().splitlines()[0].startswith("-p -c --command-line=root=/dev/vda1")

    await updater.consume(batch(1, online=()))  # net-empty: no snapshot, no reload
    assert recorder.reloads()[-1]["result"] == "skipped" and "net-empty" in recorder.reloads()[-1]["reason"]

    from ground.ranges import PhysRange
    await updater.consume(batch(2, online=(PhysRange(0x640000000, 0x680000000),)))
    rec = recorder.reloads()[-1]
    assert rec["result"] == "ok" and rec["ranges"] == 4 and "+1 range(s) 1 GiB" in rec["diff"]
    assert len(log.read_text().splitlines()) == 3

    await updater.consume(batch(3, online=(PhysRange(0x640000000, 0x680000000),)))
    rec = recorder.reloads()[-1]
    assert rec["result"] == "skipped" and rec["reason"].startswith("header unchanged")
    assert len(log.read_text().splitlines()) == 3  # no reload for an unchanged header
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "ok" and status["counts"]["ok"] == 2 and status["counts"]["retries"] == 1


async def test_kexec_backend_failure_is_loud(tmp_path: Path) -> None:
    base = loaded(read_snapshot(str(LIVE)))
    updater, recorder, log = kexec_updater(tmp_path, fail_times=10, snapshots=[base, base])
    with pytest.raises(ReloadFailed) as info:
        await updater.reconcile()
    assert "start-up reload failed" in str(info.value) and "Device or resource busy" in str(info.value)
    assert len(log.read_text().splitlines()) == 2  # tried, retried once, stopped
    assert recorder.reloads()[-1]["result"] == "failed"
    errors = [f for k, f in recorder.records if k == "error"]
    assert errors and "reload failed" in errors[0]["message"]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["kdump_correct"] is False and status["last_error"]


async def test_exact_window_from_kexec_call_log(tmp_path: Path) -> None:
    """With the BPF log active, the window is the syscall's, found by pid."""
    base = loaded(read_snapshot(str(LIVE)))
    kexec_log = KexecCallLog()
    kexec_log.active = True
    updater, recorder, _ = kexec_updater(tmp_path, fail_times=0, snapshots=[base], kexec_log=kexec_log)
    backend = updater.backend
    assert isinstance(backend, KexecCliBackend)
    real_load = backend.load

    async def load_and_trace(request: Any) -> Any:
        outcome = await real_load(request)
        # What the BPF source would append for the loader's syscall.
        kexec_log.append(KexecCall("kexec_load", outcome.pids[0], "kexec", 0x3E0001, outcome.start_ns + 1000, outcome.start_ns + 251000, 0))
        return outcome

    backend.load = load_and_trace  # type: ignore[method-assign]
    await updater.reconcile()
    rec = recorder.reloads()[-1]
    assert rec["window_exact"] is True and rec["window_s"] == pytest.approx(0.00025) and rec["window_source"] == "bpf: kexec_load"


# -- dry-run ---------------------------------------------------------------------------


async def test_dry_run_stages_one_load_per_changed_header(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    settings = UpdaterSettings(status_file=str(tmp_path / "status.json"), staging_dir=str(staging), cpu_notes="online", keep_staged=2)
    snaps = iter([read_snapshot(str(LIVE)), read_snapshot(str(OFFLINE)), read_snapshot(str(LIVE)), read_snapshot(str(LIVE))])
    recorder = Recorder()
    updater = Updater(settings, "dry-run", "this kernel cannot kexec", DryRunBackend(str(staging), 2, "why"), recorder, KexecCallLog(), reader=lambda root: next(snaps))
    await updater.reconcile()
    manifest = json.loads((staging / "current/manifest.json").read_text())
    assert manifest["cpus"] == [0, 1] and manifest["batch"] == 0
    await updater.consume(batch(1, cpus_offline=(1,)))
    manifest = json.loads((staging / "current/manifest.json").read_text())
    assert manifest["cpus"] == [0] and manifest["cpus_online"] == [0] and manifest["missing_note_cpus"] == [0]
    data = (staging / "current/elfcorehdr.bin").read_bytes()
    assert manifest["segments"][0]["bufsz"] == len(data) == 1024
    await updater.consume(batch(2, cpus_online=(1,)))
    assert json.loads((staging / "current/manifest.json").read_text())["cpus"] == [0, 1]
    await updater.consume(batch(3, cpus_online=(1,), rescan=True))
    assert recorder.reloads()[-1]["result"] == "skipped"
    assert [r["result"] for r in recorder.reloads()] == ["ok", "ok", "ok", "skipped"]
    assert all(r["window_s"] == 0.0 and r["window_exact"] for r in recorder.reloads())
    staged = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    assert len(staged) == 3 and "current" in staged  # keep_staged=2 pruned the oldest
    # The status command reads what the updater wrote.
    assert cli_main(["status", "--status-file", str(tmp_path / "status.json")]) == 0


async def test_present_cpu_notes_skip_cpu_offline(tmp_path: Path) -> None:
    """kexec-tools' semantics: an offline CPU keeps its crash note, so cpu1
    offline changes nothing loaded and must not cost a reload window."""
    staging = tmp_path / "staging"
    settings = UpdaterSettings(status_file=str(tmp_path / "status.json"), staging_dir=str(staging))
    snaps = iter([read_snapshot(str(LIVE)), read_snapshot(str(OFFLINE))])
    recorder = Recorder()
    updater = Updater(settings, "dry-run", "why", DryRunBackend(str(staging), 8), recorder, KexecCallLog(), reader=lambda root: next(snaps))
    await updater.reconcile()
    await updater.consume(batch(1, cpus_offline=(1,)))
    rec = recorder.reloads()[-1]
    assert rec["result"] == "skipped" and "online/offline changes nothing loaded" in rec["reason"]


async def test_open_updater_on_this_host_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sections = {
        "updater": UpdaterSettings(snapshot_root=str(LIVE), status_file=str(tmp_path / "s.json"), staging_dir=str(tmp_path / "st")),
        "kexec": KexecSettings(),
    }
    updater = await open_updater(sections, Recorder(), KexecCallLog())
    assert updater.describe() == "dry-run: this kernel cannot kexec (no /sys/kernel/kexec_crash_loaded)"
    await updater.reconcile()
    await updater.aclose()
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["running"] is False and doc["dry_run"] is True and doc["header"]["ranges"] == 3
    assert cli_main(["status", "--json", "--status-file", str(tmp_path / "s.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "dry-run" and out["kdump_loaded"] is None
    with pytest.raises(BackendUnavailableError):
        await open_updater({"updater": dataclasses.replace(sections["updater"], backend="kexec")}, Recorder(), KexecCallLog())  # type: ignore[arg-type]


async def test_kernel_mode_stands_aside_then_falls_back(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "sys/devices/system/memory").mkdir(parents=True)
    (root / "sys/devices/system/memory/crash_hotplug").write_text("1\n")
    staging = tmp_path / "st"
    settings = UpdaterSettings(snapshot_root=str(root), status_file=str(tmp_path / "s.json"), staging_dir=str(staging))
    snap = read_snapshot(str(LIVE))
    recorder = Recorder()
    updater = Updater(settings, "kernel", "crash_hotplug reads 1", None, recorder, KexecCallLog(),
                      fallback=DryRunBackend(str(staging), 8), reader=lambda r: snap)
    await updater.reconcile()
    await updater.consume(batch(1, cpus_offline=(1,)))
    assert [r["result"] for r in recorder.reloads()] == ["skipped", "skipped"]
    assert "kernel owns" in recorder.reloads()[-1]["reason"]
    assert not staging.exists()
    (root / "sys/devices/system/memory/crash_hotplug").write_text("0\n")
    await updater.consume(batch(2, cpus_offline=(1,)))
    assert [r["result"] for r in recorder.reloads()][-2:] == ["fallback", "ok"]
    assert (staging / "current/manifest.json").exists() and updater.backend_name == "dry-run"


def test_status_without_daemon(tmp_path: Path) -> None:
    assert cli_main(["status", "--status-file", str(tmp_path / "none.json")]) == 3
    (tmp_path / "bad.json").write_text("{")
    assert cli_main(["status", "--status-file", str(tmp_path / "bad.json")]) == 2
    assert os.path.exists(tmp_path / "bad.json")


# -- a removal the events report before the state shows it (issue 12) -------------


async def test_removal_waits_for_the_state_then_reloads_without_the_memory(tmp_path: Path) -> None:
    """The remove path's probe fires before the kernel releases the resource:
    the first snapshots still list the DIMM.  The updater re-reads (bounded)
    and loads the header without it, instead of calling it unchanged."""
    from ground.ranges import PhysRange

    dimm = RamRange(0x640000000, 0x680000000)
    base = loaded(read_snapshot(str(LIVE)))
    with_dimm = dataclasses.replace(base, ram=base.ram + (dimm,))
    updater, recorder, log = kexec_updater(tmp_path, fail_times=0, snapshots=[with_dimm, with_dimm, with_dimm, with_dimm, base])
    updater.settings = dataclasses.replace(updater.settings, removal_recheck=5.0, removal_recheck_interval=0.01)
    await updater.reconcile()
    assert recorder.reloads()[-1]["ranges"] == 4
    await updater.consume(batch(1, removed=(PhysRange(dimm.start, dimm.end),), urgent=True))
    rec = recorder.reloads()[-1]
    assert rec["result"] == "ok" and rec["ranges"] == 3 and "-1 range(s)" in rec["diff"]
    assert rec["rechecks"] == 3 and rec["removed_still_listed"] == []
    assert len(log.read_text().splitlines()) == 2


async def test_removal_the_state_never_shows_is_reported_not_loaded(tmp_path: Path) -> None:
    """Events are hints: when /proc/iomem keeps listing the memory for the
    whole bound, it stays in the header and the record says what was found."""
    from ground.ranges import PhysRange

    dimm = RamRange(0x640000000, 0x680000000)
    base = loaded(read_snapshot(str(LIVE)))
    with_dimm = dataclasses.replace(base, ram=base.ram + (dimm,))
    snapshots = [with_dimm] * 1000
    updater, recorder, log = kexec_updater(tmp_path, fail_times=0, snapshots=snapshots)
    updater.settings = dataclasses.replace(updater.settings, removal_recheck=0.2, removal_recheck_interval=0.05)
    await updater.reconcile()
    await updater.consume(batch(1, removed=(PhysRange(dimm.start, dimm.end),), urgent=True))
    rec = recorder.reloads()[-1]
    assert rec["result"] == "skipped" and rec["rechecks"] >= 2
    assert rec["removed_still_listed"] == [[dimm.start, dimm.end]]
    assert "/proc/iomem still lists it" in rec["reason"]
    assert len(log.read_text().splitlines()) == 1  # only the start-up load
