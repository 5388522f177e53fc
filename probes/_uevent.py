"""The uevent source: kernel uevents from netlink, no BPF needed.

The kernel broadcasts every uevent on NETLINK_KOBJECT_UEVENT, multicast
group 1 (lib/kobject_uevent.c, ``uevent_net_broadcast``), as one datagram::

    ACTION@DEVPATH \\0 ACTION=... \\0 DEVPATH=... \\0 SUBSYSTEM=... \\0 SEQNUM=... \\0 ...

Memory blocks send ``add``/``remove`` (hot-add, hot-remove) and
``online``/``offline`` on ``/devices/system/memory/memoryN``; CPUs the same
four on ``/devices/system/cpu/cpuN``.  Block N covers physical
``[N * block_size_bytes, (N + 1) * block_size_bytes)``.  udev re-broadcasts
processed events on group 2 with a ``libudev`` header; those are not read
here (they come later, and only when udevd runs).

The standard socket module is enough (see docs/probes.md for why not pyudev
or pyroute2).  Overflow is the one hard part: a 480 GiB DIMM is 3840 blocks,
7680 uevents in about a second, and a datagram's kernel footprint (its skb
truesize) is well over its ~120 bytes.  The socket asks for a large receive
buffer (``SO_RCVBUFFORCE`` as root, which ignores ``net.core.rmem_max``), and
when the kernel still had to drop messages the next ``recv`` fails with
ENOBUFS: that becomes an :class:`~probes.EventsLost` (the coalescer then
rescans the whole state), never a silent loss.  Timestamps are
CLOCK_MONOTONIC at reception (uevents carry no kernel timestamp).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from ground.errors import NeedsRootError, UnavailableError

from ground.events import Action, EventsLost, HotplugEvent, Kind, SourceItem

from ._coverage import Change, changes_of

NETLINK_KOBJECT_UEVENT = 15
UEVENT_GROUP_KERNEL = 1
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
DEFAULT_RCVBUF = 32 << 20  # room for tens of thousands of hotplug uevents
MAX_MESSAGE = 1 << 16  # UEVENT_BUFFER_SIZE is 2048 of env; 64 KiB is plenty

_ACTIONS = {"add": Action.ADD, "remove": Action.REMOVE, "online": Action.ONLINE, "offline": Action.OFFLINE}
_DEVPATHS = {
    "memory": re.compile(r"^/devices/system/memory/memory(\d+)$"),
    "cpu": re.compile(r"^/devices/system/cpu/cpu(\d+)$"),
}


class UeventError(ValueError):
    """A datagram that is not a kernel uevent."""


@dataclass(frozen=True, slots=True)
class Uevent:
    action: str
    devpath: str
    env: Mapping[str, str]

    @property
    def subsystem(self) -> str:
        return self.env.get("SUBSYSTEM", "")

    @property
    def seqnum(self) -> int | None:
        value = self.env.get("SEQNUM", "")
        return int(value) if value.isdigit() else None


def parse_uevent(data: bytes) -> Uevent:
    """Parse one kernel uevent datagram (pure; raises :class:`UeventError`)."""
    if data.startswith(b"libudev\0"):
        raise UeventError("a udev (group 2) message, not a kernel uevent")
    fields = data.split(b"\0")
    head = fields[0].decode("utf-8", "replace")
    action, at, devpath = head.partition("@")
    if not at or not action or not devpath.startswith("/"):
        raise UeventError(f"no ACTION@DEVPATH header: {head[:60]!r}")
    env: dict[str, str] = {}
    for raw in fields[1:]:
        if not raw:
            continue
        key, eq, value = raw.decode("utf-8", "replace").partition("=")
        if eq:
            env[key] = value
    # The header and the ACTION/DEVPATH keys say the same thing; if they
    # disagree the datagram is not what the kernel sends.
    if env.get("ACTION", action) != action or env.get("DEVPATH", devpath) != devpath:
        raise UeventError(f"header {head!r} disagrees with ACTION/DEVPATH keys")
    return Uevent(action, devpath, env)


def uevent_to_event(uevent: Uevent, *, block_size: int, ts_ns: int, source: str = "uevent") -> HotplugEvent | None:
    """The hotplug event a uevent stands for; ``None`` for every other uevent
    (other subsystems, ``bind``/``change``, machinecheck/thermal siblings)."""
    action = _ACTIONS.get(uevent.action)
    subsystem = uevent.subsystem
    pattern = _DEVPATHS.get(subsystem)
    if action is None or pattern is None:
        return None
    m = pattern.match(uevent.devpath)
    if m is None:
        return None
    number = int(m.group(1))
    if subsystem == "memory":
        return HotplugEvent(Kind.MEMORY, action, ts_ns, source, start=number * block_size, size=block_size)
    return HotplugEvent(Kind.CPU, action, ts_ns, source, cpu=number)


class DatagramSocket(Protocol):
    """What the source needs of its socket (a real netlink socket, or a fake
    kernel endpoint in unit tests)."""

    def fileno(self) -> int: ...

    def recv(self, bufsize: int, /) -> bytes: ...

    def close(self) -> None: ...


def open_uevent_socket(rcvbuf: int = DEFAULT_RCVBUF) -> tuple[socket.socket, int]:
    """A non-blocking netlink socket bound to the kernel's uevent group, and
    the receive buffer the kernel actually granted (it doubles the request,
    and caps it at net.core.rmem_max unless we are root)."""
    try:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
        )
    except OSError as exc:
        raise UnavailableError("uevent source", f"netlink socket: {exc.strerror}") from exc
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, UEVENT_GROUP_KERNEL))
    except OSError as exc:
        sock.close()
        raise UnavailableError("uevent source", f"bind NETLINK_KOBJECT_UEVENT group 1: {exc.strerror}") from exc
    return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class UeventSource:
    """Memory and CPU hotplug events from kernel uevents.

    ``changes`` limits what is sent to those (kind, action) pairs; ``kinds``
    is the short form for every action of those kinds.  ``auto`` with BPF
    covering CPU and memory online/offline listens to the add/remove uevents
    of both kinds only: BPF has no probe for CPU add/remove, and memory
    add/remove uevents are kept alongside its probes (probes/_coverage.py).
    The socket is opened in the
    constructor, so that a uevent sent between ``open_sources`` and ``run``
    is queued, not lost, and so that a failure is reported before anything
    starts.
    """

    def __init__(
        self,
        *,
        block_size: int,
        kinds: frozenset[Kind] = frozenset(Kind),
        changes: frozenset[Change] | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        name: str = "uevent",
        socket_factory: Callable[[], DatagramSocket] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.block_size = block_size
        self.changes = changes if changes is not None else changes_of(kinds)
        if not self.changes:
            raise ValueError("a uevent source needs at least one (kind, action) to follow")
        self._name = name
        self._clock_ns = clock_ns
        if socket_factory is None:
            self._sock: DatagramSocket
            self._sock, self.rcvbuf = open_uevent_socket(rcvbuf)
        else:
            self._sock, self.rcvbuf = socket_factory(), rcvbuf
        self.messages = 0
        self.ignored = 0
        self.malformed = 0
        self.overflows = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def kinds(self) -> frozenset[Kind]:
        return frozenset(kind for kind, _ in self.changes)

    def close(self) -> None:
        self._sock.close()

    async def run(
        self, send: trio.MemorySendChannel[SourceItem], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with send:
            try:
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(self._sock.fileno())
                    for item in self._drain():
                        await send.send(item)
            finally:
                self._sock.close()

    def _drain(self, limit: int = 1024) -> list[SourceItem]:
        """Read what is queued (at most ``limit`` datagrams, so that a flood
        cannot starve the other trio tasks), without blocking."""
        items: list[SourceItem] = []
        for _ in range(limit):
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped datagrams because the socket was full;
                # how many is unknown.  The queue is readable again.
                self.overflows += 1
                items.append(
                    EventsLost(
                        ts_ns=self._clock_ns(),
                        source=self.name,
                        count=None,
                        reason=f"netlink uevent socket overflow (ENOBUFS, rcvbuf {self.rcvbuf} bytes)",
                    )
                )
                continue
            now = self._clock_ns()
            self.messages += 1
            try:
                uevent = parse_uevent(data)
            except UeventError:
                self.malformed += 1
                continue
            event = uevent_to_event(uevent, block_size=self.block_size, ts_ns=now, source=self.name)
            if event is None or (event.kind, event.action) not in self.changes:
                self.ignored += 1
                continue
            items.append(event)
        return items

