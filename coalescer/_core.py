"""The coalescer as a pure state machine, driven by a clock it is given.

The trio stage feeds it with arrival times from trio's clock; tests and the
bench feed it with event timestamps.  Nothing here awaits or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ground.events import SourceItem

from ._batch import BatchBuilder
from ground.records import Batch
from ._dedup import Deduplicator
from ._policy import Policy


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """What the live view shows of the batch being built."""

    seq: int
    events: int
    opened_at: float
    last_at: float
    urgent: bool
    rescan: bool
    deadline: float
    deadline_reason: str
    preview: Batch


class Coalescer:
    __slots__ = ("policy", "dedup", "_builder", "_opened", "_last", "_urgent_since", "_next_seq", "items", "batches")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.dedup = Deduplicator(policy.dedup_window)
        self._builder: BatchBuilder | None = None
        self._opened = 0.0
        self._last = 0.0
        self._urgent_since: float | None = None
        self._next_seq = 1
        self.items = 0
        self.batches = 0

    def deadline(self) -> tuple[float, str] | None:
        if self._builder is None:
            return None
        return self.policy.close_at(self._opened, self._last, self._urgent_since)

    def feed(self, item: SourceItem, now: float) -> tuple[bool, Batch | None]:
        """Fold ``item`` arriving at ``now``.  Returns (accepted, a batch that
        closed because its deadline had passed before this item arrived)."""
        closed = self.close_due(now)
        if not self.dedup.accept(item, now):
            return False, closed
        self.items += 1
        builder = self._builder
        if builder is None:
            builder = self._builder = BatchBuilder(self._next_seq)
            self._next_seq += 1
            self._opened = now
            self._urgent_since = None
        self._last = now
        builder.fold(item)
        if builder.urgent and self._urgent_since is None:
            self._urgent_since = now
        return True, closed

    def close_due(self, now: float) -> Batch | None:
        deadline = self.deadline()
        if deadline is None or now < deadline[0]:
            return None
        return self._close(deadline[1], deadline[0])

    def flush(self, now: float, reason: str = "eof") -> Batch | None:
        if self._builder is None:
            return None
        return self._close(reason, now)

    def _close(self, reason: str, at: float) -> Batch:
        assert self._builder is not None
        batch = self._builder.build(reason, opened_at=self._opened, closed_at=at)
        self._builder = None
        self._urgent_since = None
        self.batches += 1
        return batch

    def open_batch(self) -> OpenBatch | None:
        if self._builder is None:
            return None
        deadline, why = self.policy.close_at(self._opened, self._last, self._urgent_since)
        return OpenBatch(
            seq=self._builder.seq,
            events=self._builder.events,
            opened_at=self._opened,
            last_at=self._last,
            urgent=self._builder.urgent,
            rescan=self._builder.rescan,
            deadline=deadline,
            deadline_reason=why,
            preview=self._builder.build("open", opened_at=self._opened, closed_at=self._last),
        )


def coalesce(
    items: Iterable[SourceItem],
    policy: Policy,
    arrival: Callable[[SourceItem], float] = lambda item: item.ts_ns / 1e9,
) -> list[Batch]:
    """Batch a time-ordered item sequence, taking each item's arrival time from
    ``arrival`` (default: its own timestamp).  Pure: the reference the trio
    stage and the bench are checked against."""
    core = Coalescer(policy)
    out: list[Batch] = []
    now = 0.0
    for item in items:
        now = arrival(item)
        _accepted, closed = core.feed(item, now)
        if closed is not None:
            out.append(closed)
    deadline = core.deadline()
    if deadline is not None:
        closed = core.close_due(max(now, deadline[0]))
        if closed is not None:
            out.append(closed)
    return out
