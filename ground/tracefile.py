"""The trace format: JSON lines, one record per line, writer and reader.

The first line is a header::

    {"type": "header", "format": "kdump-coalesce-trace", "version": 1,
     "host": "...", "kernel": "6.1.0-...", "block_size": 134217728, "created": 1700000000.0}

followed by records, each with a ``type``:

- ``event``: ``{"type": "event", "t": NS, "kind": "memory", "action": "online",
  "start": N, "size": N, "source": "uevent", "ret": null}`` (CPU events carry
  ``"cpu": N`` instead of start/size);
- ``lost``: ``{"type": "lost", "t": NS, "source": "bpf", "count": N|null, "reason": "..."}``;
- observations written by the daemon, ``trace`` and ``replay``: the records
  of :mod:`ground.records` (``batch``, ``reload``, ``error``, ``kexec-call``,
  ``note``, ``status``) as :func:`ground.records.to_json` writes them, plus
  ``clock`` (the coalescer's clock, seconds, like a batch's ``closed_at``).
  They are carried along for the reader of the file and skipped by replay,
  which re-derives batches from the events.

A reader error names the file and line.  ``lenient=True`` skips bad lines and
counts them instead.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import TraceFormatError
from .events import Action, EventsLost, HotplugEvent, Kind, SourceItem
from .records import RECORD_KINDS, Batch, Record, to_json

FORMAT_NAME = "kdump-coalesce-trace"
FORMAT_VERSION = 1
OBSERVATION_TYPES = frozenset(RECORD_KINDS)


@dataclass(frozen=True, slots=True)
class TraceHeader:
    host: str
    kernel: str
    block_size: int
    created: float
    version: int = FORMAT_VERSION

    @classmethod
    def for_this_host(cls, block_size: int) -> TraceHeader:
        uname = platform.uname()
        return cls(host=uname.node, kernel=uname.release, block_size=block_size, created=time.time())

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "header",
            "format": FORMAT_NAME,
            "version": self.version,
            "host": self.host,
            "kernel": self.kernel,
            "block_size": self.block_size,
            "created": self.created,
        }


def item_to_json(item: SourceItem) -> dict[str, Any]:
    if isinstance(item, EventsLost):
        return {"type": "lost", "t": item.ts_ns, "source": item.source, "count": item.count, "reason": item.reason}
    record: dict[str, Any] = {"type": "event", "t": item.ts_ns, "kind": str(item.kind), "action": str(item.action)}
    if item.kind is Kind.MEMORY:
        record["start"] = item.start
        record["size"] = item.size
    else:
        record["cpu"] = item.cpu
    record["source"] = item.source
    record["ret"] = item.ret
    return record


def _int(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    if type(value) is not int:
        raise ValueError(f"field {key!r} must be an integer, got {value!r}")
    return value


def item_from_json(record: Mapping[str, Any]) -> SourceItem:
    """Decode one ``event`` or ``lost`` record; raises ValueError with the reason."""
    kind = record.get("type")
    if kind == "lost":
        count = record.get("count")
        if count is not None and type(count) is not int:
            raise ValueError(f"field 'count' must be an integer or null, got {count!r}")
        return EventsLost(
            ts_ns=_int(record, "t"), source=str(record.get("source", "?")), count=count, reason=str(record.get("reason", ""))
        )
    if kind != "event":
        raise ValueError(f"not an event record: type {kind!r}")
    try:
        ev_kind = Kind(str(record.get("kind")))
    except ValueError:
        raise ValueError(f"unknown kind {record.get('kind')!r}") from None
    try:
        action = Action(str(record.get("action")))
    except ValueError:
        raise ValueError(f"unknown action {record.get('action')!r}") from None
    ret = record.get("ret")
    if ret is not None and type(ret) is not int:
        raise ValueError(f"field 'ret' must be an integer or null, got {ret!r}")
    source = record.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError("field 'source' must be a non-empty string")
    if ev_kind is Kind.MEMORY:
        return HotplugEvent(
            ev_kind, action, _int(record, "t"), source, start=_int(record, "start"), size=_int(record, "size"), ret=ret
        )
    return HotplugEvent(ev_kind, action, _int(record, "t"), source, cpu=_int(record, "cpu"), ret=ret)


class TraceWriter:
    """Writes a trace; each record is one ``write`` of one line, flushed, so a
    reader (or a crash) never sees half a record except the very last one."""

    def __init__(self, stream: IO[str], header: TraceHeader, *, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._write(header.to_json())

    def _write(self, record: Mapping[str, Any]) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def item(self, item: SourceItem) -> None:
        self._write(item_to_json(item))

    def observation(self, record: Batch | Record, *, clock: float | None = None) -> None:
        """A record, as ``{"type": KIND, **to_json(record)}`` (and ``clock`` when given)."""
        line: dict[str, Any] = {"type": record.KIND, **to_json(record)}
        if clock is not None:
            line["clock"] = round(clock, 6)
        self._write(line)

    def close(self) -> None:
        if self._owns_stream:
            self._stream.close()
        else:
            self._stream.flush()


@dataclass
class TraceReader:
    """Reads a trace file.  Iterate for the events; ``header`` is set once the
    first line has been read; ``skipped`` counts bad lines in lenient mode."""

    path: str
    lenient: bool = False
    header: TraceHeader | None = None
    skipped: int = 0
    observations: int = 0
    errors: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[SourceItem]:
        try:
            stream = open(self.path, encoding="utf-8", errors="strict")  # noqa: SIM115
        except OSError as exc:
            raise TraceFormatError(self.path, 0, f"cannot open: {exc.strerror}") from exc
        with stream:
            yield from self._read(stream)

    def read_all(self) -> list[SourceItem]:
        return list(self)

    def _bad(self, lineno: int, message: str) -> None:
        if not self.lenient:
            raise TraceFormatError(self.path, lineno, message)
        self.skipped += 1
        self.errors.append(f"{self.path}:{lineno}: {message}")

    def _read(self, stream: IO[str]) -> Iterator[SourceItem]:
        lineno = 0
        try:
            for lineno, line in enumerate(stream, start=1):  # noqa: B007
                if not line.endswith("\n"):
                    # A final line without its newline is what a writer that was
                    # killed mid-write leaves: call it truncated, not garbage.
                    self._bad(lineno, "truncated record (no end of line)")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    self._bad(lineno, f"not JSON: {exc.msg} at column {exc.colno}")
                    continue
                if not isinstance(record, dict):
                    self._bad(lineno, "record is not a JSON object")
                    continue
                if lineno == 1 or self.header is None:
                    if lineno != 1 or record.get("type") != "header":
                        # Without a header we cannot trust anything: even lenient
                        # mode does not guess the format.
                        raise TraceFormatError(self.path, lineno, "missing trace header (is this a kdump-coalesce trace?)")
                    self.header = self._parse_header(lineno, record)
                    continue
                rtype = record.get("type")
                if rtype in OBSERVATION_TYPES:
                    self.observations += 1
                    continue
                try:
                    item = item_from_json(record)
                except ValueError as exc:
                    self._bad(lineno, str(exc))
                    continue
                yield item
        except UnicodeDecodeError as exc:
            raise TraceFormatError(self.path, lineno + 1, f"not UTF-8 text: {exc.reason}") from exc
        if self.header is None:
            raise TraceFormatError(self.path, lineno, "empty trace file (no header)")

    def _parse_header(self, lineno: int, record: Mapping[str, Any]) -> TraceHeader:
        if record.get("format") != FORMAT_NAME:
            raise TraceFormatError(self.path, lineno, f"unknown format {record.get('format')!r}")
        version = record.get("version")
        if version != FORMAT_VERSION:
            raise TraceFormatError(self.path, lineno, f"unsupported trace version {version!r} (this reads {FORMAT_VERSION})")
        block_size = record.get("block_size")
        if type(block_size) is not int or block_size <= 0:
            raise TraceFormatError(self.path, lineno, f"header block_size must be a positive integer, got {block_size!r}")
        created = record.get("created", 0.0)
        return TraceHeader(
            host=str(record.get("host", "")),
            kernel=str(record.get("kernel", "")),
            block_size=block_size,
            created=float(created) if isinstance(created, (int, float)) else 0.0,
            version=version,
        )


def open_trace_for_writing(path: str, header: TraceHeader) -> TraceWriter:
    """Create ``path`` (mode 0644, line-buffered) and write the header."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    return TraceWriter(os.fdopen(fd, "w", buffering=1, encoding="utf-8"), header, owns_stream=True)
