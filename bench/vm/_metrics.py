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

``stale_s`` (issue 15): a loaded header is stale from the first memory
uevent after the moment its loader read the system state until the next
header is installed (windows without any crash kernel excluded).  The read
is bounded by the exec of the loading kexec process (``sched_process_exec``:
kexec-tools reads /proc/iomem after it starts) and the syscall; the exec is
used when the trace has it, so ``stale_s`` is an upper bound by at most the
loader's start-up (~1 s under TCG); for an in-process load (kdump-coalesce's
kexec-fast) the syscall's entry, a lower bound.  The kernel's own update
(``kernel`` strategy) is traced with a kprobe on
``crash_handle_hotplug_event`` (entry = read, return = installed; it runs
under the kexec lock, so a panic meanwhile cannot kexec: a window).
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


_EXEC = re.compile(r"^\s*.*?-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+):\s+sched_process_exec:")
_KPROBE = re.compile(
    r"^\s*.*?-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+):\s+kdc_chp_(?P<kind>enter|exit):"
)


def parse_execs(lines: Iterable[str]) -> dict[int, float]:
    """pid -> time of its (last) exec of a kexec binary."""
    out: dict[int, float] = {}
    for line in lines:
        m = _EXEC.match(line)
        if m:
            out[int(m.group("pid"))] = float(m.group("ts"))
    return out


def parse_kernel_updates(lines: Iterable[str]) -> list[tuple[float, float]]:
    """(entry, return) of every traced in-kernel header update (kprobe kdc_chp_enter/exit), by pid."""
    open_: dict[int, float] = {}
    out: list[tuple[float, float]] = []
    for line in lines:
        m = _KPROBE.match(line)
        if not m:
            continue
        pid, ts = int(m.group("pid")), float(m.group("ts"))
        if m.group("kind") == "enter":
            open_[pid] = ts
        elif pid in open_:
            out.append((open_.pop(pid), ts))
    return sorted(out)


def stale_time(
    installs: Sequence[tuple[float, float]],
    changes: Sequence[float],
    wins: Sequence[tuple[float, float]],
    *,
    t_start: float,
    t_end: float,
) -> float:
    """Seconds a loaded header lagged the system.  ``installs``: (state read, installed) per header."""
    images = [(t_start, t_start)] + sorted(installs, key=lambda x: x[1])
    ch = sorted(changes)
    total = 0.0
    import bisect

    for i, (read, inst) in enumerate(images):
        until = images[i + 1][1] if i + 1 < len(images) else t_end
        k = bisect.bisect_right(ch, read)
        if k >= len(ch):
            continue
        a, b = max(inst, ch[k]), until
        if b <= a:
            continue
        span = b - a
        for wa, wb in wins:
            span -= max(0.0, min(b, wb) - max(a, wa))
        total += max(0.0, span)
    return total


@dataclass(frozen=True, slots=True)
class Extrapolation:
    """What a strategy stopped at its cut-off would have done over the whole burst (issue 15)."""

    from_reloads: int
    blocks: int
    reloads: int
    exposure_s: float
    total_s: float
    settle_s: float
    cpu_s: float | None
    mean_window_s: float
    mean_cycle_s: float

    def to_json(self) -> dict[str, object]:
        return {
            "from_reloads": self.from_reloads, "blocks": self.blocks, "reloads": self.reloads,
            "exposure_s": self.exposure_s, "total_s": self.total_s, "settle_s": self.settle_s,
            "cpu_s": self.cpu_s, "mean_window_s": self.mean_window_s, "mean_cycle_s": self.mean_cycle_s,
        }  # fmt: skip


def extrapolate(
    uevents: Sequence[Sequence[object]],
    trace: Sequence[str],
    *,
    t_cut: float,
    blocks: int,
    handlers_done: int,
    cpu_s: float | None,
) -> Extrapolation | None:
    """A per-block strategy (one full reload per online uevent) cut off at ``t_cut``, scaled to ``blocks``.

    From the loads that completed before the cut: the mean window per reload
    and the mean cycle (first memory uevent -> exit of the last load before
    the cut, per load); the whole burst is ``blocks`` such cycles, and its
    CPU the measured CPU per finished handler times ``blocks``.
    """
    calls = [c for c in parse_kexec_calls(trace) if c.exit <= t_cut]
    loads = [c for c in calls if c.crash and not c.unload and c.ret == 0]
    times = sorted(float(str(u[0])) for u in uevents)
    if not loads or not times:
        return None
    wins, _ = windows(calls)
    n = len(loads)
    first, last = times[0], times[-1]
    mean_window = sum(b - a for a, b in wins) / n
    mean_cycle = (max(c.exit for c in loads) - first) / n
    total = mean_cycle * blocks
    per_handler = (cpu_s / handlers_done) if (cpu_s is not None and handlers_done) else None
    return Extrapolation(
        from_reloads=n, blocks=blocks, reloads=blocks, exposure_s=mean_window * blocks, total_s=total,
        settle_s=max(0.0, first + total - last), cpu_s=None if per_handler is None else per_handler * blocks,
        mean_window_s=mean_window, mean_cycle_s=mean_cycle,
    )  # fmt: skip


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
    total_s: float | None = None  # first memory uevent -> kdump correct again
    kernel_updates: int = 0
    installs: tuple[float, ...] = ()  # when each header was installed (plot)
    first_event: float | None = None
    stale: bool = False  # stale_s was computed (else None)

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
    t_start: float | None = None,
    dimm_blocks: Sequence[tuple[int, int]] | None = None,
) -> StrategyFigures:
    """The figures of one strategy's run.  ``uevents``: (monotonic time, action, block) per memory uevent.

    ``dimm_blocks``: the [first, end) memory block numbers of each hot-added
    DIMM.  /proc/iomem, which every header is built from, gains a DIMM's whole
    range when it is added, before its blocks come online (kernel-facts 10):
    the system state a header must match changes once per DIMM, at its first
    block's uevent, not at every block's.  Without it every uevent counts as
    a change (an over-estimate of stale time).
    """
    calls = parse_kexec_calls(trace)
    loads_ok = [c for c in calls if c.crash and not c.unload and c.ret == 0]
    wins, open_start = windows(calls)
    updates = parse_kernel_updates(trace)
    wins = sorted(wins + updates)
    notes: list[str] = []
    if open_start is not None:
        end = t_end if t_end is not None else max([c.exit for c in calls] + [open_start])
        wins.append((open_start, end))
        notes.append("no crash kernel loaded at the end of the run")
    times = [float(str(u[0])) for u in uevents]
    last_event = max(times) if times else None
    if dimm_blocks:
        changes = []
        for lo, hi in dimm_blocks:
            mine = [float(str(u[0])) for u in uevents if lo <= int(str(u[2])) < hi]
            if mine:
                changes.append(min(mine))
    else:
        changes = list(times)
    execs = parse_execs(trace)
    installs = [(execs.get(c.pid, c.enter) if execs.get(c.pid, c.exit) <= c.enter else c.enter, c.exit) for c in loads_ok]
    installs += updates
    # kdump correct again: the first header read after the last change is installed, and no window after it
    settle: float | None = None
    total: float | None = None
    correct_at: float | None = None
    if changes:
        last_change = max(changes)
        fresh = [inst for read, inst in installs if read >= last_change]
        if fresh and open_start is None:
            correct_at = max([min(fresh)] + [b for _, b in wins if b > min(fresh)])
    if last_event is not None and correct_at is not None:
        settle = max(0.0, correct_at - last_event)
        total = max(correct_at, last_event) - min(times)
    elif last_event is not None:
        notes.append("no crash load completed after the last hotplug uevent read the final memory map")
    durations = [b - a for a, b in wins]
    stale: float | None = None
    end = t_end if t_end is not None else max([c.exit for c in calls] + times + [0.0])
    if t_start is not None:
        stale = stale_time(installs, changes, wins, t_start=t_start, t_end=end)
    done_all = [b for _, b in installs]
    return StrategyFigures(
        reloads=len(loads_ok),
        settle_s=settle,
        exposure_s=sum(durations),
        max_window_s=max(durations, default=0.0),
        stale_s=stale,
        cpu_s=cpu_s,
        unloads=sum(1 for c in calls if c.crash and c.unload and c.ret == 0),
        failed_calls=sum(1 for c in calls if c.ret != 0),
        windows=tuple(wins),
        memory_uevents=len(uevents),
        online_uevents=sum(1 for u in uevents if u[1] in ("online", "offline")),
        handlers=handlers,
        open_window_at_end=open_start is not None,
        notes=tuple(notes),
        total_s=total,
        kernel_updates=len(updates),
        installs=tuple(sorted(done_all)),
        first_event=min(times) if times else None,
        stale=stale is not None,
    )
