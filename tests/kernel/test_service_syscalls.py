"""The unit's SystemCallFilter= allows every syscall the daemon makes.

systemd cannot run here, so the filter is checked the other way round: the
daemon runs under ``strace -f -c`` with live sources (BPF, uevents), the
loopback metrics endpoint (scraped once) and the textfile, through a real
cpu1 offline/online and a SIGTERM stop; every syscall it (and BCC, and its
threads) made must be in the set ``systemd-analyze syscall-filter`` expands
the unit's filter to.  A syscall outside it would fail with EPERM under
systemd (``SystemCallErrorNumber=EPERM``).

Not covered here: kexec-tools' own syscalls (this kernel has no
CONFIG_KEXEC); ``kexec_load``/``kexec_file_load`` are in the filter by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdump_coalesce._install import unit_template

pytestmark = pytest.mark.kernel

CPU1_ONLINE = Path("/sys/devices/system/cpu/cpu1/online")


def syscall_groups() -> dict[str, set[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True, timeout=60, check=True).stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = set()
            continue
        text = line.strip()
        if current is not None and text and not text.startswith("#"):
            groups[current].add(text.split()[0])
    return groups


def expand(names: set[str], groups: dict[str, set[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            assert name in groups, f"unknown syscall group {name}"
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def unit_filter() -> set[str]:
    names: set[str] = set()
    for line in unit_template().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.partition("=")[2]
            assert not value.startswith("~"), "a deny-list filter is not what this test checks"
            names |= set(value.split())
    assert names
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_every_syscall_the_daemon_makes_is_allowed(tmp_path: Path) -> None:
    for tool in ("strace", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not CPU1_ONLINE.exists():
        pytest.skip("cpu1 cannot be taken offline on this host")
    allowed = expand(unit_filter(), syscall_groups())
    assert {"bpf", "kexec_load", "kexec_file_load", "sendto", "openat"} <= allowed

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.5)
    summary = tmp_path / "strace.txt"
    port = free_port()
    exe = Path(sys.executable).with_name("kdump-coalesce")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "kdump_coalesce.cli"]
    config = tmp_path / "config.toml"
    config.write_text("")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-c", "-o", str(summary), *argv, "run", "--config", str(config), "--source", "auto",
             "--backend", "dry-run", "--staging-dir", str(tmp_path / "staging"), "--status-file", str(tmp_path / "status.json"),
             "--metrics-textfile", str(tmp_path / "k.prom"), "--metrics-listen", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        deadline = time.monotonic() + 300  # BCC compiling under strace is slow
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                pass
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
            assert b"kdump_coalesce_ready 1.0" in resp.read()
        try:
            CPU1_ONLINE.write_text("0\n")
            time.sleep(1.0)
        finally:
            CPU1_ONLINE.write_text("1\n")
        time.sleep(2.0)
        (daemon_pid,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        os.kill(daemon_pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "stderr").read_text()
    finally:
        CPU1_ONLINE.write_text("1\n")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()

    used = set()
    for line in summary.read_text().splitlines()[2:]:
        fields = line.split()
        if fields and not line.startswith("-") and fields[-1] != "total":
            used.add(fields[-1])
    assert {"bpf", "sendto", "openat"} <= used, used  # the run really loaded BPF and notified
    assert used - allowed == set(), f"syscalls outside the unit's SystemCallFilter: {sorted(used - allowed)}"
