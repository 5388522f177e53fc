"""kexec_load(2) through ctypes: the one place the fast path talks to the kernel.

    long kexec_load(unsigned long entry, unsigned long nr_segments,
                    struct kexec_segment *segments, unsigned long flags);

    struct kexec_segment {          /* include/uapi/linux/kexec.h */
        const void *buf;            /* user space buffer */
        size_t bufsz;
        const void *mem;            /* physical address */
        size_t memsz;
    };

With KEXEC_ON_CRASH the kernel frees the crash image it has *before* it
copies the new one (kernel/kexec.c ``do_kexec_load``), so the whole call is a
window without a crash kernel, and a failed call leaves none: the caller must
load something else (the ``kexec`` backend) when this raises.  The call is
never preceded by an unload; that would only widen the window.

Nothing here is imported at package import time beyond ctypes declarations;
libc is opened on first use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Callable, Sequence
from typing import cast

from ._errors import KexecLoadError
from ._image import VerifiedSegmentSet
from ._segments import KEXEC_SEGMENT_MAX, Segment

# arch/x86/entry/syscalls/syscall_64.tbl
SYS_KEXEC_LOAD_X86_64 = 246


class KexecSegment(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("bufsz", ctypes.c_size_t),
        ("mem", ctypes.c_void_p),
        ("memsz", ctypes.c_size_t),
    ]


def segment_array(segments: Sequence[Segment]) -> ctypes.Array[KexecSegment]:
    """The ``struct kexec_segment[]`` for ``segments``; ``buf`` points into the (immutable) bytes, no copy.

    The caller keeps ``segments`` alive for as long as the array is used.
    """
    if len(segments) > KEXEC_SEGMENT_MAX:
        raise ValueError(f"{len(segments)} segments exceed KEXEC_SEGMENT_MAX")
    array = (KexecSegment * len(segments))()
    for slot, seg in zip(array, segments):
        slot.buf = ctypes.cast(ctypes.c_char_p(seg.buf), ctypes.c_void_p).value if seg.buf else None
        slot.bufsz = len(seg.buf)
        slot.mem = seg.mem
        slot.memsz = seg.memsz
    return array


_libc: ctypes.CDLL | None = None


def _libc_syscall() -> Callable[..., int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = _libc.syscall
    fn.restype = ctypes.c_long
    return cast(Callable[..., int], fn)


def kexec_load_crash(verified: VerifiedSegmentSet) -> None:
    """Load a verified crash image with one kexec_load(2); raise :class:`KexecLoadError` on failure."""
    if platform.machine() != "x86_64":
        raise KexecLoadError(38)  # ENOSYS: only the x86_64 syscall number and layout are declared
    ss = verified.segment_set
    array = segment_array(ss.segments)
    ctypes.set_errno(0)
    result = _libc_syscall()(
        ctypes.c_long(SYS_KEXEC_LOAD_X86_64),
        ctypes.c_ulong(ss.entry),
        ctypes.c_ulong(len(ss.segments)),
        array,
        ctypes.c_ulong(ss.flags),
    )
    if result != 0:
        raise KexecLoadError(ctypes.get_errno())
