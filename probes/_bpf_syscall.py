"""Feature probes through the bpf(2) syscall itself: does this kernel load
and attach *this kind* of program here?  No compiler, no BCC, no headers:
two-instruction programs ("return 0") loaded and attached for real, then
closed.  ``doctor`` and the BPF source's planning use them, so that what is
reported is what the kernel accepts, not what its version suggests.

``union bpf_attr`` is declared as data (include/uapi/linux/bpf.h): the
kernel zero-checks the tail it does not know, so passing only the prefix a
command needs is the documented way to stay compatible.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

SYS_BPF = 321  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)

BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17

BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24

# "r0 = 0; exit": struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm}
_RETURN_ZERO = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

# The BPF_PROG_LOAD part of union bpf_attr, up to attach_btf_id (offset 108).
_PROG_LOAD = struct.Struct("<IIQQIIQII16sIIIIQIIQII")
_RAW_TP_OPEN = struct.Struct("<QI4x")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str  # what was tried and what the kernel said

    def __bool__(self) -> bool:
        return self.ok


_libc: ctypes.CDLL | None = None


def _bpf(cmd: int, attr: bytes) -> int:
    """bpf(cmd, attr): the fd (>= 0), or raises OSError with the errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = int(_libc.syscall(SYS_BPF, cmd, buf, len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _prog_load(prog_type: int, *, expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _PROG_LOAD.pack(
        prog_type,
        len(_RETURN_ZERO) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        0, 0, 0,  # no verifier log
        0, 0,  # kern_version, prog_flags
        b"kc_probe",
        0,  # prog_ifindex
        expected_attach_type,
        0, 0, 0, 0, 0, 0, 0,  # prog_btf_fd, func_info..., line_info...
        attach_btf_id,
    )
    return _bpf(BPF_PROG_LOAD, attr)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno == 524:  # ENOTSUPP, kernel-internal, not in errno.errorcode
        name = "ENOTSUPP"
    return f"{name} ({exc.strerror})" if exc.errno != 524 else "ENOTSUPP (operation not supported by this kernel)"


def probe_bpf_syscall() -> ProbeResult:
    """Can this process load a BPF program at all (a socket filter)?"""
    try:
        fd = _prog_load(BPF_PROG_TYPE_SOCKET_FILTER)
    except OSError as exc:
        return ProbeResult(False, f"BPF_PROG_LOAD socket filter: {_describe(exc)}")
    os.close(fd)
    return ProbeResult(True, "BPF_PROG_LOAD works")


def probe_raw_tracepoint(name: str) -> ProbeResult:
    """Load a raw tracepoint program and attach it to ``name`` (no tracefs)."""
    try:
        prog = _prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT)
    except OSError as exc:
        return ProbeResult(False, f"load raw tracepoint program: {_describe(exc)}")
    tp_name = ctypes.create_string_buffer(name.encode())
    try:
        link = _bpf(BPF_RAW_TRACEPOINT_OPEN, _RAW_TP_OPEN.pack(ctypes.addressof(tp_name), prog))
    except OSError as exc:
        return ProbeResult(False, f"attach raw tracepoint {name}: {_describe(exc)}")
    finally:
        os.close(prog)
    os.close(link)
    return ProbeResult(True, f"raw tracepoint {name} attaches")


def probe_fentry(func: str, btf_id: int | None) -> ProbeResult:
    """Load an fentry program for kernel function ``func`` (BTF id ``btf_id``)
    and attach it: the trampoline is built at attach, so both must work."""
    if btf_id is None:
        return ProbeResult(False, f"{func} not in vmlinux BTF")
    try:
        prog = _prog_load(BPF_PROG_TYPE_TRACING, expected_attach_type=BPF_TRACE_FENTRY, attach_btf_id=btf_id)
    except OSError as exc:
        return ProbeResult(False, f"load fentry/{func}: {_describe(exc)}")
    try:
        link = _bpf(BPF_RAW_TRACEPOINT_OPEN, _RAW_TP_OPEN.pack(0, prog))
    except OSError as exc:
        return ProbeResult(False, f"attach fentry/{func}: {_describe(exc)}")
    finally:
        os.close(prog)
    os.close(link)
    return ProbeResult(True, f"fentry/{func} loads and attaches")


def probe_kprobe(func: str, root: str = "/") -> ProbeResult:
    """Can a kprobe be placed on ``func``?  Needs the kprobe PMU
    (CONFIG_KPROBES: /sys/bus/event_source/devices/kprobe) and the function
    in /proc/kallsyms.  The attach itself is proven by BCC when the program
    loads (the BPF source falls back if it is refused)."""
    if not os.path.exists(os.path.join(root, "sys/bus/event_source/devices/kprobe/type")):
        return ProbeResult(False, "no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel without CONFIG_KPROBES")
    try:
        with open(os.path.join(root, "proc/kallsyms"), encoding="ascii", errors="replace") as f:
            found = any(line.rstrip("\n").split(" ", 2)[-1].split("\t")[0] == func for line in f)
    except OSError as exc:
        return ProbeResult(False, f"/proc/kallsyms: {exc.strerror}")
    if not found:
        return ProbeResult(False, f"{func} not in /proc/kallsyms")
    return ProbeResult(True, f"kprobe PMU present, {func} in kallsyms")
