"""What the distro's kdump service loads: kernel, initrd, command line, syscall.

The ``kexec`` backend must load exactly what the distro's service would, so it
reads the same configuration (without executing it: these files are shell, but
only plain ``KEY=value`` assignments are honoured):

- Debian/Ubuntu ``kdump-tools``: ``/etc/default/kdump-tools`` (KDUMP_KERNEL,
  KDUMP_INITRD, KDUMP_CMDLINE, KDUMP_CMDLINE_APPEND, KDUMP_KEXEC_ARGS) with
  ``kdump-config``'s defaults: kernel /var/lib/kdump/vmlinuz, initrd
  /var/lib/kdump/initrd.img, command line = /proc/cmdline minus
  ``crashkernel= hugepages= hugepagesz= abm=`` plus "reset_devices
  systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll usbcore.nousb";
  ``kexec -p`` (kexec_load) unless KDUMP_KEXEC_ARGS has ``-s`` (kdump-config
  also adds ``-s`` under Secure Boot: set ``[kexec] load-path`` then).
- Fedora/RHEL ``kdump-utils``/``kexec-tools``: ``/etc/sysconfig/kdump``
  (KDUMP_KERNELVER, KDUMP_COMMANDLINE, KDUMP_COMMANDLINE_REMOVE,
  KDUMP_COMMANDLINE_APPEND, KEXEC_ARGS, KDUMP_IMG, KDUMP_IMG_EXT) with
  ``kdumpctl``'s defaults: kernel /boot/vmlinuz-$(uname -r), initrd
  /boot/initramfs-$(uname -r)kdump.img; kexec_file_load when KEXEC_ARGS has
  ``-s`` (RHEL 9's x86_64 default).

Explicit ``[kexec]`` settings win over both.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from ground.errors import ConfigError

from ._config import KexecSettings
from ._errors import BackendUnavailableError

DEBIAN_DEFAULTS = "/etc/default/kdump-tools"
REDHAT_SYSCONFIG = "/etc/sysconfig/kdump"
DEBIAN_APPEND = "reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll usbcore.nousb"
DEBIAN_REMOVE = ("crashkernel", "hugepages", "hugepagesz", "abm")
REDHAT_ALWAYS_REMOVE = ("crashkernel",)

_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_shell_assignments(text: str, path: str) -> dict[str, str]:
    """``KEY=value`` lines of a shell config file, unquoted.  Lines that are
    not plain assignments (conditionals, commands) are ignored, as is anything
    that needs expansion: it is not run."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ASSIGN.match(line)
        if m is None:
            continue
        key, value = m.groups()
        try:
            words = shlex.split(value, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}", f"cannot parse {key}: {exc}") from None
        out[key] = " ".join(words)
    return out


def clean_cmdline(cmdline: str, remove: tuple[str, ...]) -> str:
    words = [w for w in cmdline.split() if w.split("=", 1)[0] not in remove]
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class KexecCommand:
    """One kexec-tools invocation that (re)loads the crash kernel."""

    binary: str
    kernel: str
    initrd: str | None
    cmdline: str
    load_path: str  # "kexec_load" | "kexec_file_load"
    extra_args: tuple[str, ...]
    source: str  # where the values came from

    def argv(self) -> list[str]:
        # Never "-u" first: kexec_load frees the old image itself inside the
        # syscall (kernel/kexec.c do_kexec_load), an unload only widens the
        # window with no crash kernel.
        argv = [self.binary, "-p", "-s" if self.load_path == "kexec_file_load" else "-c"]
        if self.initrd:
            argv.append(f"--initrd={self.initrd}")
        argv.append(f"--command-line={self.cmdline}")
        argv.extend(self.extra_args)
        argv.append(self.kernel)
        return argv


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None


def _load_path_from_args(args: str) -> str | None:
    words = args.split()
    if "-s" in words or "--kexec-file-syscall" in words:
        return "kexec_file_load"
    if "-c" in words or "--kexec-syscall" in words:
        return "kexec_load"
    return None


def _other_args(args: str) -> tuple[str, ...]:
    drop = {"-s", "-c", "-a", "-p", "--kexec-file-syscall", "--kexec-syscall", "--kexec-syscall-auto", "--load-panic"}
    return tuple(w for w in args.split() if w not in drop)


def debian_defaults(values: Mapping[str, str], proc_cmdline: str) -> dict[str, object]:
    cmdline = values.get("KDUMP_CMDLINE") or clean_cmdline(proc_cmdline, DEBIAN_REMOVE)
    append = values.get("KDUMP_CMDLINE_APPEND", DEBIAN_APPEND)
    args = values.get("KDUMP_KEXEC_ARGS", "")
    return {
        "kernel": values.get("KDUMP_KERNEL") or "/var/lib/kdump/vmlinuz",
        "initrd": values.get("KDUMP_INITRD") or "/var/lib/kdump/initrd.img",
        "cmdline": f"{cmdline} {append}".strip(),
        "load_path": _load_path_from_args(args) or "kexec_load",
        "extra_args": _other_args(args),
    }


def redhat_defaults(values: Mapping[str, str], proc_cmdline: str, release: str) -> dict[str, object]:
    ver = values.get("KDUMP_KERNELVER") or release
    img = values.get("KDUMP_IMG") or "vmlinuz"
    ext = values.get("KDUMP_IMG_EXT", "")
    remove = tuple(values.get("KDUMP_COMMANDLINE_REMOVE", "").split()) + REDHAT_ALWAYS_REMOVE
    cmdline = clean_cmdline(values.get("KDUMP_COMMANDLINE") or proc_cmdline, remove)
    append = values.get("KDUMP_COMMANDLINE_APPEND", "")
    args = values.get("KEXEC_ARGS", "")
    bootdir = values.get("KDUMP_BOOTDIR") or "/boot"
    return {
        "kernel": f"{bootdir}/{img}-{ver}{ext}",
        "initrd": f"{bootdir}/initramfs-{ver}kdump.img",
        "cmdline": f"{cmdline} {append}".strip(),
        "load_path": _load_path_from_args(args) or "kexec_load",
        "extra_args": _other_args(args),
    }


def find_kexec_binary(configured: str = "") -> str | None:
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("kexec")
    if found:
        return found
    for candidate in ("/sbin/kexec", "/usr/sbin/kexec"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve_kexec_command(
    settings: KexecSettings,
    *,
    etc: str = "/etc",
    proc_cmdline: str | None = None,
    release: str | None = None,
    check_files: bool = True,
) -> KexecCommand:
    """The kexec command the ``kexec`` backend runs, from ``[kexec]`` settings
    over the distro's configuration.  Raises :class:`ConfigError` for a named
    file that does not exist and :class:`BackendUnavailableError` when there
    is no kexec binary or no kernel to load."""
    if proc_cmdline is None:
        proc_cmdline = _read("/proc/cmdline") or ""
    release = release or os.uname().release
    debian_path = os.path.join(etc, "default/kdump-tools")
    redhat_path = os.path.join(etc, "sysconfig/kdump")

    base: dict[str, object] = {}
    source = "kdump-coalesce config"
    distro = settings.distro
    if distro in ("auto", "debian"):
        text = _read(debian_path)
        if text is not None:
            base, source = debian_defaults(parse_shell_assignments(text, debian_path), proc_cmdline), debian_path
        elif distro == "debian":
            raise ConfigError("[kexec] distro", f"debian: {debian_path} does not exist (is kdump-tools installed?)")
    if not base and distro in ("auto", "redhat"):
        text = _read(redhat_path)
        if text is not None:
            base, source = redhat_defaults(parse_shell_assignments(text, redhat_path), proc_cmdline, release), redhat_path
        elif distro == "redhat":
            raise ConfigError("[kexec] distro", f"redhat: {redhat_path} does not exist (is kdump-utils installed?)")

    binary = find_kexec_binary(settings.binary)
    if binary is None:
        if settings.binary:
            raise ConfigError("[kexec] binary", f"{settings.binary} is not an executable file")
        raise BackendUnavailableError("kexec backend", "no kexec binary on PATH, /sbin or /usr/sbin", "install kexec-tools or set [kexec] binary")

    kernel = settings.kernel or str(base.get("kernel", ""))
    if not kernel:
        raise BackendUnavailableError(
            "kexec backend", "no capture kernel configured", f"set [kexec] kernel, or install the distro's kdump service ({debian_path} or {redhat_path})"
        )
    initrd = settings.initrd or (str(base["initrd"]) if base.get("initrd") else None)
    cmdline = settings.cmdline or str(base.get("cmdline", "")) or clean_cmdline(proc_cmdline, DEBIAN_REMOVE)
    if settings.append:
        cmdline = f"{cmdline} {settings.append}".strip()
    load_path = settings.load_path if settings.load_path != "auto" else str(base.get("load_path", "kexec_load"))
    extra = tuple(base.get("extra_args", ())) + settings.extra_args  # type: ignore[arg-type]

    if check_files:
        where = "[kexec] kernel" if settings.kernel else f"{source}: kernel"
        if not os.path.isfile(kernel):
            raise ConfigError(where, f"{kernel} does not exist")
        if initrd and not os.path.isfile(initrd):
            if settings.initrd:
                raise ConfigError("[kexec] initrd", f"{initrd} does not exist")
            initrd = None  # kdump-config passes --initrd only when the file exists
    if settings.kernel or settings.initrd or settings.cmdline:
        source = f"{source} + [kexec]" if base else "[kexec]"
    return KexecCommand(binary, kernel, initrd, cmdline, load_path, extra, source)
