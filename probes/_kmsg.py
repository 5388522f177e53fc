"""The kernel log (/dev/kmsg): when the kernel's own elfcorehdr update did not happen.

On a kernel with crash hotplug (CONFIG_CRASH_HOTPLUG, Linux 6.6 x86:
ea53ad9cf73b "x86/crash: add x86 crash hotplug support", a72bbec70da2
"crash: hotplug support for kexec_load()") and an image loaded with the
kernel's hotplug support, the kernel rewrites the elfcorehdr itself on every
memory online/offline and CPU online/offline (kernel/crash_core.c
``crash_handle_hotplug_event``, arch/x86/kernel/crash.c
``arch_crash_handle_hotplug_event``).  It gives up without a retry, leaving
the header stale, and says so only in the kernel log (``pr_fmt`` "crash hp: "):

- ``kexec_trylock() failed, kdump image may be inaccurate`` (pr_info): a
  kexec load held the lock during the event.  ``crash_check_hotplug_support``
  (a read of a crash_hotplug file) logs the same line when it cannot take
  the lock; the two cannot be told apart, so every such line counts as a
  possibly skipped update (at worst one load too many);
- ``update elfcorehdr elfsz N > memsz M`` (pr_err): the new header does not
  fit the segment;
- ``unable to create new elfcorehdr``, ``mapping elfcorehdr segment failed``,
  ``unable to locate elfcorehdr segment`` (pr_err): the rewrite failed.

Why the kernel log and not BPF: ``kexec_trylock`` is an inline function
(not in available_filter_functions on Debian's 6.12), and a probe on
``crash_handle_hotplug_event`` sees the event but not whether the trylock or
the size check failed; the log line is the kernel's own statement of both,
needs no compiler, and works wherever /dev/kmsg is readable (root, or
CAP_SYSLOG with kernel.dmesg_restrict).

Each such line becomes an :class:`~ground.events.EventsLost` (the kernel's
updater lost an update) whose ``source`` names the cause, ``kmsg:trylock``,
``kmsg:elfsz``, ``kmsg:update-failed``, or ``kmsg:overrun`` when the log
ring overwrote records before they were read (EPIPE: a line may have been
missed).  The coalescer folds it into a batch (``rescan``), the batch carries
the source names, and the updater in kernel mode repairs with one load
(:func:`kernel_update_causes` reads them back).  The file is opened and
positioned at its end in the constructor: old lines are history, lines
logged between opening and running are queued.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from ground.errors import UnavailableError
from ground.events import EventsLost, SourceItem

KMSG_PATH = "/dev/kmsg"
KMSG_SOURCE_PREFIX = "kmsg:"
# A /dev/kmsg read returns one record; the kernel refuses (EINVAL) a buffer
# smaller than the record (PRINTK_MESSAGE_MAX is 2048 in 6.12).
READ_SIZE = 16384

# The causes, as data: (cause, pattern over the message text).
CAUSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("trylock", re.compile(r"kexec_trylock\(\) failed, kdump image may be inaccurate")),
    ("elfsz", re.compile(r"update elfcorehdr elfsz (\d+) > memsz (\d+)")),
    (
        "update-failed",
        re.compile(r"unable to create new elfcorehdr|mapping elfcorehdr segment failed|unable to locate elfcorehdr segment"),
    ),
)
OVERRUN = "overrun"
ALL_CAUSES = tuple(c for c, _ in CAUSES) + (OVERRUN,)


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    """One /dev/kmsg record: ``PRI,SEQ,TS_US,FLAGS[,...];MESSAGE``."""

    level: int
    seq: int
    ts_us: int
    message: str


def parse_kmsg_lines(data: bytes) -> list[KmsgRecord]:
    """The records in ``data`` (one read of /dev/kmsg, or several records
    joined by newlines); continuation lines (`` KEY=value``) and lines that
    are not records are skipped."""
    out = []
    for raw in data.decode("utf-8", errors="replace").split("\n"):
        if not raw or raw.startswith(" "):
            continue
        prefix, sep, message = raw.partition(";")
        if not sep:
            continue
        fields = prefix.split(",")
        if len(fields) < 3:
            continue
        try:
            pri, seq, ts = int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            continue
        out.append(KmsgRecord(pri & 7, seq, ts, message))
    return out


def classify(message: str) -> str | None:
    """The cause a kernel message reports, or None when it is not about a
    skipped elfcorehdr update."""
    for cause, pattern in CAUSES:
        if pattern.search(message):
            return cause
    return None


def kernel_update_causes(sources: Iterable[str]) -> tuple[str, ...]:
    """The causes named by a batch's ``sources`` (``kmsg:trylock`` -> ``trylock``), sorted."""
    return tuple(sorted({s.removeprefix(KMSG_SOURCE_PREFIX) for s in sources if s.startswith(KMSG_SOURCE_PREFIX)}))


def elfsz_of(message: str) -> int | None:
    """The header size the kernel wanted to write, from an elfsz line."""
    m = CAUSES[1][1].search(message)
    return int(m.group(1)) if m else None


def kernel_has_crash_hotplug(root: str = "/") -> bool:
    """Whether this kernel can update an elfcorehdr itself (CONFIG_CRASH_HOTPLUG):
    /sys/kernel/crash_elfcorehdr_size (a72bbec70da2) or a crash_hotplug file
    (88a6f8994421 "crash: memory and CPU hotplug sysfs attributes") exists."""
    rels = ("sys/kernel/crash_elfcorehdr_size", "sys/devices/system/memory/crash_hotplug", "sys/devices/system/cpu/crash_hotplug")
    return any(os.path.exists(os.path.join(root, rel)) for rel in rels)


def kmsg_readable(path: str = KMSG_PATH) -> str:
    """"" when ``path`` opens for reading, else why not (for doctor and the selection)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    os.close(fd)
    return ""


Reader = Callable[[int, int], bytes]


class KmsgSource:
    """Skipped in-kernel elfcorehdr updates, from the kernel log.

    ``reader`` stands in for ``os.read`` in unit tests (a fake endpoint that
    returns records, raises BlockingIOError when empty and OSError(EPIPE) on an
    overrun, as /dev/kmsg does)."""

    def __init__(
        self,
        path: str = KMSG_PATH,
        *,
        name: str = "kmsg",
        reader: Reader = os.read,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.path = path
        self._name = name
        self._read = reader
        self._clock_ns = clock_ns
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise UnavailableError(
                f"kernel log {path}", exc.strerror or str(exc), "needs root (or CAP_SYSLOG with kernel.dmesg_restrict)"
            ) from None
        try:
            # Only what is logged from now on: the history is not about this run.
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            pass  # a fake or a plain file in tests: read it from the start
        self.records = 0
        self.skipped_updates: dict[str, int] = {c: 0 for c in ALL_CAUSES}

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def run(
        self, send: trio.MemorySendChannel[SourceItem], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with send:
            try:
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(self._fd)
                    for item in self.drain():
                        await send.send(item)
            finally:
                self.close()

    def drain(self, limit: int = 4096) -> list[SourceItem]:
        """Read what is queued without blocking (at most ``limit`` reads, so
        that a log flood cannot starve the other tasks)."""
        items: list[SourceItem] = []
        for _ in range(limit):
            try:
                data = self._read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                # Records were overwritten before we read them; the next read
                # continues with the oldest one left.  A skipped-update line may
                # be among the lost ones.
                items.append(self._lost(OVERRUN, "kernel log ring overwritten before it was read (EPIPE): a skipped elfcorehdr update may be unseen"))
                continue
            if not data:
                break
            for record in parse_kmsg_lines(data):
                self.records += 1
                cause = classify(record.message)
                if cause is not None:
                    items.append(self._lost(cause, f"kernel: {record.message.strip()}"))
        return items

    def _lost(self, cause: str, reason: str) -> EventsLost:
        self.skipped_updates[cause] += 1
        return EventsLost(ts_ns=self._clock_ns(), source=f"{KMSG_SOURCE_PREFIX}{cause}", count=1, reason=reason)
