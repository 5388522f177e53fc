"""What this host can do, one capability at a time (``kdump-coalesce doctor``).

Each check reads or tries the real thing (a program that loads or not, a
file that exists or not) and says what it found and, when it is missing,
what to do.  ``required`` checks decide whether ``run`` can work here.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from . import _sysfs
from ._bpf import plan_functions
from ._btf import Btf
from ._bpf_program import KEXEC_SYSCALLS, MEMORY_FUNCS, PRESENCE_FUNCS, MemoryProbe
from ._bpf_syscall import probe_bpf_syscall, probe_fentry, probe_kprobe, probe_raw_tracepoint
from ._kmsg import KMSG_PATH, kmsg_readable
from ._coverage import ALL_CHANGES, CPU_ONLINE_OFFLINE, MEMORY_ADD_REMOVE, MEMORY_ONLINE_OFFLINE, Change
from ._select import plan_coverage
from ._uevent import NETLINK_KOBJECT_UEVENT, UEVENT_GROUP_KERNEL

Status = Literal["ok", "warn", "missing"]

UDEV_RULE_DIRS = ("/lib/udev/rules.d", "/usr/lib/udev/rules.d", "/etc/udev/rules.d")
DISTRO_UDEV_RULES = {
    "50-kdump-tools.rules": "Debian/Ubuntu kdump-tools",
    "98-kexec.rules": "Fedora/RHEL kdump-utils",
    "70-kdump.rules": "SUSE kdump",
}


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    status: Status
    found: str  # what was found
    fix: str = ""  # what to do when it is not ok
    required: bool = False  # run cannot work without it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        mark = {"ok": "ok", "warn": "WARN", "missing": "MISSING"}[self.status]
        text = f"{mark:<7} {self.name:<22} {self.found}"
        if self.fix and self.status != "ok":
            text += f" -> {self.fix}"
        return text


def check_root() -> Capability:
    if os.geteuid() == 0:
        return Capability("root", "ok", "running as root", required=True)
    return Capability(
        "root", "missing", f"running as uid {os.geteuid()}", "run as root (sudo): BPF, SO_RCVBUFFORCE and kexec need it",
        required=True,
    )


def check_bpf_syscall() -> Capability:
    result = probe_bpf_syscall()
    return Capability(
        "bpf syscall", "ok" if result else "missing", result.detail,
        "needs root (CAP_BPF); check kernel.unprivileged_bpf_disabled and lockdown",
    )


# Each check that reads BTF takes a loader; ``all_checks`` passes one that
# reads and indexes it once for all of them (a pass over vmlinux BTF takes
# seconds under qemu's TCG), a lone check reads it itself.
BtfLoader = Callable[[], Btf | None]


def _btf_loader(root: str, load_btf: BtfLoader | None) -> Btf | None:
    return load_btf() if load_btf is not None else _sysfs.load_vmlinux_btf(root)


def check_btf(root: str = "/", load_btf: BtfLoader | None = None) -> Capability:
    btf = _btf_loader(root, load_btf)
    if btf is None:
        return Capability(
            "BTF", "missing", "/sys/kernel/btf/vmlinux missing or unreadable",
            "kernel built without CONFIG_DEBUG_INFO_BTF: fentry is impossible; CPUHP_ONLINE comes from the states file",
        )
    states = _sysfs.cpuhp_states(root, btf=btf)
    detail = f"CPUHP_ONLINE={states.online}" if states is not None and states.origin.startswith("BTF") else "no enum cpuhp_state"
    return Capability("BTF", "ok", f"/sys/kernel/btf/vmlinux ({detail})")


def check_bcc_headers() -> Capability:
    release = platform.release()
    build = f"/lib/modules/{release}/build"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Capability(
            "BCC + kernel headers", "missing", "python module bcc not importable",
            "apt install python3-bpfcc (and use a venv made with --system-site-packages)",
        )
    if not os.path.isdir(os.path.join(build, "include")):
        return Capability(
            "BCC + kernel headers", "missing", f"{build} missing",
            "apt install linux-headers-$(uname -r), or link Debian's linux-headers-*-amd64 there "
            "('./bootstrap setup' does it); without them only uevents work",
        )
    target = os.path.realpath(build)
    note = "" if release in target else " (headers of another kernel: fine for tracepoint programs)"
    return Capability("BCC + kernel headers", "ok", f"bcc importable, {build} -> {target}{note}")


def check_cpuhp_tracepoint(root: str = "/", load_btf: BtfLoader | None = None) -> Capability:
    states = _sysfs.cpuhp_states(root, btf=_btf_loader(root, load_btf))
    attach = probe_raw_tracepoint("cpuhp_exit")
    if not attach:
        return Capability(
            "cpuhp tracepoints", "missing", attach.detail,
            "needs root and CONFIG_HOTPLUG_CPU; CPU events then come from uevents",
        )
    if states is None:
        return Capability(
            "cpuhp tracepoints", "missing", "cpuhp_exit attaches but CPUHP_ONLINE is unknown",
            "needs BTF or /sys/devices/system/cpu/hotplug/states",
        )
    return Capability(
        "cpuhp tracepoints", "ok",
        f"raw tracepoint cpuhp_exit attaches; CPUHP_ONLINE={states.online}, CPUHP_TEARDOWN_CPU={states.teardown} ({states.origin})",
    )


def check_kexec_tracepoints(root: str = "/") -> Capability:
    base = _sysfs.tracefs_dir(root)
    if base is None:
        return Capability(
            "kexec syscall events", "warn", "tracefs not mounted",
            "the bpf source mounts it at /sys/kernel/tracing when it starts (mount -t tracefs nodev /sys/kernel/tracing)",
        )
    names = [n for _, n in KEXEC_SYSCALLS if _sysfs.tracepoint_exists("syscalls", f"sys_enter_{n}", root)]
    if not names:
        return Capability(
            "kexec syscall events", "warn", f"no syscalls/sys_enter_kexec_* in {base}/events",
            "kernel without CONFIG_KEXEC or CONFIG_FTRACE_SYSCALLS: reload windows are bounded by the loader's lifetime",
        )
    return Capability("kexec syscall events", "ok", f"{', '.join(names)} traced from {base}")


def check_kprobes(root: str = "/") -> Capability:
    results = [probe_kprobe(f, root) for f in MEMORY_FUNCS]
    if all(results):
        return Capability("kprobes", "ok", "; ".join(r.detail for r in results))
    detail = "; ".join(dict.fromkeys(r.detail for r in results if not r))
    return Capability("kprobes", "missing", detail, "memory events come from fentry if it works, else from uevents")


def check_fentry(root: str = "/", load_btf: BtfLoader | None = None) -> Capability:
    btf = _btf_loader(root, load_btf)
    results = [probe_fentry(f, btf.func_id(f) if btf is not None else None) for f in MEMORY_FUNCS]
    if all(results):
        return Capability("fentry", "ok", "; ".join(r.detail for r in results))
    detail = "; ".join(r.detail for r in results if not r)
    return Capability(
        "fentry", "missing", detail,
        "needs BTF and BPF trampolines (x86_64, CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS); memory falls back to kprobes, then uevents",
    )


def check_memory_add_remove(root: str = "/", load_btf: BtfLoader | None = None) -> Capability:
    """The probe on where the System RAM resource appears and disappears
    (``add_memory_resource``/``try_remove_memory``), chosen as the BPF source
    chooses it: fentry, else kprobe.  Not required: the add/remove uevents
    are opened in every configuration."""
    probe, _params, reason = plan_functions(PRESENCE_FUNCS, _btf_loader(root, load_btf))
    funcs = " and ".join(PRESENCE_FUNCS)
    if probe is MemoryProbe.NONE:
        return Capability(
            "add/remove probes", "warn", f"no BPF probe: {reason}",
            "memory add/remove come from uevents alone (opened in every configuration, bpf or not)",
        )
    return Capability("add/remove probes", "ok", f"{probe} on {funcs} (return), and uevents alongside")


def check_uevents() -> Capability:
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT) as sock:
            sock.bind((0, UEVENT_GROUP_KERNEL))
    except OSError as exc:
        return Capability(
            "uevents", "missing", f"NETLINK_KOBJECT_UEVENT: {exc.strerror}",
            "kernel without CONFIG_NET or in a network namespace without uevents (containers): run on the host",
            required=True,
        )
    return Capability("uevents", "ok", "NETLINK_KOBJECT_UEVENT group 1 binds", required=True)


def check_block_size(root: str = "/") -> Capability:
    size = _sysfs.block_size_bytes(root)
    if size is None:
        return Capability(
            "block_size_bytes", "missing", "/sys/devices/system/memory/block_size_bytes missing",
            "kernel without CONFIG_MEMORY_HOTPLUG: memory uevents cannot be mapped to ranges", required=True,
        )
    return Capability("block_size_bytes", "ok", f"{size:#x} ({size >> 20} MiB per memory block)", required=True)


def check_kdump_loaded(root: str = "/") -> Capability:
    loaded = _sysfs.kexec_crash_loaded(root)
    if loaded is None:
        return Capability(
            "kdump loaded", "missing", "/sys/kernel/kexec_crash_loaded missing: kernel without CONFIG_KEXEC/CRASH_DUMP",
            "kdump cannot work on this kernel; run watches events but cannot load anything", required=True,
        )
    if not loaded:
        return Capability(
            "kdump loaded", "warn", "no crash kernel loaded (kexec_crash_loaded=0)",
            "load one (kdump-config load / kdumpctl start, crashkernel= on the command line); run loads on the first batch",
            required=True,
        )
    return Capability("kdump loaded", "ok", "crash kernel loaded (kexec_crash_loaded=1)", required=True)


def _crash_elfcorehdr_size(root: str) -> str | None:
    try:
        with open(os.path.join(root, "sys/kernel/crash_elfcorehdr_size")) as f:
            return f.read().strip()
    except OSError:
        return None


def check_crash_hotplug(root: str = "/") -> Capability:
    """Which path the host is on: does the kernel support crash hotplug
    (/sys/kernel/crash_elfcorehdr_size, a72bbec70da2 "crash: hotplug support
    for kexec_load()"), and was the loaded image loaded with it (the
    crash_hotplug files, 88a6f8994421: 1 for kexec_file_load or kexec_load
    with KEXEC_UPDATE_ELFCOREHDR, 0 for plain kexec -p or nothing loaded)?
    What ``auto`` does about it is the ``auto plan`` line (kdump_coalesce
    doctor, from the updater)."""
    values = {kind: _sysfs.crash_hotplug(kind, root) for kind in ("cpu", "memory")}
    size = _crash_elfcorehdr_size(root)
    shown = ", ".join(f"{k}={v if v is not None else 'absent'}" for k, v in values.items())
    shown += f", crash_elfcorehdr_size={size if size is not None else 'absent'}"
    loaded = _sysfs.kexec_crash_loaded(root)
    if all(v is None for v in values.values()) and size is None:
        return Capability("crash_hotplug", "ok", f"{shown}: no CONFIG_CRASH_HOTPLUG, the daemon reloads the header per batch")
    if "1" in values.values():
        return Capability(
            "crash_hotplug", "ok",
            f"{shown}: the loaded image has the kernel's hotplug support (kexec_file_load, or kexec_load with "
            "KEXEC_UPDATE_ELFCOREHDR): the kernel rewrites the elfcorehdr itself; the daemon stands aside and repairs",
        )
    image = "no crash kernel is loaded" if loaded is False else "the loaded image has no hotplug support (plain kexec -p)"
    if size is None:
        return Capability("crash_hotplug", "warn", f"{shown}: {image}; no crash_elfcorehdr_size, so no kexec_load hand-over")
    return Capability(
        "crash_hotplug", "ok",
        f"{shown}: kernel supports crash hotplug, {image}; --backend auto hands the header over with one kexec_load "
        "(KEXEC_UPDATE_ELFCOREHDR) when the fast path can run ([updater] kernel-hotplug = off keeps the daemon managing it)",
    )


def check_kmsg(root: str = "/", path: str = KMSG_PATH) -> Capability:
    """The kernel log, where the kernel says it skipped one of its own header updates."""
    supported = any(_sysfs.crash_hotplug(k, root) is not None for k in ("cpu", "memory")) or _crash_elfcorehdr_size(root) is not None
    problem = kmsg_readable(path)
    if not supported:
        return Capability("kernel log", "ok", f"{path}: not needed (no CONFIG_CRASH_HOTPLUG)")
    if problem:
        return Capability(
            "kernel log", "warn", f"{problem}: skipped in-kernel header updates (kexec_trylock() failed, elfsz > memsz) go unseen",
            "run as root (or with CAP_SYSLOG when kernel.dmesg_restrict is 1)",
        )
    return Capability("kernel log", "ok", f"{path} readable: skipped in-kernel header updates are seen and repaired")


def check_kexec_binary(run: Callable[[list[str]], str] | None = None) -> Capability:
    path = shutil.which("kexec") or next((p for p in ("/sbin/kexec", "/usr/sbin/kexec") if os.path.exists(p)), None)
    if path is None:
        return Capability(
            "kexec binary", "missing", "kexec not found", "apt install kexec-tools / dnf install kexec-tools", required=True
        )
    runner = run or _run_version
    text = runner([path, "--version"])
    m = re.search(r"kexec-tools\s+(\d+(?:\.\d+)+)", text)
    if m is None:
        return Capability("kexec binary", "warn", f"{path}: version unknown ({text.strip()[:60]!r})", required=True)
    version = tuple(int(x) for x in m.group(1).split("."))
    hotplug = " (--hotplug: kernel-managed updates possible)" if version >= (2, 0, 28) else ""
    return Capability("kexec binary", "ok", f"{path}: kexec-tools {m.group(1)}{hotplug}", required=True)


def _run_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run: {exc}"
    return done.stdout + done.stderr


def check_udev_rules(dirs: tuple[str, ...] = UDEV_RULE_DIRS) -> Capability:
    found: list[str] = []
    masked: list[str] = []
    for name in DISTRO_UDEV_RULES:
        paths = [os.path.join(d, name) for d in dirs if os.path.lexists(os.path.join(d, name))]
        # /etc overrides /lib and /usr/lib; a link to /dev/null masks the rule.
        etc = [p for p in paths if p.startswith("/etc/")]
        if etc and os.path.realpath(etc[0]) == "/dev/null":
            masked.append(name)
        elif paths:
            found.append(f"{paths[0]} ({DISTRO_UDEV_RULES[name]})")
    if found:
        names = " ".join(os.path.basename(f.split(" ")[0]) for f in found)
        return Capability(
            "distro udev rule", "warn", "present: " + ", ".join(found),
            f"it reloads kdump on every event, racing kdump-coalesce: mask it with "
            f"'ln -s /dev/null /etc/udev/rules.d/NAME' for {names}",
        )
    text = "none of " + ", ".join(DISTRO_UDEV_RULES) + " present"
    if masked:
        text += f" (masked: {', '.join(masked)})"
    return Capability("distro udev rule", "ok", text)


def all_checks() -> list[Capability]:
    btf = functools.cache(_sysfs.load_vmlinux_btf)
    return [
        check_root(),
        check_bpf_syscall(),
        check_btf(load_btf=btf),
        check_bcc_headers(),
        check_cpuhp_tracepoint(load_btf=btf),
        check_kexec_tracepoints(),
        check_kprobes(),
        check_fentry(load_btf=btf),
        check_memory_add_remove(load_btf=btf),
        check_uevents(),
        check_block_size(),
        check_kdump_loaded(),
        check_crash_hotplug(),
        check_kmsg(),
        check_kexec_binary(),
        check_udev_rules(),
    ]


def events_covered(checks: list[Capability]) -> dict[str, str]:
    """Which sources ``run --source auto`` would use for each change group
    (``"bpf"``, ``"uevent"``, ``"bpf+uevent"`` or ``"none"``), by the same
    rule as the real selection (:func:`probes._select.plan_coverage`)."""
    by = {c.name: c.status == "ok" for c in checks}
    bpf = by.get("bpf syscall", False) and by.get("BCC + kernel headers", False)
    bpf_can: frozenset[Change] | None = None
    if bpf:
        bpf_can = frozenset()
        if by.get("cpuhp tracepoints", False):
            bpf_can |= CPU_ONLINE_OFFLINE
        if by.get("fentry", False) or by.get("kprobes", False):
            bpf_can |= MEMORY_ONLINE_OFFLINE
        if by.get("add/remove probes", False):
            bpf_can |= MEMORY_ADD_REMOVE
    coverage = plan_coverage("auto", ALL_CHANGES, bpf_can)
    uevents_for = {"cpu": by.get("uevents", False), "memory": by.get("uevents", False) and by.get("block_size_bytes", False)}
    out: dict[str, str] = {}
    for label, sources in coverage.by_group(ALL_CHANGES).items():
        usable = [s for s in sources if s == "bpf" or uevents_for[label.split(" ", 1)[0]]]
        out[label] = "+".join(usable) or "none"
    return out


def run_can_work(checks: list[Capability]) -> tuple[bool, list[str]]:
    """``run`` works when every required check is ok, or a warning that
    ``run`` itself resolves (nothing loaded yet: it loads)."""
    problems = [
        f"{c.name}: {c.found}" for c in checks if c.required and c.status == "missing"
    ]
    covered = events_covered(checks)
    problems += [f"no event source for {kind}" for kind, how in covered.items() if how == "none"]
    return not problems, problems
