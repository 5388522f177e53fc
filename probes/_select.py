"""``--source`` specifications -> event sources."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdump_coalesce.errors import ConfigError, UnavailableError

from ._kexec_log import KexecCallLog
from ._replay import replay_scenario, replay_trace
from ._source import EventSource
from .tracefile import TraceReader

SOURCE_SPECS = "auto|bpf|uevent|replay:FILE|scenario:NAME[:ARGS]"


@dataclass
class SourceSelection:
    sources: list[EventSource]
    notes: list[str] = field(default_factory=list)  # what was chosen and why, for the log
    block_size: int | None = None
    reader: TraceReader | None = None  # for replay: header and lenient skip count


def open_sources(
    spec: str,
    *,
    speed: float | None = None,
    lenient: bool = False,
    kexec_log: KexecCallLog | None = None,
) -> SourceSelection:
    if spec.startswith("replay:"):
        path = spec.removeprefix("replay:")
        if not path:
            raise ConfigError("--source", "replay: needs a file, e.g. replay:/var/tmp/trace.jsonl")
        source, reader = replay_trace(path, speed=speed, lenient=lenient)
        notes = [f"replaying {path} ({len(source.items)} items{', lenient' if lenient else ''})"]
        if reader.skipped:
            notes.append(f"skipped {reader.skipped} malformed line(s) in {path}")
        return SourceSelection([source], notes, reader.header.block_size if reader.header else None, reader)
    if spec.startswith("scenario:"):
        source, block = replay_scenario(spec.removeprefix("scenario:"), speed=speed)
        return SourceSelection([source], [f"scenario {source.name} ({len(source.items)} events)"], block)
    if spec in ("auto", "bpf", "uevent"):
        raise UnavailableError(f"source {spec}", "live sources are not built into this version yet")
    raise ConfigError("--source", f"unknown source {spec!r} (expected {SOURCE_SPECS})")
