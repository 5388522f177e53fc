"""Observers see every stage: the trace file, metrics, logs, the live view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .events import SourceItem

from .records import Batch


class Observer(Protocol):
    def on_item(self, item: SourceItem) -> None:
        """An item the coalescer accepted (duplicates are not passed on)."""

    def on_batch(self, batch: Batch) -> None:
        """A batch closed (before merging for delivery)."""

    def on_record(self, kind: str, fields: Mapping[str, Any]) -> None:
        """Anything else worth tracing: ``reload``, ``note``, ``status``."""


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

    def on_record(self, kind: str, fields: Mapping[str, Any]) -> None:
        for o in self.observers:
            o.on_record(kind, fields)
