"""The VM tier's harness: a qemu guest running one of Debian's kernels (6.1, 6.12), driven from the host.

Read docs/vm-testbed.md for the design.  In short:

- ``tools/vm-assets`` (run by ``./bootstrap test``) puts each kernel and its
  two initramfs into a cache; :meth:`VmAssets.load` finds them by kernel name
  (``KERNELS``: bookworm's 6.1, bookworm-backports' 6.12 with
  CONFIG_CRASH_HOTPLUG).
- :class:`Guest` starts qemu (TCG) under ``timeout -s KILL`` (a hard limit that
  holds even if this process dies) and ``setpriv --pdeathsig KILL``, in its own
  process group, which :meth:`Guest.close` always kills.  Use it as a context
  manager: no qemu outlives a test.
- Commands run through a virtio-serial port (``kdc.cmd``) served by
  ``tools/vm/cmdserver``: the host writes the script into the shared exchange
  directory (virtio-9p ``kdc.xfer``, ``/run/kdc-xfer`` in the guest) and gets
  back output and exit status.  ``where="host"`` runs it chrooted into the
  host's own root filesystem (virtio-9p ``kdc.root``, read-only), which is how
  the guest runs the project's venv and BCC.
- The serial console (ttyS0) goes to a file: boot log, panic, and the capture
  kernel's dump of /proc/vmcore's headers (parsed by :mod:`testbed.vmcore`).
- QMP (own small client, :class:`QmpClient`) hot-plugs DIMMs and CPUs.

Every wait has a timeout; every failure raises :class:`VmError` (or a
subclass) with the console's tail attached.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ground import sysfs

from .vmcore import VmcoreHeader, VmcoreParseError, parse_capture_console, vmcore_bytes_from_console

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
DEFAULT_CACHE = Path("/var/cache/kdump-coalesce/vm")
# The guest kernels tools/vm-assets builds (its KERNELS), by the name test ids
# use; <cache>/current-<name> points at each one's directory.  "trixie" is
# trixie's own 6.12, for the guest on tools/vm/build-trixie-root's root (the
# Debian package test only).
KERNELS = ("6.1", "6.12", "trixie")
TRIXIE_ROOT = DEFAULT_CACHE / "trixie-root"
DEFAULT_KERNEL = "6.1"
QEMU = "qemu-system-x86_64"
# bookworm-backports' qemu 10, unpacked by tools/vm-assets under <cache>/qemu-bpo/
# (never installed): only for what the host's qemu 7.2 cannot do, i.e. unplug a
# vCPU under TCG without corrupting its heap (docs/vm-testbed.md).  The link
# points at the version directory; its `qemu-system-x86_64` is a wrapper that
# passes the package's own firmware (-L) and module directory.
QEMU_BACKPORTS = "backports"
QEMU_BACKPORTS_WRAPPER = Path("qemu-bpo") / "current" / "qemu-system-x86_64"
GIB = 1 << 30
MIB = 1 << 20

# Paths inside the guest's initramfs (tools/vm-assets puts them there).
GUEST_KEXEC = "/sbin/kexec"
# trixie's kexec-tools (>= 2.0.28: --hotplug) in the 6.12 guest's initramfs;
# VmAssets.kexec_hotplug says whether the guest has it.
GUEST_KEXEC_HOTPLUG = "/sbin/kexec-trixie"
GUEST_KERNEL = "/kdc/vmlinuz"
GUEST_CAPTURE_INITRD = "/kdc/capture.cpio.gz"
GUEST_XFER = "/run/kdc-xfer"

GUEST_APPEND = "console=ttyS0 crashkernel=256M memhp_default_state=online_movable panic=1"
# acpi_no_memhotplug: else the capture kernel re-creates hot-added DIMMs over
# the crashed kernel's memory (kernel-facts 7).
CAPTURE_APPEND = "console=ttyS0 acpi_no_memhotplug nr_cpus=1 irqpoll reset_devices panic=1"

Where = Literal["initramfs", "host"]
KexecMode = Literal["kexec_load", "kexec_file_load"]
KexecTools = Literal["bookworm", "trixie"]


class VmError(RuntimeError):
    """The guest or qemu did not do what the harness asked; the message says what."""


class VmUnavailable(VmError):
    """This machine cannot run the VM tier (not root, no qemu, no assets): skip with this reason."""


class GuestTimeout(VmError):
    pass


class GuestDied(VmError):
    pass


class BootCrashed(GuestDied):
    """The guest kernel oopsed or panicked before its command server came up."""


class CommandFailed(VmError):
    def __init__(self, message: str, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------
# Assets


@dataclass(frozen=True, slots=True)
class VmAssets:
    directory: Path
    kernel_release: str
    kernel: Path
    guest_initrd: Path
    capture_initrd: Path
    headers: Path
    headers_common: Path
    package: str
    package_version: str
    name: str = DEFAULT_KERNEL  # "6.1", "6.12": the KERNELS entry (test ids)
    # trixie's kexec-tools (--hotplug), when the guest has it: its path in the
    # guest's initramfs and a wrapper on the host root (for where="host").
    kexec_hotplug: str | None = None
    kexec_hotplug_host: Path | None = None
    kexec_hotplug_version: str | None = None
    # The ELF kernel inside `kernel`, which qemu boots through PVH (tools/vm-assets,
    # "the ELF kernel inside the bzImage"); None: the guest boots the bzImage.
    boot_kernel: Path | None = None

    @classmethod
    def load(cls, cache: Path | None = None, kernel: str = DEFAULT_KERNEL) -> VmAssets:
        """The assets of guest kernel `kernel` (a KERNELS name) from the cache tools/vm-assets fills."""
        if kernel not in KERNELS:
            raise VmUnavailable(f"no guest kernel {kernel!r}: the VM tier has {', '.join(KERNELS)}")
        cache = cache or Path(os.environ.get("KDUMP_COALESCE_VM_CACHE", str(DEFAULT_CACHE)))
        link = cache / f"current-{kernel}"
        if kernel == DEFAULT_KERNEL and not link.exists():
            link = cache / "current"  # a cache from before there were two kernels
        manifest = link / "assets.json"
        try:
            m = json.loads(manifest.read_text())
        except FileNotFoundError:
            raise VmUnavailable(
                f"no VM assets for kernel {kernel} at {manifest}: run tools/vm-assets as root (./bootstrap test does)"
            ) from None
        except ValueError as e:
            raise VmUnavailable(f"{manifest}: not JSON ({e}): re-run tools/vm-assets") from None
        d = manifest.parent.resolve()
        hp = m.get("kexec_hotplug")
        assets = cls(
            directory=d,
            kernel_release=str(m["kernel_release"]),
            kernel=d / str(m["kernel"]),
            guest_initrd=d / str(m["guest_initrd"]),
            capture_initrd=d / str(m["capture_initrd"]),
            headers=Path(str(m["headers"])),
            headers_common=Path(str(m["headers_common"])),
            package=str(m["package"]),
            package_version=str(m["package_version"]),
            name=str(m.get("kernel_name", kernel)),
            kexec_hotplug=str(hp["guest"]) if isinstance(hp, dict) else None,
            kexec_hotplug_host=Path(str(hp["host"])) if isinstance(hp, dict) else None,
            kexec_hotplug_version=str(hp["version"]) if isinstance(hp, dict) else None,
            boot_kernel=d / str(m["boot_kernel"]) if m.get("boot_kernel") else None,
        )
        if assets.name != kernel:
            raise VmUnavailable(f"{manifest} is kernel {assets.name}, not {kernel}: re-run tools/vm-assets")
        for p in (assets.kernel, assets.guest_initrd, assets.capture_initrd, *filter(None, [assets.boot_kernel])):
            if not p.is_file():
                raise VmUnavailable(f"{p} is missing: re-run tools/vm-assets")
        return assets

    def config(self, symbol: str) -> str | None:
        """CONFIG_<symbol>'s value in the guest kernel's config ("y", "m", "8192"), or None when unset."""
        prefix = f"CONFIG_{symbol}="
        for line in (self.directory / "config").read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None


def vm_unavailable_reason(kernel: str = DEFAULT_KERNEL) -> str | None:
    """Why the VM tier cannot run guest kernel `kernel` here, or None."""
    if os.geteuid() != 0:
        return "vm tier needs root"
    for tool in (QEMU, "timeout", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not found (./bootstrap setup installs qemu-system-x86)"
    try:
        VmAssets.load(kernel=kernel)
    except VmUnavailable as e:
        return str(e)
    return None


# --------------------------------------------------------------------------
# QMP


class QmpError(VmError):
    pass


class QmpClient:
    """A small synchronous QMP client over a unix socket (greeting, capabilities, execute, events)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._id = 0
        self._sock = _connect_unix(path, timeout)
        greeting = self._read_message(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise QmpError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestTimeout("QMP: no answer in time")
            r, _, _ = select.select([self._sock], [], [], left)
            if not r:
                continue
            chunk = self._sock.recv(65536)
            if not chunk:
                raise GuestDied("QMP: qemu closed the monitor")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise QmpError(f"QMP sent a non-object: {msg!r}")
        return msg

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Any:
        self._id += 1
        req: dict[str, Any] = {"execute": command, "id": self._id}
        if arguments:
            req["arguments"] = dict(arguments)
        self._sock.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != self._id:
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(f"QMP {command} {arguments}: {err.get('class')}: {err.get('desc')}")
            return msg.get("return")

    def wait_event(self, name: str, timeout: float, match: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Return (and consume) the first event `name` that `match` accepts, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name and (match is None or match(ev)):
                    return self.events.pop(i)
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise GuestTimeout(f"could not connect to {path}") from None
            time.sleep(0.02)


# --------------------------------------------------------------------------
# The guest


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: str
    rc: int
    output: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True, slots=True)
class Dimm:
    id: str
    memdev: str
    size: int
    addr: int

    @property
    def end(self) -> int:
        return self.addr + self.size


@dataclass(frozen=True, slots=True)
class Capture:
    """What one crash produced: the vmcore's header as the capture kernel saw it."""

    vmcore: VmcoreHeader
    cmdline: str
    seconds: float
    console: bytes


# The CPU and firmware identity that makes CPU hot-add work on both kernels
# under TCG.  qemu 7.2 lists the not-yet-present vCPUs in the MADT with
# Enabled=0 (and no Online Capable bit: its FADT is older than ACPI 6.3).
# Since the 6.9 topology rewrite (7c0edad3643f "x86/cpu/topology: Rework
# possible CPU management") only registered APICs become possible CPUs, and
# arch/x86/kernel/acpi/boot.c counts an Enabled=0 LAPIC only when a
# hypervisor is detected (adbf61cc47cb "x86/acpi/boot: Correct
# acpi_is_processor_usable() check again", in Debian's 6.12.95):
# "QEMU expects legacy "Enabled=0" LAPIC entries to be counted as usable".
# Under TCG no hypervisor is detected (CPUID 0x40000000 says "TCGTCGTCGTCG",
# which no hypervisor_x86 detector knows), so 6.12 boots with "2 present CPUs
# plus 0 hotplug CPUs" and device_add ends in "Unable to map lapic".  With
# the CPUID hypervisor bit off, arch/x86/kernel/cpu/vmware.c
# vmware_platform() looks at the DMI serial ("VMware") and asks the VMware
# backdoor (I/O port 0x5658), which qemu's vmport device (on by default for
# -M pc under TCG) answers: the kernel says "Hypervisor detected: VMware" and
# counts the six hotplug slots.  Both parts are needed.  6.1 (pre-6.9:
# every disabled LAPIC was a hotplug CPU) hot-adds with or without it.  The
# guest believes it runs on VMware; nothing in the tier depends on the
# hypervisor otherwise.  (/tmp/research-612 findings, section 3.)
GUEST_CPU = "qemu64,hypervisor=off"
GUEST_SMBIOS = ("type=1,serial=VMware-kdc",)
# What a boot that crashed before the command server looks like on the
# console.  Under TCG, 6.12 rarely takes an int3 Oops in sched_clock_cpu right
# after "sched_clock: Marking stable" (a static-key text_poke_bp seen by the
# other vCPU): an infrastructure failure, retried once.
BOOT_CRASH = re.compile(rb"Oops: |Kernel panic - not syncing|BUG: kernel NULL pointer")


@dataclass(slots=True)
class GuestConfig:
    mem_mib: int = 1024
    slots: int = 8
    maxmem_gib: int = 16
    smp: int = 2
    maxcpus: int = 8
    hostroot: bool = True
    # The directory exported as kdc.root (read-only): the host's own root, or
    # another Debian root such as tools/vm/build-trixie-root's.
    root_dir: str = "/"
    append: str = GUEST_APPEND
    # Hard wall-clock limit of the whole qemu run (enforced by timeout -s KILL).
    hard_timeout: float = 600.0
    boot_timeout: float = 90.0
    virtio_mem_gib: int = 0
    extra_args: Sequence[str] = ()
    machine: str = "pc"
    cpu: str = GUEST_CPU
    smbios: Sequence[str] = GUEST_SMBIOS  # each one a -smbios argument
    accel: str = "tcg"
    # Boots that oops or panic before the command server is up are retried
    # this many times (a fresh qemu, the console of the failed one kept).
    boot_retries: int = 1
    # The qemu binary: None is the host's (qemu 7.2, every test but one);
    # QEMU_BACKPORTS is bookworm-backports' qemu 10 (backports_qemu()); anything
    # else is a program name or path.
    qemu: str | None = None
    # How qemu starts the guest kernel: "pvh" enters the ELF kernel inside
    # Debian's vmlinuz directly (VmAssets.boot_kernel; ~5 s less per 6.1 boot
    # under TCG, where the bzImage spends them decompressing itself), "bzimage"
    # boots the vmlinuz through the BIOS as a Debian host does.  None: pvh
    # when the assets have it.  Either way the capture kernel is the vmlinuz.
    boot: Literal["pvh", "bzimage"] | None = None
    # qemu resets the machine when the guest reboots, instead of exiting
    # (-no-reboot): with a capture kernel that reboots after its dump
    # (tools/vm/capture, kdc.capture_then=reboot) one Guest lives through
    # several panics, its hot-plugged DIMMs and CPUs still plugged
    # (crash_and_capture(reboot=True)).
    reboot: bool = False


def backports_qemu(cache: Path | None = None) -> Path:
    """The wrapper of bookworm-backports' qemu 10 that tools/vm-assets unpacked.

    Missing is a VmError, not VmUnavailable: ./bootstrap test fetches it with
    the kernels, so a test that needs it fails (and does not skip) without it."""
    cache = cache or Path(os.environ.get("KDUMP_COALESCE_VM_CACHE", str(DEFAULT_CACHE)))
    wrapper = cache / QEMU_BACKPORTS_WRAPPER
    if not os.access(wrapper, os.X_OK):
        raise VmError(f"{wrapper} is missing: run tools/vm-assets as root (./bootstrap test does) to fetch qemu 10")
    return wrapper


def resolve_qemu(choice: str | None) -> str:
    """The program GuestConfig.qemu names."""
    if choice is None:
        return QEMU
    if choice == QEMU_BACKPORTS:
        return str(backports_qemu())
    return choice


class Guest:
    """One qemu guest.  ``with Guest(assets) as g: g.run("uname -r")``."""

    def __init__(self, assets: VmAssets, config: GuestConfig | None = None, name: str = "guest") -> None:
        self.assets = assets
        self.config = config or GuestConfig()
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kdc-vm-{name}-"))
        self.xfer = self.workdir / "xfer"
        (self.xfer / "cmd").mkdir(parents=True)
        # The guest mounts tmpfs over /tmp, /run and /var/tmp of the host root
        # it chroots into; tools/vm/rc binds this checkout back at its own
        # path, so a checkout that lives there (a CI clone) stays visible.
        (self.xfer / "repo-path").write_text(f"{REPO}\n")
        self.console_path = self.workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QmpClient | None = None
        self._cmd: socket.socket | None = None
        self._cmd_buf = b""
        self._next_id = 0
        self._dimms = 0
        self._next_fetch = 0
        self.boot_seconds = 0.0
        self.started_at = 0.0
        self.boot_retried: list[Path] = []  # consoles of boots that crashed and were retried

    # -- lifecycle

    def __enter__(self) -> Guest:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def qemu_argv(self) -> list[str]:
        c = self.config
        w = self.workdir
        argv = [
            resolve_qemu(c.qemu), "-accel", c.accel, "-M", c.machine, "-cpu", c.cpu,
            *(a for s in c.smbios for a in ("-smbios", s)),
            "-m", f"{c.mem_mib}M,slots={c.slots},maxmem={c.maxmem_gib}G",
            "-smp", f"{c.smp},maxcpus={c.maxcpus}",
            "-kernel", str(self.boot_kernel()), "-initrd", str(self.assets.guest_initrd),
            "-append", c.append,
            "-display", "none", "-vga", "none", "-monitor", "none", *(() if c.reboot else ("-no-reboot",)),
            "-nodefaults", "-net", "none",
            "-chardev", f"file,id=con0,path={self.console_path}", "-serial", "chardev:con0",
            "-qmp", f"unix:{w / 'qmp.sock'},server=on,wait=off",
            # The command channel; wait=on: qemu starts the guest only once the
            # harness is connected, so the guest's first read never sees EOF.
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=cmd0,path={w / 'cmd.sock'},server=on,wait=on",
            "-device", "virtserialport,chardev=cmd0,name=kdc.cmd",
            "-fsdev", f"local,id=fsxfer,path={self.xfer},security_model=none",
            "-device", "virtio-9p-pci,fsdev=fsxfer,mount_tag=kdc.xfer",
        ]
        if c.hostroot:
            argv += [
                "-fsdev", f"local,id=fsroot,path={c.root_dir},security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=kdc.root",
            ]
        if c.virtio_mem_gib:
            argv += [
                "-object", f"memory-backend-ram,id=vmem0,size={c.virtio_mem_gib}G",
                "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,node=0,requested-size=0",
            ]
        argv += list(c.extra_args)
        return argv

    def boot_kernel(self) -> Path:
        """The file qemu's -kernel gets (GuestConfig.boot)."""
        boot = self.config.boot
        if boot == "bzimage" or (boot is None and self.assets.boot_kernel is None):
            return self.assets.kernel
        if self.assets.boot_kernel is None:
            raise VmUnavailable(f"{self.assets.directory}: no PVH-bootable vmlinux: re-run tools/vm-assets")
        return self.assets.boot_kernel

    def start(self) -> None:
        """Boot the guest; a boot that crashes before the command server is retried (``boot_retries``)."""
        attempt = 0
        while True:
            try:
                self._start_once()
                return
            except GuestDied as e:
                crash = BOOT_CRASH.search(self.console())
                if crash is None or attempt >= self.config.boot_retries:
                    if crash is not None:
                        raise BootCrashed(f"{self.name}: boot crashed {attempt + 1} time(s)\n{e}") from e
                    raise
                attempt += 1
                kept = self.workdir / f"console.boot{attempt}.log"
                self._kill_qemu()
                self.console_path.rename(kept)
                self.boot_retried.append(kept)
                print(f"[{self.name}] boot crashed ({crash.group(0).decode()!r}, console kept in {kept}): retrying")

    def _start_once(self) -> None:
        # pytest dies -> `timeout` gets SIGKILL (pdeathsig) -> qemu, whose parent
        # that is, gets SIGKILL too; pytest hangs -> `timeout` kills qemu.
        # pdeathsig follows the *thread* that forked: start guests from the
        # main thread (the fixtures do).
        argv = [
            "setpriv", "--pdeathsig", "KILL",
            "timeout", "-s", "KILL", str(int(self.config.hard_timeout)),
            "setpriv", "--pdeathsig", "KILL", *self.qemu_argv(),
        ]
        (self.workdir / "qemu.argv").write_text(json.dumps(argv))
        self.started_at = time.monotonic()
        with open(self.workdir / "qemu.out", "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = self.started_at + self.config.boot_timeout
        self._cmd = _connect_unix(self.workdir / "cmd.sock", 20.0)
        self.qmp = QmpClient(self.workdir / "qmp.sock", timeout=20.0)
        self._await_boot(self.started_at, deadline, "the guest's command server")

    def _await_boot(self, since: float, deadline: float, what: str, console_from: int = 0) -> None:
        """Until this boot's command server is up (boot_seconds from `since`);
        its console (past `console_from`) must show the host root mounted."""
        self._read_until(re.compile(rb"@@KDC-READY@@\n"), deadline, what)
        self.boot_seconds = time.monotonic() - since
        if self.config.hostroot and b"@@KDC-HOSTROOT@@" not in self.console()[console_from:]:
            raise VmError(f"the guest did not mount the host root\n{self.console_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Kill qemu (and the timeout wrapper) for sure; keep the workdir only if asked."""
        self._kill_qemu()
        if os.environ.get("KDC_VM_KEEP"):
            return
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_qemu(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=30)
            # The group may outlive its leader (qemu under timeout): kill it again.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc = None
        self._cmd_buf = b""
        for sock in ("cmd.sock", "qmp.sock"):
            (self.workdir / sock).unlink(missing_ok=True)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestTimeout(f"qemu still running after {timeout:.0f}s\n{self.console_tail()}") from None

    # -- console

    def console(self) -> bytes:
        try:
            return self.console_path.read_bytes()
        except FileNotFoundError:
            return b""

    def console_tail(self, lines: int = 40) -> str:
        text = self.console().decode("utf-8", "replace").replace("\r", "")
        return f"--- {self.name} console ({self.console_path}) ---\n{console_excerpt(text, lines)}\n---"

    def wait_console(self, pattern: bytes, timeout: float, after: int = 0) -> re.Match[bytes]:
        """Wait until `pattern` (a regex) shows on the console past byte `after`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console(), after)
            if m:
                return m
            if not self.alive():
                raise GuestDied(f"qemu exited waiting for {pattern!r}\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"no {pattern!r} on the console after {timeout:.0f}s\n{self.console_tail()}")
            time.sleep(0.05)

    # -- commands

    def _read_until(self, rx: re.Pattern[bytes], deadline: float, what: str) -> re.Match[bytes]:
        assert self._cmd is not None
        while True:
            m = rx.search(self._cmd_buf)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestTimeout(f"timed out waiting for {what}\n{self.console_tail()}")
            r, _, _ = select.select([self._cmd], [], [], min(left, 0.5))
            if r:
                chunk = self._cmd.recv(1 << 16)
                if not chunk:
                    raise GuestDied(f"the command channel closed waiting for {what}\n{self.console_tail()}")
                self._cmd_buf += chunk
            elif not self.alive():
                raise GuestDied(f"qemu exited waiting for {what}\n{self.console_tail()}")

    def _send(self, script: str, where: Where) -> int:
        assert self._cmd is not None
        self._next_id += 1
        cid = self._next_id
        path = self.xfer / "cmd" / f"{cid}.sh"
        path.write_text(script if script.endswith("\n") else script + "\n")
        self._cmd.sendall(f"{cid} {where}\n".encode())
        return cid

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True, where: Where = "initramfs") -> CommandResult:
        """Run a shell script in the guest and return its output (stdout+stderr) and exit status.

        ``where="host"`` runs it chrooted into the host's root filesystem
        (Debian's /bin/sh, python3, the project's venv).  A timeout raises
        GuestTimeout and leaves the guest unusable (close it).
        """
        t0 = time.monotonic()
        cid = self._send(command, where)
        m = self._read_until(re.compile(rb"\n?@@KDC-END %d (\d+)@@\n" % cid), t0 + timeout, f"command {command!r}")
        begin = self._cmd_buf.find(b"@@KDC-BEGIN %d@@\n" % cid)
        start = begin + len(b"@@KDC-BEGIN %d@@\n" % cid) if begin >= 0 and begin < m.start() else 0
        result = CommandResult(command, int(m.group(1)), self._cmd_buf[start : m.start()], time.monotonic() - t0)
        self._cmd_buf = self._cmd_buf[m.end() :]
        if check and result.rc != 0:
            raise CommandFailed(
                f"guest command failed (rc {result.rc}, {where}): {command!r}\n{result.text[-3000:]}", result
            )
        return result

    def run_host(self, command: str, *, timeout: float = 120.0, check: bool = True) -> CommandResult:
        """run(..., where="host"): in the chroot of the host's root filesystem."""
        return self.run(command, timeout=timeout, check=check, where="host")

    def read_text(self, path: str, where: Where = "initramfs") -> str:
        return self.run(f"cat {path}", where=where).text

    def fetch(self, path: str, *, max_bytes: int | None = None, where: Where = "initramfs") -> bytes:
        """The exact bytes of a guest file (through the exchange directory, binary safe)."""
        self._next_fetch += 1
        name = f"fetch-{self._next_fetch}"
        reader = f"head -c {max_bytes} {path}" if max_bytes is not None else f"cat {path}"
        self.run(f"{reader} > {GUEST_XFER}/{name}", where=where)
        dest = self.xfer / name
        data = dest.read_bytes()
        dest.unlink()
        return data

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {path}", check=False).rc == 0

    def record_uevents(self, name: str, seconds: float = 300.0) -> UeventRecorder:
        """Start tools/vm/uevent-listen.py in the guest; returns once it is bound."""
        rec = UeventRecorder(self, name)
        script = REPO / "tools" / "vm" / "uevent-listen.py"
        self.run_host(
            f"setsid /usr/bin/python3 {script} {GUEST_XFER}/{name} {seconds} </dev/null "
            f">{GUEST_XFER}/{name}.log 2>&1 &"
        )
        deadline = time.monotonic() + 60
        while not (rec.directory / ".ready").exists():
            if time.monotonic() > deadline:
                raise GuestTimeout(f"uevent listener not ready: {rec.log()}")
            time.sleep(0.1)
        return rec

    def sysfs_flag(self, path: str) -> int:
        return int(self.read_text(path).strip())

    def iomem(self) -> str:
        return self.read_text("/proc/iomem")

    def online_cpus(self) -> list[int]:
        return parse_cpu_list(self.read_text("/sys/devices/system/cpu/online"))

    # -- kdump

    def kexec_load_crash(
        self,
        mode: KexecMode = "kexec_load",
        *,
        append: str = CAPTURE_APPEND,
        where: Where = "initramfs",
        hotplug: bool = False,
        timeout: float = 120.0,
    ) -> CommandResult:
        """Load the capture kernel with kexec-tools (``kexec -p`` or ``kexec -s -p``).

        ``hotplug=True`` loads with trixie's kexec-tools and ``--hotplug``
        (the image keeps the kernel's own header updates: KEXEC_UPDATE_ELFCOREHDR
        on kexec_load, always on kexec_file_load); only guests whose assets
        carry it (``assets.kexec_hotplug``, the 6.12 guest).  That kexec-tools
        defaults to ``-a`` (kexec_file_load first), so kexec_load is asked
        for with ``-c``.
        """
        if hotplug:
            if self.assets.kexec_hotplug is None or self.assets.kexec_hotplug_host is None:
                raise VmUnavailable(f"guest kernel {self.assets.name} has no kexec-tools with --hotplug")
            flag = "-s " if mode == "kexec_file_load" else "-c "
            flag += "--hotplug "
            kexec = self.assets.kexec_hotplug if where == "initramfs" else str(self.assets.kexec_hotplug_host)
        else:
            flag = "-s " if mode == "kexec_file_load" else ""
            kexec = GUEST_KEXEC if where == "initramfs" else "/sbin/kexec"
        if where == "initramfs":
            kernel, initrd = GUEST_KERNEL, GUEST_CAPTURE_INITRD
        else:
            kernel, initrd = str(self.assets.kernel), str(self.assets.capture_initrd)
        res = self.run(f"{kexec} {flag}-p {kernel} --initrd={initrd} --append='{append}'", where=where, timeout=timeout)
        if self.sysfs_flag("/sys/kernel/kexec_crash_loaded") != 1:
            raise VmError(f"kexec {flag}-p returned 0 but kexec_crash_loaded is not 1:\n{res.text}")
        return res

    def crash_hotplug(self) -> tuple[int, int] | None:
        """(cpu, memory) ``crash_hotplug`` (1: the kernel updates the loaded image's header itself), or None.

        None when the kernel has no such files (no CONFIG_CRASH_HOTPLUG: 6.1).
        Both read 0 while nothing is loaded or the image has no hotplug
        support (kernel-facts 9).
        """
        r = self.run(
            "cat /sys/devices/system/cpu/crash_hotplug /sys/devices/system/memory/crash_hotplug 2>/dev/null", check=False
        )
        values = r.text.split()
        if r.rc != 0 or len(values) != 2:
            return None
        return int(values[0]), int(values[1])

    def crash_and_capture(self, timeout: float = 120.0, *, reboot: bool = False) -> Capture:
        """Panic the guest (sysrq c), let the capture kernel print /proc/vmcore's headers, parse them.

        The guest is gone afterwards (the capture side powers off; qemu runs
        with -no-reboot).  With reboot (GuestConfig.reboot, and a capture
        kernel command line with kdc.capture_then=reboot) the capture side
        reboots instead and this returns once the guest's command server is
        back: the next life of the same machine, its disk and DIMMs kept.
        Only this capture's console is parsed.  Without reboot on such a
        guest, qemu is killed once the capture is printed.
        """
        if reboot and not self.config.reboot:
            raise VmError("crash_and_capture(reboot=True) needs GuestConfig(reboot=True): qemu would exit")
        t0 = time.monotonic()
        offset = len(self.console())
        self._send("echo c > /proc/sysrq-trigger", "initramfs")
        if not self.config.reboot:
            self.wait_exit(timeout)
            seconds = time.monotonic() - t0
            console = self.console()
        else:
            done = self.wait_console(rb"@@KDC-CAPTURE-DONE@@", timeout, after=offset)
            seconds = time.monotonic() - t0
            console = self.console()[offset : done.end()]
            if reboot:
                # What the old kernel's command server had not sent is lost
                # with it; the next boot's server starts the channel afresh.
                self._cmd_buf = b""
                t1 = time.monotonic()
                self._await_boot(t1, t1 + self.config.boot_timeout, "the command server after the reboot", console_from=offset)
            else:
                self._kill_qemu()  # the last life: qemu would only boot the guest again
        try:
            header = parse_capture_console(console)
        except VmcoreParseError as e:
            raise VmError(f"no usable capture: {e}\n{self.console_tail(60)}") from e
        m = re.search(rb"@@KDC-CAPTURE-CMDLINE (.*?)@@", console)
        cmdline = m.group(1).decode() if m else ""
        return Capture(vmcore=header, cmdline=cmdline, seconds=seconds, console=console)

    def capture_raw(self) -> bytes:
        """The raw /proc/vmcore header bytes of the capture that already ran."""
        return vmcore_bytes_from_console(self.console())

    # -- hotplug

    def hotplug_dimm(
        self, size: int = GIB, *, wait_online: bool = True, timeout: float = 60.0, addr: int | None = None
    ) -> Dimm:
        """Hot-add a pc-dimm of `size` bytes (at `addr`, else where qemu puts it: the first gap);
        with wait_online, wait until all its blocks are online."""
        assert self.qmp is not None
        self._dimms += 1
        mem, dev = f"mem{self._dimms}", f"dimm{self._dimms}"
        self.qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": mem, "size": size})
        placed = {"addr": addr} if addr is not None else {}
        self.qmp.execute("device_add", {"driver": "pc-dimm", "id": dev, "memdev": mem, **placed})
        addr = int(self.qmp.execute("qom-get", {"path": f"/machine/peripheral/{dev}", "property": "addr"}))
        dimm = Dimm(id=dev, memdev=mem, size=size, addr=addr)
        if wait_online:
            self.wait_memory_online(dimm.addr, dimm.end, timeout=timeout)
        return dimm

    def wait_memory_online(self, start: int, end: int, timeout: float = 60.0) -> None:
        """Wait until [start, end) is System RAM in the guest's /proc/iomem."""
        deadline = time.monotonic() + timeout
        while True:
            ram = system_ram(self.iomem())
            if any(s <= start and end <= e for s, e in merge_ranges(ram)):
                return
            if time.monotonic() > deadline:
                raise GuestTimeout(f"{start:#x}-{end - 1:#x} not System RAM after {timeout:.0f}s")
            time.sleep(0.1)

    def unplug_dimm(self, dimm: Dimm, timeout: float = 60.0) -> None:
        """device_del the DIMM (the guest offlines and ejects it), then drop its backend."""
        assert self.qmp is not None
        self.qmp.execute("device_del", {"id": dimm.id})
        try:
            self.qmp.wait_event("DEVICE_DELETED", timeout, lambda e: e.get("data", {}).get("device") == dimm.id)
        except GuestTimeout:
            ost = [e for e in self.qmp.events if e.get("event") == "ACPI_DEVICE_OST"]
            raise GuestTimeout(f"{dimm.id} not removed after {timeout:.0f}s (ACPI OST: {ost})") from None
        self.qmp.execute("object-del", {"id": dimm.memdev})

    def hotplug_cpu(self, *, online: bool = True, timeout: float = 60.0) -> int:
        """Hot-add one vCPU (first free slot of query-hotpluggable-cpus); return its guest CPU number."""
        assert self.qmp is not None
        before = set(parse_cpu_list(self.read_text("/sys/devices/system/cpu/present")))
        slots = self.qmp.execute("query-hotpluggable-cpus")
        free = [s for s in slots if "qom-path" not in s]
        if not free:
            raise VmError("no free CPU slot (raise maxcpus)")
        slot = sorted(free, key=lambda s: tuple(sorted(s["props"].items())))[0]
        dev = f"cpuhp{len(slots) - len(free)}"
        self.qmp.execute("device_add", {"driver": slot["type"], "id": dev, **slot["props"]})
        deadline = time.monotonic() + timeout
        while True:
            new = set(parse_cpu_list(self.read_text("/sys/devices/system/cpu/present"))) - before
            if new:
                cpu = min(new)
                break
            if time.monotonic() > deadline:
                raise GuestTimeout(f"hot-added CPU {slot['props']} never became present")
            time.sleep(0.1)
        if online:
            self.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online")
        return cpu

    # -- kdump-coalesce in the guest

    def start_daemon(
        self,
        args: Sequence[str] = ("run", "--backend", "kexec"),
        *,
        trace_name: str = "trace.jsonl",
        ready_timeout: float = 180.0,
        ready: Callable[[TraceLog], bool] | None = None,
    ) -> GuestDaemon:
        """Start ``kdump-coalesce <args> --trace-file <xfer>/<trace_name>`` in the background (chroot).

        The trace file is in the exchange directory, so the host reads it as
        it grows (``GuestDaemon.trace()``).  Output goes to ``<name>.log``
        there.  Waits until the trace file exists (or until `ready` accepts the
        trace, if given).
        """
        t0 = time.monotonic()
        d = GuestDaemon(self, trace_name)
        cmd = " ".join(_shq(a) for a in (str(VENV / "bin" / "kdump-coalesce"), *args, "--trace-file", d.guest_trace))
        self.run_host(
            f"cd /tmp && setsid {cmd} </dev/null >{d.guest_log} 2>&1 & echo $! > {d.guest_pidfile}", timeout=30
        )
        d.wait(ready or (lambda t: True), ready_timeout, "the daemon's trace file")
        d.start_s = time.monotonic() - t0
        return d


@dataclass(slots=True)
class GuestDaemon:
    guest: Guest
    trace_name: str
    start_s: float = 0.0  # from launch to `ready` (or the trace file) as the host saw it

    @property
    def guest_trace(self) -> str:
        return f"{GUEST_XFER}/{self.trace_name}"

    @property
    def guest_log(self) -> str:
        return f"{GUEST_XFER}/{self.trace_name}.log"

    @property
    def guest_pidfile(self) -> str:
        return f"{GUEST_XFER}/{self.trace_name}.pid"

    @property
    def trace_path(self) -> Path:
        return self.guest.xfer / self.trace_name

    @property
    def log_path(self) -> Path:
        return self.guest.xfer / f"{self.trace_name}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self) -> int:
        return int((self.guest.xfer / f"{self.trace_name}.pid").read_text())

    def running(self) -> bool:
        return self.guest.run(f"kill -0 {self.pid()}", check=False).rc == 0

    def trace(self) -> TraceLog:
        try:
            text = self.trace_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return parse_trace(text)

    def wait(self, until: Callable[[TraceLog], bool], timeout: float, what: str = "the trace") -> TraceLog:
        """Poll the trace until `until(trace)` holds; fail early if the daemon died."""
        deadline = time.monotonic() + timeout
        while True:
            if self.trace_path.exists():
                t = self.trace()
                if until(t):
                    return t
            if not self.running():
                raise VmError(f"kdump-coalesce exited waiting for {what}; log:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise GuestTimeout(f"{what}: not there after {timeout:.0f}s; log:\n{self.log()[-3000:]}")
            time.sleep(0.25)

    def wait_quiet(self, quiet_s: float, timeout: float) -> TraceLog:
        """Wait until the trace has not grown for `quiet_s` seconds."""
        deadline = time.monotonic() + timeout
        last = -1
        since = time.monotonic()
        while True:
            size = self.trace_path.stat().st_size if self.trace_path.exists() else 0
            now = time.monotonic()
            if size != last:
                last, since = size, now
            elif now - since >= quiet_s:
                return self.trace()
            if now > deadline:
                raise GuestTimeout(f"trace still growing after {timeout:.0f}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; return None once it is gone (exit status is in the log)."""
        pid = self.pid()
        self.guest.run(f"kill -TERM {pid} 2>/dev/null; true")
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                self.guest.run(f"kill -KILL {pid} 2>/dev/null; true")
                raise GuestTimeout(f"kdump-coalesce ignored SIGTERM for {timeout:.0f}s")
            time.sleep(0.2)
        return None


@dataclass(slots=True)
class UeventRecorder:
    guest: Guest
    name: str

    @property
    def directory(self) -> Path:
        return self.guest.xfer / self.name

    def log(self) -> str:
        p = self.guest.xfer / f"{self.name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def messages(self) -> list[tuple[str, bytes]]:
        """(file name, raw message) in arrival order."""
        return [(p.name, p.read_bytes()) for p in sorted(self.directory.glob("*.bin"))]

    def wait_for(self, count: int, match: Callable[[bytes], bool], timeout: float = 30.0) -> list[tuple[str, bytes]]:
        """Wait until at least `count` recorded messages satisfy `match`."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [(n, m) for n, m in self.messages() if match(m)]
            if len(hits) >= count or time.monotonic() > deadline:
                return hits
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        (self.directory / ".stop").touch()
        deadline = time.monotonic() + timeout
        while not (self.directory / ".done").exists():
            if time.monotonic() > deadline:
                raise GuestTimeout(f"uevent listener did not stop: {self.log()}")
            time.sleep(0.1)
        return self.messages()


# The first kernel's own report of why it died.  A guest that panics runs
# its capture kernel, whose output fills the console's tail: without this
# the panic that started it is out of the excerpt (and the console file is
# removed with the guest unless KDC_VM_KEEP is set).
_CONSOLE_FAULT = re.compile(r"Kernel panic - not syncing|\bBUG: |\bOops: |general protection fault|\bRIP: ")


def console_excerpt(text: str, lines: int = 40, context: int = 30) -> str:
    """The console's last `lines` lines, preceded by `context` lines from the
    first panic/oops/BUG when that is further up."""
    all_lines = text.splitlines()
    start_tail = max(0, len(all_lines) - lines)
    tail = "\n".join(all_lines[start_tail:])
    first = next((i for i, line in enumerate(all_lines[:start_tail]) if _CONSOLE_FAULT.search(line)), None)
    if first is None:
        return f"(last {lines} lines)\n{tail}"
    start = max(0, first - 5)
    head = "\n".join(all_lines[start : min(first + context, start_tail)])
    return f"(the first fault, from line {start + 1})\n{head}\n(last {lines} lines)\n{tail}"


def uevent_fields(msg: bytes) -> dict[str, str]:
    """A raw kernel uevent as a dict (ACTION, DEVPATH, SUBSYSTEM, SEQNUM, ...)."""
    parts = msg.split(b"\0")
    fields = {}
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if sep:
            fields[k.decode()] = v.decode(errors="replace")
    return fields


def _shq(s: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:=,+-]+", s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------
# Trace file (JSON lines, probes/tracefile.py) as the VM tests read it


@dataclass(frozen=True, slots=True)
class TraceEvent:
    t: int
    kind: str
    action: str
    source: str
    start: int | None
    size: int | None
    cpu: int | None
    ret: int | None


@dataclass(frozen=True, slots=True)
class TraceReload:
    result: str
    backend: str
    window_s: float | None
    wall_s: float | None
    record: Mapping[str, Any]


@dataclass(slots=True)
class TraceLog:
    header: Mapping[str, Any] | None = None
    events: list[TraceEvent] = field(default_factory=list)
    batches: list[Mapping[str, Any]] = field(default_factory=list)
    reloads: list[TraceReload] = field(default_factory=list)
    other: list[Mapping[str, Any]] = field(default_factory=list)
    records: list[Mapping[str, Any]] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def ready(self) -> bool:
        """The daemon said ``status state=ready`` (start-up reconciliation done, sources attached)."""
        return self._ready_index() is not None

    def _ready_index(self) -> int | None:
        for i, r in enumerate(self.records):
            if r.get("type") == "status" and r.get("state") == "ready":
                return i
        return None

    def reloads_after_ready(self) -> list[TraceReload]:
        """Reloads caused by batches, not the start-up reconciliation."""
        i = self._ready_index()
        if i is None:
            return []
        n_before = sum(1 for r in self.records[:i] if r.get("type") == "reload")
        return self.reloads[n_before:]

    def batches_after_ready(self) -> list[Mapping[str, Any]]:
        i = self._ready_index()
        if i is None:
            return []
        n_before = sum(1 for r in self.records[:i] if r.get("type") == "batch")
        return self.batches[n_before:]

    def reloads_ok(self) -> list[TraceReload]:
        return [r for r in self.reloads if r.result == "ok"]

    def sources(self, kind: str | None = None) -> set[str]:
        return {e.source for e in self.events if kind is None or e.kind == kind}


def _opt_int(v: object) -> int | None:
    return v if type(v) is int else None


def _opt_float(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_trace(text: str) -> TraceLog:
    """Parse a trace file; a torn last line (the daemon is still writing) counts as bad, not fatal."""
    log = TraceLog()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.bad_lines += 1
            continue
        if not isinstance(rec, dict):
            log.bad_lines += 1
            continue
        log.records.append(rec)
        typ = rec.get("type")
        if typ == "header":
            log.header = rec
        elif typ == "event":
            log.events.append(
                TraceEvent(
                    t=int(rec.get("t", 0)), kind=str(rec.get("kind")), action=str(rec.get("action")),
                    source=str(rec.get("source")), start=_opt_int(rec.get("start")), size=_opt_int(rec.get("size")),
                    cpu=_opt_int(rec.get("cpu")), ret=_opt_int(rec.get("ret")),
                )
            )
        elif typ == "batch":
            log.batches.append(rec)
        elif typ == "reload":
            log.reloads.append(
                TraceReload(
                    result=str(rec.get("result")), backend=str(rec.get("backend")),
                    window_s=_opt_float(rec.get("window_s")), wall_s=_opt_float(rec.get("wall_s")), record=rec,
                )
            )
        else:
            log.other.append(rec)
    return log


# --------------------------------------------------------------------------
# Small parsers for what the guest prints


def parse_cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the one parser: :func:`ground.sysfs.parse_cpu_list`)."""
    return list(sysfs.parse_cpu_list(text, "guest cpu list"))


_IOMEM_LINE = re.compile(r"^(\s*)([0-9a-f]+)-([0-9a-f]+) : (.*)$")


def iomem_entries(text: str) -> Iterator[tuple[int, int, int, str]]:
    """(depth, start, end exclusive, name) per /proc/iomem line."""
    for line in text.splitlines():
        m = _IOMEM_LINE.match(line)
        if m:
            yield len(m.group(1)) // 2, int(m.group(2), 16), int(m.group(3), 16) + 1, m.group(4)


def system_ram(iomem: str) -> list[tuple[int, int]]:
    """Top-level System RAM ranges [start, end) of /proc/iomem."""
    return [(s, e) for d, s, e, n in iomem_entries(iomem) if d == 0 and n.startswith("System RAM")]


def crash_kernel(iomem: str) -> tuple[int, int] | None:
    for _d, s, e, n in iomem_entries(iomem):
        if n == "Crash kernel":
            return s, e
    return None


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract_range(ranges: Sequence[tuple[int, int]], cut: tuple[int, int] | None) -> list[tuple[int, int]]:
    if cut is None:
        return list(ranges)
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if e <= cut[0] or s >= cut[1]:
            out.append((s, e))
            continue
        if s < cut[0]:
            out.append((s, cut[0]))
        if e > cut[1]:
            out.append((cut[1], e))
    return out
