"""The updater's typed errors (all :mod:`ground.errors` subclasses)."""

from __future__ import annotations

from ground.errors import KdumpCoalesceError, InputError, UnavailableError


class SnapshotError(InputError):
    """A live-state input (/proc/iomem, a sysfs file, /proc/kcore) is malformed.

    ``source`` is ``path:line`` when the fault is on one line, else ``path``.
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        super().__init__(f"{path}:{line}" if line is not None else path, message)
        self.path = path
        self.line = line


class HeaderTooLargeError(KdumpCoalesceError):
    """The elfcorehdr would not fit in its segment (or in ELF's e_phnum)."""

    def __init__(self, needed: int, capacity: int, what: str) -> None:
        super().__init__(f"elfcorehdr: {what}: needs {needed} bytes, segment holds {capacity}")
        self.needed = needed
        self.capacity = capacity


class BackendUnavailableError(UnavailableError):
    """The backend asked for cannot run on this host."""


class ReloadError(KdumpCoalesceError):
    """A reload failed (after its retry): kdump may be stale or unloaded."""
