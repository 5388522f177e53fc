"""Observed kexec_load / kexec_file_load calls, for exact reload windows.

``kexec_load(2)`` with KEXEC_ON_CRASH frees the old crash image before it
copies the new one (kernel/kexec.c, ``do_kexec_load``), so the time between
the syscall's enter and exit is exactly the window with no crash kernel.  The
BPF source fills this log from the ``syscalls:sys_enter_kexec_*`` /
``sys_exit_kexec_*`` tracepoints; it sees every caller, so reloads made by
someone else (a distro udev rule still active, an admin) show up too.  The
updater reads its own windows from here; without BPF the log stays empty and
the updater bounds the window by the loader process's lifetime instead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class KexecCall:
    syscall: str  # "kexec_load" | "kexec_file_load"
    pid: int
    comm: str
    flags: int
    enter_ns: int  # CLOCK_MONOTONIC
    exit_ns: int
    ret: int

    @property
    def window_s(self) -> float:
        return (self.exit_ns - self.enter_ns) / 1e9

    @property
    def on_crash(self) -> bool:
        # KEXEC_ON_CRASH is 0x1 for kexec_load; KEXEC_FILE_ON_CRASH is 0x2.
        return bool(self.flags & (0x1 if self.syscall == "kexec_load" else 0x2))


class KexecCallLog:
    """A bounded log of completed kexec calls with a wake-up for waiters."""

    def __init__(self, maxlen: int = 256) -> None:
        self._calls: deque[KexecCall] = deque(maxlen=maxlen)
        self._changed = trio.Event()
        self.active = False  # True once a source is actually filling it

    def append(self, call: KexecCall) -> None:
        self._calls.append(call)
        self._changed.set()
        self._changed = trio.Event()

    def calls(self) -> list[KexecCall]:
        return list(self._calls)

    def between(self, start_ns: int, end_ns: int, pid: int | None = None) -> list[KexecCall]:
        """Calls that entered and exited inside ``[start_ns, end_ns]``."""
        return [
            c for c in self._calls if start_ns <= c.enter_ns and c.exit_ns <= end_ns and (pid is None or c.pid == pid)
        ]

    async def wait_changed(self) -> None:
        await self._changed.wait()
