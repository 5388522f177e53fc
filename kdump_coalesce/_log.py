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

from ground.records import Batch
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
        elif kind == "error":
            message = str(fields.get("message", "error"))
            self.log(ERR, message, kind="error", **{k: v for k, v in fields.items() if k != "message"})
        elif kind == "kexec-call" and fields.get("external"):
            # Someone else reloaded kdump (a distro udev rule still active, an
            # admin): the loaded header is no longer the daemon's.
            self.log(WARNING, "kexec call by another process", kind="kexec-call", **{k: v for k, v in fields.items() if k != "external"})


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
