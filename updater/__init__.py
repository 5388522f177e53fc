"""The updater: live state -> elfcorehdr -> one reload per batch.

Public surface:

- :func:`read_snapshot` / :class:`SystemSnapshot`: the live state (events are
  hints, the snapshot is the truth), JSON save/load for bug reports;
- :class:`ElfCoreHeader` (+ :class:`HeaderOptions`, :func:`diff_headers`,
  :func:`diff_snapshots`): the header kexec-tools would build, as bytes;
- :func:`open_updater` -> :class:`Updater`, the :class:`coalescer.BatchConsumer`
  the daemon runs: ``reconcile()``, ``consume(batch)``, ``describe()``,
  ``status()``, ``aclose()``;
- :data:`SECTIONS`: the ``[updater]`` and ``[kexec]`` config sections;
- :class:`LoaderBackend` / :class:`LoadRequest` / :class:`LoadOutcome`: what a
  backend (``updater.fastpath``'s too) implements.
"""

from ._backends import DryRunBackend, HostCapabilities, KexecCliBackend, choose_backend, plan_kernel_hotplug
from ._config import BACKENDS, SECTIONS, KexecSettings, UpdaterSettings
from ._distro import KexecCommand, resolve_kexec_command
from ._elfcorehdr import (
    ElfCoreHeader,
    HeaderDiff,
    HeaderOptions,
    ProgramHeader,
    diff_headers,
    diff_snapshots,
    segment_size_for,
)
from ._loader import LoaderBackend, LoadOutcome, LoadRequest, SegmentStager
from ._errors import BackendUnavailableError, HeaderTooLargeError, ReloadError, SnapshotError
from ._snapshot import CpuNote, KernelText, MissingInput, RamRange, SystemSnapshot, read_snapshot
from ._status import daemon_alive, format_status, read_status, status_exit, status_json
from ._updater import ReloadFailed, Updater, open_updater

__all__ = [
    "BACKENDS",
    "SECTIONS",
    "BackendUnavailableError",
    "CpuNote",
    "DryRunBackend",
    "ElfCoreHeader",
    "HeaderDiff",
    "HeaderOptions",
    "HeaderTooLargeError",
    "HostCapabilities",
    "KernelText",
    "KexecCliBackend",
    "KexecCommand",
    "KexecSettings",
    "LoadOutcome",
    "LoadRequest",
    "SegmentStager",
    "LoaderBackend",
    "MissingInput",
    "ProgramHeader",
    "RamRange",
    "ReloadError",
    "ReloadFailed",
    "SnapshotError",
    "SystemSnapshot",
    "Updater",
    "UpdaterSettings",
    "choose_backend",
    "plan_kernel_hotplug",
    "diff_headers",
    "diff_snapshots",
    "open_updater",
    "read_snapshot",
    "daemon_alive",
    "format_status",
    "read_status",
    "status_exit",
    "status_json",
    "resolve_kexec_command",
    "segment_size_for",
]
