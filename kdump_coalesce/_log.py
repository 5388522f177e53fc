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
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from ground.records import Batch, DaemonStatus, ErrorRecord, KexecCallRecord, NoteRecord, Record, ReloadRecord, ReloadResult, to_json
from ground.events import EventsLost, SourceItem

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

    def on_record(self, record: Record) -> None:
        fields: dict[str, Any] = to_json(record)
        if isinstance(record, ReloadRecord):
            result = record.result
            priority = ERR if result is ReloadResult.FAILED else WARNING if result is ReloadResult.FALLBACK else INFO
            del fields["result"]
            self.log(priority, f"reload {result}", kind="reload", **fields)
        elif isinstance(record, NoteRecord):
            self.log(INFO, record.text, kind="note")
        elif isinstance(record, DaemonStatus):
            self.log(DEBUG, "status", **fields)
        elif isinstance(record, ErrorRecord):
            del fields["message"]
            self.log(ERR, record.message, kind="error", **fields)
        elif isinstance(record, KexecCallRecord) and record.external:
            # Someone else reloaded kdump (a distro udev rule still active, an
            # admin): the loaded header is no longer the daemon's.
            del fields["external"]
            self.log(WARNING, "kexec call by another process", kind="kexec-call", **fields)


class LoggingBridge(logging.Handler):
    """Routes the stages' ``logging`` records (``kdump_coalesce.*``) through a
    :class:`LogObserver`, so that they too carry a syslog priority prefix (and
    are JSON with ``--log-format json``) instead of Python's bare last-resort
    lines, which journald would file at the default priority."""

    def __init__(self, log: LogObserver) -> None:
        super().__init__(level=logging.DEBUG)
        self.target = log

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            priority = ERR
        elif record.levelno >= logging.WARNING:
            priority = WARNING
        elif record.levelno >= logging.INFO:
            priority = INFO
        else:
            priority = DEBUG
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self.target.log(priority, message, logger=record.name)


def bridge_logging(log: LogObserver, name: str = "kdump_coalesce") -> Callable[[], None]:
    """Install a :class:`LoggingBridge` on logger ``name``: its records go to
    ``log`` and no longer propagate to the root logger.  Returns the function
    that undoes it (the daemon calls it when it stops)."""
    logger = logging.getLogger(name)
    saved = (logger.level, logger.propagate)
    bridge = LoggingBridge(log)
    logger.addHandler(bridge)
    logger.setLevel(logging.DEBUG if log.verbose else logging.INFO)
    logger.propagate = False

    def undo() -> None:
        logger.removeHandler(bridge)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    return undo
