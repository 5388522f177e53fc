"""The typed records stages emit, and their one JSON serialiser.

A record is what one stage tells the others and the outside world: the
coalescer closes a :class:`Batch`; the updater decides a :class:`ReloadRecord`
per batch, reports an :class:`ErrorRecord` when kdump may be wrong, a
:class:`KexecCallRecord` for a kexec call someone else made, and its
:class:`UpdaterStatus` after each batch; the daemon announces a
:class:`DaemonStatus` when it is ready and when it stops.

Every consumer (the trace file, the log, metrics, sd_notify, the status file
and ``status``) reads the same fields by attribute, so a renamed field is a
type error, not a silent "?" in a dashboard.  :func:`to_json` is the one
serialiser: the trace file, the status file and ``--json`` outputs all go
through it, so the JSON names are the dataclass field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ranges import PhysRange


@dataclass(frozen=True, slots=True)
class Batch:
    """A closed batch: the net change of a burst of events.

    ``first_ns``/``last_ns`` are event timestamps (the sources' monotonic
    clock); ``opened_at``/``closed_at`` are the coalescer's clock (seconds,
    trio time).  ``merged`` counts closed batches folded into this one while the
    consumer was busy (1 when none was).
    """

    seq: int
    events: int
    first_ns: int
    last_ns: int
    opened_at: float
    closed_at: float
    reason: str
    online: tuple[PhysRange, ...]
    offline: tuple[PhysRange, ...]
    added: tuple[PhysRange, ...]
    removed: tuple[PhysRange, ...]
    cpus_online: tuple[int, ...]
    cpus_offline: tuple[int, ...]
    cpus_added: tuple[int, ...]
    cpus_removed: tuple[int, ...]
    rescan: bool
    urgent: bool
    lost: int
    failed: int
    sources: tuple[str, ...]
    merged: int = 1

    @property
    def net_empty(self) -> bool:
        return not (
            self.online
            or self.offline
            or self.added
            or self.removed
            or self.cpus_online
            or self.cpus_offline
            or self.cpus_added
            or self.cpus_removed
        )

    @property
    def needs_update(self) -> bool:
        """Whether the updater has to look at the live state at all."""
        return self.rescan or not self.net_empty

    def to_json(self) -> dict[str, Any]:
        def spans(rs: tuple[PhysRange, ...]) -> list[list[int]]:
            return [[r.start, r.end] for r in rs]

        return {
            "seq": self.seq,
            "events": self.events,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "opened_at": round(self.opened_at, 6),
            "closed_at": round(self.closed_at, 6),
            "reason": self.reason,
            "online": spans(self.online),
            "offline": spans(self.offline),
            "added": spans(self.added),
            "removed": spans(self.removed),
            "cpus_online": list(self.cpus_online),
            "cpus_offline": list(self.cpus_offline),
            "cpus_added": list(self.cpus_added),
            "cpus_removed": list(self.cpus_removed),
            "rescan": self.rescan,
            "urgent": self.urgent,
            "lost": self.lost,
            "failed": self.failed,
            "sources": list(self.sources),
            "merged": self.merged,
            "needs_update": self.needs_update,
        }

    def describe(self) -> str:
        """One greppable line for logs and ``replay``."""

        def gib(rs: tuple[PhysRange, ...]) -> str:
            total = sum(r.size for r in rs)
            return f"{len(rs)} range(s) {total / (1 << 30):g} GiB"

        parts = [f"batch {self.seq}", f"events={self.events}", f"reason={self.reason}"]
        for name, rs in (("online", self.online), ("offline", self.offline), ("added", self.added), ("removed", self.removed)):
            if rs:
                parts.append(f"{name}=[{' '.join(str(r) for r in rs)}] ({gib(rs)})")
        for name, cpus in (
            ("cpus_online", self.cpus_online),
            ("cpus_offline", self.cpus_offline),
            ("cpus_added", self.cpus_added),
            ("cpus_removed", self.cpus_removed),
        ):
            if cpus:
                parts.append(f"{name}={','.join(map(str, cpus))}")
        if self.rescan:
            parts.append(f"rescan (lost={self.lost})")
        if self.failed:
            parts.append(f"failed={self.failed}")
        if self.merged > 1:
            parts.append(f"merged={self.merged}")
        if not self.needs_update:
            parts.append("net-empty: no reload needed")
        return " ".join(parts)


