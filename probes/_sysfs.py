"""The few sysfs/procfs/tracefs files the probes, ``doctor`` and ``trace`` read.

Helpers are named after the kernel files they read.  Each takes a ``root``
prefix (default ``/``) so that unit tests can point it at a captured tree
(tests/fixtures/host).  A file the running kernel does not have is reported
as ``None`` (missing), never as an exception: the 6.18 host has no
``kexec_crash_loaded`` nor ``crash_hotplug`` (no CONFIG_KEXEC), 6.1 has no
``crash_hotplug`` (CONFIG_CRASH_HOTPLUG and those files came in Linux 6.6,
88a6f8994421 "crash: memory and CPU hotplug sysfs attributes"), and that is
information.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

from ground import sysfs
from ground.sysfs import SYS_CPU, SYS_MEMORY
from ground.sysfs import block_size_bytes as block_size_bytes  # re-exported: probes, doctor and trace read it here

from ._btf import Btf, BtfError

TRACEFS_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")


def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def read_text(path: str) -> str | None:
    """The file's stripped text; ``None`` when it does not exist."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,6,8-9`` (the kernel's cpulist format) -> CPU numbers (:func:`ground.sysfs.parse_cpu_list`)."""
    return list(sysfs.parse_cpu_list(text))


def cpus_online(root: str = "/") -> list[int] | None:
    cpus = sysfs.cpu_list("online", root)
    return list(cpus) if cpus is not None else None


def memory_blocks_online(root: str = "/") -> int | None:
    """How many memory blocks are online (``memoryN/state`` == ``online``)."""
    base = _path(root, SYS_MEMORY)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return None
    count = 0
    for name in names:
        if name.startswith("memory") and name[6:].isdigit():
            if read_text(os.path.join(base, name, "state")) == "online":
                count += 1
    return count


def crash_hotplug(kind: str, root: str = "/") -> str | None:
    """``/sys/devices/system/{cpu,memory}/crash_hotplug``: ``"1"`` when the
    kernel itself rewrites the elfcorehdr on hotplug (CONFIG_CRASH_HOTPLUG,
    Linux 6.6: 88a6f8994421 "crash: memory and CPU hotplug sysfs
    attributes", ea53ad9cf73b "x86/crash: add x86 crash hotplug support";
    and an image loaded to allow it), ``"0"`` otherwise, ``None``
    when the file does not exist, ``"unreadable"`` when it is root-only (the
    cpu one is) and we are not root."""
    directory = SYS_CPU if kind == "cpu" else SYS_MEMORY
    try:
        return read_text(_path(root, f"{directory}/crash_hotplug"))
    except PermissionError:
        return "unreadable"


def kexec_crash_loaded(root: str = "/") -> bool | None:
    """``/sys/kernel/kexec_crash_loaded``; ``None`` on a kernel without kexec."""
    text = read_text(_path(root, "sys/kernel/kexec_crash_loaded"))
    return None if text is None else text == "1"


@dataclass(frozen=True, slots=True)
class CpuhpStates:
    """The config-dependent numbers of ``enum cpuhp_state`` the BPF filter needs."""

    online: int  # CPUHP_ONLINE: a CPU that reached it is fully online
    teardown: int  # CPUHP_TEARDOWN_CPU: takedown_cpu(); once it returns the CPU is dead
    origin: str  # where the numbers came from (BTF or the states file)


def cpuhp_states(root: str = "/", btf: Btf | None = None) -> CpuhpStates | None:
    """Resolve CPUHP_ONLINE / CPUHP_TEARDOWN_CPU at run time: from BTF ``enum
    cpuhp_state`` when the kernel has BTF, else from the ``online`` and
    ``cpu:teardown`` lines of /sys/devices/system/cpu/hotplug/states (whose
    numbers are the enum's values: kernel/cpu.c, ``states_show``)."""
    if btf is not None:
        values = btf.enum_values("cpuhp_state")
        if "CPUHP_ONLINE" in values and "CPUHP_TEARDOWN_CPU" in values:
            return CpuhpStates(values["CPUHP_ONLINE"], values["CPUHP_TEARDOWN_CPU"], "BTF enum cpuhp_state")
    text = read_text(_path(root, f"{SYS_CPU}/hotplug/states"))
    if text is None:
        return None
    by_name: dict[str, int] = {}
    for line in text.splitlines():
        number, sep, name = line.partition(":")
        if sep and number.strip().isdigit():
            by_name.setdefault(name.strip(), int(number))
    if "online" in by_name and "cpu:teardown" in by_name:
        return CpuhpStates(by_name["online"], by_name["cpu:teardown"], "/sys/devices/system/cpu/hotplug/states")
    return None


def load_vmlinux_btf(root: str = "/") -> Btf | None:
    try:
        return Btf.vmlinux(_path(root, "sys/kernel/btf/vmlinux"))
    except (OSError, BtfError):
        return None


def tracefs_dir(root: str = "/") -> str | None:
    """Where tracefs is mounted (its ``events`` directory exists), if anywhere."""
    for rel in TRACEFS_DIRS:
        if os.path.isdir(_path(root, f"{rel}/events")):
            return _path(root, rel)
    return None


def mount_tracefs() -> str:
    """Mount tracefs at /sys/kernel/tracing, as systemd's sys-kernel-tracing.mount
    does at boot on every distro this targets; minimal hosts and VM guests
    boot without it.  Returns the directory; raises OSError on failure."""
    target = "/sys/kernel/tracing"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:  # EBUSY: mounted meanwhile (by someone else)
            raise OSError(err, f"mount -t tracefs nodev {target}: {os.strerror(err)}")
    return target


def tracepoint_exists(category: str, event: str, root: str = "/") -> bool:
    base = tracefs_dir(root)
    return base is not None and os.path.isdir(os.path.join(base, "events", category, event))
