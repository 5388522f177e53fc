"""The two observers/consumers that need no kernel: a batch recorder and the
trace-file writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO

from ground.events import SourceItem
from ground.tracefile import TraceWriter

from ground.records import Batch, Record


class BatchRecorder:
    """A :class:`BatchConsumer` that keeps every batch it is handed and,
    optionally, prints each one (a line, or a JSON object per line)."""

    def __init__(self, stream: IO[str] | None = None, *, as_json: bool = False) -> None:
        self.batches: list[Batch] = []
        self._stream = stream
        self._as_json = as_json

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self._stream is not None:
            line = json.dumps(batch.to_json(), separators=(",", ":")) if self._as_json else batch.describe()
            self._stream.write(line + "\n")
            self._stream.flush()


class TraceObserver:
    """Writes every item, batch and record to a trace file (the format
    ``replay`` reads back)."""

    def __init__(self, writer: TraceWriter, *, clock: Callable[[], float] | None = None) -> None:
        self.writer = writer
        self._clock = clock

    def on_item(self, item: SourceItem) -> None:
        self.writer.item(item)

    def on_batch(self, batch: Batch) -> None:
        self.writer.observation(batch)

    def on_record(self, record: Record) -> None:
        self.writer.observation(record, clock=self._clock() if self._clock is not None else None)
