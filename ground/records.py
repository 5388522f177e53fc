"""The typed records stages emit, and their one JSON serialiser.

A record is what one stage tells the others and the outside world:

- the coalescer closes a :class:`Batch` (its net change);
- the updater decides one :class:`ReloadRecord` per batch (loaded, fell back,
  failed or skipped, with its wall time and its window with no crash kernel),
  reports an :class:`ErrorRecord` when kdump may be wrong and a
  :class:`KexecCallRecord` for a kexec call someone else made, and rewrites
  its :class:`UpdaterStatus` (the status file) after every batch;
- the daemon announces a :class:`DaemonStatus` when it is ready and when it
  stops; ``trace`` writes :class:`NoteRecord` records.

Every consumer (the trace file, the log, metrics, sd_notify, the status file
and ``status``) reads these fields by attribute, so a renamed field is a type
error, not a silent "?" on a dashboard.  :func:`to_json` is the one serialiser
(the trace file, the status file, ``--json`` and the JSON log all go through
it): the JSON names are the dataclass field names, plus the properties a
record lists in ``DERIVED``.  :func:`from_json` reads a document back into a
record, naming the field that does not fit.

Whether kdump is correct has one definition, :func:`kdump_correct`; the
updater computes it and every record that carries it says what it computed.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, TypeVar

from .kexec_log import KexecCall
from .ranges import PhysRange

T = TypeVar("T")


class RecordError(ValueError):
    """A JSON document does not fit the record it should be (a field missing or of the wrong type)."""


# -- the serialiser -----------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A record (or anything inside one) as plain JSON values.

    Dataclasses become objects of their fields (``FLATTEN`` fields, mappings,
    are merged into the object; ``DERIVED`` properties are added), enums their
    value, :class:`PhysRange` ``[start, end]`` (half-open), tuples lists.
    Floats are rounded to the microsecond: these are seconds."""
    if isinstance(value, PhysRange):
        return [value.start, value.end]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        flatten: tuple[str, ...] = getattr(value, "FLATTEN", ())
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name in flatten:
                out.update({str(k): to_json(v) for k, v in item.items()})
            else:
                out[f.name] = to_json(item)
        for name in getattr(value, "DERIVED", ()):
            out[name] = to_json(getattr(value, name))
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], doc: Any, where: str = "") -> T:
    """The record ``cls`` from a :func:`to_json` document; unknown keys are
    ignored (a newer writer), a missing or mistyped field is a
    :class:`RecordError` naming it."""
    if not isinstance(doc, Mapping):
        raise RecordError(f"{where or cls.__name__}: expected an object, got {type(doc).__name__}")
    hints = typing.get_type_hints(cls)
    flatten: tuple[str, ...] = getattr(cls, "FLATTEN", ())
    known = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "DERIVED", ()))  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{where}.{f.name}" if where else f.name
        if f.name in flatten:
            kwargs[f.name] = {k: v for k, v in doc.items() if k not in known}
            continue
        if f.name not in doc:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise RecordError(f"{name}: missing")
        kwargs[f.name] = _decode(hints[f.name], doc[f.name], name)
    return cls(**kwargs)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, where)
            except RecordError as exc:
                errors.append(str(exc))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {value!r}")
        args = typing.get_args(tp)
        return {k: _decode(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is Any:
        return value
    if tp is PhysRange:
        if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
            raise RecordError(f"{where}: expected [start, end], got {value!r}")
        try:
            return PhysRange(value[0], value[1])
        except ValueError as exc:
            raise RecordError(f"{where}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise RecordError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from None
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)  # type: ignore[arg-type]
    if tp is float:
        if type(value) not in (int, float):
            raise RecordError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if type(value) is not tp:
            raise RecordError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise RecordError(f"{where}: cannot decode a {tp!r}")


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

    KIND: ClassVar[str] = "batch"
    DERIVED: ClassVar[tuple[str, ...]] = ("needs_update",)

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
        out: dict[str, Any] = to_json(self)
        return out

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




# -- what the updater decides per batch -------------------------------------------


class ReloadResult(enum.StrEnum):
    OK = "ok"  # loaded through the configured backend
    FALLBACK = "fallback"  # loaded, but through the fallback (kexec-fast -> kexec), or kernel mode ended
    FAILED = "failed"  # not loaded after the retry: kdump may be stale or absent
    SKIPPED = "skipped"  # nothing to load (the reason says why)

    @property
    def loaded(self) -> bool:
        return self in (ReloadResult.OK, ReloadResult.FALLBACK)


class WindowKind(enum.StrEnum):
    """How a reload's window with no crash kernel was measured."""

    BPF = "bpf"  # the kexec syscall's enter and exit, from the BPF tracepoints: exact
    LOADER_LIFETIME = "loader-lifetime"  # the loader process's lifetime: an upper bound
    NONE = "none"  # nothing was loaded, so there was no window


class UpdaterState(enum.StrEnum):
    STARTING = "starting"  # before the start-up reconciliation
    OK = "ok"  # the last decision left the header matching the live state
    FAILED = "failed"  # the last reload failed after its retry
    KERNEL = "kernel"  # the kernel owns the header (crash_hotplug reads 1)


def kdump_correct(state: UpdaterState, *, dry_run: bool, loaded: bool | None) -> bool | None:
    """Whether the loaded crash kernel's header is known to match the live
    state: True, False (known not to), or None (unknown).

    The one definition: ``status``, its exit code, the status file, the
    ``kdump_coalesce_kdump_correct`` metric and sd_notify all show what this
    returned, through the records that carry it.  ``loaded`` is
    ``/sys/kernel/kexec_crash_loaded`` (None when unreadable)."""
    if state is UpdaterState.KERNEL:
        return True
    if state is UpdaterState.FAILED:
        return False
    if dry_run:
        return None  # nothing is loaded by us
    if state is UpdaterState.OK:
        return bool(loaded)
    return None


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """One per batch (and one for the start-up reconciliation, ``batch`` 0).

    ``window_s`` is the time with no crash kernel loaded; ``window_kind`` how
    it was measured and ``window_source`` the same for a reader.  The
    ``ranges``/``ram_bytes``/``cpus`` fields describe the header that is
    loaded afterwards (None before the first one).  ``backend_figures`` is a
    backend's own figures (kexec-fast: ``fastpath`` or ``fastpath_error``),
    merged into the JSON object under their own keys."""

    backend: str
    result: ReloadResult
    reason: str
    batch: int
    kdump_correct: bool | None
    wall_s: float = 0.0
    load_s: float = 0.0
    window_s: float = 0.0
    window_kind: WindowKind = WindowKind.NONE
    window_source: str = "none: no reload"
    ranges: int | None = None
    ram_bytes: int | None = None
    cpus: tuple[int, ...] | None = None
    cpus_online: tuple[int, ...] | None = None
    header_sha256: str | None = None
    diff: str | None = None
    merged: int | None = None
    events: int | None = None
    detail: str | None = None
    attempts: int | None = None
    earlier_errors: tuple[str, ...] = ()
    # Removals the events reported while /proc/iomem still listed the memory:
    # how often the state was re-read, and what it still listed at the end.
    rechecks: int = 0
    removed_still_listed: tuple[PhysRange, ...] = ()
    # The kernel's crash hotplug (Linux 6.6+, docs/updater.md "Kernel mode"):
    # ``purpose`` is "hand-over" for the load that gives the header to the
    # kernel, "repair" for one that fixes what the kernel left wrong, ""
    # otherwise; ``kernel_hotplug`` says the load carried
    # KEXEC_UPDATE_ELFCOREHDR; ``repair_causes`` why a repair was made
    # ("removal", "trylock", "elfsz", "update-failed", "kmsg-overrun");
    # ``stale_ranges`` the removed memory the kernel's header still listed;
    # ``crash_hotplug_after`` what the memory crash_hotplug file read after
    # the load (1: the kernel owns the header).
    purpose: str = ""
    kernel_hotplug: bool = False
    repair_causes: tuple[str, ...] = ()
    stale_ranges: tuple[PhysRange, ...] = ()
    crash_hotplug_after: int | None = None
    at: float = 0.0  # Unix time of the decision
    backend_figures: Mapping[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "reload"
    FLATTEN: ClassVar[tuple[str, ...]] = ("backend_figures",)
    DERIVED: ClassVar[tuple[str, ...]] = ("window_exact",)

    @property
    def window_exact(self) -> bool:
        """False when ``window_s`` is only an upper bound."""
        return self.window_kind is not WindowKind.LOADER_LIFETIME

    @property
    def loaded_something(self) -> bool:
        """Whether a load was attempted that had a window (a failed one too; dry-run's are not)."""
        return self.result is not ReloadResult.SKIPPED and self.window_kind is not WindowKind.NONE


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A stage reports that kdump may be wrong (a reload failed after its retry)."""

    stage: str
    message: str
    batch: int | None = None
    kdump_loaded: bool | None = None

    KIND: ClassVar[str] = "error"


@dataclass(frozen=True, slots=True)
class KexecCallRecord:
    """A kexec_load/kexec_file_load call seen by the BPF syscall probes.

    ``external`` is True for a call the daemon did not make (a distro udev
    rule still active, an admin, the distro service restarting): the loaded
    header is then no longer known to be the daemon's."""

    external: bool
    syscall: str
    pid: int
    comm: str
    flags: int
    ret: int
    window_s: float
    enter_ns: int = 0
    exit_ns: int = 0
    note: str = ""

    KIND: ClassVar[str] = "kexec-call"

    @classmethod
    def of(cls, call: KexecCall, *, external: bool, note: str = "") -> KexecCallRecord:
        return cls(
            external=external, syscall=call.syscall, pid=call.pid, comm=call.comm, flags=call.flags, ret=call.ret,
            window_s=call.window_s, enter_ns=call.enter_ns, exit_ns=call.exit_ns, note=note,
        )


@dataclass(frozen=True, slots=True)
class NoteRecord:
    """Free text for a reader of the trace (what ``trace`` chose, and why)."""

    text: str

    KIND: ClassVar[str] = "note"


# -- what the updater says about itself ---------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The last batch, as the status file keeps it."""

    seq: int
    events: int
    reason: str
    merged: int
    describe: str
    at: float


@dataclass(frozen=True, slots=True)
class UpdaterStatus:
    """The status file (``[updater] status-file``), rewritten after every batch;
    ``kdump-coalesce status`` reads it back.  ``format`` changes when a field
    changes meaning."""

    FORMAT: ClassVar[int] = 1

    format: int
    pid: int
    running: bool
    started_at: float
    updated_at: float
    backend: str
    backend_why: str
    description: str
    loader: str
    state: UpdaterState
    kdump_loaded: bool | None
    kdump_correct: bool | None
    dry_run: bool
    last_batch: BatchSummary | None
    last_reload: ReloadRecord | None
    last_error: str | None
    header: Mapping[str, Any] | None  # ElfCoreHeader.summary() of what is loaded
    missing: tuple[tuple[str, str], ...]  # inputs the snapshot could not read: (path, consequence)
    counts: Mapping[str, int]
    status_file_error: str | None = None
    # Who keeps the header current on a kernel with crash hotplug (docs/updater.md):
    # "stand-aside" (the image had the kernel's hotplug support when the daemon
    # started), "handed-over" (the daemon loaded it with KEXEC_UPDATE_ELFCOREHDR),
    # "off" ([updater] kernel-hotplug = "off"), "unavailable" (supported, but no
    # hand-over possible here: the daemon manages), "unsupported" (no
    # CONFIG_CRASH_HOTPLUG), "" (unknown: an older writer).
    kernel_hotplug: str = ""


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """The daemon is ready (probes attached, kdump reconciled: sd_notify
    READY=1 listens for this) or stopping."""

    state: str  # "ready" | "stopping"
    updater: UpdaterStatus
    items: int | None = None
    batches: int | None = None
    deliveries: int | None = None

    KIND: ClassVar[str] = "status"


Record: TypeAlias = ReloadRecord | ErrorRecord | KexecCallRecord | NoteRecord | DaemonStatus
"""What :meth:`ground.observer.Observer.on_record` receives."""

RECORD_KINDS: tuple[str, ...] = tuple(r.KIND for r in (Batch, ReloadRecord, ErrorRecord, KexecCallRecord, NoteRecord, DaemonStatus))
