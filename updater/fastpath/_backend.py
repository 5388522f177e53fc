"""The ``kexec-fast`` loader backend: the fast-path core wired into the updater.

:func:`create_backend` makes it (``updater.open_updater`` calls it).  It loads the same capture kernel,
initrd and command line the ``kexec`` backend would run kexec-tools with
(:class:`~updater.KexecCommand`, from ``[kexec]`` and the distro's kdump
config), and the purgatory from the kexec-tools binary (or
``[updater] fast-purgatory``), once, at start-up: a bad input there is a
one-line error and a non-zero exit before anything is loaded.

Per batch (:meth:`FastPathEngine.segment_set_for`), in a worker thread:

1. read /proc/iomem (firmware ranges, low RAM) with the snapshot's crash
   region(s); prepare the image when there is none, when
   :meth:`PreparedImage.still_valid_for` says the layout no longer holds, or
   when the header outgrows its slot (with a larger slot);
2. build the header with the updater's :class:`ElfCoreHeader` builder and
   ``backup_offset = layout.backup.start`` (kexec-tools points the low-memory
   PT_LOAD at the backup segment, where purgatory copies that RAM at panic);
3. ``image.build`` (new elfcorehdr, digest re-patched) and ``image.verify``:
   the first verification after each prepare recomputes the digest over every
   byte from the final buffers (hashlib); later ones, with
   ``fast-verify = "first-full"`` (the default), resume an independent hashlib
   state over the very ``bytes`` objects hashed at prepare time and hash only
   the new header.  ``always-full`` re-hashes everything every time.

Then one ``kexec_load(2)``.  Any failure (a verification error, the kernel's
EINVAL/EBUSY/..., a layout that no longer fits) is a failed
:class:`LoadOutcome`: the updater loads through its fallback, the ``kexec``
backend, in the same batch, and records ``result: "fallback"``.  A failed
verification also throws the prepared image away: the next batch prepares
from scratch rather than trust a cache that produced a wrong digest.

Why ``first-full`` is safe: the full check on the first load proves that the
cached pycryptodome state and the buffers agree with a from-scratch hash;
after that, the attested hashlib state (computed at prepare time, sharing no
object with the pycryptodome cache) only vouches for buffers that are the
same immutable objects at the same addresses and sizes, so a corrupted cache,
a rebuilt segment or a moved slot still fails or falls back to a full hash.
Under TCG the full check costs as much as kexec -p's own hashing (~1.3 s in
the guest): paying it on every batch would give the fast path's speed back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ground.errors import ConfigError, KdumpCoalesceError
from ground.ranges import PhysRange

from .._loader import LoadOutcome, LoadRequest
from .._config import KexecSettings, UpdaterSettings
from .._distro import KexecCommand, resolve_kexec_command
from .._elfcorehdr import PT_LOAD, ElfCoreHeader, segment_size_for
from .._errors import BackendUnavailableError, HeaderTooLargeError
from .._parse import IomemEntry, parse_iomem
from .._snapshot import SystemSnapshot
from ._bzimage import BzImage, load_bzimage
from ._errors import ElfcorehdrOverflowError, KexecLoadError, VerificationError
from ._image import CaptureKernel, FastPathInputs, PreparedImage, VerifiedSegmentSet, hotplug_slot_size, prepare
from ._kexec_syscall import kexec_load_crash
from ._memmap import IomemRange, RangeKind
from ._purgatory import PurgatoryBlob, load_purgatory

log = logging.getLogger("kdump_coalesce.updater.fastpath")

_KIND_OF_NAME = {k.value: k for k in RangeKind}


def iomem_ranges(entries: Sequence[IomemEntry]) -> tuple[IomemRange, ...]:
    """The /proc/iomem lines a crash load cares about, at any depth, by exact name.

    kexec-tools (``get_crash_memory_ranges``, crashdump-x86.c) matches the
    exact names "System RAM", "ACPI Tables", "ACPI Non-volatile Storage",
    "Reserved", "Persistent Memory (legacy)" and "Persistent Memory" on every
    line whatever its indent; driver-managed "System RAM (kmem)" is not one.
    """
    out = []
    for e in entries:
        kind = _KIND_OF_NAME.get(e.name)
        if kind is not None:
            out.append(IomemRange(e.range, kind))
    return tuple(sorted(out))


def crash_regions_of(snapshot: SystemSnapshot) -> tuple[PhysRange, ...]:
    """The snapshot's "Crash kernel" ranges, sorted."""
    return tuple(sorted(snapshot.crash_kernel))


def read_iomem(root: str) -> tuple[IomemRange, ...]:
    path = os.path.join(root, "proc/iomem")
    with open(path) as f:
        return iomem_ranges(parse_iomem(f.read(), path))


def _read_optional(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


# -- availability (for ``auto``) -------------------------------------------------


def kexec_load_refused(root: str = "/") -> str:
    """Why this kernel would refuse kexec_load(2) from us, or "" (a check of features, not versions)."""
    if platform.machine() != "x86_64":
        return f"the fast path builds x86_64 images only (this is {platform.machine()})"
    try:
        with open(os.path.join(root, "proc/sys/kernel/kexec_load_disabled")) as f:
            if f.read().strip() == "1":
                return "kernel.kexec_load_disabled is 1"
    except OSError:
        pass
    try:
        # Lockdown (Linux 5.4, merged by aefcf2f4b581 "Merge branch
        # 'next-lockdown' of git://git.kernel.org/pub/scm/linux/kernel/git/
        # jmorris/linux-security"; the kexec part is its patch "kexec_load:
        # Disable at runtime if the kernel is locked down", id not verified)
        # refuses kexec_load in both modes; only kexec_file_load with a
        # signed kernel is allowed then.
        with open(os.path.join(root, "sys/kernel/security/lockdown")) as f:
            text = f.read()
        if "[integrity]" in text or "[confidentiality]" in text:
            return "kernel lockdown is on (kexec_load is refused; use kexec_file_load)"
    except OSError:
        pass
    return ""


def _command_unsupported(command: KexecCommand) -> str:
    if command.load_path != "kexec_load":
        return f"the configured load path is {command.load_path} (the fast path replaces kexec -p, the kexec_load path)"
    if command.extra_args:
        return f"extra kexec arguments {' '.join(command.extra_args)!r} are not reproduced by the fast path"
    return ""


def unavailable_reason(kexec: KexecSettings, settings: UpdaterSettings) -> str:
    """Why ``auto`` must not pick ``kexec-fast`` on this host, or "" when it can.

    Checked: the kernel takes kexec_load from us (x86_64, not disabled, no
    lockdown), the kexec command is the kexec_load path without options we do
    not reproduce, the kexec-tools purgatory is found and valid, and the
    capture kernel is a loadable bzImage.  (Whether the kernel manages crash
    hotplug itself is decided before, by ``choose_backend``.)
    """
    refused = kexec_load_refused(settings.snapshot_root)
    if refused:
        return refused
    try:
        command = resolve_kexec_command(kexec)
    except (BackendUnavailableError, ConfigError) as exc:
        return f"no kexec command: {exc}"
    problem = _command_unsupported(command)
    if problem:
        return problem
    try:
        load_purgatory(settings.fast_purgatory or command.binary)
        load_bzimage(command.kernel)
    except (KdumpCoalesceError, OSError) as exc:
        return str(exc)
    return ""


# -- the engine ---------------------------------------------------------------


@dataclass(frozen=True)
class FastPathSources:
    """What is read from disk once: the capture kernel, its initrd, the purgatory, the boot parameters."""

    kernel: BzImage
    initrd: bytes | None
    cmdline: str
    purgatory: PurgatoryBlob
    boot_params: bytes | None

    @classmethod
    def load(cls, command: KexecCommand, settings: UpdaterSettings) -> FastPathSources:
        purgatory = load_purgatory(settings.fast_purgatory or command.binary)
        kernel = load_bzimage(command.kernel)
        initrd: bytes | None = None
        if command.initrd:
            try:
                initrd = Path(command.initrd).read_bytes()
            except OSError as exc:
                raise ConfigError(command.initrd, f"cannot read the capture initrd: {exc.strerror or exc}") from None
        boot_params = _read_optional(os.path.join(settings.snapshot_root, "sys/kernel/boot_params/data"))
        return cls(kernel, initrd, command.cmdline, purgatory, boot_params)


@dataclass
class Prepared:
    """One segment set ready for the syscall, and how long each step took."""

    verified: VerifiedSegmentSet
    header: ElfCoreHeader
    timings: dict[str, float]
    prepared: str  # "" or why the image was (re)prepared for this batch


class FastPathEngine:
    """Prepare once, then per request: header, segment set, verification (no syscall)."""

    def __init__(self, sources: FastPathSources, settings: UpdaterSettings, kernel_hotplug_size: int = 0) -> None:
        self.sources = sources
        self.settings = settings
        # > 0: hand the header to the kernel (KEXEC_UPDATE_ELFCOREHDR), with a
        # slot for the kernel's /sys/kernel/crash_elfcorehdr_size.
        self.kernel_hotplug_size = kernel_hotplug_size
        self.image: PreparedImage | None = None
        self.prepares = 0
        self._full_verified = False  # a full verification passed for self.image

    def discard(self) -> None:
        """Forget the prepared image (after a failed verification: never trust that cache again)."""
        self.image = None
        self._full_verified = False

    def _capacity_for(self, header: ElfCoreHeader) -> int:
        s = self.settings
        ours = segment_size_for(len(header.phdrs), s.headroom_ranges + s.headroom_cpus)
        return max(ours, hotplug_slot_size(self.kernel_hotplug_size)) if self.kernel_hotplug_size else ours

    def _prepare(self, crash_regions: tuple[PhysRange, ...], iomem: tuple[IomemRange, ...], capacity: int) -> PreparedImage:
        src = self.sources
        image = prepare(
            FastPathInputs(
                capture=CaptureKernel(src.kernel, src.initrd, src.cmdline),
                purgatory=src.purgatory,
                crash_regions=crash_regions,
                iomem=iomem,
                boot_params=src.boot_params,
                elfcorehdr_capacity=capacity,
                kernel_hotplug_size=self.kernel_hotplug_size,
            )
        )
        self.image = image
        self._full_verified = False
        self.prepares += 1
        return image

    def _header(self, snapshot: SystemSnapshot, template: ElfCoreHeader, image: PreparedImage) -> ElfCoreHeader:
        options = template.options
        if options is None:
            raise VerificationError("elfcorehdr", "the request's header carries no builder options")
        header = ElfCoreHeader.build(snapshot, dataclasses.replace(options, backup_offset=image.layout.backup.start))
        # The low-memory PT_LOAD the builder redirected must be exactly the
        # RAM purgatory copies to the backup segment, or the dump of the low
        # 640 KiB would read the wrong bytes.
        moved = [p for p in header.phdrs if p.p_type == PT_LOAD and p.p_offset == image.layout.backup.start]
        src = image.layout.backup_source
        for p in moved:
            if p.p_paddr != src.start or p.p_memsz > src.size:
                raise VerificationError(
                    "elfcorehdr backup PT_LOAD",
                    f"0x{p.p_paddr:x}+0x{p.p_memsz:x} is not the backup source {src} purgatory saves",
                )
        return header

    def segment_set_for(self, snapshot: SystemSnapshot, template: ElfCoreHeader) -> Prepared:
        """Everything before the syscall, for one batch.  Raises typed errors; never loads."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        iomem = read_iomem(self.settings.snapshot_root)
        regions = crash_regions_of(snapshot)
        timings["iomem_s"] = time.perf_counter() - t0
        why = ""
        image = self.image
        if image is None:
            why = "first load" if self.prepares == 0 else "previous image discarded"
        elif not image.still_valid_for(regions, iomem):
            why = "crash region, low RAM or firmware ranges changed"
        t = time.perf_counter()
        if image is None or why:
            image = self._prepare(regions, iomem, self._capacity_for(template))
        timings["prepare_s"] = time.perf_counter() - t if why else 0.0
        t = time.perf_counter()
        header = self._header(snapshot, template, image)
        timings["header_s"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            segment_set = image.build(header.to_bytes())
        except ElfcorehdrOverflowError as exc:
            why = f"header outgrew its slot ({exc.size} > {exc.capacity} bytes)"
            t1 = time.perf_counter()
            image = self._prepare(regions, iomem, self._capacity_for(header))
            timings["prepare_s"] = time.perf_counter() - t1
            header = self._header(snapshot, template, image)
            t = time.perf_counter()
            segment_set = image.build(header.to_bytes())
        timings["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        attested = self.settings.fast_verify == "first-full" and self._full_verified
        try:
            verified = image.verify(segment_set, reuse_attested_prefix=attested)
        except VerificationError:
            self.discard()
            raise
        timings["verify_s"] = time.perf_counter() - t
        if verified.mode == "full":
            self._full_verified = True
        # The per-batch user-space work the issue measures: header + build + verify.
        timings["userspace_s"] = timings["header_s"] + timings["build_s"] + timings["verify_s"]
        return Prepared(verified, header, timings, why)


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


class KexecFastBackend:
    """``kexec-fast``: the segments built here, one kexec_load(2) per batch, nothing else run."""

    name = "kexec-fast"
    load_path = "kexec_load"
    changes_kdump = True
    # False although the elfcorehdr slot is fixed per prepared image: the
    # backend re-prepares with a larger slot itself when a header outgrows
    # it, so the updater must not refuse such a header before we see it.

    def __init__(self, command: KexecCommand, settings: UpdaterSettings, engine: FastPathEngine) -> None:
        self.command = command
        self.settings = settings
        self.engine = engine
        self.loads = 0
        # Loads with KEXEC_UPDATE_ELFCOREHDR: the kernel owns the header afterwards.
        self.kernel_hotplug = engine.kernel_hotplug_size > 0

    def describe(self) -> str:
        src = self.engine.sources
        hotplug = (
            f"KEXEC_UPDATE_ELFCOREHDR, elfcorehdr outside the digest, slot for crash_elfcorehdr_size "
            f"{self.engine.kernel_hotplug_size}; "
            if self.kernel_hotplug
            else ""
        )
        return (
            f"kexec_load(2) from kdump-coalesce: {self.command.kernel} ({hotplug}"
            f"purgatory from {src.purgatory.source}; fast-verify {self.settings.fast_verify}; "
            f"kernel, initrd and cmdline from {self.command.source})"
        )

    def _load_sync(self, request_snapshot: SystemSnapshot, header: ElfCoreHeader) -> tuple[Prepared, int, int]:
        prepared = self.engine.segment_set_for(request_snapshot, header)
        start = time.monotonic_ns()
        try:
            kexec_load_crash(prepared.verified)
        except KexecLoadError as exc:
            exc.add_note(f"syscall window {time.monotonic_ns() - start} ns")
            raise
        return prepared, start, time.monotonic_ns()

    async def load(self, request: LoadRequest) -> LoadOutcome:
        t0 = time.monotonic_ns()
        try:
            prepared, start, end = await trio.to_thread.run_sync(self._load_sync, request.snapshot, request.header)
        except (KdumpCoalesceError, HeaderTooLargeError, OSError, ValueError) as exc:
            kind = type(exc).__name__
            what = "kexec_load failed" if isinstance(exc, KexecLoadError) else "refused to load"
            detail = f"kexec-fast {what}: {kind}: {exc}"
            log.warning("%s", detail)
            return LoadOutcome(
                False,
                detail,
                t0,
                time.monotonic_ns(),
                (os.getpid(),),
                extra={"record": {"fastpath_error": {"error": kind, "message": str(exc)}}},
            )
        self.loads += 1
        v = prepared.verified
        timings = dict(prepared.timings, syscall_s=(end - start) / 1e9)
        record = {
            "fastpath": {
                "verify_mode": v.mode,
                "prepared": prepared.prepared,
                "prepares": self.engine.prepares,
                "digest": v.digest.hex(),
                "segments": len(v.segment_set.segments),
                "elfcorehdr_slot": self.engine.image.layout.elfcorehdr_capacity if self.engine.image else None,
                "header_bytes": prepared.header.size,
                "fast_header_sha256": prepared.header.sha256,
                "kernel_hotplug": self.kernel_hotplug,
                "flags": f"0x{v.segment_set.flags:x}",
                "timings": _round(timings),
            }
        }
        return LoadOutcome(True, f"loaded ({v.mode} verification)", start, end, (os.getpid(),), extra={"record": record})


class FastPathStager:
    """For ``dry-run``: the segment set the fast path would load, as a manifest (and the small segments)."""

    def __init__(self, engine: FastPathEngine) -> None:
        self.engine = engine

    def stage(self, snapshot: SystemSnapshot, header: ElfCoreHeader) -> tuple[dict[str, Any], dict[str, bytes]]:
        """``(manifest, files)``; files are the segments that change per batch (elfcorehdr, purgatory)."""
        prepared = self.engine.segment_set_for(snapshot, header)
        ss = prepared.verified.segment_set
        manifest = dict(ss.manifest)
        manifest["verify_mode"] = prepared.verified.mode
        manifest["prepared"] = prepared.prepared
        manifest["timings"] = _round(dict(prepared.timings))
        files = {f"segment-{s.kind.value}.bin": s.buf for s in ss.segments if s.kind.value in ("elfcorehdr", "purgatory")}
        return manifest, files


def create_engine(command: KexecCommand, settings: UpdaterSettings, kernel_hotplug_size: int = 0) -> FastPathEngine:
    problem = _command_unsupported(command)
    if problem:
        raise BackendUnavailableError("kexec-fast backend", problem, "use --backend kexec")
    return FastPathEngine(FastPathSources.load(command, settings), settings, kernel_hotplug_size)


def create_backend(command: KexecCommand, settings: UpdaterSettings, *, kernel_hotplug_size: int = 0) -> KexecFastBackend:
    """The updater's hook: a ``kexec-fast`` backend for ``command``'s kernel, initrd and command line.

    ``kernel_hotplug_size`` > 0 (the kernel's /sys/kernel/crash_elfcorehdr_size)
    makes every load a hand-over to the kernel's crash hotplug: flags |
    KEXEC_UPDATE_ELFCOREHDR, the elfcorehdr out of the purgatory's digest, its
    slot large enough for the kernel's own rewrite.

    Reads and checks the kernel, initrd and purgatory now; raises typed
    errors (bad input, backend unavailable) before anything is loaded.
    """
    refused = kexec_load_refused(settings.snapshot_root)
    if refused:
        raise BackendUnavailableError("kexec-fast backend", refused, "use --backend kexec")
    return KexecFastBackend(command, settings, create_engine(command, settings, kernel_hotplug_size))


def create_stager(command: KexecCommand, settings: UpdaterSettings) -> FastPathStager:
    """The ``dry-run`` hook: stage the fast path's segment set with each header."""
    return FastPathStager(create_engine(command, settings))


__all__ = [
    "FastPathEngine",
    "FastPathSources",
    "FastPathStager",
    "KexecFastBackend",
    "Prepared",
    "crash_regions_of",
    "create_backend",
    "create_engine",
    "create_stager",
    "iomem_ranges",
    "kexec_load_refused",
    "read_iomem",
    "unavailable_reason",
]
