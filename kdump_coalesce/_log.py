"""Structured log lines on stderr, for journald.

Each line starts with a syslog priority prefix (``<3>`` error, ``<4>``
warning, ``<6>`` info, ``<7>`` debug), which journald strips and turns into
the entry's priority when stderr is connected to the journal.  One line per
batch and per reload; single events only at debug level (a 3840-block resize
must not write 3840 lines).  ``--log-format json`` writes one JSON object per
line instead of ``key=value`` text.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from coalescer import Batch
from probes import EventsLost, SourceItem

ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7
LOG_FORMATS = ("text", "json")


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class LogObserver:
    def __init__(self, stream: IO[str] | None = None, *, fmt: str = "text", verbose: bool = False) -> None:
        if fmt not in LOG_FORMATS:
            raise ValueError(f"unknown log format {fmt!r}")
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.verbose = verbose

    def log(self, priority: int, message: str, **fields: Any) -> None:
        if priority >= DEBUG and not self.verbose:
            return
        if self.fmt == "json":
            record = {"ts": round(time.time(), 6), "priority": priority, "msg": message, **fields}
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            line = message
            if fields:
                line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        self.stream.write(f"<{priority}>{line}\n")
        self.stream.flush()

    # -- Observer --------------------------------------------------------

    def on_item(self, item: SourceItem) -> None:
        if isinstance(item, EventsLost):
            self.log(WARNING, "events lost: next batch re-reads the whole state", source=item.source, count=item.count, reason=item.reason)
        elif self.verbose:
            self.log(DEBUG, "event", what=item.describe())

    def on_batch(self, batch: Batch) -> None:
        self.log(INFO, batch.describe(), kind="batch")

    def on_record(self, kind: str, fields: Mapping[str, Any]) -> None:
        if kind == "reload":
            result = str(fields.get("result", "?"))
            priority = ERR if result == "failed" else WARNING if result == "fallback" else INFO
            self.log(priority, f"reload {result}", kind="reload", **{k: v for k, v in fields.items() if k != "result"})
        elif kind == "note":
            priority = int(fields.get("priority", INFO))
            message = str(fields.get("message", ""))
            self.log(priority, message, **{k: v for k, v in fields.items() if k not in ("priority", "message")})
        elif kind == "status":
            self.log(DEBUG, "status", **dict(fields))
