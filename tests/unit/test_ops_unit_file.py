"""The shipped systemd unit: the settings the service's correctness depends on,
the capabilities (each one documented), the sandbox leaving writable exactly
the paths the daemon writes by default, and systemd's own checks."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kdump_coalesce._install import render_unit, unit_template
from kdump_coalesce._metrics import MetricsSettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

# Each capability and the one reason it is there; the unit's comments and
# docs/operations.md must explain every one.
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_RAWIO", "CAP_SYSLOG", "CAP_NET_ADMIN"}


def settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (systemd keys may repeat)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[tuple[str, str], list[str]]:
    return settings(unit_template())


def one(unit: dict[tuple[str, str], list[str]], section: str, key: str) -> str:
    values = unit.get((section, key))
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times"
    return values[0]


def words(unit: dict[tuple[str, str], list[str]], section: str, key: str) -> set[str]:
    return {w for v in unit.get((section, key), []) for w in v.split()}


def test_type_notify_and_lifecycle(unit: dict[tuple[str, str], list[str]]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    # SIGTERM to the daemon only: it finishes the in-flight reload; a kexec
    # child killed mid-load would leave no crash kernel.
    assert one(unit, "Service", "KillMode") == "mixed"
    watchdog = one(unit, "Service", "WatchdogSec")
    assert re.fullmatch(r"\d+s", watchdog) and int(watchdog[:-1]) >= 10
    stop = int(one(unit, "Service", "TimeoutStopSec").rstrip("s"))
    assert stop > 60  # longer than [kexec] timeout: the last reload may finish
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_ordered_after_the_distro_kdump_services_without_requiring_them(unit: dict[tuple[str, str], list[str]]) -> None:
    after = words(unit, "Unit", "After")
    assert {"kdump-tools.service", "kdump.service"} <= after
    for key in ("Requires", "Wants", "BindsTo", "Before"):
        assert not {"kdump-tools.service", "kdump.service"} & words(unit, "Unit", key), key


def test_capabilities_are_exactly_the_documented_set(unit: dict[tuple[str, str], list[str]]) -> None:
    caps = words(unit, "Service", "CapabilityBoundingSet")
    assert caps == CAPABILITIES
    template = unit_template()
    docs = DOCS.read_text()
    for cap in caps:
        assert re.search(rf"^#\s+{cap}\b", template, re.M), f"{cap} is not explained in the unit's comments"
        assert f"`{cap}`" in docs, f"{cap} is not explained in docs/operations.md"
    # never needed: module loading, overriding file permissions
    assert not {"CAP_SYS_MODULE", "CAP_DAC_OVERRIDE", "CAP_SYS_PTRACE"} & caps
    assert "AmbientCapabilities" not in {k for _, k in unit}
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "LimitMEMLOCK") == "infinity"


def test_hardening_that_would_break_bpf_or_kexec_is_off(unit: dict[tuple[str, str], list[str]]) -> None:
    keys = {k for _, k in unit}
    # hides /usr/lib/modules (BCC's headers) / drops CAP_SYSLOG / drops
    # CAP_SYS_RAWIO / breaks libffi closures
    for key in ("ProtectKernelModules", "ProtectKernelLogs", "PrivateDevices", "MemoryDenyWriteExecute", "PrivateNetwork"):
        assert key not in keys, key
    syscalls = words(unit, "Service", "SystemCallFilter")
    assert {"bpf", "perf_event_open", "kexec_load", "kexec_file_load", "@system-service"} <= syscalls
    assert not any(s.startswith("~") for s in syscalls)
    assert {"AF_NETLINK", "AF_UNIX"} <= words(unit, "Service", "RestrictAddressFamilies")  # uevents, sd_notify


def test_sandbox_leaves_the_daemons_default_paths_writable(unit: dict[tuple[str, str], list[str]]) -> None:
    """ProtectSystem=strict makes everything read-only: every path the daemon
    writes by default must be in a directory the unit makes writable."""
    assert one(unit, "Service", "ProtectSystem") == "strict"
    writable = {f"/var/lib/{d}" for d in words(unit, "Service", "StateDirectory")}
    writable |= {f"/var/log/{d}" for d in words(unit, "Service", "LogsDirectory")}
    writable |= {f"/run/{d}" for d in words(unit, "Service", "RuntimeDirectory")}
    writable |= {p.lstrip("-") for p in words(unit, "Service", "ReadWritePaths")}
    updater = pytest.importorskip("updater")
    wanted = {
        "[metrics] textfile": MetricsSettings().textfile,
        "[updater] staging-dir": updater.SECTIONS["updater"]().staging_dir,
        "[updater] status-file": updater.SECTIONS["updater"]().status_file,
    }
    for what, path in wanted.items():
        assert any(path == w or path.startswith(w + "/") for w in writable), f"{what} {path} is not writable under the unit's sandbox"
    # the status file must survive a restart (it says what the last run loaded)
    assert one(unit, "Service", "RuntimeDirectoryPreserve") == "yes"


def test_render_sets_exec_start() -> None:
    text = render_unit("/opt/venv/bin/kdump-coalesce", ["--config", "/etc/kc 1.toml"])
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == ['ExecStart=/opt/venv/bin/kdump-coalesce run --config "/etc/kc 1.toml"']
    assert settings(text).keys() == settings(unit_template()).keys()


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = tmp_path / "kdump-coalesce"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    path = tmp_path / "kdump-coalesce.service"
    path.write_text(render_unit(str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "kdump-coalesce.service" not in proc.stderr, proc.stderr  # no warning about our unit


@needs_systemd_analyze
def test_systemd_knows_the_syscalls_we_allow() -> None:
    """Each name in SystemCallFilter= is a syscall or group systemd knows
    (a typo would be ignored with a warning, and the syscall denied)."""
    proc = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    known = {line.split()[0] for line in proc.stdout.splitlines() if line.strip() and not line.strip().startswith("#")}
    for name in words(settings(unit_template()), "Service", "SystemCallFilter"):
        assert name in known, name


@needs_systemd_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    path = tmp_path / "kdump-coalesce.service"
    path.write_text(render_unit("/usr/bin/kdump-coalesce"))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True, text=True, timeout=60)
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    # 10 = unrestricted root.  A daemon that loads BPF and kexec images keeps
    # CAP_SYS_ADMIN and CAP_SYS_BOOT, so it cannot reach the 1-2 of a leaf service.
    assert float(m.group(1)) <= 4.5
