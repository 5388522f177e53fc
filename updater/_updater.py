"""The updater: one batch in, at most one reload out.

For each batch the coalescer hands over (never two at once; batches that close
during a reload are merged upstream into the next one, so nothing is queued
here), the updater:

1. in ``kernel`` mode, re-checks ``crash_hotplug``: while it reads 1 the kernel
   owns the header and the batch is only recorded;
2. skips a batch whose net change is empty (unless events were lost);
3. reads a :class:`SystemSnapshot` (the truth: events are hints), builds the
   :class:`ElfCoreHeader` and diffs it against the one known to be loaded; an
   unchanged header is not reloaded ("skipped", with the reason);
4. reloads through the backend, measuring the wall time and the window with
   no crash kernel (exact from the :class:`KexecCallLog` when BPF fills it,
   else bounded by the loader process's lifetime); a failure is retried once
   (through the fallback backend when there is one: the fast path falls back
   to kexec-tools), then reported loudly: an ``error`` record, an error log
   line, and ``status`` saying kdump is not known to be correct.

On a kernel with crash hotplug (Linux 6.6+) the updater is in *kernel mode*
when the kernel owns the header: it stands aside when the loaded image has
the kernel's hotplug support, or first *hands over* (one kexec_load from the
fast path with KEXEC_UPDATE_ELFCOREHDR), then watches: it *repairs* with one
load that keeps the kernel's hotplug support when the live state no longer
holds memory the kernel's header lists (the kernel rebuilds at online and
offline, never at removal) or when the kernel log says an update was
skipped (probes/_kmsg.py).  docs/updater.md, "Kernel mode", has the rules.

Every outcome is one :class:`ground.records.ReloadRecord` for the observer
(the trace file, the log, metrics, sd_notify), and the status file (an
:class:`ground.records.UpdaterStatus`) is rewritten atomically after each
batch.

Inputs it is given, not finds: the settings, the backend (and its fallback),
the observer, and the :class:`ground.kexec_log.KexecCallLog` that the BPF
source fills (the daemon builds it once and hands it to both; an empty, inactive
log means the windows are bounded by the loader's lifetime).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from ground.errors import ConfigError, InputError, KdumpCoalesceError, UnavailableError
from ground.files import atomic_write
from ground.kexec_log import KexecCall, KexecCallLog
from ground.observer import Observer
from ground.ranges import PhysRange, subtract_all
from ground.records import (
    Batch,
    BatchSummary,
    ErrorRecord,
    KexecCallRecord,
    ReloadRecord,
    ReloadResult,
    UpdaterState,
    UpdaterStatus,
    WindowKind,
    kdump_correct,
    to_json,
)

from probes import kernel_update_causes

from . import fastpath
from ._backends import (
    HAND_OVER,
    HANDED_OVER,
    KERNEL_HOTPLUG_UNAVAILABLE,
    DryRunBackend,
    HostCapabilities,
    KexecCliBackend,
    choose_backend,
    plan_kernel_hotplug,
)
from ._config import KexecSettings, UpdaterSettings
from ._distro import resolve_kexec_command
from ._elfcorehdr import ElfCoreHeader, HeaderDiff, HeaderOptions, diff_headers
from ._errors import BackendUnavailableError, ReloadError
from ._loader import LoaderBackend, LoadOutcome, LoadRequest, SegmentStager
from ._snapshot import KEXEC_LOCK_WAIT_S, SystemSnapshot, kexec_lock_held, read_snapshot
from ._status import read_status

log = logging.getLogger("kdump_coalesce.updater")

STATUS_FORMAT = UpdaterStatus.FORMAT
# How long to wait for the BPF source to deliver the loader's syscall exit
# after the loader process is gone (ring buffer latency, not syscall time).
KEXEC_LOG_GRACE_S = 1.0
# crash_hotplug reads 0 while a load holds the kexec lock
# (crash_check_hotplug_support() trylocks it and answers 0 when it cannot):
# re-read a few times, and for as long as a load is seen holding the lock
# (_snapshot.kexec_lock_held, up to KEXEC_LOCK_WAIT_S), before concluding that
# the kernel no longer owns the header.  Concluding it wrongly would hand the
# header over again on top of someone else's load in progress.
HOTPLUG_RECHECKS = 3
HOTPLUG_RECHECK_DELAY_S = 0.1

SnapshotReader = Callable[[str], SystemSnapshot]


class Updater:
    """A :class:`coalescer.BatchConsumer` that keeps the crash kernel current."""

    def __init__(
        self,
        settings: UpdaterSettings,
        backend_name: str,
        why: str,
        backend: LoaderBackend | None,
        observer: Observer,
        kexec_log: KexecCallLog,
        *,
        fallback: LoaderBackend | None = None,
        reader: SnapshotReader = read_snapshot,
        repairer: LoaderBackend | None = None,
        kernel_hotplug: str = "",
    ) -> None:
        self.settings = settings
        self.backend_name = backend_name
        self.why = why
        self.backend = backend
        self.fallback = fallback
        self.observer = observer
        self.kexec_log = kexec_log
        self.reader = reader
        self.loaded: ElfCoreHeader | None = None
        self.started_at = time.time()
        self.running = True
        self.state = UpdaterState.STARTING
        self.counts = {"batches": 0, "reloads": 0, "ok": 0, "failed": 0, "skipped": 0, "fallback": 0, "retries": 0, "external_kexec_calls": 0}
        # Kernel mode (backend None): the loader of the hand-over and of every
        # repair, one that keeps the kernel's hotplug support (the fast path
        # with KEXEC_UPDATE_ELFCOREHDR), or None (then the fallback repairs).
        self.repairer = repairer
        # UpdaterStatus.kernel_hotplug; "hand-over" means planned, not made yet.
        self.kernel_hotplug = kernel_hotplug
        # The System RAM the kernel's header is taken to list: the live state
        # at the last load or kernel-mode batch (the kernel rebuilds on every
        # online/offline, and never drops memory at its removal).
        self._kernel_ram: tuple[PhysRange, ...] = ()
        if self.kernel_mode:
            self.counts.update({"hand_overs": 0, "repairs": 0})
        self.last_batch: BatchSummary | None = None
        self.last_reload: ReloadRecord | None = None
        self.last_error: str | None = None
        self.last_snapshot: SystemSnapshot | None = None
        self._own_pids: set[int] = set()
        self._calls_seen = 0
        self._status_error: str | None = None

    # -- public surface -----------------------------------------------------------

    def describe(self) -> str:
        return f"{self.backend_name}: {self.why}"

    @property
    def kernel_mode(self) -> bool:
        return self.backend is None

    def header_options(self, backend: LoaderBackend | None = None) -> HeaderOptions:
        backend = backend or self.backend
        return HeaderOptions.for_settings(self.settings, backend.load_path if backend is not None else "kernel")

    async def reconcile(self) -> None:
        """Start-up: build the header from the live state and load it unless
        what is loaded is known to match.  Errors propagate (the daemon exits
        non-zero without touching the loaded kdump)."""
        t0 = time.monotonic()
        snapshot = await self._snapshot()
        if self.kernel_mode:
            if self.kernel_hotplug == HAND_OVER:
                ok = await self._kernel_load(0, snapshot, f"start-up hand-over: {self.why}", t0, purpose="hand-over")
                self.write_status()
                if not ok:
                    raise ReloadFailed(self.last_error or "start-up hand-over failed")
                return
            self.state = UpdaterState.KERNEL
            self._kernel_ram = _ram_of(snapshot)
            self._record(ReloadResult.SKIPPED, "start-up: the kernel owns the elfcorehdr (crash_hotplug reads 1)", 0, t0, snapshot=snapshot)
            self.write_status()
            return
        header = self._build(snapshot)
        previous = self._previous_loaded_sha()
        if (
            self.backend is not None
            and self.backend.changes_kdump
            and snapshot.kexec_crash_loaded
            and previous is not None
            and previous == header.sha256
        ):
            self.loaded = header
            self.state = UpdaterState.OK
            self._record(ReloadResult.SKIPPED, "start-up: the loaded header matches the live state (previous run's status file)", 0, t0, snapshot=snapshot, header=header)
            self.write_status()
            return
        reason = "start-up reconciliation: what is loaded is not known to match the live state"
        ok = await self._reload(0, snapshot, header, diff_headers(None, header), reason, t0)
        self.write_status()
        if not ok and self.backend is not None and self.backend.changes_kdump:
            raise ReloadFailed(self.last_error or "start-up reload failed")

    async def consume(self, batch: Batch) -> None:
        t0 = time.monotonic()
        self.counts["batches"] += 1
        self.last_batch = BatchSummary(batch.seq, batch.events, batch.reason, batch.merged, batch.describe(), time.time())
        self._note_external_calls()
        try:
            await self._consume(batch, t0)
        finally:
            self.write_status()

    @property
    def dry_run(self) -> bool:
        return isinstance(self.backend, DryRunBackend)

    def kdump_correct(self, loaded: bool | None = None) -> bool | None:
        """:func:`ground.records.kdump_correct` for this updater's state."""
        if loaded is None:
            loaded = self._kexec_crash_loaded()
        return kdump_correct(self.state, dry_run=self.dry_run, loaded=loaded)

    def status(self) -> UpdaterStatus:
        loaded = self._kexec_crash_loaded()
        header = self.loaded.summary() if self.loaded else None
        if header is not None and self.loaded is not None:
            header["ram"] = [str(r) for r in self.loaded.ram_ranges]
        return UpdaterStatus(
            format=STATUS_FORMAT,
            pid=os.getpid(),
            running=self.running,
            started_at=self.started_at,
            updated_at=time.time(),
            backend=self.backend_name,
            backend_why=self.why,
            description=self.describe(),
            loader=self.backend.describe() if self.backend else self._kernel_loader(),
            state=self.state,
            kdump_loaded=loaded,
            kdump_correct=self.kdump_correct(loaded),
            dry_run=self.dry_run,
            last_batch=self.last_batch,
            last_reload=self.last_reload,
            last_error=self.last_error,
            header=header,
            missing=tuple((m.path, m.consequence) for m in self.last_snapshot.missing) if self.last_snapshot else (),
            counts=dict(self.counts),
            status_file_error=self._status_error,
            kernel_hotplug=self.kernel_hotplug,
        )

    def _kernel_loader(self) -> str:
        repairer = self.repairer or self.fallback
        return "the kernel (CONFIG_CRASH_HOTPLUG)" + (f"; hand-over and repairs through {repairer.describe()}" if repairer else "")

    def write_status(self) -> None:
        path = Path(self.settings.status_file)
        try:
            atomic_write(path, (json.dumps(to_json(self.status()), indent=1) + "\n").encode())
            self._status_error = None
        except OSError as exc:
            message = f"{path}: cannot write status: {exc.strerror or exc}"
            if self._status_error != message:
                log.warning("%s", message)
            self._status_error = message

    async def aclose(self) -> None:
        """Stop: nothing is unloaded (kdump stays loaded); the status file says
        the daemon stopped."""
        self.running = False
        self.write_status()

    # -- batches ------------------------------------------------------------------

    async def _consume(self, batch: Batch, t0: float) -> None:
        if self.kernel_mode:
            owner = await self._kernel_still_owns()
            if owner:
                await self._kernel_batch(batch, owner, t0)
                return
            if self._can_hand_over():
                # The image was replaced without the kernel's hotplug support
                # (an unload, a distro reload with plain kexec -p): hand over again.
                try:
                    snapshot = await self._snapshot()
                except (KdumpCoalesceError, OSError) as exc:
                    self._fail(batch.seq, t0, f"cannot read the live state: {exc}", batch=batch)
                    return
                log.warning("batch %d: crash_hotplug reads 0 in kernel mode: handing the header to the kernel again", batch.seq)
                reason = (
                    f"batch {batch.seq}: crash_hotplug reads 0 in kernel mode (the image was replaced or unloaded without "
                    "hotplug support): hand-over again"
                )
                await self._kernel_load(batch.seq, snapshot, reason, t0, purpose="hand-over", batch=batch)
                return
            if not await self._leave_kernel_mode(batch, t0):
                return
        if not batch.needs_update:
            self._record(ReloadResult.SKIPPED, "net-empty batch (changes cancelled out, no events lost)", batch.seq, t0, batch=batch)
            return
        try:
            snapshot = await self._snapshot()
            header = self._build(snapshot)
            snapshot, header, rechecks, still = await self._await_removals(batch, snapshot, header)
        except (KdumpCoalesceError, OSError) as exc:
            self._fail(batch.seq, t0, f"cannot build the header: {exc}", batch=batch)
            return
        found: dict[str, Any] = {"rechecks": rechecks, "removed_still_listed": still} if rechecks else {}
        diff = diff_headers(self.loaded, header)
        if self.loaded is not None and diff.empty:
            why = "header unchanged"
            if batch.online or batch.offline or batch.added or batch.removed:
                why += " (the live state does not show the batch's memory changes: events are hints)"
            elif batch.cpus_online or batch.cpus_offline:
                why += f" (CPU notes follow {header.options.cpu_notes if header.options else 'present'} CPUs; online/offline changes nothing loaded)"
            if still:
                why += (
                    f"; the events say {', '.join(map(str, still))} was removed, but /proc/iomem still lists it after "
                    f"{rechecks} re-read(s) over {self.settings.removal_recheck:g} s: the state decides, so it stays in the header"
                )
            self._record(ReloadResult.SKIPPED, why, batch.seq, t0, batch=batch, snapshot=snapshot, header=header, diff=diff, extra=found)
            return
        await self._reload(batch.seq, snapshot, header, diff, f"batch {batch.seq}: {diff.describe()}", t0, batch=batch, extra=found)

    async def _await_removals(
        self, batch: Batch, snapshot: SystemSnapshot, header: ElfCoreHeader
    ) -> tuple[SystemSnapshot, ElfCoreHeader, int, tuple[PhysRange, ...]]:
        """Re-read the live state while it still lists memory the batch's
        events say was removed, for at most ``removal_recheck`` seconds.

        A ``remove`` can reach us before the kernel has released the resource:
        the BPF probe fires on entry to the remove path, and a batch may close
        (``urgent_quiet``) while an ACPI eject of a big DIMM is still walking
        its blocks.  Loading then would keep the gone memory in the header,
        which is the worst thing the header can say; waiting a bounded time and
        reading again is cheap.  Events stay hints: when the state still lists
        the memory at the end, it stays in the header and the record says so.
        Returns the snapshot and header to use, the number of re-reads, and
        the removed ranges still listed."""
        still = _still_listed(batch.removed, header)
        if not still:
            return snapshot, header, 0, ()
        rechecks = 0
        with trio.move_on_after(self.settings.removal_recheck):
            while still:
                await trio.sleep(self.settings.removal_recheck_interval)
                snapshot = await self._snapshot()
                header = self._build(snapshot)
                rechecks += 1
                still = _still_listed(batch.removed, header)
        if still:
            log.warning(
                "batch %d: removed memory %s is still System RAM in /proc/iomem after %d re-read(s); keeping it in the header",
                batch.seq, ", ".join(map(str, still)), rechecks,
            )
        return snapshot, header, rechecks, still

    async def _snapshot(self) -> SystemSnapshot:
        snapshot = await trio.to_thread.run_sync(self.reader, self.settings.snapshot_root)
        self.last_snapshot = snapshot
        return snapshot

    def _build(self, snapshot: SystemSnapshot, backend: LoaderBackend | None = None) -> ElfCoreHeader:
        return ElfCoreHeader.build(snapshot, self.header_options(backend or self.backend))

    async def _reload(
        self,
        seq: int,
        snapshot: SystemSnapshot,
        header: ElfCoreHeader,
        diff: HeaderDiff,
        reason: str,
        t0: float,
        batch: Batch | None = None,
        extra: Mapping[str, Any] | None = None,
        primary: LoaderBackend | None = None,
    ) -> bool:
        first = primary or self.backend
        assert first is not None
        attempts: list[tuple[LoaderBackend, str]] = [(first, "")]
        if self.fallback is not None and self.fallback is not first:
            attempts.append((self.fallback, "fallback"))
        else:
            attempts.append((first, "retry"))
        errors: list[str] = []
        failed_records: dict[str, Any] = dict(extra or {})
        for index, (backend, kind) in enumerate(attempts):
            if kind == "retry":
                self.counts["retries"] += 1
                await trio.sleep(self.settings.retry_delay)
            if backend is not self.backend:
                header = self._build(snapshot, backend)
            request = LoadRequest(seq, snapshot, header, diff, reason, {"prepare_s": round(time.monotonic() - t0, 6)})
            outcome = await backend.load(request)
            self._own_pids.update(outcome.pids)
            window = await self._window(outcome)
            if outcome.ok:
                self.loaded = header
                self.state = UpdaterState.OK
                self.last_error = None
                result = ReloadResult.FALLBACK if kind == "fallback" else ReloadResult.OK
                figures: dict[str, Any] = {"detail": outcome.detail, "attempts": index + 1}
                if errors:
                    figures["earlier_errors"] = errors
                # A backend's own figures (kexec-fast: user-space work vs syscall).
                figures.update(failed_records)
                figures.update(outcome.extra.get("record", {}))
                if figures.get("purpose"):
                    # A hand-over or repair: did the kernel take the header?
                    figures["kernel_hotplug"] = _gives_kernel_hotplug(backend)
                    figures["crash_hotplug_after"] = 1 if await self._kernel_still_owns() else 0
                self._record(
                    result, reason, seq, t0, batch=batch, snapshot=snapshot, header=header, diff=diff, backend=backend,
                    window=window, outcome=outcome, extra=figures,
                )
                return True
            errors.append(f"{backend.name}: {outcome.detail}")
            # Keep a failed attempt's own figures (kexec-fast: what it refused) for the next record.
            failed_records.update(outcome.extra.get("record", {}))
            log.warning("reload attempt %d (%s) failed: %s", index + 1, backend.name, outcome.detail)
        self._fail(seq, t0, "; ".join(errors), batch=batch, snapshot=snapshot, header=header, diff=diff, extra=failed_records)
        return False

    def _fail(self, seq: int, t0: float, message: str, **kw: Any) -> None:
        self.state = UpdaterState.FAILED
        self.last_error = message
        loaded = self._kexec_crash_loaded()
        what = "kdump is NOT loaded" if loaded is False else "kdump may be stale"
        log.error("reload failed for batch %d: %s: %s", seq, message, what)
        self._record(ReloadResult.FAILED, message, seq, t0, **kw)
        self.observer.on_record(ErrorRecord(stage="updater", batch=seq, message=f"reload failed: {message}: {what}", kdump_loaded=loaded))

    async def _window(self, outcome: LoadOutcome) -> tuple[float, WindowKind, str]:
        if not outcome.changes_kdump:
            return 0.0, WindowKind.NONE, "none: nothing loaded"
        bound = max(outcome.end_ns - outcome.start_ns, 0) / 1e9
        log_ = self.kexec_log
        if not log_.active or not outcome.pids:
            return bound, WindowKind.LOADER_LIFETIME, "bounded by the loader's lifetime (no BPF kexec tracepoints)"
        calls: list[KexecCall] = []
        with trio.move_on_after(KEXEC_LOG_GRACE_S):
            while True:
                calls = [c for pid in outcome.pids for c in log_.between(outcome.start_ns, outcome.end_ns, pid) if c.on_crash]
                if calls:
                    break
                await log_.wait_changed()
        if not calls:
            return bound, WindowKind.LOADER_LIFETIME, "bounded by the loader's lifetime (no kexec syscall seen)"
        return sum(c.window_s for c in calls), WindowKind.BPF, f"bpf: {'+'.join(c.syscall for c in calls)}"

    # -- kernel mode ----------------------------------------------------------------

    def _read_int(self, rel: str) -> int | None:
        path = os.path.join(self.settings.snapshot_root, rel)
        try:
            with open(path) as f:
                return int(f.read().strip() or "0")
        except (OSError, ValueError):
            return None

    def _kexec_crash_loaded(self) -> bool | None:
        value = self._read_int("sys/kernel/kexec_crash_loaded")
        return None if value is None else bool(value)

    async def _kernel_still_owns(self) -> str:
        zeros = 0
        busy_since: float | None = None
        while True:
            for kind in ("memory", "cpu"):
                if self._read_int(f"sys/devices/system/{kind}/crash_hotplug") == 1:
                    return f"/sys/devices/system/{kind}/crash_hotplug reads 1"
            if kexec_lock_held(self.settings.snapshot_root):
                now = trio.current_time()
                busy_since = now if busy_since is None else busy_since
                if now - busy_since >= KEXEC_LOCK_WAIT_S:
                    log.warning(
                        "crash_hotplug reads 0 and a kexec load has held the kexec lock for %.0f s: taking it as 0",
                        now - busy_since,
                    )
                    return ""
            else:
                zeros += 1
                if zeros >= HOTPLUG_RECHECKS:
                    return ""
            await trio.sleep(HOTPLUG_RECHECK_DELAY_S)

    def _can_hand_over(self) -> bool:
        return self.repairer is not None and _gives_kernel_hotplug(self.repairer) and self.settings.kernel_hotplug == "auto"

    async def _kernel_batch(self, batch: Batch, owner: str, t0: float) -> None:
        """A batch while the kernel owns the header: stand aside, or repair.

        Repair when (1) the live state no longer holds System RAM that the
        kernel's header lists: what the previous kernel-mode observation held,
        or what the batch says was removed, that /proc/iomem no longer lists
        (kernel/crash_core.c rebuilds the header from the memory notifier at
        MEM_ONLINE/MEM_OFFLINE only, while the memory is still System RAM; the
        removal itself triggers nothing, so the gone range stays in the header
        until the next online/offline); or (2) the kernel log says an update
        was skipped (``kmsg:*`` sources: kexec_trylock() failed, elfsz > memsz,
        the rewrite failed, or log records lost)."""
        causes = kernel_update_causes(batch.sources)
        for cause in causes:
            key = f"kernel_skipped_{cause}"
            self.counts[key] = self.counts.get(key, 0) + 1
        try:
            snapshot = await self._snapshot()
            header = self._build(snapshot)
            snapshot, header, rechecks, still = await self._await_removals(batch, snapshot, header)
        except (KdumpCoalesceError, OSError) as exc:
            self._fail(batch.seq, t0, f"cannot read the live state: {exc}", batch=batch)
            return
        live = _ram_of(snapshot)
        stale = _merge(subtract_all(self._kernel_ram, live) + subtract_all(batch.removed, live))
        found: dict[str, Any] = {"rechecks": rechecks, "removed_still_listed": still} if rechecks else {}
        if stale:
            causes = ("removal", *causes)
        if not causes:
            self.state = UpdaterState.KERNEL
            self._kernel_ram = live
            self._record(ReloadResult.SKIPPED, f"the kernel owns the elfcorehdr ({owner})", batch.seq, t0, batch=batch, snapshot=snapshot, extra=found)
            return
        what = []
        if stale:
            what.append(
                f"the kernel's header still lists removed memory {', '.join(map(str, stale))} "
                "(the kernel rebuilds at online/offline, not at removal)"
            )
        skipped = [c for c in causes if c != "removal"]
        if skipped:
            what.append(f"the kernel log says an elfcorehdr update was skipped ({', '.join(skipped)})")
        reason = f"batch {batch.seq}: repair: {'; '.join(what)}"
        log.warning("%s: one load that keeps the kernel's hotplug support", reason)
        await self._kernel_load(
            batch.seq, snapshot, reason, t0, purpose="repair", batch=batch, causes=causes, stale=stale, extra=found
        )

    async def _kernel_load(
        self,
        seq: int,
        snapshot: SystemSnapshot,
        reason: str,
        t0: float,
        *,
        purpose: str,
        batch: Batch | None = None,
        causes: tuple[str, ...] = (),
        stale: tuple[PhysRange, ...] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """The hand-over or a repair: one load through the repairer (hotplug
        support kept), its fallback (kexec -p) when it fails.  Afterwards the
        kernel owns the header if crash_hotplug reads 1; otherwise (the
        fallback loaded an image without hotplug support) the daemon manages
        it from now on, through the fallback."""
        loader = self.repairer or self.fallback
        if loader is None:
            self._fail(seq, t0, f"{purpose}: no loader configured for kernel mode", batch=batch)
            return False
        header = self._build(snapshot, loader)
        figures: dict[str, Any] = dict(extra or {})
        figures.update({"purpose": purpose, "repair_causes": causes, "stale_ranges": stale})
        ok = await self._reload(seq, snapshot, header, diff_headers(self.loaded, header), reason, t0, batch=batch, extra=figures, primary=loader)
        if not ok:
            return False
        self.counts["hand_overs" if purpose == "hand-over" else "repairs"] += 1
        if purpose == "repair":
            for cause in causes:
                key = f"repairs_{cause}"
                self.counts[key] = self.counts.get(key, 0) + 1
        record = self.last_reload
        if record is not None and record.crash_hotplug_after == 1:
            self.state = UpdaterState.KERNEL
            self._kernel_ram = _ram_of(snapshot)
            if purpose == "hand-over":
                self.kernel_hotplug = HANDED_OVER
                log.info(
                    "hand-over: loaded through %s with the kernel's hotplug support; the kernel now updates the "
                    "elfcorehdr (crash_hotplug reads 1), the daemon watches", record.backend,
                )
            return True
        # Loaded, but the kernel does not own the header: manage it ourselves.
        backend: LoaderBackend = loader
        if self.fallback is not None and record is not None and record.backend == self.fallback.name:
            backend = self.fallback
        self.backend, self.fallback = backend, None
        old = self.backend_name
        self.backend_name = backend.name
        self.why = f"{purpose} through {backend.name} left crash_hotplug at 0: the daemon manages the header (was {old} mode)"
        self.kernel_hotplug = KERNEL_HOTPLUG_UNAVAILABLE
        log.warning("%s", self.why)
        return True

    async def _leave_kernel_mode(self, batch: Batch, t0: float) -> bool:
        """crash_hotplug dropped to 0: the image was unloaded or reloaded
        without hotplug support.  Hand over to the fallback backend."""
        fallback = self.fallback
        if fallback is None:
            self._fail(batch.seq, t0, "crash_hotplug reads 0 and no fallback backend is configured", batch=batch)
            return False
        self.backend, self.fallback = fallback, None
        old = self.backend_name
        self.backend_name, self.why = fallback.name, f"crash_hotplug reads 0 after {old} mode: the kernel no longer updates the header"
        self.counts["fallback"] += 1
        self._record(ReloadResult.FALLBACK, self.why, batch.seq, t0, batch=batch, backend=fallback)
        return True

    # -- records --------------------------------------------------------------------

    def _note_external_calls(self) -> None:
        # The log is a bounded deque: remember the newest exit seen, not a count.
        calls = [c for c in self.kexec_log.calls() if c.exit_ns > self._calls_seen]
        for call in calls:
            if call.pid in self._own_pids or call.pid == os.getpid():
                continue
            self.counts["external_kexec_calls"] += 1
            note = "a reload made by someone else (distro udev rule, admin): the loaded header is no longer ours"
            self.observer.on_record(KexecCallRecord.of(call, external=True, note=note))
            if call.on_crash and call.ret == 0:
                self.loaded = None  # someone else loaded something: not known to match any more
        if calls:
            self._calls_seen = max(c.exit_ns for c in calls)

    def _previous_loaded_sha(self) -> str | None:
        """The header a previous run of this backend left loaded, from its status file."""
        try:
            previous = read_status(self.settings.status_file)
        except (UnavailableError, InputError):
            return None
        if previous.backend != self.backend_name or previous.state is not UpdaterState.OK or previous.header is None:
            return None
        sha = previous.header.get("sha256")
        return sha if isinstance(sha, str) else None

    def _record(
        self,
        result: ReloadResult,
        reason: str,
        seq: int,
        t0: float,
        *,
        batch: Batch | None = None,
        snapshot: SystemSnapshot | None = None,
        header: ElfCoreHeader | None = None,
        diff: HeaderDiff | None = None,
        backend: LoaderBackend | None = None,
        window: tuple[float, WindowKind, str] | None = None,
        outcome: LoadOutcome | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if result.loaded:
            self.counts["reloads"] += 1
        self.counts[result.value] = self.counts.get(result.value, 0) + 1
        win_s, kind, source = window if window is not None else (0.0, WindowKind.NONE, "none: no reload")
        covered = header or self.loaded
        figures = dict(extra or {})
        record = ReloadRecord(
            backend=backend.name if backend is not None else self.backend_name,
            result=result,
            reason=reason,
            batch=seq,
            kdump_correct=self.kdump_correct(),
            wall_s=time.monotonic() - t0,
            load_s=(outcome.end_ns - outcome.start_ns) / 1e9 if outcome else 0.0,
            window_s=win_s,
            window_kind=kind,
            window_source=source,
            ranges=len(covered.ram_ranges) if covered else None,
            ram_bytes=sum(r.size for r in covered.ram_ranges) if covered else None,
            cpus=tuple(covered.covered_cpus) if covered else (tuple(snapshot.cpus_online) if snapshot else None),
            cpus_online=tuple(snapshot.cpus_online) if snapshot else None,
            header_sha256=header.sha256 if header else None,
            diff=diff.describe() if diff else None,
            merged=batch.merged if batch is not None else None,
            events=batch.events if batch is not None else None,
            rechecks=figures.pop("rechecks", 0),
            removed_still_listed=tuple(figures.pop("removed_still_listed", ())),
            purpose=figures.pop("purpose", ""),
            kernel_hotplug=bool(figures.pop("kernel_hotplug", False)),
            repair_causes=tuple(figures.pop("repair_causes", ())),
            stale_ranges=tuple(figures.pop("stale_ranges", ())),
            crash_hotplug_after=figures.pop("crash_hotplug_after", None),
            detail=figures.pop("detail", None),
            attempts=figures.pop("attempts", None),
            earlier_errors=tuple(figures.pop("earlier_errors", ())),
            at=time.time(),
            backend_figures=figures,
        )
        self.last_reload = record
        self.observer.on_record(record)


def _ram_of(snapshot: SystemSnapshot) -> tuple[PhysRange, ...]:
    """The System RAM lines of /proc/iomem, as ranges (what the kernel's
    ``prepare_elf_headers`` walks), merged."""
    return _merge(tuple(r.range for r in snapshot.ram))


def _merge(ranges: tuple[PhysRange, ...] | list[PhysRange]) -> tuple[PhysRange, ...]:
    out: list[PhysRange] = []
    for r in sorted(ranges, key=lambda r: (r.start, r.end)):
        if out and r.start <= out[-1].end:
            out[-1] = PhysRange(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return tuple(out)


def _gives_kernel_hotplug(backend: LoaderBackend) -> bool:
    """Whether a load through ``backend`` leaves the kernel owning the header:
    the fast path with KEXEC_UPDATE_ELFCOREHDR, or kexec_file_load (always)."""
    return bool(getattr(backend, "kernel_hotplug", False)) or backend.load_path == "kexec_file_load"


def _still_listed(removed: tuple[PhysRange, ...], header: ElfCoreHeader) -> tuple[PhysRange, ...]:
    """The parts of ``removed`` that ``header`` still lists as RAM."""
    out = []
    for gone in removed:
        for ram in header.ram_ranges:
            if gone.overlaps(ram):
                out.append(PhysRange(max(gone.start, ram.start), min(gone.end, ram.end)))
    return tuple(out)


class ReloadFailed(ReloadError):
    """The start-up reload failed after its retry."""

    def __init__(self, message: str) -> None:
        super().__init__(f"start-up reload failed: {message}")


# -- opening ------------------------------------------------------------------------


def _section(sections: Mapping[str, object], name: str, cls: type[Any]) -> Any:
    value = sections.get(name)
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise ConfigError(f"[{name}]", f"expected {cls.__name__}, got {type(value).__name__}")
    return value


async def open_updater(sections: Mapping[str, object], observer: Observer, kexec_log: KexecCallLog) -> Updater:
    """Choose and set up the backend from the ``[updater]`` and ``[kexec]``
    sections (instances of :class:`UpdaterSettings`, :class:`KexecSettings`;
    missing ones take their defaults).  Reads one snapshot to see what the host
    can do.  Raises typed errors (bad config, backend unavailable, malformed
    /proc/iomem) before anything is loaded."""
    settings: UpdaterSettings = _section(sections, "updater", UpdaterSettings)
    kexec: KexecSettings = _section(sections, "kexec", KexecSettings)
    snapshot = await trio.to_thread.run_sync(read_snapshot, settings.snapshot_root)
    caps = HostCapabilities.probe(snapshot, kexec, settings)
    name, why = choose_backend(settings.backend, caps, settings.kernel_hotplug)
    mode, mode_why = plan_kernel_hotplug(settings.backend, caps, settings.kernel_hotplug)
    _check_writable(settings.status_file, "--status-file")

    backend: LoaderBackend | None
    fallback: LoaderBackend | None = None
    repairer: LoaderBackend | None = None
    if name == "dry-run":
        _check_writable(os.path.join(settings.staging_dir, "x"), "--staging-dir")
        stager, stager_why = _fastpath_stager(kexec, settings)
        backend = DryRunBackend(settings.staging_dir, settings.keep_staged, why, stager, stager_why)
    elif name == "kernel":
        backend = None
        command = None
        try:
            command = resolve_kexec_command(kexec)
            fallback = KexecCliBackend(command, kexec.timeout)
        except (BackendUnavailableError, ConfigError) as exc:
            if mode == HAND_OVER:
                raise
            log.info("no kexec fallback for kernel mode: %s", exc)
            fallback = DryRunBackend(settings.staging_dir, settings.keep_staged, "kernel mode ended and kexec is not configured")
        # The hand-over's and the repairs' loader: the fast path with
        # KEXEC_UPDATE_ELFCOREHDR, when it can run here.  Without it a repair
        # goes through kexec-tools (kexec -s -p keeps the kernel's hotplug
        # support; kexec -p does not, and the daemon then manages the header).
        if command is not None and caps.kernel_can_own_header and not caps.fastpath and settings.kernel_hotplug == "auto":
            assert snapshot.crash_elfcorehdr_size is not None
            repairer = fastpath.create_backend(command, settings, kernel_hotplug_size=snapshot.crash_elfcorehdr_size)
    else:
        command = resolve_kexec_command(kexec)
        cli = KexecCliBackend(command, kexec.timeout)
        if name == "kexec-fast":
            backend = fastpath.create_backend(command, settings)
            fallback = cli
        else:
            backend = cli
    updater = Updater(settings, name, why, backend, observer, kexec_log, fallback=fallback, repairer=repairer, kernel_hotplug=mode)
    updater.last_snapshot = snapshot
    return updater


def _fastpath_stager(kexec: KexecSettings, settings: UpdaterSettings) -> tuple[SegmentStager | None, str]:
    """The fast path's segment stager for dry-run, or why there is none (never an error: dry-run loads nothing)."""
    try:
        return fastpath.create_stager(resolve_kexec_command(kexec), settings), ""
    except (KdumpCoalesceError, OSError) as exc:
        return None, str(exc)


def _check_writable(path: str, flag: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ConfigError(flag, f"cannot create {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ConfigError(flag, f"{directory} is not writable")


