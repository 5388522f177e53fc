"""Observers see every stage: the trace file, metrics, logs, sd_notify, the live view.

The contract is typed: an observer gets the items the coalescer accepted, the
batches it closed, and the records (:data:`~ground.records.Record`) the updater and
the daemon emit.  An observer must not raise and must not block (the trace
file and the log write a line; metrics bump counters; the textfile is written
by a task of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .events import SourceItem
from .records import Batch, Record


class Observer(Protocol):
    def on_item(self, item: SourceItem) -> None:
        """An item the coalescer accepted (duplicates are not passed on)."""

    def on_batch(self, batch: Batch) -> None:
        """A batch closed (before merging for delivery)."""

    def on_record(self, record: Record) -> None:
        """A reload decision, an error, a kexec call, a note, a daemon status."""


class FanOut:
    """Calls several observers in order.  An observer must not raise; one that
    does is a bug that should surface, not be hidden, so nothing is caught."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def on_item(self, item: SourceItem) -> None:
        for o in self.observers:
            o.on_item(item)

    def on_batch(self, batch: Batch) -> None:
        for o in self.observers:
            o.on_batch(batch)

    def on_record(self, record: Record) -> None:
        for o in self.observers:
            o.on_record(record)
