"""The updater's config sections: ``[updater]`` and ``[kexec]``.

Every field is a TOML key; a field with ``cli=True`` is also an option of
``kdump-coalesce run`` (see :mod:`ground.config`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ground.config import option
from ground.errors import ConfigError

from ._elfcorehdr import CPU_NOTE_CHOICES

BACKENDS = ("auto", "kernel", "kexec", "kexec-fast", "dry-run")
LOAD_PATHS = ("auto", "kexec_load", "kexec_file_load")
DISTROS = ("auto", "debian", "redhat", "none")
FAST_VERIFY_CHOICES = ("first-full", "always-full")
KERNEL_HOTPLUG_CHOICES = ("auto", "off")


@dataclass(frozen=True, slots=True)
class UpdaterSettings:
    backend: str = option(
        "auto",
        cli=True,
        choices=BACKENDS,
        help="how to keep the crash kernel's elfcorehdr current; auto: kernel if it updates the header itself, "
        "else kexec-fast/kexec, else dry-run on a kernel that cannot kexec",
    )
    staging_dir: str = option(
        "/var/lib/kdump-coalesce/staging", cli=True, help="where dry-run stages headers and manifests"
    )
    status_file: str = option("/run/kdump-coalesce/status.json", cli=True, help="JSON status that 'status' reads")
    cpu_notes: str = option(
        "auto",
        cli=True,
        choices=("auto", *CPU_NOTE_CHOICES),
        help="one PT_NOTE per present/possible/online CPU; auto follows the loader "
        "(present for kexec_load, possible for kexec_file_load)",
    )
    low_1m: str = option(
        "auto", cli=True, choices=("auto", "keep", "cut"), help="dump the low 1 MiB (keep) or not (cut); auto follows the loader"
    )
    driver_managed: bool = option(
        True, help="dump driver-managed RAM ('System RAM (kmem)', '(virtio_mem)'); kexec-tools 2.0.25 leaves it out"
    )
    headroom_ranges: int = option(64, cli=True, help="spare program headers in the elfcorehdr segment for hot-added ranges")
    headroom_cpus: int = option(8, help="spare program headers in the elfcorehdr segment for hot-added CPUs")
    keep_staged: int = option(8, help="how many staged dry-run loads to keep")
    retry_delay: float = option(0.5, help="seconds before the one retry of a failed reload")
    removal_recheck: float = option(
        5.0,
        help="when a batch's events say memory was removed but /proc/iomem still lists it, re-read the live state "
        "for up to this many seconds before deciding (0: decide on the first read)",
    )
    removal_recheck_interval: float = option(0.25, help="seconds between those re-reads")
    kernel_hotplug: str = option(
        "auto",
        cli=True,
        choices=KERNEL_HOTPLUG_CHOICES,
        help="on a kernel with crash hotplug (/sys/kernel/crash_elfcorehdr_size exists, Linux 6.6+): auto: with "
        "--backend auto, let the kernel keep the elfcorehdr current: stand aside when the loaded image has the kernel's "
        "hotplug support (crash_hotplug reads 1), else hand over with one kexec_load carrying KEXEC_UPDATE_ELFCOREHDR; "
        "then repair what the kernel leaves wrong (removed memory, skipped updates); off: the daemon manages the "
        "header itself, reloading per batch as on older kernels",
    )
    snapshot_root: str = option("/", help="read /proc and /sys under this directory (tests, replaying a captured host)")
    fast_verify: str = option(
        "first-full",
        choices=FAST_VERIFY_CHOICES,
        help="kexec-fast: how each load's purgatory digest is re-checked before the syscall; first-full: a full "
        "independent SHA-256 of every segment on the first load after each prepare, then an independent hashlib "
        "state over the unchanged buffers plus the new header; always-full: the full SHA-256 before every load "
        "(as slow as kexec -p's hashing)",
    )
    fast_purgatory: str = option(
        "", help="kexec-fast: file holding kexec-tools' purgatory (the kexec binary or a bare ET_REL object); default: the kexec binary"
    )

    def __post_init__(self) -> None:
        if self.kernel_hotplug not in KERNEL_HOTPLUG_CHOICES:
            raise ConfigError("[updater] kernel-hotplug", f"must be one of {', '.join(KERNEL_HOTPLUG_CHOICES)}, got {self.kernel_hotplug!r}")
        if self.fast_verify not in FAST_VERIFY_CHOICES:
            raise ConfigError("[updater] fast-verify", f"must be one of {', '.join(FAST_VERIFY_CHOICES)}, got {self.fast_verify!r}")
        if self.headroom_ranges < 0 or self.headroom_cpus < 0:
            raise ConfigError("[updater] headroom-ranges/headroom-cpus", "must be >= 0")
        if self.keep_staged < 1:
            raise ConfigError("[updater] keep-staged", "must be >= 1")
        if self.retry_delay < 0:
            raise ConfigError("[updater] retry-delay", "must be >= 0")


@dataclass(frozen=True, slots=True)
class KexecSettings:
    """The crash kernel to load.  Unset values come from the distro's kdump
    configuration (``distro``), then from kexec-tools' own defaults."""

    binary: str = option("", cli=True, help="kexec-tools binary (default: kexec on PATH, /sbin/kexec)")
    kernel: str = option("", cli=True, help="capture kernel image (default: the distro's)")
    initrd: str = option("", cli=True, help="capture initrd (default: the distro's)")
    cmdline: str = option("", cli=True, help="capture kernel command line (default: the distro's, or /proc/cmdline cleaned)")
    append: str = option("", cli=True, help="appended to the command line")
    load_path: str = option(
        "auto", cli=True, choices=LOAD_PATHS, help="kexec_load (kexec -p) or kexec_file_load (kexec -s -p); auto: the distro's"
    )
    extra_args: tuple[str, ...] = option((), help="more kexec arguments, e.g. ['--reuse-cmdline']")
    distro: str = option("auto", cli=True, choices=DISTROS, help="read the kernel, initrd and command line from this distro's kdump config")
    timeout: float = option(60.0, help="seconds before a kexec run is killed and counted as failed")

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError("[kexec] timeout", "must be > 0")


SECTIONS: dict[str, type] = {"updater": UpdaterSettings, "kexec": KexecSettings}
