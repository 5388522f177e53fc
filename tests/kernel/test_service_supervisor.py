"""The daemon as systemd would run it, under a small systemd-less supervisor.

The supervisor does what systemd does for ``Type=notify``: binds an AF_UNIX
datagram socket, starts ``kdump-coalesce run`` with ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC`` set, with the unit's capability bounding set
(``setpriv --bounding-set``, read from the shipped unit file),
``NoNewPrivileges`` and ``LimitMEMLOCK=infinity``, and reads what it sends.
The daemon runs with live sources (real BPF tracepoints / uevents) and the
dry-run backend; cpu1 is really taken offline and back online.

Checked: READY=1 only once the probes are attached (a hotplug right after it
is seen), WATCHDOG=1 pings, STATUS= naming the cpu1 batch, the metrics
textfile updated after that batch, STOPPING=1 and exit status 0 on SIGTERM.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kdump_coalesce._install import unit_template

pytestmark = pytest.mark.kernel

READY_TIMEOUT_S = 180.0  # BCC compiles the probes with clang at start




def unit_capabilities() -> list[str]:
    for line in unit_template().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return line.partition("=")[2].split()
    raise AssertionError("the unit has no CapabilityBoundingSet=")


def _memlock_infinity() -> None:
    """The unit's LimitMEMLOCK=infinity, where this process may raise it (a
    container root without CAP_SYS_RESOURCE may not; BPF maps are charged to
    the memory cgroup instead of RLIMIT_MEMLOCK since Linux 5.11)."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


class Supervisor:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp / "notify.sock"))
        self.messages: list[tuple[float, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = tmp / "daemon.stderr"

    def start(self, argv: list[str]) -> None:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("setpriv (util-linux) is needed to apply the unit's capability bounding set")
        caps = ",".join(["-all", *("+" + c.removeprefix("CAP_").lower() for c in unit_capabilities())])
        env = dict(os.environ, NOTIFY_SOCKET=str(self.tmp / "notify.sock"), WATCHDOG_USEC="1000000")
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [setpriv, f"--bounding-set={caps}", "--inh-caps=-all", "--no-new-privs", *argv],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_memlock_infinity,
            )

    def receive(self, until: Callable[[str], bool], timeout: float) -> str:
        """Read messages until one satisfies ``until``; fail if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.2)
            try:
                message = self.sock.recv(65536).decode()
            except TimeoutError:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"daemon exited with {self.proc.returncode} before the message:\n{self.log()}")
                continue
            self.messages.append((time.monotonic(), message))
            if until(message):
                return message
        pytest.fail(f"no such message within {timeout} s; got {[m for _, m in self.messages]}\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.sock.close()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cpu_events(path: Path, action: str) -> float:
    return sum(v for (name, labels), v in metrics(path).items()
               if name == "kdump_coalesce_events_total" and ("kind", "cpu") in labels and ("action", action) in labels)


def test_notify_and_metrics_under_a_supervisor(supervisor: Supervisor, cpu1: Path, tmp_path: Path) -> None:
    prom = tmp_path / "kdump-coalesce.prom"
    config = tmp_path / "config.toml"
    config.write_text("[metrics]\ntextfile-interval = 3600.0\n")  # rewrites come from changes only
    exe = Path(sys.executable).with_name("kdump-coalesce")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "kdump_coalesce.cli"]
    supervisor.start([
        *argv, "run", "--config", str(config), "--source", "auto", "--backend", "dry-run",
        "--staging-dir", str(tmp_path / "staging"), "--status-file", str(tmp_path / "status.json"),
        "--metrics-textfile", str(prom),
    ])

    ready = supervisor.receive(lambda m: "READY=1" in m.splitlines(), READY_TIMEOUT_S)
    assert "STATUS=ready" in ready
    log = supervisor.log()
    assert "bpf" in log or "uevent" in log  # the live sources said what they attached
    # readiness comes once; liveness pings keep coming (WATCHDOG_USEC=1 s -> every 0.5 s)
    supervisor.receive(lambda m: m == "WATCHDOG=1", 5.0)
    before = prom.stat().st_mtime_ns
    online_before = cpu_events(prom, "online")

    cpu1.write_text("0\n")
    supervisor.receive(lambda m: m.startswith("STATUS=") and "cpus_offline=1" in m, 30.0)
    cpu1.write_text("1\n")
    status = supervisor.receive(lambda m: m.startswith("STATUS=") and "cpus_online=1" in m, 30.0)
    assert status.startswith("STATUS=ready") and "batch " in status

    # the textfile follows the batch (rewritten on change, not on the 1 h interval)
    def batches() -> float:
        return sum(v for (n, _), v in metrics(prom).items() if n == "kdump_coalesce_batches_total")

    deadline = time.monotonic() + 10
    while (cpu_events(prom, "online") <= online_before or batches() < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cpu_events(prom, "online") > online_before
    assert cpu_events(prom, "offline") >= 1
    after = metrics(prom)
    assert prom.stat().st_mtime_ns > before
    assert after[("kdump_coalesce_ready", ())] == 1
    assert batches() >= 2  # offline and online: urgent_quiet closes the first on its own
    assert after[("kdump_coalesce_mode", (("mode", "dry-run"),))] == 1

    assert supervisor.proc is not None
    supervisor.proc.send_signal(signal.SIGTERM)
    stopping = supervisor.receive(lambda m: "STOPPING=1" in m.splitlines(), 60.0)
    assert "STATUS=stopping" in stopping
    assert supervisor.proc.wait(timeout=60) == 0, supervisor.log()
    firsts = [m.splitlines()[0] for _, m in supervisor.messages]
    assert firsts.count("READY=1") == 1 and firsts.count("STOPPING=1") == 1
    assert firsts.index("READY=1") < firsts.index("STOPPING=1")
    assert metrics(prom)[("kdump_coalesce_ready", ())] == 0  # the last write, after the stop
    # nothing went wrong at error priority under the unit's capability set
    # (without CAP_SYS_ADMIN, for one, /proc/iomem reads as zeros and the
    # updater refuses to start)
    assert not [line for line in supervisor.log().splitlines() if line.startswith("<3>")], supervisor.log()
