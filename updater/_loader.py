"""What every loader backend implements: a :class:`LoadRequest` in, a :class:`LoadOutcome` out.

Its own module so that the backends (``updater._backends``: kexec, dry-run;
``updater.fastpath``: kexec-fast) all import it and the updater imports them,
with no cycle and no lookup by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ._elfcorehdr import ElfCoreHeader, HeaderDiff
from ._snapshot import SystemSnapshot


@dataclass(frozen=True)
class LoadRequest:
    seq: int
    snapshot: SystemSnapshot
    header: ElfCoreHeader
    diff: HeaderDiff
    reason: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadOutcome:
    ok: bool
    detail: str
    # CLOCK_MONOTONIC (time.monotonic_ns) bounds of everything that could have
    # made the kexec syscall: the loader process's lifetime, or the syscall
    # itself for an in-process loader.  The updater looks up the exact
    # syscall window in the KexecCallLog between them, by pid.
    start_ns: int = 0
    end_ns: int = 0
    pids: tuple[int, ...] = ()
    changes_kdump: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class LoaderBackend(Protocol):
    name: str
    # The syscall whose header semantics apply ("kexec_load",
    # "kexec_file_load"); "none" for dry-run.
    load_path: str
    # False for dry-run: nothing is loaded, there is no window.
    changes_kdump: bool
    def describe(self) -> str: ...

    async def load(self, request: LoadRequest) -> LoadOutcome: ...



class SegmentStager(Protocol):
    def stage(self, snapshot: SystemSnapshot, header: ElfCoreHeader) -> tuple[dict[str, Any], dict[str, bytes]]: ...
