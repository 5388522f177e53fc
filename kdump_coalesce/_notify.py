"""sd_notify: tell systemd when the daemon is ready, what it last did, that it
is alive, and that it is stopping.

The protocol (sd_notify(3)) is one datagram of newline-separated
``KEY=value`` assignments sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET``: a path, or an abstract socket when it starts with ``@``
(the ``@`` stands for the leading NUL byte).  systemd identifies the sender by
the SCM_CREDENTIALS it asks the kernel to attach, so with the default
``NotifyAccess=main`` only the daemon's own process may send: the variables are
removed from the environment once read, so that children (kexec-tools, the
distro's scripts) never talk to systemd in our name.

Messages sent:

- ``READY=1`` when the daemon's ``status`` record says ``state=ready``: the
  probes are attached and kdump is reconciled.  ``systemctl start`` returns
  then, and units ordered after ours start only then.
- ``STATUS=...`` after every batch and reload (what ``systemctl status`` shows).
- ``WATCHDOG=1`` every ``WatchdogSec/2`` when systemd set ``$WATCHDOG_USEC``
  (and ``$WATCHDOG_PID``, if set, is this process).  The ping comes from a trio
  task, so it proves that the event loop that runs the pipeline is turning.
- ``STOPPING=1`` on the ``status`` record ``state=stopping``.

Nothing here raises on a send failure: the daemon keeps kdump current whether
or not systemd listens.  A failed send is counted and logged once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

import trio

from ground.records import Batch, DaemonStatus, ErrorRecord, Record, ReloadRecord, ReloadResult
from ground.events import SourceItem

# Long enough for systemd (which reads the socket from its main loop) to drain
# a full queue; short enough that a wedged manager cannot stall the pipeline
# for long.  The datagrams are a few hundred bytes.
SEND_TIMEOUT_S = 2.0
STATUS_MAX = 480


def notify_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is the abstract
    socket ``\\0name``; an absolute path is a path; anything else (systemd
    also accepts ``vsock:``, which a host service never gets) is ignored."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` (as
    sd_watchdog_enabled(3) recommends), or None when the watchdog is off or
    meant for another process."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6


class Notifier:
    """Sends sd_notify datagrams to one socket address (None: a no-op)."""

    def __init__(self, address: str | bytes | None, *, on_error: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.sent: list[str] = []  # every message sent, for `status` and tests
        self.failures = 0
        self._on_error = on_error
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(
        cls, env: MutableMapping[str, str] | None = None, *, on_error: Callable[[str], None] | None = None
    ) -> tuple[Notifier, float | None]:
        """The notifier and the watchdog interval from the environment, which
        loses NOTIFY_SOCKET/WATCHDOG_USEC/WATCHDOG_PID (sd_notify's
        ``unset_environment``) so that child processes do not inherit them."""
        env = os.environ if env is None else env
        address = notify_address(env.get("NOTIFY_SOCKET", ""))
        interval = watchdog_interval(env, os.getpid()) if address is not None else None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        return cls(address, on_error=on_error), interval

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1 and self._on_error is not None:
                where = self.address.decode(errors="replace").replace("\0", "@") if isinstance(self.address, bytes) else self.address
                self._on_error(f"sd_notify to {where} failed: {exc.strerror or exc}; systemd will not see readiness or status")
            return False
        self.sent.append(message)
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "..."


def describe_reload(record: ReloadRecord) -> str:
    result = record.result
    text = f"reload {result} ({record.backend})"
    if result is not ReloadResult.SKIPPED:
        text += f" in {record.wall_s:.3f} s"
        if record.window_s > 0:
            text += f", window {record.window_s:.3f} s" + ("" if record.window_exact else " (bound)")
    if result is not ReloadResult.OK:
        text += f": {record.reason}"
    return text


class NotifyObserver:
    """The daemon's observer that speaks sd_notify."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.state = "starting"
        self.last_batch = ""
        self.last_reload = ""
        self.mode = ""

    def _status(self) -> str:
        parts = [self.state + (f" ({self.mode})" if self.mode else "")]
        if self.last_batch:
            parts.append(self.last_batch)
        if self.last_reload:
            parts.append(self.last_reload)
        return _status_line("; ".join(parts))

    def on_item(self, item: SourceItem) -> None:
        return None

    def on_batch(self, batch: Batch) -> None:
        self.last_batch = f"batch {batch.seq}: {batch.events} event(s), {batch.reason}"
        changes = [
            f"{name}={','.join(map(str, cpus))}"
            for name, cpus in (("cpus_online", batch.cpus_online), ("cpus_offline", batch.cpus_offline),
                               ("cpus_added", batch.cpus_added), ("cpus_removed", batch.cpus_removed))
            if cpus
        ]
        for name, ranges in (("online", batch.online), ("offline", batch.offline), ("added", batch.added), ("removed", batch.removed)):
            if ranges:
                changes.append(f"{name}={sum(r.size for r in ranges) >> 20}MiB")
        if batch.rescan:
            changes.append(f"rescan(lost={batch.lost})")
        if changes:
            self.last_batch += " " + " ".join(changes)
        self.last_reload = ""
        self.notifier.send(f"STATUS={self._status()}")

    def on_record(self, record: Record) -> None:
        if isinstance(record, DaemonStatus):
            state = record.state
            if record.updater.backend:
                self.mode = f"backend {record.updater.backend}"
            if state == "ready":
                self.state = "ready"
                self.notifier.send(f"READY=1\nSTATUS={self._status()}")
            elif state == "stopping":
                self.state = "stopping"
                self.notifier.send(f"STOPPING=1\nSTATUS={self._status()}")
                self.notifier.close()
        elif isinstance(record, ReloadRecord):
            if record.backend:
                self.mode = f"backend {record.backend}"
            self.last_reload = describe_reload(record)
            self.notifier.send(f"STATUS={self._status()}")
        elif isinstance(record, ErrorRecord):
            self.last_reload = f"ERROR: {record.message}"
            self.notifier.send(f"STATUS={self._status()}")


async def watchdog_task(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 every ``interval`` seconds until cancelled."""
    while True:
        notifier.send("WATCHDOG=1")
        await trio.sleep(interval)
