"""Loader backends: how a batch's header reaches the crash kernel.

A backend gets a :class:`LoadRequest` (the snapshot, the header built from it,
and what changed) and returns a :class:`LoadOutcome`; the updater measures,
retries, falls back and reports.  Backends:

- ``kernel``: the kernel rewrites the elfcorehdr itself on every hotplug event
  (CONFIG_CRASH_HOTPLUG, Linux 6.6 x86: ea53ad9cf73b "x86/crash: add x86
  crash hotplug support", a72bbec70da2 "crash: hotplug support for
  kexec_load()"; ``/sys/devices/system/{memory,cpu}/crash_hotplug`` read 1,
  files from 88a6f8994421 "crash: memory and CPU hotplug sysfs attributes").  User space stands aside; the updater re-checks
  after each batch.
- ``kexec``: runs kexec-tools once per batch with the distro's kernel, initrd,
  command line and syscall (:mod:`._distro`).  kexec-tools reads /proc/iomem
  and sysfs itself and builds its own header; ours is what it should contain
  (for the diff, the skip decision and the status).
- ``kexec-fast``: the direct kexec_load path (:mod:`updater.fastpath`, a
  subpackage): it takes :attr:`LoadRequest.header` (rebuilt with the backup
  segment's address in :class:`HeaderOptions`) and loads the segments itself.
  :func:`updater.fastpath.create_backend` returns its :class:`LoaderBackend`;
  ``auto`` prefers it when :func:`updater.fastpath.unavailable_reason` is empty
  (kexec_load allowed, the kexec-tools purgatory found, a bzImage kernel).
  The protocol every backend implements is in :mod:`updater._loader`, which
  the fast path imports; this module imports the fast path, never the reverse.
- ``dry-run``: writes what a reload would load (the header, and the fast
  path's segment set manifest when the fast path can be prepared here:
  ``updater.fastpath.create_stager``) and a manifest into a staging
  directory, atomically, and loads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ground.errors import KdumpCoalesceError

from . import fastpath
from ._config import KexecSettings, UpdaterSettings
from ._distro import KexecCommand, find_kexec_binary
from ._elfcorehdr import ElfCoreHeader, HeaderDiff
from ._errors import BackendUnavailableError
from ._loader import LoaderBackend, LoadOutcome, LoadRequest, SegmentStager
from ._snapshot import SystemSnapshot


# -- kexec (kexec-tools) --------------------------------------------------------


class KexecCliBackend:
    """One ``kexec -p`` (or ``kexec -s -p``) per batch, never an unload first."""

    name = "kexec"
    changes_kdump = True

    def __init__(self, command: KexecCommand, timeout: float = 60.0) -> None:
        self.command = command
        self.load_path = command.load_path
        self.timeout = timeout

    def describe(self) -> str:
        flag = "-s -p" if self.load_path == "kexec_file_load" else "-p"
        return f"{self.command.binary} {flag} {self.command.kernel} ({self.load_path}; from {self.command.source})"

    async def load(self, request: LoadRequest) -> LoadOutcome:
        argv = self.command.argv()
        with tempfile.TemporaryFile() as errfile:
            start = time.monotonic_ns()
            try:
                proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile)
            except OSError as exc:
                return LoadOutcome(False, f"cannot run {argv[0]}: {exc.strerror}", start, time.monotonic_ns())
            pid = proc.pid
            timed_out = False
            try:
                with trio.move_on_after(self.timeout) as scope:
                    await proc.wait()
                if scope.cancelled_caught:
                    timed_out = True
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
            finally:
                end = time.monotonic_ns()
            errfile.seek(0)
            err = errfile.read().decode(errors="replace").strip()
        rc = proc.returncode
        if timed_out:
            return LoadOutcome(False, f"{argv[0]} killed after {self.timeout:g} s", start, end, (pid,), extra={"argv": argv})
        if rc != 0:
            last = err.splitlines()[-1] if err else "no message"
            return LoadOutcome(False, f"{argv[0]} exited {rc}: {last}", start, end, (pid,), extra={"argv": argv})
        return LoadOutcome(True, "loaded", start, end, (pid,), extra={"argv": argv})


# -- dry-run --------------------------------------------------------------------


class DryRunBackend:
    """Stages the header and a manifest: ``<staging>/<seq>-<stamp>/`` holds
    ``elfcorehdr.bin``, ``manifest.json`` and ``snapshot.json``; the directory
    is written under a temporary name and renamed, then ``current`` (a
    symlink) is swapped with a rename, so readers never see half a load."""

    name = "dry-run"
    load_path = "none"
    changes_kdump = False

    def __init__(
        self, staging_dir: str, keep: int = 8, why: str = "", segments: SegmentStager | None = None, segments_why: str = ""
    ) -> None:
        self.staging = Path(staging_dir)
        self.keep = keep
        self.why = why
        self.staged = 0
        # The fast path's segment set for each header (``fastpath.json`` and the
        # segments that change per batch), or why there is none.
        self.segments = segments
        self.segments_why = segments_why

    def describe(self) -> str:
        return f"dry-run: stages headers in {self.staging}, loads nothing" + (f" ({self.why})" if self.why else "")

    async def load(self, request: LoadRequest) -> LoadOutcome:
        start = time.monotonic_ns()
        try:
            path = await trio.to_thread.run_sync(self._stage, request)
        except OSError as exc:
            return LoadOutcome(False, f"cannot stage in {self.staging}: {exc.strerror or exc}", start, time.monotonic_ns(), changes_kdump=False)
        self.staged += 1
        return LoadOutcome(True, f"staged {path}", start, time.monotonic_ns(), changes_kdump=False, extra={"staged": str(path)})

    def manifest(self, request: LoadRequest) -> dict[str, Any]:
        snap = request.snapshot
        header = request.header
        data = header.to_bytes()
        return {
            "batch": request.seq,
            "reason": request.reason,
            "written_at": time.time(),
            "kernel_release": snap.kernel_release,
            "cpus_online": list(snap.cpus_online),
            "cpus_present": list(snap.cpus_present),
            "cpus": list(header.covered_cpus),
            "note_cpus": list(header.note_cpus),
            "missing_note_cpus": list(header.missing_note_cpus),
            "ranges": [[r.start, r.end] for r in header.ram_ranges],
            "ram_bytes": sum(r.size for r in header.ram_ranges),
            "segments": [
                {
                    "name": "elfcorehdr",
                    "file": "elfcorehdr.bin",
                    "bufsz": len(data),
                    "sha256": header.sha256,
                    "phnum": len(header.phdrs),
                }
            ],
            "header": header.summary(),
            "diff": request.diff.to_json(),
            "missing": [[m.path, m.consequence] for m in snap.missing],
            "timings": request.timings,
        }

    def _stage(self, request: LoadRequest) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        name = f"{request.seq:06d}-{time.time_ns()}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.staging))
        try:
            _write_file(tmp / "elfcorehdr.bin", request.header.to_bytes())
            _write_file(tmp / "snapshot.json", (json.dumps(request.snapshot.to_json(), indent=1) + "\n").encode())
            manifest = self.manifest(request)
            manifest["fastpath"] = self._stage_segments(request, tmp)
            _write_file(tmp / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
            os.chmod(tmp, 0o755)
            final = self.staging / name
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        link_tmp = self.staging / f".current.{os.getpid()}"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(name, link_tmp)
        os.replace(link_tmp, self.staging / "current")
        _fsync_dir(self.staging)
        self._prune()
        return final

    def _stage_segments(self, request: LoadRequest, tmp: Path) -> dict[str, Any]:
        if self.segments is None:
            return {"staged": False, "why": self.segments_why or "no fast path"}
        try:
            seg_manifest, files = self.segments.stage(request.snapshot, request.header)
        except (KdumpCoalesceError, OSError) as exc:
            return {"staged": False, "why": f"{type(exc).__name__}: {exc}"}
        for name, data in files.items():
            _write_file(tmp / name, data)
        _write_file(tmp / "fastpath.json", (json.dumps(seg_manifest, indent=1, default=str) + "\n").encode())
        return {"staged": True, "file": "fastpath.json", "segments": len(seg_manifest.get("segments", ())), "digest": seg_manifest.get("purgatory_digest")}

    def _prune(self) -> None:
        staged = sorted(p for p in self.staging.iterdir() if p.is_dir() and not p.is_symlink() and p.name[:1].isdigit())
        for old in staged[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- choosing -------------------------------------------------------------------


@dataclass(frozen=True)
class HostCapabilities:
    """What the host can do, as far as choosing a backend goes."""

    kexec_crash_loaded: bool | None  # None: no /sys/kernel/kexec_crash_loaded
    kexec_crash_size: int | None
    crash_hotplug_memory: int | None
    crash_hotplug_cpu: int | None
    kexec_binary: str | None
    fastpath: str  # "" when updater.fastpath offers a backend, else why not
    # /sys/kernel/crash_elfcorehdr_size, None when absent (no CONFIG_CRASH_HOTPLUG)
    crash_elfcorehdr_size: int | None = None

    @property
    def kernel_owns_header(self) -> bool:
        return self.crash_hotplug_memory == 1 or self.crash_hotplug_cpu == 1

    @property
    def kernel_can_own_header(self) -> bool:
        """Whether kexec_load can hand the header to this kernel.

        Detected by /sys/kernel/crash_elfcorehdr_size: it comes with the same
        commit that makes kexec_load accept KEXEC_UPDATE_ELFCOREHDR
        (a72bbec70da2 "crash: hotplug support for kexec_load()"), exists only
        with CONFIG_CRASH_HOTPLUG, and is the slot size such a load needs
        (kexec-tools --hotplug refuses to run without it).  The crash_hotplug
        files alone (88a6f8994421) say what the *loaded* image has: both read
        0 for a plain ``kexec -p`` image on a kernel that supports it."""
        return bool(self.crash_elfcorehdr_size)

    @classmethod
    def probe(cls, snapshot: SystemSnapshot, kexec: KexecSettings, settings: UpdaterSettings | None = None) -> HostCapabilities:
        return cls(
            kexec_crash_loaded=snapshot.kexec_crash_loaded,
            kexec_crash_size=snapshot.kexec_crash_size,
            crash_hotplug_memory=snapshot.crash_hotplug_memory,
            crash_hotplug_cpu=snapshot.crash_hotplug_cpu,
            kexec_binary=find_kexec_binary(kexec.binary),
            fastpath=fastpath.unavailable_reason(kexec, settings) if settings is not None else "",
            crash_elfcorehdr_size=snapshot.crash_elfcorehdr_size,
        )


# What ``UpdaterStatus.kernel_hotplug`` says (the doc is in ground.records).
STAND_ASIDE = "stand-aside"
HAND_OVER = "hand-over"  # planned; "handed-over" once made
HANDED_OVER = "handed-over"
KERNEL_HOTPLUG_OFF = "off"
KERNEL_HOTPLUG_UNAVAILABLE = "unavailable"
KERNEL_HOTPLUG_UNSUPPORTED = "unsupported"


def plan_kernel_hotplug(requested: str, caps: HostCapabilities, setting: str = "auto") -> tuple[str, str]:
    """``(mode, why)``: what the daemon does about the kernel's crash hotplug.

    - ``stand-aside``: the loaded image already has the kernel's hotplug
      support (kexec_file_load, or kexec_load with --hotplug): the kernel
      rewrites the header, the daemon watches and repairs;
    - ``hand-over``: the kernel supports it but the loaded image lacks it
      (plain ``kexec -p``, or nothing loaded): one kexec_load from the fast
      path with KEXEC_UPDATE_ELFCOREHDR, then as ``stand-aside``;
    - ``off``: ``[updater] kernel-hotplug = "off"``: the daemon manages;
    - ``unavailable``: the kernel supports it, but this configuration cannot
      hand over (an explicit ``--backend`` other than kernel/auto, no crash
      kernel support, or the fast path cannot run here): the daemon manages;
    - ``unsupported``: no CONFIG_CRASH_HOTPLUG.
    """
    if not (caps.kernel_can_own_header or caps.kernel_owns_header):
        return KERNEL_HOTPLUG_UNSUPPORTED, "no /sys/kernel/crash_elfcorehdr_size (kernel without CONFIG_CRASH_HOTPLUG)"
    if setting == "off":
        return KERNEL_HOTPLUG_OFF, "[updater] kernel-hotplug = \"off\": the daemon manages the header itself"
    if requested not in ("auto", "kernel"):
        return KERNEL_HOTPLUG_UNAVAILABLE, f"--backend {requested} was asked for: the daemon manages the header itself"
    if caps.kernel_owns_header:
        which = "memory" if caps.crash_hotplug_memory == 1 else "cpu"
        return STAND_ASIDE, f"the kernel updates the elfcorehdr itself (/sys/devices/system/{which}/crash_hotplug reads 1)"
    if caps.kexec_crash_loaded is None or caps.kexec_crash_size == 0:
        return KERNEL_HOTPLUG_UNAVAILABLE, "no crash kernel support or no crash region"
    if caps.fastpath:
        return KERNEL_HOTPLUG_UNAVAILABLE, f"no hand-over: the kexec_load fast path cannot run here ({caps.fastpath})"
    return HAND_OVER, (
        f"crash_hotplug reads 0 (the image has no hotplug support) on a kernel that supports it "
        f"(crash_elfcorehdr_size {caps.crash_elfcorehdr_size}): one kexec_load with KEXEC_UPDATE_ELFCOREHDR hands the header to the kernel"
    )


def choose_backend(requested: str, caps: HostCapabilities, kernel_hotplug: str = "auto") -> tuple[str, str]:
    """``(backend, why)``.  Raises :class:`BackendUnavailableError` when an
    explicitly requested backend cannot run here.  ``kernel`` is also the
    answer for a hand-over (:func:`plan_kernel_hotplug`): the updater makes
    that one load and then stands aside."""
    no_kexec = "this kernel cannot kexec (no /sys/kernel/kexec_crash_loaded)"
    no_region = "no crash kernel region reserved (/sys/kernel/kexec_crash_size is 0: boot with crashkernel=)"
    mode, mode_why = plan_kernel_hotplug(requested, caps, kernel_hotplug)
    if requested == "auto":
        if mode in (STAND_ASIDE, HAND_OVER):
            return "kernel", mode_why
        if caps.kexec_crash_loaded is None:
            return "dry-run", no_kexec
        if caps.kexec_crash_size == 0:
            return "dry-run", no_region
        if not caps.fastpath:
            return "kexec-fast", "direct kexec_load with the header built here"
        if caps.kexec_binary:
            return "kexec", f"kexec-tools at {caps.kexec_binary} ({caps.fastpath})"
        return "dry-run", "no kexec binary found (install kexec-tools)"
    if requested == "dry-run":
        return "dry-run", "requested (--backend dry-run)"
    if requested == "kernel":
        if mode == HAND_OVER:
            return "kernel", f"requested; {mode_why}"
        if not caps.kernel_owns_header:
            raise BackendUnavailableError(
                "kernel backend",
                f"the kernel does not update the elfcorehdr here (crash_hotplug is missing or reads 0; no hand-over: {mode_why})",
                "use --backend auto",
            )
        return "kernel", "requested; crash_hotplug reads 1"
    if caps.kexec_crash_loaded is None:
        raise BackendUnavailableError(f"{requested} backend", no_kexec, "use --backend dry-run")
    if caps.kexec_crash_size == 0:
        raise BackendUnavailableError(f"{requested} backend", no_region)
    if requested == "kexec-fast":
        if caps.fastpath:
            raise BackendUnavailableError("kexec-fast backend", caps.fastpath, "use --backend kexec")
        return "kexec-fast", "requested"
    if not caps.kexec_binary:
        raise BackendUnavailableError("kexec backend", "no kexec binary found", "install kexec-tools or set [kexec] binary")
    return "kexec", "requested"
