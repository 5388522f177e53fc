"""sd_notify: messages received on a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ground.records import DaemonStatus, ErrorRecord, ReloadRecord, ReloadResult, WindowKind
from tests.fixtures.doubles import updater_status
from coalescer import BatchBuilder, Policy
from ground.observer import FanOut
from kdump_coalesce._log import LogObserver
from kdump_coalesce._notify import Notifier, NotifyObserver, notify_address, watchdog_interval, watchdog_task
from tests.fixtures.doubles import NullUpdater
from kdump_coalesce.daemon import Daemon
from kdump_coalesce.ops import attach
from probes import open_sources
from ground.events import Action, HotplugEvent, Kind


class Receiver:
    """A bound AF_UNIX datagram socket: what systemd's notify socket is."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def messages(self, timeout: float = 0.2) -> list[str]:
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recv(65536).decode())
            except (TimeoutError, BlockingIOError):
                return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield Receiver(sock, path)
    sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"kdump-coalesce-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield Receiver(sock, "@" + name)
    sock.close()


def test_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == b"\0abc"
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None  # meant for another process
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "nope"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_send_reaches_a_real_socket(kind: str, receiver: Receiver, abstract_receiver: Receiver) -> None:
    r = receiver if kind == "path" else abstract_receiver
    env = {"NOTIFY_SOCKET": r.env_value, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "x"}
    notifier, interval = Notifier.from_environment(env)
    assert interval == 2.0
    # children (kexec-tools) must not inherit the socket
    assert env == {"OTHER": "x"}
    assert notifier.send("READY=1\nSTATUS=hello")
    assert r.messages() == ["READY=1\nSTATUS=hello"]
    notifier.close()


def test_send_failure_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    errors: list[str] = []
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"), on_error=errors.append)
    assert not notifier.send("READY=1")
    assert not notifier.send("STATUS=x")
    assert notifier.failures == 2
    assert len(errors) == 1 and "nobody-listens.sock" in errors[0]
    notifier.close()


def test_disabled_without_notify_socket() -> None:
    notifier, interval = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and interval is None
    assert not notifier.send("READY=1")


def _batch() -> object:
    b = BatchBuilder(seq=3)
    b.fold(HotplugEvent(Kind.CPU, Action.OFFLINE, 1, "bpf", cpu=1))
    b.fold(HotplugEvent(Kind.CPU, Action.ONLINE, 2, "bpf", cpu=1))
    b.fold(HotplugEvent(Kind.CPU, Action.ONLINE, 3, "bpf", cpu=2))
    return b.build("quiet", 1.0, 2.0)


def test_observer_message_sequence(receiver: Receiver) -> None:
    notifier = Notifier(receiver.env_value)
    obs = NotifyObserver(notifier)
    obs.on_record(DaemonStatus("ready", updater_status("kexec")))
    obs.on_batch(_batch())  # type: ignore[arg-type]
    obs.on_record(ReloadRecord(backend="kexec", result=ReloadResult.OK, reason="batch 3", batch=3, kdump_correct=True, wall_s=0.5,
                               window_s=0.25, window_kind=WindowKind.BPF, window_source="bpf: kexec_load"))
    obs.on_record(ErrorRecord(stage="updater", message="reload failed: boom"))
    obs.on_record(DaemonStatus("stopping", updater_status("")))
    ready, batch, reload, error, stopping = receiver.messages()
    assert ready.splitlines() == ["READY=1", "STATUS=ready (backend kexec)"]
    assert batch.startswith("STATUS=ready (backend kexec); batch 3: 3 event(s), quiet cpus_online=2")
    assert "reload ok (kexec) in 0.500 s, window 0.250 s" in reload
    assert "ERROR: reload failed: boom" in error
    assert stopping.splitlines()[0] == "STOPPING=1"
    assert not any("READY=1" in m for m in (batch, reload, error, stopping))
    assert notifier._sock is None  # closed after STOPPING=1


async def test_watchdog_pings_every_interval(receiver: Receiver, autojump_clock: trio.testing.MockClock) -> None:
    notifier = Notifier(receiver.env_value)
    with trio.move_on_after(10.5):
        await watchdog_task(notifier, 5.0)
    notifier.close()
    assert receiver.messages() == ["WATCHDOG=1"] * 3  # t = 0, 5, 10


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_daemon_with_ops_sends_ready_status_stopping(receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole daemon (scenario source, no updater) with ``ops.attach``:
    READY=1 once, STATUS= with the batch, STOPPING=1 last.  (A replayed
    scenario may close its batch before the ready record: READY=1 before a
    live hotplug's STATUS= is the kernel tier's check.)"""
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "600000000")
    selection = open_sources("scenario:cpu:2:4")
    log_lines: list[str] = []

    class Sink:
        def write(self, s: str) -> int:
            log_lines.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    log = LogObserver(Sink(), fmt="text")  # type: ignore[arg-type]
    daemon = Daemon(Policy(quiet=0.05, max_delay=1.0), selection.sources, NullUpdater("test"), FanOut([log]), log)
    from kdump_coalesce._metrics import MetricsSettings
    from kdump_coalesce.ops import ServiceSettings

    attach(daemon, {"metrics": MetricsSettings(textfile=str(tmp_path / "m.prom")), "service": ServiceSettings(rules_root=str(tmp_path))})
    assert "NOTIFY_SOCKET" not in os.environ
    await daemon.run()
    messages = receiver.messages()
    firsts = [m.splitlines()[0] for m in messages]
    assert firsts[0] == "WATCHDOG=1"
    assert firsts.count("READY=1") == 1 and firsts.count("STOPPING=1") == 1
    batch = next(i for i, m in enumerate(messages) if "batch 1: 4 event(s)" in m)
    assert firsts.index("READY=1") < firsts.index("STOPPING=1") == len(messages) - 1
    assert batch < len(messages) - 1
    assert "cpus_online=2,3 cpus_added=2,3" in messages[batch]
