"""From what the guest recorded (uevents, kexec_load syscall lines) to the bench's figures.  Pure.

The guest (tools/vm/bench-guest.py) reads the kernel's ``syscalls``
tracepoints through tracefs with ``trace_clock=mono``, so the syscall
timestamps and the uevent reception times are the same clock
(CLOCK_MONOTONIC of the guest).  A line looks like::

    kexec-312     [001] .....   123.456789: sys_kexec_load(entry: 0, nr_segments: 0, segments: 0, flags: 3e0001)
    kexec-312     [001] .....   123.456801: sys_kexec_load -> 0x0

Windows without a crash kernel, from kernel/kexec.c (``do_kexec_load``, 6.1):
a crash load (``KEXEC_ON_CRASH``) frees the loaded crash image first
(``kimage_free(xchg(&kexec_crash_image, NULL))``) and installs the new one at
the end, and an unload (``nr_segments == 0``) frees it; both run under
``kexec_trylock()``, which fails with EBUSY before touching anything.  So a
window opens at the enter of an unload or of a crash load while an image is
loaded, and closes at the exit of a crash load that returned 0; an EBUSY
call that opened it cancels it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

KEXEC_ON_CRASH = 0x1
EBUSY = 16

_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+):\s+"
    r"sys_kexec_load(?:\((?P<args>[^)]*)\)|\s+->\s+(?P<ret>0x[0-9a-fA-F]+|-?\d+))"
)


@dataclass(frozen=True, slots=True)
class KexecCall:
    pid: int
    enter: float
    exit: float
    nr_segments: int
    flags: int
    ret: int  # signed

    @property
    def crash(self) -> bool:
        return bool(self.flags & KEXEC_ON_CRASH)

    @property
    def unload(self) -> bool:
        return self.nr_segments == 0


@dataclass(frozen=True, slots=True)
class StrategyFigures:
    """One strategy's figures; the first six are the JSON schema of ``bench --json``."""

    reloads: int
    settle_s: float | None
    exposure_s: float
    max_window_s: float
    stale_s: float | None
    cpu_s: float | None
    unloads: int = 0
    failed_calls: int = 0
    windows: tuple[tuple[float, float], ...] = ()
    memory_uevents: int = 0
    online_uevents: int = 0
    handlers: int = 0
    open_window_at_end: bool = False
    notes: tuple[str, ...] = field(default=())

    def schema(self) -> dict[str, object]:
        return {
            "reloads": self.reloads,
            "settle_s": self.settle_s,
            "exposure_s": self.exposure_s,
            "max_window_s": self.max_window_s,
            "stale_s": self.stale_s,
            "cpu_s": self.cpu_s,
        }


def _signed(value: str) -> int:
    v = int(value, 16) if value.lower().startswith("0x") else int(value)
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_kexec_calls(lines: Iterable[str]) -> list[KexecCall]:
    """Pair sys_enter/sys_exit_kexec_load lines per pid into calls, in order of entry."""
    open_: dict[int, tuple[float, int, int]] = {}
    calls: list[KexecCall] = []
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        pid, ts = int(m.group("pid")), float(m.group("ts"))
        if m.group("args") is not None:
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (p.partition(":") for p in m.group("args").split(","))
            )
            open_[pid] = (ts, int(fields.get("nr_segments", "0"), 16), int(fields.get("flags", "0"), 16))
        elif pid in open_:
            enter, nseg, flags = open_.pop(pid)
            calls.append(KexecCall(pid, enter, ts, nseg, flags, _signed(m.group("ret"))))
    return sorted(calls, key=lambda c: c.enter)


def windows(calls: Sequence[KexecCall], *, loaded_at_start: bool = True) -> tuple[list[tuple[float, float]], float | None]:
    """Intervals without a crash image, and the start of one still open at the end (or None)."""
    events: list[tuple[float, int, KexecCall]] = []
    for c in calls:
        if c.crash:
            events.append((c.enter, 0, c))
            events.append((c.exit, 1, c))
    events.sort(key=lambda e: (e[0], e[1]))
    loaded = loaded_at_start
    start: float | None = None
    opener: KexecCall | None = None
    out: list[tuple[float, float]] = []
    for ts, kind, c in events:
        if kind == 0:
            if loaded:
                loaded, start, opener = False, ts, c
        elif c.ret == -EBUSY:
            if opener is c and start is not None:  # it never got the lock: nothing was freed
                loaded, start, opener = True, None, None
        elif c.ret == 0 and not c.unload:
            if not loaded and start is not None:
                out.append((start, ts))
            loaded, start, opener = True, None, None
    return out, (None if loaded else start)


def figures(
    uevents: Sequence[Sequence[object]],
    trace: Sequence[str],
    *,
    cpu_s: float | None,
    handlers: int = 0,
    t_end: float | None = None,
) -> StrategyFigures:
    """The figures of one strategy's run.  ``uevents``: (monotonic time, action, block) per memory uevent."""
    calls = parse_kexec_calls(trace)
    loads_ok = [c for c in calls if c.crash and not c.unload and c.ret == 0]
    wins, open_start = windows(calls)
    notes: list[str] = []
    if open_start is not None:
        end = t_end if t_end is not None else max([c.exit for c in calls] + [open_start])
        wins.append((open_start, end))
        notes.append("no crash kernel loaded at the end of the run")
    times = [float(str(u[0])) for u in uevents]
    last_event = max(times) if times else None
    settle: float | None = None
    if last_event is not None and loads_ok:
        done = max(c.exit for c in loads_ok)
        if done >= last_event:
            settle = done - last_event
        else:
            notes.append("no crash load completed after the last hotplug uevent")
    durations = [b - a for a, b in wins]
    return StrategyFigures(
        reloads=len(loads_ok),
        settle_s=settle,
        exposure_s=sum(durations),
        max_window_s=max(durations, default=0.0),
        stale_s=None,
        cpu_s=cpu_s,
        unloads=sum(1 for c in calls if c.crash and c.unload and c.ret == 0),
        failed_calls=sum(1 for c in calls if c.ret != 0),
        windows=tuple(wins),
        memory_uevents=len(uevents),
        online_uevents=sum(1 for u in uevents if u[1] in ("online", "offline")),
        handlers=handlers,
        open_window_at_end=open_start is not None,
        notes=tuple(notes),
    )
