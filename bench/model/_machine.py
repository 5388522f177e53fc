"""The simulated guest: a processor-sharing CPU, udev's event queue, the
system state and the loaded crash image, all on trio's (virtual) clock.

Every "process" of a strategy (a udev worker, a throttler, a reload, the
coalescer's reload) is a trio task that asks the :class:`Cpu` for CPU
seconds; runnable jobs share ``cpus`` processors equally, so a reload slows
the kernel's onlining down and the other way round.  Nothing here sleeps in
real time: under ``trio.testing.MockClock(autojump_threshold=0)`` a
seven-minute resize runs in about a second.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import trio

from ground.events import Action, HotplugEvent, Kind

_EPS = 1e-9


class _Job:
    __slots__ = ("remaining", "owner")

    def __init__(self, remaining: float, owner: str) -> None:
        self.remaining = remaining
        self.owner = owner


class Cpu:
    """Processor sharing over ``count`` CPUs: n runnable jobs each progress at
    min(1, count / n) CPU-seconds per second."""

    def __init__(self, count: float) -> None:
        self.count = count
        self._jobs: dict[int, _Job] = {}
        self._next_id = 0
        self._last = 0.0
        self._changed = trio.Event()
        self.used: defaultdict[str, float] = defaultdict(float)

    @property
    def runnable(self) -> int:
        return len(self._jobs)

    def _rate(self) -> float:
        return min(1.0, self.count / len(self._jobs)) if self._jobs else 1.0

    def _advance(self) -> None:
        now = trio.current_time()
        dt = now - self._last
        if dt > 0 and self._jobs:
            step = dt * self._rate()
            for job in self._jobs.values():
                done = min(job.remaining, step)
                job.remaining -= done
                self.used[job.owner] += done
        self._last = now

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, work: float, owner: str) -> None:
        """Consume ``work`` CPU-seconds, sharing the CPUs with every other job."""
        if work <= 0:
            return
        self._advance()
        jid = self._next_id
        self._next_id += 1
        job = self._jobs[jid] = _Job(work, owner)
        self._notify()
        try:
            while job.remaining > _EPS:
                changed = self._changed
                with trio.move_on_after(job.remaining / self._rate()):
                    await changed.wait()
                self._advance()
        finally:
            self._advance()
            del self._jobs[jid]
            self._notify()

    def account(self, work: float, owner: str) -> None:
        """CPU too small and too frequent to simulate job by job (per-event BPF
        and coalescer work, microseconds): counted, not scheduled."""
        self.used[owner] += work


class UdevQueue:
    """What ``udevadm settle`` waits for: events queued or being processed.

    Busy while the kernel is still turning a DIMM's blocks into events (the
    ``add`` uevents of a DIMM are queued when it appears; on RHEL a udev rule
    onlines each block from its ``add`` event) and while a udev worker runs a
    rule's program.
    """

    def __init__(self) -> None:
        self.busy = 0
        self._idle = trio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.busy == 0:
            self._idle = trio.Event()
        self.busy += 1

    def leave(self) -> None:
        self.busy -= 1
        if self.busy == 0:
            self._idle.set()

    async def settle(self, timeout: float) -> bool:
        """``udevadm settle --timeout``: True when the queue emptied in time."""
        with trio.move_on_after(timeout):
            while self.busy:
                await self._idle.wait()
            return True
        return False


def _mix(key: int) -> int:
    # splitmix64 finaliser: a well-spread 64-bit hash of a block or CPU key.
    z = (key + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


UP = frozenset({Action.ADD, Action.ONLINE})
DOWN = frozenset({Action.OFFLINE, Action.REMOVE})


@dataclass
class Timeline:
    """What the plot draws and the metrics sum."""

    events: list[float] = field(default_factory=list)
    reloads: list[tuple[float, float]] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    stale: list[tuple[float, float]] = field(default_factory=list)


class Machine:
    """The system state (which blocks and CPUs are there) and the crash image.

    State is compared as a Zobrist hash of the set of blocks/CPUs whose
    presence differs from the start, so a header "equals the system" exactly
    when it was built from the same set (churn that returns to the start is
    equal again).  Presence: ``add``/``online`` make a block or CPU present,
    ``offline``/``remove`` absent, as /proc/iomem and sysfs show them.
    """

    def __init__(self) -> None:
        self.state = 0
        self._initial: dict[int, bool] = {}
        self._present: dict[int, bool] = {}
        self.loaded = True
        self.loaded_state = 0
        self.timeline = Timeline()
        self._window_start: float | None = None
        self._stale_start: float | None = None
        self.correct_since = 0.0
        self.correct = True
        self.reloads = 0
        self.updates = 0
        self.dropped = 0

    @staticmethod
    def key(event: HotplugEvent) -> int:
        if event.kind is Kind.CPU:
            return (1 << 62) | event.cpu
        return event.start >> 12  # page frame of the block's start

    def apply(self, event: HotplugEvent) -> None:
        now = trio.current_time()
        self.timeline.events.append(now)
        if not event.changes_state or event.action not in UP | DOWN:
            return
        key = self.key(event)
        present = event.action in UP
        if key not in self._initial:
            self._initial[key] = not present
            self._present[key] = not present
        if self._present[key] != present:
            self._present[key] = present
            self.state ^= _mix(key)
        self._refresh(now)

    def image_gone(self) -> None:
        """No crash kernel from now on (an unload, or a load syscall that has
        freed the old image, or the kexec lock held by an in-kernel update)."""
        now = trio.current_time()
        if self.loaded:
            self.loaded = False
            self._window_start = now
        self._refresh(now)

    def image_loaded(self, built_from: int, *, reload: bool = True) -> None:
        now = trio.current_time()
        if not self.loaded:
            assert self._window_start is not None
            self.timeline.windows.append((self._window_start, now))
            self._window_start = None
        self.loaded = True
        self.loaded_state = built_from
        if reload:
            self.reloads += 1
        else:
            self.updates += 1
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        stale = self.loaded and self.loaded_state != self.state
        if stale and self._stale_start is None:
            self._stale_start = now
        elif not stale and self._stale_start is not None:
            if now > self._stale_start:
                self.timeline.stale.append((self._stale_start, now))
            self._stale_start = None
        correct = self.loaded and self.loaded_state == self.state
        if correct and not self.correct:
            self.correct_since = now
        self.correct = correct

    def close(self) -> None:
        """End of the run: close the open window / stale period."""
        now = trio.current_time()
        if self._window_start is not None:
            self.timeline.windows.append((self._window_start, now))
            self._window_start = None
        if self._stale_start is not None:
            self.timeline.stale.append((self._stale_start, now))
            self._stale_start = None
